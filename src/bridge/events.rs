//! The one event stream every dialect renders, and the translator that makes it out of
//! Dify's events, whatever the app mode: answer text, reasoning, tool calls, progress,
//! keep-alives, and one outcome (finished with a reason and usage, or failed with an error).
//! Streaming clients get each event the moment it happens; non-streaming ones get the same
//! events collected ([`Collected`]), so both see the same answer.

use std::borrow::Cow;

use axum::http::StatusCode;
use serde_json::Value;

use super::error::ApiError;
use super::reasoning::{Piece, ReasoningSplitter};
use super::turn::ToolCall;
use crate::config::ReasoningMode;
use crate::dify::sse::SseEvent;
use crate::dify::{AppMode, DifyError, Event};

/// What a stream shows for output moderation's replacement ([`Sink::replace`]): text already
/// sent cannot be taken back, so the replacement follows it after a blank line.
pub fn replacement(already_sent: bool, text: &str) -> std::borrow::Cow<'_, str> {
    if already_sent { format!("\n\n{text}").into() } else { text.into() }
}

/// Where the events of one answer go: a dialect's encoder, a processing stage in front of
/// one, or a collector.
pub trait Sink {
    fn text(&mut self, text: &str);
    fn reasoning(&mut self, text: &str);
    /// Output moderation replaced the whole answer so far.
    fn replace(&mut self, text: &str);
    /// A workflow's final output: the answer, unless text was already streamed.
    fn final_answer(&mut self, text: &str);
    /// The model called one of the client's tools.
    fn tool_call(&mut self, call: &ToolCall);
    /// A step of the app's work (a workflow node, an agent's tool) began or ended.
    fn progress(&mut self, _step: &Progress) {}
    /// What Dify reported about the answer besides its text (ids, citations), just before a
    /// successful [`Sink::finish`]; encoders render it with the end.
    fn facts(&mut self, _facts: &Facts<'_>) {}
    fn keep_alive(&mut self) {}
    /// The answer is complete.
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>);
    /// The answer failed; nothing follows.
    fn fail(&mut self, error: &ApiError);
}

/// A dialect's streaming writer: the neutral events in, its wire format out. The relay calls
/// [`StreamEncoder::start`] once, feeds it events, and after each takes what it wrote.
pub trait StreamEncoder: Sink + Send + 'static {
    /// The opening frames (a role chunk, `message_start`, `response.created`…).
    fn start(&mut self);
    /// Everything written since the last call.
    fn take(&mut self) -> bytes::Bytes;
    /// The answer as one document, once it has ended, for dialects whose answers are kept
    /// (a Responses API response object).
    fn summary(&self) -> Option<String> {
        None
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    /// Moderation replaced the answer.
    ContentFilter,
    /// The answer is one or more tool calls.
    ToolCalls,
}

/// Token counts (and price) as Dify reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Total price and its currency, when Dify reports them.
    pub price: Option<(String, String)>,
}

impl From<&crate::dify::Usage> for Usage {
    fn from(u: &crate::dify::Usage) -> Self {
        let price = match (&u.total_price, &u.currency) {
            (Some(total), Some(currency)) if !total.is_empty() => Some((total.clone(), currency.clone())),
            _ => None,
        };
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            price,
        }
    }
}

/// One step of the app's work, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Stable per step (node id, agent thought id): a step begins and ends once.
    pub id: String,
    /// What a person reads: `Searching knowledge base: Handbook`, `Using tool: web_search`.
    pub label: String,
    pub done: bool,
}

/// A knowledge-base passage the answer drew on (one of Dify's `retriever_resources`, or a
/// result of a knowledge-retrieval node).
#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    /// The document's name (what a person recognises).
    pub document: String,
    pub document_id: Option<String>,
    /// The knowledge base's name.
    pub dataset: Option<String>,
    /// The passage itself.
    pub content: String,
    pub score: Option<f64>,
    pub position: Option<u64>,
    pub segment_id: Option<String>,
    /// The resource as Dify sent it (for DIFY_METADATA).
    pub raw: Value,
}

impl Citation {
    /// One of `message_end.metadata.retriever_resources`.
    pub fn from_resource(resource: &Value) -> Option<Citation> {
        Self::read(resource, resource, resource.get("content"))
    }

    /// One of a knowledge-retrieval node's `outputs.result` (fields under `metadata`).
    pub fn from_retrieval_result(result: &Value) -> Option<Citation> {
        let metadata = result.get("metadata")?;
        let mut citation = Self::read(metadata, result, result.get("content"))?;
        if citation.document.is_empty()
            && let Some(title) = result.get("title").and_then(Value::as_str)
        {
            citation.document = title.to_string();
        }
        Some(citation)
    }

    fn read(fields: &Value, raw: &Value, content: Option<&Value>) -> Option<Citation> {
        let text = |name: &str| fields.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let content = content.and_then(Value::as_str).unwrap_or("").to_string();
        let document = text("document_name").or_else(|| text("title")).unwrap_or_default();
        if content.is_empty() && document.is_empty() {
            return None;
        }
        Some(Citation {
            document,
            document_id: text("document_id"),
            dataset: text("dataset_name"),
            content,
            score: fields.get("score").and_then(Value::as_f64),
            position: fields.get("position").and_then(Value::as_u64),
            segment_id: text("segment_id"),
            raw: raw.clone(),
        })
    }

    fn same_passage(&self, other: &Citation) -> bool {
        match (&self.segment_id, &other.segment_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.document == other.document && self.content == other.content,
        }
    }
}

/// What Dify reported about a finished answer besides its text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub conversation_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub citations: &'a [Citation],
}

impl Facts<'_> {
    pub fn owned(&self) -> OwnedFacts {
        OwnedFacts {
            conversation_id: self.conversation_id.map(str::to_string),
            message_id: self.message_id.map(str::to_string),
            citations: self.citations.to_vec(),
        }
    }
}

/// [`Facts`], kept (a collected answer's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnedFacts {
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub citations: Vec<Citation>,
}

impl OwnedFacts {
    pub fn view(&self) -> Facts<'_> {
        Facts {
            conversation_id: self.conversation_id.as_deref(),
            message_id: self.message_id.as_deref(),
            citations: &self.citations,
        }
    }
}

/// Why opendify itself stopped reading an answer Dify may still be generating: Dify is
/// then told to stop the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    ClientGone,
    IdleTimeout,
    /// Dify sent no response head within STREAM_IDLE_TIMEOUT.
    HeaderTimeout,
    RequestTimeout,
    ProtocolError,
    TooLarge,
    ConnectionLost,
    Shutdown,
}

impl StopReason {
    pub const ALL: [StopReason; 8] = [
        StopReason::ClientGone,
        StopReason::IdleTimeout,
        StopReason::HeaderTimeout,
        StopReason::RequestTimeout,
        StopReason::ProtocolError,
        StopReason::TooLarge,
        StopReason::ConnectionLost,
        StopReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::ClientGone => "client_gone",
            StopReason::IdleTimeout => "idle_timeout",
            StopReason::HeaderTimeout => "header_timeout",
            StopReason::RequestTimeout => "request_timeout",
            StopReason::ProtocolError => "protocol_error",
            StopReason::TooLarge => "too_large",
            StopReason::ConnectionLost => "connection_lost",
            StopReason::Shutdown => "shutdown",
        }
    }

    /// Why reading stopped, when it was opendify's doing; `None` when Dify ended the answer.
    pub fn of(error: &DifyError) -> Option<StopReason> {
        match error {
            DifyError::Idle(_) => Some(StopReason::IdleTimeout),
            DifyError::Timeout(_) => Some(StopReason::RequestTimeout),
            DifyError::Protocol(_) => Some(StopReason::ProtocolError),
            DifyError::TooLarge { .. } => Some(StopReason::TooLarge),
            DifyError::Transport(_) => Some(StopReason::ConnectionLost),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Running,
    Finished {
        reason: FinishReason,
        usage: Option<Usage>,
    },
    /// `stop`: opendify ended the answer while Dify may still be generating it.
    Failed {
        error: ApiError,
        stop: Option<StopReason>,
    },
}

/// Where progress goes: nowhere, into the reasoning text (REASONING_PROGRESS), or out as
/// [`Sink::progress`] events (Open WebUI's status line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Off,
    Reasoning,
    Events,
}

pub struct TranslatorOptions {
    pub mode: AppMode,
    pub model: String,
    pub reasoning: ReasoningMode,
    pub progress: ProgressMode,
    /// Workflow output variable to answer with.
    pub output: Option<String>,
}

pub struct Translator {
    opts: TranslatorOptions,
    splitter: ReasoningSplitter,
    pub conversation_id: Option<String>,
    pub task_id: Option<String>,
    pub message_id: Option<String>,
    usage: Option<Usage>,
    finish_reason: FinishReason,
    /// The answer streamed so far, kept only for `agent` apps, whose closing `message`
    /// repeats the whole answer.
    agent_answer: Option<String>,
    /// Chatflow: `workflow_finished` already told us how the run ended.
    workflow_done: Option<Result<(), String>>,
    reported_thoughts: Vec<(String, u8)>,
    /// The passages the answer drew on, in the order Dify reported them.
    citations: Vec<Citation>,
    outcome: Outcome,
    /// Number of Dify events seen, for logs and the doctor.
    pub events: u64,
}

impl Translator {
    pub fn new(opts: TranslatorOptions) -> Self {
        let agent_answer = (opts.mode == AppMode::Agent).then(String::new);
        Translator {
            opts,
            splitter: ReasoningSplitter::default(),
            conversation_id: None,
            task_id: None,
            message_id: None,
            usage: None,
            finish_reason: FinishReason::Stop,
            agent_answer,
            workflow_done: None,
            reported_thoughts: Vec::new(),
            citations: Vec::new(),
            outcome: Outcome::Running,
            events: 0,
        }
    }

    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    pub fn is_done(&self) -> bool {
        self.outcome != Outcome::Running
    }

    /// Handles one upstream SSE event.
    pub fn on_event(&mut self, sse: &SseEvent, sink: &mut impl Sink) {
        if self.is_done() {
            return;
        }
        self.events += 1;
        if sse.is_ping() {
            sink.keep_alive();
            return;
        }
        if sse.data.is_empty() {
            return;
        }
        let event: Event<'_> = match serde_json::from_str(&sse.data) {
            Ok(e) => e,
            Err(e) => {
                let shown: String = sse.data.chars().take(120).collect();
                let error = ApiError::server(
                    StatusCode::BAD_GATEWAY,
                    format!("Dify sent an event that is not valid JSON ({e}): {shown}"),
                )
                .code("upstream_protocol_error")
                .not_retryable();
                self.fail(error, Some(StopReason::ProtocolError), sink);
                return;
            }
        };
        self.capture_ids(&event);
        match event.event.as_ref() {
            "message" | "agent_message" => self.on_answer(&event, sink),
            "agent_thought" => self.on_thought(&event, sink),
            "message_file" => self.on_file(&event, sink),
            "message_replace" => {
                if let Some(text) = &event.answer {
                    sink.replace(text);
                    if let Some(answer) = &mut self.agent_answer {
                        answer.clear();
                        answer.push_str(text);
                    }
                }
                self.finish_reason = FinishReason::ContentFilter;
            }
            "message_end" => {
                self.flush(sink);
                if let Some(metadata) = &event.metadata {
                    if let Some(usage) = &metadata.usage {
                        self.usage = Some(usage.into());
                    }
                    self.cite(metadata.retriever_resources.iter().filter_map(Citation::from_resource));
                }
                self.finish(sink);
            }
            "text_chunk" => {
                if let Some(text) = event.data.as_ref().and_then(|d| d.get("text")).and_then(Value::as_str) {
                    self.emit_text(text, sink);
                }
            }
            "reasoning_chunk" => {
                if let Some(text) = event.data.as_ref().and_then(|d| d.get("reasoning")).and_then(Value::as_str) {
                    self.emit_reasoning(text, sink);
                }
            }
            "node_started" | "node_finished" => self.on_node(&event, sink),
            "workflow_finished" => self.on_workflow_finished(&event, sink),
            "error" => {
                let status = event.error_status().unwrap_or(500);
                let code = event.code.clone().unwrap_or_else(|| "unknown".into());
                let message = crate::secret::mask_keys_in(event.message.as_deref().unwrap_or("(no message)"));
                let error = ApiError::from_dify_midway(&DifyError::Api { status, code, message }, &self.opts.model);
                // Dify ended the answer itself: nothing to stop.
                self.fail(error, None, sink);
            }
            "workflow_started" | "tts_message" | "tts_message_end" | "ping" => {}
            other => tracing::debug!(event = other, "ignoring unknown Dify event"),
        }
    }

    /// The upstream body ended (or broke). Whatever the mode, this settles the outcome.
    pub fn on_end(&mut self, error: Option<&DifyError>, sink: &mut impl Sink) {
        if self.is_done() {
            return;
        }
        self.flush(sink);
        if let Some(err) = error {
            let stop = StopReason::of(err);
            self.fail(ApiError::from_dify_midway(err, &self.opts.model), stop, sink);
            return;
        }
        match self.workflow_done.take() {
            Some(Ok(())) => self.finish(sink),
            Some(Err(message)) => self.fail(workflow_error(&message), None, sink),
            None => {
                let error = ApiError::server(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Dify closed the stream for model `{}` before the answer was complete (no {} event)",
                        self.opts.model,
                        if self.opts.mode == AppMode::Workflow { "workflow_finished" } else { "message_end" }
                    ),
                )
                .code("upstream_stream_cut")
                .not_retryable();
                self.fail(error, None, sink);
            }
        }
    }

    /// Opendify ends the answer for a reason of its own (shutdown, a timeout around it).
    pub fn abort(&mut self, error: &DifyError, stop: StopReason, sink: &mut impl Sink) {
        if self.is_done() {
            return;
        }
        self.flush(sink);
        self.fail(ApiError::from_dify_midway(error, &self.opts.model), Some(stop), sink);
    }

    fn finish(&mut self, sink: &mut impl Sink) {
        sink.facts(&Facts {
            conversation_id: self.conversation_id.as_deref(),
            message_id: self.message_id.as_deref(),
            citations: &self.citations,
        });
        sink.finish(self.finish_reason, self.usage.as_ref());
        self.outcome = Outcome::Finished { reason: self.finish_reason, usage: self.usage.clone() };
    }

    fn fail(&mut self, error: ApiError, stop: Option<StopReason>, sink: &mut impl Sink) {
        sink.fail(&error);
        self.outcome = Outcome::Failed { error, stop };
    }

    fn capture_ids(&mut self, event: &Event<'_>) {
        if self.conversation_id.is_none()
            && let Some(id) = event.conversation_id.as_ref().filter(|s| !s.is_empty())
        {
            self.conversation_id = Some(id.to_string());
        }
        if self.task_id.is_none()
            && let Some(id) = event.task_id.as_ref().filter(|s| !s.is_empty())
        {
            self.task_id = Some(id.to_string());
        }
        if self.message_id.is_none()
            && event.event != "agent_thought"
            && event.event != "message_file"
            && let Some(id) =
                event.message_id.as_ref().or(event.id.as_ref()).filter(|_| event.event != "workflow_started")
            && (self.opts.mode.is_chat_family() || self.opts.mode == AppMode::Completion)
        {
            self.message_id = Some(id.to_string());
        }
    }

    fn on_answer(&mut self, event: &Event<'_>, sink: &mut impl Sink) {
        let Some(answer) = event.answer.as_deref() else { return };
        if let Some(so_far) = &mut self.agent_answer {
            if event.event == "message" {
                // `agent` apps close with one `message` carrying the whole answer.
                let rest = if let Some(rest) = answer.strip_prefix(so_far.as_str()) {
                    rest.to_string()
                } else if so_far.is_empty() {
                    answer.to_string()
                } else {
                    tracing::debug!("agent closing message differs from the streamed answer; keeping the streamed one");
                    return;
                };
                so_far.push_str(&rest);
                self.emit_text(&rest, sink);
                return;
            }
            so_far.push_str(answer);
        }
        self.emit_text(answer, sink);
    }

    fn on_thought(&mut self, event: &Event<'_>, sink: &mut impl Sink) {
        // `thought` repeats the streamed answer: never append it. Tool use is progress.
        if self.opts.progress == ProgressMode::Off {
            return;
        }
        let id = event.id.as_deref().unwrap_or_default().to_string();
        let tool = event.tool.as_deref().unwrap_or("").trim();
        let observation = event.observation.as_deref().unwrap_or("").trim();
        if !tool.is_empty() && self.first_report(&id, 1) {
            match self.opts.progress {
                ProgressMode::Events => {
                    sink.progress(&Progress { id: id.clone(), label: format!("Using tool: {tool}"), done: false })
                }
                _ => {
                    let input = event.tool_input.as_deref().unwrap_or("").trim();
                    self.emit_reasoning(&format!("🔧 {tool} {input}\n"), sink);
                }
            }
        }
        if !observation.is_empty() && self.first_report(&id, 2) {
            match self.opts.progress {
                ProgressMode::Events => {
                    sink.progress(&Progress { id, label: format!("Used tool: {tool}"), done: true })
                }
                _ => {
                    let short: String = observation.chars().take(300).collect();
                    let ellipsis = if short.len() < observation.len() { "…" } else { "" };
                    self.emit_reasoning(&format!("→ {short}{ellipsis}\n"), sink);
                }
            }
        }
    }

    /// Adds passages not seen yet (a chatflow reports them from its retrieval node and again
    /// at the end).
    fn cite(&mut self, found: impl Iterator<Item = Citation>) {
        for citation in found {
            if !self.citations.iter().any(|c| c.same_passage(&citation)) {
                self.citations.push(citation);
            }
        }
    }

    fn on_node(&mut self, event: &Event<'_>, sink: &mut impl Sink) {
        let Some(data) = event.data.as_ref() else { return };
        if event.event == "node_finished"
            && data.get("node_type").and_then(Value::as_str) == Some("knowledge-retrieval")
            && let Some(results) = data.get("outputs").and_then(|o| o.get("result")).and_then(Value::as_array)
        {
            self.cite(results.iter().filter_map(Citation::from_retrieval_result));
        }
        let title = data.get("title").and_then(Value::as_str).unwrap_or("").trim();
        let started = event.event == "node_started";
        match self.opts.progress {
            ProgressMode::Off => {}
            ProgressMode::Reasoning => {
                if started && !title.is_empty() {
                    self.emit_reasoning(&format!("▸ {title}\n"), sink);
                }
            }
            ProgressMode::Events => {
                let kind = data.get("node_type").and_then(Value::as_str).unwrap_or("");
                // The run's own start and end are not steps a person needs to see.
                if matches!(kind, "start" | "end" | "answer") || title.is_empty() {
                    return;
                }
                let id = data.get("node_id").or(data.get("id")).and_then(Value::as_str).unwrap_or(title);
                let label = match kind {
                    "knowledge-retrieval" => format!("Searching knowledge base: {title}"),
                    "tool" => format!("Using tool: {title}"),
                    _ => title.to_string(),
                };
                sink.progress(&Progress { id: id.to_string(), label, done: !started });
            }
        }
    }

    fn first_report(&mut self, id: &str, stage: u8) -> bool {
        if self.reported_thoughts.iter().any(|(i, s)| i == id && *s == stage) {
            return false;
        }
        self.reported_thoughts.push((id.to_string(), stage));
        true
    }

    fn on_file(&mut self, event: &Event<'_>, sink: &mut impl Sink) {
        if event.belongs_to.as_deref() == Some("user") {
            return;
        }
        let Some(url) = event.url.as_deref().filter(|u| !u.is_empty()) else { return };
        let markdown = if event.file_type.as_deref().unwrap_or("image") == "image" {
            format!("\n\n![image]({url})\n\n")
        } else {
            format!("\n\n[file]({url})\n\n")
        };
        self.emit_text(&markdown, sink);
    }

    fn on_workflow_finished(&mut self, event: &Event<'_>, sink: &mut impl Sink) {
        let data = event.data.as_ref();
        let status = data.and_then(|d| d.get("status")).and_then(Value::as_str).unwrap_or("succeeded");
        if let Some(total) = data.and_then(|d| d.get("total_tokens")).and_then(Value::as_u64)
            && self.usage.is_none()
            && total > 0
        {
            // Workflows report only a total; prompt and completion are not split.
            self.usage = Some(Usage { total_tokens: total, ..Usage::default() });
        }
        let result = if status == "failed" {
            let message = data.and_then(|d| d.get("error")).and_then(Value::as_str).unwrap_or("the workflow failed");
            Err(crate::secret::mask_keys_in(message))
        } else {
            Ok(())
        };
        if self.opts.mode != AppMode::Workflow {
            // Chatflows: `message_end` (before or after) carries usage; an `error` follows a failure.
            self.workflow_done = Some(result);
            return;
        }
        self.flush(sink);
        match result {
            Err(message) => self.fail(workflow_error(&message), None, sink),
            Ok(()) => {
                if let Some(text) =
                    data.and_then(|d| d.get("outputs")).and_then(|o| output_text(o, self.opts.output.as_deref()))
                {
                    sink.final_answer(&text);
                }
                self.finish(sink);
            }
        }
    }

    fn emit_text(&mut self, text: &str, sink: &mut impl Sink) {
        if text.is_empty() {
            return;
        }
        let mut pieces = Vec::new();
        self.splitter.push(text, &mut pieces);
        for piece in pieces {
            self.route(piece, sink);
        }
    }

    fn emit_reasoning(&mut self, text: &str, sink: &mut impl Sink) {
        match self.opts.reasoning {
            ReasoningMode::Reasoning => sink.reasoning(text),
            ReasoningMode::Think => sink.text(&format!("<think>{text}</think>")),
            ReasoningMode::Strip => {}
        }
    }

    fn flush(&mut self, sink: &mut impl Sink) {
        let mut out = Vec::new();
        self.splitter.finish(&mut out);
        for piece in out {
            self.route(piece, sink);
        }
    }

    fn route(&mut self, piece: Piece<'_>, sink: &mut impl Sink) {
        let mode = self.opts.reasoning;
        match (piece, mode) {
            (Piece::Answer(text), _) => sink.text(&text),
            (Piece::Reasoning(text), ReasoningMode::Reasoning) => sink.reasoning(&text),
            (Piece::Reasoning(text), ReasoningMode::Think) => sink.text(&text),
            (Piece::ReasoningStart, ReasoningMode::Think) => sink.text("<think>"),
            (Piece::ReasoningEnd, ReasoningMode::Think) => sink.text("</think>\n\n"),
            (_, _) => {}
        }
    }
}

/// Text of a workflow's outputs: the configured variable, else `text`/`answer`/`result`/
/// `output`, else the single string output, else all outputs as pretty JSON.
pub fn output_text(outputs: &Value, configured: Option<&str>) -> Option<String> {
    let obj = outputs.as_object()?;
    if obj.is_empty() {
        return None;
    }
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    if let Some(name) = configured {
        return obj.get(name).map(as_text);
    }
    for name in ["text", "answer", "result", "output"] {
        if let Some(v) = obj.get(name) {
            return Some(as_text(v));
        }
    }
    if obj.len() == 1 {
        return obj.values().next().map(as_text);
    }
    serde_json::to_string_pretty(outputs).ok()
}

fn workflow_error(message: &str) -> ApiError {
    ApiError::server(StatusCode::BAD_GATEWAY, format!("The Dify workflow failed: {message}"))
        .code("workflow_failed")
        .not_retryable()
}

/// A whole answer, for non-streaming clients: every event, kept.
#[derive(Debug, Default)]
pub struct Collected {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub progress: Vec<Progress>,
    pub facts: OwnedFacts,
    workflow_final: Option<String>,
}

impl Collected {
    /// The answer text: a workflow's final output when it has one, else what was streamed.
    pub fn answer(&self) -> Cow<'_, str> {
        match &self.workflow_final {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Borrowed(&self.content),
        }
    }
}

impl Sink for Collected {
    fn text(&mut self, text: &str) {
        self.content.push_str(text);
    }
    fn reasoning(&mut self, text: &str) {
        self.reasoning.push_str(text);
    }
    fn replace(&mut self, text: &str) {
        self.content.clear();
        self.content.push_str(text);
    }
    fn final_answer(&mut self, text: &str) {
        self.workflow_final = Some(text.to_string());
    }
    fn tool_call(&mut self, call: &ToolCall) {
        self.tool_calls.push(call.clone());
    }
    fn progress(&mut self, step: &Progress) {
        self.progress.push(step.clone());
    }
    fn facts(&mut self, facts: &Facts<'_>) {
        self.facts = facts.owned();
    }
    fn finish(&mut self, _reason: FinishReason, _usage: Option<&Usage>) {}
    fn fail(&mut self, _error: &ApiError) {}
}
