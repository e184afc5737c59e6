//! The OpenAI Responses API: `POST /v1/responses` (the codec in `api::responses` around the
//! shared exchange), and `GET`/`DELETE /v1/responses/{id}` on the responses the store keeps.
//! A response is visible only to the app's key and user that created it: the user comes from
//! the same headers as for a generation, or from `?user=` (the `user` the request body named).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::SharedState;
use super::auth::ClientAppKey;
use super::chat::{json_body, rejected, with_content_type_hint};
use super::exchange::Exchange;
use super::gate::Generation;
use crate::api::responses::{self, ResponsesEncoder};
use crate::api::{Dialect, random_id, unix_now};
use crate::bridge::ApiError;
use crate::conversations::ResponseRecord;

pub async fn create(
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
        let (turn, mut options) = match responses::parse(&body) {
            Ok(parsed) => parsed,
            Err(error) => break 'answer rejected(dialect, with_content_type_hint(error, &headers)),
        };
        let stream = turn.stream;
        let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
        let mut exchange = match Exchange::prepare(state, &headers, turn, client_key, dialect).await {
            // Open WebUI's events are a Chat Completions extension.
            Ok(exchange) => exchange.without_events(),
            Err(error) => break 'answer rejected(dialect, error),
        };
        options.metadata = exchange.extras.metadata;
        let id = random_id("resp_");
        let keeper = options.store.then(|| exchange.keeper(&id));
        let created_at = unix_now();
        if stream {
            let exchange = match keeper {
                Some(keeper) => exchange.keep_stream(keeper),
                None => exchange,
            };
            exchange.stream(ResponsesEncoder::new(id, options, created_at)).await
        } else {
            exchange
                .complete(async |answer| {
                    let body = ResponsesEncoder::collected(
                        id,
                        options,
                        created_at,
                        &answer.collected,
                        answer.reason,
                        answer.usage.as_ref(),
                    );
                    if let Some(keeper) = keeper {
                        keeper.keep(answer.conversation_id.clone(), body.to_string()).await;
                    }
                    axum::Json(body).into_response()
                })
                .await
        }
    };
    generation.finish(&state, response)
}

#[derive(Debug, Default, Deserialize)]
pub struct Viewer {
    /// The `user` the creating request's body named, when no header names the user.
    #[serde(default)]
    user: Option<String>,
}

/// Who asks to see a stored response.
pub struct Viewing {
    headers: HeaderMap,
    viewer: Viewer,
    client_key: Option<ClientAppKey>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Viewing {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        let Query(viewer) = Query::<Viewer>::from_request_parts(parts, state)
            .await
            .map_err(|e| rejected(Dialect::OpenAi, ApiError::invalid_request(format!("Invalid query string: {e}"))))?;
        let client_key = parts.extensions.get::<ClientAppKey>().cloned();
        Ok(Viewing { headers: parts.headers.clone(), viewer, client_key })
    }
}

/// `GET /v1/responses/{id}`: the response as its client got it.
pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>, request: Viewing) -> Response {
    match owned(&state, &request, &id).await {
        Ok(record) => json_body(record.body.into_bytes()),
        Err(error) => rejected(Dialect::OpenAi, error),
    }
}

/// `DELETE /v1/responses/{id}`: forgets the response; its Dify conversation stays in Dify.
pub async fn delete(State(state): State<SharedState>, Path(id): Path<String>, request: Viewing) -> Response {
    let record = match owned(&state, &request, &id).await {
        Ok(record) => record,
        Err(error) => return rejected(Dialect::OpenAi, error),
    };
    if let Err(e) = state.conversations.store().delete_response(&record.id).await {
        return rejected(Dialect::OpenAi, store_unavailable(&e));
    }
    tracing::info!(response = %record.id, "🗑️ response deleted");
    axum::Json(serde_json::json!({"id": record.id, "object": "response", "deleted": true})).into_response()
}

/// `GET /v1/responses/{id}/input_items`: opendify keeps what a response said, not what it was
/// asked (inputs can be large files); a clear 404 rather than an empty list that would lie.
pub async fn input_items(Path(id): Path<String>) -> Response {
    let error = ApiError::not_found(format!(
        "opendify does not keep the input items of responses (only the response itself, for \
         previous_response_id and GET /v1/responses/{id}); the Dify app's logs show the conversation"
    ))
    .code("input_items_not_kept");
    rejected(Dialect::OpenAi, error)
}

/// The stored response, when it is the requester's.
async fn owned(state: &SharedState, request: &Viewing, id: &str) -> Result<ResponseRecord, ApiError> {
    let identity = state.live().identity.resolve(&request.headers, request.viewer.user.as_deref())?;
    let record = state.conversations.store().response(id).await.map_err(|e| store_unavailable(&e))?;
    match record {
        Some(record) if record.user == identity.user && visible_to_key(request.client_key.as_ref(), &record) => {
            Ok(record)
        }
        _ => Err(ApiError::not_found(format!(
            "No response found with id '{id}'. Responses are kept for CONVERSATION_TTL, for the user that created \
             them (send the same user header, or ?user= when the request body named the user)."
        ))
        .code("response_not_found")),
    }
}

/// With DIFY_KEY_PASSTHROUGH the client's own app key scopes what it can see: a response made
/// with another app's key is not its to read.
fn visible_to_key(client_key: Option<&ClientAppKey>, record: &ResponseRecord) -> bool {
    client_key.is_none_or(|ClientAppKey(key)| crate::conversations::fingerprint::app_id(key.expose()) == record.app)
}

fn store_unavailable(e: &crate::conversations::StoreError) -> ApiError {
    tracing::warn!("❌ the conversation store failed: {e}");
    ApiError::server(StatusCode::SERVICE_UNAVAILABLE, format!("The conversation store could not be read: {e}"))
        .retryable()
}
