//! The one HTTP client to Dify. `serve` and `doctor` both go through it, so a doctor check
//! sees the same timeouts, TLS settings, proxies and error mapping that serving does.
//!
//! Generations to a plain-HTTP Dify reached without a proxy (the usual sidecar setup) go
//! through a small HTTP/1.1 client read in the request's own task ([`Direct`], see its
//! module for why); reqwest carries everything else. Both paths share the body, the headers,
//! the connection retries and the error mapping below.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::AppMode;
use super::audio::{AudioStream, not_audio};
use super::direct::{Answer, Direct, Sent, USER_AGENT_VALUE};
use super::error::{DifyError, check_status, error_chain, read_body};
use super::stream::EventStream;
use super::types::{AppInfo, AppParameters, GenerateRequest, TextToAudioRequest, Transcript, UploadedFile};
use crate::secret::Secret;

/// What the client needs to know: where Dify is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL without a trailing slash (and without credentials), e.g. `https://api.dify.ai/v1`.
    pub base: String,
    pub connect_timeout: Duration,
    /// A whole non-streaming call, or the wait for a generation's response head.
    pub request_timeout: Duration,
    /// The longest silence between a stream's events.
    pub idle_timeout: Duration,
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
    direct: Option<Arc<Direct>>,
    base: String,
    /// The generation endpoints, parsed once: reqwest parses a URL string on every request.
    endpoints: Arc<Vec<(&'static str, reqwest::Url)>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
}

impl DifyClient {
    pub fn new(options: &ClientOptions) -> Result<Self, DifyError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT_VALUE)
            .connect_timeout(options.connect_timeout)
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
            .filter_map(|path| Some((path, reqwest::Url::parse(&format!("{}{path}", options.base)).ok()?)))
            .collect::<Vec<_>>();
        Ok(DifyClient {
            http,
            direct: Direct::for_base(&options.base, options.connect_timeout, &endpoints).map(Arc::new),
            base: options.base.clone(),
            endpoints: Arc::new(endpoints),
            connect_timeout: options.connect_timeout,
            request_timeout: options.request_timeout,
            idle_timeout: options.idle_timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth(key: &Secret) -> Result<HeaderValue, DifyError> {
        let mut bearer = String::with_capacity(7 + key.expose().len());
        bearer.push_str("Bearer ");
        bearer.push_str(key.expose());
        let mut value = HeaderValue::try_from(bearer).map_err(|_| {
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
        // Written out only for an error message or the reqwest path.
        let url = || self.url(mode.generate_path());
        let parsed = self.endpoints.iter().find(|(path, _)| *path == mode.generate_path()).map(|(_, url)| url);
        let body = Bytes::from(serde_json::to_vec(request).map_err(|e| DifyError::Request(e.to_string()))?);
        let auth = Self::auth(key)?;
        let opened = Instant::now();
        // A connection that could not even be opened sent nothing: it is retried, briefly.
        let response = async {
            let mut attempt = 1;
            loop {
                let direct = match &self.direct {
                    Some(direct) => direct.post(mode.generate_path(), &auth, &body).await,
                    None => None,
                };
                let sent = match direct {
                    Some(Ok(answer)) => Ok(answer),
                    Some(Err(Sent::Other(e))) => Err(e),
                    Some(Err(Sent::Connect(e))) if attempt < CONNECT_ATTEMPTS => {
                        self.connect_backoff(attempt, &e).await;
                        attempt += 1;
                        continue;
                    }
                    Some(Err(Sent::Connect(e))) => Err(DifyError::from_connect(&e, &url(), self.connect_timeout)),
                    None => {
                        let post = match parsed {
                            Some(parsed) => self.http.post(parsed.clone()),
                            None => self.http.post(url()),
                        };
                        match post
                            .header(AUTHORIZATION, auth.clone())
                            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                            .body(body.clone())
                            .send()
                            .await
                        {
                            Err(e) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                                self.connect_backoff(attempt, &e).await;
                                attempt += 1;
                                continue;
                            }
                            sent => sent
                                .map(Answer::Whole)
                                .map_err(|e| DifyError::from_reqwest(e, &url(), self.connect_timeout)),
                        }
                    }
                };
                return sent;
            }
        };
        // Only the wait for response headers is bounded here; the body is bounded per event
        // by the idle timeout, because a healthy stream may last many minutes.
        let response = match tokio::time::timeout(self.request_timeout, response).await {
            Err(_) => return Err(DifyError::Timeout(self.request_timeout)),
            Ok(Ok(Answer::Events(body))) => return Ok(EventStream::direct(body, self.idle_timeout, opened)),
            Ok(Ok(Answer::Whole(response))) => response,
            Ok(Err(e)) => return Err(e),
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
            return Ok(EventStream::from_blocking(&bytes, self.idle_timeout, opened));
        }
        Ok(EventStream::new(response, self.idle_timeout, opened))
    }

    /// The pause before another connection attempt (nothing was sent by the failed one).
    async fn connect_backoff(&self, attempt: u32, error: &(dyn std::error::Error + Send + Sync)) {
        let backoff = Duration::from_millis(100 * 3u64.pow(attempt - 1) + fastrand::u64(0..50));
        tracing::warn!(
            attempt,
            "🔍 cannot connect to Dify ({}); retrying in {} ms",
            error_chain(error),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
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
        self.post_file(key, "/files/upload", user, filename, mime, reqwest::multipart::Part::bytes(bytes)).await
    }

    /// Posts one file as the multipart `file` field, with the `user` field beside it, to
    /// `path`, and reads Dify's JSON answer.
    async fn post_file<T: DeserializeOwned>(
        &self,
        key: &Secret,
        path: &str,
        user: &str,
        filename: &str,
        mime: &str,
        part: reqwest::multipart::Part,
    ) -> Result<T, DifyError> {
        let url = self.url(path);
        let part = part
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
        serde_json::from_slice(&bytes).map_err(|e| DifyError::Protocol(format!("{path}: {e}")))
    }

    /// Deletes a conversation of this user (Dify answers 204, older releases 200).
    pub async fn delete_conversation(&self, key: &Secret, conversation_id: &str, user: &str) -> Result<(), DifyError> {
        let url = self.url(&format!("/conversations/{conversation_id}"));
        let response = self
            .http
            .delete(&url)
            .header(AUTHORIZATION, Self::auth(key)?)
            .json(&serde_json::json!({ "user": user }))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &url, self.request_timeout))?;
        check_status(response).await.map(drop)
    }

    /// The questions Dify suggests after a message (`GET /messages/{id}/suggested`), when the
    /// app has "suggested questions after answer" on.
    pub async fn suggested(&self, key: &Secret, message_id: &str, user: &str) -> Result<Vec<String>, DifyError> {
        #[derive(serde::Deserialize)]
        struct Suggested {
            #[serde(default)]
            data: Vec<String>,
        }
        let path = format!("/messages/{message_id}/suggested");
        let mut parsed = reqwest::Url::parse(&self.url(&path)).map_err(|e| DifyError::Request(e.to_string()))?;
        parsed.query_pairs_mut().append_pair("user", user);
        let url = parsed.to_string();
        let response = self
            .http
            .get(parsed)
            .header(AUTHORIZATION, Self::auth(key)?)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| DifyError::from_reqwest(e, &url, self.request_timeout))?;
        let response = check_status(response).await?;
        let bytes = read_body(response, self.request_timeout).await?;
        let suggested: Suggested =
            serde_json::from_slice(&bytes).map_err(|e| DifyError::Protocol(format!("{path}: {e}")))?;
        Ok(suggested.data)
    }

    /// Transcribes an audio file (`POST /audio-to-text`, multipart `file` and `user`). Dify
    /// checks the part's MIME type (current releases: `audio/mp3`, `audio/m4a`, `audio/wav`,
    /// `audio/amr`, `audio/mpga`), so `mime` must be one it knows.
    pub async fn audio_to_text(
        &self,
        key: &Secret,
        user: &str,
        filename: &str,
        mime: &str,
        audio: Bytes,
    ) -> Result<Transcript, DifyError> {
        let length = audio.len() as u64;
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(audio), length);
        self.post_file(key, "/audio-to-text", user, filename, mime, part).await
    }

    /// Reads a text aloud (`POST /text-to-audio`): the audio as Dify streams it, once its
    /// response head has come (within REQUEST_TIMEOUT). An answer that is not audio (Dify
    /// answers `null` when its text-to-speech produced nothing) is an error.
    pub async fn text_to_audio(&self, key: &Secret, request: &TextToAudioRequest) -> Result<AudioStream, DifyError> {
        let url = self.url("/text-to-audio");
        let sent = self.http.post(&url).header(AUTHORIZATION, Self::auth(key)?).json(request).send();
        let response = match tokio::time::timeout(self.request_timeout, sent).await {
            Err(_) => return Err(DifyError::Timeout(self.request_timeout)),
            Ok(result) => result.map_err(|e| DifyError::from_reqwest(e, &url, self.connect_timeout))?,
        };
        let response = check_status(response).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| "audio/mpeg".to_string());
        let lower = content_type.to_ascii_lowercase();
        if lower.starts_with("application/json") || lower.starts_with("text/") {
            let bytes = read_body(response, self.request_timeout).await?;
            return Err(not_audio(&content_type, &bytes));
        }
        Ok(AudioStream::new(response, content_type, self.idle_timeout))
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

#[cfg(test)]
mod tests {
    use super::*;
    use mock_dify::{MockApp, MockDify};

    async fn answer_events(client: &DifyClient) -> Vec<String> {
        let request = GenerateRequest {
            query: Some("hi".into()),
            response_mode: "streaming",
            user: "u1".into(),
            ..GenerateRequest::default()
        };
        let key = Secret::new("app-chat".to_string());
        let mut events = client.generate(&key, AppMode::Chat, &request).await.expect("generation started");
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            let event: serde_json::Value = serde_json::from_str(&event.expect("event").data).expect("json");
            seen.push(format!("{}:{}", event["event"].as_str().unwrap_or(""), event["answer"].as_str().unwrap_or("")));
        }
        seen
    }

    /// Two clients of a plain-HTTP base: one on the direct path, one through reqwest.
    fn both_paths(base: String) -> (DifyClient, DifyClient) {
        let options = ClientOptions {
            base,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        };
        let direct = DifyClient::new(&options).expect("client");
        assert!(direct.direct.is_some() || std::env::var("HTTP_PROXY").is_ok(), "plain HTTP goes direct");
        let mut via_reqwest = direct.clone();
        via_reqwest.direct = None;
        (direct, via_reqwest)
    }

    /// The direct path (plain HTTP, no proxy) and reqwest's (https or a proxy) send the same
    /// request and read the same events.
    #[tokio::test]
    async fn both_paths_to_dify_read_the_same_answer() {
        let mock = MockDify::start(vec![MockApp::new("app-chat", "Chat", "chat")]).await.expect("mock");
        let (direct, via_reqwest) = both_paths(mock.base_url());
        let (one, two) = (answer_events(&direct).await, answer_events(&via_reqwest).await);
        assert_eq!(one, two);
        assert_eq!(one.concat().matches("message:").count() + 1, one.len(), "{one:?}");
        assert_eq!(one.last().map(String::as_str), Some("message_end:"), "{one:?}");
        let sent = mock.generations();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].body, sent[1].body, "the same request body either way");
    }

    /// A server that ignores `response_mode: streaming` and answers one JSON body: its answer
    /// is replayed as the events a stream would have carried, on both paths.
    #[tokio::test]
    async fn a_blocking_answer_to_a_streaming_request_is_replayed_as_events() {
        let body = r#"{"event":"message","answer":"whole","conversation_id":"c1","message_id":"m1","metadata":{}}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (port, _) = crate::dify::one_shot::answering(answer).await;
        let (direct, via_reqwest) = both_paths(format!("http://127.0.0.1:{port}/v1"));
        for client in [&direct, &via_reqwest] {
            assert_eq!(answer_events(client).await, ["message:whole", "message_end:"]);
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_naming_the_url_after_the_retries() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let options = ClientOptions {
            base: format!("http://127.0.0.1:{port}/v1"),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        };
        let client = DifyClient::new(&options).expect("client");
        let key = Secret::new("app-chat".to_string());
        let request = GenerateRequest { query: Some("hi".into()), response_mode: "streaming", ..Default::default() };
        match client.generate(&key, AppMode::Chat, &request).await {
            Err(DifyError::Connect { url, .. }) => assert_eq!(url, format!("http://127.0.0.1:{port}/v1/chat-messages")),
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("expected a connect error, got a stream"),
        }
    }
}
