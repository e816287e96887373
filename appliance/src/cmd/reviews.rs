//! `portcullis reviews list|approve|deny`: talks to the admin API with the caller's own token.
//! Also holds the small admin-API client that `sessions` and `access` share.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use super::EXIT_RUNTIME;

/// Whole-request timeout of an admin API call.
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest admin API response read.
const MAX_ADMIN_RESPONSE_BYTES: u64 = 8 << 20;

/// Where the admin API is and who is calling.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin API base url, e.g. http://127.0.0.1:9090.
    #[arg(long = "admin", env = "PORTCULLIS_ADMIN")]
    pub url: String,
    /// Your OIDC token (the same kind you connect with).
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl AdminArgs {
    /// Calls the admin API; `Ok(json)` on a 2xx answer, `Err(message)` otherwise.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(ADMIN_CALL_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let auth = format!("Bearer {}", self.token.trim());
        let sent = match method {
            "GET" => agent.get(&url).header("authorization", &auth).call(),
            _ => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(body.unwrap_or(&json!({})).to_string()),
        };
        let mut resp = sent.map_err(|e| format!("cannot reach the admin api at {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ADMIN_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| format!("reading the admin api answer: {e}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_owned);
            let detail = value
                .get("errors")
                .and_then(Value::as_str)
                .map(|e| format!("\n{e}"))
                .unwrap_or_default();
            Err(format!("{status}: {msg}{detail}"))
        }
    }
}

/// Prints the outcome of a call and maps it to an exit code.
pub fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ReviewsCommand {
    /// List pending reviews (statements held for approval, grant requests).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a review with your own token.
    Approve {
        id: String,
        /// Also approve the same requester's requests under the same rule for this long
        /// (e.g. 30m).
        #[arg(long)]
        window: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deny a review; the held statement fails with your reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(cmd: ReviewsCommand) -> ExitCode {
    finish(match cmd {
        ReviewsCommand::List { admin, json } => admin.call("GET", "/api/reviews", None).map(|v| {
            if json {
                return format!("{v}\n");
            }
            let mut out = String::from("ID            KIND     REQUESTER        CONNECTION       RULE                 APPROVALS  TEXT\n");
            for r in v
                .get("reviews")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let got = r
                    .get("approved_by")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let need = r
                    .get("approvals_required")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                out.push_str(&format!(
                    "{:<13} {:<8} {:<16} {:<16} {:<20} {got}/{need:<8} {}\n",
                    s("id"),
                    s("kind"),
                    s("requester"),
                    s("connection"),
                    s("rule"),
                    s("text").replace('\n', " ")
                ));
            }
            out
        }),
        ReviewsCommand::Approve { id, window, admin } => {
            let body = match window {
                Some(w) => json!({ "window": w }),
                None => json!({}),
            };
            admin
                .call("POST", &format!("/api/reviews/{id}/approve"), Some(&body))
                .map(|v| {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("?");
                    let by = v
                        .get("approved_by")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    let need = v
                        .get("approvals_required")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    format!("review {id}: {state} (approved by {by}; {need} required)\n")
                })
        }
        ReviewsCommand::Deny { id, reason, admin } => admin
            .call(
                "POST",
                &format!("/api/reviews/{id}/deny"),
                Some(&json!({ "reason": reason })),
            )
            .map(|_| format!("review {id}: denied\n")),
    })
}
