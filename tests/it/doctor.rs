//! `opendify doctor`, run as a user runs it: the real binary, in a temporary directory with
//! its own `.env`, against the in-process mock Dify (and an in-process opendify) over real
//! HTTP. Each check's pass and fail path, the JSON schema, exit codes, and the human output
//! compared with insta snapshots in `tests/doctor_snapshots/` (times, ports and the
//! temporary directory replaced by `[TIME]`, `[PORT]`, `[PATH]`; review changes with
//! `cargo insta review`, or accept them with `INSTA_UPDATE=always cargo test --test it doctor`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use mock_dify::{MockApp, MockDify};
use serde_json::{Value, json};

const CHAT_KEY: &str = "app-doctor-chat-0001";
const FLOW_KEY: &str = "app-doctor-flow-0002";
const WORKFLOW_KEY: &str = "app-doctor-wf-00003";

async fn mock() -> MockDify {
    MockDify::start(vec![
        MockApp::new(CHAT_KEY, "Doctor Chat", "chat"),
        MockApp::new(FLOW_KEY, "Doctor Flow", "advanced-chat"),
        MockApp::new(WORKFLOW_KEY, "Doctor Workflow", "workflow"),
    ])
    .await
    .expect("start mock Dify")
}

fn models() -> String {
    format!(r#"{{"chat":"{CHAT_KEY}","flow":"{FLOW_KEY}","workflow":"{WORKFLOW_KEY}"}}"#)
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A user's working directory: a `.env`, and the doctor run in it with a clean environment.
struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    fn check(&self, id: &str) -> Value {
        let doc = self.json();
        doc["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or_else(|| panic!("no check {id} in {doc:#}"))
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

impl Setup {
    fn new(dotenv: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), dotenv).expect("write .env");
        Setup { dir, env: Vec::new() }
    }

    /// A working setup against `mock`, on a free port, with the store in `data/`.
    fn healthy(mock: &MockDify) -> Setup {
        Setup::new(&format!(
            "DIFY_API_BASE={}\nMODEL_CONFIG='{}'\nSERVER_PORT={}\n",
            mock.base_url(),
            models(),
            free_port()
        ))
    }

    fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn doctor(&self, args: &[&str]) -> Run {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_opendify"));
        command.arg("doctor").args(args).current_dir(self.dir.path()).env_clear().envs(self.env.iter().cloned());
        let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run opendify");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The JSON schema documented in the README, checked key by key.

const CHECK_IDS: [&str; 6] = ["check-config", "check-port", "inspect-mappings", "ping-dify", "test-key", "test-stream"];

fn detail_keys(id: &str) -> &'static [&'static str] {
    match id {
        "check-config" => {
            &["env_file", "settings", "problems", "warnings", "models", "conversation_store", "data_dir", "log_dir"]
        }
        "check-port" => &["host", "port", "address", "bindable", "error", "holders", "opendify_serving", "free_port"],
        "inspect-mappings" => &[
            "store",
            "backend",
            "exists",
            "file",
            "reachable",
            "schema_ok",
            "writable",
            "ttl_days",
            "counts",
            "pruned",
            "mappings",
            "verified",
            "error",
        ],
        "ping-dify" => {
            &["base", "scheme", "host", "port", "proxy", "dns", "tcp", "tls", "http", "failed_layer", "reachable"]
        }
        "test-key" => &["live", "models"],
        "test-stream" => &[
            "model",
            "via",
            "api",
            "user_sent",
            "user_resolved",
            "time_to_headers_ms",
            "time_to_first_event_ms",
            "events",
            "keep_alives",
            "gaps_ms",
            "total_ms",
            "tokens_per_s",
            "usage",
            "ended",
            "finish_reason",
            "answer_chars",
            "error",
        ],
        other => panic!("unknown check {other}"),
    }
}

fn keys(value: &Value) -> Vec<&str> {
    value.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn is_string_or_null(value: &Value) -> bool {
    value.is_string() || value.is_null()
}

/// Validates a `doctor --json` document against the documented schema.
fn assert_schema(doc: &Value) {
    assert_eq!(keys(doc), ["version", "ok", "strict", "checks", "summary"], "{doc:#}");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["ok"].is_boolean() && doc["strict"].is_boolean());
    let checks = doc["checks"].as_array().expect("checks is an array");
    let mut counted = json!({"passed": 0, "warnings": 0, "failed": 0, "skipped": 0});
    for check in checks {
        assert_eq!(
            keys(check),
            ["id", "status", "summary", "duration_ms", "details", "reason", "fix", "issues"],
            "{check:#}"
        );
        let id = check["id"].as_str().expect("id");
        assert!(CHECK_IDS.contains(&id), "unknown id {id}");
        assert!(check["summary"].as_str().is_some_and(|s| !s.is_empty()), "{check:#}");
        assert!(check["duration_ms"].is_u64(), "{check:#}");
        assert!(is_string_or_null(&check["reason"]) && is_string_or_null(&check["fix"]), "{check:#}");
        let details = check["details"].as_object().expect("details is an object");
        let status = check["status"].as_str().expect("status");
        if !details.is_empty() {
            assert_eq!(keys(&check["details"]), detail_keys(id), "details of {id}");
        } else {
            assert!(status != "ok", "only a check that did not run or finish may have empty details: {check:#}");
        }
        let issues = check["issues"].as_array().expect("issues is an array");
        for issue in issues {
            assert_eq!(keys(issue), ["level", "reason", "fix"], "{issue:#}");
            assert!(issue["level"] == "warn" || issue["level"] == "fail");
            assert!(issue["reason"].is_string() && is_string_or_null(&issue["fix"]));
        }
        let worst = if issues.iter().any(|i| i["level"] == "fail") {
            "fail"
        } else if issues.is_empty() {
            "ok"
        } else {
            "warn"
        };
        match status {
            "skip" => assert!(issues.is_empty()),
            other => assert_eq!(other, worst, "status follows the worst issue: {check:#}"),
        }
        assert_eq!(check["reason"].is_null(), issues.is_empty(), "{check:#}");
        let slot = match status {
            "ok" => "passed",
            "warn" => "warnings",
            "fail" => "failed",
            "skip" => "skipped",
            other => panic!("status {other}"),
        };
        counted[slot] = json!(counted[slot].as_u64().unwrap_or(0) + 1);
    }
    assert_eq!(doc["summary"], counted);
    let failed = counted["failed"].as_u64().unwrap_or(0);
    let warnings = counted["warnings"].as_u64().unwrap_or(0);
    assert_eq!(doc["ok"], failed == 0 && !(doc["strict"] == true && warnings > 0));
}

// ---------------------------------------------------------------------------------------
// Snapshots of the human output.

/// Every duration (`12ms`, `1.5s`, `0.3 ms`) becomes `[TIME]`; other numbers stay.
const TIME_FILTER: (&str, &str) = (r"\b\d[\d.]*(?: ms|ms|s\b)", "[TIME]");

/// `text` as a regular expression that matches it literally.
fn literal(text: &str) -> String {
    let mut pattern = String::new();
    for c in text.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// Compares the human output with the insta snapshot `tests/doctor_snapshots/NAME.snap`,
/// after replacing each `(port, placeholder)`, the temporary directory (`[PATH]`) and
/// every duration (`[TIME]`).
fn assert_human_snapshot(name: &str, text: &str, setup: &Setup, ports: &[(&str, &str)]) {
    let mut patterns: Vec<(String, &str)> =
        ports.iter().map(|(port, placeholder)| (format!(r"\b{}\b", literal(port)), *placeholder)).collect();
    patterns.push((literal(&setup.path().display().to_string()), "[PATH]"));
    patterns.push((TIME_FILTER.0.to_string(), TIME_FILTER.1));
    let filters: Vec<(&str, &str)> =
        patterns.iter().map(|(pattern, placeholder)| (pattern.as_str(), *placeholder)).collect();
    insta::with_settings!({
        filters => filters,
        snapshot_path => "doctor_snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn time_redaction_keeps_other_numbers() {
    insta::with_settings!({filters => vec![TIME_FILTER]}, {
        insta::assert_snapshot!(
            "✓ ping-dify 127.0.0.1:5000, TCP 0.3 ms, HTTP 404 in 12ms (1.5s) 9 events 3 models",
            @"✓ ping-dify 127.0.0.1:5000, TCP [TIME], HTTP 404 in [TIME] ([TIME]) 9 events 3 models"
        );
    });
}

// ---------------------------------------------------------------------------------------
// check-config

#[tokio::test]
async fn broken_env_fails_check_config_with_each_fix_and_skips_the_rest() {
    let setup = Setup::new("MODEL_CONFIG={\"chat\": \"app-abcdefghijklmnop\"\nSERVER_PORT=80000\n");
    let run = setup.doctor(&[]).await;
    run.assert_code(1);
    assert!(!run.stdout.contains("abcdefghijklmnop"), "secret leaked:\n{}", run.stdout);
    assert_human_snapshot("broken_env", &run.stdout, &setup, &[]);

    let run = setup.doctor(&["--json"]).await;
    run.assert_code(1);
    let doc = run.json();
    assert_schema(&doc);
    let config = run.check("check-config");
    assert_eq!(config["status"], "fail");
    let reasons: Vec<&str> =
        config["issues"].as_array().unwrap().iter().map(|i| i["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"DIFY_API_BASE is not set or empty"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("has a line that cannot be parsed")), "{reasons:?}");
    assert!(reasons.contains(&"No valid models configured in MODEL_CONFIG"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("SERVER_PORT 80000 is out of range")), "{reasons:?}");
    assert_eq!(config["details"]["env_file"]["state"], "loaded");
    for id in ["check-port", "inspect-mappings", "ping-dify", "test-key", "test-stream"] {
        assert_eq!(run.check(id)["status"], "skip", "{id}");
    }
    assert_eq!(doc["summary"], json!({"passed": 0, "warnings": 0, "failed": 1, "skipped": 5}));
}

#[tokio::test]
async fn check_config_shows_sources_masks_keys_and_warns_about_prefixes() {
    let mock = mock().await;
    let setup = Setup::new(&format!(
        "DIFY_API_BASE={}\nMODEL_CONFIG='{{\"chat\":\"{CHAT_KEY}\",\"old\":\"sk-notadifykey99\"}}'\n",
        mock.base_url()
    ))
    .env("SERVER_PORT", "6123");
    let run = setup.doctor(&["check-config"]).await;
    run.assert_code(0);
    assert!(run.stdout.starts_with("! check-config"), "{}", run.stdout);
    assert!(run.stdout.contains("does not start with \"app-\""), "{}", run.stdout);
    assert!(run.stdout.contains("= 6123  [environment]"), "{}", run.stdout);
    assert!(run.stdout.contains("[.env file]"), "{}", run.stdout);
    assert!(!run.stdout.contains(CHAT_KEY) && !run.stdout.contains("notadifykey"), "secret leaked:\n{}", run.stdout);
    assert!(run.stdout.contains("app-do…01"), "{}", run.stdout);
    let strict = setup.doctor(&["check-config", "--strict"]).await;
    strict.assert_code(1);
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_written_fails_check_config() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    // A file where the data directory should be: nobody, not even root, can write in it.
    std::fs::write(setup.path().join("data"), "not a directory").expect("write");
    let run = setup.doctor(&["check-config", "--json"]).await;
    run.assert_code(1);
    let check = run.check("check-config");
    assert_eq!(check["details"]["data_dir"]["writable"], false);
    assert!(check["reason"].as_str().unwrap().contains("data directory"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("CONVERSATION_STORE"), "{check:#}");
}

// ---------------------------------------------------------------------------------------
// A healthy setup: every check passes.

#[tokio::test]
async fn a_healthy_setup_passes_every_check() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&[]).await;
    run.assert_code(0);
    let port = mock.addr.port().to_string();
    let server_port = std::fs::read_to_string(setup.path().join(".env"))
        .expect(".env")
        .lines()
        .find_map(|l| l.strip_prefix("SERVER_PORT=").map(str::to_string))
        .expect("port");
    assert_human_snapshot("healthy", &run.stdout, &setup, &[(&port, "[DIFY_PORT]"), (&server_port, "[PORT]")]);

    let run = setup.doctor(&["--json"]).await;
    run.assert_code(0);
    let doc = run.json();
    assert_schema(&doc);
    assert_eq!(doc["summary"], json!({"passed": 6, "warnings": 0, "failed": 0, "skipped": 0}));
    let ids: Vec<&str> = doc["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, CHECK_IDS, "fast checks first");
    assert!(!run.stdout.contains(CHAT_KEY), "secret leaked");
}

#[tokio::test]
async fn only_runs_the_named_checks_and_list_names_them_all() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["--only", "test-key,check-config", "--json"]).await;
    run.assert_code(0);
    let doc = run.json();
    assert_schema(&doc);
    let ids: Vec<&str> = doc["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["check-config", "test-key"], "in run order, not argument order");

    let list = setup.doctor(&["--list"]).await;
    list.assert_code(0);
    let names: Vec<&str> = list.stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, CHECK_IDS);
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let setup = Setup::new("");
    for args in [
        &["--only", "nope"][..],
        &["--only", "check-config", "check-port"],
        &["ping-dify", "--dns", "not-an-ip"],
        &["ping-dify", "--count", "0"],
        &["test-stream", "--via", "ftp://x"],
        &["--timeout", "-1"],
        &["--network-errors", "maybe"],
    ] {
        let run = setup.doctor(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(!run.stderr.is_empty(), "{args:?} says why");
    }
    let help = setup.doctor(&["--help"]).await;
    help.assert_code(0);
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("2  the doctor could not run"));
}

// ---------------------------------------------------------------------------------------
// check-port

#[tokio::test]
async fn a_port_held_by_another_process_names_its_pid_and_a_free_port() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let setup = Setup::new(&format!("DIFY_API_BASE=http://127.0.0.1:9/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n"));
    let run = setup.doctor(&["check-port", "--port", &port.to_string(), "--json"]).await;
    run.assert_code(1);
    let check = run.check("check-port");
    assert_schema(&run.json());
    assert_eq!(check["status"], "fail");
    let details = &check["details"];
    assert_eq!(details["bindable"], false);
    assert_eq!(details["opendify_serving"], false);
    if cfg!(target_os = "linux") {
        assert_eq!(details["holders"][0]["pid"], std::process::id(), "{check:#}");
        assert!(check["fix"].as_str().unwrap().contains(&format!("kill {}", std::process::id())), "{check:#}");
    }
    let free = details["free_port"].as_u64().expect("a free port is suggested");
    assert!(check["fix"].as_str().unwrap().contains(&format!("SERVER_PORT={free}")), "{check:#}");

    // People see the PID too.
    let human = setup.doctor(&["check-port", "--port", &port.to_string()]).await;
    human.assert_code(1);
    assert!(human.stdout.contains(&format!("PID {}", std::process::id())), "{}", human.stdout);
    drop(holder);
}

#[tokio::test]
async fn a_running_opendify_on_the_port_is_only_a_warning() {
    let mock = mock().await;
    let gateway = crate::common::gateway_with(&mock.base_url(), &models(), &[]).await;
    let setup = Setup::healthy(&mock).env("SERVER_PORT", &gateway.addr.port().to_string());
    let run = setup.doctor(&["check-port", "--json"]).await;
    run.assert_code(0);
    let check = run.check("check-port");
    assert_eq!(check["status"], "warn");
    assert_eq!(check["details"]["opendify_serving"], true);
    assert!(check["reason"].as_str().unwrap().contains("opendify is already serving"), "{check:#}");
    setup.doctor(&["check-port", "--strict"]).await.assert_code(1);
}

#[tokio::test]
async fn a_free_port_passes() {
    let setup = Setup::new(&format!("DIFY_API_BASE=http://127.0.0.1:9/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n"));
    let port = free_port();
    let run = setup.doctor(&["check-port", "--port", &port.to_string()]).await;
    run.assert_code(0);
    assert!(run.stdout.starts_with(&format!("✓ check-port       127.0.0.1:{port} is free")), "{}", run.stdout);
}

// ---------------------------------------------------------------------------------------
// ping-dify

/// A DNS server on 127.0.0.1 answering every A question with `answer`, or NXDOMAIN.
async fn fake_dns(answer: Option<Ipv4Addr>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = dns_reply(&buf[..n], answer) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

fn dns_reply(query: &[u8], answer: Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
    let question = query.get(12..end + 5)?;
    let give = answer.is_some() && qtype == 1;
    let mut reply = vec![query[0], query[1], 0x84 | (query[2] & 0x01), if answer.is_some() { 0x80 } else { 0x83 }];
    reply.extend_from_slice(&[0, 1, 0, u8::from(give), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let (true, Some(ip)) = (give, answer) {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

#[tokio::test]
async fn ping_dify_passes_layer_by_layer_and_repeats_with_count() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["ping-dify", "--count", "3", "--json"]).await;
    run.assert_code(0);
    let check = run.check("ping-dify");
    assert_schema(&run.json());
    let details = &check["details"];
    assert_eq!(details["reachable"], true);
    assert_eq!(details["failed_layer"], Value::Null);
    assert_eq!(details["http"]["status"], 404, "Dify's base URL answers 404, which counts as reachable");
    assert_eq!(details["http"]["sent"], 3);
    assert_eq!(details["http"]["received"], 3);
    assert_eq!(details["tcp"][0]["sent"], 3);
    assert_eq!(details["tcp"][0]["loss_pct"], 0.0);
    assert_eq!(details["tls"], Value::Null, "http:// has no TLS");
    let human = setup.doctor(&["ping-dify", "--count", "2"]).await;
    assert!(human.stdout.contains("min/avg/max"), "{}", human.stdout);
    assert!(human.stdout.contains("tls: not used (http://)"), "{}", human.stdout);
}

#[tokio::test]
async fn an_unresolvable_host_fails_at_the_dns_layer() {
    let nxdomain = fake_dns(None).await;
    let setup = Setup::new(&format!(
        "DIFY_API_BASE=http://dify.opendify-doctor-test.invalid/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n"
    ));
    let run = setup.doctor(&["ping-dify", "--timeout", "2", "--dns", &nxdomain.to_string(), "--json"]).await;
    run.assert_code(1);
    assert_schema(&run.json());
    let check = run.check("ping-dify");
    assert_eq!(check["details"]["failed_layer"], "dns", "{check:#}");
    assert_eq!(check["details"]["reachable"], false);
    assert!(check["reason"].as_str().unwrap().starts_with("DNS:"), "{check:#}");
    let compare = &check["details"]["dns"][1];
    assert_eq!(compare["resolver"], "--dns");
    assert!(compare["error"].as_str().unwrap().contains("NXDOMAIN"), "{compare:#}");
    assert!(check["details"]["tcp"].as_array().unwrap().is_empty(), "no TCP after DNS failed");

    // Flaky CI: network failures become warnings, the exit code 0.
    let soft = setup.doctor(&["ping-dify", "--timeout", "2", "--network-errors", "warn", "--json"]).await;
    soft.assert_code(0);
    assert_eq!(soft.check("ping-dify")["status"], "warn");
    assert_eq!(soft.json()["ok"], true);
}

#[tokio::test]
async fn when_only_another_resolver_knows_the_host_the_fix_is_dockers_dns_setting() {
    let answering = fake_dns(Some(Ipv4Addr::LOCALHOST)).await;
    // `.test` is a real query (`.invalid` never leaves the resolver); no public DNS has it.
    let setup = Setup::new(&format!(
        "DIFY_API_BASE=http://dify.opendify-doctor.test/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n"
    ));
    let run = setup.doctor(&["ping-dify", "--timeout", "2", "--dns", &answering.to_string(), "--json"]).await;
    run.assert_code(1);
    let check = run.check("ping-dify");
    assert_eq!(check["details"]["dns"][1]["addresses"], json!(["127.0.0.1"]), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("dns: [\"127.0.0.1\"]"), "{check:#}");
}

#[tokio::test]
async fn a_closed_port_fails_at_the_tcp_layer() {
    let port = free_port();
    let setup =
        Setup::new(&format!("DIFY_API_BASE=http://127.0.0.1:{port}/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n"));
    let run = setup.doctor(&["ping-dify", "--json"]).await;
    run.assert_code(1);
    let check = run.check("ping-dify");
    assert_eq!(check["details"]["failed_layer"], "tcp", "{check:#}");
    assert!(check["reason"].as_str().unwrap().contains("connection refused"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("nothing listens"), "{check:#}");
}

#[tokio::test]
async fn https_to_a_plain_http_port_fails_at_the_tls_layer_with_the_scheme_fix() {
    let mock = mock().await;
    let setup = Setup::new(&format!(
        "DIFY_API_BASE=https://127.0.0.1:{}/v1\nMODEL_CONFIG='{{\"m\":\"{CHAT_KEY}\"}}'\n",
        mock.addr.port()
    ));
    let run = setup.doctor(&["ping-dify", "--json"]).await;
    run.assert_code(1);
    let check = run.check("ping-dify");
    assert_eq!(check["details"]["failed_layer"], "tls", "{check:#}");
    assert_eq!(check["details"]["tcp"][0]["received"], 1, "TCP itself works");
    let fix = check["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("DIFY_API_BASE=http://127.0.0.1:{}/v1", mock.addr.port())), "{fix}");
}

#[tokio::test]
async fn proxy_variables_are_noticed_with_credentials_masked() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock)
        .env("HTTP_PROXY", "http://user:hunter2@127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost");
    let run = setup.doctor(&["ping-dify", "--json"]).await;
    run.assert_code(0);
    let proxy = &run.check("ping-dify")["details"]["proxy"];
    assert_eq!(proxy["variables"][0], json!({"name": "HTTP_PROXY", "value": "http://***@127.0.0.1:9"}));
    assert_eq!(proxy["used"], Value::Null, "NO_PROXY exempts the mock");
    assert!(!run.stdout.contains("hunter2"));
}

// ---------------------------------------------------------------------------------------
// test-key

#[tokio::test]
async fn test_key_describes_each_app_and_names_a_rejected_key() {
    let mock = mock().await;
    let setup = Setup::new(&format!(
        "DIFY_API_BASE={}\nMODEL_CONFIG='{{\"chat\":\"{CHAT_KEY}\",\"workflow\":\"{WORKFLOW_KEY}\",\"stale\":\"app-revoked-key-0009\"}}'\n",
        mock.base_url()
    ));
    let run = setup.doctor(&["test-key", "--json"]).await;
    run.assert_code(1);
    assert_schema(&run.json());
    let check = run.check("test-key");
    let models = check["details"]["models"].as_array().unwrap();
    let by_name = |name: &str| models.iter().find(|m| m["model"] == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(by_name("chat")["ok"], true);
    assert_eq!(by_name("chat")["app_name"], "Doctor Chat");
    assert_eq!(by_name("chat")["mode"], "chat");
    assert_eq!(by_name("chat")["mode_source"], "info");
    assert_eq!(by_name("chat")["file_upload"], true);
    assert_eq!(by_name("workflow")["input_variable"], "question");
    assert_eq!(by_name("stale")["ok"], false);
    assert_eq!(by_name("stale")["error_kind"], "auth");
    assert_eq!(by_name("stale")["key"], "app-re…09");
    assert!(check["reason"].as_str().unwrap().contains("rejected the key of model `stale`"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("API Access"), "{check:#}");
    assert!(!run.stdout.contains("app-revoked-key-0009"), "secret leaked");
    assert!(mock.generations().is_empty(), "test-key is read-only without --live");

    // Named models only; an unknown name is a failure.
    let one = setup.doctor(&["test-key", "chat"]).await;
    one.assert_code(0);
    assert!(one.stdout.starts_with("✓ test-key         1 key valid"), "{}", one.stdout);
    let unknown = setup.doctor(&["test-key", "gpt-5"]).await;
    unknown.assert_code(1);
    assert!(unknown.stdout.contains("no model named `gpt-5`"), "{}", unknown.stdout);
}

#[tokio::test]
async fn test_key_live_sends_one_message_as_the_doctor_user() {
    let mock = mock().await;
    let setup = Setup::new(&format!("DIFY_API_BASE={}\nMODEL_CONFIG='{{\"chat\":\"{CHAT_KEY}\"}}'\n", mock.base_url()));
    let run = setup.doctor(&["test-key", "--live", "--json"]).await;
    run.assert_code(0);
    let check = run.check("test-key");
    assert_eq!(check["details"]["live"], true);
    assert_eq!(check["details"]["models"][0]["live"]["ok"], true);
    assert!(check["summary"].as_str().unwrap().contains("one live message"), "{check:#}");
    let sent = mock.generations();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["user"], "opendify-doctor");
}

#[tokio::test]
async fn an_unreachable_dify_is_one_network_problem_not_one_per_model() {
    let port = free_port();
    let setup = Setup::new(&format!("DIFY_API_BASE=http://127.0.0.1:{port}/v1\nMODEL_CONFIG='{}'\n", models()));
    let run = setup.doctor(&["test-key", "--json"]).await;
    run.assert_code(1);
    let check = run.check("test-key");
    assert_eq!(check["issues"].as_array().unwrap().len(), 1, "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("ping-dify"), "{check:#}");
    let soft = setup.doctor(&["test-key", "--network-errors=warn"]).await;
    soft.assert_code(0);

    // In a full run, the checks after a failed ping-dify do not repeat it.
    let full = setup.doctor(&["--only", "ping-dify,test-key,test-stream", "--json"]).await;
    full.assert_code(1);
    assert_eq!(full.check("test-key")["status"], "skip");
    assert_eq!(full.check("test-stream")["status"], "skip");
}

// ---------------------------------------------------------------------------------------
// test-stream

#[tokio::test]
async fn test_stream_times_a_stream_that_ends_properly() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["test-stream", "flow", "--json"]).await;
    run.assert_code(0);
    let check = run.check("test-stream");
    let details = &check["details"];
    assert_eq!(details["ended"], "finished");
    assert_eq!(details["finish_reason"], "stop");
    assert!(details["events"].as_u64().unwrap() > 3, "{details:#}");
    assert!(details["time_to_first_event_ms"].is_number());
    assert!(details["gaps_ms"]["p95"].is_number());
    assert_eq!(details["usage"]["prompt_tokens"], 10);
    assert!(details["answer_chars"].as_u64().unwrap() > 0);
    let sent = mock.generations();
    assert_eq!(sent[0].body["user"], "opendify-doctor");
    assert_eq!(sent[0].body["response_mode"], "streaming");
}

#[tokio::test]
async fn a_stream_cut_midway_is_named_as_cut() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["test-stream", "chat", "--message", "[[mock:cut]] hello there", "--json"]).await;
    run.assert_code(1);
    assert_schema(&run.json());
    let check = run.check("test-stream");
    assert_eq!(check["details"]["ended"], "cut", "{check:#}");
    assert!(check["reason"].as_str().unwrap().contains("the stream was cut after"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("proxy_read_timeout"), "{check:#}");

    let error = setup.doctor(&["test-stream", "chat", "--message", "[[mock:error-mid]] hi", "--json"]).await;
    error.assert_code(1);
    assert_eq!(error.check("test-stream")["details"]["ended"], "error");
}

#[tokio::test]
async fn test_stream_via_opendify_checks_which_user_it_resolved() {
    let mock = mock().await;
    let gateway = crate::common::gateway_with(&mock.base_url(), &models(), &[]).await;
    let via = format!("http://{}", gateway.addr);
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["test-stream", "--via", &via, "--json"]).await;
    run.assert_code(0);
    let check = run.check("test-stream");
    assert_schema(&run.json());
    let details = &check["details"];
    assert_eq!(details["model"], "chat", "the first model the server lists");
    assert_eq!(details["user_resolved"], "opendify-doctor");
    assert_eq!(details["ended"], "finished");
    assert!(details["usage"]["total_tokens"].as_u64().unwrap() > 0, "{details:#}");
    assert_eq!(mock.generations()[0].body["user"], "opendify-doctor");

    // The guide's problem 8: the server does not read Open WebUI's header.
    let deaf =
        crate::common::gateway_with(&mock.base_url(), &models(), &[("USER_ID_HEADER", "x-some-other-header")]).await;
    let run = setup.doctor(&["test-stream", "--via", &format!("http://{}", deaf.addr), "--json"]).await;
    run.assert_code(1);
    let check = run.check("test-stream");
    assert_eq!(check["details"]["user_resolved"], "default_user");
    assert!(check["reason"].as_str().unwrap().contains("everyone is default_user"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("ENABLE_FORWARD_USER_INFO_HEADERS"), "{check:#}");

    // A cut stream through opendify is still a cut stream.
    let cut = setup.doctor(&["test-stream", "chat", "--via", &via, "--message", "[[mock:cut]] hi", "--json"]).await;
    cut.assert_code(1);
    assert_eq!(cut.check("test-stream")["details"]["ended"], "cut");

    // Nothing listening there.
    let nobody = setup.doctor(&["test-stream", "chat", "--via", &format!("http://127.0.0.1:{}", free_port())]).await;
    nobody.assert_code(1);
    assert!(nobody.stdout.contains("cannot reach opendify"), "{}", nobody.stdout);
}

/// `--api responses|messages` sends the request in that API through opendify and reads the
/// stream as that API's SDK does; without `--via` it goes to the configured SERVER_PORT.
#[tokio::test]
async fn test_stream_checks_the_responses_and_messages_apis_end_to_end() {
    let mock = mock().await;
    let gateway = crate::common::gateway_with(&mock.base_url(), &models(), &[]).await;
    let via = format!("http://{}", gateway.addr);
    let setup = Setup::healthy(&mock);
    for api in ["responses", "messages"] {
        let run = setup.doctor(&["test-stream", "chat", "--api", api, "--via", &via, "--json"]).await;
        run.assert_code(0);
        assert_schema(&run.json());
        let check = run.check("test-stream");
        let details = &check["details"];
        assert_eq!(details["api"], api);
        assert_eq!(details["ended"], "finished", "{check:#}");
        assert_eq!(details["user_resolved"], "opendify-doctor", "{check:#}");
        assert!(details["answer_chars"].as_u64().unwrap() > 0, "{details:#}");
        let usage = &details["usage"];
        assert!(
            usage["prompt_tokens"].as_u64().unwrap() > 0 && usage["completion_tokens"].as_u64().unwrap() > 0,
            "{details:#}"
        );
        let reason = if api == "messages" { "end_turn" } else { "completed" };
        assert_eq!(details["finish_reason"], reason, "{details:#}");
        assert!(check["summary"].as_str().unwrap().contains("ended properly"), "{check:#}");
    }
    let paths: Vec<String> = mock.generations().iter().map(|g| g.body["user"].to_string()).collect();
    assert_eq!(paths.len(), 2, "one Dify generation per API: {paths:?}");

    // Without --via: the opendify this configuration serves.
    let local = Setup::healthy(&mock).env("SERVER_PORT", &gateway.addr.port().to_string());
    let run = local.doctor(&["test-stream", "--api", "messages", "--json"]).await;
    run.assert_code(0);
    let check = run.check("test-stream");
    assert_eq!(check["details"]["ended"], "finished", "{check:#}");
    assert!(check["summary"].as_str().unwrap().contains("Anthropic Messages API"), "{check:#}");

    // A Dify error mid-stream is that API's error event, and named as one.
    for api in ["responses", "messages"] {
        let run = setup
            .doctor(&[
                "test-stream",
                "chat",
                "--api",
                api,
                "--via",
                &via,
                "--message",
                "[[mock:error-mid]] hi",
                "--json",
            ])
            .await;
        run.assert_code(1);
        let check = run.check("test-stream");
        assert_eq!(check["details"]["ended"], "error", "{api}: {check:#}");
        assert!(check["details"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{check:#}");
    }

    // A model the server does not have: Anthropic's not_found_error is read like OpenAI's.
    let run = setup.doctor(&["test-stream", "nope", "--api", "messages", "--via", &via, "--json"]).await;
    run.assert_code(1);
    assert!(run.check("test-stream")["reason"].as_str().unwrap().contains("HTTP 404"), "{}", run.stdout);
}

/// In JWT mode serve ignores plain user headers: the doctor signs its own token with the
/// configured secret instead of reporting "everyone is default_user" (a false alarm).
#[tokio::test]
async fn test_stream_via_a_jwt_mode_opendify_signs_its_own_token() {
    let mock = mock().await;
    let secret = "jwt-secret-for-the-doctor";
    let gateway = crate::common::gateway_with(&mock.base_url(), &models(), &[("OPENWEBUI_JWT_SECRET", secret)]).await;
    let via = format!("http://{}", gateway.addr);
    let setup = Setup::healthy(&mock).env("OPENWEBUI_JWT_SECRET", secret);
    let run = setup.doctor(&["test-stream", "chat", "--via", &via, "--json"]).await;
    run.assert_code(0);
    let check = run.check("test-stream");
    assert_eq!(check["details"]["user_resolved"], "opendify-doctor", "{check:#}");
    assert_eq!(check["issues"], json!([]), "no false alarm: {check:#}");
    assert_eq!(mock.generations()[0].body["user"], "opendify-doctor");

    // A doctor with another secret is told the secrets differ.
    let other = Setup::healthy(&mock).env("OPENWEBUI_JWT_SECRET", "a-different-secret");
    let run = other.doctor(&["test-stream", "chat", "--via", &via, "--json"]).await;
    run.assert_code(1);
    let check = run.check("test-stream");
    assert!(check["fix"].as_str().unwrap().contains("same secret"), "{check:#}");
}

// ---------------------------------------------------------------------------------------
// inspect-mappings

#[tokio::test]
async fn a_fresh_install_without_a_store_is_fine() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let run = setup.doctor(&["inspect-mappings", "--json"]).await;
    run.assert_code(0);
    let check = run.check("inspect-mappings");
    assert_eq!(check["status"], "ok");
    assert_eq!(check["details"]["exists"], false);
    assert!(check["summary"].as_str().unwrap().contains("0 conversations"), "{check:#}");
    assert!(!setup.path().join("data").exists(), "diagnosing creates nothing");
}

#[tokio::test]
async fn a_corrupt_store_fails_with_the_fix() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    std::fs::create_dir_all(setup.path().join("data")).expect("mkdir");
    std::fs::write(setup.path().join("data/conversations.db"), vec![0x5a; 8192]).expect("write");
    let run = setup.doctor(&["inspect-mappings", "--json"]).await;
    run.assert_code(1);
    assert_schema(&run.json());
    let check = run.check("inspect-mappings");
    assert!(check["reason"].as_str().unwrap().contains("corrupt"), "{check:#}");
    assert!(check["fix"].as_str().unwrap().contains("move the file aside"), "{check:#}");
}

#[tokio::test]
async fn an_unreadable_store_fails() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    // A directory where the database file should be cannot be opened by anyone.
    std::fs::create_dir_all(setup.path().join("data/conversations.db")).expect("mkdir");
    let run = setup.doctor(&["inspect-mappings", "--json"]).await;
    run.assert_code(1);
    let check = run.check("inspect-mappings");
    assert_eq!(check["status"], "fail");
    assert!(check["reason"].as_str().unwrap().contains("not a file"), "{check:#}");
}

#[tokio::test]
async fn an_unreachable_redis_store_is_a_network_failure() {
    let mock = mock().await;
    let setup =
        Setup::healthy(&mock).env("CONVERSATION_STORE", &format!("redis://:hunter2@127.0.0.1:{}/0", free_port()));
    let run = setup.doctor(&["inspect-mappings", "--json"]).await;
    run.assert_code(1);
    let check = run.check("inspect-mappings");
    assert_eq!(check["details"]["backend"], "redis");
    assert_eq!(check["details"]["reachable"], false);
    assert!(check["fix"].as_str().unwrap().contains("redis-cli"), "{check:#}");
    assert!(!run.stdout.contains("hunter2"), "password leaked:\n{}", run.stdout);
    setup.doctor(&["inspect-mappings", "--network-errors=warn"]).await.assert_code(0);
    for args in [&["--json"][..], &["check-config"], &["report"]] {
        let run = setup.doctor(args).await;
        assert!(!run.stdout.contains("hunter2"), "{args:?}: password leaked:\n{}", run.stdout);
    }
}

#[tokio::test]
async fn mappings_are_counted_filtered_verified_and_pruned() {
    let mock = mock().await;
    let setup = Setup::healthy(&mock);
    let store = setup.path().join("data/conversations.db");
    let store_text = store.display().to_string();
    let gateway =
        crate::common::gateway_with(&mock.base_url(), &models(), &[("CONVERSATION_STORE", store_text.as_str())]).await;
    for (user, chat) in [("alice", "chat-a"), ("bob", "chat-b")] {
        let result = crate::common::stream_chat(
            &gateway,
            &crate::common::chat_body("chat", "hello", true),
            &[("X-OpenWebUI-User-Id", user), ("X-OpenWebUI-Chat-Id", chat)],
        )
        .await;
        assert!(result.done, "{}", result.raw);
    }
    // The store commits in the background: wait until the turns are in the file the doctor
    // reads, rather than hoping the writer was quick enough.
    gateway.state.conversations.store().flush().await;
    drop(gateway);

    let run = setup.doctor(&["inspect-mappings", "--json"]).await;
    run.assert_code(0);
    assert_schema(&run.json());
    let details = run.check("inspect-mappings")["details"].clone();
    assert_eq!(details["backend"], "sqlite");
    assert_eq!(details["schema_ok"], true);
    assert_eq!(details["writable"], true);
    assert_eq!(details["counts"]["conversations"], 2);
    assert_eq!(details["counts"]["per_model"], json!([{"name": "chat", "conversations": 2}]));
    assert_eq!(details["mappings"].as_array().unwrap().len(), 2);

    let alice = setup.doctor(&["inspect-mappings", "--user", "alice", "--json"]).await;
    let mappings = alice.check("inspect-mappings")["details"]["mappings"].clone();
    assert_eq!(mappings.as_array().unwrap().len(), 1);
    assert_eq!(mappings[0]["chat_id"], "chat-a");
    let conversation = mappings[0]["conversation_id"].as_str().unwrap().to_string();

    // --verify asks Dify; a conversation deleted there is reported.
    mock.delete_conversation(&conversation);
    let verify = setup.doctor(&["inspect-mappings", "--verify", "--json"]).await;
    verify.assert_code(0);
    let check = verify.check("inspect-mappings");
    assert_eq!(check["status"], "warn");
    assert_eq!(check["details"]["verified"], json!({"checked": 2, "missing": 1, "unknown_app": 0, "errors": 0}));

    // Expired entries: counted, kept unless --prune, which says how many it removed.
    let conn = rusqlite::Connection::open(&store).expect("open store");
    conn.execute("UPDATE conversations SET updated_at = 1000 WHERE user = 'bob'", []).expect("age");
    drop(conn);
    let aged = setup.doctor(&["inspect-mappings", "--json"]).await;
    assert_eq!(aged.check("inspect-mappings")["details"]["counts"]["expired"], 1);
    let pruned = setup.doctor(&["inspect-mappings", "--prune", "--json"]).await;
    pruned.assert_code(0);
    assert_eq!(pruned.check("inspect-mappings")["details"]["pruned"], 1);
    let after = setup.doctor(&["inspect-mappings", "--json"]).await;
    assert_eq!(after.check("inspect-mappings")["details"]["counts"]["conversations"], 1);
}

// ---------------------------------------------------------------------------------------
// report

#[tokio::test]
async fn report_is_markdown_with_every_check_and_no_secret() {
    let mock = mock().await;
    let proxy_key = "sk-proxy-verysecret-77";
    let setup = Setup::new(&format!(
        "DIFY_API_BASE={}\nMODEL_CONFIG='{}'\nSERVER_PORT={}\nPROXY_API_KEYS={proxy_key}\nLOG_FILE=logs/app.log\n",
        mock.base_url(),
        models(),
        free_port()
    ));
    std::fs::create_dir_all(setup.path().join("logs")).expect("mkdir");
    let log: String = (1..=80).map(|i| format!("line {i} key={CHAT_KEY} auth=Bearer {proxy_key}\n")).collect();
    std::fs::write(setup.path().join("logs/app.log"), log).expect("write log");

    let run = setup.doctor(&["report", "--log-lines", "5"]).await;
    run.assert_code(0);
    let md = &run.stdout;
    for needle in ["## opendify doctor report", "### Checks", "### Configuration", "### Log (last 5 lines", "line 80"] {
        assert!(md.contains(needle), "missing {needle:?}:\n{md}");
    }
    assert!(!md.contains("line 75 "), "only the last 5 lines");
    for id in CHECK_IDS {
        assert!(md.contains(id), "{id} missing:\n{md}");
    }
    for secret in [CHAT_KEY, FLOW_KEY, WORKFLOW_KEY, proxy_key] {
        assert!(!md.contains(secret), "secret {secret} leaked:\n{md}");
    }
    assert!(md.contains("app-do…01"), "{md}");

    let out = setup.path().join("report.md");
    let written = setup.doctor(&["report", "--output", out.to_str().unwrap()]).await;
    written.assert_code(0);
    assert!(std::fs::read_to_string(&out).expect("report file").starts_with("## opendify doctor report"));
}
