//! The built binary: configuration failures print the original's report and exit 2, and a
//! good configuration serves (the README's quick start).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn opendify(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opendify"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .output()
        .expect("run opendify")
}

fn serve_with_env(env: &str) -> (Output, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".env"), env).expect("write .env");
    let out = opendify(dir.path(), &["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn missing_settings_abort_with_the_originals_report_and_exit_2() {
    let (out, stderr) = serve_with_env("");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim_start().starts_with("fix:")).collect();
    assert_eq!(
        lines,
        [
            "❌ Configuration validation failed:",
            "  - DIFY_API_BASE is not set or empty",
            "  - No valid models configured in MODEL_CONFIG",
            "❌ Startup aborted due to configuration errors",
        ]
    );
}

#[test]
fn each_bad_setting_gets_a_precise_line_and_a_fix() {
    let cases = [
        // The classic .env pitfall: unquoted JSON loses its double quotes.
        (
            "DIFY_API_BASE=http://x/v1\nMODEL_CONFIG={\"a\":\"app-1234567890\"}\n",
            "its double quotes are gone",
            "single quotes around the JSON",
        ),
        (
            "DIFY_API_BASE=http://x/v1\nMODEL_CONFIG={\"a\": \"app-1234567890\"}\n",
            ".env has a line that cannot be parsed",
            "wrap JSON in single quotes",
        ),
        (
            "DIFY_API_BASE=http://x/v1\nMODEL_CONFIG='{\"a\":}'\n",
            "MODEL_CONFIG is not valid JSON: expected value at line 1 column 6",
            "single quotes",
        ),
        (
            "DIFY_API_BASE=http://x/v1\nMODEL_CONFIG='[\"app-x\"]'\n",
            "MODEL_CONFIG must be a JSON object",
            "single quotes",
        ),
        ("DIFY_API_BASE=http://x/v1\nMODEL_CONFIG='{\"a\":\"\"}'\n", "model \"a\" has an empty app key", "API Access"),
        (
            "DIFY_API_BASE=api.dify.ai\nMODEL_CONFIG='{\"a\":\"app-123456789\"}'\n",
            "DIFY_API_BASE must be an http:// or https:// URL",
            "https://api.dify.ai/v1",
        ),
        (
            "DIFY_API_BASE=http://x/v1\nMODEL_CONFIG='{\"a\":\"app-123456789\"}'\nSERVER_PORT=99999\n",
            "SERVER_PORT 99999 is out of range",
            "SERVER_PORT=5000",
        ),
    ];
    for (env, problem, fix) in cases {
        let (out, stderr) = serve_with_env(env);
        assert_eq!(out.status.code(), Some(2), "{env}: {stderr}");
        assert!(stderr.contains(problem), "{env}: expected {problem:?} in\n{stderr}");
        assert!(stderr.contains(fix), "{env}: expected fix {fix:?} in\n{stderr}");
        assert!(stderr.ends_with("❌ Startup aborted due to configuration errors\n"), "{stderr}");
    }
}

#[test]
fn keys_never_appear_whole_in_error_output() {
    let (_, stderr) = serve_with_env("DIFY_API_BASE=ftp://nope\nMODEL_CONFIG='{\"a\":\"sk-verysecretvalue123\"}'\n");
    assert!(!stderr.contains("verysecretvalue"), "{stderr}");
    assert!(stderr.contains("sk-ver…23"), "masked key shown: {stderr}");
}

#[test]
fn a_missing_env_file_named_on_the_command_line_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = opendify(dir.path(), &["serve", "--env-file", "nope.env"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Env file nope.env does not exist"));
}

#[test]
fn serve_starts_logs_its_models_and_answers_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    std::fs::write(
        dir.path().join(".env"),
        "DIFY_API_BASE=http://127.0.0.1:9/v1\nMODEL_CONFIG='{\"alpha\":\"app-aaaaaaaaaaaa\",\"beta\":\"app-bbbbbbbbbbbb\"}'\nCONNECT_TIMEOUT=1\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_opendify"))
        .args(["serve", "--port", &port.to_string()])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while !log.contains("listening on") && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    let health = std::net::TcpStream::connect(("127.0.0.1", port)).map(|mut s| {
        use std::io::{Read, Write};
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("Loaded 2 models: alpha, beta"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    assert!(!log.contains("aaaaaaaaaaaa"), "key leaked into the log: {log}");
    let health = health.expect("connect");
    assert!(health.contains("200 OK") && health.contains(r#"{"status":"ok"}"#), "{health}");
    assert!(dir.path().join("data").join("conversations.db").exists(), "the SQLite store is created on first start");
}
