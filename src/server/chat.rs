//! `POST /v1/chat/completions` (and `/chat/completions` for clients configured without
//! `/v1`): the Chat Completions codec around the shared exchange.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use super::SharedState;
use super::auth::ClientAppKey;
use super::exchange::Exchange;
use super::gate::Generation;
use crate::api::chat::{self, ChatEncoder};
use crate::api::{Dialect, unix_now};
use crate::bridge::ApiError;
use crate::logging::Shown;

pub async fn chat_completions(
    State(state): State<SharedState>,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let dialect = Dialect::OpenAi;
    let generation = match Generation::start(&state, dialect) {
        Ok(generation) => generation,
        Err(refused) => return refused,
    };
    let response = 'answer: {
        let state = &state;
        let (turn, mut options) = match chat::parse(&body) {
            Ok(parsed) => parsed,
            Err(error) => break 'answer rejected(dialect, with_content_type_hint(error, &headers)),
        };
        let stream = turn.stream;
        let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
        let exchange = match Exchange::prepare(state, &headers, turn, client_key, dialect).await {
            Ok(exchange) => exchange,
            Err(error) => break 'answer rejected(dialect, error),
        };
        options.events = exchange.extras.events;
        options.metadata = exchange.extras.metadata;
        if stream {
            exchange.stream(ChatEncoder::new(&options, unix_now())).await
        } else {
            exchange
                .complete(async |answer| {
                    match chat::completion(
                        &options,
                        &answer.collected,
                        answer.reason,
                        answer.usage.as_ref(),
                        unix_now(),
                    ) {
                        Ok(body) => json_body(body),
                        Err(e) => dialect.error_response(&ApiError::server(
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            format!("The answer could not be written as JSON: {e}"),
                        )),
                    }
                })
                .await
        }
    };
    generation.finish(&state, response)
}

/// A JSON body already written to bytes, as `application/json`.
pub fn json_body(body: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    // Room for the headers every answer gets on its way out (ids, user, length, overhead),
    // so the map is not grown and rehashed several times per request.
    let headers = response.headers_mut();
    headers.reserve(12);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A request refused before Dify was called: logged, and answered in the dialect's shape.
pub fn rejected(dialect: Dialect, error: ApiError) -> Response {
    tracing::warn!(status = error.status.as_u16(), "❌ rejected request: {}", Shown(&error.message));
    dialect.error_response(&error)
}

/// A body that is not JSON because it was sent as something else says so.
pub fn with_content_type_hint(mut error: ApiError, headers: &HeaderMap) -> ApiError {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.is_empty() && !content_type.contains("json") {
        error.message = format!(
            "{} (the request was sent as {content_type}; send JSON with Content-Type: application/json)",
            error.message
        );
    }
    error
}
