//! Reload without restart: `SIGHUP`, or `POST /admin/reload` when ADMIN_API_KEY is set,
//! reads the configuration again the way startup did. Models, app keys, proxy keys, limits,
//! timeouts and the log level take effect for requests that arrive afterwards; a request
//! already running finishes on the configuration it started with. A configuration with
//! problems is refused with the same report as at startup and the running one stays; so is
//! one that changes a setting only a restart can apply (the listen address, the store).
//! The log says what changed, with secrets masked.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Live, SharedState};
use crate::api::Dialect;
use crate::bridge::ApiError;
use crate::config::{self, SETTINGS, SettingView};
use crate::logging::LevelChange;

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{report}")]
    Invalid { report: String, problems: Vec<config::Finding> },
    #[error("these settings only change with a restart: {}", names.join(", "))]
    NeedsRestart { names: Vec<&'static str> },
    #[error("the new configuration could not be applied: {0}")]
    Build(String),
}

/// What a successful reload changed, as lines for people.
pub type Changes = Vec<String>;

/// Reads the configuration again and, when it is valid, makes it the live one.
pub async fn reload(state: &SharedState) -> Result<Changes, Refused> {
    let _one_at_a_time = state.reloading.lock().await;
    let loaded = config::load(&state.load_options);
    let Some(config) = loaded.config.clone().filter(|_| loaded.problems.is_empty()) else {
        return Err(Refused::Invalid { report: loaded.problem_report(), problems: loaded.problems });
    };
    let before = state.settings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let changed: Vec<&SettingView> = loaded
        .settings
        .iter()
        .filter(|new| before.iter().find(|old| old.name == new.name).is_none_or(|old| old.digest != new.digest))
        .collect();
    let needs_restart: Vec<&'static str> = changed
        .iter()
        .filter(|s| SETTINGS.iter().any(|setting| setting.name == s.name && setting.restart))
        .map(|s| s.name)
        .collect();
    if !needs_restart.is_empty() {
        return Err(Refused::NeedsRestart { names: needs_restart });
    }
    let mut changes: Changes = changed
        .iter()
        .map(|new| {
            let old = before.iter().find(|old| old.name == new.name).and_then(|old| old.value.clone());
            let shown = |v: Option<String>| v.unwrap_or_else(|| "(unset)".into());
            format!("{}: {} → {}", new.name, shown(old), shown(new.value.clone()))
        })
        .collect();
    for warning in &loaded.warnings {
        tracing::warn!("⚠️ {}", warning.message);
    }
    let level = config.log_level.clone();
    let live = Live::build(config).await.map_err(|e| Refused::Build(format!("{e:#}")))?;
    state.replace_live(live);
    *state.settings.lock().unwrap_or_else(|e| e.into_inner()) = loaded.settings;
    if changes.iter().any(|c| c.starts_with("LOG_LEVEL:")) {
        match crate::logging::set_level(&level) {
            LevelChange::OverriddenByRustLog => {
                changes.push("(LOG_LEVEL has no effect: RUST_LOG is set and wins)".into())
            }
            LevelChange::Changed | LevelChange::NoLogger => {}
        }
    }
    Ok(changes)
}

/// Logs a reload's outcome, for SIGHUP and the admin endpoint alike.
fn log_outcome(outcome: &Result<Changes, Refused>, trigger: &str) {
    match outcome {
        Ok(changes) if changes.is_empty() => {
            tracing::info!("🔄 configuration reloaded ({trigger}): nothing changed")
        }
        Ok(changes) => tracing::info!("🔄 configuration reloaded ({trigger}): {}", changes.join("; ")),
        Err(refused) => tracing::error!("❌ reload ({trigger}) refused, the running configuration stays:\n{refused}"),
    }
}

/// Reloads on every SIGHUP, for as long as the server runs.
pub fn on_sighup(state: SharedState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("⚠️ cannot listen for SIGHUP; reload with POST /admin/reload instead");
            return;
        };
        while hangups.recv().await.is_some() {
            let outcome = reload(&state).await;
            log_outcome(&outcome, "SIGHUP");
        }
    });
    #[cfg(not(unix))]
    let _ = state;
}

/// `POST /admin/reload`: only when ADMIN_API_KEY is set, and only with that key.
pub async fn admin_reload(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let dialect = Dialect::OpenAi;
    let Some(key) = state.live().config.admin_api_key.clone() else {
        let error = ApiError::not_found("POST /admin/reload is off: set ADMIN_API_KEY to use it (SIGHUP reloads too)")
            .code("unknown_url");
        return dialect.error_response(&error);
    };
    if let Err(refusal) = super::auth::Auth::new(&[key], false).check(&headers) {
        return refusal.into_response(dialect);
    }
    let outcome = reload(&state).await;
    log_outcome(&outcome, "POST /admin/reload");
    match outcome {
        Ok(changes) => axum::Json(json!({"reloaded": true, "changes": changes})).into_response(),
        Err(refused) => {
            let (status, detail) = match &refused {
                Refused::Invalid { problems, .. } => (StatusCode::BAD_REQUEST, json!({"problems": problems})),
                Refused::NeedsRestart { names } => (StatusCode::CONFLICT, json!({"restart_required": names})),
                Refused::Build(_) => (StatusCode::BAD_GATEWAY, json!({})),
            };
            let mut body = json!({"reloaded": false, "error": refused.to_string()});
            if let (Some(body), Some(detail)) = (body.as_object_mut(), detail.as_object()) {
                body.extend(detail.clone());
            }
            (status, axum::Json(body)).into_response()
        }
    }
}
