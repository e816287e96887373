//! HTTP/1.1 workload: a fixed request sent over keep-alive connections, responses read by a
//! small sans-IO [`ResponseReader`] and discarded.
//!
//! Deliberately minimal: plain `http://` only (no TLS, no HTTP/2), no redirects, no cookies.
//! Bodies are counted, never buffered, so a large or endless response costs no memory.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::cli::HttpArgs;
use crate::engine::RequestError;
use crate::stats::ErrorKind;

/// Largest response head (status line and headers) accepted from the server.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers parsed.
pub const MAX_HEADERS: usize = 128;
/// Largest chunk-size line (size, extensions, CRLF) accepted in a chunked body.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Read buffer per connection.
const READ_BUF_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("upstream response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("upstream response head is malformed: {0}")]
    BadHead(String),
    #[error("upstream `content-length` is invalid: `{0}`")]
    BadContentLength(String),
    #[error("upstream chunk size line is invalid: `{0}`")]
    BadChunk(String),
    #[error("upstream closed the connection mid-response")]
    Truncated,
}

/// What the reader needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Feed more bytes (or call [`ResponseReader::eof`] if the peer closed).
    NeedMore,
    /// The response is complete.
    Done { status: u16, keep_alive: bool },
}

/// States named for what the reader waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectHead,
    InBody { remaining: u64 },
    ExpectChunkSize,
    InChunk { remaining: u64 },
    ExpectChunkEnd,
    ExpectTrailers,
    UntilClose,
    Complete,
}

/// Sans-IO reader for one response: bytes in, "need more" or "done" out.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    status: u16,
    keep_alive: bool,
    /// The request was HEAD, so the response has no body whatever its headers say.
    head_request: bool,
    trailer_bytes: usize,
}

impl ResponseReader {
    pub fn new(head_request: bool) -> Self {
        ResponseReader {
            state: State::ExpectHead,
            status: 0,
            keep_alive: true,
            head_request,
            trailer_bytes: 0,
        }
    }

    /// Consumes what it can from `input`; returns how many bytes it used and the progress.
    /// Unused bytes must be offered again, with more appended, on the next call.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, Progress), ResponseError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match self.state {
                State::Complete => {
                    let progress = Progress::Done {
                        status: self.status,
                        keep_alive: self.keep_alive,
                    };
                    return Ok((used, progress));
                }
                State::ExpectHead => match self.parse_head(rest)? {
                    Some(n) => used += n,
                    None => return Ok((used, Progress::NeedMore)),
                },
                State::InBody { remaining } | State::InChunk { remaining } => {
                    if rest.is_empty() {
                        return Ok((used, Progress::NeedMore));
                    }
                    let take = remaining.min(rest.len() as u64);
                    used += usize::try_from(take).unwrap_or(rest.len());
                    let left = remaining - take;
                    self.state = match (self.state, left) {
                        (State::InBody { .. }, 0) => State::Complete,
                        (State::InBody { .. }, n) => State::InBody { remaining: n },
                        (_, 0) => State::ExpectChunkEnd,
                        (_, n) => State::InChunk { remaining: n },
                    };
                }
                State::ExpectChunkSize => {
                    let Some(line_len) = find_crlf(rest, MAX_CHUNK_LINE_BYTES)? else {
                        return Ok((used, Progress::NeedMore));
                    };
                    let line = rest.get(..line_len).unwrap_or_default();
                    let size = parse_chunk_size(line)?;
                    used += line_len + 2;
                    self.state = if size == 0 {
                        State::ExpectTrailers
                    } else {
                        State::InChunk { remaining: size }
                    };
                }
                State::ExpectChunkEnd => {
                    if rest.len() < 2 {
                        return Ok((used, Progress::NeedMore));
                    }
                    if rest.get(..2) != Some(b"\r\n") {
                        return Err(ResponseError::BadChunk("missing CRLF after chunk".into()));
                    }
                    used += 2;
                    self.state = State::ExpectChunkSize;
                }
                State::ExpectTrailers => {
                    let Some(line_len) = find_crlf(rest, MAX_HEAD_BYTES)? else {
                        return Ok((used, Progress::NeedMore));
                    };
                    used += line_len + 2;
                    self.trailer_bytes += line_len + 2;
                    if self.trailer_bytes > MAX_HEAD_BYTES {
                        return Err(ResponseError::HeadTooLarge);
                    }
                    if line_len == 0 {
                        self.state = State::Complete;
                    }
                }
                State::UntilClose => return Ok((rest.len() + used, Progress::NeedMore)),
            }
        }
    }

    /// The peer closed the connection: completes a close-delimited body, fails anything else.
    pub fn eof(&mut self) -> Result<Progress, ResponseError> {
        match self.state {
            State::UntilClose | State::Complete => {
                self.state = State::Complete;
                Ok(Progress::Done {
                    status: self.status,
                    keep_alive: false,
                })
            }
            _ => Err(ResponseError::Truncated),
        }
    }

    /// Parses a complete head from the start of `input`; `None` means it is not all here yet.
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if input.len() > MAX_HEAD_BYTES {
                    return Err(ResponseError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(e) => return Err(ResponseError::BadHead(e.to_string())),
        };
        if len > MAX_HEAD_BYTES {
            return Err(ResponseError::HeadTooLarge);
        }
        let status = response.code.unwrap_or(0);
        let http10 = response.version == Some(0);
        let mut keep_alive = !http10;
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        for h in response.headers.iter() {
            let value = String::from_utf8_lossy(h.value);
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ResponseError::BadContentLength(value.to_string()))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ResponseError::BadContentLength(value.to_string()));
                }
                content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',') {
                    if token.trim().eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.trim().eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
        if (100..200).contains(&status) && status != 101 {
            // Interim response: the real one follows on the same connection.
            return Ok(Some(len));
        }
        self.status = status;
        self.keep_alive = keep_alive;
        self.state = if self.head_request || status == 204 || status == 304 || status == 101 {
            State::Complete
        } else if chunked {
            State::ExpectChunkSize
        } else if let Some(n) = content_length {
            if n == 0 {
                State::Complete
            } else {
                State::InBody { remaining: n }
            }
        } else {
            self.keep_alive = false;
            State::UntilClose
        };
        Ok(Some(len))
    }
}

/// Length of the line before the first CRLF, or `None` if no CRLF yet within `limit` bytes.
fn find_crlf(input: &[u8], limit: usize) -> Result<Option<usize>, ResponseError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(n) if n <= limit => Ok(Some(n)),
        Some(_) => Err(ResponseError::HeadTooLarge),
        None if input.len() > limit => Err(ResponseError::HeadTooLarge),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ResponseError> {
    let text = String::from_utf8_lossy(line);
    let size = text.split(';').next().unwrap_or_default().trim();
    if size.is_empty() || size.len() > 16 {
        return Err(ResponseError::BadChunk(text.to_string()));
    }
    u64::from_str_radix(size, 16).map_err(|_| ResponseError::BadChunk(text.to_string()))
}

/// The HTTP target: where to connect and the request bytes, built once.
#[derive(Debug)]
pub struct Target {
    addr: String,
    request: Vec<u8>,
    head_request: bool,
    keep_alive: bool,
}

impl Target {
    pub fn from_args(args: &HttpArgs) -> anyhow::Result<Self> {
        let Some(rest) = args.url.strip_prefix("http://") else {
            bail!(
                "`{}` is not an `http://` URL (https is not supported)",
                args.url
            );
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or("/"),
            ),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("`{}` has no usable host", args.url);
        }
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let method = args.method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            bail!("`{}` is not an HTTP method", args.method);
        }
        let body = match (&args.body, &args.body_file) {
            (Some(b), _) => b.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read(path)
                .with_context(|| format!("reading the body from `{}`", path.display()))?,
            (None, None) => Vec::new(),
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
        let mut has_user_agent = false;
        for h in &args.headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("header `{h}` is not `Name: value`");
            };
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                bail!("header `{h}` has an invalid name");
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                bail!("header `{h}` has a line break in its value");
            }
            has_user_agent |= name.eq_ignore_ascii_case("user-agent");
            head.push_str(&format!("{}: {}\r\n", name, value.trim()));
        }
        if !has_user_agent {
            head.push_str("User-Agent: portcullis-loadgen\r\n");
        }
        if !body.is_empty() || !matches!(method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if args.no_keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        Ok(Target {
            addr,
            request,
            head_request: method == "HEAD",
            keep_alive: !args.no_keep_alive,
        })
    }

    async fn open(&self) -> Result<TcpStream, ErrorKind> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // Requests are small and latency is what we measure: do not wait to coalesce.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

#[derive(Debug)]
pub struct HttpConn {
    stream: Option<TcpStream>,
    /// Response bytes not yet consumed by the reader.
    buf: Vec<u8>,
    /// Landing area for each socket read, kept across requests.
    chunk: Vec<u8>,
}

impl crate::engine::Target for Target {
    type Conn = HttpConn;

    async fn connect(&self) -> Result<HttpConn, ErrorKind> {
        let stream = self.open().await?;
        Ok(HttpConn {
            stream: Some(stream),
            buf: Vec::with_capacity(READ_BUF_BYTES),
            chunk: vec![0; READ_BUF_BYTES],
        })
    }

    async fn request(
        &self,
        conn: &mut HttpConn,
        _rng: &mut fastrand::Rng,
    ) -> Result<(), RequestError> {
        let lost = |kind| RequestError {
            kind,
            connection_lost: true,
        };
        let stream = match conn.stream.as_mut() {
            Some(s) => s,
            None => conn.stream.insert(self.open().await.map_err(lost)?),
        };
        conn.buf.clear();
        stream
            .write_all(&self.request)
            .await
            .map_err(|_| lost(ErrorKind::Protocol))?;
        let mut reader = ResponseReader::new(self.head_request);
        let (status, keep_alive) = loop {
            let n = stream
                .read(&mut conn.chunk)
                .await
                .map_err(|_| lost(ErrorKind::Protocol))?;
            let progress = if n == 0 {
                // Offer what is buffered first: a complete response may end exactly at EOF.
                match reader
                    .advance(&conn.buf)
                    .map_err(|_| lost(ErrorKind::Protocol))?
                {
                    (_, Progress::Done { status, keep_alive }) => {
                        Progress::Done { status, keep_alive }
                    }
                    (_, Progress::NeedMore) => {
                        reader.eof().map_err(|_| lost(ErrorKind::Protocol))?
                    }
                }
            } else {
                conn.buf
                    .extend_from_slice(conn.chunk.get(..n).unwrap_or_default());
                let (used, progress) = reader
                    .advance(&conn.buf)
                    .map_err(|_| lost(ErrorKind::Protocol))?;
                conn.buf.drain(..used.min(conn.buf.len()));
                progress
            };
            if let Progress::Done { status, keep_alive } = progress {
                break (status, keep_alive && n != 0);
            }
        };
        if !(keep_alive && self.keep_alive && conn.buf.is_empty()) {
            // Leftover bytes mean the server sent more than one response: resync by reconnecting.
            conn.stream = None;
        }
        match status {
            400..=599 => Err(RequestError {
                kind: ErrorKind::HttpStatus(status / 100),
                connection_lost: conn.stream.is_none(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` split at every byte boundary and returns the final progress.
    fn read_split(wire: &[u8], at: usize, head: bool) -> Result<Progress, ResponseError> {
        let mut reader = ResponseReader::new(head);
        let mut buf = Vec::new();
        for piece in [&wire[..at], &wire[at..]] {
            buf.extend_from_slice(piece);
            let (used, progress) = reader.advance(&buf)?;
            buf.drain(..used);
            if let Progress::Done { .. } = progress {
                return Ok(progress);
            }
        }
        reader.eof()
    }

    fn every_split(wire: &[u8], head: bool) -> Progress {
        let first = read_split(wire, 0, head).unwrap();
        for at in 0..=wire.len() {
            assert_eq!(read_split(wire, at, head).unwrap(), first, "split at {at}");
        }
        first
    }

    #[test]
    fn content_length_at_every_boundary() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            every_split(wire, false),
            Progress::Done {
                status: 200,
                keep_alive: true
            }
        );
    }

    #[test]
    fn chunked_with_trailers_at_every_boundary() {
        let wire = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                     5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            every_split(wire, false),
            Progress::Done {
                status: 503,
                keep_alive: false
            }
        );
    }

    #[test]
    fn interim_and_head_responses() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            every_split(wire, false),
            Progress::Done {
                status: 204,
                keep_alive: true
            }
        );
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        assert_eq!(
            every_split(wire, true),
            Progress::Done {
                status: 200,
                keep_alive: true
            }
        );
    }

    #[test]
    fn close_delimited_http10_body() {
        let wire = b"HTTP/1.0 200 OK\r\n\r\nbody until close";
        assert_eq!(
            every_split(wire, false),
            Progress::Done {
                status: 200,
                keep_alive: false
            }
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(
            read_split(truncated, 5, false),
            Err(ResponseError::Truncated)
        );
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(
            read_split(bad_len, 3, false),
            Err(ResponseError::BadContentLength("-1".into()))
        );
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(
            read_split(bad_chunk, 0, false),
            Err(ResponseError::BadChunk(_))
        ));
        let huge_chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n";
        assert!(matches!(
            read_split(huge_chunk, 0, false),
            Err(ResponseError::BadChunk(_))
        ));
        let mut endless = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        endless.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(
            read_split(&endless, 0, false),
            Err(ResponseError::HeadTooLarge)
        );
    }
}
