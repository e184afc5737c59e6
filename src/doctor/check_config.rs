//! `check-config` (the guide's problems 1, 5 and 6): which `.env` was loaded, every setting
//! with its masked value and where it came from, and every problem and warning of the
//! loader `serve` uses, each with the line to write. The loader already knows about broken
//! JSON, empty keys, keys without `app-`, duplicate models and an empty model list; this
//! check adds what only the file system can say: whether the data and log directories are
//! writable.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::context::Context;
use super::report::CheckResult;
use crate::config::{EnvFileStatus, Finding, SettingView};
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

/// Whether a directory opendify writes to is usable.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DirState {
    pub path: PathBuf,
    pub exists: bool,
    pub writable: bool,
    /// Unix permission bits (`755`) and owner uid, when the directory exists.
    pub mode: Option<String>,
    pub owner_uid: Option<u32>,
    /// Why it is not writable.
    pub error: Option<String>,
}

pub(crate) fn run(ctx: &Context) -> CheckResult {
    let loaded = &ctx.loaded;
    let mut result = CheckResult::new(ID);

    let env_file = match &loaded.env_file {
        EnvFileStatus::Loaded { path } => EnvFile { state: "loaded", path: path.clone(), error: None },
        EnvFileStatus::NotFound { path } => EnvFile { state: "not-found", path: path.clone(), error: None },
        EnvFileStatus::Unreadable { path, error } => {
            EnvFile { state: "unreadable", path: path.clone(), error: Some(error.clone()) }
        }
    };
    let env_text = match env_file.state {
        "loaded" => format!("{} loaded", env_file.path.display()),
        "not-found" => format!("no {} (settings from the environment)", env_file.path.display()),
        _ => format!("{} unreadable", env_file.path.display()),
    };
    result.line(format!("env file: {env_text}"));

    for problem in &loaded.problems {
        result.fail(problem.clone());
    }
    for warning in &loaded.warnings {
        result.warn(warning.clone());
    }

    // URLs may carry credentials (a Redis password, a user in DIFY_API_BASE): mask them too.
    let settings: Vec<SettingView> = loaded
        .settings
        .iter()
        .map(|s| SettingView { value: s.value.as_deref().map(mask_url_credentials), ..s.clone() })
        .collect();
    let width = settings.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for setting in &settings {
        let value = setting.value.as_deref().unwrap_or("(unset)");
        result.line(format!("{:<width$} = {value}  [{}]", setting.name, setting.source));
    }

    let mut models = Vec::new();
    let mut data_dir = None;
    let mut log_dir = None;
    let mut store = None;
    if let Some(config) = &loaded.config {
        for model in &config.models {
            models.push(Model {
                name: model.name.clone(),
                key: model.key.masked(),
                source: "MODEL_CONFIG",
                mode: model.mode.map(|m| m.to_string()),
            });
        }
        for key in &config.unnamed_keys {
            models.push(Model { name: String::new(), key: key.masked(), source: "DIFY_API_KEYS", mode: None });
        }
        let names: Vec<String> = models
            .iter()
            .map(|m| if m.name.is_empty() { format!("(named by Dify, key {})", m.key) } else { m.name.clone() })
            .collect();
        result.line(format!("models: {}", names.join(", ")));

        let location = StoreLocation::parse(&config.conversation_store);
        let shown_store = location.describe();
        result.line(format!("conversation store: {shown_store}"));
        if let StoreLocation::Sqlite(path) = &location {
            let dir = parent_dir(path);
            let state = dir_state(&dir);
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
            data_dir = Some(state);
        }
        store = Some(shown_store);
        if let Some(log_file) = &config.log_file {
            let dir = parent_dir(log_file);
            let state = dir_state(&dir);
            result.line(format!("log directory: {}", describe_dir(&state)));
            if !state.writable {
                result.warn(Finding::with_fix(
                    format!("the log directory {} is not writable: LOG_FILE cannot be written", dir.display()),
                    format!("create it and make it writable (`mkdir -p {0}`), or unset LOG_FILE", dir.display()),
                ));
            }
            log_dir = Some(state);
        }
    }

    let problems = loaded.problems.len();
    let warnings = loaded.warnings.len();
    let model_text = match models.len() {
        0 => "no models".to_string(),
        1 => "1 model".to_string(),
        n => format!("{n} models"),
    };
    result.summary(if problems > 0 {
        format!("{env_text}, {problems} problem{}", plural(problems))
    } else if warnings > 0 {
        format!("{env_text}, {model_text}, {warnings} warning{}", plural(warnings))
    } else {
        format!("{env_text}, {model_text}")
    });
    result.details(Details {
        env_file,
        settings,
        problems: loaded.problems.clone(),
        warnings: loaded.warnings.clone(),
        models,
        conversation_store: store,
        data_dir,
        log_dir,
    });
    result
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The directory a file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether opendify could write in `dir`. A missing directory is fine when it can be
/// created (the nearest existing ancestor is writable). Writability is tested by creating
/// and removing an empty probe file, the only reliable test (ACLs, read-only mounts, root).
pub(crate) fn dir_state(dir: &Path) -> DirState {
    let mut state =
        DirState { path: dir.to_path_buf(), exists: false, writable: false, mode: None, owner_uid: None, error: None };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            state.exists = true;
            permissions(&meta, &mut state);
            match probe_write(dir) {
                Ok(()) => state.writable = true,
                Err(e) => state.error = Some(e.to_string()),
            }
        }
        Ok(_) => state.error = Some("exists but is not a directory".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ancestor = dir.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.is_dir());
            let ancestor = match ancestor {
                Some(a) if a.as_os_str().is_empty() => Path::new("."),
                Some(a) => a,
                None => Path::new("."),
            };
            match probe_write(ancestor) {
                Ok(()) => state.writable = true,
                Err(e) => {
                    state.error = Some(format!("it does not exist and {} is not writable: {e}", ancestor.display()))
                }
            }
        }
        Err(e) => state.error = Some(e.to_string()),
    }
    state
}

#[cfg(unix)]
fn permissions(meta: &std::fs::Metadata, state: &mut DirState) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    state.mode = Some(format!("{:o}", meta.permissions().mode() & 0o7777));
    state.owner_uid = Some(meta.uid());
}

#[cfg(not(unix))]
fn permissions(meta: &std::fs::Metadata, state: &mut DirState) {
    state.mode = Some(if meta.permissions().readonly() { "read-only" } else { "read-write" }.into());
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".opendify-doctor-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

pub(crate) fn describe_dir(state: &DirState) -> String {
    let mut text = state.path.display().to_string();
    match (state.exists, state.writable) {
        (true, true) => text.push_str(" (writable"),
        (true, false) => text.push_str(" (NOT writable"),
        (false, true) => text.push_str(" (will be created"),
        (false, false) => text.push_str(" (missing, cannot be created"),
    }
    if let Some(mode) = &state.mode {
        text.push_str(&format!(", mode {mode}"));
    }
    if let Some(uid) = state.owner_uid {
        text.push_str(&format!(", owner uid {uid}"));
    }
    text.push(')');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directories_are_fine_when_they_can_be_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir_state(&dir.path().join("a/b"));
        assert!(!state.exists && state.writable, "{state:?}");
        let state = dir_state(dir.path());
        assert!(state.exists && state.writable, "{state:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0, "the probe file was left behind");
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_not_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        std::fs::write(&file, "").expect("write");
        let state = dir_state(&file);
        assert!(!state.writable);
        assert_eq!(parent_dir(Path::new("conversations.db")), PathBuf::from("."));
    }
}
