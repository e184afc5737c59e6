//! MODEL_CONFIG: the JSON object naming each model and its Dify app key (or an object
//! overriding what the app's `/info` says), read in written order with duplicates noticed,
//! and the warnings about keys that cannot be right.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::{ModelSpec, ToolCalls};
use crate::dify::AppMode;
use crate::finding::Finding;
use crate::secret::Secret;

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

pub(super) fn parse_model_entries(text: &str) -> Result<Vec<(String, Value)>, serde_json::Error> {
    serde_json::from_str::<OrderedEntries>(text).map(|e| e.0)
}

pub(super) fn parse_model_config(
    text: &str,
    problems: &mut Vec<Finding>,
    warnings: &mut Vec<Finding>,
) -> Vec<ModelSpec> {
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
            Value::String(key) => ModelSpec {
                name: name.clone(),
                key: Secret::new(key.trim()),
                mode: None,
                input: None,
                output: None,
                tools: None,
            },
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
        if !["key", "mode", "input", "output", "tools"].contains(&field.as_str()) {
            return Err(Finding::with_fix(
                format!("MODEL_CONFIG model {name:?} has an unknown field {field:?}"),
                "allowed fields: key, mode, input, output, tools",
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
    let tools = match text("tools")? {
        None => None,
        Some(t) => Some(t.parse::<ToolCalls>().map_err(|_| {
            Finding::with_fix(
                format!("MODEL_CONFIG model {name:?} has an unknown tools setting {t:?}"),
                "tools is one of auto, emulate, off",
            )
        })?),
    };
    Ok(ModelSpec {
        name: name.to_string(),
        key: Secret::new(key),
        mode,
        input: text("input")?,
        output: text("output")?,
        tools,
    })
}

/// The example keys of `.env.example` and the README: a configuration still carrying one was
/// copied without being edited (a proxy key everyone can read in the repository is no key).
pub const PLACEHOLDER_KEYS: &[&str] =
    &["app-your-key", "app-aaa", "app-bbb", "app-...", "app-xxx", "app-yyy", "sk-change-me", "sk-another"];

pub(super) fn is_placeholder(key: &Secret) -> bool {
    PLACEHOLDER_KEYS.contains(&key.expose().trim())
}

pub(super) fn warn_key_prefix(what: &str, key: &Secret, warnings: &mut Vec<Finding>) {
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
