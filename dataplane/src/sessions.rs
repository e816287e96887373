//! Live sessions as the admin API sees them: who is connected where, since when, and a kill
//! flag per session.
//!
//! Workers register a session when it is authorized and remove it when it ends (the returned
//! [`LiveGuard`] removes it on drop, whatever path the session ends by). The table is touched
//! twice per session and once per admin request, never per statement. A kill sets the
//! session's flag; the session loop checks it on every turn and at least once per tick, then
//! ends the session with a protocol-native "terminated by administrator" error.
//!
//! This module does not close sockets itself: a worker's socket belongs to its core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use recorder::{SessionId, SessionInfo};
use serde::Serialize;

/// One live session as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSessionView {
    pub id: String,
    pub connection: String,
    pub protocol: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub client_addr: String,
    /// Microseconds since the Unix epoch.
    pub started_at: i64,
    pub worker: u16,
    /// The review this session is waiting on, if a statement is held.
    pub held_review: Option<String>,
}

#[derive(Debug)]
struct Live {
    info: Arc<SessionInfo>,
    kill: Arc<AtomicBool>,
    held: Option<Arc<str>>,
}

/// The live-session table shared by every worker and the admin thread.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    live: Mutex<HashMap<SessionId, Live>>,
}

/// Keeps a session registered; dropping it removes the session.
#[derive(Debug)]
pub struct LiveGuard<'a> {
    registry: &'a SessionRegistry,
    id: SessionId,
    kill: Arc<AtomicBool>,
}

impl LiveGuard<'_> {
    /// Whether an administrator asked to end this session.
    pub fn killed(&self) -> bool {
        self.kill.load(Ordering::Acquire)
    }

    /// Shows (or clears) the review the session is held on.
    pub fn set_held(&self, review: Option<Arc<str>>) {
        if let Some(l) = self
            .registry
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&self.id)
        {
            l.held = review;
        }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl SessionRegistry {
    /// Registers a live session until the guard drops.
    pub fn register(&self, info: &Arc<SessionInfo>) -> LiveGuard<'_> {
        let kill = Arc::new(AtomicBool::new(false));
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                info.id,
                Live {
                    info: Arc::clone(info),
                    kill: Arc::clone(&kill),
                    held: None,
                },
            );
        LiveGuard {
            registry: self,
            id: info.id,
            kill,
        }
    }

    /// Live sessions, oldest first.
    pub fn list(&self) -> Vec<LiveSessionView> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<LiveSessionView> = live
            .values()
            .map(|l| LiveSessionView {
                id: l.info.id.to_string(),
                connection: l.info.connection.to_string(),
                protocol: l.info.protocol.to_owned(),
                subject: l.info.subject.to_string(),
                groups: l.info.groups.iter().map(ToString::to_string).collect(),
                client_addr: l.info.client_addr.to_string(),
                started_at: l.info.started_at.0,
                worker: l.info.worker,
                held_review: l.held.as_deref().map(str::to_owned),
            })
            .collect();
        out.sort_by_key(|s| s.started_at);
        out
    }

    /// Asks the session `id` (as shown by [`SessionRegistry::list`]) to end. `false`: no such
    /// live session.
    pub fn kill(&self, id: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.iter().find(|(k, _)| k.to_string() == id) {
            Some((_, l)) => {
                l.kill.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recorder::Micros;

    fn info(id: u128) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            id: SessionId(id),
            worker: 0,
            connection: "pg".into(),
            protocol: "postgres",
            subject: "alice".into(),
            email: None,
            groups: Arc::from(vec![Arc::<str>::from("dev")]),
            client_addr: "127.0.0.1:1".into(),
            upstream: "db".into(),
            started_at: Micros(id as i64),
            policy_version: "v1".into(),
        })
    }

    #[test]
    fn register_list_kill_and_drop() {
        let reg = SessionRegistry::default();
        let a = reg.register(&info(1));
        let b = reg.register(&info(2));
        let listed = reg.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, SessionId(1).to_string());
        a.set_held(Some("r1".into()));
        assert_eq!(reg.list()[0].held_review.as_deref(), Some("r1"));
        assert!(reg.kill(&SessionId(2).to_string()));
        assert!(b.killed());
        assert!(!a.killed());
        assert!(!reg.kill("nope"));
        drop(b);
        assert_eq!(reg.list().len(), 1);
    }
}
