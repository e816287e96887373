//! The raw `tcp` connection type: connect to the upstream, then relay bytes both ways.
//!
//! Each direction is one loop over one owned buffer of [`RELAY_BUFFER_BYTES`]: read into it,
//! write all of it to the other side, repeat. The buffer travels with the in-flight io_uring
//! operation and comes back with its result, and the next read starts only after the write
//! finished, so a slow reader slows its peer and a session never holds more than two buffers.
//! When one side ends its stream (EOF), the other side's write half is shut down and the
//! opposite direction keeps flowing (half-close). A failure in either direction, the idle
//! timeout or the shutdown deadline stops the whole session through one [`SessionStop`].
//!
//! This module does not inspect bytes, does not retry upstreams and does not accept sockets:
//! the runtime hands it an accepted client.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::io::{
    AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent,
    CancelableAsyncWriteRentExt, Canceller, Splitable,
};
use monoio::net::TcpStream;

use crate::audit::SessionOutcome;
use crate::limits::{RELAY_BUFFER_BYTES, RELAY_READS_PER_TURN};
use crate::metrics::{ConnCounters, ErrorKind};

/// What a worker needs to serve one `tcp` connection entry.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    pub name: Arc<str>,
    /// As configured (`host:port`), for logs and records.
    pub upstream_label: Arc<str>,
    /// Resolved at start.
    pub upstream: SocketAddr,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a session was told to stop before both sides closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Idle,
    Shutdown,
    /// One direction failed; the other is stopped with it.
    PeerFailed,
}

/// Stops every in-flight operation of one session. The operations are cancelled, not dropped,
/// so their buffers and results come back through the normal path.
pub struct SessionStop {
    canceller: RefCell<Option<Canceller>>,
    handle: CancelHandle,
    reason: Cell<Option<StopReason>>,
}

impl std::fmt::Debug for SessionStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStop")
            .field("reason", &self.reason.get())
            .finish_non_exhaustive()
    }
}

impl Default for SessionStop {
    fn default() -> Self {
        let canceller = Canceller::new();
        SessionStop {
            handle: canceller.handle(),
            canceller: RefCell::new(Some(canceller)),
            reason: Cell::new(None),
        }
    }
}

impl SessionStop {
    /// The first reason wins; later calls are no-ops.
    pub fn stop(&self, reason: StopReason) {
        if let Some(c) = self.canceller.borrow_mut().take() {
            self.reason.set(Some(reason));
            // `cancel` hands back a fresh canceller for reuse; this session has no further use.
            drop(c.cancel());
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get()
    }

    fn handle(&self) -> CancelHandle {
        self.handle.clone()
    }
}

/// Totals of one finished session.
#[derive(Debug, Clone, Copy)]
pub struct SessionTotals {
    pub outcome: SessionOutcome,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Serves one accepted client to the end: connect, relay, classify. Counts bytes and errors
/// into `counters` as they happen so `/metrics` moves during long sessions.
pub async fn serve(
    client: TcpStream,
    client_addr: SocketAddr,
    route: &TcpRoute,
    counters: &ConnCounters,
    stop: &SessionStop,
) -> SessionTotals {
    let failed = |outcome| SessionTotals {
        outcome,
        bytes_in: 0,
        bytes_out: 0,
    };
    let upstream = match connect(route).await {
        Ok(s) => s,
        Err((kind, e)) => {
            counters.error(kind);
            tracing::warn!(
                connection = %route.name,
                client = %client_addr,
                upstream = %route.upstream_label,
                error = %e,
                kind = kind.as_str(),
                "upstream connect failed; closing client"
            );
            // Dropping the client closes it now rather than letting it wait on a dead session.
            drop(client);
            return failed(SessionOutcome::UpstreamConnectFailed);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    relay(client, upstream, route, counters, stop).await
}

async fn connect(route: &TcpRoute) -> Result<TcpStream, (ErrorKind, io::Error)> {
    // The connect runs as its own task and is never dropped in flight: on io_uring a dropped
    // connect can leak the socket the kernel already connected. On timeout the task is left
    // to finish and closes its socket itself.
    let attempt = monoio::spawn(TcpStream::connect_addr(route.upstream));
    match monoio::time::timeout(route.connect_timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorKind::UpstreamRefused
            } else {
                ErrorKind::UpstreamUnreachable
            };
            Err((kind, e))
        }
        Err(_) => Err((
            ErrorKind::UpstreamConnectTimeout,
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", route.connect_timeout),
            ),
        )),
    }
}

#[derive(Debug)]
enum PumpEnd {
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    route: &TcpRoute,
    counters: &ConnCounters,
    stop: &SessionStop,
) -> SessionTotals {
    let activity = Cell::new(Instant::now());
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let inbound = pump(
        client_r,
        upstream_w,
        stop,
        &activity,
        &counters.bytes_client_to_upstream,
    );
    let outbound = pump(
        upstream_r,
        client_w,
        stop,
        &activity,
        &counters.bytes_upstream_to_client,
    );
    let watchdog = idle_watchdog(&activity, route.idle_timeout, stop);
    let ((in_end, bytes_in), (out_end, bytes_out)) = monoio::select! {
        r = async { monoio::join!(inbound, outbound) } => r,
        _ = watchdog => unreachable_pending(),
    };

    let outcome = match stop.reason() {
        Some(StopReason::Idle) => {
            counters.error(ErrorKind::IdleTimeout);
            SessionOutcome::IdleTimeout
        }
        Some(StopReason::Shutdown) => SessionOutcome::ShutdownClosed,
        _ => classify(&in_end, &out_end, counters),
    };
    if !matches!(outcome, SessionOutcome::Closed) {
        tracing::debug!(
            connection = %route.name,
            outcome = outcome.as_str(),
            inbound = ?in_end,
            outbound = ?out_end,
            "session stopped"
        );
    }
    SessionTotals {
        outcome,
        bytes_in,
        bytes_out,
    }
}

/// The watchdog future never completes on its own; `select!` needs a value for that arm.
fn unreachable_pending() -> ((PumpEnd, u64), (PumpEnd, u64)) {
    ((PumpEnd::Eof, 0), (PumpEnd::Eof, 0))
}

fn classify(inbound: &PumpEnd, outbound: &PumpEnd, counters: &ConnCounters) -> SessionOutcome {
    // inbound reads the client and writes the upstream; outbound the reverse. A cancelled
    // operation is the echo of the other direction's failure, not a failure of its own.
    let failed = |e: &io::Error| e.raw_os_error() != Some(libc::ECANCELED);
    let client_failed = matches!(inbound, PumpEnd::ReadFailed(e) if failed(e))
        || matches!(outbound, PumpEnd::WriteFailed(e) if failed(e));
    let upstream_failed = matches!(outbound, PumpEnd::ReadFailed(e) if failed(e))
        || matches!(inbound, PumpEnd::WriteFailed(e) if failed(e));
    if client_failed {
        counters.error(ErrorKind::ClientIo);
        SessionOutcome::ClientError
    } else if upstream_failed {
        counters.error(ErrorKind::UpstreamIo);
        SessionOutcome::UpstreamError
    } else {
        SessionOutcome::Closed
    }
}

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    stop: &SessionStop,
    activity: &Cell<Instant>,
    counter: &AtomicU64,
) -> (PumpEnd, u64)
where
    R: CancelableAsyncReadRent,
    W: CancelableAsyncWriteRent + AsyncWriteRent,
{
    let mut buf: Vec<u8> = Vec::with_capacity(RELAY_BUFFER_BYTES);
    let mut total: u64 = 0;
    let mut reads_this_turn = 0u32;
    let end = loop {
        buf.clear();
        let (res, b) = from.cancelable_read(buf, stop.handle()).await;
        buf = b;
        match res {
            Ok(0) => {
                // Half-close: pass the EOF on, keep the other direction running.
                let _ = to.shutdown().await;
                break PumpEnd::Eof;
            }
            Ok(_) => activity.set(Instant::now()),
            Err(e) => break PumpEnd::ReadFailed(e),
        }
        let (res, b) = to.write_all(buf, stop.handle()).await;
        buf = b;
        match res {
            Ok(n) => {
                total = total.saturating_add(n as u64);
                ConnCounters::add(counter, n as u64);
            }
            Err(e) => break PumpEnd::WriteFailed(e),
        }
        reads_this_turn += 1;
        if reads_this_turn >= RELAY_READS_PER_TURN {
            reads_this_turn = 0;
            YieldOnce::default().await;
        }
    };
    if !matches!(end, PumpEnd::Eof) {
        stop.stop(StopReason::PeerFailed);
    }
    (end, total)
}

async fn idle_watchdog(activity: &Cell<Instant>, idle: Duration, stop: &SessionStop) {
    // A deadline past the end of representable time means "never idle".
    while let Some(deadline) = activity.get().checked_add(idle) {
        let now = Instant::now();
        if now >= deadline {
            stop.stop(StopReason::Idle);
            break;
        }
        monoio::time::sleep(deadline - now).await;
    }
    // Cancelled operations still complete through the pumps; wait for them there.
    std::future::pending::<()>().await;
}

/// Lets the other tasks of this core run once. Wakes itself, so the scheduler queues it behind
/// every task already ready.
#[derive(Debug, Default)]
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
