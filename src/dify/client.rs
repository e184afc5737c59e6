//! The one HTTP client to Dify. `serve` and `doctor` both go through it, so a doctor check
//! sees the same timeouts, TLS settings, proxies and error mapping that serving does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use super::AppMode;
use super::sse::{SseEvent, SseParser};
use super::types::{AppInfo, AppParameters, ErrorBody, GenerateRequest, UploadedFile};
use crate::config::Config;
use crate::secret::{Secret, mask_keys_in};

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
    /// Every value [`DifyError::kind`] can take (metrics render them all).
    pub const KINDS: [&'static str; 11] = [
        "auth",
        "rate_limit",
        "server",
        "api",
        "http",
        "connect",
        "timeout",
        "idle_timeout",
        "transport",
        "protocol",
        "request",
    ];

    /// A short, fixed label (metrics, JSON output).
    pub fn kind(&self) -> &'static str {
        match self {
            DifyError::Unauthorized { .. } => "auth",
            DifyError::Api { status: 429, .. } => "rate_limit",
            DifyError::Api { status, .. } if *status >= 500 => "server",
            DifyError::Api { .. } => "api",
            DifyError::Http { .. } => "http",
            DifyError::Connect { .. } => "connect",
            DifyError::Timeout(_) => "timeout",
            DifyError::Idle(_) => "idle_timeout",
            DifyError::Transport(_) => "transport",
            DifyError::Protocol(_) => "protocol",
            DifyError::Request(_) => "request",
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

    fn from_reqwest(err: reqwest::Error, url: &str, timeout: Duration) -> Self {
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

/// Failed calls by [`DifyError::kind`], for `/metrics`.
#[derive(Default)]
pub struct ErrorCounts([AtomicU64; DifyError::KINDS.len()]);

impl ErrorCounts {
    fn record(&self, err: &DifyError) {
        if let Some(i) = DifyError::KINDS.iter().position(|k| *k == err.kind()) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        DifyError::KINDS.iter().zip(&self.0).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect()
    }
}

/// Connection attempts a generation gets when Dify cannot be reached at all (nothing was
/// sent, so trying again cannot run anything twice).
const CONNECT_ATTEMPTS: u32 = 3;

/// What the base URL answered ([`DifyClient::probe_base`]).
#[derive(Debug, Clone)]
pub struct BaseAnswer {
    pub status: u16,
    /// The server's certificate (DER) when the base is https://.
    pub peer_certificate: Option<Vec<u8>>,
    pub tls_version: Option<&'static str>,
}

fn tls_version_name(version: reqwest::tls::Version) -> &'static str {
    use reqwest::tls::Version;
    match version {
        v if v == Version::TLS_1_3 => "TLS 1.3",
        v if v == Version::TLS_1_2 => "TLS 1.2",
        v if v == Version::TLS_1_1 => "TLS 1.1",
        v if v == Version::TLS_1_0 => "TLS 1.0",
        _ => "TLS",
    }
}

#[derive(Clone)]
pub struct DifyClient {
    http: reqwest::Client,
    errors: Arc<ErrorCounts>,
    base: String,
    /// The generation endpoints, parsed once: reqwest parses a URL string on every request.
    endpoints: Arc<Vec<(&'static str, reqwest::Url)>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
}

impl DifyClient {
    pub fn new(config: &Config) -> Result<Self, DifyError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("opendify/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            // Keeps the server's certificate on responses, for `doctor ping-dify`.
            .tls_info(true)
            .build()
            .map_err(|e| DifyError::Request(error_chain(&e)))?;
        let endpoints = [AppMode::Chat, AppMode::Completion, AppMode::Workflow]
            .iter()
            .map(|mode| mode.generate_path())
            .filter_map(|path| Some((path, reqwest::Url::parse(&format!("{}{path}", config.dify_api_base)).ok()?)))
            .collect();
        Ok(DifyClient {
            http,
            errors: Arc::default(),
            base: config.dify_api_base.clone(),
            endpoints: Arc::new(endpoints),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            idle_timeout: config.stream_idle_timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Failed generations and streams so far, by kind.
    pub fn error_counts(&self) -> Vec<(&'static str, u64)> {
        self.errors.snapshot()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth(key: &Secret) -> Result<HeaderValue, DifyError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
            DifyError::Request(format!("app key {} contains characters not allowed in a header", key.masked()))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Starts a generation in streaming mode and returns its events once Dify has answered
    /// 200. Errors before the stream starts (bad key, validation, unknown conversation, 429)
    /// come back as `Err` with Dify's status and message.
    pub async fn generate(
        &self,
        key: &Secret,
        mode: AppMode,
        request: &GenerateRequest,
    ) -> Result<EventStream, DifyError> {
        let started = self.start_generation(key, mode, request).await;
        if let Err(e) = &started {
            self.errors.record(e);
        }
        started
    }

    async fn start_generation(
        &self,
        key: &Secret,
        mode: AppMode,
        request: &GenerateRequest,
    ) -> Result<EventStream, DifyError> {
        let url = self.url(mode.generate_path());
        let parsed = self.endpoints.iter().find(|(path, _)| *path == mode.generate_path()).map(|(_, url)| url);
        let body = Bytes::from(serde_json::to_vec(request).map_err(|e| DifyError::Request(e.to_string()))?);
        let auth = Self::auth(key)?;
        let opened = Instant::now();
        // A connection that could not even be opened sent nothing: it is retried, briefly.
        let response = async {
            let mut attempt = 1;
            loop {
                let post = match parsed {
                    Some(parsed) => self.http.post(parsed.clone()),
                    None => self.http.post(&url),
                };
                let sent = post
                    .header(AUTHORIZATION, auth.clone())
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Err(e) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                        let backoff = Duration::from_millis(100 * 3u64.pow(attempt - 1) + fastrand::u64(0..50));
                        tracing::warn!(
                            attempt,
                            "🔍 cannot connect to Dify ({}); retrying in {} ms",
                            error_chain(&e),
                            backoff.as_millis()
                        );
                        tokio::time::sleep(backoff).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        };
        // Only the wait for response headers is bounded here; the body is bounded per event
        // by the idle timeout, because a healthy stream may last many minutes.
        let response = match tokio::time::timeout(self.request_timeout, response).await {
            Err(_) => return Err(DifyError::Timeout(self.request_timeout)),
            Ok(result) => result.map_err(|e| DifyError::from_reqwest(e, &url, self.connect_timeout))?,
        };
        let response = check_status(response).await?;
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if is_json {
            // A server that ignored `response_mode: streaming` sent one blocking answer.
            let bytes = read_body(response, self.request_timeout).await?;
            return Ok(EventStream::from_blocking(&bytes, self.idle_timeout, opened, self.errors.clone()));
        }
        Ok(EventStream::new(response, self.idle_timeout, opened, self.errors.clone()))
    }

    pub async fn info(&self, key: &Secret) -> Result<AppInfo, DifyError> {
        self.get_json(key, "/info").await
    }

    pub async fn parameters(&self, key: &Secret) -> Result<AppParameters, DifyError> {
        self.get_json(key, "/parameters").await
    }

    /// GETs the base URL itself, without a key, for `doctor ping-dify`: any HTTP answer means
    /// Dify is reachable (Dify answers 404 there). Carries the server's TLS certificate.
    pub async fn probe_base(&self) -> Result<BaseAnswer, DifyError> {
        let response = self
            .http
            .get(&self.base)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &self.base, self.request_timeout))?;
        let tls = response.extensions().get::<reqwest::tls::TlsInfo>();
        Ok(BaseAnswer {
            status: response.status().as_u16(),
            peer_certificate: tls.and_then(|t| t.peer_certificate()).map(<[u8]>::to_vec),
            tls_version: tls.and_then(|t| t.version()).map(tls_version_name),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &Secret, path: &str) -> Result<T, DifyError> {
        let url = self.url(path);
        let request = self.http.get(&url).header(AUTHORIZATION, Self::auth(key)?).timeout(self.request_timeout);
        let response = request.send().await.map_err(|e| DifyError::from_reqwest(e, &url, self.request_timeout))?;
        let response = check_status(response).await?;
        let bytes = read_body(response, self.request_timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| DifyError::Protocol(format!("{path}: {e}")))
    }

    /// Asks Dify to stop a running generation (the client went away).
    pub async fn stop(&self, key: &Secret, mode: AppMode, task_id: &str, user: &str) -> Result<(), DifyError> {
        #[derive(Serialize)]
        struct StopBody<'a> {
            user: &'a str,
        }
        let url = self.url(&mode.stop_path(task_id));
        let response = self
            .http
            .post(&url)
            .header(AUTHORIZATION, Self::auth(key)?)
            .json(&StopBody { user })
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &url, Duration::from_secs(10)))?;
        check_status(response).await.map(drop)
    }

    /// Uploads a file for use as `local_file` in a later request by the same user.
    pub async fn upload(
        &self,
        key: &Secret,
        user: &str,
        filename: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> Result<UploadedFile, DifyError> {
        let url = self.url("/files/upload");
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_string())
            .mime_str(mime)
            .map_err(|e| DifyError::Request(format!("bad MIME type {mime:?}: {e}")))?;
        let form = reqwest::multipart::Form::new().part("file", part).text("user", user.to_string());
        let response = self
            .http
            .post(&url)
            .header(AUTHORIZATION, Self::auth(key)?)
            .multipart(form)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &url, self.request_timeout))?;
        let response = check_status(response).await?;
        let bytes = read_body(response, self.request_timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| DifyError::Protocol(format!("/files/upload: {e}")))
    }

    /// Whether a conversation still exists for this user (`GET /messages` answers 404 when not).
    pub async fn conversation_exists(
        &self,
        key: &Secret,
        conversation_id: &str,
        user: &str,
    ) -> Result<bool, DifyError> {
        let mut parsed = reqwest::Url::parse(&self.url("/messages")).map_err(|e| DifyError::Request(e.to_string()))?;
        parsed
            .query_pairs_mut()
            .append_pair("conversation_id", conversation_id)
            .append_pair("user", user)
            .append_pair("limit", "1");
        let url = parsed.to_string();
        let response = self
            .http
            .get(parsed)
            .header(AUTHORIZATION, Self::auth(key)?)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &url, self.request_timeout))?;
        match check_status(response).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conversation_missing() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

const MAX_ERROR_BODY: usize = 64 * 1024;

async fn check_status(response: Response) -> Result<Response, DifyError> {
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

async fn read_body(response: Response, timeout: Duration) -> Result<Bytes, DifyError> {
    match tokio::time::timeout(timeout, response.bytes()).await {
        Err(_) => Err(DifyError::Timeout(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(DifyError::Transport(error_chain(&e))),
    }
}

/// The events of one streaming generation, read as they arrive. Each wait for the next bytes
/// is bounded by the idle timeout; a stream that ends without Dify's closing event is the
/// caller's to judge (it knows which event closes its mode).
pub struct EventStream {
    source: Source,
    parser: SseParser,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
    errors: Arc<ErrorCounts>,
    /// When the request was sent, and when the latest event arrived.
    opened: Instant,
    last_event: Instant,
}

enum Source {
    Live(Response),
    Replay(std::vec::IntoIter<SseEvent>),
}

impl EventStream {
    fn new(response: Response, idle: Duration, opened: Instant, errors: Arc<ErrorCounts>) -> Self {
        EventStream {
            source: Source::Live(response),
            parser: SseParser::default(),
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            ended: false,
            errors,
            opened,
            last_event: Instant::now(),
        }
    }

    /// A blocking JSON answer, replayed as the events a stream would have carried.
    fn from_blocking(body: &[u8], idle: Duration, opened: Instant, errors: Arc<ErrorCounts>) -> Self {
        let events = blocking_to_events(body);
        EventStream {
            source: Source::Replay(events.into_iter()),
            parser: SseParser::default(),
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            ended: true,
            errors,
            opened,
            last_event: Instant::now(),
        }
    }

    /// Time spent waiting on Dify: from sending the request to the latest event.
    pub fn upstream_time(&self) -> Duration {
        self.last_event.saturating_duration_since(self.opened)
    }

    /// The next event; `None` once the body has ended.
    pub async fn next(&mut self) -> Option<Result<SseEvent, DifyError>> {
        let next = self.next_event().await;
        match &next {
            Some(Ok(_)) => self.last_event = Instant::now(),
            Some(Err(e)) => self.errors.record(e),
            None => {}
        }
        next
    }

    async fn next_event(&mut self) -> Option<Result<SseEvent, DifyError>> {
        let response = match &mut self.source {
            Source::Replay(events) => return events.next().map(Ok),
            Source::Live(response) => response,
        };
        loop {
            match self.parser.next_event() {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(e) => return Some(Err(DifyError::Protocol(e.to_string()))),
            }
            if self.ended {
                return match self.parser.finish() {
                    Ok(event) => event.map(Ok),
                    Err(e) => Some(Err(DifyError::Protocol(e.to_string()))),
                };
            }
            self.deadline.as_mut().reset(Instant::now() + self.idle);
            tokio::select! {
                biased;
                chunk = response.chunk() => match chunk {
                    Ok(Some(bytes)) => self.parser.feed(&bytes),
                    Ok(None) => self.ended = true,
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(DifyError::Transport(error_chain(&e))));
                    }
                },
                () = &mut self.deadline => {
                    self.ended = true;
                    return Some(Err(DifyError::Idle(self.idle)));
                }
            }
        }
    }
}

fn blocking_to_events(body: &[u8]) -> Vec<SseEvent> {
    let Ok(serde_json::Value::Object(mut answer)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return vec![SseEvent { event: None, data: String::from_utf8_lossy(body).into_owned() }];
    };
    let frame = |value: serde_json::Value| SseEvent { event: None, data: value.to_string() };
    if answer.contains_key("workflow_run_id") && answer.contains_key("data") && !answer.contains_key("answer") {
        answer.insert("event".into(), "workflow_finished".into());
        return vec![frame(answer.into())];
    }
    let mut end = serde_json::Map::new();
    end.insert("event".into(), "message_end".into());
    for key in ["conversation_id", "message_id", "id", "task_id", "metadata"] {
        if let Some(v) = answer.get(key) {
            end.insert(key.into(), v.clone());
        }
    }
    answer.insert("event".into(), "message".into());
    vec![frame(answer.into()), frame(end.into())]
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
