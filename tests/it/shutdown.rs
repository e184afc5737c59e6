//! Graceful shutdown, in-process and with the real binary: SIGTERM stops new connections,
//! turns `/ready` to 503, lets in-flight streams finish (or ends them with an error chunk
//! and `[DONE]` after SHUTDOWN_TIMEOUT), and exits 0. The binary's logs (JSON, LOG_FILE)
//! carry request ids and never a key; the startup warns loudly when it is open to the network.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use mock_dify::{MockApp, MockDify};
use serde_json::json;
use tower::ServiceExt as _;

/// Reads a stream until its text contains `needle`; returns what was read.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("stream stalled")
            .expect("chunk")
            .unwrap_or_else(|| panic!("stream ended before {needle:?}: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

async fn read_rest(response: &mut reqwest::Response, mut seen: String) -> String {
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("stream stalled").expect("chunk")
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

#[tokio::test]
async fn in_flight_streams_finish_while_new_connections_are_refused() {
    let mock = mock().await;
    let mut gw = gateway(&mock, &[]).await;
    let question = "[[mock:slow]] a question long enough that its echo takes about a second";
    let mut response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("chat", question, true))
        .send()
        .await
        .expect("send");
    let seen = read_until(&mut response, "Echo").await;

    gw.begin_shutdown();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !gw.state.is_shutting_down() {
        assert!(Instant::now() < deadline, "shutdown not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // /ready answers 503 (asked of the app itself: new connections are no longer accepted).
    let ready = opendify::server::router(gw.state.clone())
        .oneshot(axum::http::Request::get("/ready").body(axum::body::Body::empty()).expect("request"))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let mut refused = false;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections still accepted during shutdown");

    let raw = read_rest(&mut response, seen).await;
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    assert!(!raw.contains("\"error\""), "the stream was cut: {raw}");
    let text: String = raw
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, format!("Echo: {question}"));
    let server = gw.server.take().expect("server");
    let result = tokio::time::timeout(Duration::from_secs(5), server).await.expect("server did not stop");
    assert!(result.expect("join").is_ok());
}

#[tokio::test]
async fn streams_still_open_at_the_shutdown_timeout_end_with_an_error_chunk() {
    let mock = mock().await;
    let mut gw = gateway(&mock, &[("SHUTDOWN_TIMEOUT", "1")]).await;
    let mut stream = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("chat", "[[mock:hang]]", true))
        .send()
        .await
        .expect("send");
    let seen = read_until(&mut stream, "Echo").await;
    // A non-streaming request waiting on Dify is bounded the same way.
    let blocking =
        tokio::spawn(post_chat_owned(gw.url("/v1/chat/completions"), chat_body("chat", "[[mock:hang]]", false)));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    gw.begin_shutdown();
    let raw = read_rest(&mut stream, seen).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(raw.contains("shutting down"), "{raw}");
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    let (status, body) = blocking.await.expect("join");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("shutting down"), "{body}");

    let server = gw.server.take().expect("server");
    let result = tokio::time::timeout(Duration::from_secs(5), server).await.expect("server did not stop");
    assert!(result.expect("join").is_ok());
    // Dify was told to stop both generations.
    let deadline = Instant::now() + Duration::from_secs(2);
    while mock.stops().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.stops().len(), 2);
}

async fn post_chat_owned(url: String, body: serde_json::Value) -> (u16, String) {
    let response = client().post(url).json(&body).send().await.expect("send");
    (response.status().as_u16(), response.text().await.expect("text"))
}

/// The real binary, with stderr collected line by line.
struct Binary {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Binary {
    fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_opendify"));
        command
            .arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SERVER_PORT", port.to_string())
            .env("CONVERSATION_STORE", dir.join("conversations.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn opendify");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Binary { child, port, stderr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(self.url("/health")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("opendify exited with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "opendify did not start: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "opendify did not exit: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROXY_KEY: &str = "sk-proxy-secret-0123456789";
const USER_KEY: &str = "app-user-anna-secret-0042";

#[tokio::test]
async fn sigterm_lets_the_stream_finish_exits_0_and_logs_ids_but_no_secrets() {
    let mock = MockDify::start(vec![
        MockApp::new("app-chat-key-secret-0001", "Chat Bot", "chat"),
        MockApp::new(USER_KEY, "Chat Bot", "chat"),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let log_file = dir.path().join("logs").join("app.log");
    let mut binary = Binary::start(
        dir.path(),
        &[
            ("DIFY_API_BASE", &mock.base_url()),
            ("MODEL_CONFIG", r#"{"chat":"app-chat-key-secret-0001"}"#),
            ("PROXY_API_KEYS", PROXY_KEY),
            ("DIFY_KEY_PASSTHROUGH", "true"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "debug"),
            ("LOG_FILE", log_file.to_str().expect("utf-8 path")),
        ],
    );
    binary.wait_healthy().await;
    let auth = format!("Bearer {PROXY_KEY}");

    // A refused key, a passthrough key, then a slow stream that SIGTERM must not cut.
    let refused = client()
        .post(binary.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-wrong-key-000000")
        .json(&chat_body("chat", "x", false))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 401);
    let own = client()
        .post(binary.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {USER_KEY}"))
        .header("x-request-id", "passthrough-req-1")
        .json(&chat_body("chat", "with my key", false))
        .send()
        .await
        .expect("send");
    assert_eq!(own.status(), 200);
    let question = "[[mock:slow]] please answer slowly enough for a SIGTERM to land mid-stream";
    let mut stream = client()
        .post(binary.url("/v1/chat/completions"))
        .header("authorization", &auth)
        .header("x-request-id", "stream-req-7")
        .json(&chat_body("chat", question, true))
        .send()
        .await
        .expect("send");
    let seen = read_until(&mut stream, "Echo").await;
    binary.signal("TERM");
    let raw = read_rest(&mut stream, seen).await;
    assert!(raw.ends_with("data: [DONE]\n\n") && !raw.contains("\"error\""), "{raw}");
    let status = binary.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", binary.stderr());

    let stderr = binary.stderr();
    let file = std::fs::read_to_string(&log_file).expect("LOG_FILE written");
    for (name, text) in [("stderr", &stderr), ("LOG_FILE", &file)] {
        for secret in [PROXY_KEY, USER_KEY, "app-chat-key-secret-0001", "sk-wrong-key-000000"] {
            assert!(!text.contains(secret), "{secret} in {name}:\n{text}");
        }
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
        }
    }
    // Every line of the streamed request carries its id; the completion line says who,
    // which model, which conversation and how long.
    let lines: Vec<serde_json::Value> = file.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let completed = lines
        .iter()
        .find(|l| {
            l["span"]["id"] == "stream-req-7"
                && l["fields"]["message"].as_str().is_some_and(|m| m.contains("completed"))
        })
        .unwrap_or_else(|| panic!("no completion line for stream-req-7:\n{file}"));
    for field in ["model", "user", "conversation", "latency_ms"] {
        assert!(!completed["fields"][field].is_null(), "{field} missing: {completed}");
    }
    assert!(lines.iter().any(|l| l["span"]["id"] == "passthrough-req-1"), "{file}");
    assert!(file.contains("shutdown requested"), "{file}");
}

#[tokio::test]
async fn an_open_gateway_on_the_network_warns_loudly_at_startup() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = mock.base_url();
    let common = [("DIFY_API_BASE", base.as_str()), ("MODEL_CONFIG", MODEL_CONFIG), ("SERVER_HOST", "0.0.0.0")];
    let mut open = Binary::start(dir.path(), &common);
    open.wait_healthy().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !open.stderr().contains("WITHOUT client authentication") {
        assert!(Instant::now() < deadline, "no warning: {}", open.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open.signal("INT");
    assert_eq!(open.wait_exit(Duration::from_secs(10)).await.code(), Some(0));

    let keyed = [common.as_slice(), &[("PROXY_API_KEYS", PROXY_KEY)]].concat();
    let mut guarded = Binary::start(dir.path(), &keyed);
    guarded.wait_healthy().await;
    guarded.signal("TERM");
    assert_eq!(guarded.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    assert!(guarded.stderr().contains("listening"), "{}", guarded.stderr());
    assert!(!guarded.stderr().contains("WITHOUT client authentication"));

    let mut local = Binary::start(dir.path(), &common[..2]);
    local.wait_healthy().await;
    local.signal("TERM");
    assert_eq!(local.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    assert!(!local.stderr().contains("WITHOUT client authentication"), "loopback needs no warning");
}

/// Turns are committed on a writer thread: the ones answered just before SIGTERM must be
/// written before the process exits, so the next run continues their conversations.
#[tokio::test]
async fn turns_answered_just_before_sigterm_survive_the_restart() {
    let mock = MockDify::start(vec![MockApp::new("app-chat-key-secret-0001", "Chat Bot", "chat")]).await.expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("DIFY_API_BASE", mock.base_url()), ("MODEL_CONFIG", r#"{"chat":"app-chat-key-secret-0001"}"#.into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ask = |binary: &Binary, messages: serde_json::Value| {
        let url = binary.url("/v1/chat/completions");
        async move {
            let response = client().post(url).json(&json!({"model": "chat", "messages": messages})).send().await;
            let body: serde_json::Value = response.expect("send").json().await.expect("json");
            body["choices"][0]["message"]["content"].as_str().expect("answer").to_string()
        }
    };

    let mut first_run = Binary::start(dir.path(), &env);
    first_run.wait_healthy().await;
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push(ask(&first_run, json!([{"role": "user", "content": format!("before sigterm {i}")}])).await);
    }
    first_run.signal("TERM");
    assert!(first_run.wait_exit(Duration::from_secs(15)).await.success(), "{}", first_run.stderr());

    let mut second_run = Binary::start(dir.path(), &env);
    second_run.wait_healthy().await;
    for (i, answer) in answers.iter().enumerate() {
        let history = json!([
            {"role": "user", "content": format!("before sigterm {i}")},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": format!("after restart {i}")},
        ]);
        ask(&second_run, history).await;
    }
    for i in 0..20 {
        let first = format!("before sigterm {i}");
        let continued =
            mock.conversations().into_values().find(|c| c.queries.first() == Some(&first)).expect("conversation");
        assert_eq!(continued.queries, [first, format!("after restart {i}")], "turn {i} was not remembered");
    }
}

/// Log forging: a `user` or `model` with a newline must not write a line of its own (one
/// without the request id), and a huge value must not become a huge line.
#[tokio::test]
async fn client_values_cannot_forge_or_flood_log_lines() {
    let mock = MockDify::start(vec![MockApp::new("app-chat-key-secret-0001", "Chat Bot", "chat")]).await.expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut binary = Binary::start(
        dir.path(),
        &[
            ("DIFY_API_BASE", &mock.base_url()),
            ("MODEL_CONFIG", r#"{"chat":"app-chat-key-secret-0001"}"#),
            ("LOG_FORMAT", "text"),
            ("LOG_LEVEL", "debug"),
        ],
    );
    binary.wait_healthy().await;
    let forged_user = json!({"model": "chat", "user": "mallory\nINFO forged line from the user",
        "messages": [{"role": "user", "content": "hi"}]});
    let forged_model = json!({"model": "gpt\r\nINFO forged line from the model",
        "messages": [{"role": "user", "content": "hi"}]});
    let huge_model = json!({"model": "m".repeat(1_048_576), "messages": [{"role": "user", "content": "hi"}]});
    for (body, status) in [(forged_user, 200), (forged_model, 404), (huge_model, 404)] {
        let response = client().post(binary.url("/v1/chat/completions")).json(&body).send().await.expect("send");
        assert_eq!(response.status().as_u16(), status);
        let text = response.text().await.expect("text");
        assert!(text.len() < 4096, "the error echoes the whole value: {} bytes", text.len());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    binary.signal("TERM");
    assert!(binary.wait_exit(Duration::from_secs(30)).await.success());
    let log = binary.stderr();
    assert!(log.contains("mallory\\nINFO forged line"), "the user is logged, escaped:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with("INFO forged"), "a forged line:\n{log}");
        if line.contains("forged") || line.contains("mmmmmmmm") {
            assert!(line.contains("request{id="), "a client value outside its request's span: {line}");
        }
        assert!(line.len() < 4096, "a {}-byte log line", line.len());
    }
}

async fn post(binary: &Binary, model: &str, text: &str) -> (u16, String) {
    post_chat_owned(binary.url("/v1/chat/completions"), chat_body(model, text, false)).await
}

/// Reload without restart: SIGHUP (and `POST /admin/reload` with ADMIN_API_KEY) picks up a
/// changed `.env` for new requests while requests keep being answered; a stream that began
/// before finishes on what it started with; a broken configuration is refused with the
/// startup report and the running one stays; a setting only a restart can change is named.
#[tokio::test]
async fn reload_applies_a_valid_change_under_load_and_refuses_an_invalid_one() {
    let mock = MockDify::start(vec![
        MockApp::new("app-alpha-key-0000001", "Alpha", "chat"),
        MockApp::new("app-beta-key-00000002", "Beta", "chat"),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join(".env");
    let write_env = |models: &str, extra: &str| {
        let text = format!(
            "DIFY_API_BASE={}\nMODEL_CONFIG='{models}'\nADMIN_API_KEY=admin-key-0123456789\n{extra}",
            mock.base_url()
        );
        std::fs::write(&env_file, text).expect("write .env");
    };
    write_env(r#"{"alpha":"app-alpha-key-0000001"}"#, "LOG_LEVEL=info\n");
    let mut binary = Binary::start(dir.path(), &[]);
    binary.wait_healthy().await;

    // Load for the whole test: one request after another, every one must succeed.
    let url = binary.url("/v1/chat/completions");
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (url, running) = (url.clone(), running.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let body = chat_body("alpha", "under load", ok % 2 == 0);
                match client().post(&url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.text().await {
                            Ok(text) if status == 200 && !text.contains("\"error\"") => ok += 1,
                            _ => failed.push(status),
                        }
                    }
                    Err(e) => failed.push(e.status().map_or(0, |s| s.as_u16())),
                }
            }
            (ok, failed)
        })
    };
    // A slow stream that begins before the reload.
    let mut early =
        client().post(&url).json(&chat_body("alpha", "[[mock:slow]] begun before", true)).send().await.expect("send");
    assert_eq!(early.status(), 200);
    let _ = read_until(&mut early, "Echo").await;

    // A valid change: a second model, and the log level.
    write_env(r#"{"alpha":"app-alpha-key-0000001","beta":"app-beta-key-00000002"}"#, "LOG_LEVEL=debug\n");
    binary.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let models: serde_json::Value =
            client().get(binary.url("/v1/models")).send().await.expect("models").json().await.expect("json");
        if models["data"].as_array().is_some_and(|d| d.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the reload did not add beta: {}", binary.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(&binary, "beta", "new model").await;
    assert_eq!(status, 200);
    let rest = read_until(&mut early, "[DONE]").await;
    assert!(!rest.contains("\"error\""), "the stream begun before the reload was cut: {rest}");

    // A broken configuration is refused, with the startup report; beta is still served.
    write_env(r#"{"alpha": "#, "");
    let refused =
        client().post(binary.url("/admin/reload")).bearer_auth("admin-key-0123456789").send().await.expect("reload");
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["reloaded"], false);
    assert!(body["error"].as_str().unwrap_or("").contains("Configuration validation failed"), "{body}");
    assert!(body["problems"][0]["fix"].as_str().unwrap_or("").contains("single quotes"), "{body}");
    let (status, _) = post(&binary, "beta", "still served").await;
    assert_eq!(status, 200, "the running configuration stays");

    // A setting only a restart can change is named; a wrong key is a 401.
    write_env(
        r#"{"alpha":"app-alpha-key-0000001","beta":"app-beta-key-00000002"}"#,
        "LOG_LEVEL=debug\nLOG_FORMAT=json\n",
    );
    let restart =
        client().post(binary.url("/admin/reload")).bearer_auth("admin-key-0123456789").send().await.expect("reload");
    assert_eq!(restart.status(), 409);
    let body: serde_json::Value = restart.json().await.expect("json");
    assert_eq!(body["restart_required"], json!(["LOG_FORMAT"]), "{body}");
    let wrong = client().post(binary.url("/admin/reload")).bearer_auth("not-the-key").send().await.expect("reload");
    assert_eq!(wrong.status(), 401);

    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load");
    assert!(ok > 0 && failed.is_empty(), "{ok} answered, failed: {failed:?}");
    let log = binary.stderr();
    assert!(log.contains("configuration reloaded (SIGHUP): MODEL_CONFIG"), "{log}");
    assert!(log.contains("LOG_LEVEL: info → debug"), "{log}");
    assert!(log.contains("reload (POST /admin/reload) refused"), "{log}");
    assert!(
        !log.contains("app-beta-key-00000002") && !log.contains("admin-key-0123456789"),
        "a secret in the log: {log}"
    );
}
