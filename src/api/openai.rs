//! OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, as a response
//! (with the headers the SDKs read: `Retry-After`, `x-should-retry`) and as a stream frame.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::bridge::{ApiError, ErrorType};

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// OpenAI's `type` for each kind (a wrong key is `invalid_request_error` with code
/// `invalid_api_key` at OpenAI, and the SDKs map statuses, not types, to exceptions).
pub fn error_type(kind: ErrorType) -> &'static str {
    match kind {
        ErrorType::InvalidRequest | ErrorType::Authentication | ErrorType::Permission | ErrorType::NotFound => {
            "invalid_request_error"
        }
        ErrorType::RateLimit => "requests",
        ErrorType::Server | ErrorType::Overloaded => "server_error",
    }
}

fn body(error: &ApiError) -> ErrorBody<'_> {
    ErrorBody {
        error: ErrorObject {
            message: &error.message,
            kind: error_type(error.kind),
            param: error.param.as_deref(),
            code: error.code.as_deref(),
        },
    }
}

/// `{"error": {...}}` as JSON text, for error frames in a stream.
pub fn error_json(error: &ApiError) -> String {
    // Serialising plain structs into memory cannot fail.
    serde_json::to_string(&body(error)).unwrap_or_default()
}

pub fn error_response(error: &ApiError) -> Response {
    let mut response = (error.status, Json(body(error))).into_response();
    retry_headers(&mut response, error);
    response
}

/// `Retry-After` on 429 and 503, and `x-should-retry` when retrying is known to be right or
/// wrong (the OpenAI and Anthropic SDKs obey it before looking at the status).
pub fn retry_headers(response: &mut Response, error: &ApiError) {
    let headers = response.headers_mut();
    if error.status == StatusCode::SERVICE_UNAVAILABLE || error.status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert("retry-after", HeaderValue::from_static("1"));
    }
    match error.retry {
        Some(false) => {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        Some(true) => {
            headers.insert("x-should-retry", HeaderValue::from_static("true"));
        }
        None => {}
    }
}
