//! One turn through the gateway, whatever its API: find the app, know the user, pick the
//! conversation, start Dify's answer, then relay it (streaming) or collect it, record the
//! turn and log it. A dialect's handler parses its request into a [`Turn`], hands it here,
//! and renders what comes back; everything in between exists once.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use super::finish::{Discard, End, Finisher, Keeper};
use super::gate::{CONVERSATION_HEADER, GenerationLabels, MESSAGE_HEADER, USER_HEADER, UpstreamTime};
use super::relay::{Relay, StopGuard, StopTarget, chase_task, drain};
use super::trim::Busy;
use super::{Live, SharedState, unknown_model};
use crate::api::Dialect;
use crate::bridge::pipeline::Pipeline;
use crate::bridge::request::{self, BuildOptions, ConversationPlan};
use crate::bridge::structured::{self, JsonAnswer};
use crate::bridge::tools::{self, ToolCallParser};
use crate::bridge::uploads::resolve_files;
use crate::bridge::{
    ApiError, AppRoute, Collected, FinishReason, Outcome, OutputFormat, ProgressMode, Sink, StopReason, StreamEncoder,
    ToolChoice, Tools, Translator, TranslatorOptions, Turn, Usage,
};
use crate::config::{OpenWebUiEvents, ToolCalls};
use crate::conversations::fingerprint::app_id;
use crate::conversations::{Continuity, Decision, Identity, RequestView, ResponseRecord, first_header};
use crate::dify::{DifyError, EventStream};
use crate::logging::Shown;
use crate::secret::Secret;

/// `true`: this answer carries the `dify` object, whatever DIFY_METADATA says.
pub const METADATA_HEADER: &str = "x-dify-metadata";
/// nginx's switch for response buffering. A `HeaderName` constant, as in `gate`: a `&str`
/// name that is not a standard header is copied into an allocation on every insert.
const ACCEL_BUFFERING_HEADER: HeaderName = HeaderName::from_static("x-accel-buffering");

/// A turn whose app, user and conversation are known.
pub struct Exchange {
    state: SharedState,
    live: Arc<Live>,
    pub turn: Turn,
    pub route: Arc<AppRoute>,
    pub identity: Identity,
    decision: Decision,
    started: Instant,
    dialect: Dialect,
    /// The app key is the client's own (DIFY_KEY_PASSTHROUGH): Dify refusing it is a 401.
    passthrough: bool,
    /// The client's tools, when they are emulated for this request.
    emulated: Option<Tools>,
    /// Keeps a streamed answer's summary once it is over.
    keeper: Option<Keeper>,
    /// What the answer carries besides itself (Open WebUI events, the `dify` object).
    pub extras: Extras,
    /// Open WebUI's follow-up task for this chat, answered from Dify's suggested questions.
    follow_ups_of: Option<String>,
}

/// What an answer carries besides itself, decided per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// Open WebUI's events (status, sources) and usage in the stream (OPENWEBUI_EVENTS).
    pub events: bool,
    /// The `dify` object (DIFY_METADATA, or the request's `X-Dify-Metadata`).
    pub metadata: bool,
}

impl Extras {
    fn of(config: &crate::config::Config, headers: &HeaderMap) -> Result<Extras, ApiError> {
        let from_open_webui = headers.keys().any(|k| k.as_str().starts_with("x-openwebui-"));
        let events = match config.openwebui_events {
            OpenWebUiEvents::Auto => from_open_webui,
            OpenWebUiEvents::On => true,
            OpenWebUiEvents::Off => false,
        };
        let metadata = match headers.get(METADATA_HEADER).map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        {
            None => config.dify_metadata,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
            Some(v) => {
                return Err(ApiError::invalid_request(format!(
                    "The {METADATA_HEADER} header must be true or false, got {:?}",
                    crate::logging::Shown(&v).to_string()
                ))
                .param(METADATA_HEADER));
            }
        };
        Ok(Extras { events, metadata })
    }
}

/// One collected answer and how it ended.
struct Attempt {
    collected: Collected,
    end: End,
    reason: FinishReason,
    upstream_time: std::time::Duration,
    /// Why the answer missed its response_format, when it did.
    refused: Option<String>,
}

/// Whether an API keeps conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// The continuity rules: explicit id, chat id, fingerprint; the turn is recorded.
    Conversation,
    /// Every request stands alone (legacy completions).
    None,
}

/// The app that serves a model, with the client's own app key when it sent one
/// (DIFY_KEY_PASSTHROUGH): shared by every handler that calls Dify.
pub struct ClientRoute {
    pub route: Arc<AppRoute>,
    /// The app key is the client's own: Dify refusing it is the client's 401.
    pub passthrough: bool,
}

impl ClientRoute {
    /// The model's route (asking Dify again when the registry is stale), or a 404 listing
    /// the models.
    pub async fn find(live: &Live, model: &str, client_key: Option<Secret>) -> Result<ClientRoute, ApiError> {
        let mut route = match live.registry.get(model) {
            Some(route) => route,
            None => {
                // Boxed: a rare path, whose future would otherwise size every request's.
                Box::pin(live.registry.refresh_if_stale()).await;
                live.registry.get(model).ok_or_else(|| unknown_model(model, &live.registry.names()))?
            }
        };
        let passthrough = client_key.is_some();
        if let Some(key) = client_key {
            route = Arc::new(AppRoute { key, ..(*route).clone() });
        }
        Ok(ClientRoute { route, passthrough })
    }
}

/// Dify refused the app key the client sent (DIFY_KEY_PASSTHROUGH): the client's 401.
pub fn client_key_refused() -> ApiError {
    tracing::warn!("❌ Dify rejected the app key the client sent (DIFY_KEY_PASSTHROUGH)");
    ApiError::unauthorized(
        "Dify rejected the app key you sent (DIFY_KEY_PASSTHROUGH): check that it is a valid key of this model's app",
    )
    .code("invalid_api_key")
}

/// How a collected answer ended, for the dialect to render.
pub struct Answer {
    pub collected: Collected,
    pub reason: FinishReason,
    pub usage: Option<Usage>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
}

impl Exchange {
    /// Finds the app, the user and the conversation. `client_key`: a Dify app key the
    /// client sent with DIFY_KEY_PASSTHROUGH, used for this request only.
    // Not `async fn`s themselves: a wrapper's future would hold prepare_with's (several KiB)
    // and copy it once more per request.
    pub fn prepare(
        state: &SharedState,
        headers: &HeaderMap,
        turn: Turn,
        client_key: Option<Secret>,
        dialect: Dialect,
    ) -> impl Future<Output = Result<Box<Exchange>, ApiError>> {
        Self::prepare_with(state, headers, turn, client_key, dialect, Memory::Conversation)
    }

    /// Like [`Exchange::prepare`], for an API without conversations (legacy completions):
    /// every request is a new Dify conversation, nothing is looked up, locked or recorded.
    pub fn prepare_stateless(
        state: &SharedState,
        headers: &HeaderMap,
        turn: Turn,
        client_key: Option<Secret>,
        dialect: Dialect,
    ) -> impl Future<Output = Result<Box<Exchange>, ApiError>> {
        Self::prepare_with(state, headers, turn, client_key, dialect, Memory::None)
    }

    async fn prepare_with(
        state: &SharedState,
        headers: &HeaderMap,
        mut turn: Turn,
        client_key: Option<Secret>,
        dialect: Dialect,
        memory: Memory,
    ) -> Result<Box<Exchange>, ApiError> {
        let started = Instant::now();
        let live = state.live();
        let client_route = ClientRoute::find(&live, &turn.model, client_key).await?;
        let (route, passthrough) = (client_route.route, client_route.passthrough);
        let identity = live.identity.resolve(headers, turn.user.as_deref())?;
        let previous = match turn.previous_response_id.as_deref() {
            Some(id) => Some(previous_response(state, &route, &identity, &turn.model, id).await?),
            None => None,
        };
        if let Some(previous) = &previous {
            name_tool_results(&mut turn, &previous.body);
        }
        let decision = match memory {
            Memory::Conversation => decide(state, &live, headers, &turn, &route, &identity, previous.as_ref()).await?,
            Memory::None => no_conversation(),
        };
        let extras = Extras::of(&live.config, headers)?;
        let follow_ups_of = if extras.events && is_follow_up_task(&turn, &route) {
            first_header(headers, &live.config.chat_id_headers)?
        } else {
            None
        };
        tracing::debug!(
            model = %Shown(&turn.model),
            continuity = decision.continuity.as_str(),
            "👤 user {} ({})",
            Shown(&identity.user),
            identity.source
        );
        // Boxed: about 1 KiB, moved into each answer's future (and kept there twice, as an
        // `async fn`'s by-value arguments are).
        Ok(Box::new(Exchange {
            state: state.clone(),
            live,
            turn,
            route,
            identity,
            decision,
            started,
            dialect,
            passthrough,
            emulated: None,
            keeper: None,
            extras,
            follow_ups_of,
        }))
        .and_then(|mut exchange| {
            exchange.plan_emulation(headers)?;
            Ok(exchange)
        })
    }

    /// Decides whether the client's tools are emulated for this request (TOOL_CALLS, the
    /// model's `tools`, Open WebUI's own tools), and refuses a forced call that cannot be.
    fn plan_emulation(&mut self, headers: &HeaderMap) -> Result<(), ApiError> {
        let tools = &self.turn.tools;
        let forced = matches!(tools.choice, ToolChoice::Required | ToolChoice::Named(_));
        if !tools.offered() && !forced {
            self.carry_tools(self.decision.tools_sent);
            return Ok(());
        }
        let config = &self.live.config;
        let mode = self.route.tools.unwrap_or(config.tool_calls);
        let from_open_webui =
            headers.keys().any(|k| k.as_str().starts_with("x-openwebui-")) || tools::is_open_webui_tool_list(tools);
        let refusal = match mode {
            ToolCalls::Off if self.route.tools == Some(ToolCalls::Off) => {
                Some("tool emulation is off for this model (`\"tools\": \"off\"` in MODEL_CONFIG)")
            }
            ToolCalls::Off => Some("tool emulation is off (TOOL_CALLS=off; set TOOL_CALLS=auto to emulate tools)"),
            ToolCalls::Auto if from_open_webui && !config.openwebui_tools => Some(
                "requests from Open WebUI use the Dify app's own tools (set OPENWEBUI_TOOLS=emulate to emulate Open WebUI's)",
            ),
            ToolCalls::Auto | ToolCalls::Emulate => None,
        };
        if let Some(why) = refusal {
            tools::refuse_forced_call(tools, &self.turn.model, why)?;
            tracing::debug!(count = tools.specs.len(), "client tools not emulated: {why}");
            self.carry_tools(self.decision.tools_sent);
            return Ok(());
        }
        let (hash, tools) = (tools::definitions_hash(tools), tools.clone());
        self.carry_tools(Some(hash));
        self.emulated = Some(tools);
        Ok(())
    }

    /// Which tool definitions the conversation has after this turn.
    fn carry_tools(&mut self, hash: Option<u64>) {
        if let Some(recorder) = &mut self.decision.recorder {
            recorder.tools = hash;
        }
    }

    /// What the query adds for this request: the tools (their definitions when the
    /// conversation does not have them yet) and the answer's format.
    fn sections(&self) -> Vec<String> {
        let mut sections = Vec::new();
        if let Some(tools) = &self.emulated {
            let known = self.decision.plan.conversation_id.is_some()
                && self.decision.tools_sent == Some(tools::definitions_hash(tools));
            sections.extend(tools::sections(tools, !known));
        }
        sections.extend(structured::section(&self.turn.output));
        sections
    }

    /// The stages an answer passes: the tool-call parser, the structured-output check.
    fn pipeline<S: Sink>(&self, sink: S, record: bool) -> Pipeline<S> {
        let format = (self.turn.output != OutputFormat::Text)
            .then(|| JsonAnswer::new(self.turn.output.clone(), &self.turn.model));
        Pipeline::new(sink, record).with_tools(self.emulated.as_ref().map(ToolCallParser::new)).with_format(format)
    }

    /// Relays the answer as it is produced, written by `encoder`.
    pub async fn stream<E: StreamEncoder>(mut self: Box<Self>, encoder: E) -> Response {
        let busy = Busy::begin();
        let upstream = match self.start_upstream(true, None).await {
            Ok(upstream) => upstream,
            Err(error) => return self.reply(self.dialect.error_response(&error)),
        };
        let finisher = self.finisher();
        let recording = finisher.records();
        let relay = Relay::new(
            upstream,
            self.translator(),
            self.pipeline(encoder, recording),
            StopGuard::new(self.stop_target()),
            self.state.drain_deadline.clone(),
            self.state.metrics.clone(),
            finisher,
            busy,
        );
        let mut response = Response::new(Body::from_stream(relay.into_stream()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Reverse proxies (nginx) must not buffer the stream.
        headers.insert(ACCEL_BUFFERING_HEADER, HeaderValue::from_static("no"));
        self.reply(response)
    }

    /// Collects the whole answer (bounded by REQUEST_TIMEOUT) and renders it with `render`.
    /// A structured answer that misses its format is asked for again (in the same Dify
    /// conversation) up to STRUCTURED_OUTPUT_RETRIES times, then refused with a 502.
    pub async fn complete(mut self: Box<Self>, render: impl AsyncFnOnce(&Answer) -> Response) -> Response {
        let _busy = Busy::begin();
        // Boxed, and only for Open WebUI's follow-up task: its future would otherwise size
        // (and be copied with) every answer's.
        let follow_ups = match self.follow_ups_of {
            Some(_) => Box::pin(self.dify_follow_ups()).await,
            None => None,
        };
        if let Some(follow_ups) = follow_ups {
            let mut collected = Collected::default();
            collected.content = serde_json::json!({ "follow_ups": follow_ups }).to_string();
            let answer =
                Answer { collected, reason: FinishReason::Stop, usage: None, conversation_id: None, message_id: None };
            tracing::info!(model = %Shown(&self.turn.model), "💡 follow-ups answered with Dify's suggested questions");
            let response = render(&answer).await;
            return self.reply(response);
        }
        let mut retries_left =
            if self.turn.output == OutputFormat::Text { 0 } else { self.live.config.structured_output_retries };
        let mut retry: Option<String> = None;
        loop {
            let attempt = match self.collect(retry.as_deref()).await {
                Ok(attempt) => attempt,
                Err(error) => return self.reply(self.dialect.error_response(&error)),
            };
            if let (Some(problem), true) = (&attempt.refused, retries_left > 0) {
                retries_left -= 1;
                tracing::info!(model = %Shown(&self.turn.model), "answer missed its response_format ({problem}); asking again");
                if let (Some(conversation), true) = (&attempt.end.conversation_id, self.route.mode.is_chat_family()) {
                    // Asked again in the conversation that has the first answer.
                    self.decision.plan =
                        ConversationPlan { conversation_id: Some(conversation.clone()), ..Default::default() };
                    self.decision.tools_sent = self.decision.recorder.as_ref().and_then(|r| r.tools);
                }
                retry = Some(problem.clone());
                continue;
            }
            let transcript = transcript_of(&attempt.collected);
            self.finisher().finish(&attempt.end, &transcript, None).await;
            let mut response = match attempt.end.outcome {
                Outcome::Finished { usage, .. } => {
                    let answer = Answer {
                        collected: attempt.collected,
                        reason: attempt.reason,
                        usage,
                        conversation_id: attempt.end.conversation_id,
                        message_id: attempt.end.message_id,
                    };
                    let mut response = render(&answer).await;
                    // Which Dify conversation and message this was, for clients that want to
                    // continue it explicitly or look it up in Dify.
                    for (name, value) in
                        [(CONVERSATION_HEADER, &answer.conversation_id), (MESSAGE_HEADER, &answer.message_id)]
                    {
                        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                            response.headers_mut().insert(name, value);
                        }
                    }
                    response
                }
                Outcome::Failed { error, .. } => self.dialect.error_response(&error),
                Outcome::Running => self.dialect.error_response(
                    &ApiError::server(StatusCode::BAD_GATEWAY, "Dify's answer ended unexpectedly").not_retryable(),
                ),
            };
            response.extensions_mut().insert(UpstreamTime(attempt.upstream_time));
            return self.reply(response);
        }
    }

    /// One answer, collected: Dify is stopped if it is cut short, its connection reused if
    /// it ended well.
    async fn collect(&mut self, retry: Option<&str>) -> Result<Attempt, ApiError> {
        let mut upstream = self.start_upstream(false, retry).await?;
        let mut translator = self.translator();
        let mut pipeline = self.pipeline(Collected::default(), false);
        // Dropped with this future if the client disconnects: then Dify is told to stop.
        let mut guard = StopGuard::new(self.stop_target());
        let timeout = self.live.config.request_timeout;
        let metrics = self.state.metrics.clone();
        let collecting = async {
            loop {
                match upstream.next().await {
                    Some(Ok(event)) => {
                        translator.on_event(&event, &mut pipeline);
                        guard.set_task(translator.task_id.as_ref());
                    }
                    Some(Err(err)) => {
                        metrics.upstream_error(err.kind());
                        translator.on_end(Some(&err), &mut pipeline);
                    }
                    None => translator.on_end(None, &mut pipeline),
                }
                if translator.is_done() {
                    break;
                }
            }
        };
        // Bounded by REQUEST_TIMEOUT, and by the shutdown deadline like streams are.
        let state = self.state.clone();
        tokio::select! {
            biased;
            result = tokio::time::timeout(timeout, collecting) => {
                if result.is_err() {
                    translator.abort(&DifyError::Timeout(timeout), StopReason::RequestTimeout, &mut pipeline);
                }
            }
            () = state.drain_deadline.cancelled() => {
                let shutting = DifyError::Transport("opendify is shutting down".into());
                translator.abort(&shutting, StopReason::Shutdown, &mut pipeline);
            }
        }
        let mut end = End::of(&translator);
        let upstream_time = upstream.upstream_time();
        match &end.outcome {
            Outcome::Finished { .. } => {
                guard.disarm();
                drain(upstream).await;
            }
            Outcome::Failed { stop: Some(reason), .. } => guard.stop(*reason, Some(upstream)),
            Outcome::Failed { stop: None, .. } | Outcome::Running => guard.disarm(),
        }
        let refused = pipeline.refused().map(str::to_string);
        if let (Some(problem), Outcome::Finished { .. }) = (&refused, &end.outcome) {
            end.outcome = Outcome::Failed { error: structured::invalid_answer(problem, &self.turn.model), stop: None };
        }
        let reason = pipeline.finish_reason().unwrap_or(FinishReason::Stop);
        Ok(Attempt { collected: pipeline.out.sink, end, reason, upstream_time, refused })
    }

    /// Uploads files, builds the Dify body and starts the answer. A stored conversation
    /// Dify no longer knows (404) is dropped and the request retried once as a new
    /// conversation seeded with the history: the client never sees that error. For a
    /// stream, Dify's response head must come within STREAM_IDLE_TIMEOUT.
    async fn start_upstream(&mut self, stream: bool, retry: Option<&str>) -> Result<EventStream, ApiError> {
        let live = self.live.clone();
        let files =
            resolve_files(&self.turn, &self.route, &self.identity.user, &live.client, &self.state.uploads).await?;
        let mut healed = false;
        loop {
            // Asking again: in the conversation that has the first answer, the format and what
            // was wrong; without one (completion and workflow apps), the request with a note.
            let again = retry.map(structured::retry_note);
            let continued = self.decision.plan.conversation_id.is_some();
            let sections = match &again {
                Some(_) if continued => structured::section(&self.turn.output).into_iter().collect(),
                Some(note) => {
                    let mut sections = self.sections();
                    sections.push(format!("[Note]\n{note}"));
                    sections
                }
                None => self.sections(),
            };
            let options = BuildOptions {
                user: &self.identity.user,
                system_input: live.config.system_input.as_deref(),
                sections: &sections,
                instead: again.as_deref().filter(|_| continued),
            };
            let body = request::build(&self.turn, &self.route, &self.decision.plan, files.clone(), &options);
            let started = match self.generate(&body, stream).await {
                Ok(upstream) => Ok(upstream),
                Err(e) => {
                    self.state.metrics.upstream_error(e.kind());
                    Err(e)
                }
            };
            match started {
                Ok(upstream) => return Ok(upstream),
                Err(e) if e.is_conversation_missing() && self.decision.from_store && !healed => {
                    if let Some(stale) = self.decision.plan.conversation_id.take() {
                        tracing::info!(conversation = %stale, "🔍 Dify no longer knows this conversation; starting a new one");
                        self.state.conversations.forget(&stale).await;
                    }
                    self.decision.plan = ConversationPlan { seed_from: Some(0), ..Default::default() };
                    self.decision.from_store = false;
                    healed = true;
                }
                Err(DifyError::Unauthorized { .. }) if self.passthrough => return Err(client_key_refused()),
                Err(e) => {
                    tracing::warn!(model = %Shown(&self.turn.model), kind = %e.kind(), "❌ Dify API error: {e}");
                    return Err(ApiError::from_dify(&e, &self.turn.model));
                }
            }
        }
    }

    /// Calls Dify; for a stream, gives up waiting for the response head after
    /// STREAM_IDLE_TIMEOUT and leaves the call running in the background, to stop the task
    /// once Dify names it.
    async fn generate(&self, body: &crate::dify::GenerateRequest, stream: bool) -> Result<EventStream, DifyError> {
        let client = &self.live.client;
        if !stream {
            return client.generate(&self.route.key, self.route.mode, body).await;
        }
        let wait = self.live.config.stream_idle_timeout;
        let mut call = Box::pin({
            let (client, key, mode, body) = (client.clone(), self.route.key.clone(), self.route.mode, body.clone());
            async move { client.generate(&key, mode, &body).await }
        });
        match tokio::time::timeout(wait, &mut call).await {
            Ok(result) => result,
            Err(_) => {
                let mut guard = StopGuard::new(self.stop_target());
                let chase_for = self.live.config.request_timeout;
                let late = async move {
                    // Dify answers in the end: read its first event for the task id, stop it.
                    if let Ok(Ok(upstream)) = tokio::time::timeout(chase_for, call).await
                        && let Some(task) = chase_task(upstream, chase_for).await
                    {
                        guard.set_task(Some(&task));
                    }
                    guard.stop(StopReason::HeaderTimeout, None);
                };
                tokio::spawn(tracing::Instrument::in_current_span(late));
                Err(DifyError::Idle(wait))
            }
        }
    }

    /// Open WebUI's follow-up task for a chat whose app suggests questions itself: Dify's
    /// suggestions for the chat's latest answer, asked as the same user. `None` (the task is
    /// then answered as any other) when there is no such chat or Dify has none.
    async fn dify_follow_ups(&self) -> Option<Vec<String>> {
        let chat_id = self.follow_ups_of.as_deref()?;
        let store = self.state.conversations.store();
        let app = app_id(self.route.key.expose());
        let conversation = store.chat(&app, &self.identity.user, chat_id).await.ok().flatten()?;
        let message_id = store.conversation(&conversation).await.ok().flatten()?.latest_message_id?;
        match self.live.client.suggested(&self.route.key, &message_id, &self.identity.user).await {
            Ok(questions) if !questions.is_empty() => Some(questions),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!("Dify's suggested questions are not available ({e}); generating follow-ups");
                None
            }
        }
    }

    /// The answer without Open WebUI's events, for dialects that have none.
    pub fn without_events(mut self: Box<Self>) -> Box<Self> {
        self.extras.events = false;
        self
    }

    fn translator(&self) -> Translator {
        let config = &self.live.config;
        // Open WebUI shows progress as status lines; other clients may get it as reasoning.
        let progress = if self.extras.events {
            ProgressMode::Events
        } else if config.reasoning_progress {
            ProgressMode::Reasoning
        } else {
            ProgressMode::Off
        };
        Translator::new(TranslatorOptions {
            mode: self.route.mode,
            model: self.turn.model.clone(),
            reasoning: config.reasoning_mode,
            progress,
            output: self.route.output.clone(),
        })
    }

    fn stop_target(&self) -> StopTarget {
        StopTarget {
            live: self.live.clone(),
            route: self.route.clone(),
            user: self.identity.user.clone(),
            model: self.turn.model.clone(),
            metrics: self.state.metrics.clone(),
        }
    }

    fn finisher(&mut self) -> Finisher {
        let mut recorder = self.decision.recorder.take();
        if let Some(recorder) = &mut recorder {
            recorder.asked(&self.decision.plan);
        }
        Finisher {
            state: self.state.clone(),
            recorder,
            model: self.turn.model.clone(),
            user: self.identity.user.clone(),
            continuity: self.decision.continuity,
            started: self.started,
            stream: self.turn.stream,
            keeper: self.keeper.take(),
            discard: self.discard(),
        }
    }

    /// A conversation made only for an Open WebUI task is deleted once answered
    /// (TASK_CONVERSATIONS=delete), so the user's Dify history holds only their chats.
    fn discard(&self) -> Option<Box<Discard>> {
        let wanted = self.decision.continuity == Continuity::Task
            && self.live.config.delete_task_conversations
            && self.route.mode.is_chat_family();
        wanted.then(|| {
            Box::new(Discard {
                client: self.live.client.clone(),
                key: self.route.key.clone(),
                user: self.identity.user.clone(),
            })
        })
    }

    /// What keeps this turn's answer under `id` (a Responses API response), for this app
    /// and user only. The turn is then recorded with its conversation's row at once, as a
    /// kept response is continued by its conversation's id.
    pub fn keeper(&mut self, id: &str) -> Keeper {
        if let Some(recorder) = &mut self.decision.recorder {
            recorder.continued_by_id();
        }
        Keeper {
            state: self.state.clone(),
            id: id.to_string(),
            app: app_id(self.route.key.expose()),
            user: self.identity.user.clone(),
            tools: self.decision.recorder.as_ref().and_then(|r| r.tools),
        }
    }

    /// A streamed answer's summary is kept by `keeper` once the stream is over.
    pub fn keep_stream(mut self: Box<Self>, keeper: Keeper) -> Box<Self> {
        self.keeper = Some(keeper);
        self
    }

    /// The headers every answer carries: who the user was, and the labels for the metrics.
    fn reply(&self, mut response: Response) -> Response {
        if let Ok(value) = HeaderValue::from_str(&echo_encoded(&self.identity.user)) {
            response.headers_mut().insert(USER_HEADER, value);
        }
        response
            .extensions_mut()
            .insert(GenerationLabels { model: Some(self.route.name.clone()), stream: self.turn.stream });
        response
    }
}

/// Open WebUI's follow-up task (`### Task:` … `follow_ups`) for an app that suggests
/// questions after its answers.
fn is_follow_up_task(turn: &Turn, route: &AppRoute) -> bool {
    route.mode.is_chat_family()
        && route.parameters.as_ref().is_some_and(|p| p.suggests_after_answer())
        && crate::conversations::resolver::is_background_task(turn)
        && turn.input().first().is_some_and(|m| m.joined_text().contains("follow_ups"))
}

/// The user as a header value: percent-encoded beyond printable ASCII (and `%` itself), the
/// way Open WebUI sends it, so `josé` is echoed as `jos%C3%A9`.
pub(super) fn echo_encoded(user: &str) -> std::borrow::Cow<'_, str> {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(user, ENCODED).into()
}

/// A new Dify conversation (or none: completion and workflow apps), with nothing recorded.
fn no_conversation() -> Decision {
    Decision {
        plan: ConversationPlan::default(),
        continuity: Continuity::New,
        from_store: false,
        tools_sent: None,
        recorder: None,
    }
}

/// The stored response `previous_response_id` names: only the app and user that made it
/// may continue it; to anyone else it does not exist.
async fn previous_response(
    state: &SharedState,
    route: &AppRoute,
    identity: &Identity,
    model: &str,
    id: &str,
) -> Result<ResponseRecord, ApiError> {
    if !route.mode.is_chat_family() {
        return Err(ApiError::invalid_request(format!(
            "`previous_response_id` cannot be used with model `{model}`: it is a Dify {} app, which keeps no \
             conversation; send the whole conversation in `input` instead",
            route.mode
        ))
        .param("previous_response_id"));
    }
    let record = state.conversations.store().response(id).await.map_err(|e| {
        tracing::warn!("❌ reading a stored response failed: {e}");
        ApiError::server(StatusCode::SERVICE_UNAVAILABLE, format!("The conversation store could not be read: {e}"))
            .retryable()
    })?;
    match record {
        Some(record) if record.app == app_id(route.key.expose()) && record.user == identity.user => Ok(record),
        _ => Err(ApiError::not_found(format!(
            "Previous response with id '{id}' not found. Responses are kept for CONVERSATION_TTL and only for the \
             app and user that created them (and not at all with `store: false`)."
        ))
        .param("previous_response_id")
        .code("previous_response_not_found")),
    }
}

/// Tool results continuing a stored response name their tools from its `function_call` items.
fn name_tool_results(turn: &mut Turn, previous_body: &str) {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        call_id: Option<String>,
        #[serde(default)]
        name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        output: Vec<Item>,
    }
    let Ok(previous) = serde_json::from_str::<Body>(previous_body) else { return };
    for message in turn.messages.iter_mut().filter(|m| m.name.is_none()) {
        let Some(call_id) = message.tool_call_id.as_deref() else { continue };
        let call = previous.output.iter().find(|i| i.kind == "function_call" && i.call_id.as_deref() == Some(call_id));
        if let Some(name) = call.and_then(|c| c.name.clone()) {
            message.name = Some(name);
        }
    }
}

/// The conversation decision: chat-family apps keep conversations, the others none. A
/// previous response continues its conversation, with the tool definitions it had.
async fn decide(
    state: &SharedState,
    live: &Live,
    headers: &HeaderMap,
    turn: &Turn,
    route: &AppRoute,
    identity: &Identity,
    previous: Option<&ResponseRecord>,
) -> Result<Decision, ApiError> {
    if !route.mode.is_chat_family() {
        return Ok(no_conversation());
    }
    let header = crate::conversations::identity::header_text(headers, CONVERSATION_HEADER.as_str())?;
    if previous.is_some() && (header.is_some() || turn.conversation_id.is_some()) {
        return Err(ApiError::invalid_request(
            "A request continues either a previous response or a named conversation, not both: \
             drop the X-Dify-Conversation-Id header or `previous_response_id`",
        )
        .param("previous_response_id"));
    }
    let explicit = previous.and_then(|p| p.conversation_id.clone()).or(header).or_else(|| turn.conversation_id.clone());
    let chat_id = first_header(headers, &live.config.chat_id_headers)?;
    let lookup = Instant::now();
    let decision = state
        .conversations
        .decide(&RequestView {
            key: route.key.expose(),
            model: &turn.model,
            user: &identity.user,
            chat_id: chat_id.as_deref(),
            explicit: explicit.as_deref(),
            turn,
        })
        .await;
    state.metrics.observe_store(lookup.elapsed());
    let mut decision = decision;
    if let Some(previous) = previous {
        decision.tools_sent = previous.tools;
    }
    Ok(decision)
}

/// A collected answer as the client saw it: its text, then its tool calls as blocks.
fn transcript_of(collected: &Collected) -> String {
    let mut text = collected.answer().into_owned();
    for call in &collected.tool_calls {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&crate::bridge::tools::call_block(call));
    }
    text
}
