//! The one error a client can get, whatever its API: a status, a kind, a message naming the
//! cause, the request field at fault, a code, and whether retrying makes sense. Each dialect
//! renders it in its own shape (OpenAI's `{"error":{…}}`, Anthropic's `{"type":"error",…}`);
//! how a failed Dify call becomes one lives here, once.

use axum::http::StatusCode;

use crate::dify::DifyError;

/// The kind of error, from which each API derives its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    Server,
    Overloaded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorType,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// `Some(false)`: the request reached Dify, which may have generated (and billed) an
    /// answer already: SDKs must not send it again (`x-should-retry: false`).
    pub retry: Option<bool>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), param: None, code: None, retry: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorType::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorType::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorType::Authentication, message)
    }

    pub fn server(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorType::Server, message)
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Retrying shortly is the right thing to do (overload).
    pub fn retryable(mut self) -> Self {
        self.retry = Some(true);
        self
    }

    /// The request reached Dify: a retry could generate the answer a second time.
    pub fn not_retryable(mut self) -> Self {
        self.retry = Some(false);
        self
    }

    /// Maps a Dify call that failed before the answer began. The cause stays in the
    /// message: "upstream error" alone helps nobody.
    pub fn from_dify(err: &DifyError, model: &str) -> Self {
        let error = match err {
            DifyError::Unauthorized { message, .. } => ApiError::server(
                StatusCode::BAD_GATEWAY,
                format!("Dify rejected the app key configured for model `{model}` ({message}); check MODEL_CONFIG"),
            )
            .code("upstream_auth_failed"),
            DifyError::Api { status: 429, message, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorType::RateLimit,
                format!("Dify rate limit: {message}"),
            )
            .code("rate_limit_exceeded"),
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
            DifyError::Connect { .. }
            | DifyError::Transport(_)
            | DifyError::Protocol(_)
            | DifyError::TooLarge { .. } => {
                ApiError::server(StatusCode::BAD_GATEWAY, format!("{err} (model `{model}`)"))
                    .code("upstream_unavailable")
            }
            DifyError::Request(_) => ApiError::invalid_request(err.to_string()),
        };
        match err {
            // Nothing reached Dify, or Dify asks for a pause: retrying is the right thing.
            DifyError::Connect { .. } | DifyError::Request(_) | DifyError::Api { status: 429, .. } => error,
            // Dify (or a proxy in front of it) had the request: it may be generating.
            _ => error.not_retryable(),
        }
    }

    /// Errors after the answer began: the request was fine, the upstream failed, so 502 (or
    /// 429 for rate limits, 504 for timeouts), with Dify's code and message kept.
    pub fn from_dify_midway(err: &DifyError, model: &str) -> Self {
        match err {
            DifyError::Api { status: 429, .. } | DifyError::Timeout(_) | DifyError::Idle(_) => {
                ApiError::from_dify(err, model)
            }
            DifyError::Api { code, message, .. } => ApiError::server(
                StatusCode::BAD_GATEWAY,
                format!("Dify reported an error while answering for model `{model}`: {message}"),
            )
            .code(code.clone()),
            other => ApiError::from_dify(other, model),
        }
        .not_retryable()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_dify_had_the_request_may_be_retried() {
        let connect = DifyError::Connect { url: "http://x".into(), reason: "refused".into() };
        assert_eq!(ApiError::from_dify(&connect, "m").retry, None);
        let limited = DifyError::Api { status: 429, code: "too_many_requests".into(), message: "slow".into() };
        assert_eq!(ApiError::from_dify(&limited, "m").retry, None);
        for reached in [
            DifyError::Timeout(std::time::Duration::from_secs(1)),
            DifyError::Api { status: 500, code: "x".into(), message: "y".into() },
            DifyError::Http { status: 504, body: crate::dify::ForeignBody::Empty },
            DifyError::Transport("reset".into()),
        ] {
            assert_eq!(ApiError::from_dify(&reached, "m").retry, Some(false), "{reached}");
        }
    }
}
