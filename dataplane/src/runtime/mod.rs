//! The thread-per-core runtime: worker threads, core pinning, driver choice, `SO_REUSEPORT`
//! listeners, connection limits and graceful shutdown.
//!
//! [`Gateway::start`] binds every listener up front (one socket per worker per connection, all
//! sharing the port through `SO_REUSEPORT`, so the kernel spreads connections over workers and
//! a bind failure is reported before anything runs), then starts one thread per worker, pinned
//! to a core unless `pin_workers = false`, each with its own monoio runtime. A connection lives
//! its whole life on the worker that accepted it. Workers share only read-mostly state and
//! relaxed atomics: the shutdown flag, their own metrics lines, and the connection-limit
//! counters (one atomic add per accepted connection, never per byte).
//!
//! Shutdown: [`ShutdownHandle::shutdown`] sets a flag every worker checks each
//! [`SHUTDOWN_POLL_MILLIS`]. A worker then cancels its accepts (and awaits the cancelled accepts,
//! since dropping one in flight can leak an fd on io_uring), lets sessions finish for
//! `drain_timeout`, stops the rest, and returns. This module does not handle signals or serve
//! the admin API; the binary does both.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::{CancelHandle, Canceller};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::audit;
use crate::config::{Config, Protocol};
use crate::limits::{LISTEN_BACKLOG, SHUTDOWN_POLL_MILLIS};
use crate::metrics::{ConnCounters, ErrorKind, Metrics};
use crate::postgres::driver as pg_driver;
use crate::postgres::route::PgRoute;
use crate::services::{Services, WorkerServices};
use crate::tcp::{self, SessionStop, StopReason, TcpRoute};

/// Which IO driver the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring when the host allows it, else epoll.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll even where io_uring works.
    Epoll,
}

/// The driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveDriver {
    IoUring,
    Epoll,
}

impl ActiveDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveDriver::IoUring => "io_uring",
            ActiveDriver::Epoll => "epoll",
        }
    }
}

/// Why the gateway could not start. All are our side or the host's, never a peer's.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "connection `{name}` uses protocol `{protocol}`, which this build cannot serve yet (only `tcp` and `postgres` are served)"
    )]
    UnsupportedProtocol { name: String, protocol: Protocol },
    #[error("connection `{name}`: cannot resolve upstream `{upstream}`: {reason}")]
    Resolve {
        name: String,
        upstream: String,
        reason: String,
    },
    #[error("connection `{name}`: cannot listen on `{addr}`: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Route(#[from] crate::postgres::route::RouteError),
    #[error("io_uring was requested (`--driver iouring`) but this host does not allow it")]
    IoUringUnavailable,
    #[error("worker {worker} failed to start: {reason}")]
    Worker { worker: usize, reason: String },
}

/// A worker that ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} panicked")]
pub struct WorkerPanicked {
    pub worker: usize,
}

/// Asks every worker to stop accepting and drain. Cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<AtomicBool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The running data plane.
#[derive(Debug)]
pub struct Gateway {
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    threads: Vec<JoinHandle<()>>,
    drivers: Vec<ActiveDriver>,
    listen_addrs: Vec<(String, SocketAddr)>,
}

/// How a worker serves one connection entry.
#[derive(Debug)]
enum Route {
    Tcp(TcpRoute),
    Postgres(PgRoute),
}

impl Route {
    fn name(&self) -> &Arc<str> {
        match self {
            Route::Tcp(r) => &r.name,
            Route::Postgres(r) => &r.name,
        }
    }

    fn upstream_label(&self) -> &Arc<str> {
        match self {
            Route::Tcp(r) => &r.upstream_label,
            Route::Postgres(r) => &r.upstream_label,
        }
    }
}

/// State shared read-only (plus atomics) by all workers.
#[derive(Debug)]
struct Shared {
    routes: Vec<Route>,
    conn_limits: Vec<Option<u64>>,
    conn_active: Vec<AtomicU64>,
    global_limit: u64,
    global_active: AtomicU64,
    drain_timeout: Duration,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    services: Arc<Services>,
}

impl Gateway {
    /// Validates that every connection can be served, resolves upstreams, binds all listeners
    /// and starts the workers. Returns once every worker listens (so `/readyz` is true).
    pub fn start(
        config: &Config,
        driver: DriverChoice,
        services: Arc<Services>,
    ) -> Result<Gateway, StartError> {
        // aws-lc seeds its random generator on first use, from jitter entropy: tens of
        // milliseconds of CPU, once per process. Pay it here rather than inside the first
        // client's login (cancel keys, TLS handshakes). A failure here is not fatal: each later
        // use checks its own result.
        let _ = aws_lc_rs::rand::fill(&mut [0u8; 8]);
        let mut routes = Vec::with_capacity(config.connections.len());
        for c in &config.connections {
            match c.protocol {
                Protocol::Tcp => {}
                Protocol::Postgres => {
                    routes.push(Route::Postgres(PgRoute::from_config(c)?));
                    continue;
                }
                _ => {
                    return Err(StartError::UnsupportedProtocol {
                        name: c.name.clone(),
                        protocol: c.protocol,
                    });
                }
            }
            let resolve_err = |reason: String| StartError::Resolve {
                name: c.name.clone(),
                upstream: c.upstream.clone(),
                reason,
            };
            let upstream = c
                .upstream
                .to_socket_addrs()
                .map_err(|e| resolve_err(e.to_string()))?
                .next()
                .ok_or_else(|| resolve_err("no addresses".into()))?;
            routes.push(Route::Tcp(TcpRoute {
                name: c.name.as_str().into(),
                upstream_label: c.upstream.as_str().into(),
                upstream,
                connect_timeout: c.connect_timeout,
                idle_timeout: c.idle_timeout,
            }));
        }

        let uring_ok = monoio::utils::detect_uring();
        let wanted = match driver {
            DriverChoice::IoUring if !uring_ok => return Err(StartError::IoUringUnavailable),
            DriverChoice::IoUring => ActiveDriver::IoUring,
            DriverChoice::Epoll => ActiveDriver::Epoll,
            DriverChoice::Auto if uring_ok => ActiveDriver::IoUring,
            DriverChoice::Auto => {
                tracing::warn!("io_uring is not available on this host; using epoll");
                ActiveDriver::Epoll
            }
        };

        let workers = config.gateway.workers;
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listen_addrs = Vec::new();
        for c in &config.connections {
            let mut addr = c.listen;
            for listeners in &mut per_worker {
                let l = bind_reuseport(addr).map_err(|source| StartError::Bind {
                    name: c.name.clone(),
                    addr,
                    source,
                })?;
                // With port 0 the first bind picks the port; the other workers join it.
                if addr.port() == 0 {
                    addr = l.local_addr().map_err(|source| StartError::Bind {
                        name: c.name.clone(),
                        addr,
                        source,
                    })?;
                }
                listeners.push(l);
            }
            tracing::info!(connection = %c.name, protocol = %c.protocol, listen = %addr, upstream = %c.upstream, workers, "listening");
            listen_addrs.push((c.name.clone(), addr));
        }

        let shutdown = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new(
            workers,
            config.connections.iter().map(|c| c.name.clone()).collect(),
        ));
        let shared = Arc::new(Shared {
            routes,
            conn_limits: config
                .connections
                .iter()
                .map(|c| c.max_connections)
                .collect(),
            conn_active: config
                .connections
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            global_limit: config.gateway.max_connections,
            global_active: AtomicU64::new(0),
            drain_timeout: config.gateway.drain_timeout,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            services,
        });

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let pin = config.gateway.pin_workers;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ActiveDriver, String>>();
        let mut threads = Vec::with_capacity(workers);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let core = if cores.is_empty() {
                None
            } else {
                cores.get(index % cores.len()).copied()
            };
            let spawned = std::thread::Builder::new()
                .name(format!("portcullis-w{index}"))
                .spawn(move || {
                    let placement = if !pin {
                        Placement::Unpinned
                    } else if core.is_some_and(core_affinity::set_for_current) {
                        Placement::Pinned
                    } else {
                        Placement::PinFailed
                    };
                    worker_thread(
                        index, wanted, driver, placement, core, listeners, shared, ready,
                    );
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shutdown.store(true, Ordering::Release);
                    return Err(StartError::Worker {
                        worker: index,
                        reason: e.to_string(),
                    });
                }
            }
        }
        drop(ready_tx);

        let mut drivers = Vec::with_capacity(workers);
        let mut failure = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(d)) => drivers.push(d),
                Ok(Err(reason)) => {
                    failure.get_or_insert(StartError::Worker {
                        worker: drivers.len(),
                        reason,
                    });
                }
                Err(_) => {
                    failure.get_or_insert(StartError::Worker {
                        worker: drivers.len(),
                        reason: "exited before listening".into(),
                    });
                    break;
                }
            }
        }
        let gateway = Gateway {
            shutdown,
            metrics,
            threads,
            drivers,
            listen_addrs,
        };
        if let Some(e) = failure {
            gateway.shutdown_handle().shutdown();
            let _ = gateway.wait();
            return Err(e);
        }
        Ok(gateway)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// The address each connection listens on (with port 0 resolved), in config order.
    pub fn listen_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listen_addrs
    }

    /// The driver each started worker runs.
    pub fn drivers(&self) -> &[ActiveDriver] {
        &self.drivers
    }

    /// Blocks until every worker has drained and stopped.
    pub fn wait(self) -> Result<(), WorkerPanicked> {
        let mut result = Ok(());
        for (worker, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() {
                result = Err(WorkerPanicked { worker });
            }
        }
        result
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Where a worker thread runs (`gateway.pin_workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On its own core, `i mod cores`.
    Pinned,
    /// Pinning was asked for but the host refused it (or reported no cores).
    PinFailed,
    /// Wherever the scheduler puts it.
    Unpinned,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site: the thread entry point"
)]
fn worker_thread(
    index: usize,
    wanted: ActiveDriver,
    choice: DriverChoice,
    placement: Placement,
    core: Option<core_affinity::CoreId>,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<ActiveDriver, String>>,
) {
    let core_label = match placement {
        Placement::Unpinned => "any".to_owned(),
        _ => core.map_or_else(|| "none".to_owned(), |c| c.id.to_string()),
    };
    if placement == Placement::PinFailed {
        tracing::warn!(worker = index, core = %core_label, "could not pin worker to its core");
    }
    if wanted == ActiveDriver::IoUring {
        match uring_runtime(true).or_else(|e| {
            tracing::info!(worker = index, error = %e, "io_uring without deferred task work");
            uring_runtime(false)
        }) {
            Ok(mut rt) => {
                tracing::info!(worker = index, core = %core_label, driver = "io_uring", "worker started");
                rt.block_on(worker_main(
                    index,
                    ActiveDriver::IoUring,
                    listeners,
                    shared,
                    ready,
                ));
                return;
            }
            Err(e) if choice == DriverChoice::IoUring => {
                let _ = ready.send(Err(format!("cannot create io_uring: {e}")));
                return;
            }
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "cannot create io_uring; using epoll");
            }
        }
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => {
            tracing::info!(worker = index, core = %core_label, driver = "epoll", "worker started");
            rt.block_on(worker_main(
                index,
                ActiveDriver::Epoll,
                listeners,
                shared,
                ready,
            ));
        }
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create epoll runtime: {e}")));
        }
    }
}

/// Per-worker session bookkeeping; lives on one thread only.
#[derive(Debug, Default)]
struct WorkerState {
    active: Cell<usize>,
    next_seq: Cell<u64>,
    sessions: RefCell<HashMap<u64, Rc<SessionStop>>>,
}

async fn worker_main(
    index: usize,
    driver: ActiveDriver,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<ActiveDriver, String>>,
) {
    let mut converted = Vec::with_capacity(listeners.len());
    for l in listeners {
        // The epoll driver needs non-blocking sockets; io_uring handles readiness itself.
        let l = l
            .set_nonblocking(driver == ActiveDriver::Epoll)
            .and_then(|()| monoio::net::TcpListener::from_std(l));
        match l {
            Ok(l) => converted.push(l),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot register listener: {e}")));
                return;
            }
        }
    }
    let Some(my_metrics) = shared.metrics.workers.get(index) else {
        let _ = ready.send(Err("no metrics slot".into()));
        return;
    };

    let state = Rc::new(WorkerState::default());
    let services = Rc::new(WorkerServices::new(index, shared.services.clone()));
    let canceller = Canceller::new();
    let accepts: Vec<_> = converted
        .into_iter()
        .enumerate()
        .map(|(conn, listener)| {
            monoio::spawn(accept_loop(
                index,
                conn,
                listener,
                canceller.handle(),
                shared.clone(),
                state.clone(),
                services.clone(),
            ))
        })
        .collect();
    my_metrics.listening.store(true, Ordering::Release);
    let _ = ready.send(Ok(driver));
    drop(ready);

    let tick = Duration::from_millis(SHUTDOWN_POLL_MILLIS);
    while !shared.shutdown.load(Ordering::Acquire) {
        monoio::time::sleep(tick).await;
    }
    // Not ready any more: load balancers should stop sending here while we drain.
    my_metrics.listening.store(false, Ordering::Release);
    drop(canceller.cancel());
    for a in accepts {
        a.await;
    }
    let open = state.active.get();
    tracing::info!(worker = index, open_sessions = open, drain_timeout = ?shared.drain_timeout, "stopped accepting; draining");

    let started = Instant::now();
    while state.active.get() > 0 && started.elapsed() < shared.drain_timeout {
        monoio::time::sleep(tick).await;
    }
    let left = state.active.get();
    if left > 0 {
        tracing::warn!(
            worker = index,
            sessions = left,
            "drain deadline passed; closing remaining sessions"
        );
        for s in state.sessions.borrow().values() {
            s.stop(StopReason::Shutdown);
        }
        // Cancelled sessions finish within a few ticks; bound the wait anyway.
        let stopped = Instant::now();
        while state.active.get() > 0 && stopped.elapsed() < Duration::from_secs(2) {
            monoio::time::sleep(tick).await;
        }
    }
    tracing::info!(worker = index, "worker stopped");
}

async fn accept_loop(
    worker: usize,
    conn: usize,
    listener: monoio::net::TcpListener,
    cancel: CancelHandle,
    shared: Arc<Shared>,
    state: Rc<WorkerState>,
    services: Rc<WorkerServices>,
) {
    let Some(counters) = shared
        .metrics
        .workers
        .get(worker)
        .and_then(|w| w.connections.get(conn))
    else {
        return;
    };
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, client_addr)) => {
                ConnCounters::add(&counters.accepted, 1);
                let Some(permit) = Permit::acquire(&shared, conn) else {
                    ConnCounters::add(&counters.rejected, 1);
                    tracing::debug!(worker, client = %client_addr, "connection limit reached; closing client");
                    drop(stream);
                    continue;
                };
                let seq = state.next_seq.get();
                state.next_seq.set(seq.wrapping_add(1));
                monoio::spawn(session(
                    worker,
                    conn,
                    seq,
                    stream,
                    client_addr,
                    permit,
                    shared.clone(),
                    state.clone(),
                    services.clone(),
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => break,
            Err(_) if shared.shutdown.load(Ordering::Acquire) => break,
            Err(e) => {
                counters.error(ErrorKind::Accept);
                tracing::warn!(worker, error = %e, "accept failed");
                // Typically out of fds: back off instead of spinning on the same error.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A held slot under the global and per-connection limits, released on drop (also when the
/// runtime is torn down with the session still open).
#[derive(Debug)]
struct Permit {
    shared: Arc<Shared>,
    conn: usize,
}

impl Permit {
    fn acquire(shared: &Arc<Shared>, conn: usize) -> Option<Permit> {
        let counter = shared.conn_active.get(conn)?;
        if shared.global_active.fetch_add(1, Ordering::AcqRel) >= shared.global_limit {
            shared.global_active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if let Some(Some(limit)) = shared.conn_limits.get(conn)
            && prev >= *limit
        {
            counter.fetch_sub(1, Ordering::AcqRel);
            shared.global_active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            shared: shared.clone(),
            conn,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.global_active.fetch_sub(1, Ordering::AcqRel);
        if let Some(c) = self.shared.conn_active.get(self.conn) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Undoes a session's bookkeeping when it ends, however it ends.
struct SessionGuard<'a> {
    state: Rc<WorkerState>,
    seq: u64,
    counters: &'a ConnCounters,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.state
            .active
            .set(self.state.active.get().saturating_sub(1));
        self.state.sessions.borrow_mut().remove(&self.seq);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site: the accept loop")]
async fn session(
    worker: usize,
    conn: usize,
    seq: u64,
    stream: monoio::net::TcpStream,
    client_addr: SocketAddr,
    _permit: Permit,
    shared: Arc<Shared>,
    state: Rc<WorkerState>,
    services: Rc<WorkerServices>,
) {
    let (Some(route), Some(counters)) = (
        shared.routes.get(conn),
        shared
            .metrics
            .workers
            .get(worker)
            .and_then(|w| w.connections.get(conn)),
    ) else {
        return;
    };
    let stop = Rc::new(SessionStop::default());
    state.sessions.borrow_mut().insert(seq, stop.clone());
    state.active.set(state.active.get() + 1);
    ConnCounters::add(&counters.active, 1);
    let _guard = SessionGuard {
        state: state.clone(),
        seq,
        counters,
    };
    match route {
        Route::Postgres(route) => {
            let totals =
                pg_driver::serve(stream, client_addr, route, &services, counters, &stop).await;
            tracing::info!(
                worker,
                connection = %route.name,
                client = %client_addr,
                bytes_in = totals.bytes_in,
                bytes_out = totals.bytes_out,
                outcome = totals.outcome.as_str(),
                reason = totals.reason.as_deref().unwrap_or(""),
                "session ended"
            );
        }
        Route::Tcp(tcp_route) => {
            // A raw relay has no identity: the record says who connected from where, and how
            // it ended.
            let info = Arc::new(audit::tcp_session_info(
                &services,
                route.name(),
                route.upstream_label(),
                client_addr,
            ));
            if !services.record(|p| p.session_started(&info)) {
                tracing::warn!(worker, connection = %route.name(), "the recorder refused a session; closing the client");
                return;
            }
            let totals = tcp::serve(stream, client_addr, tcp_route, counters, &stop).await;
            audit::tcp_session_ended(&services, info, &totals);
        }
    }
}

/// A worker's io_uring runtime. With `defer`, completions are posted only when the worker
/// waits for them (`IORING_SETUP_DEFER_TASKRUN`, which needs `SINGLE_ISSUER`: each ring is
/// created and driven by its one worker thread), instead of interrupting the worker with task
/// work as sockets become ready: interleaved A/B under `pgbench -S`-style load cut gateway
/// CPU per query by about 8 % (docs/benchmarks.md). Kernels before 6.1 refuse the flags;
/// the caller then builds without them.
fn uring_runtime(
    defer: bool,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if defer {
        urb.setup_defer_taskrun().setup_single_issuer();
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(urb)
        .enable_timer()
        .build()
}
