//! `opendify serve`: the axum application, its state, and the listener with graceful
//! shutdown. Routes live in their own files; errors leave in OpenAI's shape.

pub mod auth;
mod chat;
pub mod gate;
pub mod limits;
mod listen;
pub mod metrics;
mod ops;
mod relay;
mod smoothing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Registry, UploadCache};
use crate::config::Config;
use crate::conversations::{Conversations, IdentityRules, Store};
use crate::dify::DifyClient;
use crate::openai::{ApiError, ModelList, ModelObject, unix_now};

pub struct AppState {
    pub config: Config,
    pub client: DifyClient,
    pub registry: Registry,
    pub uploads: UploadCache,
    pub conversations: Conversations,
    /// Who the user of a request is.
    pub identity: IdentityRules,
    /// `created` of every model object: when this server started.
    pub started_at: u64,
    /// Cancelled when the shutdown drain time is over: open streams end with an error.
    pub drain_deadline: CancellationToken,
    /// Client auth, body and concurrency limits, the shutdown flag.
    pub gate: gate::Gate,
    pub metrics: Arc<metrics::Metrics>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Describes every configured app and builds the state `serve` runs with.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        let store = Store::open(&config.conversation_store, config.mapping_ttl).await.map_err(|e| {
            let fix = e.fix().map(|f| format!("\n  hint: {f}")).unwrap_or_default();
            anyhow::anyhow!("{e}{fix}")
        })?;
        let conversations = Conversations::new(store, config.branch_with_parent);
        let client = DifyClient::new(&config)?;
        let (registry, discovery) = Registry::discover(&config, client.clone()).await;
        for warning in discovery.warnings {
            tracing::warn!("⚠️ {warning}");
        }
        let gate = gate::Gate::from_config(&config);
        Ok(AppState {
            identity: IdentityRules::from_config(&config),
            config,
            client,
            registry,
            uploads: UploadCache::default(),
            conversations,
            started_at: unix_now(),
            drain_deadline: CancellationToken::new(),
            gate,
            metrics: Arc::default(),
        })
    }
}

/// The application; tests drive it on an ephemeral port.
pub fn router(state: SharedState) -> Router {
    let cors = gate::cors(&state.config);
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
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

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Unknown endpoint; opendify serves /v1/chat/completions, /v1/models and /health",
    )
    .code("unknown_url")
    .into_response()
}

async fn list_models(State(state): State<SharedState>) -> Response {
    state.registry.refresh_if_stale().await;
    let routes = state.registry.list();
    let data = routes
        .iter()
        .map(|r| ModelObject { id: &r.name, object: "model", created: state.started_at, owned_by: "dify" })
        .collect();
    axum::Json(ModelList { object: "list", data }).into_response()
}

async fn get_model(State(state): State<SharedState>, Path(id): Path<String>) -> Response {
    match state.registry.get(&id) {
        Some(route) => {
            axum::Json(ModelObject { id: &route.name, object: "model", created: state.started_at, owned_by: "dify" })
                .into_response()
        }
        None => unknown_model(&id, &state.registry.names()).into_response(),
    }
}

pub fn unknown_model(model: &str, available: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "The model `{model}` does not exist or you do not have access to it. Available models: {}",
            if available.is_empty() { "(none)".to_string() } else { available.join(", ") }
        ),
    )
    .param("model")
    .code("model_not_found")
}

/// Binds, serves until SIGINT/SIGTERM, then lets in-flight requests finish for up to
/// SHUTDOWN_TIMEOUT before ending the streams still open.
pub async fn serve(state: AppState) -> anyhow::Result<()> {
    let addr = state.config.listen_addr();
    let listener = TcpListener::bind(&addr).await.map_err(|e| bind_error(&addr, e, state.config.port))?;
    let local: SocketAddr = listener.local_addr()?;
    let names = state.registry.names();
    tracing::info!("Loaded {} models: {}", names.len(), names.join(", "));
    tracing::info!("🚀 opendify listening on http://{local} (Dify: {})", state.client.base());
    auth::warn_if_open(&state.gate.auth, local);
    run(listener, Arc::new(state), shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes (tests use this).
pub async fn run(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let drain_for = state.config.shutdown_timeout;
    spawn_store_cleanup(state.clone());
    let deadline = state.drain_deadline.clone();
    let options = listen::ServeOptions {
        header_timeout: state.gate.limits.header_timeout,
        drain_deadline: state.drain_deadline.clone(),
    };
    let app = router(state.clone());
    let state_for_flush = state.clone();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        shutdown.await;
        state.gate.begin_shutdown();
        tracing::info!("shutdown requested: /ready is 503, no new connections, letting in-flight requests finish");
        let _ = signalled_tx.send(());
    };
    let server = tokio::spawn(listen::serve(listener, app, signalled, options));
    // Once shutdown starts, streams get `drain_for` to finish; then they are ended with an
    // error chunk (not cut), and the server gets a moment to flush them.
    tokio::spawn(async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(drain_for).await;
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
    if err.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {addr}: the address is already in use\n  hint: run `opendify doctor check-port` to see which process holds it, or set SERVER_PORT={} (or --port)",
            port.saturating_add(1)
        )
    } else {
        anyhow::anyhow!(
            "cannot listen on {addr}: {err}\n  hint: check SERVER_HOST/SERVER_PORT (ports below 1024 need privileges)"
        )
    }
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
