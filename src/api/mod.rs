//! The client APIs opendify speaks, each a codec over the neutral core in [`crate::bridge`]:
//! its request JSON becomes a [`crate::bridge::Turn`], the neutral event stream becomes its
//! chunks or events, a collected answer its response body, and an
//! [`crate::bridge::ApiError`] its error shape. No codec talks to Dify or to the store.

pub mod anthropic;
pub mod audio;
pub mod chat;
pub mod completions;
pub mod messages;
pub mod models;
pub mod open_webui;
pub mod openai;
pub mod responses;

use axum::http::HeaderMap;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bridge::{ApiError, Facts, ToolChoice, ToolSpec, Tools, Usage};
use crate::json_text::reason;

/// Which family of APIs a request speaks: decides the shape of its errors, including the
/// ones raised before any handler runs (auth, limits, unknown paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// Anthropic's SDKs call `/v1/messages` (`/messages` without `/v1`); everything else is OpenAI's.
    pub fn of_path(path: &str) -> Dialect {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let bare = path.strip_prefix("/v1").unwrap_or(path);
        if bare == "/messages" || bare.starts_with("/messages/") { Dialect::Anthropic } else { Dialect::OpenAi }
    }

    /// Like [`Dialect::of_path`], and the model list is Anthropic's for a request that
    /// carries `anthropic-version` (Anthropic's SDKs send it on every request).
    pub fn of_request(path: &str, headers: &HeaderMap) -> Dialect {
        let bare = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let models = ["/v1/models", "/models"]
            .iter()
            .any(|m| bare.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')));
        if models && headers.contains_key("anthropic-version") { Dialect::Anthropic } else { Dialect::of_path(path) }
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
    // Well-formed bodies (nearly all) are parsed once, without tracking the path; a rejected
    // one is parsed again, tracked, to name the field at fault.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
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

/// Unix seconds as RFC 3339 in UTC: `2036-11-23T05:52:48Z`.
pub fn iso(unix: i64) -> String {
    let (year, month, day) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One tool definition: its `name`, `description`, and the JSON Schema of its arguments
/// under `schema_field` (`parameters` in OpenAI's APIs, `input_schema` in Anthropic's; an
/// object without properties when absent). `param` is where the definition is in the request.
pub fn tool_spec(tool: Option<&Value>, schema_field: &str, param: &str) -> Result<ToolSpec, ApiError> {
    let bad = |why: &str| ApiError::invalid_request(format!("`{param}` {why}")).param(param.to_string());
    let Some(tool) = tool.and_then(Value::as_object) else { return Err(bad("must be an object")) };
    let name = tool.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty());
    let Some(name) = name else { return Err(bad("needs a `name`")) };
    Ok(ToolSpec {
        name: name.to_string(),
        description: tool.get("description").and_then(Value::as_str).map(str::to_string),
        parameters: tool.get(schema_field).cloned().unwrap_or_else(|| serde_json::json!({"type": "object"})),
    })
}

/// The client's tools as the core takes them; a choice naming a tool that is not among them
/// is refused, naming `choice_param`.
pub fn tools(specs: Vec<ToolSpec>, choice: ToolChoice, parallel: bool, choice_param: &str) -> Result<Tools, ApiError> {
    if let ToolChoice::Named(name) = &choice
        && !specs.iter().any(|s| &s.name == name)
    {
        return Err(ApiError::invalid_request(format!(
            "`{choice_param}` names `{name}`, which is not one of the `tools`"
        ))
        .param(choice_param.to_string()));
    }
    Ok(Tools { specs, choice, parallel })
}
