//! `POST /v1/messages`: the Anthropic Messages codec around the shared exchange; and
//! `POST /v1/messages/count_tokens`, which opendify cannot answer honestly.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::SharedState;
use super::auth::ClientAppKey;
use super::chat::{rejected, with_content_type_hint};
use super::exchange::Exchange;
use super::gate::Generation;
use crate::api::Dialect;
use crate::api::messages::{self, MessagesEncoder};
use crate::bridge::ApiError;

pub async fn create_message(
    State(state): State<SharedState>,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let dialect = Dialect::Anthropic;
    let generation = match Generation::start(&state, dialect) {
        Ok(generation) => generation,
        Err(refused) => return refused,
    };
    let response = 'answer: {
        let state = &state;
        let (turn, options) = match messages::parse(&body) {
            Ok(parsed) => parsed,
            Err(error) => break 'answer rejected(dialect, with_content_type_hint(error, &headers)),
        };
        let stream = turn.stream;
        let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
        let exchange = match Exchange::prepare(state, &headers, turn, client_key, dialect).await {
            Ok(exchange) => exchange,
            Err(error) => break 'answer rejected(dialect, error),
        };
        if stream {
            exchange.stream(MessagesEncoder::new(&options)).await
        } else {
            exchange
                .complete(async |answer| {
                    let body = messages::message(&options, &answer.collected, answer.reason, answer.usage.as_ref());
                    axum::Json(body).into_response()
                })
                .await
        }
    };
    generation.finish(&state, response)
}

/// Token counts are the Dify app's model's, which opendify does not know (nor which model
/// that is): a 404 that says so, rather than a made-up number.
pub async fn count_tokens() -> Response {
    let error = ApiError::not_found(
        "Token counting is not available: opendify cannot count tokens for the model behind a Dify app \
         (Dify has no counting endpoint, and the app's model and tokenizer are not known to the gateway). \
         Use the usage a message reports instead.",
    )
    .code("count_tokens_unavailable");
    rejected(Dialect::Anthropic, error)
}
