//! The startup phase of a client connection: TLS answer and handshake, StartupMessage, the
//! token as a cleartext password (or a CancelRequest), and the token's verification.

// A split of the driver: it shares the driver's imports and private items.
use super::*;

/// Runs the startup until the token arrives. `Ok(None)`: the connection ended normally
/// (cancel request, terminate, close); `Err`: why it failed (already told to the client).
pub(super) async fn startup(
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
                if !cin.is_empty() {
                    // Sent in clear before the handshake: it would be injected into the
                    // encrypted session.
                    let e = PgError::client("data sent before the tls handshake");
                    client.fatal(session, &e).await;
                    return Err(e.to_string());
                }
                start_tls(client, session, route, Vec::new(), false).await?;
            }
            Ok(Some(ClientEvent::StartDirectTls)) => {
                // The ClientHello is in `cin`: it goes to rustls, not to the decoder.
                let hello = cin.split().to_vec();
                start_tls(client, session, route, hello, true).await?;
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

/// Runs the client-side TLS handshake on the plain connection, starting from `already_read`
/// (a direct-TLS ClientHello). A direct connection must negotiate the `postgresql` ALPN
/// protocol, as the server requires, so TLS meant for another service is not taken as ours.
async fn start_tls(
    client: &mut Client<'_>,
    session: &mut ClientSession,
    route: &PgRoute,
    already_read: Vec<u8>,
    direct: bool,
) -> Result<(), String> {
    let Some(config) = &route.server_tls else {
        return Err("client asked for tls that is not configured".into());
    };
    let tcp = match client.transport.take() {
        Some(Transport::Plain(tcp)) => tcp,
        other => {
            client.transport = other;
            return Err("tls requested twice".into());
        }
    };
    let conn = transport::server_connection(config).map_err(|e| e.to_string())?;
    let tls = TlsStream::handshake_after(tcp, conn, already_read)
        .await
        .map_err(|e| format!("client tls handshake failed: {e}"))?;
    let alpn_ok = tls.connection().alpn_protocol() == Some(ALPN_POSTGRESQL);
    client.transport = Some(Transport::TlsServer(Box::new(tls)));
    session.tls_established();
    if direct && !alpn_ok {
        let e = PgError::client(
            "direct TLS connection established without the `postgresql` ALPN protocol",
        );
        client.fatal(session, &e).await;
        return Err(e.to_string());
    }
    Ok(())
}

pub(super) fn verify(
    ws: &WorkerServices,
    token: &[u8],
) -> Result<Arc<Identity>, (PgError, Option<String>)> {
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
