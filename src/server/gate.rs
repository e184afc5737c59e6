//! The one middleware every request passes, in this order: a request id and a tracing span
//! (so every log line of the request carries the id), client auth for `/v1/*`, the body
//! limits, a slot under MAX_CONCURRENT_UPSTREAM for chat completions, metrics, and errors in
//! OpenAI's shape whoever produced them. One middleware rather than five keeps the per-request
//! cost to one boxed future.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use super::SharedState;
use super::auth::{Access, Auth, ClientAppKey, Refusal};
use super::limits::{BodyError, Limits};
use super::metrics::{Rejection, TrackedStream};
use super::smoothing;
use crate::bridge::AppRoute;
use crate::config::Config;
use crate::openai::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const OVERHEAD_HEADER: &str = "x-opendify-overhead-ms";

/// Set by the chat handler on its response: what the metrics label the request with.
#[derive(Clone)]
pub struct ChatLabels {
    pub route: Arc<AppRoute>,
    pub stream: bool,
}

/// Set by the chat handler on a non-streaming response: how long it waited on Dify.
#[derive(Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// Auth, limits and the shutdown flag, built once from the configuration.
pub struct Gate {
    pub auth: Auth,
    pub limits: Limits,
    pub smoothing: bool,
    shutting_down: AtomicBool,
}

impl Gate {
    pub fn from_config(config: &Config) -> Self {
        Gate {
            auth: Auth::from_config(config),
            limits: Limits::from_config(config),
            smoothing: config.stream_smoothing,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// From now on `/ready` answers 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

pub async fn gate(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let request_id = request_id(request.headers());
    let span = tracing::info_span!("request", id = request_id.to_str().unwrap_or("-"));
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = admit(&state, request, next, &span).instrument(span.clone()).await;
    let mut response = super::limits::openai_shaped(response, &method, uri.path()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    response
}

async fn admit(state: &SharedState, mut request: Request, next: Next, span: &tracing::Span) -> Response {
    let path = request.uri().path();
    let is_chat = path == "/v1/chat/completions" && request.method() == Method::POST;
    let mut passthrough = false;
    if path.starts_with("/v1/") || path == "/v1" {
        match state.gate.auth.check(request.headers()) {
            Ok(Access::Granted) => {}
            Ok(Access::Passthrough(key)) => {
                passthrough = true;
                request.extensions_mut().insert(ClientAppKey(key));
            }
            Err(refusal) => {
                state.metrics.reject(Rejection::Unauthorized);
                let why = if refusal == Refusal::Missing { "no API key" } else { "a wrong API key" };
                tracing::warn!("❌ rejected {} {path}: {why}", request.method());
                return refusal.into_response();
            }
        }
    }
    let request = match state.gate.limits.read_body(request).await {
        Ok(request) => request,
        Err(error) => {
            state.metrics.reject(match error {
                BodyError::TooLarge(_) => Rejection::TooLarge,
                BodyError::Timeout(_) | BodyError::Broken(_) => Rejection::SlowClient,
            });
            let error = error.into_error();
            tracing::warn!(status = error.status.as_u16(), "❌ rejected request body: {}", error.message);
            return error.into_response();
        }
    };
    if !is_chat {
        return next.run(request).await;
    }
    let permit = match state.gate.limits.upstream_slot() {
        Ok(permit) => permit,
        Err(error) => {
            state.metrics.reject(Rejection::Overloaded);
            state.metrics.count_request(None, false, error.status.as_u16());
            tracing::warn!("❌ {}", error.message);
            return error.into_response();
        }
    };
    let started = Instant::now();
    let mut response = next.run(request).await;
    let labels = response.extensions_mut().remove::<ChatLabels>();
    if passthrough && response.status() == StatusCode::BAD_GATEWAY {
        response = passthrough_key_rejected(response).await;
    }
    let stream = labels.as_ref().is_some_and(|l| l.stream);
    let status = response.status();
    state.metrics.count_request(labels.as_ref().map(|l| l.route.name.as_str()), stream, status.as_u16());
    if status == StatusCode::OK && is_event_stream(response.headers()) {
        let (parts, body) = response.into_parts();
        let body = if state.gate.smoothing { smoothing::adaptive(body) } else { body };
        let tracked = TrackedStream::new(body, state.metrics.clone(), span.clone(), started, Some(permit));
        return Response::from_parts(parts, Body::new(tracked));
    }
    drop(permit);
    let elapsed = started.elapsed();
    state.metrics.observe_duration(stream, elapsed);
    if let Some(UpstreamTime(upstream)) = response.extensions_mut().remove::<UpstreamTime>() {
        let overhead = elapsed.saturating_sub(upstream);
        state.metrics.observe_overhead(overhead);
        let ms = format!("{:.3}", overhead.as_secs_f64() * 1000.0);
        if let Ok(value) = HeaderValue::from_str(&ms) {
            response.headers_mut().insert(OVERHEAD_HEADER, value);
        }
    }
    response
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
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static(OVERHEAD_HEADER),
                HeaderName::from_static("x-opendify-user"),
            ])
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

/// With DIFY_KEY_PASSTHROUGH the app key is the client's own: Dify rejecting it is the
/// client's 401, not a gateway misconfiguration.
async fn passthrough_key_rejected(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return ApiError::server(StatusCode::BAD_GATEWAY, "Dify failed").into_response();
    };
    let rejected = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v["error"]["code"] == "upstream_auth_failed");
    if !rejected {
        return Response::from_parts(parts, Body::from(bytes));
    }
    tracing::warn!("❌ Dify rejected the app key the client sent (DIFY_KEY_PASSTHROUGH)");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Dify rejected the app key you sent (DIFY_KEY_PASSTHROUGH): check that it is a valid key of this model's app",
    )
    .code("invalid_api_key")
    .into_response()
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
