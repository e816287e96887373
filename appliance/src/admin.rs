//! The management listener: a small blocking HTTP/1.1 server on its own thread, never on a
//! worker core. It answers `GET /healthz`, `GET /readyz` and `GET /metrics`, and the `/api/...`
//! endpoints registered by [`crate::admin_api`] with [`Router::route`] and
//! [`Router::route_prefix`].
//!
//! It serves one request per connection, one connection at a time, with short socket timeouts:
//! the callers are probes, scrapers and operators, not traffic. Request bodies are read only
//! with a `content-length` of at most [`MAX_ADMIN_BODY_BYTES`] (no chunked bodies). This
//! module does not authenticate: the `/api` handlers check the caller's bearer token; the
//! probes and `/metrics` are open, so bind it to a management address only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use dataplane::metrics::Metrics;

/// Largest request head accepted.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 16 * 1024;
/// Largest request body accepted (a JSON object with a reason or a duration).
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;
/// Most headers parsed in one request.
pub const MAX_ADMIN_HEADERS: usize = 32;
/// A client that sends nothing for this long is dropped.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler sees of a request.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    /// The `authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The body (empty without one).
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request without headers or body.
    #[cfg(test)]
    pub fn bare(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            authorization: None,
            body: &[],
        }
    }
}

/// What a handler returns.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }
}

type Handler = Box<dyn Fn(&Request<'_>) -> Response + Send + Sync>;

/// Exact-path routing, method checked per route, plus prefix routes for paths with
/// parameters (`/api/reviews/` + `{id}/approve`), which the handler splits itself.
#[derive(Default)]
pub struct Router {
    routes: Vec<(&'static str, &'static str, Handler)>,
    prefixes: Vec<(&'static str, &'static str, Handler)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(m, p, _)| format!("{m} {p}")))
            .entries(self.prefixes.iter().map(|(m, p, _)| format!("{m} {p}*")))
            .finish()
    }
}

impl Router {
    pub fn route(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: impl Fn(&Request<'_>) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.routes.push((method, path, Box::new(handler)));
        self
    }

    /// Routes every path starting with `prefix` (and longer than it) to `handler`.
    pub fn route_prefix(
        mut self,
        method: &'static str,
        prefix: &'static str,
        handler: impl Fn(&Request<'_>) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.prefixes.push((method, prefix, Box::new(handler)));
        self
    }

    pub fn handle(&self, req: &Request<'_>) -> Response {
        let mut path_known = false;
        for (method, path, handler) in &self.routes {
            if *path == req.path {
                path_known = true;
                if *method == req.method {
                    return handler(req);
                }
            }
        }
        for (method, prefix, handler) in &self.prefixes {
            if req.path.len() > prefix.len() && req.path.starts_with(prefix) {
                path_known = true;
                if *method == req.method {
                    return handler(req);
                }
            }
        }
        if path_known {
            Response::error(
                405,
                &format!("method `{}` not allowed on `{}`", req.method, req.path),
            )
        } else {
            Response::error(404, &format!("no such endpoint `{}`", req.path))
        }
    }
}

/// Appends more Prometheus lines (policy, recorder) to `/metrics`.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The routes every build serves.
pub fn base_router(metrics: Arc<Metrics>, extra: ExtraMetrics) -> Router {
    let ready = metrics.clone();
    Router::default()
        .route("GET", "/healthz", |_| Response::text(200, "ok\n"))
        .route("GET", "/readyz", move |_| {
            if ready.ready() {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "not ready: not every worker is listening\n")
            }
        })
        .route("GET", "/metrics", move |_| {
            let mut body = metrics.render();
            extra(&mut body);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: body.into_bytes(),
            }
        })
}

/// Binds `addr` now (so a bad address fails start) and serves `router` on a new thread.
pub fn spawn(addr: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("portcullis-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve_one(s, &router) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

fn serve_one(mut s: TcpStream, router: &Router) -> std::io::Result<()> {
    s.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_ADMIN_REQUEST_BYTES];
    let mut filled = 0;
    let response = loop {
        let Some(space) = buf.get_mut(filled..) else {
            break Response::error(431, "request head too large");
        };
        if space.is_empty() {
            break Response::error(431, "request head too large");
        }
        let n = s.read(space)?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_ADMIN_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf.get(..filled).unwrap_or_default()) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("GET");
                let target = req.path.unwrap_or("/");
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                if header("transfer-encoding").is_some() {
                    break Response::error(
                        411,
                        "chunked bodies are not accepted: send content-length",
                    );
                }
                let body_len = match header("content-length")
                    .map(str::trim)
                    .map(str::parse::<usize>)
                {
                    None => 0,
                    Some(Ok(n)) if n <= MAX_ADMIN_BODY_BYTES => n,
                    Some(Ok(_)) => {
                        break Response::error(
                            413,
                            &format!("request body larger than {MAX_ADMIN_BODY_BYTES} bytes"),
                        );
                    }
                    Some(Err(_)) => break Response::error(400, "bad content-length"),
                };
                let authorization = header("authorization");
                let mut body: Vec<u8> = buf
                    .get(head_len..filled)
                    .unwrap_or_default()
                    .iter()
                    .copied()
                    .take(body_len)
                    .collect();
                while body.len() < body_len {
                    let mut chunk = [0u8; 4096];
                    let want = (body_len - body.len()).min(chunk.len());
                    let n = s.read(chunk.get_mut(..want).unwrap_or_default())?;
                    if n == 0 {
                        return Ok(());
                    }
                    body.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                break router.handle(&Request {
                    method,
                    path,
                    authorization,
                    body: &body,
                });
            }
            Err(e) => break Response::error(400, &format!("bad request: {e}")),
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&response.body)?;
    s.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_errors() {
        let r = base_router(
            Arc::new(Metrics::new(1, vec!["web".into()])),
            Arc::new(|_: &mut String| {}),
        );
        let get = |path| r.handle(&Request::bare("GET", path));
        assert_eq!(get("/healthz").status, 200);
        assert_eq!(get("/readyz").status, 503);
        let m = get("/metrics");
        assert!(
            String::from_utf8(m.body)
                .unwrap()
                .contains("portcullis_connections_accepted_total")
        );
        let nf = get("/nope");
        assert_eq!(nf.status, 404);
        assert_eq!(nf.content_type, "application/json");
        let post = r.handle(&Request::bare("POST", "/healthz"));
        assert_eq!(post.status, 405);
    }

    fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn bodies_are_read_up_to_the_limit() {
        let router = Router::default()
            .route("POST", "/echo", |r| {
                Response::text(
                    200,
                    format!(
                        "{} {}",
                        r.authorization.unwrap_or("-"),
                        String::from_utf8_lossy(r.body)
                    ),
                )
            })
            .route_prefix("POST", "/items/", |r| {
                Response::text(200, r.path.to_owned())
            });
        let addr = spawn("127.0.0.1:0".parse().unwrap(), router).unwrap();
        let ok = raw(
            addr,
            b"POST /echo HTTP/1.1\r\nAuthorization: Bearer t0k\r\ncontent-length: 11\r\n\r\n{\"a\": true}",
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("Bearer t0k {\"a\": true}"), "{ok}");
        let big = format!(
            "POST /echo HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_ADMIN_BODY_BYTES + 1
        );
        assert!(raw(addr, big.as_bytes()).starts_with("HTTP/1.1 413"));
        let chunked = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(raw(addr, chunked).starts_with("HTTP/1.1 411"));
        let item = raw(addr, b"POST /items/42/kill HTTP/1.1\r\n\r\n");
        assert!(item.ends_with("/items/42/kill"), "{item}");
        assert!(raw(addr, b"POST /items/ HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    }
}
