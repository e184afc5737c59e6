//! Everything that can go wrong talking to Dify, by layer, so that callers map each to the
//! right status for their client and the doctor names the layer; and how Dify's error
//! answers (its JSON, or a proxy's page) become one of them.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Response, StatusCode};

use super::types::ErrorBody;
use crate::secret::mask_keys_in;

/// The kinds of failure, as fixed labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Auth,
    RateLimit,
    Server,
    Api,
    Http,
    Connect,
    Timeout,
    IdleTimeout,
    Transport,
    Protocol,
    Request,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Auth,
        ErrorKind::RateLimit,
        ErrorKind::Server,
        ErrorKind::Api,
        ErrorKind::Http,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::IdleTimeout,
        ErrorKind::Transport,
        ErrorKind::Protocol,
        ErrorKind::Request,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::Server => "server",
            ErrorKind::Api => "api",
            ErrorKind::Http => "http",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Request => "request",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong talking to Dify, by layer, so callers can map each to the
/// right HTTP status and the doctor can name the layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DifyError {
    #[error("Dify rejected the app key (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("Dify answered HTTP {status} ({code}): {message}")]
    Api { status: u16, code: String, message: String },
    #[error("{}", foreign_answer(*.status, .body))]
    Http { status: u16, body: ForeignBody },
    #[error("cannot connect to Dify at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("Dify did not answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("Dify sent nothing for {}s (STREAM_IDLE_TIMEOUT)", .0.as_secs_f64())]
    Idle(Duration),
    #[error("the connection to Dify broke: {0}")]
    Transport(String),
    #[error("Dify sent something that is not a valid event: {0}")]
    Protocol(String),
    #[error("Dify sent an event that exceeded {} MiB (a broken or hostile upstream)", .limit / (1024 * 1024))]
    TooLarge { limit: usize },
    #[error("invalid request to Dify: {0}")]
    Request(String),
}

/// An error body that is not Dify's JSON, described rather than shown: a proxy's HTML page
/// pasted into a chat window helps nobody (the first 200 characters go to the debug log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignBody {
    /// An HTML page, with its `<title>` when it has one.
    Html {
        title: Option<String>,
    },
    Text,
    Empty,
}

impl std::fmt::Display for ForeignBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForeignBody::Html { title: Some(title) } => write!(f, "an HTML page \"{title}\""),
            ForeignBody::Html { title: None } => f.write_str("an HTML page"),
            ForeignBody::Text => f.write_str("a plain-text body"),
            ForeignBody::Empty => f.write_str("an empty body"),
        }
    }
}

/// `Dify answered 504 Gateway Time-out (an HTML page from a proxy in front of Dify)`: the
/// page's title when it names the status, else the status and its reason phrase.
fn foreign_answer(status: u16, body: &ForeignBody) -> String {
    match body {
        ForeignBody::Html { title: Some(title) } if title.starts_with(&status.to_string()) => {
            format!("Dify answered {title} (an HTML page from a proxy in front of Dify)")
        }
        ForeignBody::Html { .. } => {
            format!("Dify answered {} ({body} from a proxy in front of Dify)", status_words(status))
        }
        _ => format!("Dify answered {} with {body}, not Dify's JSON", status_words(status)),
    }
}

impl ForeignBody {
    fn of(body: &[u8]) -> ForeignBody {
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return ForeignBody::Empty;
        }
        let lower = trimmed.to_ascii_lowercase();
        if !(lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.contains("<body")) {
            return ForeignBody::Text;
        }
        let title = lower.find("<title>").and_then(|start| {
            let from = start + "<title>".len();
            let end = from + lower[from..].find("</title>")?;
            // Lowercasing ASCII keeps byte offsets: the original case is cut at the same place.
            let words: Vec<&str> = trimmed.get(from..end)?.split_whitespace().collect();
            let title: String = words.join(" ").chars().filter(|c| !c.is_control()).take(80).collect();
            (!title.is_empty()).then_some(title)
        });
        ForeignBody::Html { title }
    }
}

/// `504 Gateway Time-out`-like words for a status: the number and its reason phrase.
fn status_words(status: u16) -> String {
    match StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

impl DifyError {
    /// Which kind of failure this is (metrics, JSON output, the doctor).
    pub fn kind(&self) -> ErrorKind {
        match self {
            DifyError::Unauthorized { .. } => ErrorKind::Auth,
            DifyError::Api { status: 429, .. } => ErrorKind::RateLimit,
            DifyError::Api { status, .. } if *status >= 500 => ErrorKind::Server,
            DifyError::Api { .. } => ErrorKind::Api,
            DifyError::Http { .. } => ErrorKind::Http,
            DifyError::Connect { .. } => ErrorKind::Connect,
            DifyError::Timeout(_) => ErrorKind::Timeout,
            DifyError::Idle(_) => ErrorKind::IdleTimeout,
            DifyError::Transport(_) => ErrorKind::Transport,
            DifyError::Protocol(_) | DifyError::TooLarge { .. } => ErrorKind::Protocol,
            DifyError::Request(_) => ErrorKind::Request,
        }
    }

    /// Dify's error code when it sent one (`not_found`, `invalid_param`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            DifyError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DifyError::Unauthorized { status, .. } | DifyError::Api { status, .. } | DifyError::Http { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Dify's "Conversation Not Exists": the stored conversation id is no good.
    pub fn is_conversation_missing(&self) -> bool {
        matches!(self, DifyError::Api { status: 404, .. })
    }

    /// A connection hyper could not open (the direct path): a timeout is the connect
    /// timeout, as reqwest reports it.
    pub(super) fn from_connect(err: &std::io::Error, url: &str, timeout: Duration) -> Self {
        if err.kind() == std::io::ErrorKind::TimedOut {
            return DifyError::Timeout(timeout);
        }
        DifyError::Connect { url: url.to_string(), reason: error_chain(err) }
    }

    pub(super) fn from_reqwest(err: reqwest::Error, url: &str, timeout: Duration) -> Self {
        if err.is_timeout() {
            return DifyError::Timeout(timeout);
        }
        if err.is_connect() {
            return DifyError::Connect { url: url.to_string(), reason: error_chain(&err) };
        }
        if err.is_builder() {
            return DifyError::Request(error_chain(&err));
        }
        DifyError::Transport(error_chain(&err))
    }
}

/// reqwest's top-level message is terse ("error sending request"); the cause is in the chain.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) async fn check_status(response: Response) -> Result<Response, DifyError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut body = Vec::new();
    let mut response = response;
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    Err(error_from_body(status, &body))
}

fn error_from_body(status: StatusCode, body: &[u8]) -> DifyError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let code = status.as_u16();
    match parsed {
        Some(ErrorBody { code: error_code, message }) if error_code.is_some() || message.is_some() => {
            let message = mask_keys_in(message.as_deref().unwrap_or("(no message)"));
            if code == 401 {
                DifyError::Unauthorized { status: code, message }
            } else {
                DifyError::Api { status: code, code: error_code.unwrap_or_else(|| "unknown".into()), message }
            }
        }
        _ => {
            let head: String = String::from_utf8_lossy(&body[..body.len().min(800)]).chars().take(200).collect();
            tracing::debug!(status = code, body = ?head, "Dify answered an error that is not Dify's JSON");
            let body = ForeignBody::of(body);
            if code == 401 {
                DifyError::Unauthorized { status: code, message: foreign_answer(code, &body) }
            } else {
                DifyError::Http { status: code, body }
            }
        }
    }
}

pub(super) async fn read_body(response: Response, timeout: Duration) -> Result<Bytes, DifyError> {
    match tokio::time::timeout(timeout, response.bytes()).await {
        Err(_) => Err(DifyError::Timeout(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(DifyError::Transport(error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_pages_become_a_short_message_never_markup() {
        let nginx = b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n";
        let error = error_from_body(StatusCode::GATEWAY_TIMEOUT, nginx);
        assert_eq!(
            error.to_string(),
            "Dify answered 504 Gateway Time-out (an HTML page from a proxy in front of Dify)"
        );
        let untitled = error_from_body(
            StatusCode::from_u16(524).expect("status"),
            b"<html><body>A timeout occurred</body></html>",
        );
        assert_eq!(untitled.to_string(), "Dify answered HTTP 524 (an HTML page from a proxy in front of Dify)");
        let text =
            error_from_body(StatusCode::BAD_GATEWAY, b"upstream connect error or disconnect/reset before headers");
        assert_eq!(text.to_string(), "Dify answered HTTP 502 Bad Gateway with a plain-text body, not Dify's JSON");
        let empty = error_from_body(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(empty.to_string(), "Dify answered HTTP 503 Service Unavailable with an empty body, not Dify's JSON");
        let json = error_from_body(StatusCode::BAD_REQUEST, br#"{"code":"invalid_param","message":"bad"}"#);
        assert!(matches!(json, DifyError::Api { status: 400, .. }));
    }
}
