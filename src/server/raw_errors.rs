//! Errors in the client's API shape even when no request could be parsed. hyper answers a
//! malformed request line or header, an over-long URL (414) or oversized headers (431) by
//! itself, with an empty body, and offers no hook to change that; a client (or the person
//! reading its error) then sees a bare status. This wraps each connection's socket: what
//! hyper writes on its own is recognisable (every response opendify's router makes carries
//! `x-request-id`; these do not), and only those bytes are replaced by the same status with
//! an OpenAI- (or Anthropic-) shaped JSON body saying what was wrong. Written by hand because
//! no library sits at this layer; it looks only at the first bytes of each write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::Dialect;
use crate::bridge::{ApiError, ErrorType};

/// How much of a request's first bytes is kept to explain a parse error.
const KEEP: usize = 1024;

pub struct RawErrors<IO> {
    io: IO,
    /// The start of what the client sent since the last response began.
    head: Vec<u8>,
    /// A replacement response still being written: its bytes and how far.
    pending: Option<(Bytes, usize)>,
}

impl<IO> RawErrors<IO> {
    pub fn new(io: IO) -> Self {
        RawErrors { io, head: Vec::new(), pending: None }
    }
}

impl<IO: AsyncWrite + Unpin> RawErrors<IO> {
    /// Writes what is left of a replacement; `Ready` once it is all out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written >= bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for RawErrors<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.head.len() < KEEP {
            let new = &buf.filled()[before..];
            let room = KEEP - this.head.len();
            this.head.extend_from_slice(&new[..new.len().min(room)]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for RawErrors<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if buf.starts_with(b"HTTP/1.1 ") {
            let replacement = automatic_error(buf).map(|status| shaped(status, &this.head));
            this.head.clear();
            if let Some(replacement) = replacement {
                this.pending = Some((replacement, 0));
                // hyper's bytes are taken whole: they are never sent.
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && first.starts_with(b"HTTP/1.1 ")
        {
            // hyper's own answers come as one buffer; treat a response head the same either way.
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let replacement = automatic_error(first).map(|status| shaped(status, &this.head));
            this.head.clear();
            if let Some(replacement) = replacement {
                this.pending = Some((replacement, 0));
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(total));
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The status of a response hyper wrote by itself (a client error, no body, not from the
/// router), if this is one.
fn automatic_error(response: &[u8]) -> Option<StatusCode> {
    // The status first: every answer that is not a 4xx (nearly all) is let through at once.
    if response.get(9) != Some(&b'4') {
        return None;
    }
    let status = std::str::from_utf8(response.get(9..12)?).ok()?.parse::<u16>().ok()?;
    let status = StatusCode::from_u16(status).ok()?;
    let head_end = find(response, b"\r\n\r\n")?;
    let head = &response[..head_end];
    if find(head, b"\r\nx-request-id:").is_some() || find(head, b"\r\ncontent-length: 0").is_none() {
        return None;
    }
    status.is_client_error().then_some(status)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The same status, with a body that says what was wrong in the client's API shape.
fn shaped(status: StatusCode, request: &[u8]) -> Bytes {
    let line_end = find(request, b"\r\n").or_else(|| find(request, b"\n")).unwrap_or(request.len());
    let line = String::from_utf8_lossy(&request[..line_end.min(200)]).into_owned();
    let mut words = line.split(' ');
    let (_method, path, version) = (words.next(), words.next().unwrap_or("/"), words.next().unwrap_or(""));
    let (status, message, code) = match status {
        StatusCode::URI_TOO_LONG => (
            status,
            "The request URL is longer than opendify accepts; send large data in the request body".to_string(),
            "uri_too_long",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            status,
            "The request headers are larger than opendify accepts; send large data in the request body".to_string(),
            "headers_too_large",
        ),
        StatusCode::BAD_REQUEST if version.starts_with("HTTP/") && !version.starts_with("HTTP/1.") => (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            format!("{} is not supported; opendify speaks HTTP/1.1", crate::logging::Shown(version)),
            "http_version_not_supported",
        ),
        StatusCode::BAD_REQUEST => (
            status,
            format!(
                "The request could not be parsed as HTTP (a malformed request line or header): {}",
                crate::logging::Shown(&line)
            ),
            "malformed_request",
        ),
        _ => (status, status.canonical_reason().unwrap_or("Bad request").to_string(), "bad_request"),
    };
    let error = ApiError::new(status, ErrorType::InvalidRequest, message).code(code);
    let body = Dialect::of_path(path).error_json(&error);
    let reason = status.canonical_reason().unwrap_or("Error");
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        body.len()
    );
    Bytes::from(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_error_responses_are_recognised() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_error(own), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let routed = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(automatic_error(routed), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error(ok), None);
    }

    #[test]
    fn replacements_say_what_was_wrong_in_the_api_shape() {
        let text = |b: Bytes| String::from_utf8_lossy(&b).into_owned();
        let version = text(shaped(StatusCode::BAD_REQUEST, b"GET /v1/models HTTP/3.0\r\nHost: x\r\n\r\n"));
        assert!(version.starts_with("HTTP/1.1 505 "), "{version}");
        assert!(version.contains("\"code\":\"http_version_not_supported\""), "{version}");
        let garbage = text(shaped(StatusCode::BAD_REQUEST, b"GARBAGE\r\n\r\n"));
        assert!(garbage.contains("\"type\":\"invalid_request_error\""), "{garbage}");
        let anthropic = text(shaped(StatusCode::URI_TOO_LONG, b"POST /v1/messages?x=aaaa"));
        assert!(anthropic.contains("\"type\":\"error\""), "{anthropic}");
    }
}
