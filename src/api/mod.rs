//! The client APIs opendify speaks, each a codec over the neutral core in [`crate::bridge`]:
//! its request JSON becomes a [`crate::bridge::Turn`], the neutral event stream becomes its
//! chunks or events, a collected answer its response body, and an
//! [`crate::bridge::ApiError`] its error shape. No codec talks to Dify or to the store.

pub mod anthropic;
pub mod audio;
pub mod chat;
pub mod completions;
pub mod models;
pub mod open_webui;
pub mod openai;
pub mod responses;

use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::bridge::{ApiError, Facts, Usage};
use crate::json_text::reason;

/// Which family of APIs a request speaks: decides the shape of its errors, including the
/// ones raised before any handler runs (auth, limits, unknown paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// Anthropic's SDKs call `/v1/messages`; everything else is OpenAI's.
    pub fn of_path(path: &str) -> Dialect {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        if path == "/v1/messages" || path.starts_with("/v1/messages/") { Dialect::Anthropic } else { Dialect::OpenAi }
    }

    /// The error as JSON text (a body, or a stream's error frame).
    pub fn error_json(self, error: &ApiError) -> String {
        match self {
            Dialect::OpenAi => openai::error_json(error),
            Dialect::Anthropic => anthropic::error_json(error),
        }
    }

    pub fn error_response(self, error: &ApiError) -> Response {
        match self {
            Dialect::OpenAi => openai::error_response(error),
            Dialect::Anthropic => anthropic::error_response(error),
        }
    }
}

/// Parses a JSON request body; a rejection names the field at fault (`messages[1].content`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(describe_parse_error)?;
    de.end().map_err(|e| ApiError::invalid_request(format!("Request body is not valid JSON: {e}")))?;
    Ok(value)
}

fn describe_parse_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() || path == "." {
        if inner.is_data() && path == "." {
            // Valid JSON, wrong shape at the top (e.g. missing field, or not an object).
            let text = reason(inner);
            let field = text.strip_prefix("missing field `").and_then(|s| s.split('`').next()).map(str::to_string);
            let mut error = ApiError::invalid_request(match &field {
                Some(f) => format!("Missing required field `{f}`"),
                None => format!("Request body must be a JSON object: {text}"),
            });
            if let Some(f) = field {
                error = error.param(f);
            }
            return error;
        }
        return ApiError::invalid_request(format!("Request body is not valid JSON: {inner}"));
    }
    let text = reason(inner);
    if let Some(field) = text.strip_prefix("missing field `").and_then(|s| s.split('`').next()) {
        let param = format!("{path}.{field}");
        return ApiError::invalid_request(format!("Missing required field `{param}`")).param(param);
    }
    ApiError::invalid_request(format!("Invalid value for `{path}`: {text}")).param(path)
}

pub use crate::bridge::random_id;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The `dify` object DIFY_METADATA (or `X-Dify-Metadata: true`) adds to an answer: which Dify
/// conversation and message it was, the passages it drew on as Dify reported them, and the
/// usage with its price.
pub fn dify_object(facts: &Facts<'_>, usage: Option<&Usage>) -> serde_json::Value {
    let usage = usage.map(|u| {
        let (total_price, currency) = match &u.price {
            Some((total, currency)) => (Some(total.as_str()), Some(currency.as_str())),
            None => (None, None),
        };
        serde_json::json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "total_price": total_price, "currency": currency})
    });
    serde_json::json!({
        "conversation_id": facts.conversation_id,
        "message_id": facts.message_id,
        "retriever_resources": facts.citations.iter().map(|c| &c.raw).collect::<Vec<_>>(),
        "usage": usage,
    })
}
