//! `POST /v1/completions` (and `/completions`): the legacy completions codec around the
//! shared exchange, prepared statelessly (the API has no conversations; see
//! `api::completions`).

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
use crate::api::completions::{self, CompletionEncoder};
use crate::api::{Dialect, unix_now};

pub async fn completions(
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
        let (turn, options) = match completions::parse(&body) {
            Ok(parsed) => parsed,
            Err(error) => break 'answer rejected(dialect, with_content_type_hint(error, &headers)),
        };
        let stream = turn.stream;
        let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
        let exchange = match Exchange::prepare_stateless(state, &headers, turn, client_key, dialect).await {
            Ok(exchange) => exchange,
            Err(error) => break 'answer rejected(dialect, error),
        };
        if stream {
            exchange.stream(CompletionEncoder::new(&options, unix_now())).await
        } else {
            exchange
                .complete(async |answer| {
                    let body = completions::completion(
                        &options,
                        &answer.collected,
                        answer.reason,
                        answer.usage.as_ref(),
                        unix_now(),
                    );
                    axum::Json(body).into_response()
                })
                .await
        }
    };
    generation.finish(&state, response)
}
