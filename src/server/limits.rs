//! Bounds that keep overload and bad input from taking the gateway down: the request body
//! size (MAX_BODY_MB → 413), how long a client may take to send its headers and body (slow
//! clients → connection closed or 408), and how many requests may wait on Dify at once
//! (MAX_CONCURRENT_UPSTREAM → 503 with `Retry-After`, instead of an unbounded queue).
//! Every rejection, including axum's own, leaves in OpenAI's error shape.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::Dialect;
use crate::bridge::{ApiError, ErrorType};
use crate::config::Config;

/// How long a client may take to send a request's headers (also: how long an idle
/// keep-alive connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Limits {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    upstream: Arc<Semaphore>,
    upstream_capacity: usize,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Limits::new(config.max_body_bytes, config.max_concurrent_upstream)
    }

    pub fn new(max_body_bytes: usize, max_concurrent_upstream: usize) -> Self {
        let capacity = max_concurrent_upstream.clamp(1, Semaphore::MAX_PERMITS);
        Limits {
            max_body_bytes,
            header_timeout: HEADER_READ_TIMEOUT,
            body_timeout: BODY_READ_TIMEOUT,
            upstream: Arc::new(Semaphore::new(capacity)),
            upstream_capacity: capacity,
        }
    }

    /// A slot for one request to Dify, held until its answer is complete; an error when all
    /// MAX_CONCURRENT_UPSTREAM slots are taken.
    pub fn upstream_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.upstream.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::Overloaded,
                format!(
                    "opendify is serving its maximum of {} concurrent requests to Dify (MAX_CONCURRENT_UPSTREAM); retry shortly",
                    self.upstream_capacity
                ),
            )
            .code("overloaded")
            .retryable()
        })
    }

    pub fn upstream_in_flight(&self) -> usize {
        self.upstream_capacity - self.upstream.available_permits().min(self.upstream_capacity)
    }

    pub fn upstream_capacity(&self) -> usize {
        self.upstream_capacity
    }

    /// Reads the whole request body within the size and time limits, so that handlers get
    /// it in memory and a slow or oversized upload is refused before any work is done.
    pub async fn read_body(&self, request: Request) -> Result<Request, BodyError> {
        if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE)
            && !request.headers().contains_key(CONTENT_LENGTH)
            && !request.headers().contains_key("transfer-encoding")
        {
            return Ok(request);
        }
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(BodyError::TooLarge(self.max_body_bytes));
        }
        let (parts, body) = request.into_parts();
        let capacity = declared.map_or(0, |len| len as usize);
        match tokio::time::timeout(self.body_timeout, collect(body, self.max_body_bytes, capacity)).await {
            Err(_) => Err(BodyError::Timeout(self.body_timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        }
    }
}

/// Why a request body was refused.
#[derive(Debug)]
pub enum BodyError {
    TooLarge(usize),
    Timeout(Duration),
    Broken(String),
}

impl BodyError {
    pub fn into_error(self) -> ApiError {
        match self {
            BodyError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorType::InvalidRequest,
                format!(
                    "The request body is larger than {} (MAX_BODY_MB); send smaller images or raise MAX_BODY_MB",
                    human_size(limit)
                ),
            )
            .code("request_too_large"),
            BodyError::Timeout(after) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorType::InvalidRequest,
                format!("The request body did not arrive within {}s", after.as_secs_f64()),
            )
            .code("request_timeout"),
            BodyError::Broken(why) => {
                ApiError::invalid_request(format!("The request body could not be read: {why}")).code("invalid_body")
            }
        }
    }
}

fn human_size(bytes: usize) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 { format!("{mib:.0} MiB") } else { format!("{} KiB", bytes.div_ceil(1024)) }
}

/// Collects a body up to `limit` bytes. A body that arrives in one piece is not copied.
async fn collect(body: Body, limit: usize, capacity: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&chunk);
        } else if let Some(head) = first.take() {
            let mut buf = BytesMut::with_capacity(capacity.clamp(head.len() + chunk.len(), limit));
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&chunk);
            joined = Some(buf);
        } else {
            first = Some(chunk);
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// Turns any error response that is not already JSON (axum's extractor rejections, 405s,
/// plain texts) into the caller's API error shape, keeping the status and the text.
pub async fn api_shaped(response: Response, method: &Method, path: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 8 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let (message, code) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (format!("Method {method} is not allowed on {path}"), "method_not_allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            if text.is_empty() { "The request body is too large (MAX_BODY_MB)".to_string() } else { text.to_string() },
            "request_too_large",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            if text.is_empty() { "Send the body as JSON (Content-Type: application/json)".into() } else { text.into() },
            "unsupported_media_type",
        ),
        _ if text.is_empty() => (status.canonical_reason().unwrap_or("error").to_string(), "error"),
        _ => (text.to_string(), "invalid_request"),
    };
    let kind = if status.is_server_error() { ErrorType::Server } else { ErrorType::InvalidRequest };
    let mut shaped = Dialect::of_path(path).error_response(&ApiError::new(status, kind, message).code(code));
    // Keep headers that mean something to the client (Allow on a 405, Retry-After).
    for name in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            shaped.headers_mut().insert(name, value.clone());
        }
    }
    shaped
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[tokio::test]
    async fn bodies_are_collected_within_the_limit_without_copying_single_chunks() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let got = collect(Body::from(one.clone()), 100, 0).await.expect("ok");
        assert_eq!(got, one);
        assert_eq!(got.as_ptr(), one.as_ptr(), "a one-chunk body must not be copied");

        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cd")),
            Ok(Bytes::from_static(b"ef")),
        ]);
        assert_eq!(collect(Body::from_stream(chunks), 6, 6).await.expect("ok"), Bytes::from_static(b"abcdef"));
        let big = Body::from(vec![b'x'; 101]);
        assert!(matches!(collect(big, 100, 0).await, Err(BodyError::TooLarge(100))));
    }

    #[test]
    fn the_upstream_cap_refuses_when_full_and_frees_on_drop() {
        let limits = Limits::new(1024, 2);
        let a = limits.upstream_slot().expect("first");
        let _b = limits.upstream_slot().expect("second");
        let refused = limits.upstream_slot().expect_err("full");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(limits.upstream_in_flight(), 2);
        drop(a);
        assert!(limits.upstream_slot().is_ok());
    }

    #[tokio::test]
    async fn plain_text_rejections_become_openai_errors() {
        let plain = (StatusCode::BAD_REQUEST, "Failed to parse the request body").into_response();
        let shaped = api_shaped(plain, &Method::POST, "/v1/chat/completions").await;
        assert_eq!(shaped.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(shaped.into_body(), 1024).await.expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"]["message"], "Failed to parse the request body");
        assert_eq!(json["error"]["type"], "invalid_request_error");

        let not_allowed = StatusCode::METHOD_NOT_ALLOWED.into_response();
        let shaped = api_shaped(not_allowed, &Method::GET, "/v1/chat/completions").await;
        let body = axum::body::to_bytes(shaped.into_body(), 1024).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("Method GET is not allowed"));
    }
}
