//! The model registry: which Dify app serves each model name, in which mode, with which
//! input and output variables. Learned from each app's `/info` and `/parameters` at startup;
//! an app that cannot be reached then is retried later instead of stopping the server.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::config::{Config, ModelSpec};
use crate::dify::{AppMode, AppParameters, DifyClient, DifyError};
use crate::secret::Secret;

/// How long an app that could not be described waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct AppRoute {
    pub name: String,
    pub key: Secret,
    pub mode: AppMode,
    pub mode_source: ModeSource,
    /// Input variable that receives the user's message (workflow and completion apps).
    pub input: Option<String>,
    pub output: Option<String>,
    /// This model's TOOL_CALLS, when MODEL_CONFIG sets one.
    pub tools: Option<crate::config::ToolCalls>,
    pub app_name: Option<String>,
    pub parameters: Option<AppParameters>,
    /// Why the last attempt to read `/info` failed.
    pub discovery_error: Option<DifyError>,
}

/// Where an app's mode came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSource {
    /// `mode` in MODEL_CONFIG.
    Configured,
    /// The app's `/info`.
    Info,
    /// Dify could not be asked (or is too old to say): assumed chat.
    Default,
}

impl ModeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeSource::Configured => "configured",
            ModeSource::Info => "info",
            ModeSource::Default => "default",
        }
    }
}

impl AppRoute {
    /// The input variable for workflow and completion apps: the configured one, else the
    /// single required text field of the app's form, else `query`.
    pub fn input_variable(&self) -> String {
        if let Some(name) = &self.input {
            return name.clone();
        }
        let fields = self.parameters.as_ref().map(AppParameters::input_fields).unwrap_or_default();
        let text_fields: Vec<_> =
            fields.iter().filter(|f| f.required && matches!(f.control.as_str(), "paragraph" | "text-input")).collect();
        if text_fields.len() == 1 {
            return text_fields[0].variable.clone();
        }
        "query".to_string()
    }
}

pub struct Registry {
    client: DifyClient,
    routes: RwLock<Vec<Arc<AppRoute>>>,
    /// DIFY_API_KEYS entries whose app could not be named yet.
    pending_keys: Mutex<Vec<Secret>>,
    last_attempt: Mutex<Instant>,
}

/// What a model's discovery found, for startup logs and the doctor.
pub struct Discovery {
    pub warnings: Vec<String>,
}

impl Registry {
    /// Reads every app's `/info` and `/parameters` concurrently.
    pub async fn discover(config: &Config, client: DifyClient) -> (Registry, Discovery) {
        let mut warnings = Vec::new();
        let routes = join_all(config.models.iter().map(|spec| describe(&client, spec))).await;
        let mut routes: Vec<Arc<AppRoute>> = routes.into_iter().map(Arc::new).collect();
        for route in &routes {
            if let Some(err) = &route.discovery_error {
                warnings.push(format!(
                    "could not read /info of model `{}` ({err}); assuming mode {} and retrying later",
                    route.name, route.mode
                ));
            }
        }
        let mut pending = Vec::new();
        for (key, outcome) in
            config.unnamed_keys.iter().zip(join_all(config.unnamed_keys.iter().map(|k| named(&client, k))).await)
        {
            match outcome {
                Ok(route) => add_unique(&mut routes, route),
                Err(err) => {
                    warnings.push(format!(
                        "could not name the app of key {} from DIFY_API_KEYS ({err}); retrying later",
                        key.masked()
                    ));
                    pending.push(key.clone());
                }
            }
        }
        let registry = Registry {
            client,
            routes: RwLock::new(routes),
            pending_keys: Mutex::new(pending),
            last_attempt: Mutex::new(Instant::now()),
        };
        (registry, Discovery { warnings })
    }

    pub fn get(&self, name: &str) -> Option<Arc<AppRoute>> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.iter().find(|r| r.name == name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<AppRoute>> {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.list().iter().map(|r| r.name.clone()).collect()
    }

    /// Retries apps that could not be described, at most every 30 seconds.
    pub async fn refresh_if_stale(&self) {
        let needs = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            routes.iter().any(|r| r.discovery_error.is_some())
                || !self.pending_keys.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
        };
        if !needs {
            return;
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < RETRY_AFTER {
                return;
            }
            *last = Instant::now();
        }
        let stale: Vec<Arc<AppRoute>> = self.list().into_iter().filter(|r| r.discovery_error.is_some()).collect();
        for old in stale {
            let spec = ModelSpec {
                name: old.name.clone(),
                key: old.key.clone(),
                mode: (old.mode_source == ModeSource::Configured).then_some(old.mode),
                input: old.input.clone(),
                output: old.output.clone(),
                tools: old.tools,
            };
            let fresh = describe(&self.client, &spec).await;
            if fresh.discovery_error.is_none() {
                tracing::info!(model = %fresh.name, mode = %fresh.mode, "model described by Dify after retry");
                let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = routes.iter_mut().find(|r| r.name == fresh.name) {
                    *slot = Arc::new(fresh);
                }
            }
        }
        let keys: Vec<Secret> = std::mem::take(&mut *self.pending_keys.lock().unwrap_or_else(|e| e.into_inner()));
        for key in keys {
            match named(&self.client, &key).await {
                Ok(route) => {
                    let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                    add_unique(&mut routes, route);
                }
                Err(_) => self.pending_keys.lock().unwrap_or_else(|e| e.into_inner()).push(key),
            }
        }
    }
}

fn add_unique(routes: &mut Vec<Arc<AppRoute>>, mut route: AppRoute) {
    let base = route.name.clone();
    let mut n = 2;
    while routes.iter().any(|r| r.name == route.name) {
        route.name = format!("{base}-{n}");
        n += 1;
    }
    routes.push(Arc::new(route));
}

async fn named(client: &DifyClient, key: &Secret) -> Result<AppRoute, DifyError> {
    let spec = ModelSpec::new(String::new(), key.clone());
    let route = describe(client, &spec).await;
    match (&route.discovery_error, &route.app_name) {
        (None, Some(name)) if !name.trim().is_empty() => Ok(AppRoute { name: name.trim().to_string(), ..route }),
        (Some(err), _) => Err(err.clone()),
        _ => Err(DifyError::Protocol("the app's /info has no name".into())),
    }
}

/// Describes one app from its `/info` and `/parameters`. Never fails: what could not be
/// learned is recorded in `discovery_error`.
pub async fn describe(client: &DifyClient, spec: &ModelSpec) -> AppRoute {
    let (info, parameters) = tokio::join!(client.info(&spec.key), client.parameters(&spec.key));
    let mut route = AppRoute {
        name: spec.name.clone(),
        key: spec.key.clone(),
        mode: spec.mode.unwrap_or(AppMode::Chat),
        mode_source: if spec.mode.is_some() { ModeSource::Configured } else { ModeSource::Default },
        input: spec.input.clone(),
        output: spec.output.clone(),
        tools: spec.tools,
        app_name: None,
        parameters: parameters.ok(),
        discovery_error: None,
    };
    match info {
        Ok(info) => {
            route.app_name = Some(info.name.clone());
            if spec.mode.is_none()
                && let Some(mode) = info.mode.as_deref().and_then(|m| m.parse().ok())
            {
                route.mode = mode;
                route.mode_source = ModeSource::Info;
            }
        }
        Err(err) => route.discovery_error = Some(err),
    }
    route
}
