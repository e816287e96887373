//! Webhook notifications of new reviews: a Slack-compatible JSON body (`text` with the summary
//! and the approve/deny commands, plus a `review` object for machines), POSTed to every url of
//! the policy's `[[webhook]]` tables that match the connection.
//!
//! The registry only queues a job (a bounded channel, `try_send`): the data path never waits
//! on a webhook. One control-plane thread delivers jobs in order, retrying each url with
//! exponential backoff, and reports each url's outcome (delivered, or failed with the last
//! error) so that it is recorded as a `notified` review event. A full queue drops the job
//! and logs it; the review itself still stands and is listed by the admin API.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{ReviewId, ReviewRequest, ReviewView};

/// Notification jobs queued at most; more are dropped (logged) rather than buffered.
pub const MAX_NOTIFY_QUEUE: usize = 1024;

/// Largest webhook response body read (and ignored).
const MAX_WEBHOOK_RESPONSE_BYTES: u64 = 64 * 1024;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Tries per url, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubled before each later one.
    pub backoff: Duration,
    /// Whole-request timeout per try.
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            attempts: 4,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One review to announce.
#[derive(Debug)]
pub struct Job {
    pub id: ReviewId,
    pub request: ReviewRequest,
    pub view: ReviewView,
}

/// The queue side, kept by the registry.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Sender<Job>,
}

/// The delivery side: run it on its own thread with [`NotifierQueue::spawn`].
#[derive(Debug)]
pub struct NotifierQueue {
    rx: Receiver<Job>,
    cfg: NotifyConfig,
}

impl Notifier {
    pub fn new(cfg: NotifyConfig) -> (Notifier, NotifierQueue) {
        let (tx, rx) = crossbeam_channel::bounded(MAX_NOTIFY_QUEUE);
        (Notifier { tx }, NotifierQueue { rx, cfg })
    }

    pub(crate) fn notify(&self, id: &ReviewId, request: &ReviewRequest, view: ReviewView) {
        if request.webhooks.is_empty() {
            return;
        }
        let job = Job {
            id: Arc::clone(id),
            request: request.clone(),
            view,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j)) => {
                tracing::warn!(review = %j.id, "notification queue full: webhook not sent");
            }
            Err(TrySendError::Disconnected(j)) => {
                tracing::warn!(review = %j.id, "notifier stopped: webhook not sent");
            }
        }
    }
}

/// The Slack-compatible body for one review.
pub fn payload(view: &ReviewView) -> serde_json::Value {
    let what = if view.kind == "grant" {
        format!(
            "access to `{}` for {}s (reason: {})",
            view.connection,
            view.grant_seconds.unwrap_or(0),
            view.text
        )
    } else {
        format!("to run `{}` on `{}`", view.text, view.connection)
    };
    let text = format!(
        "Portcullis review {id}: {who} asks {what} (rule `{rule}`). Needs {n} approval(s) from [{groups}] before {expires} (unix).\nApprove: portcullis reviews approve {id}\nDeny: portcullis reviews deny {id} --reason \"...\"",
        id = view.id,
        who = view.requester,
        rule = view.rule,
        n = view.approvals_required,
        groups = view.approver_groups.join(", "),
        expires = view.expires_at,
    );
    serde_json::json!({ "text": text, "review": view })
}

impl NotifierQueue {
    /// Delivers jobs until every [`Notifier`] is dropped; `report(job, outcome)` is called
    /// once per url with `delivered ...` or `failed ...`.
    pub fn spawn(
        self,
        report: impl Fn(&Job, &str) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("portcullis-notify".into())
            .spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(self.cfg.timeout))
                    .http_status_as_error(true)
                    .build()
                    .new_agent();
                for job in &self.rx {
                    let body = payload(&job.view).to_string();
                    for url in &job.request.webhooks {
                        let outcome = deliver(&agent, &self.cfg, url, &body);
                        report(&job, &outcome);
                    }
                }
            })
    }
}

fn deliver(agent: &ureq::Agent, cfg: &NotifyConfig, url: &str, body: &str) -> String {
    let mut wait = cfg.backoff;
    let mut last = String::new();
    for attempt in 1..=cfg.attempts.max(1) {
        let sent = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body)
            .and_then(|mut r| {
                r.body_mut()
                    .with_config()
                    .limit(MAX_WEBHOOK_RESPONSE_BYTES)
                    .read_to_vec()
            });
        match sent {
            Ok(_) => return format!("delivered to {url} (attempt {attempt})"),
            Err(e) => {
                tracing::debug!(url, attempt, error = %e, "webhook delivery failed");
                last = e.to_string();
            }
        }
        if attempt < cfg.attempts {
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2);
        }
    }
    format!(
        "failed to deliver to {url} after {} attempt(s): {last}",
        cfg.attempts.max(1)
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    use policy_engine::ReviewSpec;
    use recorder::SessionId;

    use super::*;
    use crate::reviews::{Requester, Subject};

    fn job(urls: Vec<String>) -> (ReviewId, ReviewRequest, ReviewView) {
        let request = ReviewRequest {
            requester: Requester {
                subject: "alice".into(),
                email: None,
                groups: vec![],
            },
            connection: "orders".into(),
            subject: Subject::Command {
                session: SessionId(1),
                command_seq: Some(1),
            },
            text: "DELETE FROM t WHERE id = 1".into(),
            rule: "review-deletes".into(),
            spec: ReviewSpec {
                approvers: vec!["dba".into()],
                approvals: 1,
                timeout: Duration::from_secs(60),
            },
            webhooks: urls,
        };
        let view = ReviewView {
            id: "abc".into(),
            kind: "command",
            requester: "alice".into(),
            requester_email: None,
            connection: "orders".into(),
            session_id: None,
            text: request.text.to_string(),
            rule: "review-deletes".into(),
            approver_groups: vec!["dba".into()],
            approvals_required: 1,
            approved_by: vec![],
            requested_at: 0,
            expires_at: 60,
            grant_seconds: None,
        };
        ("abc".into(), request, view)
    }

    /// Answers 500 to the first `failures` requests, then 200; keeps the bodies.
    fn flaky_server(failures: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for (i, s) in l.incoming().flatten().enumerate() {
                let mut s = s;
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                // The body follows the head; read until the JSON closes.
                while !buf[..n].ends_with(b"}") {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(m) => n += m,
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.lock().unwrap().push(req);
                let status = if i < failures { "500 Oops" } else { "200 OK" };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        (url, bodies)
    }

    #[test]
    fn retries_with_backoff_then_reports_delivery_or_failure() {
        let (good, bodies) = flaky_server(2);
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hook", l.local_addr().unwrap())
        };
        let (notifier, queue) = Notifier::new(NotifyConfig {
            attempts: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        });
        let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&outcomes);
        let thread = queue
            .spawn(move |_, outcome| sink.lock().unwrap().push(outcome.to_owned()))
            .unwrap();
        let (id, request, view) = job(vec![good.clone(), dead.clone()]);
        notifier.notify(&id, &request, view);
        drop(notifier);
        thread.join().unwrap();
        let outcomes = outcomes.lock().unwrap();
        assert_eq!(outcomes[0], format!("delivered to {good} (attempt 3)"));
        assert!(
            outcomes[1].starts_with(&format!("failed to deliver to {dead} after 3 attempt(s)")),
            "{}",
            outcomes[1]
        );
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 3);
        let body = bodies[2].split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("portcullis reviews approve abc"), "{text}");
        assert!(text.contains("DELETE FROM t WHERE id = 1"), "{text}");
        assert_eq!(v["review"]["rule"], "review-deletes");
    }

    #[test]
    fn no_webhooks_no_job() {
        let (notifier, queue) = Notifier::new(NotifyConfig::default());
        let (id, request, view) = job(vec![]);
        notifier.notify(&id, &request, view);
        assert!(queue.rx.is_empty());
    }
}
