//! A mock Dify service API for tests, benchmarks and trying opendify without a Dify.
//!
//! It behaves like the real one where opendify depends on it (see `docs/dify-api.md` in the repository):
//! per-mode event sequences, `event: ping` keep-alives, error frames after the stream began,
//! HTTP errors before it, conversation rules (UUIDs, per-user scoping, 404 "Conversation Not
//! Exists."), agent apps refusing blocking mode, uploads scoped to a user, stop endpoints.
//!
//! A test steers one request by putting a directive in the user's message, e.g.
//! `[[mock:error-mid]]` (see [`Directive`]), and afterwards asks the mock what it received.

mod model;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One app the mock serves, selected by its key like in Dify.
#[derive(Debug, Clone)]
pub struct MockApp {
    pub key: String,
    pub name: String,
    pub mode: String,
    /// The answer; `None` answers `Echo: <query>`.
    pub answer: Option<String>,
    /// `GET /parameters` body.
    pub parameters: Value,
    /// Old Dify releases have no `mode` in `/info`.
    pub info_has_mode: bool,
    /// A knowledge-base app: every answer cites passages (as `[[mock:rag]]` does).
    pub knowledge: bool,
}

impl MockApp {
    pub fn new(key: &str, name: &str, mode: &str) -> Self {
        MockApp {
            key: key.into(),
            name: name.into(),
            mode: mode.into(),
            answer: None,
            parameters: default_parameters(mode),
            info_has_mode: true,
            knowledge: false,
        }
    }

    /// Answers cite passages of two handbook documents, like a knowledge-base app.
    pub fn knowledge(mut self) -> Self {
        self.knowledge = true;
        self
    }

    /// "Suggested questions after answer" on: `GET /messages/{id}/suggested` answers.
    pub fn suggestions(mut self) -> Self {
        self.parameters["suggested_questions_after_answer"] = json!({"enabled": true});
        self
    }

    pub fn answer(mut self, answer: &str) -> Self {
        self.answer = Some(answer.into());
        self
    }

    pub fn parameters(mut self, parameters: Value) -> Self {
        self.parameters = parameters;
        self
    }

    /// Switches the app's Features > Speech to Text (`speech_to_text.enabled` in
    /// `/parameters`; `/audio-to-text` refuses when it is off).
    pub fn speech_to_text(mut self, enabled: bool) -> Self {
        if let Some(parameters) = self.parameters.as_object_mut() {
            parameters.insert("speech_to_text".into(), json!({"enabled": enabled}));
        }
        self
    }

    /// Switches the app's Features > Text to Speech (`text_to_speech.enabled` in
    /// `/parameters`; `/text-to-audio` refuses when it is off).
    pub fn text_to_speech(mut self, enabled: bool) -> Self {
        if let Some(parameters) = self.parameters.as_object_mut() {
            parameters.insert(
                "text_to_speech".into(),
                json!({"enabled": enabled, "voice": "", "language": "", "autoPlay": "disabled"}),
            );
        }
        self
    }
}

/// What `/parameters` says by default: chat-family apps have both speech features on (so
/// the audio endpoints work out of the box); completion and workflow apps have them off, as
/// a new Dify app does.
fn default_parameters(mode: &str) -> Value {
    let form = if mode == "workflow" {
        json!([{"paragraph": {"label": "Question", "variable": "question", "required": true, "default": ""}}])
    } else {
        json!([])
    };
    let speech = !matches!(mode, "completion" | "workflow");
    json!({
        "opening_statement": "",
        "user_input_form": form,
        "file_upload": {"image": {"enabled": true, "number_limits": 3, "detail": "high", "transfer_methods": ["remote_url", "local_file"]}},
        "suggested_questions_after_answer": {"enabled": false},
        "speech_to_text": {"enabled": speech},
        "text_to_speech": {"enabled": speech, "voice": "", "language": "", "autoPlay": "disabled"},
        "system_parameters": {"file_size_limit": 15, "image_file_size_limit": 10}
    })
}

/// Pacing and size of generated answers (benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct MockSettings {
    /// Characters per `message` event.
    pub chunk_chars: usize,
    /// When set, answers are exactly this many events (of `chunk_chars` characters).
    pub events: Option<usize>,
    /// Pause between events.
    pub delay: Duration,
    /// `DELETE /conversations/{id}` fails with a 500 (a Dify having a bad moment).
    pub fail_deletes: bool,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings { chunk_chars: 4, events: None, delay: Duration::ZERO, fail_deletes: false }
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub key: String,
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub user: String,
    pub app_key: String,
    /// The queries received, in order: one per turn.
    pub queries: Vec<String>,
    pub message_ids: Vec<String>,
    /// When its latest turn arrived.
    pub last_turn: std::time::Instant,
    /// Answers being generated in it right now (Dify answers one turn of a conversation
    /// at a time; a client sending the next turn early is a bug this makes visible).
    pub answering: usize,
    /// How often a turn started while another turn of the conversation was still answering.
    pub overlaps: usize,
}

/// One answer being generated in a conversation, until its closing event is sent.
struct Answering {
    state: Arc<MockState>,
    conversation_id: String,
}

impl Answering {
    fn start(state: &Arc<MockState>, conversation_id: &str) -> Option<Answering> {
        let mut shared = state.lock();
        let c = shared.conversations.get_mut(conversation_id)?;
        if c.answering > 0 {
            c.overlaps += 1;
        }
        c.answering += 1;
        Some(Answering { state: state.clone(), conversation_id: conversation_id.to_string() })
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(c) = self.state.lock().conversations.get_mut(&self.conversation_id) {
            c.answering = c.answering.saturating_sub(1);
        }
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Recorded>,
    stops: Vec<(String, String)>,
    conversations: HashMap<String, Conversation>,
    uploads: Vec<(String, String, usize)>,
}

struct MockState {
    apps: Vec<MockApp>,
    settings: MockSettings,
    shared: Mutex<Shared>,
    /// Streaming answers still being played (tests check none is left behind).
    active: std::sync::atomic::AtomicUsize,
    /// TCP connections accepted so far (tests check a gateway reuses its connections).
    connections: std::sync::atomic::AtomicUsize,
}

/// Counts one playing stream for as long as it lives.
struct Playing(Arc<MockState>);

impl Playing {
    fn new(state: Arc<MockState>) -> Self {
        state.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Playing(state)
    }
}

impl Drop for Playing {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MockState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running mock; stops when dropped.
pub struct MockDify {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockDify {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockDify {
    pub async fn start(apps: Vec<MockApp>) -> std::io::Result<MockDify> {
        Self::start_with(apps, MockSettings::default(), "127.0.0.1:0").await
    }

    pub async fn start_with(apps: Vec<MockApp>, settings: MockSettings, bind: &str) -> std::io::Result<MockDify> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            apps,
            settings,
            shared: Mutex::new(Shared::default()),
            active: std::sync::atomic::AtomicUsize::new(0),
            connections: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = router(state.clone());
        let counted = state.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            counted.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockDify { addr, state, server })
    }

    /// `http://127.0.0.1:PORT/v1`, for DIFY_API_BASE.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().requests.clone()
    }

    /// Generation requests only (chat, completion, workflow).
    pub fn generations(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && !r.path.contains("/stop") && !r.path.contains("/files"))
            .filter(|r| !r.path.ends_with("/audio-to-text") && !r.path.ends_with("/text-to-audio"))
            .collect()
    }

    /// `/audio-to-text` and `/text-to-audio` requests: for a transcription the body records
    /// `user`, `filename`, `content_type` (the audio part's) and `bytes`; for speech it is
    /// the JSON received.
    pub fn audio_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/audio-to-text") || r.path.ends_with("/text-to-audio"))
            .collect()
    }

    /// Streaming answers still being sent: 0 once every client connection is gone.
    pub fn active_streams(&self) -> usize {
        self.state.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `(task_id, user)` of every stop call received.
    pub fn stops(&self) -> Vec<(String, String)> {
        self.state.lock().stops.clone()
    }

    pub fn conversations(&self) -> HashMap<String, Conversation> {
        self.state.lock().conversations.clone()
    }

    /// `(user, filename, bytes)` of every upload.
    pub fn uploads(&self) -> Vec<(String, String, usize)> {
        self.state.lock().uploads.clone()
    }

    /// Forgets every recorded request and conversation (long load tests: the records would
    /// otherwise grow with every request).
    pub fn forget_everything(&self) {
        let mut shared = self.state.lock();
        shared.requests = Vec::new();
        shared.stops = Vec::new();
        shared.conversations = HashMap::new();
        shared.uploads = Vec::new();
    }

    /// Forgets the recorded requests, stops and uploads, and the conversations without a
    /// turn for `idle` (the standalone mock, whose records nobody reads: a long benchmark's
    /// memory, and the pauses to grow it, stay flat while conversations go on).
    pub fn forget_idle(&self, idle: Duration) {
        let garbage = {
            let mut shared = self.state.lock();
            let idle: Vec<_> = shared.conversations.extract_if(|_, c| c.last_turn.elapsed() >= idle).collect();
            let uploads = std::mem::take(&mut shared.uploads);
            (std::mem::take(&mut shared.requests), std::mem::take(&mut shared.stops), uploads, idle)
        };
        // Freeing a few hundred thousand records takes milliseconds: not on the server's thread.
        std::thread::spawn(move || drop(garbage));
    }

    /// Forgets a conversation, like a user deleting it in Dify.
    pub fn delete_conversation(&self, id: &str) {
        self.state.lock().conversations.remove(id);
    }
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1", get(base))
        .route("/v1/", get(base))
        .route("/v1/info", get(info))
        .route("/v1/parameters", get(parameters))
        .route("/v1/chat-messages", post(generate))
        .route("/v1/completion-messages", post(generate))
        .route("/v1/workflows/run", post(generate))
        .route("/v1/chat-messages/{task}/stop", post(stop))
        .route("/v1/completion-messages/{task}/stop", post(stop))
        .route("/v1/workflows/tasks/{task}/stop", post(stop))
        .route("/v1/files/upload", post(upload))
        .route("/v1/audio-to-text", post(audio_to_text))
        .route("/v1/text-to-audio", post(text_to_audio))
        .route("/v1/messages", get(messages))
        .route("/v1/messages/{id}/suggested", get(suggested))
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{id}", axum::routing::delete(delete_conversation))
        .with_state(state)
}

fn dify_error(status: u16, code: &str, message: &str) -> Response {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status_code, axum::Json(json!({"code": code, "message": message, "status": status}))).into_response()
}

// A mock's error path: the response size does not matter here.
#[allow(clippy::result_large_err)]
fn authorise<'a>(state: &'a MockState, headers: &HeaderMap) -> Result<&'a MockApp, Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.is_empty() {
        return Err(dify_error(401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"));
    }
    state.apps.iter().find(|a| a.key == token).ok_or_else(|| dify_error(401, "unauthorized", "Access token is invalid"))
}

async fn base() -> Response {
    (StatusCode::NOT_FOUND, "<!doctype html><title>404 Not Found</title>").into_response()
}

async fn info(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut body = json!({"name": app.name, "description": "mock app", "tags": []});
    if app.info_has_mode {
        body["mode"] = json!(app.mode);
        body["author_name"] = json!("mock");
    }
    axum::Json(body).into_response()
}

async fn parameters(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    match authorise(&state, &headers) {
        Ok(app) => axum::Json(app.parameters.clone()).into_response(),
        Err(r) => r,
    }
}

async fn messages(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorise(&state, &headers) {
        return r;
    }
    let id = q.get("conversation_id").cloned().unwrap_or_default();
    let user = q.get("user").cloned().unwrap_or_default();
    let shared = state.lock();
    match shared.conversations.get(&id) {
        Some(c) if c.user == user => axum::Json(json!({"limit": 1, "has_more": false, "data": []})).into_response(),
        _ => dify_error(404, "not_found", "Conversation Not Exists."),
    }
}

/// Three questions about the message's query, for its own user, when the app suggests them.
async fn suggested(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let user = q.get("user").cloned().unwrap_or_default();
    let mut shared = state.lock();
    shared.requests.push(Recorded {
        method: "GET".into(),
        path: format!("messages/{id}/suggested"),
        key: app.key.clone(),
        body: json!({"user": user}),
    });
    if app.parameters["suggested_questions_after_answer"]["enabled"] != json!(true) {
        return dify_error(400, "bad_request", "Suggested Questions Is Disabled.");
    }
    let query = shared.conversations.values().find_map(|c| {
        let at = c.message_ids.iter().position(|m| *m == id)?;
        (c.user == user && c.app_key == app.key).then(|| c.queries[at].clone())
    });
    let Some(query) = query else { return dify_error(404, "not_found", "Message Not Exists.") };
    let topic: String = query.chars().take(40).collect();
    axum::Json(json!({"result": "success", "data": [
        format!("Tell me more about {topic}"), "Can you give an example?", "What should I do next?"
    ]}))
    .into_response()
}

/// The user's conversations with this app, newest first (`GET /conversations?user=`).
async fn list_conversations(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let Some(user) = q.get("user").filter(|u| !u.is_empty()) else {
        return dify_error(400, "invalid_param", "user is required");
    };
    let shared = state.lock();
    let mut mine: Vec<(&String, &Conversation)> =
        shared.conversations.iter().filter(|(_, c)| &c.user == user && c.app_key == app.key).collect();
    mine.sort_by_key(|(_, c)| std::cmp::Reverse(c.last_turn));
    let data: Vec<Value> = mine
        .iter()
        .map(|(id, c)| {
            let name: String = c.queries.first().map(|q| q.chars().take(40).collect()).unwrap_or_default();
            json!({"id": id, "name": name, "inputs": {}, "status": "normal", "introduction": "",
                   "created_at": now(), "updated_at": now(), "turns": c.queries.len()})
        })
        .collect();
    axum::Json(json!({"limit": 100, "has_more": false, "data": data})).into_response()
}

/// Deletes a conversation of the user the body names (204), like Dify.
async fn delete_conversation(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("user").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let mut shared = state.lock();
    shared.requests.push(Recorded {
        method: "DELETE".into(),
        path: format!("conversations/{id}"),
        key: app.key.clone(),
        body: json!({"user": user}),
    });
    if state.settings.fail_deletes {
        return dify_error(500, "internal_server_error", "Internal Server Error, please contact support.");
    }
    match shared.conversations.get(&id) {
        Some(c) if c.user == user && c.app_key == app.key => {
            shared.conversations.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => dify_error(404, "not_found", "Conversation Not Exists."),
    }
}

async fn stop(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorise(&state, &headers) {
        return r;
    }
    let user = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("user").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    if user.is_empty() {
        return dify_error(400, "invalid_param", "user is required");
    }
    let mut shared = state.lock();
    shared.requests.push(Recorded {
        method: "POST".into(),
        path: format!("stop/{task}"),
        key: String::new(),
        body: json!({"user": user}),
    });
    shared.stops.push((task, user));
    axum::Json(json!({"result": "success"})).into_response()
}

async fn upload(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorise(&state, &headers) {
        return r;
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("multipart/form-data") {
        return dify_error(415, "unsupported_media_type", "multipart/form-data required");
    }
    let text = String::from_utf8_lossy(&body);
    let filename = text.split("filename=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string();
    let user = text
        .split("name=\"user\"")
        .nth(1)
        .and_then(|s| s.split("\r\n\r\n").nth(1))
        .and_then(|s| s.split("\r\n").next())
        .unwrap_or("")
        .to_string();
    if filename.is_empty() {
        return dify_error(400, "no_file_uploaded", "Please upload your file.");
    }
    let id = uuid();
    state.lock().uploads.push((user, filename.clone(), body.len()));
    axum::Json(json!({"id": id, "name": filename, "size": body.len(), "extension": "png", "mime_type": "image/png"}))
        .into_response()
}

/// Whether a feature (`speech_to_text`, `text_to_speech`) is on in the app's parameters; as
/// in Dify, a feature the app does not configure is off.
fn feature_enabled(app: &MockApp, feature: &str) -> bool {
    app.parameters.get(feature).and_then(|f| f.get("enabled")).and_then(Value::as_bool).unwrap_or(false)
}

/// One part of a multipart form.
struct FormPart {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The parts of a `multipart/form-data` body (binary-safe); `None` when it is not one.
fn form_parts(content_type: &str, body: &[u8]) -> Option<Vec<FormPart>> {
    let boundary = content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary="))?.trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let separator = [b"\r\n".as_slice(), &delimiter].concat();
    let mut rest = &body[find(body, &delimiter)? + delimiter.len()..];
    let mut parts = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let after = &rest[head_end + 4..];
        let end = find(after, &separator)?;
        let (mut name, mut filename, mut content_type) = (String::new(), None, None);
        for line in head.split("\r\n") {
            let (key, value) = line.split_once(':')?;
            match key.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for attribute in value.split(';').map(str::trim) {
                        if let Some(v) = attribute.strip_prefix("name=") {
                            name = v.trim_matches('"').to_string();
                        } else if let Some(v) = attribute.strip_prefix("filename=") {
                            filename = Some(v.trim_matches('"').to_string());
                        }
                    }
                }
                "content-type" => content_type = Some(value.trim().to_string()),
                _ => {}
            }
        }
        parts.push(FormPart { name, filename, content_type, data: after[..end].to_vec() });
        rest = &after[end + separator.len()..];
    }
    Some(parts)
}

/// `POST /audio-to-text`, as current Dify releases check it: the user, the app's Speech to
/// Text switch, a file, its size, and the part's MIME type (only `audio/mp3`, `audio/m4a`,
/// `audio/x-m4a`, `audio/wav`, `audio/amr`, `audio/mpga`: not even `audio/mpeg`).
async fn audio_to_text(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let parts = if content_type.starts_with("multipart/form-data") {
        form_parts(content_type, &body).unwrap_or_default()
    } else {
        Vec::new()
    };
    let text_of = |name: &str| {
        parts.iter().find(|p| p.name == name).map(|p| String::from_utf8_lossy(&p.data).into_owned()).unwrap_or_default()
    };
    let user = text_of("user");
    let file = parts.iter().find(|p| p.name == "file");
    let audio_type = file.and_then(|f| f.content_type.clone()).unwrap_or_default();
    let filename = file.and_then(|f| f.filename.clone()).unwrap_or_default();
    let size = file.map_or(0, |f| f.data.len());
    state.lock().requests.push(Recorded {
        method: "POST".into(),
        path: "/v1/audio-to-text".into(),
        key: app.key.clone(),
        body: json!({"user": user, "filename": filename, "content_type": audio_type, "bytes": size}),
    });
    if user.is_empty() {
        return dify_error(400, "invalid_param", "Arg user must be provided.");
    }
    if !feature_enabled(&app, "speech_to_text") {
        return dify_error(400, "speech_to_text_disabled", "Speech to text is disabled.");
    }
    if file.is_none() {
        return dify_error(400, "no_audio_uploaded", "Please upload your audio.");
    }
    if size > 30 * 1024 * 1024 {
        return dify_error(413, "audio_too_large", "Audio size exceeded. Audio size larger than 30 mb");
    }
    let accepted = audio_type
        .strip_prefix("audio/")
        .is_some_and(|ext| ["mp3", "m4a", "x-m4a", "wav", "amr", "mpga"].contains(&ext.to_ascii_lowercase().as_str()));
    if !accepted {
        return dify_error(415, "unsupported_audio_type", "Audio type not allowed.");
    }
    axum::Json(json!({"text": format!("transcript of {size} bytes of {filename}")})).into_response()
}

/// `POST /text-to-audio`: some MP3-looking bytes (`ID3`…) as `audio/mpeg`, sent in two
/// pieces. `[[mock:null]]` in the text answers a JSON `null` with 200, as Dify does when its
/// text-to-speech produced nothing; `[[mock:wav]]` answers `audio/wav`; `[[mock:slow]]`
/// sends the second piece 500 ms after the first.
async fn text_to_audio(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return dify_error(
            400,
            "bad_request",
            "The browser (or proxy) sent a request that this server could not understand.",
        );
    };
    state.lock().requests.push(Recorded {
        method: "POST".into(),
        path: "/v1/text-to-audio".into(),
        key: app.key.clone(),
        body: body.clone(),
    });
    if body.get("user").and_then(Value::as_str).unwrap_or("").is_empty() {
        return dify_error(400, "invalid_param", "Arg user must be provided.");
    }
    if !feature_enabled(&app, "text_to_speech") {
        return dify_error(400, "invalid_param", "TTS is not enabled");
    }
    let text = body.get("text").and_then(Value::as_str).unwrap_or("");
    if text.is_empty() && body.get("message_id").is_none() {
        return dify_error(400, "invalid_param", "Text is required");
    }
    if text.contains("[[mock:null]]") {
        return ([("content-type", "application/json")], "null\n").into_response();
    }
    let (content_type, head): (&str, &[u8]) = if text.contains("[[mock:wav]]") {
        ("audio/wav", b"RIFF\x24\x00\x00\x00WAVEfmt ")
    } else {
        ("audio/mpeg", b"ID3\x04\x00\x00\x00\x00\x00\x00")
    };
    let frames: Vec<u8> = text.bytes().flat_map(|b| [0xFF, 0xFB, b]).collect();
    let pause = if text.contains("[[mock:slow]]") { Duration::from_millis(500) } else { Duration::ZERO };
    let pieces = [(Duration::ZERO, Bytes::copy_from_slice(head)), (pause, Bytes::from(frames))];
    let audio = futures_util::StreamExt::then(futures_util::stream::iter(pieces), |(pause, bytes)| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, Infallible>(bytes)
    });
    Response::builder()
        .header("content-type", content_type)
        .body(Body::from_stream(audio))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What a query asks the mock to do, from `[[mock:NAME]]` in its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Normal,
    /// Some text, then an `error` frame.
    ErrorMid,
    /// Some text, then the connection closes without a closing event.
    Cut,
    /// Multi-byte characters split across TCP writes.
    SplitUtf8,
    /// One event, then silence until the client goes away.
    Hang,
    /// A ping between two events.
    Ping,
    /// HTTP errors before the stream starts.
    Http429,
    Http500,
    /// Cloudflare's HTML timeout page.
    Http524,
    /// nginx's HTML 504 page (a proxy in front of Dify gave up).
    Http504Html,
    /// A `data:` line that is not JSON.
    Garbage,
    /// `<think>` reasoning before the answer.
    Think,
    /// Output moderation replaces the answer.
    Replace,
    /// A `message_file` image in the answer.
    File,
    /// A chatflow/workflow run that fails.
    Fail,
    /// 50 ms between events.
    Slow,
    /// The answer cites knowledge-base passages (and a chatflow retrieves them in a node).
    Rag,
    /// Dify rejects the key with 401 (as for a key that was revoked).
    Http401,
    /// The stream is sent one byte per second.
    Trickle,
    /// After the first event, one event larger than the gateway's 16 MiB limit.
    Huge,
    /// The response head comes only after 2 s (a hung Dify, or a proxy queueing).
    SlowHead,
}

impl Directive {
    fn parse(query: &str) -> Directive {
        let Some(start) = query.find("[[mock:") else { return Directive::Normal };
        let name = query[start + 7..].split("]]").next().unwrap_or("");
        match name {
            "error-mid" => Directive::ErrorMid,
            "cut" => Directive::Cut,
            "split-utf8" => Directive::SplitUtf8,
            "hang" => Directive::Hang,
            "ping" => Directive::Ping,
            "http-429" => Directive::Http429,
            "http-500" => Directive::Http500,
            "http-524" => Directive::Http524,
            "http-504-html" => Directive::Http504Html,
            "garbage" => Directive::Garbage,
            "think" => Directive::Think,
            "replace" => Directive::Replace,
            "file" => Directive::File,
            "fail" => Directive::Fail,
            "slow" => Directive::Slow,
            "rag" => Directive::Rag,
            "http-401" => Directive::Http401,
            "trickle" => Directive::Trickle,
            "huge" => Directive::Huge,
            "slow-head" => Directive::SlowHead,
            _ => Directive::Normal,
        }
    }
}

fn uuid() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let hex = format!("{a:016x}{b:016x}");
    format!("{}-{}-4{}-a{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn generate(
    State(state): State<Arc<MockState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = match authorise(&state, &headers) {
        Ok(a) => a.clone(),
        Err(r) => return r,
    };
    let path = uri.path().to_string();
    if !headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("application/json") {
        return dify_error(415, "unsupported_media_type", "Content-Type must be application/json");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return dify_error(
            400,
            "bad_request",
            "The browser (or proxy) sent a request that this server could not understand.",
        );
    };
    state.lock().requests.push(Recorded {
        method: "POST".into(),
        path: path.clone(),
        key: app.key.clone(),
        body: body.clone(),
    });

    let endpoint_ok = match app.mode.as_str() {
        "completion" => path.ends_with("/completion-messages"),
        "workflow" => path.ends_with("/workflows/run"),
        _ => path.ends_with("/chat-messages"),
    };
    if !endpoint_ok {
        return if path.ends_with("/chat-messages") {
            dify_error(400, "not_chat_app", "Please check if your app mode matches the right API route.")
        } else {
            dify_error(400, "app_unavailable", "App unavailable, please check your app configurations.")
        };
    }
    let user = body.get("user").and_then(Value::as_str).unwrap_or("").to_string();
    if user.is_empty() {
        return dify_error(400, "invalid_param", "Arg user must be provided.");
    }
    let Some(inputs) = body.get("inputs").and_then(Value::as_object) else {
        return dify_error(400, "invalid_param", "inputs is required in input form");
    };
    let streaming = match body.get("response_mode").and_then(Value::as_str) {
        Some("streaming") => true,
        Some("blocking") => false,
        None => app.mode == "agent",
        Some(_) => return dify_error(400, "invalid_param", "response_mode must be blocking or streaming"),
    };
    if !streaming && app.mode == "agent-chat" {
        return dify_error(400, "invalid_param", "Agent Chat App does not support blocking mode");
    }
    if !streaming && app.mode == "agent" {
        return dify_error(400, "bad_request", "Agent App only supports streaming response mode.");
    }
    let query = if app.mode == "workflow" {
        let var = app
            .parameters
            .get("user_input_form")
            .and_then(Value::as_array)
            .and_then(|f| f.first())
            .and_then(|f| f.as_object())
            .and_then(|o| o.values().next())
            .and_then(|b| b.get("variable"))
            .and_then(Value::as_str)
            .unwrap_or("query")
            .to_string();
        match inputs.get(&var).and_then(Value::as_str) {
            Some(q) if !q.is_empty() => q.to_string(),
            _ => return dify_error(400, "invalid_param", &format!("{var} is required in input form")),
        }
    } else {
        let q = body.get("query").and_then(Value::as_str).unwrap_or("");
        if q.is_empty() && app.mode != "completion" {
            return dify_error(400, "invalid_param", "query is required");
        }
        q.to_string()
    };

    let directive = Directive::parse(&query);
    match directive {
        Directive::Http429 => {
            return dify_error(429, "too_many_requests", "Too many requests, please try again later.");
        }
        Directive::Http500 => {
            return dify_error(500, "internal_server_error", "Internal Server Error, please contact support.");
        }
        Directive::Http401 => {
            return dify_error(401, "unauthorized", "Access token is invalid");
        }
        Directive::Http504Html => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                [("content-type", "text/html")],
                "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n",
            )
                .into_response();
        }
        Directive::Http524 => {
            return (
                StatusCode::from_u16(524).unwrap_or(StatusCode::GATEWAY_TIMEOUT),
                "<html><body>A timeout occurred</body></html>",
            )
                .into_response();
        }
        _ => {}
    }

    let chat_family = !matches!(app.mode.as_str(), "completion" | "workflow");
    let message_id = uuid();
    let mut conversation_id = String::new();
    if chat_family {
        let requested = body.get("conversation_id").and_then(Value::as_str).unwrap_or("");
        let mut shared = state.lock();
        if requested.is_empty() {
            conversation_id = uuid();
            shared.conversations.insert(
                conversation_id.clone(),
                Conversation {
                    user: user.clone(),
                    app_key: app.key.clone(),
                    queries: Vec::new(),
                    message_ids: Vec::new(),
                    last_turn: std::time::Instant::now(),
                    answering: 0,
                    overlaps: 0,
                },
            );
        } else if !is_uuid(requested) {
            return dify_error(400, "invalid_param", &format!("{requested} is not a valid uuid."));
        } else {
            match shared.conversations.get(requested) {
                Some(c) if c.user == user && c.app_key == app.key => conversation_id = requested.to_string(),
                _ => return dify_error(404, "not_found", "Conversation Not Exists."),
            }
        }
        if let Some(c) = shared.conversations.get_mut(&conversation_id) {
            c.queries.push(query.clone());
            c.message_ids.push(message_id.clone());
            c.last_turn = std::time::Instant::now();
        }
    }

    let earlier: Vec<String> = if chat_family {
        let shared = state.lock();
        let queries = shared.conversations.get(&conversation_id).map(|c| c.queries.clone()).unwrap_or_default();
        queries[..queries.len().saturating_sub(1)].to_vec()
    } else {
        Vec::new()
    };
    let answer =
        app.answer.clone().or_else(|| model::answer(&query, &earlier)).unwrap_or_else(|| format!("Echo: {query}"));
    let script =
        Script { app, settings: state.settings, directive, answer, conversation_id, message_id, task_id: uuid() };
    if !streaming {
        return blocking(&script);
    }
    if directive == Directive::SlowHead {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let playing = Playing::new(state.clone());
    let answering = if chat_family { Answering::start(&state, &script.conversation_id) } else { None };
    let paced = !state.settings.delay.is_zero()
        || matches!(directive, Directive::Slow | Directive::Trickle | Directive::SplitUtf8 | Directive::Hang);
    if !paced {
        // Back-to-back events are played straight into a list the body yields: a task and a
        // channel per answer made a streamed answer cost the mock 1.7× a blocking one (in
        // Dify both modes run the same pipeline), which a benchmark would charge to a gateway
        // that streams. hyper still writes each event as its own chunk.
        let mut collected = Collected { frames: Vec::new(), answering, answered_at: None };
        script.play(&mut Out::Collect(&mut collected)).await;
        let Collected { frames, answering, answered_at } = collected;
        let played = Played { frames: frames.into_iter(), next: 0, answering, answered_at, _playing: playing };
        let stream = futures_util::stream::unfold(played, |mut p| async move {
            if p.answered_at == Some(p.next) {
                p.answering = None;
            }
            let frame = p.frames.next()?;
            p.next += 1;
            Some((Ok::<_, Infallible>(frame), p))
        });
        return event_stream(Body::from_stream(stream));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let delay = if directive == Directive::Slow { Duration::from_millis(50) } else { state.settings.delay };
    tokio::spawn(async move {
        let _playing = playing;
        let mut out = Out::Channel { tx, delay, trickle: directive == Directive::Trickle, answering };
        script.play(&mut out).await;
    });
    // Dify's server (gunicorn) sends the response head with the first event it writes, not
    // before: the head waits for it here too. Trickling keeps its head first (it stands for a
    // network delivering a byte at a time, not for Dify).
    let mut rx = rx;
    let first = if directive == Directive::Trickle { None } else { rx.recv().await };
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::iter(first.map(Ok::<_, Infallible>)),
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) }),
    );
    event_stream(Body::from_stream(stream))
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Where a script's events go.
enum Out<'a> {
    /// Paced: a task plays them into a channel the response body reads.
    Channel { tx: mpsc::Sender<Bytes>, delay: Duration, trickle: bool, answering: Option<Answering> },
    /// Back to back: straight into a list.
    Collect(&'a mut Collected),
}

/// A back-to-back answer: its events, and the one before which the answer ends (`answering`
/// is released when the body reaches it).
struct Collected {
    frames: Vec<Bytes>,
    answering: Option<Answering>,
    answered_at: Option<usize>,
}

impl Out<'_> {
    /// Sends one event; false once the client has gone.
    async fn send(&mut self, b: Bytes) -> bool {
        match self {
            Out::Collect(collected) => {
                collected.frames.push(b);
                true
            }
            Out::Channel { tx, delay, trickle, .. } => {
                if *trickle {
                    for i in 0..b.len() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if tx.send(b.slice(i..i + 1)).await.is_err() {
                            return false;
                        }
                    }
                    return true;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(*delay).await;
                }
                tx.send(b).await.is_ok()
            }
        }
    }

    /// Waits until the client has gone.
    async fn closed(&self) {
        if let Out::Channel { tx, .. } = self {
            tx.closed().await;
        }
    }

    /// The answer is complete: the conversation takes its next turn from here on, before the
    /// closing event reaches the client (as in Dify).
    fn answered(&mut self) {
        match self {
            Out::Channel { answering, .. } => *answering = None,
            Out::Collect(collected) => collected.answered_at = Some(collected.frames.len()),
        }
    }
}

/// A collected answer, as the response body yields it.
struct Played {
    frames: std::vec::IntoIter<Bytes>,
    next: usize,
    answering: Option<Answering>,
    answered_at: Option<usize>,
    _playing: Playing,
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "prompt_unit_price": "0.001", "prompt_price_unit": "0.001", "prompt_price": "0.0000100",
           "completion_tokens": completion, "completion_unit_price": "0.002", "completion_price_unit": "0.001",
           "completion_price": "0.0000200", "total_tokens": prompt + completion, "total_price": "0.0000300",
           "currency": "USD", "latency": 0.1})
}

fn blocking(s: &Script) -> Response {
    let tokens = s.answer.chars().count() as u64;
    if s.app.mode == "workflow" {
        return axum::Json(json!({"workflow_run_id": uuid(), "task_id": s.task_id, "data": {
            "id": uuid(), "workflow_id": uuid(), "status": "succeeded", "outputs": {"text": s.answer},
            "error": null, "elapsed_time": 0.1, "total_tokens": tokens, "total_steps": 3, "created_at": now(), "finished_at": now()}}))
        .into_response();
    }
    axum::Json(json!({"event": "message", "task_id": s.task_id, "id": s.message_id, "message_id": s.message_id,
        "conversation_id": s.conversation_id, "mode": s.app.mode, "answer": s.answer,
        "metadata": {"usage": usage(10, tokens), "retriever_resources": s.resources()}, "created_at": now()}))
    .into_response()
}

/// One `data:` line being written: JSON serialised as axum's `Json` serialises a blocking
/// answer.
struct Frame {
    out: Vec<u8>,
    /// The event's own fields, written after the common ones.
    extra: serde_json::Map<String, Value>,
}

impl Frame {
    /// A frame with the event's own fields (an object; anything else adds none).
    fn new(extra: Value) -> Frame {
        let extra = match extra {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let mut out = Vec::with_capacity(384);
        out.extend_from_slice(b"data: ");
        Frame { out, extra }
    }

    fn key(&mut self, name: &str) {
        self.out.push(if self.out.ends_with(b"data: ") { b'{' } else { b',' });
        serde_json::to_writer(&mut self.out, name).expect("a string always serialises");
        self.out.push(b':');
    }

    /// A common field: the event's own value for it if it has one, else `common`'s.
    fn common(&mut self, name: &str, common: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) {
        self.key(name);
        match self.extra.shift_remove(name) {
            Some(own) => serde_json::to_writer(&mut self.out, &own),
            None => common(&mut self.out),
        }
        .expect("JSON always serialises");
    }

    fn text(&mut self, name: &str, value: &str) {
        self.common(name, |out| serde_json::to_writer(out, value));
    }

    fn number(&mut self, name: &str, value: u64) {
        self.common(name, |out| serde_json::to_writer(out, &value));
    }

    fn finish(mut self) -> Bytes {
        for (name, value) in std::mem::take(&mut self.extra) {
            self.key(&name);
            serde_json::to_writer(&mut self.out, &value).expect("JSON always serialises");
        }
        self.out.extend_from_slice(b"}\n\n");
        Bytes::from(self.out)
    }
}

struct Script {
    app: MockApp,
    settings: MockSettings,
    directive: Directive,
    answer: String,
    conversation_id: String,
    message_id: String,
    task_id: String,
}

/// Passages of two handbook documents, as Dify's `retriever_resources` list them.
fn passages() -> Vec<Value> {
    let passage = |position: u64, document: &str, segment: &str, score: f64, content: &str| {
        json!({"position": position, "dataset_id": "ds-handbook", "dataset_name": "Handbook",
               "document_id": format!("doc-{document}"), "document_name": document, "data_source_type": "upload_file",
               "segment_id": segment, "retriever_from": "api", "score": score, "hit_count": 1, "word_count": 12,
               "segment_position": position, "index_node_hash": "h", "content": content})
    };
    vec![
        passage(1, "leave-policy.pdf", "seg-1", 0.91, "Employees get 25 days of paid leave a year."),
        passage(2, "payroll.md", "seg-2", 0.84, "Salaries are paid on the 25th of each month."),
        passage(3, "leave-policy.pdf", "seg-3", 0.77, "Unused leave carries over until March."),
    ]
}

impl Script {
    /// The passages this answer cites (none unless asked for).
    fn resources(&self) -> Vec<Value> {
        if self.directive == Directive::Rag || self.app.knowledge { passages() } else { Vec::new() }
    }

    fn chunks(&self) -> Vec<String> {
        let chars: Vec<char> = self.answer.chars().collect();
        let size = self.settings.chunk_chars.max(1);
        if let Some(n) = self.settings.events {
            return (0..n).map(|i| chars.iter().cycle().skip(i * size).take(size).collect()).collect();
        }
        chars.chunks(size).map(|c| c.iter().collect()).collect()
    }

    /// A chat-family frame: the common fields first, like Dify (a common field that `extra`
    /// also has takes its value from `extra`). Written field by field: a `serde_json::Map` per
    /// event, hashed with SipHash, cost more than the rest of a streamed answer.
    fn frame(&self, event: &str, extra: Value) -> Bytes {
        let mut frame = Frame::new(extra);
        frame.text("event", event);
        if self.app.mode == "workflow" {
            frame.text("workflow_run_id", &self.message_id);
            frame.text("task_id", &self.task_id);
        } else {
            if self.app.mode != "completion" {
                frame.text("conversation_id", &self.conversation_id);
            }
            frame.text("message_id", &self.message_id);
            frame.number("created_at", now());
            if event != "error" {
                frame.text("task_id", &self.task_id);
            }
        }
        frame.finish()
    }

    fn answer_event(&self, text: &str) -> Bytes {
        match self.app.mode.as_str() {
            "workflow" => {
                self.frame("text_chunk", json!({"data": {"text": text, "from_variable_selector": ["llm", "text"]}}))
            }
            "agent-chat" | "agent" => self.frame("agent_message", json!({"id": self.message_id, "answer": text})),
            _ => self.frame("message", json!({"id": self.message_id, "answer": text, "from_variable_selector": null})),
        }
    }

    /// Sends the answer; it ends (`Out::answered`) just before the closing event, as in Dify,
    /// where the next turn may start once the client has that event.
    async fn play(self, out: &mut Out<'_>) {
        let mode = self.app.mode.clone();
        let workflow_like = mode == "workflow" || mode == "advanced-chat";
        let tokens = self.answer.chars().count() as u64;
        if workflow_like {
            let run = json!({"workflow_run_id": uuid(), "data": {"id": uuid(), "workflow_id": uuid(), "inputs": {}, "created_at": now()}});
            if !out.send(self.frame("workflow_started", run)).await {
                return;
            }
            let resources = self.resources();
            if !resources.is_empty() {
                // A knowledge-retrieval node, reporting its results as Dify's node does.
                let started = json!({"data": {"id": uuid(), "node_id": "knowledge", "node_type": "knowledge-retrieval", "title": "Handbook", "index": 1, "inputs": {}, "created_at": now()}});
                if !out.send(self.frame("node_started", started)).await {
                    return;
                }
                let results: Vec<Value> = resources.iter().map(|r| json!({"metadata": {
                    "_source": "knowledge", "dataset_id": r["dataset_id"], "dataset_name": r["dataset_name"],
                    "document_id": r["document_id"], "document_name": r["document_name"], "segment_id": r["segment_id"],
                    "score": r["score"], "position": r["position"]}, "title": r["document_name"], "content": r["content"]})).collect();
                let finished = json!({"data": {"id": uuid(), "node_id": "knowledge", "node_type": "knowledge-retrieval", "title": "Handbook", "index": 1, "status": "succeeded", "outputs": {"result": results}, "elapsed_time": 0.05, "created_at": now(), "finished_at": now()}});
                if !out.send(self.frame("node_finished", finished)).await {
                    return;
                }
            }
            let node = json!({"data": {"id": uuid(), "node_id": "llm", "node_type": "llm", "title": "LLM", "index": 1, "inputs": {}, "created_at": now()}});
            if !out.send(self.frame("node_started", node)).await {
                return;
            }
        }
        if mode == "agent-chat" || mode == "agent" {
            let thought = json!({"id": "thought-1", "position": 1, "thought": "", "observation": "", "tool": "", "tool_labels": {}, "tool_input": "", "message_files": []});
            if !out.send(self.frame("agent_thought", thought)).await {
                return;
            }
        }
        if self.directive == Directive::Think {
            for part in ["<thi", "nk>Let me think", " about it.</th", "ink>\n\n"] {
                if !out.send(self.answer_event(part)).await {
                    return;
                }
            }
        }
        let chunks = self.chunks();
        for (i, chunk) in chunks.iter().enumerate() {
            if self.directive == Directive::SplitUtf8 {
                let frame = self.answer_event(chunk);
                // Split inside the first multi-byte character, as a network might.
                let text = String::from_utf8_lossy(&frame).into_owned();
                let cut =
                    text.char_indices().find(|(_, c)| c.len_utf8() > 1).map(|(i, _)| i + 1).unwrap_or(frame.len() / 2);
                if !out.send(frame.slice(..cut)).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !out.send(frame.slice(cut..)).await {
                    return;
                }
                continue;
            }
            if !out.send(self.answer_event(chunk)).await {
                return;
            }
            if i == 0 {
                match self.directive {
                    Directive::Hang => {
                        out.closed().await;
                        return;
                    }
                    Directive::Ping if !out.send(Bytes::from_static(b"event: ping\n\n")).await => {
                        return;
                    }
                    Directive::Garbage => {
                        let _ = out.send(Bytes::from_static(b"data: {this is not json\n\n")).await;
                        return;
                    }
                    Directive::ErrorMid => {
                        let error = json!({"status": 400, "code": "completion_request_error", "message": "[openai] Rate Limit Error"});
                        let _ = out.send(self.frame("error", error)).await;
                        return;
                    }
                    Directive::Cut => return,
                    Directive::Huge if !out.send(self.answer_event(&"x".repeat(17 * 1024 * 1024))).await => {
                        return;
                    }
                    _ => {}
                }
            }
        }
        if self.directive == Directive::File {
            let file = json!({"id": uuid(), "type": "image", "belongs_to": "assistant", "url": "https://files.example/cat.png"});
            if !out.send(self.frame("message_file", file)).await {
                return;
            }
        }
        if mode == "agent-chat" || mode == "agent" {
            let thought = json!({"id": "thought-1", "position": 1, "thought": self.answer, "observation": "", "tool": "calculator", "tool_labels": {}, "tool_input": "{\"x\": 1}", "message_files": []});
            if !out.send(self.frame("agent_thought", thought)).await {
                return;
            }
            let observed = json!({"id": "thought-1", "position": 1, "thought": self.answer, "observation": "2", "tool": "calculator", "tool_labels": {}, "tool_input": "{\"x\": 1}", "message_files": []});
            if !out.send(self.frame("agent_thought", observed)).await {
                return;
            }
            if mode == "agent" {
                // The New Agent closes with one `message` repeating the whole answer.
                let whole = json!({"id": self.message_id, "answer": self.answer, "from_variable_selector": null});
                if !out.send(self.frame("message", whole)).await {
                    return;
                }
            }
        }
        if self.directive == Directive::Replace {
            let replace = json!({"answer": "This answer was withheld by moderation.", "reason": "moderation"});
            if !out.send(self.frame("message_replace", replace)).await {
                return;
            }
        }
        if workflow_like {
            let node = json!({"data": {"id": uuid(), "node_id": "llm", "node_type": "llm", "title": "LLM", "index": 1, "status": "succeeded", "outputs": {"text": self.answer}, "elapsed_time": 0.1, "created_at": now(), "finished_at": now()}});
            if !out.send(self.frame("node_finished", node)).await {
                return;
            }
            let failed = self.directive == Directive::Fail;
            let finished = json!({"data": {"id": uuid(), "workflow_id": uuid(), "status": if failed {"failed"} else {"succeeded"},
                "outputs": if failed { json!({}) } else { json!({"text": self.answer}) },
                "error": if failed { json!("Node LLM run failed: model quota exceeded") } else { Value::Null },
                "elapsed_time": 0.2, "total_tokens": tokens + 10, "total_steps": 3, "created_at": now(), "finished_at": now(), "exceptions_count": 0, "files": []}});
            if !out.send(self.frame("workflow_finished", finished)).await {
                return;
            }
            if failed && mode == "advanced-chat" {
                let error = json!({"status": 400, "code": "invalid_param", "message": "Run failed: Node LLM run failed: model quota exceeded"});
                let _ = out.send(self.frame("error", error)).await;
                return;
            }
            if mode == "workflow" {
                return;
            }
        }
        out.answered();
        let end = json!({"id": self.message_id, "metadata": {"usage": usage(10, tokens), "retriever_resources": self.resources()}, "files": null});
        let _ = out.send(self.frame("message_end", end)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_fields_come_first_and_an_own_value_takes_their_place() {
        let mut f = Frame::new(json!({"workflow_run_id": "own", "data": {"id": "n1", "inputs": {}}}));
        f.text("event", "workflow_started");
        f.text("workflow_run_id", "common");
        f.text("task_id", "t1");
        assert_eq!(
            &f.finish()[..],
            b"data: {\"event\":\"workflow_started\",\"workflow_run_id\":\"own\",\"task_id\":\"t1\",\"data\":{\"id\":\"n1\",\"inputs\":{}}}\n\n"
        );
    }

    #[test]
    fn text_is_escaped_and_numbers_are_bare() {
        let mut f = Frame::new(json!({"answer": "say \"hi\"\n"}));
        f.text("event", "message");
        f.number("created_at", 1_700_000_000);
        let line = f.finish();
        assert_eq!(
            &line[..],
            b"data: {\"event\":\"message\",\"created_at\":1700000000,\"answer\":\"say \\\"hi\\\"\\n\"}\n\n"
        );
        let json: Value = serde_json::from_slice(&line[6..]).expect("the frame is JSON");
        assert_eq!(json["answer"], "say \"hi\"\n");
    }
}
