//! The upstream side of a session: credential, connect (with a timeout), TLS, login with the
//! held credential, and the cancel keys that route a client's CancelRequest to the server.

// A split of the driver: it shares the driver's imports and private items.
use super::*;

pub(super) fn upstream_credential(route: &PgRoute, session: &ClientSession) -> UpstreamCredential {
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
pub(super) async fn connect_upstream(
    route: &PgRoute,
    credential: &UpstreamCredential,
    params: &[(Bytes, Bytes)],
) -> Result<(Transport, BytesMut, UpstreamReady), PgError> {
    let tcp = connect_tcp(route.upstream, route.connect_timeout).await?;
    let _ = tcp.set_nodelay(true);
    let mut upstream = Transport::Plain(tcp);
    let mut uin = BytesMut::new();
    let mut end_point = None;
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
        end_point = tls
            .connection()
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| channel_binding::tls_server_end_point(leaf));
        upstream = Transport::TlsClient(Box::new(tls));
    }
    let extra: Vec<(&[u8], &[u8])> = params
        .iter()
        .map(|(n, v)| (n.as_ref(), v.as_ref()))
        .collect();
    let mut uout = BytesMut::new();
    let mut auth = UpstreamAuth::start(credential, &extra, end_point, &mut uout);
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
                    .read_into(&mut uin, SMALL_READ)
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

pub(super) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, PgError> {
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

pub(super) fn upstream_io(e: io::Error) -> PgError {
    PgError::UpstreamConnect {
        reason: e.to_string(),
    }
}

pub(super) fn upstream_closed() -> PgError {
    PgError::UpstreamConnect {
        reason: "the upstream closed the connection".into(),
    }
}

/// Mints the client's cancel key (core, slot and a random secret) and remembers where it
/// leads. The upstream's own key never reaches the client.
pub(super) fn register_cancel(
    ws: &WorkerServices,
    route: &PgRoute,
    ready: &UpstreamReady,
) -> CancelKey {
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
pub(super) async fn forward_cancel(ws: &WorkerServices, key: CancelKey) {
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
