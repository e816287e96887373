//! Services every protocol driver shares: the policy snapshot (with its compiled masking
//! engine), the token verifier, the recorder producers and the cancel-key registry.
//!
//! The policy lives in a [`PolicyStore`]: an `Arc<PolicySnapshot>` behind a mutex held only for
//! the pointer copy. A worker takes the current snapshot when a session starts and keeps it for
//! the session's life, so a reload (SIGHUP) changes what the NEXT session gets and never stalls
//! or drops a live one. A reload that fails to load or compile leaves the old snapshot in place.
//!
//! The review registry, the live-session table and the grant store are control-plane state
//! behind their own short locks, touched when a session starts or ends and when a statement
//! is held, never per ordinary statement.
//!
//! This module does not read the config file, open sockets, handle signals or run threads: the
//! binary builds [`Services`] from the config and hands it to the runtime.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use policy_engine::mask::MaskEngine;
use policy_engine::{Policy, Scratch, SessionPolicy};
use recorder::{Producer, SessionIdGen};

use crate::identity::{TokenCache, Verifier};
use crate::postgres::frontend::CancelKey;
use crate::reviews::ReviewRegistry;
use crate::sessions::SessionRegistry;

/// Bytes of a generated masking key: an HMAC-SHA256 key as long as its output.
pub const MASK_KEY_BYTES: usize = 32;

/// Largest masking key file read; a key is a few dozen bytes, anything larger is a wrong path.
pub const MAX_MASK_KEY_FILE_BYTES: u64 = 4096;

/// File name of the generated per-install masking key, inside the recordings directory.
pub const GENERATED_MASK_KEY: &str = ".mask_key";

/// Why a policy could not be (re)loaded. Always the operator's files, never a peer.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("policy directory `{dir}` has errors:\n{errors}")]
    Policy {
        dir: PathBuf,
        errors: policy_engine::LoadErrors,
    },
    #[error("policy directory `{dir}`: masking rules do not compile: {source}")]
    Mask {
        dir: PathBuf,
        #[source]
        source: policy_engine::mask::MaskError,
    },
    #[error("masking key `{path}`: {reason}")]
    MaskKey { path: PathBuf, reason: String },
}

/// One loaded policy and the masking engine compiled from it.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub policy: Arc<Policy>,
    pub masks: MaskEngine,
    /// The policy's content hash, recorded with every command.
    pub version: Arc<str>,
}

/// The current policy, swappable atomically across workers.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    mask_key: Vec<u8>,
    current: Mutex<Arc<PolicySnapshot>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl PolicyStore {
    /// Loads `dir` and compiles its masking rules with `mask_key`.
    pub fn load(dir: &Path, mask_key: Vec<u8>) -> Result<PolicyStore, PolicyLoadError> {
        let snapshot = compile(dir, &mask_key)?;
        Ok(PolicyStore {
            dir: dir.to_owned(),
            mask_key,
            current: Mutex::new(Arc::new(snapshot)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    /// The snapshot new sessions use.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Loads the directory again and swaps it in. On error the old snapshot stays and the error
    /// is returned for the caller to log.
    pub fn reload(&self) -> Result<Arc<str>, PolicyLoadError> {
        match compile(&self.dir, &self.mask_key) {
            Ok(snapshot) => {
                let version = Arc::clone(&snapshot.version);
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(version)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Prometheus lines: the loaded version and reload counters.
    pub fn render_metrics(&self, out: &mut String) {
        let version = self.current().version.clone();
        let _ = writeln!(
            out,
            "# HELP portcullis_policy_info The loaded policy (content hash).\n# TYPE portcullis_policy_info gauge\nportcullis_policy_info{{version=\"{version}\"}} 1"
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_policy_reloads_total Policy reloads by result.\n# TYPE portcullis_policy_reloads_total counter\nportcullis_policy_reloads_total{{result=\"ok\"}} {}\nportcullis_policy_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
    }
}

fn compile(dir: &Path, mask_key: &[u8]) -> Result<PolicySnapshot, PolicyLoadError> {
    let policy = if dir.exists() {
        Policy::load_dir(dir).map_err(|errors| PolicyLoadError::Policy {
            dir: dir.to_owned(),
            errors,
        })?
    } else {
        // No directory: the empty policy, which grants no access (deny by default). Raw `tcp`
        // relays still run; token-authenticated connections refuse everyone until policy files
        // exist and SIGHUP loads them.
        tracing::warn!(dir = %dir.display(), "policy directory does not exist: no identity has access to any connection");
        Policy::default()
    };
    let specs: Vec<_> = policy.mask_specs().cloned().collect();
    let masks =
        MaskEngine::compile(&specs, policy.detector_specs(), mask_key).map_err(|source| {
            PolicyLoadError::Mask {
                dir: dir.to_owned(),
                source,
            }
        })?;
    let version: Arc<str> = if policy.version().is_empty() {
        "empty".into()
    } else {
        policy.version().into()
    };
    Ok(PolicySnapshot {
        policy: Arc::new(policy),
        masks,
        version,
    })
}

/// Reads the masking key from `configured`, or from `<recordings>/.mask_key`, generating that
/// file (random, mode 0600) on first use so pseudonyms stay stable across restarts.
pub fn load_mask_key(
    configured: Option<&Path>,
    recordings: &Path,
) -> Result<Vec<u8>, PolicyLoadError> {
    let path = configured.map_or_else(|| recordings.join(GENERATED_MASK_KEY), Path::to_owned);
    let err = |reason: String| PolicyLoadError::MaskKey {
        path: path.clone(),
        reason,
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_MASK_KEY_FILE_BYTES => {
            return Err(err(format!(
                "larger than the {MAX_MASK_KEY_FILE_BYTES} byte limit"
            )));
        }
        Ok(_) => {
            let key = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
            if key.is_empty() {
                return Err(err("the file is empty".into()));
            }
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && configured.is_none() => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let mut key = vec![0u8; MASK_KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| err("the system random source failed".into()))?;
    std::fs::create_dir_all(recordings).map_err(|e| err(e.to_string()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| err(e.to_string()))?;
    f.write_all(&key)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(path = %path.display(), "generated the masking key for the `hash` strategy");
    Ok(key)
}

/// Where a live session's cancel key leads: the upstream address and the upstream's own key.
#[derive(Debug, Clone, Copy)]
pub struct CancelRoute {
    /// The gateway secret the client must present.
    pub secret: u32,
    pub upstream: SocketAddr,
    pub upstream_key: CancelKey,
}

/// Cancel keys of live sessions, by the process id the gateway handed out. A CancelRequest may
/// land on any core (a fresh connection), so the table is shared; it is touched once when a
/// session starts, once when it ends and once per cancel, never per statement.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    routes: Mutex<HashMap<u32, CancelRoute>>,
}

impl CancelRegistry {
    /// Registers a route unless `process_id` is taken; returns whether it was registered.
    pub fn register(&self, process_id: u32, route: CancelRoute) -> bool {
        let mut map = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&process_id) {
            return false;
        }
        map.insert(process_id, route);
        true
    }

    pub fn remove(&self, process_id: u32) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&process_id);
    }

    /// The route for a presented key, when its secret matches.
    pub fn lookup(&self, key: CancelKey) -> Option<CancelRoute> {
        let map = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let route = map.get(&key.process_id)?;
        crate::postgres::cancel::secret_matches(key.secret_key, route.secret).then_some(*route)
    }
}

/// Everything shared by the workers besides the config.
#[derive(Debug)]
pub struct Services {
    pub policy: PolicyStore,
    /// `None` when the config has no `[identity]`: token-authenticated protocols then refuse
    /// every caller (fail closed).
    pub verifier: Option<Verifier>,
    /// After a token expires, how long its session may still run commands.
    pub session_grace: Duration,
    pub cancels: CancelRegistry,
    /// Statements and grant requests held for approval.
    pub reviews: ReviewRegistry,
    /// Live sessions for the admin API (list, kill).
    pub sessions: SessionRegistry,
    producers: Mutex<Vec<Option<Producer>>>,
}

impl Services {
    pub fn new(
        policy: PolicyStore,
        verifier: Option<Verifier>,
        session_grace: Duration,
        producers: Vec<Producer>,
    ) -> Services {
        Services {
            policy,
            verifier,
            session_grace,
            cancels: CancelRegistry::default(),
            reviews: ReviewRegistry::default(),
            sessions: SessionRegistry::default(),
            producers: Mutex::new(producers.into_iter().map(Some).collect()),
        }
    }

    /// Replaces the review registry (built with the control plane's recorder producer, the
    /// notifier and the grant store). Call before the workers start.
    #[must_use]
    pub fn with_reviews(mut self, reviews: ReviewRegistry) -> Services {
        self.reviews = reviews;
        self
    }

    /// Worker `index`'s recorder producer; each can be taken once.
    pub fn take_producer(&self, index: usize) -> Option<Producer> {
        self.producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(index)
            .and_then(Option::take)
    }
}

/// One worker's view of the services: its own recorder producer, token cache, policy scratch
/// and id generator. Lives on the worker's thread only; nothing here is shared across cores.
#[derive(Debug)]
pub struct WorkerServices {
    pub index: usize,
    pub shared: Arc<Services>,
    producer: Option<Producer>,
    pub ids: RefCell<SessionIdGen>,
    pub tokens: RefCell<TokenCache>,
    pub scratch: RefCell<Scratch>,
    session_policies: RefCell<SessionPolicies>,
    next_slot: Cell<u32>,
    /// Set when the recorder refused a record, cleared when it takes one again: while set, no
    /// new statement is forwarded (fail closed).
    refusing: Cell<bool>,
}

impl WorkerServices {
    pub fn new(index: usize, shared: Arc<Services>) -> WorkerServices {
        let producer = shared.take_producer(index);
        WorkerServices {
            index,
            producer,
            ids: RefCell::new(SessionIdGen::new(u16::try_from(index).unwrap_or(u16::MAX))),
            tokens: RefCell::new(TokenCache::default()),
            scratch: RefCell::new(Scratch::new()),
            session_policies: RefCell::new(SessionPolicies::default()),
            next_slot: Cell::new(0),
            refusing: Cell::new(false),
            shared,
        }
    }

    /// Queues a record through this worker's producer; `false` when it was refused (or there
    /// is no recorder), which callers treat as "do not forward".
    pub fn record(&self, push: impl FnOnce(&Producer) -> Result<(), recorder::Refused>) -> bool {
        let ok = self.producer.as_ref().is_some_and(|p| push(p).is_ok());
        self.refusing.set(!ok);
        ok
    }

    /// Whether new statements may be forwarded: the last record was taken.
    pub fn recorder_accepting(&self) -> bool {
        self.producer.is_some() && !self.refusing.get()
    }

    /// A fresh slot number for a session's cancel key.
    pub fn next_slot(&self) -> u32 {
        let s = self.next_slot.get();
        self.next_slot.set(s.wrapping_add(1));
        s
    }

    /// The rule list of a session whose access was checked: shared with this worker's other
    /// sessions on the same policy, connection and groups (see [`SessionPolicies`]).
    pub fn session_policy(
        &self,
        policy: &Arc<Policy>,
        connection: &str,
        identity: &policy_engine::Identity,
    ) -> Arc<SessionPolicy> {
        self.session_policies
            .borrow_mut()
            .get(policy, connection, identity)
    }
}

/// Most rule lists a worker keeps; past it the cache starts over. Distinct (connection,
/// groups) pairs are few in practice, and a miss costs one computation per session.
pub const MAX_SESSION_POLICIES: usize = 256;

/// A worker's session rule lists, by connection and sorted groups, for one policy snapshot.
///
/// A session's rule list (its applicable rules, kind index and statement filter) depends only
/// on the policy, the connection and the identity's groups, and takes several KiB. Sessions of
/// one team on one connection, or one service's pool, all have the same one: sharing it keeps
/// that memory and its computation off every session after the first. Access is not cached:
/// it depends on the time and on grants, and is checked per session. Per worker, not global:
/// no lock, and a worker's sessions only read it.
#[derive(Debug, Default)]
struct SessionPolicies {
    /// The policy the entries were computed from; another one empties the cache.
    policy: Option<Arc<Policy>>,
    entries: HashMap<(Box<str>, Vec<String>), Arc<SessionPolicy>>,
}

impl SessionPolicies {
    fn get(
        &mut self,
        policy: &Arc<Policy>,
        connection: &str,
        identity: &policy_engine::Identity,
    ) -> Arc<SessionPolicy> {
        if !self.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) {
            self.entries.clear();
            self.policy = Some(Arc::clone(policy));
        }
        let mut groups = identity.groups.clone();
        groups.sort_unstable();
        groups.dedup();
        let key = (Box::from(connection), groups);
        if let Some(p) = self.entries.get(&key) {
            return Arc::clone(p);
        }
        if self.entries.len() >= MAX_SESSION_POLICIES {
            self.entries.clear();
        }
        let p = Arc::new(policy.session_unchecked(connection, identity));
        self.entries.insert(key, Arc::clone(&p));
        p
    }
}

#[cfg(test)]
mod session_policy_tests {
    use std::path::PathBuf;

    use policy_engine::policy::compile_sources;
    use policy_engine::{Action, Dialect, Verdict};

    use super::*;

    const POLICY: &str = r#"
[[rule]]
id = "no-drop-for-eng"
groups = ["eng"]
match.statement = ["drop"]
action = "deny"
"#;

    fn policy() -> Arc<Policy> {
        Arc::new(compile_sources(&[(PathBuf::from("p.toml"), POLICY.to_owned())]).expect("policy"))
    }

    fn who(groups: &[&str]) -> policy_engine::Identity {
        policy_engine::Identity {
            subject: "s".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..policy_engine::Identity::default()
        }
    }

    fn verdict(p: &SessionPolicy, sql: &str) -> Verdict {
        let action = Action::Sql {
            dialect: Dialect::Postgres,
            text: sql,
        };
        p.decide(&action, &mut Scratch::new()).verdict
    }

    #[test]
    fn sessions_with_the_same_groups_share_one_rule_list() {
        let (policy, mut cache) = (policy(), SessionPolicies::default());
        let a = cache.get(&policy, "db", &who(&["eng", "ops"]));
        let b = cache.get(&policy, "db", &who(&["ops", "eng", "eng"]));
        assert!(Arc::ptr_eq(&a, &b), "group order and repeats do not matter");
        let other_groups = cache.get(&policy, "db", &who(&["ops"]));
        let other_conn = cache.get(&policy, "db2", &who(&["eng", "ops"]));
        assert!(!Arc::ptr_eq(&a, &other_groups) && !Arc::ptr_eq(&a, &other_conn));
        // The shared list decides as the session's own would.
        assert_eq!(verdict(&a, "drop table t"), Verdict::Deny);
        assert_eq!(verdict(&other_groups, "drop table t"), Verdict::Allow);
    }

    #[test]
    fn a_new_policy_and_a_full_cache_start_over() {
        let (first, mut cache) = (policy(), SessionPolicies::default());
        let a = cache.get(&first, "db", &who(&["eng"]));
        let second = policy();
        let b = cache.get(&second, "db", &who(&["eng"]));
        assert!(
            !Arc::ptr_eq(&a, &b),
            "a reload never serves the old rule list"
        );
        assert!(Arc::ptr_eq(b.policy(), &second));
        for i in 0..MAX_SESSION_POLICIES + 10 {
            cache.get(&second, &format!("db{i}"), &who(&["eng"]));
        }
        assert!(cache.entries.len() <= MAX_SESSION_POLICIES);
    }
}
