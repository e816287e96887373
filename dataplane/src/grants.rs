//! Just-in-time access grants: "this identity may use this connection until then", created
//! when a grant review is approved and checked at session start for `[[access]]` entries with
//! `require_grant = true`.
//!
//! Grants persist in a small JSON file beside the recordings (`.grants.json`), rewritten
//! whole on every change: written to a temporary file, fsynced, renamed over the old one and
//! the directory fsynced, so a crash leaves either the old or the new file, never a torn one.
//! The file is read once at start; expired grants are dropped then and on every write.
//!
//! This module does not decide who may approve a grant (the review registry and the policy
//! do) and does not end sessions whose grant expires: a grant admits new sessions only.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::identity::UnixSeconds;

/// File name of the grant state, inside the recordings directory.
pub const GRANTS_FILE: &str = ".grants.json";

/// Largest grant file read at start; a bigger one is refused rather than parsed.
pub const MAX_GRANTS_FILE_BYTES: u64 = 4 << 20;

/// Most live grants kept; approving more fails until some expire.
pub const MAX_GRANTS: usize = 10_000;

/// One approved grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub subject: String,
    pub connection: String,
    /// Unix seconds after which the grant no longer admits sessions.
    pub expires_at: UnixSeconds,
    pub review_id: String,
    pub approvers: Vec<String>,
    pub reason: String,
}

/// Why the grant file could not be read or written. Always the gateway's own disk.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("grant file `{path}`: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("too many live grants (limit {MAX_GRANTS})")]
    Full,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    grants: Vec<Grant>,
}

/// The live grants, shared by the workers (read at session start) and the control plane.
#[derive(Debug, Default)]
pub struct GrantStore {
    path: Option<PathBuf>,
    grants: Mutex<Vec<Grant>>,
}

impl GrantStore {
    /// A store kept in memory only (tests, and gateways without a recordings directory).
    pub fn in_memory() -> GrantStore {
        GrantStore::default()
    }

    /// Loads `path` (missing: no grants), dropping grants that expired before `now`.
    pub fn load(path: &Path, now: UnixSeconds) -> Result<GrantStore, GrantError> {
        let err = |reason: String| GrantError::File {
            path: path.to_owned(),
            reason,
        };
        let grants = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_GRANTS_FILE_BYTES => {
                return Err(err(format!(
                    "larger than the {MAX_GRANTS_FILE_BYTES} byte limit"
                )));
            }
            Ok(_) => {
                let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let body: FileBody =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                body.grants
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        let grants: Vec<Grant> = grants.into_iter().filter(|g| g.expires_at > now).collect();
        Ok(GrantStore {
            path: Some(path.to_owned()),
            grants: Mutex::new(grants),
        })
    }

    /// Whether `subject` holds a live grant for `connection` at `now`.
    pub fn has(&self, subject: &str, connection: &str, now: UnixSeconds) -> bool {
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|g| g.subject == subject && g.connection == connection && g.expires_at > now)
    }

    /// When the last of `subject`'s live grants for `connection` ends, if it holds one at `now`.
    pub fn expires(
        &self,
        subject: &str,
        connection: &str,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|g| g.subject == subject && g.connection == connection && g.expires_at > now)
            .map(|g| g.expires_at)
            .max()
    }

    /// The live grants at `now`.
    pub fn list(&self, now: UnixSeconds) -> Vec<Grant> {
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect()
    }

    /// Adds a grant and persists the set. On a write error the grant is not kept, so what
    /// admits sessions is always what survives a restart.
    pub fn add(&self, grant: Grant, now: UnixSeconds) -> Result<(), GrantError> {
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Grant> = grants
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect();
        if next.len() >= MAX_GRANTS {
            return Err(GrantError::Full);
        }
        next.push(grant);
        if let Some(path) = &self.path {
            write_atomically(path, &next)?;
        }
        *grants = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, grants: &[Grant]) -> Result<(), GrantError> {
    let err = |reason: String| GrantError::File {
        path: path.to_owned(),
        reason,
    };
    let body = serde_json::to_vec_pretty(&FileBody {
        grants: grants.to_vec(),
    })
    .map_err(|e| err(e.to_string()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let aside = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&aside).map_err(|e| err(e.to_string()))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    drop(f);
    std::fs::rename(&aside, path).map_err(|e| err(e.to_string()))?;
    // The rename is durable only once the directory entry is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subject: &str, expires_at: UnixSeconds) -> Grant {
        Grant {
            subject: subject.into(),
            connection: "pg".into(),
            expires_at,
            review_id: "r1".into(),
            approvers: vec!["bob".into()],
            reason: "incident".into(),
        }
    }

    #[test]
    fn grants_survive_a_reload_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GRANTS_FILE);
        let store = GrantStore::load(&path, 100).unwrap();
        assert!(!store.has("alice", "pg", 100));
        store.add(grant("alice", 200), 100).unwrap();
        store.add(grant("carol", 150), 100).unwrap();
        assert!(store.has("alice", "pg", 199));
        assert!(!store.has("alice", "pg", 200));
        assert!(!store.has("alice", "other", 150));
        assert!(!path.with_extension("json.tmp").exists());

        let again = GrantStore::load(&path, 160).unwrap();
        assert!(again.has("alice", "pg", 160));
        assert!(!again.has("carol", "pg", 160), "expired grants are dropped");
        assert_eq!(again.list(160).len(), 1);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GRANTS_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(GrantStore::load(&path, 0).is_err());
    }
}
