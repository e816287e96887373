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
//! 4. **relay**: both sockets read at once; each client message is decided by the
//!    [`Inspector`] before it may be forwarded, each server message is masked by it, and
//!    the gateway's own replies are ordered by the [`ResponseSequencer`].
//!
//! Backpressure: a side is read only after everything read before has been written to the
//! other side, so a slow peer slows its counterpart and buffers stay bounded by one read
//! plus one message. With `record_frames`, every batch written to either side is also
//! queued as a `frames` row (client side after masking). The driver does not hold
//! statements for review yet (they are refused until reviews exist).
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
use super::client_session::{ClientConfig, ClientEvent, ClientSession};
use super::frontend::{self, CancelKey, FrontendMessage};
use super::inspect::{ClientVerdict, CommandEvent, Inspector, policy_identity};
use super::route::{PgRoute, STARTUP_TIMEOUT};
use super::sequencer::ResponseSequencer;
use super::upstream_auth::{UpstreamAuth, UpstreamCredential, UpstreamReady};
use super::{PgError, cancel};
use crate::config::UpstreamTls;
use crate::identity::{Identity, now_unix};
use crate::metrics::{CommandClock, ConnCounters, ErrorKind};
use crate::services::{CancelRoute, WorkerServices};
use crate::tcp::{SessionStop, StopReason};
use crate::transport::{self, TlsStream, Transport};

/// Bytes asked of a socket per read.
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
}

impl Client<'_> {
    async fn write(&mut self, out: &mut BytesMut) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let data = out.split().to_vec();
        let n = data.len() as u64;
        self.transport_mut()?.write_all(data).await?;
        self.bytes_out = self.bytes_out.saturating_add(n);
        ConnCounters::add(&self.counters.bytes_upstream_to_client, n);
        Ok(())
    }

    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let n = self.transport_mut()?.read_into(buf, READ_CHUNK).await?;
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
    let access = snapshot.policy.session_with(
        &route.name,
        &policy_identity(&identity),
        &policy_engine::AccessContext::default(),
    );
    let policy = match access {
        Ok(p) => p,
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
    let cancel_key = register_cancel(ws, route, &ready);
    let mut out = BytesMut::new();
    let greeted = session
        .accept(&mut out, &ready.parameters, cancel_key, ready.status)
        .is_ok()
        && client.write(&mut out).await.is_ok();
    let totals = if greeted {
        counters.record_setup(setup_began);
        // 4. Relay.
        let mut relay = Relay {
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
            route,
            ws,
            last_activity: Instant::now(),
            frame_seq: 0,
            probe_readies: 0,
            clock: CommandClock::default(),
        };
        let (outcome, reason) = relay
            .run(&mut client, &mut upstream, &mut cin, &mut uin, stop)
            .await;
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

/// Runs the startup until the token arrives. `Ok(None)`: the connection ended normally
/// (cancel request, terminate, close); `Err`: why it failed (already told to the client).
async fn startup(
    client: &mut Client<'_>,
    session: &mut ClientSession,
    cin: &mut BytesMut,
    route: &PgRoute,
    ws: &WorkerServices,
) -> Result<Option<Bytes>, String> {
    let mut out = BytesMut::new();
    loop {
        let event = session.read(cin, &mut out);
        match event {
            Ok(Some(ClientEvent::Token(token))) => return Ok(Some(token)),
            Ok(Some(ClientEvent::StartTls)) => {
                client.write(&mut out).await.map_err(|e| e.to_string())?;
                let Some(config) = &route.server_tls else {
                    return Err("client asked for tls that is not configured".into());
                };
                if !cin.is_empty() {
                    // Sent in clear before the handshake: it would be injected into the
                    // encrypted session.
                    let e = PgError::client("data sent before the tls handshake");
                    client.fatal(session, &e).await;
                    return Err(e.to_string());
                }
                let tcp = match client.transport.take() {
                    Some(Transport::Plain(tcp)) => tcp,
                    other => {
                        client.transport = other;
                        return Err("tls requested twice".into());
                    }
                };
                let conn = transport::server_connection(config).map_err(|e| e.to_string())?;
                let tls = TlsStream::handshake(tcp, conn)
                    .await
                    .map_err(|e| format!("client tls handshake failed: {e}"))?;
                client.transport = Some(Transport::TlsServer(Box::new(tls)));
                session.tls_established();
            }
            Ok(Some(ClientEvent::Cancel(key))) => {
                forward_cancel(ws, key).await;
                return Ok(None);
            }
            Ok(Some(ClientEvent::Terminate)) => return Ok(None),
            Ok(Some(ClientEvent::Replied | ClientEvent::Skipped)) => {
                client.write(&mut out).await.map_err(|e| e.to_string())?;
            }
            Ok(Some(ClientEvent::Message(_))) => {
                let e = PgError::client("message before authentication");
                client.fatal(session, &e).await;
                return Err(e.to_string());
            }
            Ok(None) => {
                client.write(&mut out).await.map_err(|e| e.to_string())?;
                if client.read(cin).await.map_err(|e| e.to_string())? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => {
                session.refuse(&e, &mut out);
                let _ = client.write(&mut out).await;
                return Err(e.to_string());
            }
        }
    }
}

fn verify(ws: &WorkerServices, token: &[u8]) -> Result<Arc<Identity>, (PgError, Option<String>)> {
    let Some(verifier) = &ws.shared.verifier else {
        return Err((
            PgError::ClientAuth {
                reason: "this gateway has no identity issuer configured".into(),
            },
            None,
        ));
    };
    let mut cache = ws.tokens.borrow_mut();
    verifier
        .verify_cached(&mut cache, token, now_unix())
        .map_err(|e| (PgError::TokenRefused(e), verifier.presented_subject(token)))
}

fn upstream_credential(route: &PgRoute, session: &ClientSession) -> UpstreamCredential {
    let mut credential = route.credential.clone();
    if credential.database.is_empty() {
        // No database configured: the one the client named, else the upstream user's own.
        credential.database = session
            .startup()
            .and_then(|s| s.database.as_ref())
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_else(|| credential.user.clone());
    }
    credential
}

/// Connects, runs TLS per the route and logs in. Errors never carry the credential.
async fn connect_upstream(
    route: &PgRoute,
    credential: &UpstreamCredential,
    params: &[(Bytes, Bytes)],
) -> Result<(Transport, BytesMut, UpstreamReady), PgError> {
    let tcp = connect_tcp(route.upstream, route.connect_timeout).await?;
    let _ = tcp.set_nodelay(true);
    let mut upstream = Transport::Plain(tcp);
    let mut uin = BytesMut::new();
    if route.upstream_tls != UpstreamTls::Disable {
        let mut req = BytesMut::new();
        frontend::encode_ssl_request(&mut req);
        upstream
            .write_all(req.to_vec())
            .await
            .map_err(upstream_io)?;
        let answer = loop {
            if let Some(a) = backend::decode_ssl_response(&mut uin)? {
                break a;
            }
            if upstream.read_into(&mut uin, 1).await.map_err(upstream_io)? == 0 {
                return Err(upstream_closed());
            }
        };
        if !answer {
            return Err(PgError::UpstreamConnect {
                reason: "the upstream does not accept tls (set `upstream_tls = \"disable\"` only on a trusted network)".into(),
            });
        }
        let Some(config) = &route.upstream_client_tls else {
            return Err(PgError::internal("upstream tls config missing"));
        };
        let Transport::Plain(tcp) = upstream else {
            return Err(PgError::internal("upstream already encrypted"));
        };
        let conn = transport::client_connection(config, route.upstream_name.clone())
            .map_err(upstream_io)?;
        let tls = TlsStream::handshake(tcp, conn)
            .await
            .map_err(|e| PgError::UpstreamConnect {
                reason: format!("tls handshake failed: {e}"),
            })?;
        upstream = Transport::TlsClient(Box::new(tls));
    }
    let extra: Vec<(&[u8], &[u8])> = params
        .iter()
        .map(|(n, v)| (n.as_ref(), v.as_ref()))
        .collect();
    let mut uout = BytesMut::new();
    let mut auth = UpstreamAuth::start(credential, &extra, None, &mut uout);
    let ready = monoio::time::timeout(route.connect_timeout, async {
        loop {
            if !uout.is_empty() {
                upstream
                    .write_all(uout.split().to_vec())
                    .await
                    .map_err(upstream_io)?;
            }
            if let Some(ready) = auth.feed(&mut uin, &route.limits, &mut uout)? {
                return Ok::<_, PgError>(ready);
            }
            if uout.is_empty()
                && upstream
                    .read_into(&mut uin, READ_CHUNK)
                    .await
                    .map_err(upstream_io)?
                    == 0
            {
                return Err(upstream_closed());
            }
        }
    })
    .await
    .map_err(|_| PgError::UpstreamConnect {
        reason: format!("login not completed within {:?}", route.connect_timeout),
    })??;
    Ok((upstream, uin, ready))
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, PgError> {
    // Spawned and never dropped in flight: on io_uring a dropped connect can leak a socket the
    // kernel already connected. On timeout the task finishes on its own and closes it.
    let attempt = monoio::spawn(TcpStream::connect_addr(addr));
    match monoio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(PgError::UpstreamConnect {
            reason: format!("cannot connect: {e}"),
        }),
        Err(_) => Err(PgError::UpstreamConnect {
            reason: format!("no answer within {timeout:?}"),
        }),
    }
}

fn upstream_io(e: io::Error) -> PgError {
    PgError::UpstreamConnect {
        reason: e.to_string(),
    }
}

fn upstream_closed() -> PgError {
    PgError::UpstreamConnect {
        reason: "the upstream closed the connection".into(),
    }
}

/// Mints the client's cancel key (core, slot and a random secret) and remembers where it
/// leads. The upstream's own key never reaches the client.
fn register_cancel(ws: &WorkerServices, route: &PgRoute, ready: &UpstreamReady) -> CancelKey {
    let core = u32::try_from(ws.index).unwrap_or(u32::MAX);
    // The server's process id when it is free in the table: clients compare BackendKeyData
    // with `pg_backend_pid()` and with the pid of a NotificationResponse (to skip their own
    // notifications). The secret stays the gateway's; minted ids cover a clash between upstreams.
    let mut secret = [0u8; 4];
    if let Some(upstream_key) = ready.cancel_key
        && aws_lc_rs::rand::fill(&mut secret).is_ok()
        && i32::try_from(upstream_key.process_id).is_ok_and(|pid| pid > 0)
    {
        let secret = u32::from_be_bytes(secret);
        let r = CancelRoute {
            secret,
            upstream: route.upstream,
            upstream_key,
        };
        if ws.shared.cancels.register(upstream_key.process_id, r) {
            return CancelKey {
                process_id: upstream_key.process_id,
                secret_key: secret,
            };
        }
    }
    for _ in 0..8 {
        let mut secret = [0u8; 4];
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            break;
        }
        let secret = u32::from_be_bytes(secret);
        let slot = ws.next_slot() & (cancel::MAX_SLOTS - 1);
        let Some(key) = cancel::mint(cancel::CancelTarget { core, slot }, secret) else {
            break;
        };
        let Some(upstream_key) = ready.cancel_key else {
            return key;
        };
        let route = CancelRoute {
            secret,
            upstream: route.upstream,
            upstream_key,
        };
        if ws.shared.cancels.register(key.process_id, route) {
            return key;
        }
    }
    // No key could be registered: hand out one that cancels nothing.
    CancelKey {
        process_id: 0,
        secret_key: 0,
    }
}

/// Passes a client's CancelRequest to the upstream with the upstream's own key. Unknown keys
/// are ignored silently, as the server does.
async fn forward_cancel(ws: &WorkerServices, key: CancelKey) {
    let Some(route) = ws.shared.cancels.lookup(key) else {
        return;
    };
    let Ok(mut tcp) = connect_tcp(route.upstream, Duration::from_secs(5)).await else {
        return;
    };
    let mut buf = BytesMut::new();
    frontend::encode_cancel_request(&mut buf, route.upstream_key);
    let (_, _) = monoio::io::AsyncWriteRentExt::write_all(&mut tcp, buf.to_vec()).await;
}

/// The authenticated part of a session.
struct Relay<'a> {
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
                && let Err(e) = upstream.write_all(to_up.split().to_vec()).await
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
            let Ok(client_transport) = client.transport_mut() else {
                return (Outcome::Error, Some("client transport lost".into()));
            };
            let (rc, ru) =
                read_either(client_transport, cin, upstream, uin, idle_left.min(TICK)).await;
            match rc {
                Some(Ok(0)) => return (Outcome::Ok, None),
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
                    match verdict {
                        ClientVerdict::Forward => {
                            if let Err(e) = self.sequencer.forwarded(&frame.message) {
                                return Step::Fatal(e);
                            }
                            to_up.extend_from_slice(&frame.raw);
                        }
                        ClientVerdict::Refuse(e) => {
                            if !matches!(
                                frame.message,
                                FrontendMessage::Query { .. }
                                    | FrontendMessage::FunctionCall { .. }
                            ) {
                                self.session.enter_extended_error();
                            }
                            let fields = e.to_error_fields();
                            if let Err(e) = self.sequencer.refuse(&frame.message, &fields, to_up) {
                                return Step::Fatal(e);
                            }
                        }
                        ClientVerdict::Fatal(e) => return Step::Fatal(e),
                    }
                }
                Some(ClientEvent::Terminate) => {
                    frontend::encode_terminate(to_up);
                    return Step::End;
                }
                Some(ClientEvent::Replied | ClientEvent::Skipped) => {}
                Some(ClientEvent::StartTls | ClientEvent::Cancel(_) | ClientEvent::Token(_)) => {
                    return Step::Fatal(PgError::client("startup message after authentication"));
                }
            }
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

fn cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// Reads both sockets at once; when one delivers (or `wait` passes) the other read is
/// cancelled and awaited, so no byte the kernel delivered is lost. A side whose read was
/// cancelled before any data came reports `Err(ECANCELED)`.
async fn read_either(
    client: &mut Transport,
    cin: &mut BytesMut,
    upstream: &mut Transport,
    uin: &mut BytesMut,
    wait: Duration,
) -> (Option<io::Result<usize>>, Option<io::Result<usize>>) {
    let mut canceller = Some(Canceller::new());
    let Some(handle) = canceller.as_ref().map(Canceller::handle) else {
        return (None, None);
    };
    let mut c = pin!(client.read_into_cancelable(cin, READ_CHUNK, handle.clone()));
    let mut u = pin!(upstream.read_into_cancelable(uin, READ_CHUNK, handle));
    let mut timer = pin!(monoio::time::sleep(wait));
    let mut rc = None;
    let mut ru = None;
    std::future::poll_fn(|cx| {
        if rc.is_none()
            && let Poll::Ready(r) = c.as_mut().poll(cx)
        {
            rc = Some(r);
        }
        if ru.is_none()
            && let Poll::Ready(r) = u.as_mut().poll(cx)
        {
            ru = Some(r);
        }
        if rc.is_some() && ru.is_some() {
            return Poll::Ready(());
        }
        if canceller.is_some()
            && (rc.is_some() || ru.is_some() || timer.as_mut().poll(cx).is_ready())
            && let Some(cn) = canceller.take()
        {
            drop(cn.cancel());
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    (rc, ru)
}
