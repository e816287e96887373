//! Named limits for every size a peer or an operator file controls, in one place so that
//! `docs/limits.md` can list them and reviews can check each is enforced before allocating.
//! This module holds numbers only; the code that enforces each limit cites it by name.

/// Bytes one relay direction holds in flight. A session holds two of these, so memory per
/// tcp session is bounded by `2 * RELAY_BUFFER_BYTES` whatever the peers send: a slow reader
/// stops the opposite read until its write completes.
pub const RELAY_BUFFER_BYTES: usize = 64 * 1024;

/// Reads a relay direction completes before it lets other sessions on the same core run.
/// On the epoll driver a ready socket completes without suspending, so without this bound one
/// bulk transfer could monopolise its core.
pub const RELAY_READS_PER_TURN: u32 = 16;

/// Largest configuration file accepted; a larger one is refused before it is read whole.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Most worker threads a config may ask for.
pub const MAX_WORKERS: usize = 1024;

/// Most `[[connections]]` entries in one config (each one costs a listener per worker).
pub const MAX_CONNECTIONS_CONFIGURED: usize = 1024;

/// Default for `[gateway] max_connections`: concurrent sessions over all workers.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// Listen backlog of every data-plane listener.
pub const LISTEN_BACKLOG: i32 = 1024;

/// How often a worker checks the process-wide shutdown flag. Shutdown latency, not a data-path
/// cost: the check is one relaxed load per tick.
pub const SHUTDOWN_POLL_MILLIS: u64 = 25;
