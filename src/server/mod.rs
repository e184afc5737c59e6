//! `opendify serve`: the application's state, its routes, and the listener with graceful
//! shutdown and reload.
//!
//! The state is in two parts. [`AppState`] lives as long as the process: the conversation
//! store, the upload cache, the metrics, the shutdown signals. [`Live`] is what a reload
//! replaces: the configuration and everything built from it (the Dify client, the model
//! registry, auth, limits). A request takes the `Live` current when it arrives and keeps it
//! to its end, so open streams finish on what they started with.

mod audio;
mod auth;
mod chat;
mod completions;
mod exchange;
mod finish;
mod gate;
mod limits;
mod listen;
mod messages;
mod metrics;
mod ops;
mod raw_errors;
mod relay;
mod reload;
mod responses;
mod smoothing;
mod stream;
mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::models::{ModelInfo, ModelList, ModelObject, ModelPage, PageQuery};
use crate::api::{Dialect, unix_now};
use crate::bridge::{ApiError, Registry, UploadCache};
use crate::config::{Config, LoadOptions, Loaded, SettingView};
use crate::conversations::{Conversations, IdentityRules, Store};
use crate::dify::DifyClient;

/// What a reload replaces: the configuration and everything built from it.
pub struct Live {
    pub config: Config,
    pub client: DifyClient,
    pub registry: Registry,
    pub identity: IdentityRules,
    pub auth: auth::Auth,
    pub limits: limits::Limits,
}

impl Live {
    /// Builds everything a configuration describes, reading each app's `/info` and
    /// `/parameters` concurrently.
    pub async fn build(config: Config) -> anyhow::Result<Live> {
        let client = DifyClient::new(&config.dify_client_options())?;
        let (registry, discovery) = Registry::discover(&config, client.clone()).await;
        for warning in discovery.warnings {
            tracing::warn!("⚠️ {warning}");
        }
        Ok(Live {
            identity: IdentityRules::from_config(&config),
            auth: auth::Auth::from_config(&config),
            limits: limits::Limits::from_config(&config),
            registry,
            client,
            config,
        })
    }
}

pub struct AppState {
    live: ArcSwap<Live>,
    pub uploads: UploadCache,
    pub conversations: Conversations,
    pub metrics: Arc<metrics::Metrics>,
    /// `created` of every model object: when this server started.
    pub started_at: u64,
    /// Cancelled when the shutdown drain time is over: open streams end with an error.
    pub drain_deadline: CancellationToken,
    shutting_down: AtomicBool,
    /// How the configuration was read at startup, to read it again on reload, and the
    /// settings it gave (a reload says what changed).
    pub load_options: LoadOptions,
    settings: std::sync::Mutex<Vec<SettingView>>,
    reloading: tokio::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Opens the conversation store, describes every configured app and builds the state
    /// `serve` runs with.
    pub async fn build(loaded: Loaded, load_options: LoadOptions) -> anyhow::Result<AppState> {
        let Some(config) = loaded.config.filter(|_| loaded.problems.is_empty()) else {
            anyhow::bail!("the configuration has problems");
        };
        let store = Store::open(&config.conversation_store, config.mapping_ttl)
            .await
            .map_err(|e| anyhow::Error::new(e.finding()))?;
        let conversations = Conversations::new(store, config.branch_with_parent);
        let live = Live::build(config).await?;
        Ok(AppState {
            live: ArcSwap::from_pointee(live),
            uploads: UploadCache::default(),
            conversations,
            metrics: Arc::default(),
            started_at: unix_now(),
            drain_deadline: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            load_options,
            settings: std::sync::Mutex::new(loaded.settings),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration and what was built from it, as of now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Makes `live` the configuration new requests get (reload; tests tuning limits).
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// From now on `/ready` answers 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// The application; tests drive it on an ephemeral port.
pub fn router(state: SharedState) -> Router {
    let live = state.live();
    let cors = gate::cors(&live.config);
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/admin/reload", post(reload::admin_reload))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/models", get(list_models))
        .route("/models/{*id}", get(get_model))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        // Dify generations: each handler holds an upstream slot and is counted by model
        // (`gate::generation`).
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/audio/transcriptions", post(audio::transcriptions))
        .route("/v1/audio/speech", post(audio::speech))
        // Clients configured with a bare base URL (no `/v1`).
        .route("/chat/completions", post(chat::chat_completions))
        .route("/v1/responses", post(responses::create))
        .route("/responses", post(responses::create))
        .route("/completions", post(completions::completions))
        .route("/audio/transcriptions", post(audio::transcriptions))
        .route("/audio/speech", post(audio::speech))
        .route("/v1/messages", post(messages::create_message))
        .route("/messages", post(messages::create_message))
        .fallback(not_found)
        // The gate reads bodies within MAX_BODY_MB (as of now: it may be reloaded).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate::gate))
        .with_state(state);
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let error = ApiError::not_found(
        "Unknown endpoint; opendify serves /v1/chat/completions, /v1/responses, /v1/messages, /v1/completions, \
         /v1/audio/transcriptions, /v1/audio/speech, /v1/models and /health"
            .to_string(),
    )
    .code("unknown_url");
    Dialect::of_path(uri.path()).error_response(&error)
}

/// The configured models: in Anthropic's shape (paged) for Anthropic's clients, which send
/// `anthropic-version`, else in OpenAI's.
async fn list_models(State(state): State<SharedState>, headers: HeaderMap, Query(page): Query<PageQuery>) -> Response {
    let live = state.live();
    live.registry.refresh_if_stale().await;
    let routes = live.registry.list();
    if Dialect::of_request("/v1/models", &headers) == Dialect::Anthropic {
        let models = routes.iter().map(|r| ModelInfo::new(&r.name, r.app_name.as_deref(), state.started_at)).collect();
        return match ModelPage::new(models, &page) {
            Ok(page) => axum::Json(page).into_response(),
            Err(error) => Dialect::Anthropic.error_response(&error),
        };
    }
    axum::Json(ModelList::new(routes.iter().map(|r| r.name.as_str()), state.started_at)).into_response()
}

async fn get_model(State(state): State<SharedState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let live = state.live();
    let dialect = Dialect::of_request("/v1/models", &headers);
    match (live.registry.get(&id), dialect) {
        (Some(route), Dialect::Anthropic) => {
            axum::Json(ModelInfo::new(&route.name, route.app_name.as_deref(), state.started_at)).into_response()
        }
        (Some(route), Dialect::OpenAi) => axum::Json(ModelObject::new(&route.name, state.started_at)).into_response(),
        (None, dialect) => dialect.error_response(&unknown_model(&id, &live.registry.names())),
    }
}

pub fn unknown_model(model: &str, available: &[String]) -> ApiError {
    ApiError::not_found(format!(
        "The model `{}` does not exist or you do not have access to it. Available models: {}",
        crate::logging::Shown(model),
        if available.is_empty() { "(none)".to_string() } else { available.join(", ") }
    ))
    .param("model")
    .code("model_not_found")
}

/// Binds, serves until SIGINT/SIGTERM, then lets in-flight requests finish for up to
/// SHUTDOWN_TIMEOUT before ending the streams still open. SIGHUP reloads the configuration.
pub async fn serve(state: AppState) -> anyhow::Result<()> {
    let live = state.live();
    let addr = live.config.listen_addr();
    let listener = TcpListener::bind(&addr).await.map_err(|e| bind_error(&addr, e, live.config.port))?;
    let local: SocketAddr = listener.local_addr()?;
    let names = live.registry.names();
    tracing::info!("Loaded {} models: {}", names.len(), names.join(", "));
    tracing::info!("🚀 opendify listening on http://{local} (Dify: {})", live.client.base());
    auth::warn_if_open(&live.auth, local);
    trim::after_startup();
    let state = Arc::new(state);
    reload::on_sighup(state.clone());
    run(listener, state, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes (tests use this).
pub async fn run(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    spawn_store_cleanup(state.clone());
    let deadline = state.drain_deadline.clone();
    let options = listen::ServeOptions {
        header_timeout: state.live().limits.header_timeout,
        drain_deadline: state.drain_deadline.clone(),
    };
    let app = router(state.clone());
    let state_for_flush = state.clone();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.begin_shutdown();
            tracing::info!("shutdown requested: /ready is 503, no new connections, letting in-flight requests finish");
            let _ = signalled_tx.send(());
        }
    };
    let server = tokio::spawn(listen::serve(listener, app, signalled, options));
    // Once shutdown starts, streams get SHUTDOWN_TIMEOUT to finish; then they are ended with
    // an error chunk (not cut), and the server gets a moment to flush them.
    tokio::spawn(async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(state.live().config.shutdown_timeout).await;
            tracing::warn!("shutdown timeout reached: ending the streams still open");
            deadline.cancel();
        }
    });
    let served = server.await;
    // Turns answered in the last moments are still in memory: write them before exiting.
    if tokio::time::timeout(Duration::from_secs(10), state_for_flush.conversations.store().flush()).await.is_err() {
        tracing::warn!("⚠️ the conversation store did not finish writing within 10 s; the latest turns may be lost");
    }
    served??;
    tracing::info!("opendify stopped");
    Ok(())
}

/// Removes expired mappings every hour (SQLite; Redis expires keys itself).
fn spawn_store_cleanup(state: SharedState) {
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            match state.conversations.store().prune_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("🧹 removed {n} expired conversation mappings"),
                Err(e) => tracing::warn!("⚠️ cleaning up expired mappings failed: {e}"),
            }
        }
    });
}

fn bind_error(addr: &str, err: std::io::Error, port: u16) -> anyhow::Error {
    let finding = if err.kind() == std::io::ErrorKind::AddrInUse {
        crate::finding::Finding::with_fix(
            format!("cannot listen on {addr}: the address is already in use"),
            format!(
                "run `opendify doctor check-port` to see which process holds it, or set SERVER_PORT={} (or --port)",
                port.saturating_add(1)
            ),
        )
    } else {
        crate::finding::Finding::with_fix(
            format!("cannot listen on {addr}: {err}"),
            "check SERVER_HOST/SERVER_PORT (ports below 1024 need privileges)",
        )
    };
    anyhow::Error::new(finding)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// How long a finished upstream body may take to close before it is left to a background
/// task (so pooled connections are reused rather than dropped).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(5);
