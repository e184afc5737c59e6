//! What every request passes, in this order: a request id and a tracing span (so every log
//! line of the request carries the id), client auth, the body limits, and errors in the
//! caller's API shape whoever produced them. Generations (requests answered by Dify) are
//! wrapped by a [`Generation`] too: a slot under MAX_CONCURRENT_UPSTREAM, the request metrics,
//! and the streaming body that holds the slot until the stream ends.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::OwnedSemaphorePermit;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use super::SharedState;
use super::auth::{Access, ClientAppKey, Refusal};
use super::limits::BodyError;
use super::metrics::Rejection;
use super::smoothing;
use super::stream::TrackedStream;
use crate::api::Dialect;
use crate::config::Config;

// Header names as `HeaderName` constants: inserting a `&str` name that is not one of the
// standard headers copies it into a fresh allocation on every response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-opendify-overhead-ms");
/// The user opendify resolved, on every generation's response.
pub const USER_HEADER: HeaderName = HeaderName::from_static("x-opendify-user");
/// Which Dify conversation and message a non-streaming answer was (a client may continue the
/// conversation by its id, and send the header back).
pub const CONVERSATION_HEADER: HeaderName = HeaderName::from_static("x-dify-conversation-id");
pub const MESSAGE_HEADER: HeaderName = HeaderName::from_static("x-dify-message-id");

/// Set on a generation's response: what the metrics label the request with. `stream`: the
/// body is relayed as Dify produces it, and holds the upstream slot until it ends.
#[derive(Clone)]
pub struct GenerationLabels {
    pub model: Option<String>,
    pub stream: bool,
}

/// Set on a non-streaming response: how long it waited on Dify.
#[derive(Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// Paths anyone may call: they carry no secret (firewall them if that matters to you).
/// `/admin/*` checks ADMIN_API_KEY itself.
fn open_path(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics") || path.starts_with("/admin/")
}

pub async fn gate(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let request_id = request_id(request.headers());
    let span = tracing::info_span!("request", id = request_id.to_str().unwrap_or("-"));
    let method = request.method().clone();
    // A cheap clone (shared bytes): the path is only read again for an error answer.
    let uri = request.uri().clone();
    let response = admit(&state, request, next).instrument(span.clone()).await;
    let mut response = super::limits::api_shaped(response, &method, uri.path()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    response
}

async fn admit(state: &SharedState, mut request: Request, next: Next) -> Response {
    let live = state.live();
    let path = request.uri().path();
    let dialect = Dialect::of_request(path, request.headers());
    if !open_path(path) {
        match live.auth.check(request.headers()) {
            Ok(Access::Granted) => {}
            Ok(Access::Passthrough(key)) => {
                request.extensions_mut().insert(ClientAppKey(key));
            }
            Err(refusal) => {
                state.metrics.reject(Rejection::Unauthorized);
                let why = if refusal == Refusal::Missing { "no API key" } else { "a wrong API key" };
                tracing::warn!("❌ rejected {} {}: {why}", request.method(), crate::logging::Shown(path));
                return refusal.into_response(dialect);
            }
        }
    }
    match live.limits.read_body(request).await {
        Ok(request) => next.run(request).await,
        Err(error) => {
            state.metrics.reject(match error {
                BodyError::TooLarge(_) => Rejection::TooLarge,
                BodyError::Timeout(_) | BodyError::Broken(_) => Rejection::SlowClient,
            });
            let error = error.into_error();
            tracing::warn!(status = error.status.as_u16(), "❌ rejected request body: {}", error.message);
            dialect.error_response(&error)
        }
    }
}

/// Around every generation handler (a request answered by Dify): a slot under
/// MAX_CONCURRENT_UPSTREAM, the request metrics, and for a streamed answer the body that
/// holds the slot until the stream ends. The handler calls [`Generation::start`] first and
/// [`Generation::finish`] with its response, rather than this being a middleware layer or a
/// wrapping future: a layer boxes each request's future and clones the route, and a wrapper
/// taking the handler's future by value copies it (several KiB) once more per request.
pub struct Generation {
    permit: OwnedSemaphorePermit,
    started: Instant,
    span: tracing::Span,
}

impl Generation {
    /// A slot for the request, or the answer that there is none (503, in `dialect`'s shape).
    #[expect(clippy::result_large_err, reason = "the refusal is the handler's answer, returned as it is")]
    pub fn start(state: &SharedState, dialect: Dialect) -> Result<Generation, Response> {
        match state.live().limits.upstream_slot() {
            Ok(permit) => Ok(Generation { permit, started: Instant::now(), span: tracing::Span::current() }),
            Err(error) => {
                state.metrics.reject(Rejection::Overloaded);
                state.metrics.count_request(None, false, error.status.as_u16());
                tracing::warn!("❌ {}", error.message);
                Err(dialect.error_response(&error))
            }
        }
    }

    /// Counts the answer; a streamed one keeps the slot until its body ends.
    pub fn finish(self, state: &SharedState, mut response: Response) -> Response {
        let Generation { permit, started, span } = self;
        let labels = response.extensions_mut().remove::<GenerationLabels>();
        let stream = labels.as_ref().is_some_and(|l| l.stream);
        let status = response.status();
        state.metrics.count_request(labels.as_ref().and_then(|l| l.model.as_deref()), stream, status.as_u16());
        // A streamed answer (SSE, or speech relayed as Dify sends it) holds the slot to its end.
        let events = is_event_stream(response.headers());
        if status == StatusCode::OK && (events || stream) {
            let (parts, body) = response.into_parts();
            let body = if state.live().config.stream_smoothing && events { smoothing::adaptive(body) } else { body };
            let tracked = TrackedStream::new(body, state.metrics.clone(), span, started, permit);
            return Response::from_parts(parts, Body::new(tracked));
        }
        drop(permit);
        let elapsed = started.elapsed();
        state.metrics.observe_duration(stream, elapsed);
        if let Some(UpstreamTime(upstream)) = response.extensions_mut().remove::<UpstreamTime>() {
            let overhead = elapsed.saturating_sub(upstream);
            state.metrics.observe_overhead(overhead);
            let micros = overhead.as_micros();
            let ms = format!("{}.{:03}", micros / 1000, micros % 1000);
            if let Ok(value) = HeaderValue::from_str(&ms) {
                response.headers_mut().insert(OVERHEAD_HEADER, value);
            }
        }
        response
    }
}

/// CORS for browser clients, only when CORS_ORIGINS names origins (`*` for any). Off by
/// default: server-side clients (Open WebUI's backend, SDKs) do not need it.
pub fn cors(config: &Config) -> Option<CorsLayer> {
    if config.cors_origins.is_empty() {
        return None;
    }
    let origins = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = config
            .cors_origins
            .iter()
            .filter_map(|origin| match HeaderValue::from_str(origin.trim_end_matches('/')) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!("⚠️ CORS_ORIGINS: {origin:?} is not a valid origin; ignored");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([REQUEST_ID_HEADER, OVERHEAD_HEADER, USER_HEADER, CONVERSATION_HEADER, MESSAGE_HEADER])
            .max_age(Duration::from_secs(600)),
    )
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(REQUEST_ID_HEADER) {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
            return value.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 16];
    let mut n = fastrand::u64(..);
    for byte in id.iter_mut() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 16);
        assert_ne!(fresh, request_id(&h));
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 16);
    }
}
