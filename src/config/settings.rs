//! Every setting, defined once: its name, default, one-line help, whether it is secret,
//! whether changing it needs a restart, and how its text becomes part of [`Config`]. The
//! loader runs each setting's reader on its value (the default when unset), so a default is
//! written in one place only; `.env.example`, the README table and `doctor check-config` are
//! checked against this table by tests.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::models::{is_placeholder, parse_model_config, warn_key_prefix};
use super::{Config, LogFormat, OpenWebUiEvents, ReasoningMode, ToolCalls};
use crate::finding::Finding;
use crate::secret::{Secret, mask_url_credentials};

/// Problems (fatal) and warnings found while reading the settings.
#[derive(Debug, Default)]
pub struct Notes {
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// Reads one setting's text into the configuration. `Err` is the setting's problem; a
/// reader with several problems or warnings records them in `Notes` itself.
type Reader = fn(&str, &mut Config, &mut Notes) -> Result<(), Finding>;

pub struct Setting {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub secret: bool,
    /// Changing it takes effect only after a restart (a reload refuses it).
    pub restart: bool,
    pub help: &'static str,
    read: Reader,
}

impl Setting {
    /// Reads `value` (already trimmed, non-empty) into `config`.
    pub(super) fn read(&self, value: &str, config: &mut Config, notes: &mut Notes) {
        if let Err(mut problem) = (self.read)(value, config, notes) {
            if problem.fix.is_none() {
                problem.fix = Some(match self.default {
                    Some(default) => format!("{}={default}", self.name),
                    None => format!("fix {} in .env", self.name),
                });
            }
            notes.problems.push(problem);
        }
    }
}

const fn setting(name: &'static str, default: Option<&'static str>, help: &'static str, read: Reader) -> Setting {
    Setting { name, default, secret: false, restart: false, help, read }
}

const fn secret(mut s: Setting) -> Setting {
    s.secret = true;
    s
}

const fn restart(mut s: Setting) -> Setting {
    s.restart = true;
    s
}

pub const SETTINGS: &[Setting] = &[
    setting("DIFY_API_BASE", None, "Dify service API base URL, e.g. https://api.dify.ai/v1", |v, c, n| {
        c.dify_api_base = base_url(v, n)?;
        Ok(())
    }),
    secret(setting(
        "MODEL_CONFIG",
        None,
        "JSON object on one line: model name -> Dify app key (or {\"key\",\"mode\",\"input\",\"output\"})",
        |v, c, n| {
            c.models = parse_model_config(v, &mut n.problems, &mut n.warnings);
            Ok(())
        },
    )),
    secret(setting(
        "DIFY_API_KEYS",
        None,
        "Comma-separated app keys; models are named after each app's /info name",
        |v, c, n| {
            c.unnamed_keys = list(v).into_iter().map(Secret::new).collect();
            for key in &c.unnamed_keys {
                warn_key_prefix(&format!("DIFY_API_KEYS entry {}", key.masked()), key, &mut n.warnings);
            }
            Ok(())
        },
    )),
    restart(setting(
        "SERVER_HOST",
        Some("127.0.0.1"),
        "Address to listen on (0.0.0.0 inside containers)",
        |v, c, _| {
            c.host = v.to_string();
            Ok(())
        },
    )),
    restart(setting("SERVER_PORT", Some("5000"), "Port to listen on", |v, c, _| {
        c.port = match v.parse::<u32>() {
            Ok(n @ 1..=65535) => n as u16,
            Ok(n) => return Err(Finding::new(format!("SERVER_PORT {n} is out of range (1-65535)"))),
            Err(_) => return Err(Finding::new(format!("SERVER_PORT must be a port number (1-65535), got {v:?}"))),
        };
        Ok(())
    })),
    restart(setting(
        "SERVER_THREADS",
        Some("1"),
        "Threads serving requests: a number, or auto (one per CPU core)",
        |v, c, _| {
            c.server_threads = match v.trim().to_ascii_lowercase().as_str() {
                "auto" => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                other => match other.parse::<usize>() {
                    Ok(n @ 1..=1024) => n,
                    _ => {
                        return Err(Finding::with_fix(
                            format!("SERVER_THREADS must be a number of threads (1-1024) or auto, got {v:?}"),
                            "SERVER_THREADS=1 (the default: an I/O-bound gateway needs no more), or SERVER_THREADS=auto",
                        ));
                    }
                },
            };
            Ok(())
        },
    )),
    setting("LOG_LEVEL", Some("info"), "error, warn, info, debug or trace (RUST_LOG wins when set)", |v, c, _| {
        let level = v.to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            return Err(Finding::new(format!(
                "LOG_LEVEL must be one of error, warn, info, debug, trace; got {level:?}"
            )));
        }
        c.log_level = level;
        Ok(())
    }),
    restart(setting("LOG_FORMAT", Some("text"), "text or json", |v, c, _| {
        c.log_format = one_of("LOG_FORMAT", v, &[("text", LogFormat::Text), ("json", LogFormat::Json)])?;
        Ok(())
    })),
    setting("CONNECT_TIMEOUT", Some("10"), "Seconds to establish a connection to Dify", |v, c, _| {
        c.connect_timeout = seconds("CONNECT_TIMEOUT", v)?;
        Ok(())
    }),
    setting(
        "STREAM_IDLE_TIMEOUT",
        Some("60"),
        "Longest silence (seconds) before a stream is cut, also while waiting for Dify's first answer",
        |v, c, _| {
            c.stream_idle_timeout = seconds("STREAM_IDLE_TIMEOUT", v)?;
            Ok(())
        },
    ),
    setting("REQUEST_TIMEOUT", Some("300"), "Seconds for a whole non-streaming request", |v, c, _| {
        c.request_timeout = seconds("REQUEST_TIMEOUT", v)?;
        Ok(())
    }),
    setting("DEFAULT_USER", Some("default_user"), "Dify user when the request names none", |v, c, _| {
        c.default_user = v.to_string();
        Ok(())
    }),
    setting(
        "USER_ID_HEADER",
        Some("x-openwebui-user-id"),
        "Comma-separated header names carrying the user id",
        |v, c, _| {
            c.user_id_headers = header_names("USER_ID_HEADER", v)?;
            Ok(())
        },
    ),
    setting(
        "CHAT_ID_HEADER",
        Some("x-openwebui-chat-id"),
        "Comma-separated header names carrying the client's chat id",
        |v, c, _| {
            c.chat_id_headers = header_names("CHAT_ID_HEADER", v)?;
            Ok(())
        },
    ),
    secret(setting(
        "OPENWEBUI_JWT_SECRET",
        None,
        "Verify Open WebUI's signed X-OpenWebUI-User-Jwt with this secret and take the user only from it",
        |v, c, _| {
            c.jwt_secret = Some(Secret::new(v));
            Ok(())
        },
    )),
    restart(setting(
        "CONVERSATION_STORE",
        Some("data/conversations.db"),
        "SQLite file path, or redis://host:port/db to share conversations between instances",
        |v, c, _| {
            c.conversation_store = v.to_string();
            Ok(())
        },
    )),
    restart(setting(
        "MAPPING_TTL_DAYS",
        Some("30"),
        "Days a conversation mapping is kept after its last use",
        |v, c, _| {
            let days = positive("MAPPING_TTL_DAYS", v, "a number of days")?;
            c.mapping_ttl = Duration::from_secs_f64(days.min(36_500.0) * 86_400.0);
            Ok(())
        },
    )),
    restart(setting(
        "DIFY_PARENT_MESSAGE_ID",
        Some("false"),
        "true if your Dify accepts parent_message_id: regenerates then branch inside the conversation",
        |v, c, _| {
            c.branch_with_parent = flag("DIFY_PARENT_MESSAGE_ID", v)?;
            Ok(())
        },
    )),
    setting(
        "REASONING_MODE",
        Some("reasoning"),
        "reasoning (reasoning_content), think (<think> tags in content) or strip",
        |v, c, _| {
            c.reasoning_mode = one_of(
                "REASONING_MODE",
                v,
                &[
                    ("reasoning", ReasoningMode::Reasoning),
                    ("think", ReasoningMode::Think),
                    ("strip", ReasoningMode::Strip),
                ],
            )?;
            Ok(())
        },
    ),
    setting(
        "REASONING_PROGRESS",
        Some("false"),
        "Show agent tool use and workflow progress in the reasoning channel",
        |v, c, _| {
            c.reasoning_progress = flag("REASONING_PROGRESS", v)?;
            Ok(())
        },
    ),
    setting(
        "SYSTEM_INPUT",
        None,
        "Dify input variable that receives the system prompt (else it is prepended to the query)",
        |v, c, _| {
            c.system_input = Some(v.to_string());
            Ok(())
        },
    ),
    setting("SHUTDOWN_TIMEOUT", Some("30"), "Seconds in-flight requests may take to finish on SIGTERM", |v, c, _| {
        c.shutdown_timeout = seconds("SHUTDOWN_TIMEOUT", v)?;
        Ok(())
    }),
    secret(setting(
        "PROXY_API_KEYS",
        None,
        "Comma-separated keys clients must send as Authorization: Bearer (unset: no client auth)",
        |v, c, n| {
            c.proxy_api_keys = list(v).into_iter().map(Secret::new).collect();
            for key in c.proxy_api_keys.iter().filter(|k| is_placeholder(k)) {
                n.warnings.push(Finding::with_fix(
                    format!(
                        "PROXY_API_KEYS contains {:?}, the example key from .env.example: anyone who has read it can use this gateway",
                        key.expose()
                    ),
                    "PROXY_API_KEYS=<a long random key> (e.g. the output of `openssl rand -hex 24`)",
                ));
            }
            Ok(())
        },
    )),
    setting(
        "DIFY_KEY_PASSTHROUGH",
        Some("false"),
        "Use a client's Bearer app-... key as the Dify app key for that request",
        |v, c, _| {
            c.dify_key_passthrough = flag("DIFY_KEY_PASSTHROUGH", v)?;
            Ok(())
        },
    ),
    secret(setting(
        "ADMIN_API_KEY",
        None,
        "Key for POST /admin/reload (unset: the endpoint is off; SIGHUP always reloads)",
        |v, c, _| {
            c.admin_api_key = Some(Secret::new(v));
            Ok(())
        },
    )),
    setting("MAX_BODY_MB", Some("20"), "Largest request body accepted, in MiB", |v, c, _| {
        let mb = positive("MAX_BODY_MB", v, "a number of MiB")?;
        c.max_body_bytes = (mb.min(4096.0) * 1024.0 * 1024.0) as usize;
        Ok(())
    }),
    setting(
        "MAX_CONCURRENT_UPSTREAM",
        Some("512"),
        "Most Dify requests in flight at once; more get 503 with Retry-After",
        |v, c, _| {
            c.max_concurrent_upstream = match v.parse::<usize>() {
                Ok(0) => return Err(Finding::new("MAX_CONCURRENT_UPSTREAM must be at least 1")),
                Ok(n) => n,
                Err(_) => {
                    return Err(Finding::new(format!("MAX_CONCURRENT_UPSTREAM must be a whole number, got {v:?}")));
                }
            };
            Ok(())
        },
    ),
    restart(setting("LOG_FILE", None, "Also write logs to this file (rotated daily), e.g. logs/app.log", |v, c, _| {
        c.log_file = Some(PathBuf::from(v));
        Ok(())
    })),
    setting("CORS_ORIGINS", None, "Comma-separated origins allowed by CORS, or * (unset: CORS off)", |v, c, _| {
        c.cors_origins = list(v);
        Ok(())
    }),
    setting("STREAM_SMOOTHING", Some("off"), "off, or adaptive to even out bursty streams", |v, c, _| {
        c.stream_smoothing = one_of("STREAM_SMOOTHING", v, &[("off", false), ("adaptive", true)])?;
        Ok(())
    }),
    setting(
        "TOOL_CALLS",
        Some("auto"),
        "Client tools: auto (emulated, except for Open WebUI), emulate (always) or off",
        |v, c, _| {
            c.tool_calls = one_of(
                "TOOL_CALLS",
                v,
                &[("auto", ToolCalls::Auto), ("emulate", ToolCalls::Emulate), ("off", ToolCalls::Off)],
            )?;
            Ok(())
        },
    ),
    setting(
        "OPENWEBUI_TOOLS",
        Some("ignore"),
        "Open WebUI's tools with TOOL_CALLS=auto: ignore (the Dify app has its own tools) or emulate",
        |v, c, _| {
            c.openwebui_tools = one_of("OPENWEBUI_TOOLS", v, &[("ignore", false), ("emulate", true)])?;
            Ok(())
        },
    ),
    setting(
        "OPENWEBUI_EVENTS",
        Some("auto"),
        "Citations, progress and usage as Open WebUI events: auto (requests from Open WebUI), on or off",
        |v, c, _| {
            c.openwebui_events = one_of(
                "OPENWEBUI_EVENTS",
                v,
                &[("auto", OpenWebUiEvents::Auto), ("on", OpenWebUiEvents::On), ("off", OpenWebUiEvents::Off)],
            )?;
            Ok(())
        },
    ),
    setting(
        "DIFY_METADATA",
        Some("false"),
        "Add a `dify` object (conversation, message, retriever resources, usage with price) to every answer",
        |v, c, _| {
            c.dify_metadata = flag("DIFY_METADATA", v)?;
            Ok(())
        },
    ),
    setting(
        "TASK_CONVERSATIONS",
        Some("delete"),
        "Dify conversations made only to answer Open WebUI's ### Task: calls: delete (right after) or keep",
        |v, c, _| {
            c.delete_task_conversations = one_of("TASK_CONVERSATIONS", v, &[("delete", true), ("keep", false)])?;
            Ok(())
        },
    ),
    setting(
        "STRUCTURED_OUTPUT_RETRIES",
        Some("1"),
        "Times a non-streaming answer that misses its response_format is asked for again",
        |v, c, _| {
            c.structured_output_retries = match v.parse::<u32>() {
                Ok(n @ 0..=5) => n,
                _ => {
                    return Err(Finding::new(format!(
                        "STRUCTURED_OUTPUT_RETRIES must be a number from 0 to 5, got {v:?}"
                    )));
                }
            };
            Ok(())
        },
    ),
];

/// The checks that span settings, after each was read.
pub(super) fn cross_checks(config: &Config, notes: &mut Notes) {
    if config.models.is_empty() && config.unnamed_keys.is_empty() {
        notes.problems.push(Finding::with_fix(
            "No valid models configured in MODEL_CONFIG",
            "MODEL_CONFIG='{\"my-model\":\"app-your-key\"}' (one line, single quotes around the JSON)",
        ));
    }
    if config.stream_idle_timeout <= Duration::from_secs(10) {
        notes.warnings.push(Finding::with_fix(
            format!(
                "STREAM_IDLE_TIMEOUT is {}s: Dify sends a keep-alive only every 10 s, so quiet streams will be cut",
                config.stream_idle_timeout.as_secs_f64()
            ),
            "STREAM_IDLE_TIMEOUT=60",
        ));
    }
}

/// What an unset required setting is told.
pub(super) fn missing(name: &str) -> Option<Finding> {
    match name {
        "DIFY_API_BASE" => Some(Finding::with_fix(
            "DIFY_API_BASE is not set or empty",
            "DIFY_API_BASE=https://api.dify.ai/v1 (or http://your-dify-host/v1)",
        )),
        _ => None,
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn one_of<T: Copy>(name: &str, value: &str, choices: &[(&str, T)]) -> Result<T, Finding> {
    let lower = value.to_ascii_lowercase();
    choices.iter().find(|(word, _)| *word == lower).map(|(_, v)| *v).ok_or_else(|| {
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        let expected = match words.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Finding::new(format!("{name} must be {expected}, got {lower:?}"))
    })
}

fn flag(name: &str, value: &str) -> Result<bool, Finding> {
    match value.to_ascii_lowercase().as_str() {
        "false" | "0" | "no" | "off" => Ok(false),
        "true" | "1" | "yes" | "on" => Ok(true),
        other => Err(Finding::new(format!("{name} must be true or false, got {other:?}"))),
    }
}

/// A positive, finite number (seconds, days, MiB).
fn positive(name: &str, value: &str, what: &str) -> Result<f64, Finding> {
    let number: f64 = value.parse().map_err(|_| {
        Finding::with_fix(
            format!("{name} must be {what}, got {value:?}"),
            format!("set {name} to {what} in .env or remove it to use the default"),
        )
    })?;
    if !(number.is_finite() && number > 0.0) {
        return Err(Finding::new(format!("{name} must be positive, got {number}")));
    }
    Ok(number)
}

fn seconds(name: &str, value: &str) -> Result<Duration, Finding> {
    Ok(Duration::from_secs_f64(positive(name, value, "a number of seconds")?.min(86_400.0)))
}

fn header_names(name: &str, value: &str) -> Result<Vec<String>, Finding> {
    let names: Vec<String> = list(value).into_iter().map(|h| h.to_ascii_lowercase()).collect();
    if let Some(bad) = names.iter().find(|h| reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()) {
        return Err(Finding::new(format!("{name} contains an invalid header name {bad:?}")));
    }
    Ok(names)
}

fn base_url(base: &str, notes: &mut Notes) -> Result<String, Finding> {
    let trimmed = base.trim_end_matches('/');
    let invalid = || {
        Finding::with_fix(
            format!("DIFY_API_BASE must be an http:// or https:// URL, got {:?}", mask_url_credentials(base)),
            "DIFY_API_BASE=https://api.dify.ai/v1",
        )
    };
    let mut url = Url::parse(trimmed).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    if !url.username().is_empty() || url.password().is_some() {
        // reqwest would turn them into a Basic Authorization header next to the app key's
        // Bearer one: never sent, and never shown.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        notes.warnings.push(Finding::with_fix(
            format!(
                "DIFY_API_BASE carries credentials ({}); Dify's service API takes each app's key as a Bearer token, not URL credentials, so opendify does not send them",
                mask_url_credentials(trimmed)
            ),
            format!("DIFY_API_BASE={}", url.as_str().trim_end_matches('/')),
        ));
    }
    let cleaned = url.as_str().trim_end_matches('/').to_string();
    if !url.path().trim_end_matches('/').ends_with("/v1") {
        notes.warnings.push(Finding::with_fix(
            format!("DIFY_API_BASE {cleaned} does not end with /v1; Dify's service API lives under /v1"),
            format!("DIFY_API_BASE={cleaned}/v1"),
        ));
    }
    Ok(cleaned)
}
