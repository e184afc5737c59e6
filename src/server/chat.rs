//! `POST /v1/chat/completions`: validate, find the app, resolve the user and the
//! conversation, call Dify (always streaming upstream), then stream or collect the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::ClientAppKey;
use super::gate::{ChatLabels, UpstreamTime};
use super::relay::{Finisher, Relay, RelayEnd, StopGuard, drain};
use super::{SharedState, unknown_model};
use crate::bridge::request::{self, BuildOptions, ConversationPlan};
use crate::bridge::{AppRoute, Collected, Outcome, Translator, TranslatorOptions};
use crate::conversations::{Decision, Identity, RequestView, first_header};
use crate::openai::{
    ApiError, ChatCompletion, ChatCompletionRequest, Choice, ChunkWriter, ResponseMessage, completion_id, unix_now,
};

pub const USER_HEADER: &str = "x-opendify-user";

/// Everything known about a request before Dify is called.
struct Prepared {
    request: ChatCompletionRequest,
    route: Arc<AppRoute>,
    identity: Identity,
    decision: Decision,
}

pub async fn chat_completions(
    State(state): State<SharedState>,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let mut prepared = match prepare(&state, &headers, &body).await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(status = error.status.as_u16(), "❌ rejected request: {}", error.message);
            return error.into_response();
        }
    };
    // DIFY_KEY_PASSTHROUGH: the client's own key of this app, for this request only.
    if let Some(Extension(ClientAppKey(key))) = client_key {
        prepared.route = Arc::new(AppRoute { key, ..(*prepared.route).clone() });
    }
    let labels = ChatLabels { route: prepared.route.clone(), stream: prepared.request.is_stream() };
    tracing::debug!(
        model = %prepared.request.model,
        continuity = prepared.decision.continuity.as_str(),
        "👤 user {} ({})",
        prepared.identity.user,
        prepared.identity.source
    );
    let mut response = if prepared.request.is_stream() {
        stream(state, prepared, started).await
    } else {
        complete(state, prepared, started).await
    };
    if let Some(user) = response.extensions_mut().remove::<UserEcho>()
        && let Ok(value) = HeaderValue::from_str(&echo_encoded(&user.0))
    {
        response.headers_mut().insert(USER_HEADER, value);
    }
    response.extensions_mut().insert(labels);
    response
}

/// The user as a header value: percent-encoded beyond printable ASCII (and `%` itself), the
/// way Open WebUI sends it, so `josé` is echoed as `jos%C3%A9`.
fn echo_encoded(user: &str) -> std::borrow::Cow<'_, str> {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(user, ENCODED).into()
}

/// Carries the resolved user to the response header, whatever path produced the response.
#[derive(Clone)]
struct UserEcho(String);

async fn prepare(state: &SharedState, headers: &HeaderMap, body: &Bytes) -> Result<Prepared, ApiError> {
    let request = ChatCompletionRequest::from_slice(body).map_err(|mut e| {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.is_empty() && !content_type.contains("json") {
            e.message = format!(
                "{} (the request was sent as {content_type}; send JSON with Content-Type: application/json)",
                e.message
            );
        }
        e
    })?;
    let route = match state.registry.get(&request.model) {
        Some(route) => route,
        None => {
            state.registry.refresh_if_stale().await;
            state.registry.get(&request.model).ok_or_else(|| unknown_model(&request.model, &state.registry.names()))?
        }
    };
    let identity = state.identity.resolve(headers, request.user.as_deref())?;
    let explicit = headers
        .get("x-dify-conversation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| request.conversation_id.clone().filter(|s| !s.trim().is_empty()));
    let chat_id = first_header(headers, &state.config.chat_id_headers)?;
    let lookup = Instant::now();
    let decision = if route.mode.is_chat_family() {
        state
            .conversations
            .decide(&RequestView {
                key: route.key.expose(),
                model: &request.model,
                user: &identity.user,
                chat_id: chat_id.as_deref(),
                explicit: explicit.as_deref(),
                messages: &request.messages,
                last_user: request.last_user_index(),
            })
            .await
    } else {
        // Completion and workflow apps keep no conversation.
        Decision {
            plan: ConversationPlan::default(),
            continuity: crate::conversations::Continuity::New,
            from_store: false,
            recorder: None,
        }
    };
    if route.mode.is_chat_family() {
        state.metrics.store_latency.observe(lookup.elapsed());
    }
    Ok(Prepared { request, route, identity, decision })
}

fn translator(state: &SharedState, p: &Prepared) -> Translator {
    Translator::new(TranslatorOptions {
        mode: p.route.mode,
        model: p.request.model.clone(),
        reasoning: state.config.reasoning_mode,
        progress: state.config.reasoning_progress,
        output: p.route.output.clone(),
    })
}

/// Resolves files, builds the Dify body and starts the upstream stream. A stored
/// conversation Dify no longer knows (404) is dropped and the request retried once as a new
/// conversation seeded with the history: the client never sees that error.
async fn start_upstream(state: &SharedState, p: &mut Prepared) -> Result<crate::dify::EventStream, ApiError> {
    let files = request::resolve_files(&p.request, &p.route, &p.identity.user, &state.client, &state.uploads).await?;
    let options = BuildOptions { user: &p.identity.user, system_input: state.config.system_input.as_deref() };
    let mut healed = false;
    loop {
        let body = request::build(&p.request, &p.route, &p.decision.plan, files.clone(), &options);
        match state.client.generate(&p.route.key, p.route.mode, &body).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.is_conversation_missing() && p.decision.from_store && !healed => {
                if let Some(stale) = p.decision.plan.conversation_id.take() {
                    tracing::info!(conversation = %stale, "🔍 Dify no longer knows this conversation; starting a new one");
                    state.conversations.forget(&stale).await;
                }
                p.decision.plan = ConversationPlan { seed_from: Some(0), ..Default::default() };
                p.decision.from_store = false;
                healed = true;
            }
            Err(e) => {
                tracing::warn!(model = %p.request.model, kind = e.kind(), "❌ Dify API error: {e}");
                return Err(ApiError::from_dify(&e, &p.request.model));
            }
        }
    }
}

fn finisher(state: &SharedState, p: &mut Prepared, started: Instant, stream: bool) -> Finisher {
    Finisher {
        state: state.clone(),
        recorder: p.decision.recorder.take(),
        model: p.request.model.clone(),
        user: p.identity.user.clone(),
        continuity: p.decision.continuity.as_str(),
        started,
        stream,
    }
}

fn with_user(mut response: Response, identity: &Identity) -> Response {
    response.extensions_mut().insert(UserEcho(identity.user.clone()));
    response
}

async fn stream(state: SharedState, mut p: Prepared, started: Instant) -> Response {
    let upstream = match start_upstream(&state, &mut p).await {
        Ok(u) => u,
        Err(e) => return with_user(e.into_response(), &p.identity),
    };
    let writer = ChunkWriter::new(completion_id(), unix_now(), p.request.model.clone(), p.request.include_usage());
    let guard = StopGuard::new(
        state.client.clone(),
        p.route.key.clone(),
        p.route.mode,
        p.identity.user.clone(),
        p.request.model.clone(),
    );
    let finish = finisher(&state, &mut p, started, true);
    let relay = Relay::new(upstream, translator(&state, &p), writer, guard, state.drain_deadline.clone(), finish);
    let mut response = Response::new(Body::from_stream(relay.into_stream()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_user(response, &p.identity)
}

async fn complete(state: SharedState, mut p: Prepared, started: Instant) -> Response {
    let mut upstream = match start_upstream(&state, &mut p).await {
        Ok(u) => u,
        Err(e) => return with_user(e.into_response(), &p.identity),
    };
    let mut translator = translator(&state, &p);
    let mut collected = Collected::default();
    // Dropped with this future if the client disconnects: then Dify is told to stop.
    let mut guard = StopGuard::new(
        state.client.clone(),
        p.route.key.clone(),
        p.route.mode,
        p.identity.user.clone(),
        p.request.model.clone(),
    );
    let timeout = state.config.request_timeout;
    let collecting = async {
        loop {
            match upstream.next().await {
                Some(Ok(event)) => {
                    translator.on_event(&event, &mut collected);
                    guard.set_task(translator.task_id.as_ref());
                }
                Some(Err(err)) => translator.on_end(Some(&err), &mut collected),
                None => translator.on_end(None, &mut collected),
            }
            if translator.is_done() {
                break;
            }
        }
    };
    // Bounded by REQUEST_TIMEOUT, and by the shutdown deadline like streams are.
    let collected_in_time = tokio::select! {
        result = tokio::time::timeout(timeout, collecting) => {
            result.map_err(|_| crate::dify::DifyError::Timeout(timeout))
        }
        () = state.drain_deadline.cancelled() => {
            Err(crate::dify::DifyError::Transport("opendify is shutting down".into()))
        }
    };
    match collected_in_time {
        Ok(()) => guard.disarm(),
        Err(error) => translator.on_end(Some(&error), &mut collected),
    }
    let end = RelayEnd::from_translator(&translator);
    let upstream_time = UpstreamTime(upstream.upstream_time());
    let answer = collected.answer();
    finisher(&state, &mut p, started, false).finish(&end, &answer).await;
    let mut response = match end.outcome {
        Outcome::Finished { reason, usage } => {
            drain(upstream);
            let id = completion_id();
            let reasoning = (!collected.reasoning.is_empty()).then_some(collected.reasoning.as_str());
            let body = ChatCompletion {
                id: &id,
                object: "chat.completion",
                created: unix_now(),
                model: &p.request.model,
                choices: [Choice {
                    index: 0,
                    message: ResponseMessage {
                        role: "assistant",
                        content: &answer,
                        reasoning_content: reasoning,
                        refusal: None,
                    },
                    logprobs: None,
                    finish_reason: reason,
                }],
                usage,
                system_fingerprint: None,
            };
            axum::Json(body).into_response()
        }
        Outcome::Failed(error) => error.into_response(),
        Outcome::Running => {
            ApiError::server(StatusCode::BAD_GATEWAY, "Dify's answer ended unexpectedly").into_response()
        }
    };
    response.extensions_mut().insert(upstream_time);
    with_user(response, &p.identity)
}
