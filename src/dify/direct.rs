//! A small HTTP/1.1 client for generations to a plain-HTTP Dify reached without a proxy (the
//! usual sidecar setup), driven in the request's own task. https, proxies and every other
//! endpoint go through reqwest.
//!
//! Why by hand: hyper's client (and reqwest over it) runs each connection as a task of its
//! own, and hands the request, the response head and every body chunk across channels
//! between that task and the caller's. Under callgrind that machinery was about a fifth of
//! opendify's instructions per proxied request, and it put task switches between Dify's last
//! event and the client's answer (the closing chunk alone took one). Here the caller's task
//! writes the request and reads the answer itself, straight into the SSE parser. httparse
//! (hyper's own parser) reads the response head and the chunk sizes; this module frames the
//! body and pools connections. Only what a generation needs: one POST with a JSON body; the
//! answer by Content-Length, chunked, or until the connection closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use reqwest::ResponseBuilderExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::DifyError;

pub(super) const USER_AGENT_VALUE: &str = concat!("opendify/", env!("CARGO_PKG_VERSION"));

/// Idle connections kept for reuse, and for how long.
const MAX_IDLE: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A response head larger than this is refused (hyper's limit is about 400 KiB; Dify's
/// heads are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// An answer read whole (an error, a JSON answer) larger than this is refused.
const MAX_WHOLE_BODY: usize = 64 * 1024 * 1024;
/// Reads start at this size and grow (as hyper's do) while each read fills what it was given.
const READ_CHUNK: usize = 8 * 1024;
const MAX_READ_CHUNK: usize = 512 * 1024;

/// Where generations go, and the connections kept to it.
pub(super) struct Direct {
    pool: Arc<Pool>,
    /// Per generation path: the request target (path and query) and the URL it stands for.
    endpoints: Vec<(&'static str, String, reqwest::Url)>,
}

struct Pool {
    /// `host:port` to connect to.
    address: String,
    /// The Host header.
    host: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    reaper: AtomicBool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The next read's size.
    read_size: usize,
}

/// Why a direct call failed.
pub(super) enum Sent {
    /// No connection could be opened: nothing was sent (retried like reqwest's connect errors).
    Connect(std::io::Error),
    Other(DifyError),
}

/// What Dify answered.
pub(super) enum Answer {
    /// A 2xx event stream, read in the caller's task.
    Events(DirectBody),
    /// Anything else (an error status, a JSON answer), read whole, as reqwest's response.
    Whole(reqwest::Response),
}

impl Direct {
    /// `None` when reqwest must carry generations: https (TLS), or a proxy variable set.
    pub(super) fn for_base(
        base: &str,
        connect_timeout: Duration,
        endpoints: &[(&'static str, reqwest::Url)],
    ) -> Option<Direct> {
        let proxied = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
        if proxied || !base.starts_with("http://") {
            return None;
        }
        let first = &endpoints.first()?.1;
        // IPv6 hosts come bracketed, as both the address and the Host header want them.
        let name = first.host_str()?;
        let address = format!("{name}:{}", first.port_or_known_default()?);
        let host = match first.port() {
            Some(port) => format!("{name}:{port}"),
            None => name.to_string(),
        };
        let endpoints = endpoints
            .iter()
            .map(|(path, url)| {
                let target = match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_string(),
                };
                (*path, target, url.clone())
            })
            .collect();
        let pool =
            Pool { address, host, connect_timeout, idle: Mutex::new(Vec::new()), reaper: AtomicBool::new(false) };
        Some(Direct { pool: Arc::new(pool), endpoints })
    }

    /// POSTs `body` to a generation path. `None` when the path is not a generation's.
    pub(super) async fn post(&self, path: &str, auth: &HeaderValue, body: &Bytes) -> Option<Result<Answer, Sent>> {
        let (_, target, url) = self.endpoints.iter().find(|(p, _, _)| *p == path)?;
        let request = self.pool.request_bytes(target, auth, body);
        Some(self.send(&request, url).await)
    }

    async fn send(&self, request: &[u8], url: &reqwest::Url) -> Result<Answer, Sent> {
        loop {
            let (mut conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => (self.pool.connect().await.map_err(Sent::Connect)?, false),
            };
            if let Err(e) = conn.stream.write_all(request).await {
                if reused {
                    // The server closed it while it sat idle: the request went nowhere.
                    continue;
                }
                return Err(Sent::Other(DifyError::Transport(format!("sending the request to Dify: {e}"))));
            }
            let head = read_head(&mut conn).await.map_err(Sent::Other)?;
            let mut body = DirectBody {
                conn: Some(conn),
                framing: head.framing,
                keep_alive: head.keep_alive,
                done: false,
                pool: Arc::downgrade(&self.pool),
            };
            let Some(headers) = head.headers else { return Ok(Answer::Events(body)) };
            let bytes = body.read_whole().await.map_err(Sent::Other)?;
            let mut response = axum::http::Response::builder()
                .status(head.status)
                .url(url.clone())
                .body(reqwest::Body::from(bytes))
                .map_err(|e| Sent::Other(DifyError::Protocol(format!("Dify's response: {e}"))))?;
            *response.headers_mut() = headers;
            return Ok(Answer::Whole(reqwest::Response::from(response)));
        }
    }
}

impl Pool {
    fn request_bytes(&self, target: &str, auth: &HeaderValue, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(192 + target.len() + self.host.len() + auth.len() + body.len());
        for part in [
            b"POST ".as_slice(),
            target.as_bytes(),
            b" HTTP/1.1\r\nhost: ",
            self.host.as_bytes(),
            b"\r\nuser-agent: ",
            USER_AGENT_VALUE.as_bytes(),
            b"\r\nauthorization: ",
            auth.as_bytes(),
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
        ] {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(decimal(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        out
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address)).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", self.connect_timeout.as_secs_f32()),
                ));
            }
        };
        stream.set_nodelay(true)?;
        // Notices a peer gone silently during a long answer.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        Ok(Conn { stream, buf: BytesMut::new(), read_size: READ_CHUNK })
    }

    /// The most recently used idle connection that is still open.
    fn take(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { conn, since }) = idle.pop() {
            if since.elapsed() > IDLE_TIMEOUT {
                // The rest went idle earlier still.
                idle.clear();
                return None;
            }
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, mut conn: Conn) {
        // An idle connection keeps no buffer.
        conn.buf = BytesMut::new();
        conn.read_size = READ_CHUNK;
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since: Instant::now() });
        }
        drop(idle);
        if !self.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes idle connections that expired or that the server closed, while the pool lives.
async fn reap(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 3).await;
        let Some(pool) = pool.upgrade() else { return };
        lock(&pool.idle).retain(|idle| idle.since.elapsed() <= IDLE_TIMEOUT && idle.conn.is_open());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Whether an idle connection is still open: nothing to read (a closed one reads its end).
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the answer; `Ok(0)` at its end. Cancel-safe: nothing read is lost.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = self.stream.read_buf(&mut self.buf).await?;
        if read == room {
            self.read_size = (self.read_size * 2).min(MAX_READ_CHUNK);
        }
        Ok(read)
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailers, if any, and the final CRLF.
    Trailers,
}

struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    /// `None` for a 2xx event stream, read in the caller's task; anything else is read whole,
    /// and reqwest's response carries its headers.
    headers: Option<HeaderMap>,
}

async fn read_head(conn: &mut Conn) -> Result<Head, DifyError> {
    loop {
        if let Some(head) = parse_head(&mut conn.buf)? {
            return Ok(head);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(DifyError::Protocol(format!("Dify's response head is larger than {} KiB", MAX_HEAD / 1024)));
        }
        match conn.read_more().await {
            Ok(0) => {
                return Err(DifyError::Transport("Dify closed the connection before answering".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(DifyError::Transport(format!("reading Dify's answer: {e}"))),
        }
    }
}

/// A complete response head at the start of `buf` (consumed), interim (1xx) heads skipped;
/// `None` until it has all arrived.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, DifyError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(DifyError::Protocol(format!("Dify's response head is not HTTP/1.1: {e}"))),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(DifyError::Protocol("Dify switched protocols".into()));
            }
            buf.advance(len);
            continue;
        }
        let http11 = response.version == Some(1);
        let (mut chunked, mut transfer_coded, mut length, mut close, mut keep_alive_token, mut event_stream) =
            (false, false, None::<u64>, false, false, false);
        for header in response.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_coded = true;
                // The final coding decides: chunked or read to the close.
                chunked = header
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                match (parsed, length) {
                    (None, _) => return Err(DifyError::Protocol("Dify sent an invalid Content-Length".into())),
                    (Some(n), Some(earlier)) if n != earlier => {
                        return Err(DifyError::Protocol("Dify sent conflicting Content-Lengths".into()));
                    }
                    (Some(n), _) => length = Some(n),
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                event_stream = header.value.trim_ascii_start().len() >= 17
                    && header.value.trim_ascii_start()[..17].eq_ignore_ascii_case(b"text/event-stream");
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if transfer_coded {
            Framing::Close
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let keep_alive = framing != Framing::Close && !close && (http11 || keep_alive_token);
        let headers = (!((200..300).contains(&status) && event_stream)).then(|| {
            let mut map = HeaderMap::with_capacity(response.headers.len());
            for header in response.headers.iter() {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_bytes(header.value))
                {
                    map.append(name, value);
                }
            }
            map
        });
        buf.advance(len);
        return Ok(Some(Head { status, framing, keep_alive, headers }));
    }
}

/// The body of an answer on a direct connection. The connection goes back to the pool once
/// the body has been read to its end, and is closed if the body is dropped before.
pub(crate) struct DirectBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    done: bool,
    pool: Weak<Pool>,
}

impl DirectBody {
    /// Hands what has arrived of the body to `out`; `true` once the body has ended.
    pub(crate) fn decode(&mut self, out: &mut impl FnMut(&[u8])) -> Result<bool, DifyError> {
        if self.done {
            return Ok(true);
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(true) };
        if decode(&mut self.framing, &mut conn.buf, out)? {
            self.done = true;
            if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade())
                && self.keep_alive
                && conn.buf.is_empty()
            {
                pool.put(conn);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits for more of the body; `true` when the connection has closed (the end of a body
    /// read until the close; for any other, an error). Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<bool, DifyError> {
        let Some(conn) = self.conn.as_mut() else { return Ok(true) };
        match conn.read_more().await {
            Ok(0) if self.framing == Framing::Close => {
                self.done = true;
                self.conn = None;
                Ok(true)
            }
            Ok(0) => {
                self.conn = None;
                Err(DifyError::Transport("Dify closed the connection before the answer's end".into()))
            }
            Ok(_) => Ok(false),
            Err(e) => {
                self.conn = None;
                Err(DifyError::Transport(format!("reading Dify's answer: {e}")))
            }
        }
    }

    async fn read_whole(&mut self) -> Result<Bytes, DifyError> {
        let mut body = Vec::new();
        let mut too_large = false;
        loop {
            let ended = self.decode(&mut |bytes: &[u8]| {
                if body.len() + bytes.len() > MAX_WHOLE_BODY {
                    too_large = true;
                } else {
                    body.extend_from_slice(bytes);
                }
            })?;
            if too_large {
                return Err(DifyError::TooLarge { limit: MAX_WHOLE_BODY });
            }
            if ended || self.read().await? {
                return Ok(Bytes::from(body));
            }
        }
    }
}

/// Consumes from `buf` what the framing allows, handing the body's bytes to `out`; `true`
/// once the body has ended (what follows in `buf` is not this body's).
fn decode(framing: &mut Framing, buf: &mut BytesMut, out: &mut impl FnMut(&[u8])) -> Result<bool, DifyError> {
    loop {
        match framing {
            Framing::Close => {
                if !buf.is_empty() {
                    out(buf);
                    buf.clear();
                }
                return Ok(false);
            }
            Framing::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                if take > 0 {
                    out(&buf[..take]);
                    buf.advance(take);
                    *left -= take as u64;
                }
                return Ok(*left == 0);
            }
            Framing::Chunked(state) => match *state {
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Ok(httparse::Status::Partial) => return Ok(false),
                    Err(_) => return Err(DifyError::Protocol("Dify sent an invalid chunk size".into())),
                },
                Chunk::Data(left) => {
                    let take = left.min(buf.len() as u64) as usize;
                    if take == 0 {
                        return Ok(false);
                    }
                    out(&buf[..take]);
                    buf.advance(take);
                    *state = if left == take as u64 { Chunk::DataEnd } else { Chunk::Data(left - take as u64) };
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DifyError::Protocol("Dify sent a chunk without its line end".into()));
                    }
                    buf.advance(2);
                    *state = Chunk::Size;
                }
                Chunk::Trailers => {
                    // No trailers: CRLF. Trailers: header lines, then an empty line.
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        return Ok(true);
                    }
                    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                        if buf.len() > MAX_HEAD {
                            return Err(DifyError::Protocol("Dify's trailers are too large".into()));
                        }
                        return Ok(false);
                    };
                    buf.advance(end + 4);
                    return Ok(true);
                }
            },
        }
    }
}

/// A length in decimal, without `format!`.
fn decimal(mut n: usize) -> Digits {
    let mut digits = Digits { bytes: [0; 20], start: 20 };
    loop {
        digits.start -= 1;
        digits.bytes[digits.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return digits;
        }
    }
}

struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool, usize) {
        let mut framing = framing;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut ended = false;
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            ended = decode(&mut framing, &mut buf, &mut |b: &[u8]| body.extend_from_slice(b)).expect("valid");
            if ended {
                break;
            }
        }
        (body, ended, buf.len())
    }

    #[test]
    fn chunked_bodies_decode_however_the_bytes_arrive() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, ended, left) = decode_all(Framing::Chunked(Chunk::Size), wire, step);
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(ended, "step {step}");
            assert!(left <= 4, "the next response's bytes stay: step {step}");
        }
        let trailers = b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (body, ended, left) = decode_all(Framing::Chunked(Chunk::Size), trailers, 4);
        assert_eq!((body.as_slice(), ended, left), (b"abc".as_slice(), true, 0));
    }

    #[test]
    fn a_content_length_body_ends_at_its_length() {
        let (body, ended, left) = decode_all(Framing::Length(5), b"helloEXTRA", 10);
        assert_eq!((body.as_slice(), ended), (b"hello".as_slice(), true));
        assert_eq!(left, 5, "bytes after the body are not the body's");
        let (body, ended, _) = decode_all(Framing::Length(10), b"hello", 2);
        assert_eq!((body.as_slice(), ended), (b"hello".as_slice(), false));
    }

    #[test]
    fn malformed_chunks_are_protocol_errors() {
        for wire in [&b"zz\r\nhello\r\n"[..], b"5\r\nhelloXX0\r\n\r\n"] {
            let mut framing = Framing::Chunked(Chunk::Size);
            let mut buf = BytesMut::from(wire);
            let result = decode(&mut framing, &mut buf, &mut |_: &[u8]| {});
            assert!(matches!(result, Err(DifyError::Protocol(_))), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn heads_decide_framing_and_reuse() {
        let parse = |wire: &str| parse_head(&mut BytesMut::from(wire.as_bytes())).expect("valid").expect("complete");
        let head = parse(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!((head.status, head.framing, head.keep_alive), (200, Framing::Chunked(Chunk::Size), true));
        assert!(head.headers.is_none(), "an event stream is read in the caller's task");
        let head = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        assert_eq!((head.status, head.framing, head.keep_alive), (404, Framing::Length(2), false));
        assert!(head.headers.is_some_and(|h| h.contains_key("content-length")));
        let head = parse("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n");
        assert_eq!((head.framing, head.keep_alive), (Framing::Close, false));
        let head = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(head.framing, Framing::Close, "a final coding other than chunked reads to the close");
        assert!(parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..])).expect("valid").is_none());
        let conflicting = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n";
        assert!(matches!(parse_head(&mut BytesMut::from(conflicting.as_bytes())), Err(DifyError::Protocol(_))));
        assert!(matches!(
            parse_head(&mut BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..])),
            Err(DifyError::Protocol(_))
        ));
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0usize, 7, 10, 1234, usize::MAX] {
            assert_eq!(decimal(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    /// A server that answers each connection's first request and then closes it: the pooled
    /// connection is found closed and a new one is opened, without an error.
    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        // Closes after one answer, as a server whose keep-alive ran out would.
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
                      11\r\ndata: {\"a\":\"b\"}\n\n\r\n0\r\n\r\n";
        let (port, accepted) = crate::dify::one_shot::answering(answer.to_string()).await;
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/v1/chat-messages")).expect("url");
        let direct = Direct::for_base("http://x", Duration::from_secs(2), &[("/chat-messages", url)]).expect("direct");
        let auth = HeaderValue::from_static("Bearer app-x");
        for round in 0..3 {
            let answer = direct.post("/chat-messages", &auth, &Bytes::from_static(b"{}")).await.expect("a path");
            let mut body = match answer {
                Ok(Answer::Events(body)) => body,
                Ok(Answer::Whole(response)) => panic!("round {round}: not an event stream: {}", response.status()),
                Err(Sent::Connect(e)) => panic!("round {round}: {e}"),
                Err(Sent::Other(e)) => panic!("round {round}: {e}"),
            };
            let mut text = Vec::new();
            while !body.decode(&mut |b: &[u8]| text.extend_from_slice(b)).expect("decodes") {
                body.read().await.expect("reads");
            }
            assert_eq!(text, b"data: {\"a\":\"b\"}\n\n", "round {round}");
            // Let the server's close arrive before the next round takes the connection.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "each round on a new connection");
    }
}
