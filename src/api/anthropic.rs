//! Anthropic's error object, `{"type": "error", "error": {"type", "message"}}`, as a response
//! (with `Retry-After` and `x-should-retry`, which the Anthropic SDKs read too) and as a
//! stream event. The error `type` follows the status, as Anthropic's API does.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::bridge::{ApiError, ErrorType};

#[derive(Serialize)]
struct ErrorObject<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
}

#[derive(Serialize)]
struct Details<'a> {
    error_code: &'a str,
}

/// Error codes Anthropic's SDKs act on, sent as `error.details.error_code` when an error
/// carries one (a tool runner sends the full history when threads are unsupported).
const SDK_CODES: &[&str] = &["thread_unsupported_request"];

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorObject<'a>,
}

/// Anthropic's error `type` for an error.
pub fn error_type(error: &ApiError) -> &'static str {
    match (error.kind, error.status.as_u16()) {
        (_, 413) => "request_too_large",
        (ErrorType::Authentication, _) => "authentication_error",
        (ErrorType::Permission, _) => "permission_error",
        (ErrorType::NotFound, _) => "not_found_error",
        (ErrorType::RateLimit, _) => "rate_limit_error",
        (ErrorType::Overloaded, _) => "overloaded_error",
        (ErrorType::InvalidRequest, _) => "invalid_request_error",
        (ErrorType::Server, _) => "api_error",
    }
}

fn body(error: &ApiError) -> ErrorBody<'_> {
    let details = error.code.as_deref().filter(|c| SDK_CODES.contains(c)).map(|error_code| Details { error_code });
    ErrorBody { kind: "error", error: ErrorObject { kind: error_type(error), message: &error.message, details } }
}

/// The error as JSON text (a body, or the data of an `error` stream event).
pub fn error_json(error: &ApiError) -> String {
    // Serialising plain structs into memory cannot fail.
    serde_json::to_string(&body(error)).unwrap_or_default()
}

pub fn error_response(error: &ApiError) -> Response {
    let mut response = (error.status, Json(body(error))).into_response();
    super::openai::retry_headers(&mut response, error);
    response
}
