//! OpenAI's error object, the one format every API error leaves opendify in.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::dify::DifyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn server(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "server_error", message)
    }

    /// `{"error": {...}}` as JSON text, for bodies and for error chunks in a stream.
    pub fn to_json(&self) -> String {
        json!({ "error": ErrorObject {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code.as_deref(),
        }})
        .to_string()
    }

    /// Maps a failed Dify call for model `model` to what an OpenAI client should see. The
    /// cause stays in the message: "upstream error" alone helps nobody.
    pub fn from_dify(err: &DifyError, model: &str) -> Self {
        match err {
            DifyError::Unauthorized { message, .. } => ApiError::server(
                StatusCode::BAD_GATEWAY,
                format!("Dify rejected the app key configured for model `{model}` ({message}); check MODEL_CONFIG"),
            )
            .code("upstream_auth_failed"),
            DifyError::Api { status: 429, message, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", format!("Dify rate limit: {message}"))
                    .code("rate_limit_exceeded")
            }
            DifyError::Api { status, code, message } if *status < 500 => {
                ApiError::invalid_request(format!("Dify rejected the request for model `{model}`: {message} ({code})"))
                    .code(code.clone())
            }
            DifyError::Api { status, code, message } => ApiError::server(
                StatusCode::BAD_GATEWAY,
                format!("Dify failed (HTTP {status}, {code}) for model `{model}`: {message}"),
            )
            .code("upstream_error"),
            DifyError::Http { status, .. } => ApiError::server(
                if *status == 524 || *status == 504 { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY },
                format!("{err} for model `{model}`"),
            )
            .code("upstream_error"),
            DifyError::Timeout(_) | DifyError::Idle(_) => {
                ApiError::server(StatusCode::GATEWAY_TIMEOUT, format!("{err} (model `{model}`)"))
                    .code("upstream_timeout")
            }
            DifyError::Connect { .. } | DifyError::Transport(_) | DifyError::Protocol(_) => {
                ApiError::server(StatusCode::BAD_GATEWAY, format!("{err} (model `{model}`)"))
                    .code("upstream_unavailable")
            }
            DifyError::Request(_) => ApiError::invalid_request(err.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": ErrorObject {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code.as_deref(),
        }});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
