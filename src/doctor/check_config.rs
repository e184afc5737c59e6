//! `check-config` (the guide's problems 1, 5 and 6): which `.env` was loaded, every setting
//! with its masked value and where it came from, and every problem and warning of the
//! loader `serve` uses, each with the line to write. The loader already knows about broken
//! JSON, empty keys, keys without `app-`, duplicate models and an empty model list; this
//! check adds what only the file system can say ([`super::files`]): whether the data and
//! log directories are writable.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::context::Context;
use super::files::{DirState, describe_dir, dir_state, parent_dir};
use super::report::CheckResult;
use crate::config::{Config, EnvFileStatus, Finding, SettingView};
use crate::conversations::record::StoreLocation;
use crate::secret::mask_url_credentials;

pub(crate) const ID: &str = "check-config";

#[derive(Debug, Serialize)]
struct Details {
    env_file: EnvFile,
    settings: Vec<SettingView>,
    problems: Vec<Finding>,
    warnings: Vec<Finding>,
    models: Vec<Model>,
    conversation_store: Option<String>,
    data_dir: Option<DirState>,
    log_dir: Option<DirState>,
}

#[derive(Debug, Serialize)]
struct EnvFile {
    /// `loaded`, `not-found` or `unreadable`.
    state: &'static str,
    path: PathBuf,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Model {
    name: String,
    key: String,
    /// `MODEL_CONFIG` or `DIFY_API_KEYS` (then the name comes from Dify).
    source: &'static str,
    mode: Option<String>,
}

pub(crate) fn run(ctx: &Context) -> CheckResult {
    let loaded = &ctx.loaded;
    let mut result = CheckResult::new(ID);
    let env_file = EnvFile::of(&loaded.env_file);
    let env_text = env_file.describe();
    result.line(format!("env file: {env_text}"));
    for problem in &loaded.problems {
        result.fail(problem.clone());
    }
    for warning in &loaded.warnings {
        result.warn(warning.clone());
    }
    let settings = masked_settings(&loaded.settings);
    let width = settings.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for setting in &settings {
        let value = setting.value.as_deref().unwrap_or("(unset)");
        result.line(format!("{:<width$} = {value}  [{}]", setting.name, setting.source));
    }
    let checked = loaded.config.as_ref().map(|config| check_loaded(&mut result, config)).unwrap_or_default();
    result.summary(summary(&env_text, loaded.problems.len(), loaded.warnings.len(), checked.models.len()));
    result.details(Details {
        env_file,
        settings,
        problems: loaded.problems.clone(),
        warnings: loaded.warnings.clone(),
        models: checked.models,
        conversation_store: checked.store,
        data_dir: checked.data_dir,
        log_dir: checked.log_dir,
    });
    result
}

impl EnvFile {
    fn of(status: &EnvFileStatus) -> EnvFile {
        match status {
            EnvFileStatus::Loaded { path } => EnvFile { state: "loaded", path: path.clone(), error: None },
            EnvFileStatus::NotFound { path } => EnvFile { state: "not-found", path: path.clone(), error: None },
            EnvFileStatus::Unreadable { path, error } => {
                EnvFile { state: "unreadable", path: path.clone(), error: Some(error.clone()) }
            }
        }
    }

    fn describe(&self) -> String {
        match self.state {
            "loaded" => format!("{} loaded", self.path.display()),
            "not-found" => format!("no {} (settings from the environment)", self.path.display()),
            _ => format!("{} unreadable", self.path.display()),
        }
    }
}

/// The settings as shown: the loader masks secrets; URLs may carry credentials too (a
/// Redis password, a user in DIFY_API_BASE), masked here.
fn masked_settings(settings: &[SettingView]) -> Vec<SettingView> {
    settings.iter().map(|s| SettingView { value: s.value.as_deref().map(mask_url_credentials), ..s.clone() }).collect()
}

/// What a configuration that loaded says, beyond its settings.
#[derive(Default)]
struct Checked {
    models: Vec<Model>,
    store: Option<String>,
    data_dir: Option<DirState>,
    log_dir: Option<DirState>,
}

/// The models, the store and the directories opendify will write to.
fn check_loaded(result: &mut CheckResult, config: &Config) -> Checked {
    let models = models(config);
    let names: Vec<String> = models
        .iter()
        .map(|m| if m.name.is_empty() { format!("(named by Dify, key {})", m.key) } else { m.name.clone() })
        .collect();
    result.line(format!("models: {}", names.join(", ")));
    let location = StoreLocation::parse(&config.conversation_store);
    let store = location.describe();
    result.line(format!("conversation store: {store}"));
    let data_dir = match &location {
        StoreLocation::Sqlite(path) => Some(check_data_dir(result, &parent_dir(path))),
        StoreLocation::Redis(_) => None,
    };
    let log_dir = config.log_file.as_ref().map(|log_file| check_log_dir(result, &parent_dir(log_file)));
    Checked { models, store: Some(store), data_dir, log_dir }
}

fn models(config: &Config) -> Vec<Model> {
    let named = config.models.iter().map(|model| Model {
        name: model.name.clone(),
        key: model.key.masked(),
        source: "MODEL_CONFIG",
        mode: model.mode.map(|m| m.to_string()),
    });
    let unnamed = config.unnamed_keys.iter().map(|key| Model {
        name: String::new(),
        key: key.masked(),
        source: "DIFY_API_KEYS",
        mode: None,
    });
    named.chain(unnamed).collect()
}

/// The SQLite store's directory: without it, conversation mappings cannot be saved.
fn check_data_dir(result: &mut CheckResult, dir: &Path) -> DirState {
    let state = dir_state(dir);
    result.line(format!("data directory: {}", describe_dir(&state)));
    if !state.writable {
        result.fail(Finding::with_fix(
            format!(
                "the data directory {} is not writable ({}): conversation mappings cannot be saved",
                dir.display(),
                state.error.as_deref().unwrap_or("permission denied")
            ),
            format!(
                "make it writable for the user running opendify (e.g. `chown -R $(id -u) {0}` or `chmod u+w {0}`), or set CONVERSATION_STORE to a writable path",
                dir.display()
            ),
        ));
    }
    state
}

/// LOG_FILE's directory: without it, only stderr gets the log (a warning).
fn check_log_dir(result: &mut CheckResult, dir: &Path) -> DirState {
    let state = dir_state(dir);
    result.line(format!("log directory: {}", describe_dir(&state)));
    if !state.writable {
        result.warn(Finding::with_fix(
            format!("the log directory {} is not writable: LOG_FILE cannot be written", dir.display()),
            format!("create it and make it writable (`mkdir -p {0}`), or unset LOG_FILE", dir.display()),
        ));
    }
    state
}

/// `.env loaded, 3 models`, with the count of problems or warnings when there are any.
fn summary(env_text: &str, problems: usize, warnings: usize, models: usize) -> String {
    let model_text = match models {
        0 => "no models".to_string(),
        1 => "1 model".to_string(),
        n => format!("{n} models"),
    };
    if problems > 0 {
        format!("{env_text}, {problems} problem{}", plural(problems))
    } else if warnings > 0 {
        format!("{env_text}, {model_text}, {warnings} warning{}", plural(warnings))
    } else {
        format!("{env_text}, {model_text}")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
