//! Every setting opendify has, where each value came from, and how it is validated.
//!
//! `serve` and every `doctor` check load configuration through [`load`], so what the doctor
//! reports is exactly what the server would run with. Sources, lowest priority first:
//! built-in defaults < the `.env` file < the process environment < command-line flags.
//! Validation collects every problem instead of stopping at the first, so a user fixes their
//! `.env` in one pass.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::dify::AppMode;
use crate::secret::Secret;

/// One known setting: its name, default and a one-line description (used by
/// `doctor check-config`, and kept in step with `.env.example` by a test).
pub struct SettingSpec {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub secret: bool,
    pub help: &'static str,
}

pub const SETTINGS: &[SettingSpec] = &[
    spec("DIFY_API_BASE", None, false, "Dify service API base URL, e.g. https://api.dify.ai/v1"),
    spec(
        "MODEL_CONFIG",
        None,
        true,
        "JSON object on one line: model name -> Dify app key (or {\"key\",\"mode\",\"input\",\"output\"})",
    ),
    spec("DIFY_API_KEYS", None, true, "Comma-separated app keys; models are named after each app's /info name"),
    spec("SERVER_HOST", Some("127.0.0.1"), false, "Address to listen on (0.0.0.0 inside containers)"),
    spec("SERVER_PORT", Some("5000"), false, "Port to listen on"),
    spec("LOG_LEVEL", Some("info"), false, "error, warn, info, debug or trace (RUST_LOG wins when set)"),
    spec("LOG_FORMAT", Some("text"), false, "text or json"),
    spec("CONNECT_TIMEOUT", Some("10"), false, "Seconds to establish a connection to Dify"),
    spec(
        "STREAM_IDLE_TIMEOUT",
        Some("60"),
        false,
        "Longest silence (seconds) between upstream events before a stream is cut",
    ),
    spec("REQUEST_TIMEOUT", Some("300"), false, "Seconds for a whole non-streaming request"),
    spec("DEFAULT_USER", Some("default_user"), false, "Dify user when the request names none"),
    spec("USER_ID_HEADER", Some("x-openwebui-user-id"), false, "Comma-separated header names carrying the user id"),
    spec(
        "CHAT_ID_HEADER",
        Some("x-openwebui-chat-id"),
        false,
        "Comma-separated header names carrying the client's chat id",
    ),
    spec(
        "OPENWEBUI_JWT_SECRET",
        None,
        true,
        "Verify Open WebUI's signed X-OpenWebUI-User-Jwt with this secret and take the user from it",
    ),
    spec(
        "CONVERSATION_STORE",
        Some("data/conversations.db"),
        false,
        "SQLite file path, or redis://host:port/db to share conversations between instances",
    ),
    spec("MAPPING_TTL_DAYS", Some("30"), false, "Days a conversation mapping is kept after its last use"),
    spec(
        "DIFY_PARENT_MESSAGE_ID",
        Some("false"),
        false,
        "true if your Dify accepts parent_message_id: regenerates then branch inside the conversation",
    ),
    spec(
        "REASONING_MODE",
        Some("reasoning"),
        false,
        "reasoning (reasoning_content), think (<think> tags in content) or strip",
    ),
    spec(
        "REASONING_PROGRESS",
        Some("false"),
        false,
        "Show agent tool use and workflow progress in the reasoning channel",
    ),
    spec(
        "SYSTEM_INPUT",
        None,
        false,
        "Dify input variable that receives the system prompt (else it is prepended to the query)",
    ),
    spec("SHUTDOWN_TIMEOUT", Some("30"), false, "Seconds in-flight requests may take to finish on SIGTERM"),
    spec(
        "PROXY_API_KEYS",
        None,
        true,
        "Comma-separated keys clients must send as Authorization: Bearer (unset: no client auth)",
    ),
    spec(
        "DIFY_KEY_PASSTHROUGH",
        Some("false"),
        false,
        "Use a client's Bearer app-... key as the Dify app key for that request",
    ),
    spec("MAX_BODY_MB", Some("20"), false, "Largest request body accepted, in MiB"),
    spec(
        "MAX_CONCURRENT_UPSTREAM",
        Some("512"),
        false,
        "Most Dify requests in flight at once; more get 503 with Retry-After",
    ),
    spec("LOG_FILE", None, false, "Also write logs to this file (rotated daily), e.g. logs/app.log"),
    spec("CORS_ORIGINS", None, false, "Comma-separated origins allowed by CORS, or * (unset: CORS off)"),
    spec("STREAM_SMOOTHING", Some("off"), false, "off, or adaptive to even out bursty streams"),
];

const fn spec(name: &'static str, default: Option<&'static str>, secret: bool, help: &'static str) -> SettingSpec {
    SettingSpec { name, default, secret, help }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Default,
    EnvFile,
    Environment,
    Flag,
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::EnvFile => ".env file",
            Source::Environment => "environment",
            Source::Flag => "command line",
            Source::Unset => "unset",
        })
    }
}

/// A setting as a person may see it: the value is masked when secret.
#[derive(Debug, Clone, Serialize)]
pub struct SettingView {
    pub name: &'static str,
    pub value: Option<String>,
    pub source: Source,
}

/// A configuration problem (fatal) or warning, with an optional fix for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    fn new(message: impl Into<String>) -> Self {
        Finding { message: message.into(), fix: None }
    }
    fn with_fix(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { message: message.into(), fix: Some(fix.into()) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum EnvFileStatus {
    Loaded { path: PathBuf },
    NotFound { path: PathBuf },
    Unreadable { path: PathBuf, error: String },
}

/// How the configuration is to be read: which `.env`, which flag overrides.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// `--env-file`; when `None`, `.env` in the working directory is used if it exists.
    pub env_file: Option<PathBuf>,
    /// Values given on the command line, by setting name.
    pub overrides: Vec<(&'static str, String)>,
    /// Ignore the process environment (tests, and `doctor` comparing files).
    pub ignore_process_env: bool,
}

impl LoadOptions {
    pub fn override_with(mut self, name: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(value) = value {
            self.overrides.push((name, value.to_string()));
        }
        self
    }
}

/// Everything the loader found: the settings and their sources, the problems and warnings,
/// and the validated [`Config`] when there were no problems.
#[derive(Debug)]
pub struct Loaded {
    pub env_file: EnvFileStatus,
    pub settings: Vec<SettingView>,
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub config: Option<Config>,
}

/// A model as configured: its public name, its Dify app key and optional overrides of what
/// the app's `/info` and `/parameters` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub key: Secret,
    pub mode: Option<AppMode>,
    pub input: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningMode {
    Reasoning,
    Think,
    Strip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration `serve` and `doctor` run with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL without a trailing slash, e.g. `https://api.dify.ai/v1`.
    pub dify_api_base: String,
    /// Models named in MODEL_CONFIG, in the order written.
    pub models: Vec<ModelSpec>,
    /// Keys from DIFY_API_KEYS; their model names come from each app's `/info`.
    pub unnamed_keys: Vec<Secret>,
    pub host: String,
    pub port: u16,
    pub log_level: String,
    pub log_format: LogFormat,
    pub connect_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub request_timeout: Duration,
    pub default_user: String,
    pub user_id_headers: Vec<String>,
    pub reasoning_mode: ReasoningMode,
    pub reasoning_progress: bool,
    pub system_input: Option<String>,
    pub shutdown_timeout: Duration,
    pub chat_id_headers: Vec<String>,
    pub jwt_secret: Option<Secret>,
    /// SQLite path or `redis://` URL.
    pub conversation_store: String,
    pub mapping_ttl: Duration,
    pub branch_with_parent: bool,
    pub proxy_api_keys: Vec<Secret>,
    pub dify_key_passthrough: bool,
    pub max_body_bytes: usize,
    pub max_concurrent_upstream: usize,
    pub log_file: Option<PathBuf>,
    pub cors_origins: Vec<String>,
    pub stream_smoothing: bool,
}

impl Config {
    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Reads and validates the configuration. Never fails: every problem is reported in the
/// returned [`Loaded`], for `serve` to abort on and for the doctor to explain.
pub fn load(options: &LoadOptions) -> Loaded {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let explicit = options.env_file.is_some();
    let env_path = options.env_file.clone().unwrap_or_else(|| PathBuf::from(".env"));
    let (env_file, file_values) = read_env_file(&env_path, explicit, &mut problems);

    let mut raw = RawValues { values: HashMap::new() };
    for spec in SETTINGS {
        let flag = options.overrides.iter().rev().find(|(n, _)| *n == spec.name);
        let value = if let Some((_, v)) = flag {
            Some((v.clone(), Source::Flag))
        } else if let Some(v) = (!options.ignore_process_env).then(|| std::env::var(spec.name).ok()).flatten() {
            Some((v, Source::Environment))
        } else if let Some(v) = file_values.get(spec.name) {
            Some((v.clone(), Source::EnvFile))
        } else {
            spec.default.map(|d| (d.to_string(), Source::Default))
        };
        if let Some(v) = value {
            raw.values.insert(spec.name, v);
        }
    }

    let settings = SETTINGS
        .iter()
        .map(|spec| {
            let (value, source) = match raw.values.get(spec.name) {
                Some((v, s)) => (Some(display_value(spec, v)), s.clone()),
                None => (None, Source::Unset),
            };
            SettingView { name: spec.name, value, source }
        })
        .collect();

    let config = validate(&raw, &mut problems, &mut warnings);
    Loaded { env_file, settings, config: if problems.is_empty() { config } else { None }, problems, warnings }
}

fn display_value(spec: &SettingSpec, value: &str) -> String {
    if !spec.secret {
        // A URL may carry a password (redis://:pw@host): never shown.
        return crate::secret::mask_url_credentials(value);
    }
    if spec.name == "MODEL_CONFIG" {
        // Show the model names and masked keys: the structure is what users debug.
        if let Ok(entries) = parse_model_entries(value) {
            let shown: Vec<String> = entries
                .iter()
                .map(|(name, v)| match v {
                    Value::String(k) => format!("{name:?}: {:?}", crate::secret::mask(k)),
                    Value::Object(o) => {
                        let key = o.get("key").and_then(Value::as_str).unwrap_or("");
                        format!("{name:?}: {{\"key\": {:?}, …}}", crate::secret::mask(key))
                    }
                    _ => format!("{name:?}: …"),
                })
                .collect();
            return format!("{{{}}}", shown.join(", "));
        }
        return "(not valid JSON, not shown)".to_string();
    }
    value.split(',').map(|part| crate::secret::mask(part.trim())).collect::<Vec<_>>().join(",")
}

fn read_env_file(path: &Path, explicit: bool, problems: &mut Vec<Finding>) -> (EnvFileStatus, HashMap<String, String>) {
    let mut values = HashMap::new();
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(e) => {
            let not_found = matches!(&e, dotenvy::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound);
            if not_found {
                if explicit {
                    problems.push(Finding::with_fix(
                        format!("Env file {} does not exist", path.display()),
                        "check the --env-file path, or copy .env.example to .env",
                    ));
                }
                return (EnvFileStatus::NotFound { path: path.to_path_buf() }, values);
            }
            problems.push(Finding::new(format!("Cannot read {}: {e}", path.display())));
            return (EnvFileStatus::Unreadable { path: path.to_path_buf(), error: e.to_string() }, values);
        }
    };
    for item in iter {
        match item {
            Ok((k, v)) => {
                values.insert(k, v);
            }
            Err(dotenvy::Error::LineParse(line, index)) => {
                let shown: String = line.chars().take(60).collect();
                problems.push(Finding::with_fix(
                    format!(
                        "{} has a line that cannot be parsed (at character {index}): {}",
                        path.display(),
                        crate::secret::mask_keys_in(&shown)
                    ),
                    "write each setting as NAME=value on one line; wrap JSON in single quotes: MODEL_CONFIG='{\"model\":\"app-...\"}'",
                ));
            }
            Err(e) => problems.push(Finding::new(format!("Cannot read {}: {e}", path.display()))),
        }
    }
    (EnvFileStatus::Loaded { path: path.to_path_buf() }, values)
}

struct RawValues {
    values: HashMap<&'static str, (String, Source)>,
}

impl RawValues {
    fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(SETTINGS.iter().any(|s| s.name == name), "setting {name} is missing from SETTINGS");
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    fn nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// The value, or the built-in default when unset or unparsable (the problem is recorded).
    fn parse_or<T: std::str::FromStr>(&self, name: &str, what: &str, fallback: T, problems: &mut Vec<Finding>) -> T {
        match self.nonempty(name) {
            None => fallback,
            Some(v) => v.parse().unwrap_or_else(|_| {
                problems.push(Finding::with_fix(
                    format!("{name} must be {what}, got {v:?}"),
                    format!("set {name} to {what} in .env or remove it to use the default"),
                ));
                fallback
            }),
        }
    }

    fn seconds(&self, name: &str, default: u64, problems: &mut Vec<Finding>) -> Duration {
        let secs: f64 = self.parse_or(name, "a number of seconds", default as f64, problems);
        if !(secs.is_finite() && secs > 0.0) {
            problems.push(Finding::with_fix(
                format!("{name} must be a positive number of seconds, got {secs}"),
                format!("{name}={default}"),
            ));
            return Duration::from_secs(default);
        }
        Duration::from_secs_f64(secs.min(86_400.0))
    }

    fn flag(&self, name: &str, problems: &mut Vec<Finding>) -> bool {
        match self.nonempty(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(other) => {
                problems.push(Finding::with_fix(
                    format!("{name} must be true or false, got {other:?}"),
                    format!("{name}=false"),
                ));
                false
            }
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name).unwrap_or("").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
}

fn validate(raw: &RawValues, problems: &mut Vec<Finding>, warnings: &mut Vec<Finding>) -> Option<Config> {
    let dify_api_base = match raw.nonempty("DIFY_API_BASE") {
        None => {
            problems.push(Finding::with_fix(
                "DIFY_API_BASE is not set or empty",
                "DIFY_API_BASE=https://api.dify.ai/v1 (or http://your-dify-host/v1)",
            ));
            String::new()
        }
        Some(base) => check_base_url(base, problems, warnings),
    };

    let mut models = Vec::new();
    if let Some(text) = raw.nonempty("MODEL_CONFIG") {
        models = parse_model_config(text, problems, warnings);
    }
    let unnamed_keys: Vec<Secret> = raw.list("DIFY_API_KEYS").into_iter().map(Secret::new).collect();
    for key in raw.list("PROXY_API_KEYS").into_iter().map(Secret::new).filter(is_placeholder) {
        warnings.push(Finding::with_fix(
            format!(
                "PROXY_API_KEYS contains {:?}, the example key from .env.example: anyone who has read it can use this gateway",
                key.expose()
            ),
            "PROXY_API_KEYS=<a long random key> (e.g. the output of `openssl rand -hex 24`)",
        ));
    }
    for key in &unnamed_keys {
        warn_key_prefix(&format!("DIFY_API_KEYS entry {}", key.masked()), key, warnings);
    }
    if models.is_empty() && unnamed_keys.is_empty() {
        problems.push(Finding::with_fix(
            "No valid models configured in MODEL_CONFIG",
            "MODEL_CONFIG='{\"my-model\":\"app-your-key\"}' (one line, single quotes around the JSON)",
        ));
    }

    let host = raw.nonempty("SERVER_HOST").unwrap_or("127.0.0.1").to_string();
    let port = match raw.nonempty("SERVER_PORT") {
        None => 5000,
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=65535) => n as u16,
            Ok(n) => {
                problems
                    .push(Finding::with_fix(format!("SERVER_PORT {n} is out of range (1-65535)"), "SERVER_PORT=5000"));
                0
            }
            Err(_) => {
                problems.push(Finding::with_fix(
                    format!("SERVER_PORT must be a port number (1-65535), got {p:?}"),
                    "SERVER_PORT=5000",
                ));
                0
            }
        },
    };

    let log_level = raw.nonempty("LOG_LEVEL").unwrap_or("info").to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace", "off"].contains(&log_level.as_str()) {
        problems.push(Finding::with_fix(
            format!("LOG_LEVEL must be one of error, warn, info, debug, trace; got {log_level:?}"),
            "LOG_LEVEL=info",
        ));
    }
    let log_format = match raw.nonempty("LOG_FORMAT").map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems
                .push(Finding::with_fix(format!("LOG_FORMAT must be text or json, got {other:?}"), "LOG_FORMAT=text"));
            LogFormat::Text
        }
    };
    let reasoning_mode = match raw.nonempty("REASONING_MODE").map(str::to_ascii_lowercase).as_deref() {
        None | Some("reasoning") => ReasoningMode::Reasoning,
        Some("think") => ReasoningMode::Think,
        Some("strip") => ReasoningMode::Strip,
        Some(other) => {
            problems.push(Finding::with_fix(
                format!("REASONING_MODE must be reasoning, think or strip, got {other:?}"),
                "REASONING_MODE=reasoning",
            ));
            ReasoningMode::Reasoning
        }
    };

    let config = Config {
        dify_api_base,
        models,
        unnamed_keys,
        host,
        port,
        log_level,
        log_format,
        connect_timeout: raw.seconds("CONNECT_TIMEOUT", 10, problems),
        stream_idle_timeout: raw.seconds("STREAM_IDLE_TIMEOUT", 60, problems),
        request_timeout: raw.seconds("REQUEST_TIMEOUT", 300, problems),
        default_user: raw.nonempty("DEFAULT_USER").unwrap_or("default_user").to_string(),
        user_id_headers: raw.list("USER_ID_HEADER").into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        reasoning_mode,
        reasoning_progress: raw.flag("REASONING_PROGRESS", problems),
        system_input: raw.nonempty("SYSTEM_INPUT").map(str::to_string),
        shutdown_timeout: raw.seconds("SHUTDOWN_TIMEOUT", 30, problems),
        chat_id_headers: raw.list("CHAT_ID_HEADER").into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        jwt_secret: raw.nonempty("OPENWEBUI_JWT_SECRET").map(Secret::new),
        conversation_store: raw.nonempty("CONVERSATION_STORE").unwrap_or("data/conversations.db").to_string(),
        mapping_ttl: {
            let days: f64 = raw.parse_or("MAPPING_TTL_DAYS", "a number of days", 30.0, problems);
            if !(days.is_finite() && days > 0.0) {
                problems.push(Finding::with_fix(
                    format!("MAPPING_TTL_DAYS must be positive, got {days}"),
                    "MAPPING_TTL_DAYS=30",
                ));
            }
            Duration::from_secs_f64(days.clamp(0.001, 36_500.0) * 86_400.0)
        },
        branch_with_parent: raw.flag("DIFY_PARENT_MESSAGE_ID", problems),
        proxy_api_keys: raw.list("PROXY_API_KEYS").into_iter().map(Secret::new).collect(),
        dify_key_passthrough: raw.flag("DIFY_KEY_PASSTHROUGH", problems),
        max_body_bytes: {
            let mb: f64 = raw.parse_or("MAX_BODY_MB", "a number of MiB", 20.0, problems);
            if !(mb.is_finite() && mb > 0.0) {
                problems.push(Finding::with_fix(format!("MAX_BODY_MB must be positive, got {mb}"), "MAX_BODY_MB=20"));
            }
            (mb.clamp(0.001, 4096.0) * 1024.0 * 1024.0) as usize
        },
        max_concurrent_upstream: {
            let n: usize = raw.parse_or("MAX_CONCURRENT_UPSTREAM", "a whole number", 512, problems);
            if n == 0 {
                problems.push(Finding::with_fix(
                    "MAX_CONCURRENT_UPSTREAM must be at least 1",
                    "MAX_CONCURRENT_UPSTREAM=512",
                ));
            }
            n.max(1)
        },
        log_file: raw.nonempty("LOG_FILE").map(PathBuf::from),
        cors_origins: raw.list("CORS_ORIGINS"),
        stream_smoothing: match raw.nonempty("STREAM_SMOOTHING").map(str::to_ascii_lowercase).as_deref() {
            None | Some("off") => false,
            Some("adaptive") => true,
            Some(other) => {
                problems.push(Finding::with_fix(
                    format!("STREAM_SMOOTHING must be off or adaptive, got {other:?}"),
                    "STREAM_SMOOTHING=off",
                ));
                false
            }
        },
    };
    if config.stream_idle_timeout <= Duration::from_secs(10) {
        warnings.push(Finding::with_fix(
            format!(
                "STREAM_IDLE_TIMEOUT is {}s: Dify sends a keep-alive only every 10 s, so quiet streams will be cut",
                config.stream_idle_timeout.as_secs_f64()
            ),
            "STREAM_IDLE_TIMEOUT=60",
        ));
    }
    for header in config.user_id_headers.iter().chain(&config.chat_id_headers) {
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems
                .push(Finding::new(format!("USER_ID_HEADER/CHAT_ID_HEADER contain an invalid header name {header:?}")));
        }
    }
    Some(config)
}

fn check_base_url(base: &str, problems: &mut Vec<Finding>, warnings: &mut Vec<Finding>) -> String {
    let trimmed = base.trim_end_matches('/');
    match Url::parse(trimmed) {
        Ok(mut url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            if !url.username().is_empty() || url.password().is_some() {
                // reqwest would turn them into a Basic Authorization header next to the app
                // key's Bearer one: never sent, and never shown.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                warnings.push(Finding::with_fix(
                    format!(
                        "DIFY_API_BASE carries credentials ({}); Dify's service API takes each app's key as a Bearer token, not URL credentials, so opendify does not send them",
                        crate::secret::mask_url_credentials(trimmed)
                    ),
                    format!("DIFY_API_BASE={}", url.as_str().trim_end_matches('/')),
                ));
            }
            let cleaned = url.as_str().trim_end_matches('/').to_string();
            if !url.path().trim_end_matches('/').ends_with("/v1") {
                warnings.push(Finding::with_fix(
                    format!("DIFY_API_BASE {cleaned} does not end with /v1; Dify's service API lives under /v1"),
                    format!("DIFY_API_BASE={cleaned}/v1"),
                ));
            }
            cleaned
        }
        _ => {
            problems.push(Finding::with_fix(
                format!(
                    "DIFY_API_BASE must be an http:// or https:// URL, got {:?}",
                    crate::secret::mask_url_credentials(base)
                ),
                "DIFY_API_BASE=https://api.dify.ai/v1",
            ));
            String::new()
        }
    }
}

/// A JSON object read as its entries in written order, duplicates kept (a plain map would
/// silently drop all but the last).
struct OrderedEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

fn parse_model_entries(text: &str) -> Result<Vec<(String, Value)>, serde_json::Error> {
    serde_json::from_str::<OrderedEntries>(text).map(|e| e.0)
}

fn parse_model_config(text: &str, problems: &mut Vec<Finding>, warnings: &mut Vec<Finding>) -> Vec<ModelSpec> {
    let quoting_hint = "write MODEL_CONFIG on one line with single quotes around the JSON: MODEL_CONFIG='{\"claude\":\"app-xxx\",\"gpt-4o\":\"app-yyy\"}'";
    let entries = match parse_model_entries(text) {
        Ok(entries) => entries,
        Err(e) if e.is_data() => {
            problems.push(Finding::with_fix(
                "MODEL_CONFIG must be a JSON object mapping model names to app keys",
                quoting_hint,
            ));
            return Vec::new();
        }
        Err(e) => {
            problems.push(Finding::with_fix(
                format!(
                    "MODEL_CONFIG is not valid JSON{}: {} at line {} column {}",
                    if text.contains('{') && !text.contains('"') {
                        " (its double quotes are gone: .env parsing removes them unless the value is in single quotes)"
                    } else {
                        ""
                    },
                    crate::json_text::reason(&e),
                    e.line(),
                    e.column()
                ),
                quoting_hint,
            ));
            return Vec::new();
        }
    };

    let mut models: Vec<ModelSpec> = Vec::new();
    for (name, value) in entries {
        if name.trim().is_empty() {
            problems.push(Finding::new("MODEL_CONFIG has a model with an empty name"));
            continue;
        }
        let spec = match value {
            Value::String(key) => {
                ModelSpec { name: name.clone(), key: Secret::new(key.trim()), mode: None, input: None, output: None }
            }
            Value::Object(obj) => match model_from_object(&name, &obj) {
                Ok(spec) => spec,
                Err(finding) => {
                    problems.push(finding);
                    continue;
                }
            },
            other => {
                problems.push(Finding::with_fix(
                    format!(
                        "MODEL_CONFIG model {name:?} must map to an app key string, got {}",
                        crate::json_text::kind_of(&other)
                    ),
                    format!("\"{name}\":\"app-your-key\""),
                ));
                continue;
            }
        };
        if spec.key.is_empty() {
            problems.push(Finding::with_fix(
                format!("MODEL_CONFIG model {name:?} has an empty app key"),
                "copy the key from Dify: your app > API Access > API Key",
            ));
            continue;
        }
        warn_key_prefix(&format!("MODEL_CONFIG model {name:?}"), &spec.key, warnings);
        if let Some(pos) = models.iter().position(|m| m.name == name) {
            warnings.push(Finding::with_fix(
                format!("MODEL_CONFIG names model {name:?} twice; the last entry wins"),
                "give each model a unique name",
            ));
            models.remove(pos);
        }
        models.push(spec);
    }
    models
}

fn model_from_object(name: &str, obj: &serde_json::Map<String, Value>) -> Result<ModelSpec, Finding> {
    let text = |field: &str| -> Result<Option<String>, Finding> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(other) => Err(Finding::new(format!(
                "MODEL_CONFIG model {name:?}: \"{field}\" must be a string, got {}",
                crate::json_text::kind_of(other)
            ))),
        }
    };
    for field in obj.keys() {
        if !["key", "mode", "input", "output"].contains(&field.as_str()) {
            return Err(Finding::with_fix(
                format!("MODEL_CONFIG model {name:?} has an unknown field {field:?}"),
                "allowed fields: key, mode, input, output",
            ));
        }
    }
    let key = text("key")?.unwrap_or_default();
    let mode = match text("mode")? {
        None => None,
        Some(m) => Some(m.parse::<AppMode>().map_err(|_| {
            Finding::with_fix(
                format!("MODEL_CONFIG model {name:?} has an unknown mode {m:?}"),
                "mode is one of chat, agent-chat, advanced-chat, agent, completion, workflow",
            )
        })?),
    };
    Ok(ModelSpec {
        name: name.to_string(),
        key: Secret::new(key),
        mode,
        input: text("input")?,
        output: text("output")?,
    })
}

/// The example keys of `.env.example` and the README: a configuration still carrying one was
/// copied without being edited (a proxy key everyone can read in the repository is no key).
pub const PLACEHOLDER_KEYS: &[&str] =
    &["app-your-key", "app-aaa", "app-bbb", "app-...", "app-xxx", "app-yyy", "sk-change-me", "sk-another"];

fn is_placeholder(key: &Secret) -> bool {
    PLACEHOLDER_KEYS.contains(&key.expose().trim())
}

fn warn_key_prefix(what: &str, key: &Secret, warnings: &mut Vec<Finding>) {
    if is_placeholder(key) {
        warnings.push(Finding::with_fix(
            format!("{what}: {:?} is the example key from .env.example, not a real app key", key.expose()),
            "copy the key from Dify: your app > API Access > API Key",
        ));
        return;
    }
    if !key.expose().starts_with("app-") {
        warnings.push(Finding::with_fix(
            format!("{what}: key {} does not start with \"app-\"; Dify app keys do", key.masked()),
            "use the app's API key from Dify (your app > API Access), not a dataset or account key",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(pairs: &[(&'static str, &str)]) -> Loaded {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.env");
        std::fs::write(&empty, "").expect("write");
        let options = LoadOptions {
            env_file: Some(empty),
            overrides: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            ignore_process_env: true,
        };
        load(&options)
    }

    #[test]
    fn missing_everything_reports_both_problems_like_the_original() {
        let loaded = load_with(&[]);
        let messages: Vec<_> = loaded.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages, ["DIFY_API_BASE is not set or empty", "No valid models configured in MODEL_CONFIG"]);
    }

    #[test]
    fn model_order_is_preserved_and_base_trimmed() {
        let loaded = load_with(&[
            ("DIFY_API_BASE", "https://api.dify.ai/v1/"),
            (
                "MODEL_CONFIG",
                r#"{"zeta":"app-zzzzzzzzzzzz","alpha":{"key":"app-aaaaaaaaaa","mode":"workflow","output":"text"}}"#,
            ),
        ]);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let config = loaded.config.expect("config");
        assert_eq!(config.dify_api_base, "https://api.dify.ai/v1");
        let names: Vec<_> = config.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(config.models[1].mode, Some(AppMode::Workflow));
        assert_eq!(config.models[1].output.as_deref(), Some("text"));
    }

    #[test]
    fn bad_json_says_where_and_hints_at_quoting() {
        let loaded = load_with(&[("DIFY_API_BASE", "http://x/v1"), ("MODEL_CONFIG", r#"{"a" "app-x"}"#)]);
        let p = &loaded.problems[0];
        assert!(
            p.message.starts_with("MODEL_CONFIG is not valid JSON: expected `:` at line 1 column"),
            "{}",
            p.message
        );
        assert!(p.fix.as_deref().unwrap_or("").contains("single quotes"));
    }

    #[test]
    fn empty_key_non_object_port_and_url_are_problems() {
        let loaded = load_with(&[
            ("DIFY_API_BASE", "ftp://x"),
            ("MODEL_CONFIG", r#"{"a":"","b":"app-bbbbbbbb"}"#),
            ("SERVER_PORT", "70000"),
        ]);
        let all: String = loaded.problems.iter().map(|p| p.message.clone() + "\n").collect();
        assert!(all.contains("must be an http:// or https:// URL"), "{all}");
        assert!(all.contains("model \"a\" has an empty app key"), "{all}");
        assert!(all.contains("SERVER_PORT 70000 is out of range"), "{all}");
        let array = load_with(&[("DIFY_API_BASE", "http://x/v1"), ("MODEL_CONFIG", "[1]")]);
        assert!(array.problems[0].message.contains("must be a JSON object"));
    }

    #[test]
    fn warnings_for_prefix_missing_v1_and_duplicates() {
        let loaded = load_with(&[
            ("DIFY_API_BASE", "http://dify.local"),
            ("MODEL_CONFIG", r#"{"a":"sk-123456789012","a":"app-123456789012"}"#),
        ]);
        assert!(loaded.problems.is_empty());
        let all: String = loaded.warnings.iter().map(|p| p.message.clone() + "\n").collect();
        assert!(all.contains("does not end with /v1"), "{all}");
        assert!(all.contains("does not start with \"app-\""), "{all}");
        assert!(all.contains("twice"), "{all}");
        assert!(!all.contains("sk-123456789012"), "secret leaked: {all}");
        assert_eq!(loaded.config.expect("config").models.len(), 1);
    }

    #[test]
    fn example_keys_left_in_place_are_warned_about() {
        let loaded = load_with(&[
            ("DIFY_API_BASE", "https://api.dify.ai/v1"),
            ("MODEL_CONFIG", r#"{"my-assistant":"app-your-key"}"#),
            ("PROXY_API_KEYS", "sk-change-me,sk-a-real-one-1234"),
        ]);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let all: String = loaded.warnings.iter().map(|p| p.message.clone() + "\n").collect();
        assert!(all.contains("\"app-your-key\" is the example key"), "{all}");
        assert!(all.contains("PROXY_API_KEYS contains \"sk-change-me\""), "{all}");
        assert!(!all.contains("sk-a-real-one"), "{all}");
    }

    #[test]
    fn sources_are_recorded_and_secrets_masked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = dir.path().join(".env");
        std::fs::write(
            &env,
            "DIFY_API_BASE=http://file/v1\nMODEL_CONFIG='{\"m\":\"app-secretsecret99\"}'\nSERVER_PORT=6000\n",
        )
        .expect("write");
        let options = LoadOptions {
            env_file: Some(env),
            overrides: vec![("SERVER_PORT", "7000".into())],
            ignore_process_env: true,
        };
        let loaded = load(&options);
        let get = |n: &str| loaded.settings.iter().find(|s| s.name == n).expect("setting").clone();
        assert_eq!(get("DIFY_API_BASE").source, Source::EnvFile);
        assert_eq!(get("SERVER_PORT").source, Source::Flag);
        assert_eq!(get("SERVER_PORT").value.as_deref(), Some("7000"));
        assert_eq!(get("SERVER_HOST").source, Source::Default);
        let shown = get("MODEL_CONFIG").value.unwrap_or_default();
        assert!(!shown.contains("secretsecret"), "{shown}");
        assert!(shown.contains("app-se…99"), "{shown}");
        assert_eq!(loaded.config.expect("config").port, 7000);
    }

    #[test]
    fn credentials_in_the_dify_base_are_dropped_masked_and_warned_about() {
        let loaded = load_with(&[
            ("DIFY_API_BASE", "http://admin:hunter2@dify.local/v1/"),
            ("MODEL_CONFIG", r#"{"m":"app-123456789012"}"#),
        ]);
        let config = loaded.config.expect("config");
        assert_eq!(config.dify_api_base, "http://dify.local/v1");
        let warning = &loaded.warnings[0];
        assert!(warning.message.contains("Bearer token, not URL credentials"), "{}", warning.message);
        assert!(warning.message.contains("http://***@dify.local/v1"), "{}", warning.message);
        assert_eq!(warning.fix.as_deref(), Some("DIFY_API_BASE=http://dify.local/v1"));
        let shown = loaded.settings.iter().find(|s| s.name == "DIFY_API_BASE").and_then(|s| s.value.clone());
        assert_eq!(shown.as_deref(), Some("http://***@dify.local/v1/"));
        let everything = format!("{:?}{:?}{:?}", loaded.warnings, loaded.settings, config);
        assert!(!everything.contains("hunter2") && !everything.contains("admin"), "{everything}");
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        let loaded = load_with(&[("CONVERSATION_STORE", "redis://:hunter2@127.0.0.1:6379/0")]);
        let shown = loaded.settings.iter().find(|s| s.name == "CONVERSATION_STORE").and_then(|s| s.value.clone());
        assert_eq!(shown.as_deref(), Some("redis://***@127.0.0.1:6379/0"));
    }
}
