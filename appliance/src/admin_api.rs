//! The `/api` endpoints of the admin listener: reviews, live sessions, just-in-time grants and
//! policy reload.
//!
//! Every call carries `Authorization: Bearer <OIDC token>`, verified by the same verifier as
//! the data path; the `[[admin]]` tables of the current policy say which groups may use which
//! operation. Errors are JSON `{"error": "..."}` with one status each: 400 bad body, 401 no or
//! invalid token, 403 operation not granted / not an approver / own request, 404 unknown id,
//! 409 already decided, 422 policy reload rejected, 503 audit unavailable.
//!
//! Handlers only translate HTTP to calls on [`Services`]; the rules live in the registries.

use std::sync::Arc;
use std::time::Duration;

use dataplane::identity::{Identity, now_unix};
use dataplane::postgres::inspect::policy_identity;
use dataplane::reviews::{Requester, ReviewError, ReviewRequest, Subject};
use dataplane::services::Services;
use policy_engine::ReviewSpec;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{Request, Response, Router};

/// Shortest grant that may be requested (a zero-length grant admits nobody).
const MIN_GRANT: Duration = Duration::from_secs(1);

/// How long a grant request waits for approvers before it times out.
const GRANT_REVIEW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Adds the `/api` routes to `router`.
pub fn routes(router: Router, services: &Arc<Services>) -> Router {
    let s1 = Arc::clone(services);
    let s2 = Arc::clone(services);
    let s3 = Arc::clone(services);
    let s4 = Arc::clone(services);
    let s5 = Arc::clone(services);
    let s6 = Arc::clone(services);
    let s7 = Arc::clone(services);
    router
        .route("GET", "/api/reviews", move |r| list_reviews(&s1, r))
        .route_prefix("POST", "/api/reviews/", move |r| act_on_review(&s2, r))
        .route("GET", "/api/sessions", move |r| list_sessions(&s3, r))
        .route_prefix("POST", "/api/sessions/", move |r| kill_session(&s4, r))
        .route("POST", "/api/policy/reload", move |r| reload(&s5, r))
        .route("POST", "/api/grants", move |r| request_grant(&s6, r))
        .route("GET", "/api/grants", move |r| list_grants(&s7, r))
}

/// Verifies the bearer token and checks that `[[admin]]` grants `operation`.
fn authorize(
    services: &Services,
    req: &Request<'_>,
    operation: &str,
) -> Result<Identity, Response> {
    let token = req
        .authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Response::error(401, "missing `Authorization: Bearer <token>`"))?;
    let verifier = services
        .verifier
        .as_ref()
        .ok_or_else(|| Response::error(401, "this gateway has no identity issuer configured"))?;
    let identity = verifier
        .verify(token.as_bytes(), now_unix())
        .map_err(|e| Response::error(401, &format!("invalid token: {}", e.client_message())))?;
    let policy = services.policy.current();
    if !policy
        .policy
        .admin_allows(&policy_identity(&identity), operation)
    {
        return Err(Response::error(
            403,
            &format!(
                "`{}` may not use `{operation}`: no [[admin]] entry grants it to their groups",
                identity.subject
            ),
        ));
    }
    Ok(identity)
}

fn review_error(e: &ReviewError) -> Response {
    Response::error(e.http_status(), &e.to_string())
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(req: &Request<'_>) -> Result<T, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(req.body)
        .map_err(|e| Response::error(400, &format!("bad json body: {e}")))
}

fn list_reviews(services: &Services, req: &Request<'_>) -> Response {
    if let Err(r) = authorize(services, req, "reviews.list") {
        return r;
    }
    Response::json(200, &json!({ "reviews": services.reviews.list() }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Also approve the requester's matching requests for this long (`30m`).
    #[serde(default)]
    window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    #[serde(default)]
    reason: String,
}

/// `POST /api/reviews/{id}/approve` and `POST /api/reviews/{id}/deny`.
fn act_on_review(services: &Services, req: &Request<'_>) -> Response {
    let rest = req.path.strip_prefix("/api/reviews/").unwrap_or_default();
    let Some((id, action)) = rest.split_once('/') else {
        return Response::error(404, &format!("no such endpoint `{}`", req.path));
    };
    // Grant reviews need the grant operation, statement reviews the review one.
    let is_grant = services.reviews.get(id).is_some_and(|v| v.kind == "grant");
    match action {
        "approve" => {
            let op = if is_grant {
                "grants.approve"
            } else {
                "reviews.approve"
            };
            let who = match authorize(services, req, op) {
                Ok(w) => w,
                Err(r) => return r,
            };
            let body: ApproveBody = match parse_body(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let window = match body
                .window
                .as_deref()
                .map(policy_engine::policy::parse_duration)
            {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => return Response::error(400, &format!("bad `window`: {e}")),
            };
            match services.reviews.approve(id, &who, window) {
                Ok(result) => Response::json(200, &json!(result)),
                Err(e) => review_error(&e),
            }
        }
        "deny" => {
            let op = if is_grant {
                "grants.approve"
            } else {
                "reviews.deny"
            };
            let who = match authorize(services, req, op) {
                Ok(w) => w,
                Err(r) => return r,
            };
            let body: DenyBody = match parse_body(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            if body.reason.trim().is_empty() {
                return Response::error(400, "a deny needs a `reason`");
            }
            match services.reviews.deny(id, &who, body.reason.trim()) {
                Ok(()) => Response::json(200, &json!({ "id": id, "state": "denied" })),
                Err(e) => review_error(&e),
            }
        }
        _ => Response::error(404, &format!("no such endpoint `{}`", req.path)),
    }
}

fn list_sessions(services: &Services, req: &Request<'_>) -> Response {
    if let Err(r) = authorize(services, req, "sessions.list") {
        return r;
    }
    Response::json(200, &json!({ "sessions": services.sessions.list() }))
}

/// `POST /api/sessions/{id}/kill`.
fn kill_session(services: &Services, req: &Request<'_>) -> Response {
    let rest = req.path.strip_prefix("/api/sessions/").unwrap_or_default();
    let Some(id) = rest.strip_suffix("/kill") else {
        return Response::error(404, &format!("no such endpoint `{}`", req.path));
    };
    if let Err(r) = authorize(services, req, "sessions.kill") {
        return r;
    }
    if services.sessions.kill(id) {
        Response::json(200, &json!({ "id": id, "state": "killed" }))
    } else {
        Response::error(404, &format!("no live session `{id}`"))
    }
}

/// `POST /api/policy/reload`: the same reload as SIGHUP.
fn reload(services: &Services, req: &Request<'_>) -> Response {
    if let Err(r) = authorize(services, req, "policy.reload") {
        return r;
    }
    match services.policy.reload() {
        Ok(version) => {
            tracing::info!(%version, "admin api: policy reloaded");
            Response::json(200, &json!({ "version": version.as_ref() }))
        }
        Err(e) => {
            tracing::error!("admin api: policy reload rejected, keeping the running policy: {e}");
            Response::json(
                422,
                &json!({
                    "error": "policy reload rejected; the running policy stays",
                    "errors": e.to_string(),
                    "version": services.policy.current().version.as_ref(),
                }),
            )
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    connection: String,
    /// How long (`1h`, `30m`).
    #[serde(rename = "for")]
    duration: String,
    reason: String,
}

/// `POST /api/grants`: asks for just-in-time access to a connection.
fn request_grant(services: &Services, req: &Request<'_>) -> Response {
    let who = match authorize(services, req, "grants.request") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body: GrantBody = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.connection.is_empty() || body.reason.trim().is_empty() {
        return Response::error(
            400,
            "a grant request needs `connection`, `for` and `reason`",
        );
    }
    let duration = match policy_engine::policy::parse_duration(&body.duration) {
        Ok(d) => d,
        Err(e) => return Response::error(400, &format!("bad `for`: {e}")),
    };
    let snapshot = services.policy.current();
    let Some(spec) = snapshot
        .policy
        .grant_spec(&body.connection, &policy_identity(&who))
    else {
        return Response::error(
            403,
            &format!(
                "no [[access]] entry with `require_grant = true` and `approvers` covers `{}` for your groups",
                body.connection
            ),
        );
    };
    if duration < MIN_GRANT || duration > spec.max_duration {
        return Response::error(
            400,
            &format!(
                "`for` must be between {}s and {}s for `{}`",
                MIN_GRANT.as_secs(),
                spec.max_duration.as_secs(),
                body.connection
            ),
        );
    }
    let request = ReviewRequest {
        requester: Requester::from_identity(&who),
        connection: body.connection.as_str().into(),
        subject: Subject::Grant { duration },
        text: body.reason.trim().into(),
        rule: "access".into(),
        spec: ReviewSpec {
            approvers: spec.approvers.clone(),
            approvals: spec.approvals,
            timeout: GRANT_REVIEW_TIMEOUT,
        },
        webhooks: snapshot
            .policy
            .webhooks_for(&body.connection)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    match services.reviews.request_grant(request) {
        Ok(id) => Response::json(
            202,
            &json!({
                "id": id.as_ref(),
                "state": "pending",
                "connection": body.connection,
                "seconds": duration.as_secs(),
                "approver_groups": spec.approvers,
                "approvals_required": spec.approvals,
            }),
        ),
        Err(e) => review_error(&e),
    }
}

fn list_grants(services: &Services, req: &Request<'_>) -> Response {
    if let Err(r) = authorize(services, req, "grants.approve") {
        return r;
    }
    Response::json(
        200,
        &json!({ "grants": services.reviews.grants().list(now_unix()) }),
    )
}
