//! Test harness: a mock Dify and an opendify server, both in-process on ephemeral ports,
//! spoken to over real HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use mock_dify::{MockApp, MockDify};
use opendify::config::{self, LoadOptions};
use opendify::server::{self, AppState, Live};
use serde_json::{Value, json};

pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The conversation store and env file; removed when the gateway is dropped.
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the graceful shutdown, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The apps most tests use: one of each mode.
pub fn all_apps() -> Vec<MockApp> {
    vec![
        MockApp::new("app-chat-key-0001", "Chat Bot", "chat"),
        MockApp::new("app-agentchat-0002", "Agent Bot", "agent-chat"),
        MockApp::new("app-chatflow-0003", "Flow Bot", "advanced-chat"),
        MockApp::new("app-newagent-0004", "New Agent", "agent"),
        MockApp::new("app-complete-0005", "Writer", "completion"),
        MockApp::new("app-workflow-0006", "Runner", "workflow"),
    ]
}

pub const MODEL_CONFIG: &str = r#"{"chat":"app-chat-key-0001","agent-chat":"app-agentchat-0002","chatflow":"app-chatflow-0003","agent":"app-newagent-0004","completion":"app-complete-0005","workflow":"app-workflow-0006"}"#;

pub async fn mock() -> MockDify {
    MockDify::start(all_apps()).await.expect("start mock Dify")
}

/// Starts opendify against `mock` with MODEL_CONFIG and any extra settings.
pub async fn gateway(mock: &MockDify, extra: &[(&'static str, &str)]) -> Gateway {
    gateway_with(&mock.base_url(), MODEL_CONFIG, extra).await
}

pub async fn gateway_with(base: &str, models: &str, extra: &[(&'static str, &str)]) -> Gateway {
    gateway_tuned(base, models, extra, |_| {}).await
}

/// Like [`gateway_with`], with a last say on the live state (limits too small for a setting).
pub async fn gateway_tuned(
    base: &str,
    models: &str,
    extra: &[(&'static str, &str)],
    tune: impl FnOnce(&mut Live),
) -> Gateway {
    let temp = tempfile::Builder::new().prefix("opendify-test-").tempdir().expect("temp dir");
    let dir = temp.path();
    let empty_env = dir.join("test.env");
    std::fs::write(&empty_env, "").expect("env file");
    let mut overrides: Vec<(&'static str, String)> = vec![
        ("DIFY_API_BASE", base.to_string()),
        ("MODEL_CONFIG", models.to_string()),
        ("LOG_LEVEL", "warn".into()),
        ("CONVERSATION_STORE", dir.join("conversations.db").display().to_string()),
    ];
    overrides.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let options = LoadOptions { env_file: Some(empty_env), overrides, ignore_process_env: true };
    let loaded = config::load(&options);
    assert!(loaded.problems.is_empty(), "test config has problems: {:?}", loaded.problems);
    let config = loaded.config.clone().expect("config");
    let state = AppState::build(loaded, options).await.expect("state");
    let mut live = Live::build(config).await.expect("live");
    tune(&mut live);
    state.replace_live(live);
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Gateway { addr, state, shutdown: Some(tx), server: Some(server), _dir: temp }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

pub fn chat_body(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream})
}

/// One parsed SSE response from opendify: the JSON chunks, in order, and whether it ended
/// with `[DONE]`.
#[derive(Debug)]
pub struct StreamResult {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub chunks: Vec<Value>,
    pub comments: usize,
    pub done: bool,
    pub raw: String,
}

impl StreamResult {
    pub fn content(&self) -> String {
        self.delta_field("content")
    }

    pub fn reasoning(&self) -> String {
        self.delta_field("reasoning_content")
    }

    fn delta_field(&self, field: &str) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter_map(|choice| choice["delta"][field].as_str())
            .collect()
    }

    pub fn finish_reason(&self) -> Option<String> {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .find_map(|choice| choice["finish_reason"].as_str().map(str::to_string))
    }

    pub fn error(&self) -> Option<&Value> {
        self.chunks.iter().find_map(|c| c.get("error"))
    }

    pub fn usage(&self) -> Option<&Value> {
        self.chunks.iter().find(|c| c["choices"].as_array().is_some_and(|a| a.is_empty())).map(|c| &c["usage"])
    }
}

pub async fn stream_chat(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> StreamResult {
    stream_post(gw, "/v1/chat/completions", body, headers).await
}

/// POSTs `body` to `path` and reads the answer as an OpenAI-style SSE stream.
pub async fn stream_post(gw: &Gateway, path: &str, body: &Value, headers: &[(&str, &str)]) -> StreamResult {
    let mut request = client().post(gw.url(path)).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let response_headers = response.headers().clone();
    let raw = response.text().await.expect("body");
    let mut chunks = Vec::new();
    let mut comments = 0;
    let mut done = false;
    for frame in raw.split("\n\n").filter(|f| !f.trim().is_empty()) {
        if frame.starts_with(':') {
            comments += 1;
            continue;
        }
        let data = frame.strip_prefix("data: ").unwrap_or_else(|| panic!("frame without data: {frame:?}"));
        assert!(!done, "frame after [DONE]: {frame}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        chunks.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad chunk {data:?}: {e}")));
    }
    StreamResult { status, headers: response_headers, chunks, comments, done, raw }
}

pub async fn post_chat(
    gw: &Gateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_json(gw, "/v1/chat/completions", body, headers).await
}

/// POSTs `body` to `path` and reads a JSON answer.
pub async fn post_json(
    gw: &Gateway,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().post(gw.url(path)).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, json)
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn assert_openai_error(body: &Value) -> &Value {
    let error = body.get("error").unwrap_or_else(|| panic!("no error object in {body}"));
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
    assert!(error["type"].is_string(), "error without type: {body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "error without param/code: {body}");
    error
}

/// `GET /metrics` as text.
pub async fn scrape_metrics(gw: &Gateway) -> String {
    let response = client().get(gw.url("/metrics")).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    response.text().await.expect("text")
}

/// The value of one sample line of `/metrics`, e.g. `opendify_active_streams`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A real redis-server on a free port, started by the test and stopped on drop.
pub struct Redis {
    pub child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server; `None` (test skipped) when it is not installed, unless
/// OPENDIFY_REQUIRE_REDIS is set (CI), where its absence fails the test.
pub fn start_redis() -> Option<Redis> {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("redis-server")).find(|p| p.is_file()));
    let Some(binary) = found else {
        assert!(
            std::env::var_os("OPENDIFY_REQUIRE_REDIS").is_none(),
            "redis-server is required (OPENDIFY_REQUIRE_REDIS is set) but not installed: apt-get install redis-server"
        );
        eprintln!("skipping: redis-server not installed (CI installs it and requires it)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let dir = tempfile::tempdir().ok()?;
    let child = std::process::Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    // Owned at once, so the server is stopped whatever happens next.
    let redis = Redis { child, port, _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("redis-server did not start on port {port}");
}
