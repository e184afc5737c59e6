//! Endpoints for operators and orchestrators: `GET /ready` (may this instance take traffic:
//! not shutting down, conversation store reachable) and `GET /metrics` (OpenMetrics text).
//! Neither needs a client key and neither shows a secret. `GET /health` (in `mod.rs`) only
//! says the process is up.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SharedState;
use super::metrics::{MappingsCount, Snapshot};

/// The longest /ready and /metrics wait on the conversation store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often /metrics recounts the conversation mappings (counting reads a table through),
/// and at most what share of the time recounting may take on a large store (1%).
const MAPPINGS_MAX_AGE: Duration = Duration::from_secs(30);
const MAPPINGS_AGE_PER_COUNT_TIME: u32 = 100;

pub async fn ready(State(state): State<SharedState>) -> Response {
    if state.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "shutting_down"}))).into_response();
    }
    match store_health(&state).await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(reason) => {
            tracing::warn!("❌ not ready: {reason}");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "reason": reason})))
                .into_response()
        }
    }
}

async fn store_health(state: &SharedState) -> Result<(), String> {
    let started = Instant::now();
    let result = tokio::time::timeout(STORE_PROBE_TIMEOUT, state.conversations.store().health()).await;
    state.metrics.observe_store(started.elapsed());
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the conversation store did not answer within {}s", STORE_PROBE_TIMEOUT.as_secs())),
    }
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    let ready = !state.is_shutting_down() && store_health(&state).await.is_ok();
    let live = state.live();
    let snapshot = Snapshot {
        conversation_mappings: mappings(&state).await,
        upstream_in_flight: live.limits.upstream_in_flight(),
        upstream_capacity: live.limits.upstream_capacity(),
        ready,
    };
    let text = state.metrics.render(&snapshot);
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn mappings(state: &SharedState) -> Option<u64> {
    let cached = *state.metrics.mappings_cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(last) = cached
        && last.at.elapsed() < MAPPINGS_MAX_AGE.max(last.took * MAPPINGS_AGE_PER_COUNT_TIME)
    {
        return Some(last.count);
    }
    let started = Instant::now();
    // Only the count: the doctor's full stats read every conversation (on Redis, one
    // round trip each).
    let count = tokio::time::timeout(STORE_PROBE_TIMEOUT, state.conversations.store().conversation_count()).await;
    let took = started.elapsed();
    state.metrics.observe_store(took);
    match count {
        Ok(Ok(count)) => {
            *state.metrics.mappings_cache.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(MappingsCount { at: Instant::now(), count, took });
            Some(count)
        }
        _ => cached.map(|last| last.count),
    }
}
