//! The PostgreSQL socket driver: one monoio task per client connection, a thin loop over the
//! sans-IO pieces of this module.
//!
//! A session goes through these steps, each waiting on one thing:
//! 1. **startup** ([`ClientSession`]): TLS answer and handshake, StartupMessage, the token as a
//!    cleartext password (or a CancelRequest, routed through the [`CancelRegistry`]);
//! 2. **authorization**: the token verified through the worker's cache, the access check
//!    against the policy snapshot current at that moment (kept for the whole session);
//! 3. **upstream**: connect with a timeout, TLS per `upstream_tls`, login with the held
//!    credential ([`UpstreamAuth`]), then the client is greeted with the gateway's own cancel
//!    key;
//! 4. **relay**: each client message is decided by the [`Inspector`] before it may be
//!    forwarded, each server message is masked by it, and the gateway's own replies are
//!    ordered by the [`ResponseSequencer`]. Between passes the driver reads the side that
//!    can speak next: the server while it owes the answer to a whole batch, the client while
//!    everything is answered, both sockets at once otherwise (see `Relay::wait_for`).
//!
//! Backpressure: a side is read only after everything read before has been written to the
//! other side, so a slow peer slows its counterpart and buffers stay bounded by one read
//! plus one message. With `record_frames`, every batch written to either side is also
//! queued as a `frames` row (client side after masking). A statement a `review` rule matched
//! is held on its core (see [`super::hold`]): the client is told the review id, later client
//! messages wait in the buffer, and the statement is forwarded unchanged on approval or
//! refused on denial, timeout or cancellation.
//!
//! [`CancelRegistry`]: crate::services::CancelRegistry

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::Canceller;
use monoio::net::TcpStream;
use recorder::{Direction, FrameRecord, Micros, Outcome, SessionEnd, SessionInfo};

use super::backend;
use super::channel_binding;
use super::client_session::{ALPN_POSTGRESQL, ClientConfig, ClientEvent, ClientSession};
use super::frontend::FrontendFrame;
use super::frontend::{self, CancelKey, FrontendMessage};
use super::hold::{Held, HeldEnd};
use super::inspect::{ClientVerdict, CommandEvent, Inspector, policy_identity};
use super::route::{PgRoute, STARTUP_TIMEOUT};
use super::sequencer::ResponseSequencer;
use super::upstream_auth::{UpstreamAuth, UpstreamCredential, UpstreamReady};
use super::{PgError, cancel};
use crate::config::UpstreamTls;
use crate::identity::{Identity, now_unix};
use crate::metrics::{CommandClock, ConnCounters, ErrorKind};
use crate::reviews::{Outcome as ReviewOutcome, Requested, Requester, ReviewRequest, Subject};
use crate::services::{CancelRoute, PolicySnapshot, WorkerServices};
use crate::sessions::LiveGuard;
use crate::tcp::{SessionStop, StopReason};
use crate::transport::{self, TlsStream, Transport};

mod buffers;
mod startup;
mod upstream;
mod wait;

use crate::transport::ReadSize;
use buffers::{SMALL_READ, read_size, trim};

use startup::{startup, verify};
use upstream::{
    connect_upstream, forward_cancel, register_cancel, upstream_closed, upstream_credential,
    upstream_io,
};
use wait::{WaitFor, cancelled, read_either, read_one};

/// Bytes asked of a socket per read while its peer has much to say (see [`buffers`]).
pub const READ_CHUNK: usize = 16 * 1024;

/// Bytes gathered for one side before they are written out, so one read of many small
/// messages becomes one write while a burst cannot grow a buffer without bound.
pub const WRITE_BATCH: usize = 64 * 1024;

/// Longest wait on the sockets before the session re-checks shutdown and idleness.
const TICK: Duration = Duration::from_secs(1);

/// Startup parameters passed on to the upstream: presentation settings only. Anything else
/// (`options`, `role`, replication) could change what the held credential may do.
const FORWARDED_PARAMS: &[&[u8]] = &[
    b"application_name",
    b"client_encoding",
    b"DateStyle",
    b"TimeZone",
    b"IntervalStyle",
    b"extra_float_digits",
];

/// How a session ended, for its `sessions` row.
#[derive(Debug, Clone)]
pub struct PgTotals {
    pub outcome: Outcome,
    pub reason: Option<Arc<str>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The client side of a session: its transport and byte counts.
struct Client<'a> {
    /// `None` only while the plain stream is inside the TLS handshake.
    transport: Option<Transport>,
    bytes_in: u64,
    bytes_out: u64,
    counters: &'a ConnCounters,
    read_size: ReadSize,
}

impl Client<'_> {
    async fn write(&mut self, out: &mut BytesMut) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let n = out.len() as u64;
        self.transport_mut()?.write_buf(out).await?;
        self.bytes_out = self.bytes_out.saturating_add(n);
        ConnCounters::add(&self.counters.bytes_upstream_to_client, n);
        Ok(())
    }

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let want = self.read_size.get();
        let n = self.transport_mut()?.read_into(buf, want).await?;
        self.read_size.after(n);
        self.count_in(n);
        Ok(n)
    }

    fn transport_mut(&mut self) -> io::Result<&mut Transport> {
        self.transport
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "tls handshake failed"))
    }

    fn count_in(&mut self, n: usize) {
        self.bytes_in = self.bytes_in.saturating_add(n as u64);
        ConnCounters::add(&self.counters.bytes_client_to_upstream, n as u64);
    }

    /// Sends a FATAL error (best effort: the session is ending anyway).
    async fn fatal(&mut self, session: &mut ClientSession, error: &PgError) {
        let mut out = BytesMut::new();
        session.refuse(error, &mut out);
        let _ = self.write(&mut out).await;
    }
}

fn end(client: &Client<'_>, outcome: Outcome, reason: Option<String>) -> PgTotals {
    PgTotals {
        outcome,
        reason: reason.map(Into::into),
        bytes_in: client.bytes_in,
        bytes_out: client.bytes_out,
    }
}

/// Serves one accepted client to the end and records its session.
pub async fn serve(
    stream: TcpStream,
    client_addr: SocketAddr,
    route: &PgRoute,
    ws: &WorkerServices,
    counters: &ConnCounters,
    stop: &SessionStop,
) -> PgTotals {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        transport: Some(Transport::Plain(stream)),
        bytes_in: 0,
        bytes_out: 0,
        counters,
        read_size: read_size(),
    };
    let mut session = ClientSession::new(ClientConfig {
        tls_available: route.server_tls.is_some(),
        allow_plaintext: route.allow_plaintext,
        limits: route.limits,
    });
    let started_at = Micros::now();
    let setup_began = Instant::now();
    let mut cin = BytesMut::new();

    // 1. Startup, bounded in time: a client that never finishes it holds nothing for long.
    let token = match monoio::time::timeout(
        STARTUP_TIMEOUT,
        startup(&mut client, &mut session, &mut cin, route, ws),
    )
    .await
    {
        Ok(Ok(Some(token))) => token,
        Ok(Ok(None)) => {
            // libpq 17+ sends its CancelRequest inside TLS and waits for the TLS close_notify:
            // a bare TCP close reads as "unexpected eof" and the cancel is reported failed.
            if let Some(t) = client.transport.as_mut() {
                let _ = t.shutdown().await;
            }
            return end(&client, Outcome::Ok, None);
        }
        Ok(Err(reason)) => return end(&client, Outcome::Error, Some(reason)),
        Err(_) => {
            return end(
                &client,
                Outcome::Error,
                Some("startup not completed in time".into()),
            );
        }
    };

    // 2. Authorization.
    let mut info = SessionInfo {
        id: ws.ids.borrow_mut().next_id(),
        worker: u16::try_from(ws.index).unwrap_or(u16::MAX),
        connection: Arc::clone(&route.name),
        protocol: "postgres",
        subject: "".into(),
        email: None,
        groups: Arc::from(Vec::new()),
        client_addr: client_addr.to_string().into(),
        upstream: Arc::clone(&route.upstream_label),
        started_at,
        policy_version: "".into(),
    };
    let identity = match verify(ws, &token) {
        Ok(id) => id,
        Err((e, presented)) => {
            info.subject = presented.unwrap_or_default().into();
            let reason = e.audit_reason();
            client.fatal(&mut session, &e).await;
            let totals = end(&client, Outcome::AuthFailed, Some(reason));
            record_session(ws, Arc::new(info), &totals);
            return totals;
        }
    };
    info.subject = identity.subject.as_str().into();
    info.email = identity.email.as_deref().map(Into::into);
    info.groups = identity
        .groups
        .iter()
        .map(|g| Arc::from(g.as_str()))
        .collect();
    // The snapshot current now decides the whole session; its version goes on every record.
    let snapshot = ws.shared.policy.current();
    info.policy_version = Arc::clone(&snapshot.version);
    let info = Arc::new(info);
    let grant_until =
        ws.shared
            .reviews
            .grants()
            .expires(&identity.subject, &route.name, now_unix());
    let who = policy_identity(&identity);
    let access = snapshot.policy.check_access(
        &route.name,
        &who,
        &policy_engine::AccessContext {
            has_grant: grant_until.is_some(),
            ..policy_engine::AccessContext::default()
        },
    );
    // A session only the grant admits ends with the grant.
    let access_until = grant_until.filter(|_| {
        access.is_ok()
            && snapshot
                .policy
                .check_access(&route.name, &who, &policy_engine::AccessContext::default())
                .is_err()
    });
    let policy = match access {
        Ok(()) => ws.session_policy(&snapshot.policy, &route.name, &who),
        Err(why) => {
            let e = PgError::AccessDenied {
                reason: why.to_string(),
            };
            client.fatal(&mut session, &e).await;
            let totals = end(&client, Outcome::Denied, Some(e.to_string()));
            record_session(ws, info, &totals);
            return totals;
        }
    };
    if !ws.record(|p| p.session_started(&info)) {
        let e = PgError::internal("the audit recorder cannot take records; try again later");
        client.fatal(&mut session, &e).await;
        return end(&client, Outcome::Error, Some(e.to_string()));
    }

    // 3. Upstream.
    let credential = upstream_credential(route, &session);
    let params: Vec<(Bytes, Bytes)> = session
        .startup()
        .map(|s| {
            s.params
                .iter()
                .filter(|(n, _)| FORWARDED_PARAMS.contains(&n.as_ref()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let (mut upstream, mut uin, ready) = match connect_upstream(route, &credential, &params).await {
        Ok(u) => u,
        Err(e) => {
            counters.error(ErrorKind::UpstreamUnreachable);
            tracing::warn!(connection = %route.name, upstream = %route.upstream_label, error = %e, "upstream login failed");
            client.fatal(&mut session, &e).await;
            let totals = end(&client, Outcome::Error, Some(e.to_string()));
            record_session(ws, info, &totals);
            return totals;
        }
    };
    // One line per upstream login: shows an operator that channel binding is in use.
    tracing::info!(connection = %route.name, upstream = %route.upstream_label, method = ready.method, "upstream login");
    let cancel_key = register_cancel(ws, route, &ready);
    let mut out = BytesMut::new();
    let greeted = session
        .accept(&mut out, &ready.parameters, cancel_key, ready.status)
        .is_ok()
        && client.write(&mut out).await.is_ok();
    let totals = if greeted {
        counters.record_setup(setup_began);
        // 4. Relay.
        let live = ws.shared.sessions.register(&info);
        let mut relay = Relay {
            identity: Arc::clone(&identity),
            held: None,
            live: &live,
            session,
            sequencer: ResponseSequencer::new(),
            inspector: Inspector::new(
                Arc::clone(&info),
                policy,
                Arc::clone(&snapshot),
                Arc::clone(&identity),
                ws.shared.session_grace,
                route.limits,
            ),
            snapshot: Arc::clone(&snapshot),
            route,
            ws,
            last_activity: Instant::now(),
            frame_seq: 0,
            probe_readies: 0,
            clock: CommandClock::default(),
            unanswered: false,
            single_read_timed_out: false,
            upstream_read: read_size(),
        };
        if let Some(until) = access_until {
            relay.inspector.end_access_at(until);
        }
        // The login's ParameterStatus messages: a role or database default may already have
        // turned standard_conforming_strings off.
        for (name, value) in &ready.parameters {
            relay.inspector.server_parameter(name, value);
        }
        let (outcome, reason) = relay
            .run(&mut client, &mut upstream, &mut cin, &mut uin, stop)
            .await;
        if let Some(held) = relay.held.take() {
            // The session ended while a statement was held: the review is cancelled and the
            // statement recorded as never run.
            let why = reason.as_deref().unwrap_or("the client disconnected");
            ws.shared.reviews.cancel(&held.id, why);
            relay.inspector.refuse_hold(
                held.hold,
                Some(held.id),
                format!("review cancelled: {why}"),
                &mut |e| record_command(ws, e),
            );
        }
        relay
            .inspector
            .abandon("session ended before the server answered", &mut |e| {
                record_command(ws, e)
            });
        end(&client, outcome, reason)
    } else {
        end(
            &client,
            Outcome::Error,
            Some("client closed during the greeting".into()),
        )
    };
    ws.shared.cancels.remove(cancel_key.process_id);
    if let Some(t) = client.transport.as_mut() {
        let _ = t.shutdown().await;
    }
    let _ = upstream.shutdown().await;
    let ended = ws.record(|p| {
        p.session_ended(SessionEnd {
            session: Arc::clone(&info),
            ended_at: Micros::now(),
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            outcome: totals.outcome,
            reason: totals.reason.clone(),
        })
    });
    if !ended {
        tracing::warn!(session = %info.id, "the recorder refused a session end record");
    }
    totals
}

/// Queues one of the inspector's command records on this worker's recorder queue.
fn record_command(ws: &WorkerServices, event: CommandEvent) -> bool {
    match event {
        CommandEvent::Started(r) => ws.record(|p| p.command_started(r)),
        CommandEvent::Finished(r) => ws.record(|p| p.command(r)),
    }
}

/// Records a session that never reached the relay: its start and end together.
fn record_session(ws: &WorkerServices, info: Arc<SessionInfo>, totals: &PgTotals) {
    let started = ws.record(|p| p.session_started(&info));
    let ended = ws.record(|p| {
        p.session_ended(SessionEnd {
            session: Arc::clone(&info),
            ended_at: Micros::now(),
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            outcome: totals.outcome,
            reason: totals.reason.clone(),
        })
    });
    if !(started && ended) {
        tracing::warn!(session = %info.id, "the recorder refused a session record");
    }
}

/// The authenticated part of a session.
struct Relay<'a> {
    identity: Arc<Identity>,
    /// The statement waiting for a review, if any: while set, no client message is decided.
    held: Option<Held>,
    live: &'a LiveGuard<'a>,
    snapshot: Arc<PolicySnapshot>,
    session: ClientSession,
    sequencer: ResponseSequencer,
    inspector: Inspector,
    route: &'a PgRoute,
    ws: &'a WorkerServices,
    last_activity: Instant,
    /// Next `frames.seq` of this session.
    frame_seq: u64,
    /// ReadyForQuery answers to refusal probes, which the inspector never sees.
    probe_readies: u64,
    clock: CommandClock,
    /// Bytes were forwarded to the server since its last ReadyForQuery that left nothing
    /// owed: it may still answer them (a Flush, a refusal probe), so both sockets are read.
    unanswered: bool,
    /// The last wait read one socket only and ended on the timer: the next reads both, so
    /// whatever the unread side said meanwhile (a NOTIFY after a LISTEN issued from a
    /// function, a server FATAL, a client gone mid-query) is seen within a tick or two.
    single_read_timed_out: bool,
    /// Size of the next upstream read (the client's is in [`Client`]).
    upstream_read: ReadSize,
}

impl Relay<'_> {
    async fn run(
        &mut self,
        client: &mut Client<'_>,
        upstream: &mut Transport,
        cin: &mut BytesMut,
        uin: &mut BytesMut,
        stop: &SessionStop,
    ) -> (Outcome, Option<String>) {
        let mut to_up = BytesMut::new();
        let mut to_client = BytesMut::new();
        loop {
            // Client → upstream, one bounded batch.
            let (pass_began, ready_before) = (Instant::now(), self.readies());
            let client_step = self.client_batch(cin, &mut to_up, &mut to_client);
            if !to_up.is_empty() && !self.frame(Direction::FromClient, &to_up) {
                return self.frames_refused(client).await;
            }
            let forwarded = !to_up.is_empty();
            if !to_up.is_empty()
                && let Err(e) = upstream.write_buf(&mut to_up).await
            {
                let e = PgError::UpstreamConnect {
                    reason: e.to_string(),
                };
                client.fatal(&mut self.session, &e).await;
                return (Outcome::Error, Some(e.to_string()));
            }
            match client_step {
                Step::Continue(_) => {}
                Step::End => {
                    self.frame(Direction::ToClient, &to_client);
                    let _ = client.write(&mut to_client).await;
                    return (Outcome::Ok, None);
                }
                Step::Fatal(e) => {
                    self.session.refuse(&e, &mut to_client);
                    self.frame(Direction::ToClient, &to_client);
                    let _ = client.write(&mut to_client).await;
                    return (Outcome::Error, Some(e.to_string()));
                }
            }
            // Upstream → client, one bounded batch.
            let up_step = self.upstream_batch(uin, &mut to_client);
            if !self.frame(Direction::ToClient, &to_client) {
                return self.frames_refused(client).await;
            }
            if let Err(e) = client.write(&mut to_client).await {
                return (Outcome::Error, Some(format!("client write failed: {e}")));
            }
            let answered = self.readies() > ready_before;
            if forwarded {
                self.unanswered = true;
            } else if answered && !self.inspector.awaiting_ready() {
                self.unanswered = false;
            }
            let stages = &mut self.inspector.stage_times;
            (self.clock).pass(pass_began, forwarded, answered, stages, client.counters);
            if let Step::Fatal(e) = up_step {
                client.fatal(&mut self.session, &e).await;
                return (Outcome::Error, Some(e.to_string()));
            }
            let more = matches!(client_step, Step::Continue(true))
                || matches!(up_step, Step::Continue(true));
            if more {
                continue;
            }

            if stop.reason() == Some(StopReason::Shutdown) {
                client
                    .fatal(&mut self.session, &PgError::AdminShutdown)
                    .await;
                return (Outcome::Ok, Some("gateway shutdown".into()));
            }
            if self.live.killed() {
                client
                    .fatal(&mut self.session, &PgError::AdminTerminated)
                    .await;
                return (Outcome::Ok, Some("ended by an administrator".into()));
            }
            if let Some(held) = &self.held {
                if let Some(end) = held.ended(&self.ws.shared.reviews) {
                    let step = self.finish_hold(end, &mut to_up, &mut to_client);
                    if let Step::Fatal(e) = step {
                        self.session.refuse(&e, &mut to_client);
                        let _ = client.write(&mut to_client).await;
                        return (Outcome::Error, Some(e.to_string()));
                    }
                    continue;
                }
                // A held session is waiting on people, not idle.
                self.last_activity = Instant::now();
            }
            let idle_left = self
                .route
                .idle_timeout
                .saturating_sub(self.last_activity.elapsed());
            if idle_left.is_zero() {
                client.counters.error(ErrorKind::IdleTimeout);
                let e =
                    PgError::client("idle timeout: no traffic for the connection's idle_timeout");
                client.fatal(&mut self.session, &e).await;
                return (Outcome::Ok, Some("idle timeout".into()));
            }
            let wait_for = self.wait_for();
            if wait_for == WaitFor::Client {
                // Everything is answered: the session may now sit idle for hours, so it keeps
                // no buffer a burst grew.
                for buf in [&mut *cin, &mut *uin, &mut to_up, &mut to_client] {
                    trim(buf);
                }
                upstream.trim();
                if let Some(t) = client.transport.as_mut() {
                    t.trim();
                }
            }
            let client_read = client.read_size.get();
            let upstream_read = self.upstream_read.get();
            let Ok(client_transport) = client.transport_mut() else {
                return (Outcome::Error, Some("client transport lost".into()));
            };
            let (wait, read_client, waiter) = match self.held.as_mut() {
                Some(h) => (
                    h.time_left().min(TICK),
                    cin.len() < super::hold::HELD_CLIENT_BYTES,
                    Some(&mut h.waiter),
                ),
                None => (idle_left.min(TICK), true, None),
            };
            let (rc, ru) = match wait_for {
                WaitFor::Server => (None, read_one(upstream, uin, upstream_read, wait).await),
                WaitFor::Client => (
                    read_one(client_transport, cin, client_read, wait).await,
                    None,
                ),
                WaitFor::Both => {
                    read_either(
                        (client_transport, cin, client_read),
                        read_client,
                        (upstream, uin, upstream_read),
                        wait,
                        waiter,
                    )
                    .await
                }
            };
            client.read_size.after_result(rc.as_ref());
            self.upstream_read.after_result(ru.as_ref());
            self.single_read_timed_out = rc.is_none() && ru.is_none();
            match rc {
                Some(Ok(0)) => {
                    let why = if self.held.is_some() {
                        Some("the client disconnected while its statement was held".into())
                    } else {
                        None
                    };
                    return (Outcome::Ok, why);
                }
                Some(Ok(n)) => {
                    client.count_in(n);
                    self.last_activity = Instant::now();
                }
                Some(Err(e)) if !cancelled(&e) => {
                    client.counters.error(ErrorKind::ClientIo);
                    return (Outcome::Error, Some(format!("client read failed: {e}")));
                }
                _ => {}
            }
            match ru {
                Some(Ok(0)) => {
                    let e = upstream_closed();
                    client.fatal(&mut self.session, &e).await;
                    return (Outcome::Error, Some(e.to_string()));
                }
                Some(Ok(_)) => self.last_activity = Instant::now(),
                Some(Err(e)) if !cancelled(&e) => {
                    client.counters.error(ErrorKind::UpstreamIo);
                    let e = upstream_io(e);
                    client.fatal(&mut self.session, &e).await;
                    return (Outcome::Error, Some(e.to_string()));
                }
                _ => {}
            }
        }
    }

    /// Which socket(s) the next wait reads. Reading both means arming a read on each and
    /// cancelling the loser, two extra io_uring operations and a cancel round trip on the
    /// critical path of every request and every answer; in the common rhythm only one side
    /// can speak next:
    /// - the server owes a ReadyForQuery for a whole batch and needs nothing from the client
    ///   to send it: read the server only (pipelined client bytes wait in the kernel, as they
    ///   would in front of PostgreSQL itself);
    /// - everything forwarded has been answered and nothing (COPY, LISTEN) lets the server
    ///   speak on its own: read the client only.
    ///
    /// Anything else, a held statement, or a single read that just timed out, reads both.
    fn wait_for(&self) -> WaitFor {
        if self.held.is_some() || self.single_read_timed_out {
            WaitFor::Both
        } else if self.inspector.awaiting_ready() {
            WaitFor::Server
        } else if !self.unanswered && self.inspector.server_quiet() {
            WaitFor::Client
        } else {
            WaitFor::Both
        }
    }

    /// Round trips the server has closed with ReadyForQuery, refusal probes included: the
    /// latency clock ends a round trip on each.
    fn readies(&self) -> u64 {
        self.inspector.ready_seen() + self.probe_readies
    }

    /// Queues a `frames` row for replay when the connection records frames: the bytes about to
    /// be forwarded upstream, or about to be written to the client (after masking, so replay
    /// shows what the client saw). One row per write, not per protocol message: replay needs
    /// the bytes and their order, and a batch is what went over the wire at once. Returns
    /// false when the recorder refused it (the caller ends the session: the traffic would
    /// otherwise go unrecorded).
    fn frame(&mut self, direction: Direction, bytes: &[u8]) -> bool {
        if !self.route.record_frames || bytes.is_empty() {
            return true;
        }
        let seq = self.frame_seq;
        self.frame_seq += 1;
        let frame = FrameRecord {
            session: Arc::clone(self.inspector.session()),
            seq,
            at: Micros::now(),
            direction,
            payload: Bytes::copy_from_slice(bytes),
        };
        self.ws.record(|p| p.frame(frame))
    }

    /// Ends a session whose frames the recorder no longer takes (fail closed).
    async fn frames_refused(&mut self, client: &mut Client<'_>) -> (Outcome, Option<String>) {
        let e = PgError::AuditUnavailable;
        client.fatal(&mut self.session, &e).await;
        (
            Outcome::Error,
            Some("the recorder refused a frame record".into()),
        )
    }

    /// Decides buffered client messages until the buffer needs more bytes or a batch is full.
    fn client_batch(
        &mut self,
        cin: &mut BytesMut,
        to_up: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Step {
        let ws = self.ws;
        let mut record = |e| record_command(ws, e);
        loop {
            if self.held.is_some() {
                return Step::Continue(false);
            }
            if to_up.len() >= WRITE_BATCH || to_client.len() >= WRITE_BATCH {
                return Step::Continue(true);
            }
            let event = match self.session.read(cin, to_client) {
                Ok(e) => e,
                Err(e) => return Step::Fatal(e),
            };
            match event {
                None => return Step::Continue(false),
                Some(ClientEvent::Message(frame)) => {
                    let verdict = {
                        let mut scratch = ws.scratch.borrow_mut();
                        self.inspector.on_client(
                            &frame.message,
                            &mut scratch,
                            ws.recorder_accepting(),
                            &mut record,
                        )
                    };
                    if let Some(step) = self.apply(verdict, frame, to_up, to_client) {
                        return step;
                    }
                    if self.held.is_some() {
                        // Later messages stay buffered until the review ends.
                        return Step::Continue(false);
                    }
                }
                Some(ClientEvent::Terminate) => {
                    frontend::encode_terminate(to_up);
                    return Step::End;
                }
                Some(ClientEvent::Replied | ClientEvent::Skipped) => {}
                Some(
                    ClientEvent::StartTls
                    | ClientEvent::StartDirectTls
                    | ClientEvent::Cancel(_)
                    | ClientEvent::Token(_),
                ) => {
                    return Step::Fatal(PgError::client("startup message after authentication"));
                }
            }
        }
    }

    /// Carries out one verdict on `frame`: forward it, answer it with an error, or hold it for
    /// review. `Some(step)` when the batch must stop.
    fn apply(
        &mut self,
        verdict: ClientVerdict,
        frame: FrontendFrame,
        to_up: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Option<Step> {
        match verdict {
            ClientVerdict::Forward => {
                if let Err(e) = self.sequencer.forwarded(&frame.message) {
                    return Some(Step::Fatal(e));
                }
                to_up.extend_from_slice(&frame.raw);
            }
            ClientVerdict::Refuse(e) => {
                if !matches!(
                    frame.message,
                    FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. }
                ) {
                    self.session.enter_extended_error();
                }
                let fields = e.to_error_fields();
                if let Err(e) = self.sequencer.refuse(&frame.message, &fields, to_up) {
                    return Some(Step::Fatal(e));
                }
            }
            ClientVerdict::Fatal(e) => return Some(Step::Fatal(e)),
            ClientVerdict::Hold(hold) => return self.hold(hold, frame, to_up, to_client),
        }
        None
    }

    /// Opens a review for a held statement and tells the client it waits.
    fn hold(
        &mut self,
        hold: super::inspect::Hold,
        frame: FrontendFrame,
        to_up: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Option<Step> {
        let ws = self.ws;
        let mut record = |e| record_command(ws, e);
        let request = ReviewRequest {
            requester: Requester::from_identity(&self.identity),
            connection: Arc::clone(&self.route.name),
            subject: Subject::Command {
                session: self.inspector.session().id,
                command_seq: Some(hold.command_seq),
            },
            text: Arc::clone(&hold.text),
            rule: Arc::clone(&hold.rule),
            spec: hold.spec.clone(),
            webhooks: self
                .snapshot
                .policy
                .webhooks_for(&self.route.name)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        };
        match ws.shared.reviews.request(request) {
            Err(e) => {
                let e = self.inspector.refuse_hold(
                    hold,
                    None,
                    format!("the statement needs review, which could not be opened: {e}"),
                    &mut record,
                );
                self.apply(ClientVerdict::Refuse(e), frame, to_up, to_client)
            }
            Ok(Requested::Covered { id, approvers }) => {
                let verdict = self.inspector.release(
                    hold,
                    &frame.message,
                    id,
                    &approvers,
                    ws.recorder_accepting(),
                    &mut record,
                );
                self.apply(verdict, frame, to_up, to_client)
            }
            Ok(Requested::Pending { id, waiter }) => {
                super::hold::notice(to_client, &id, &hold);
                self.live.set_held(Some(Arc::clone(&id)));
                self.held = Some(Held::new(id, waiter, hold, frame));
                None
            }
        }
    }

    /// The held statement's review ended: forward it or refuse it.
    fn finish_hold(
        &mut self,
        end: HeldEnd,
        to_up: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Step {
        let Some(held) = self.held.take() else {
            return Step::Continue(false);
        };
        self.live.set_held(None);
        let ws = self.ws;
        let mut record = |e| record_command(ws, e);
        let verdict = match end {
            HeldEnd(ReviewOutcome::Approved { approvers }) => self.inspector.release(
                held.hold,
                &held.frame.message,
                Arc::clone(&held.id),
                &approvers,
                ws.recorder_accepting(),
                &mut record,
            ),
            HeldEnd(other) => {
                let message = super::hold::refusal(&held.id, &other);
                ClientVerdict::Refuse(self.inspector.refuse_hold(
                    held.hold,
                    Some(Arc::clone(&held.id)),
                    message,
                    &mut record,
                ))
            }
        };
        match self.apply(verdict, held.frame, to_up, to_client) {
            Some(step) => step,
            None => Step::Continue(true),
        }
    }

    /// Masks and forwards buffered server messages until more bytes are needed or the batch
    /// for the client is full.
    fn upstream_batch(&mut self, uin: &mut BytesMut, to_client: &mut BytesMut) -> Step {
        let ws = self.ws;
        let mut record = |e| record_command(ws, e);
        loop {
            if to_client.len() >= WRITE_BATCH {
                return Step::Continue(true);
            }
            let frame = match backend::decode_message(uin, &self.route.limits) {
                Ok(Some(f)) => f,
                Ok(None) => return Step::Continue(false),
                Err(e) => return Step::Fatal(e),
            };
            self.session.observe_backend(&frame.message);
            if self.sequencer.answer_refusal(&frame, to_client) {
                if matches!(frame.message, backend::BackendMessage::ReadyForQuery(_)) {
                    self.probe_readies += 1;
                }
                continue;
            }
            if let Err(e) = self.inspector.on_backend(&frame, to_client, &mut record) {
                return Step::Fatal(e);
            }
            self.sequencer.on_backend(&frame.message);
        }
    }
}

/// What a batch step left to do.
#[derive(Debug)]
enum Step {
    /// Keep going; `true` when bytes are still buffered (do not wait on the sockets).
    Continue(bool),
    /// The client said goodbye.
    End,
    Fatal(PgError),
}
