//! Byte transports for protocol drivers: a plain monoio TCP stream or TLS over one, behind one
//! small API that appends to an owned `BytesMut` and writes owned buffers.
//!
//! The TLS side drives a `rustls` connection by hand (sans-IO): ciphertext moves through owned
//! buffers handed to the kernel and back, plaintext is copied out of rustls into the caller's
//! buffer. We do not use an off-the-shelf monoio TLS wrapper because the maintained ones hide the
//! connection (no SNI, no peer certificates) and pin old rustls versions.
//!
//! Cancellation: a `read_into` future owns the caller's buffer while the read is in flight. Drop
//! such a future only when the session is being torn down (idle timeout, shutdown); the buffered
//! bytes go with it.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};

/// Ciphertext read from the socket in one go: one maximal TLS record plus header.
const TLS_READ_CHUNK: usize = 18 * 1024;

/// Ciphertext read while the peer says little: a handshake flight of a short chain, or
/// records of statements and short answers. The ciphertext buffers are kept this small too
/// (see [`ReadSize`]), so an idle TLS session does not keep 36 KiB of them.
const TLS_SMALL: usize = 2 * 1024;

/// The size of the next read of one socket: small while the peer says little, so an idle
/// connection lends the kernel a small buffer, and large once a read fills what it was given
/// (the peer had more), until a read fits the small size again. Between the two the size
/// stays, so a stream of large messages does not flap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSize {
    next: usize,
    small: usize,
    large: usize,
}

impl ReadSize {
    /// Starts at `small`; `large` is the most one read asks for.
    pub const fn new(small: usize, large: usize) -> ReadSize {
        ReadSize {
            next: small,
            small,
            large,
        }
    }

    /// Bytes the next read asks for.
    pub fn get(self) -> usize {
        self.next
    }

    /// Whether the next read is a small one.
    pub fn is_small(self) -> bool {
        self.next <= self.small
    }

    /// Learns from a read of `n` bytes.
    pub fn after(&mut self, n: usize) {
        if n >= self.next {
            self.next = self.large;
        } else if n <= self.small {
            self.next = self.small;
        }
    }

    /// Learns from a finished read, whatever its outcome (`None`: not read).
    pub fn after_result(&mut self, r: Option<&io::Result<usize>>) {
        if let Some(Ok(n)) = r {
            self.after(*n);
        }
    }
}

/// Plaintext copied out of rustls per call; bounded so one read cannot grow a buffer at will.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

/// A connection's byte transport, client- or upstream-facing.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS where the gateway is the server (client-facing).
    TlsServer(Box<TlsStream<ServerConnection>>),
    /// TLS where the gateway is the client (upstream-facing).
    TlsClient(Box<TlsStream<ClientConnection>>),
}

impl Transport {
    /// Appends up to `max` bytes to `buf`; `Ok(0)` means the peer closed cleanly.
    pub async fn read_into(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => read_plain(tcp, buf, max).await,
            Transport::TlsServer(tls) => tls.read_into(buf, max).await,
            Transport::TlsClient(tls) => tls.read_into(buf, max).await,
        }
    }

    /// Like [`Transport::read_into`], but the socket read can be cancelled through `cancel`.
    /// A cancelled read returns `ECANCELED` with nothing lost: bytes the kernel already
    /// delivered come back as a normal `Ok(n)`, and TLS keeps undecrypted ciphertext buffered.
    /// This is what lets a driver wait on both of its sockets and cancel the loser.
    pub async fn read_into_cancelable(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
        cancel: CancelHandle,
    ) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => {
                let mut owned = std::mem::take(buf);
                owned.reserve(max);
                let start = owned.len();
                let (res, slice) = tcp
                    .cancelable_read(owned.slice_mut(start..start + max), cancel)
                    .await;
                *buf = slice.into_inner();
                res
            }
            Transport::TlsServer(tls) => tls.read_into_inner(buf, max, Some(cancel)).await,
            Transport::TlsClient(tls) => tls.read_into_inner(buf, max, Some(cancel)).await,
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> io::Result<Vec<u8>> {
        match self {
            Transport::Plain(tcp) => {
                let (res, data) = tcp.write_all(data).await;
                res.map(|_| data)
            }
            Transport::TlsServer(tls) => tls.write_all(&data).await.map(|()| data),
            Transport::TlsClient(tls) => tls.write_all(&data).await.map(|()| data),
        }
    }

    /// Writes all of `buf` and leaves it empty with its capacity, for the next batch: the
    /// plain path lends the buffer itself to the kernel (no copy, no allocation per write).
    /// If the future is dropped mid-write the buffer goes with it.
    pub async fn write_buf(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let result = match self {
            Transport::Plain(tcp) => {
                let (res, mut owned) = tcp.write_all(std::mem::take(buf)).await;
                owned.clear();
                *buf = owned;
                res.map(|_| ())
            }
            Transport::TlsServer(tls) => tls.write_all(buf).await,
            Transport::TlsClient(tls) => tls.write_all(buf).await,
        };
        buf.clear();
        result
    }

    /// Signals end of stream to the peer (TLS close_notify, then TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.shutdown().await,
            Transport::TlsServer(tls) => tls.shutdown().await,
            Transport::TlsClient(tls) => tls.shutdown().await,
        }
    }

    /// The underlying TCP stream, e.g. to read addresses or set options.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::TlsServer(tls) => &tls.tcp,
            Transport::TlsClient(tls) => &tls.tcp,
        }
    }

    /// Releases write buffers a burst grew, for a connection about to sit idle. Plain TCP
    /// keeps none; TLS keeps its ciphertext output buffer between writes so a large answer is
    /// not re-grown record by record.
    pub fn trim(&mut self) {
        match self {
            Transport::Plain(_) => {}
            Transport::TlsServer(tls) => tls.trim(),
            Transport::TlsClient(tls) => tls.trim(),
        }
    }

    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
    }
}

/// Reads straight into the spare capacity of `buf`: no copy on the plain path.
async fn read_plain(tcp: &mut TcpStream, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let mut owned = std::mem::take(buf);
    owned.reserve(max);
    let start = owned.len();
    let (res, slice) = tcp.read(owned.slice_mut(start..start + max)).await;
    *buf = slice.into_inner();
    res
}

/// TLS over a monoio TCP stream, driven by hand.
#[derive(Debug)]
pub struct TlsStream<C> {
    tcp: TcpStream,
    conn: C,
    /// Owned ciphertext buffer lent to the kernel for reads; `cipher[cipher_pos..]` is read
    /// but not yet handed to rustls.
    cipher: Vec<u8>,
    cipher_pos: usize,
    cipher_read: ReadSize,
    /// Owned ciphertext buffer lent to the kernel for writes.
    cipher_out: Vec<u8>,
    /// The peer closed its TCP side.
    tcp_eof: bool,
}

impl<C, S> TlsStream<C>
where
    C: std::ops::DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    /// Wraps `tcp` and completes the TLS handshake.
    pub async fn handshake(tcp: TcpStream, conn: C) -> io::Result<Self> {
        Self::handshake_after(tcp, conn, Vec::new()).await
    }

    /// Like [`TlsStream::handshake`], for a peer whose first TLS bytes were already read from
    /// `tcp` (a PostgreSQL client opening with a ClientHello): they are fed to rustls before
    /// anything else is read.
    pub async fn handshake_after(
        tcp: TcpStream,
        conn: C,
        already_read: Vec<u8>,
    ) -> io::Result<Self> {
        let mut stream = TlsStream {
            tcp,
            conn,
            cipher: already_read,
            cipher_pos: 0,
            cipher_read: ReadSize::new(TLS_SMALL, TLS_READ_CHUNK),
            cipher_out: Vec::new(),
            tcp_eof: false,
        };
        while stream.conn.is_handshaking() {
            stream.flush_tls().await?;
            if stream.conn.is_handshaking() && stream.conn.wants_read() {
                match stream.fill_tls(None).await {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed during the tls handshake",
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // rustls has queued the alert saying why (no common protocol or ALPN,
                        // bad certificate): send it so the peer reports the real cause rather
                        // than an unexpected close.
                        let _ = stream.flush_tls().await;
                        return Err(e);
                    }
                }
            }
        }
        stream.flush_tls().await?;
        Ok(stream)
    }

    fn trim(&mut self) {
        if self.cipher_out.is_empty() && self.cipher_out.capacity() > TLS_SMALL {
            self.cipher_out = Vec::new();
        }
    }

    /// The rustls connection, e.g. for SNI or the negotiated protocol.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// Appends up to `max` plaintext bytes to `buf`; `Ok(0)` means a clean close.
    pub async fn read_into(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        self.read_into_inner(buf, max, None).await
    }

    async fn read_into_inner(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize> {
        let want = max.min(PLAINTEXT_CHUNK);
        loop {
            // rustls copies into an initialised slice, so the room given to it is zeroed
            // first: size it by what is actually decrypted, not by `want`, or every read of a
            // 100-byte message would clear 16 KiB.
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let available = state.plaintext_bytes_to_read();
            if available == 0 && state.peer_has_closed() {
                return Ok(0);
            }
            if available > 0 {
                let start = buf.len();
                buf.resize(start + want.min(available), 0);
                let got = buf
                    .get_mut(start..)
                    .map(|dst| self.conn.reader().read(dst))
                    .unwrap_or(Ok(0));
                match got {
                    Ok(n) => {
                        buf.truncate(start + n);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        buf.truncate(start);
                    }
                    Err(e) => {
                        buf.truncate(start);
                        return Err(e);
                    }
                }
            }
            // No plaintext buffered: answer whatever rustls wants to say (alerts, key updates),
            // then read more ciphertext.
            self.flush_tls().await?;
            if self.tcp_eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed without tls close_notify",
                ));
            }
            self.fill_tls(cancel.clone()).await?;
        }
    }

    /// Encrypts and writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = data.get(n..).unwrap_or_default();
            self.flush_tls().await?;
        }
        Ok(())
    }

    /// Sends close_notify and shuts down the TCP write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_tls().await?;
        self.tcp.shutdown().await
    }

    /// Writes out every ciphertext byte rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.cipher_out);
            out.clear();
            self.conn.write_tls(&mut out)?;
            let (res, out) = self.tcp.write_all(out).await;
            self.cipher_out = out;
            res?;
        }
        Ok(())
    }

    /// Hands rustls more ciphertext: what is left of the last socket read, else a fresh read.
    /// Returns `Ok(0)` only when the peer closed its TCP side.
    ///
    /// Feeding stops as soon as plaintext is available, so rustls' received-plaintext limit is
    /// never exceeded; the rest of the ciphertext waits in `cipher[cipher_pos..]`.
    async fn fill_tls(&mut self, cancel: Option<CancelHandle>) -> io::Result<usize> {
        if self.cipher_pos >= self.cipher.len() {
            let want = self.cipher_read.get();
            let mut owned = std::mem::take(&mut self.cipher);
            owned.clear();
            if self.cipher_read.is_small() && owned.capacity() > want {
                // Back to small reads after large ones: let the large buffer go.
                owned = Vec::new();
            }
            owned.reserve(want);
            let slice = owned.slice_mut(0..want);
            let (res, owned) = match cancel {
                Some(c) => self.tcp.cancelable_read(slice, c).await,
                None => self.tcp.read(slice).await,
            };
            self.cipher = owned.into_inner();
            self.cipher_pos = 0;
            let n = res?;
            self.cipher_read.after(n);
            if n == 0 {
                self.tcp_eof = true;
                // Tell rustls the stream ended so a missing close_notify is reported.
                let _ = self.conn.read_tls(&mut io::empty());
                self.process()?;
                return Ok(0);
            }
        }
        let mut fed = 0;
        loop {
            let mut input = self.cipher.get(self.cipher_pos..).unwrap_or_default();
            if input.is_empty() {
                break;
            }
            let used = self.conn.read_tls(&mut input)?;
            self.cipher_pos += used;
            fed += used;
            let plaintext = self.process()?;
            if used == 0 || plaintext > 0 {
                break;
            }
        }
        Ok(fed.max(1))
    }

    /// Lets rustls decrypt what it was fed; returns the plaintext bytes now readable.
    fn process(&mut self) -> io::Result<usize> {
        self.conn
            .process_new_packets()
            .map(|state| state.plaintext_bytes_to_read())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Convenience: a rustls server connection for an accepted client.
pub fn server_connection(config: &Arc<rustls::ServerConfig>) -> io::Result<ServerConnection> {
    ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)
}

/// Convenience: a rustls client connection to `server_name`.
pub fn client_connection(
    config: &Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
) -> io::Result<ClientConnection> {
    ClientConnection::new(Arc::clone(config), server_name).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_read_asks_for_the_large_size_and_a_short_one_goes_back_to_small() {
        let mut size = ReadSize::new(TLS_SMALL, TLS_READ_CHUNK);
        size.after(100);
        assert_eq!(size.get(), TLS_SMALL);
        assert!(size.is_small());
        size.after(TLS_SMALL);
        assert_eq!(size.get(), TLS_READ_CHUNK);
        // A large message's tail neither fills nor fits small: keep the large size.
        size.after(5 * 1024);
        assert_eq!(size.get(), TLS_READ_CHUNK);
        assert!(!size.is_small());
        size.after(TLS_SMALL);
        assert_eq!(size.get(), TLS_SMALL);
        size.after_result(Some(&Err(io::Error::other("reset"))));
        size.after_result(None);
        assert_eq!(size.get(), TLS_SMALL);
    }
}
