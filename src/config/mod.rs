//! Every setting opendify has, where each value came from, and how it is validated.
//!
//! `serve` and every `doctor` check load configuration through [`load`], so what the doctor
//! reports is exactly what the server would run with. Sources, lowest priority first:
//! built-in defaults < the `.env` file < the process environment < command-line flags.
//! Validation collects every problem instead of stopping at the first, so a user fixes their
//! `.env` in one pass.

mod models;
mod settings;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use self::models::PLACEHOLDER_KEYS;
pub use self::settings::{Notes, SETTINGS, Setting};
use crate::dify::AppMode;
pub use crate::finding::Finding;
use crate::secret::Secret;

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
    /// A hash of the real value: tells a changed secret apart where the masked value
    /// cannot (a reload says what changed).
    #[serde(skip)]
    pub digest: u64,
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
    /// `tools` in MODEL_CONFIG: this model's TOOL_CALLS.
    pub tools: Option<ToolCalls>,
}

impl ModelSpec {
    /// A model with only a key: what `/info` says decides the rest.
    pub fn new(name: impl Into<String>, key: Secret) -> Self {
        ModelSpec { name: name.into(), key, mode: None, input: None, output: None, tools: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningMode {
    #[default]
    Reasoning,
    Think,
    Strip,
}

/// Which requests get Open WebUI's events (citations, progress, usage) in their stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenWebUiEvents {
    /// Requests from Open WebUI (its `X-OpenWebUI-*` headers).
    #[default]
    Auto,
    On,
    Off,
}

/// Whether client tools (`tools` in a request) are emulated for an app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCalls {
    /// Emulated for every client but Open WebUI (whose built-in tools the app has its own of).
    #[default]
    Auto,
    /// Emulated for every client.
    Emulate,
    /// Never: `tools` are ignored, a forced call is refused.
    Off,
}

impl std::str::FromStr for ToolCalls {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ToolCalls::Auto),
            "emulate" => Ok(ToolCalls::Emulate),
            "off" => Ok(ToolCalls::Off),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The validated configuration `serve` and `doctor` run with. Every field is written by one
/// setting of [`SETTINGS`] (with its default when unset); `Default` is only the blank page.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Base URL without a trailing slash, e.g. `https://api.dify.ai/v1`.
    pub dify_api_base: String,
    /// Models named in MODEL_CONFIG, in the order written.
    pub models: Vec<ModelSpec>,
    /// Keys from DIFY_API_KEYS; their model names come from each app's `/info`.
    pub unnamed_keys: Vec<Secret>,
    pub host: String,
    pub port: u16,
    /// Worker threads of the async runtime (SERVER_THREADS).
    pub server_threads: usize,
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
    pub admin_api_key: Option<Secret>,
    pub dify_key_passthrough: bool,
    pub max_body_bytes: usize,
    pub max_concurrent_upstream: usize,
    pub log_file: Option<PathBuf>,
    pub cors_origins: Vec<String>,
    pub stream_smoothing: bool,
    pub tool_calls: ToolCalls,
    /// OPENWEBUI_TOOLS=emulate: Open WebUI's requests get tool emulation too.
    pub openwebui_tools: bool,
    pub structured_output_retries: u32,
    pub openwebui_events: OpenWebUiEvents,
    /// DIFY_METADATA: every answer carries a `dify` object.
    pub dify_metadata: bool,
    /// TASK_CONVERSATIONS=delete: conversations made for `### Task:` calls are deleted.
    pub delete_task_conversations: bool,
}

impl Config {
    /// How the Dify client is set up from this configuration.
    pub fn dify_client_options(&self) -> crate::dify::ClientOptions {
        crate::dify::ClientOptions {
            base: self.dify_api_base.clone(),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.stream_idle_timeout,
        }
    }

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
    let mut notes = Notes::default();
    let explicit = options.env_file.is_some();
    let env_path = options.env_file.clone().unwrap_or_else(|| PathBuf::from(".env"));
    let (env_file, file_values) = read_env_file(&env_path, explicit, &mut notes.problems);

    let mut config = Config::default();
    let mut settings = Vec::with_capacity(SETTINGS.len());
    for setting in SETTINGS {
        let flag = options.overrides.iter().rev().find(|(n, _)| *n == setting.name);
        let given = if let Some((_, v)) = flag {
            Some((v.clone(), Source::Flag))
        } else if let Some(v) = (!options.ignore_process_env).then(|| std::env::var(setting.name).ok()).flatten() {
            Some((v, Source::Environment))
        } else {
            file_values.get(setting.name).map(|v| (v.clone(), Source::EnvFile))
        };
        let (value, source) = match given.or_else(|| setting.default.map(|d| (d.to_string(), Source::Default))) {
            Some((v, s)) => (Some(v), s),
            None => (None, Source::Unset),
        };
        settings.push(SettingView {
            name: setting.name,
            value: value.as_deref().map(|v| display_value(setting, v)),
            source,
            digest: digest(value.as_deref()),
        });
        // A value left empty (`SERVER_PORT=`) means the default.
        match value.as_deref().map(str::trim).filter(|v| !v.is_empty()).or(setting.default) {
            Some(value) => setting.read(value, &mut config, &mut notes),
            None => notes.problems.extend(settings::missing(setting.name)),
        }
    }
    settings::cross_checks(&config, &mut notes);
    let Notes { problems, warnings } = notes;
    Loaded { env_file, settings, config: problems.is_empty().then_some(config), problems, warnings }
}

fn digest(value: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.map(str::trim).hash(&mut hasher);
    hasher.finish()
}

impl Loaded {
    /// The report a broken configuration gets, at startup and on reload, in the original's
    /// format (users grep for it).
    pub fn problem_report(&self) -> String {
        let mut out = String::from("❌ Configuration validation failed:\n");
        for problem in &self.problems {
            out.push_str(&format!("  - {}\n", problem.message));
            if let Some(fix) = &problem.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        for warning in &self.warnings {
            out.push_str(&format!("  ! {}\n", warning.message));
        }
        out
    }
}

fn display_value(setting: &Setting, value: &str) -> String {
    if !setting.secret {
        // A URL may carry a password (redis://:pw@host): never shown.
        return crate::secret::mask_url_credentials(value);
    }
    if setting.name == "MODEL_CONFIG" {
        // Show the model names and masked keys: the structure is what users debug.
        if let Ok(entries) = models::parse_model_entries(value) {
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
    fn server_threads_default_to_one_take_auto_and_refuse_zero_with_a_fix() {
        let base = [("DIFY_API_BASE", "http://x/v1"), ("MODEL_CONFIG", r#"{"a":"app-aaaaaaaa"}"#)];
        let default = load_with(&base).config.expect("config");
        assert_eq!(default.server_threads, 1);
        let auto = load_with(&[base[0], base[1], ("SERVER_THREADS", "auto")]).config.expect("config");
        assert_eq!(auto.server_threads, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        for bad in ["0", "many", "-2"] {
            let loaded = load_with(&[base[0], base[1], ("SERVER_THREADS", bad)]);
            let p = loaded.problems.first().unwrap_or_else(|| panic!("SERVER_THREADS={bad} accepted"));
            assert!(p.message.contains("SERVER_THREADS must be a number of threads"), "{}", p.message);
            assert!(p.fix.as_deref().unwrap_or("").contains("SERVER_THREADS=auto"), "{p:?}");
        }
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
            ("DIFY_API_BASE", "http://opsuser7:hunter2@dify.local/v1/"),
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
        assert!(!everything.contains("hunter2") && !everything.contains("opsuser7"), "{everything}");
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        let loaded = load_with(&[("CONVERSATION_STORE", "redis://:hunter2@127.0.0.1:6379/0")]);
        let shown = loaded.settings.iter().find(|s| s.name == "CONVERSATION_STORE").and_then(|s| s.value.clone());
        assert_eq!(shown.as_deref(), Some("redis://***@127.0.0.1:6379/0"));
    }
}
