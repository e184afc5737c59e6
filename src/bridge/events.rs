//! Translates a Dify event stream, whatever the app mode, into what an OpenAI client sees:
//! answer text, reasoning text, keep-alives, and one outcome (finished with a reason and
//! usage, or failed with an error). The same translator serves streaming clients (each
//! event becomes chunks at once) and non-streaming ones (the text is collected), so both
//! see the same answer.

use std::borrow::Cow;

use axum::http::StatusCode;
use serde_json::Value;

use super::reasoning::{Piece, ReasoningSplitter};
use crate::config::ReasoningMode;
use crate::dify::sse::SseEvent;
use crate::dify::{AppMode, DifyError, Event, Usage};
use crate::openai::ApiError;

/// Where translated output goes.
pub trait Sink {
    fn content(&mut self, text: &str);
    fn reasoning(&mut self, text: &str);
    /// Output moderation replaced the whole answer so far.
    fn replace(&mut self, text: &str);
    /// A workflow's final output: the answer, unless text was already streamed.
    fn final_answer(&mut self, text: &str);
    fn keep_alive(&mut self) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Finished { reason: &'static str, usage: Option<Usage> },
    Failed(ApiError),
}

pub struct TranslatorOptions {
    pub mode: AppMode,
    pub model: String,
    pub reasoning: ReasoningMode,
    pub progress: bool,
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
    finish_reason: &'static str,
    /// The answer streamed so far, kept only for `agent` apps, whose closing `message`
    /// repeats the whole answer.
    agent_answer: Option<String>,
    /// Chatflow: `workflow_finished` already told us how the run ended.
    workflow_done: Option<Result<(), String>>,
    reported_thoughts: Vec<(String, u8)>,
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
            finish_reason: "stop",
            agent_answer,
            workflow_done: None,
            reported_thoughts: Vec::new(),
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
                self.fail(
                    ApiError::server(
                        StatusCode::BAD_GATEWAY,
                        format!("Dify sent an event that is not valid JSON ({e}): {shown}"),
                    )
                    .code("upstream_protocol_error"),
                );
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
                self.finish_reason = "content_filter";
            }
            "message_end" => {
                self.flush(sink);
                if let Some(usage) = event.metadata.as_ref().and_then(|m| m.usage) {
                    self.usage = Some(usage);
                }
                self.outcome = Outcome::Finished { reason: self.finish_reason, usage: self.usage };
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
            "node_started" => {
                if self.opts.progress
                    && let Some(title) = event.data.as_ref().and_then(|d| d.get("title")).and_then(Value::as_str)
                {
                    self.emit_reasoning(&format!("▸ {title}\n"), sink);
                }
            }
            "workflow_finished" => self.on_workflow_finished(&event, sink),
            "error" => {
                let status = event.error_status().unwrap_or(500);
                let code = event.code.clone().unwrap_or_else(|| "unknown".into());
                let message = crate::secret::mask_keys_in(event.message.as_deref().unwrap_or("(no message)"));
                self.fail(stream_error(&DifyError::Api { status, code, message }, &self.opts.model));
            }
            "workflow_started" | "node_finished" | "tts_message" | "tts_message_end" | "ping" => {}
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
            self.fail(stream_error(err, &self.opts.model));
            return;
        }
        match self.workflow_done.take() {
            Some(Ok(())) => self.outcome = Outcome::Finished { reason: self.finish_reason, usage: self.usage },
            Some(Err(message)) => self.fail(workflow_error(&message)),
            None => self.fail(
                ApiError::server(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Dify closed the stream for model `{}` before the answer was complete (no {} event)",
                        self.opts.model,
                        if self.opts.mode == AppMode::Workflow { "workflow_finished" } else { "message_end" }
                    ),
                )
                .code("upstream_stream_cut"),
            ),
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.outcome = Outcome::Failed(error);
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
        if !self.opts.progress {
            return;
        }
        let id = event.id.as_deref().unwrap_or_default();
        let tool = event.tool.as_deref().unwrap_or("").trim();
        if !tool.is_empty() && self.first_report(id, 1) {
            let input = event.tool_input.as_deref().unwrap_or("").trim();
            self.emit_reasoning(&format!("🔧 {tool} {input}\n"), sink);
        }
        let observation = event.observation.as_deref().unwrap_or("").trim();
        if !observation.is_empty() && self.first_report(id, 2) {
            let short: String = observation.chars().take(300).collect();
            let ellipsis = if short.len() < observation.len() { "…" } else { "" };
            self.emit_reasoning(&format!("→ {short}{ellipsis}\n"), sink);
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
            self.usage = Some(Usage { prompt_tokens: 0, completion_tokens: 0, total_tokens: total });
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
            Err(message) => self.fail(workflow_error(&message)),
            Ok(()) => {
                if let Some(text) =
                    data.and_then(|d| d.get("outputs")).and_then(|o| output_text(o, self.opts.output.as_deref()))
                {
                    sink.final_answer(&text);
                }
                self.outcome = Outcome::Finished { reason: self.finish_reason, usage: self.usage };
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
            ReasoningMode::Think => sink.content(&format!("<think>{text}</think>")),
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
            (Piece::Answer(text), _) => sink.content(&text),
            (Piece::Reasoning(text), ReasoningMode::Reasoning) => sink.reasoning(&text),
            (Piece::Reasoning(text), ReasoningMode::Think) => sink.content(&text),
            (Piece::ReasoningStart, ReasoningMode::Think) => sink.content("<think>"),
            (Piece::ReasoningEnd, ReasoningMode::Think) => sink.content("</think>\n\n"),
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
    ApiError::server(StatusCode::BAD_GATEWAY, format!("The Dify workflow failed: {message}")).code("workflow_failed")
}

/// Errors after generation began: the request was fine, the upstream failed, so 502 (or 429
/// for rate limits, 504 for timeouts), with Dify's code and message kept.
fn stream_error(err: &DifyError, model: &str) -> ApiError {
    match err {
        DifyError::Api { status: 429, .. } | DifyError::Timeout(_) | DifyError::Idle(_) => {
            ApiError::from_dify(err, model)
        }
        DifyError::Api { code, message, .. } => ApiError::server(
            StatusCode::BAD_GATEWAY,
            format!("Dify reported an error while answering for model `{model}`: {message}"),
        )
        .code(code.clone()),
        other => ApiError::from_dify(other, model),
    }
}

/// Collects a whole answer, for non-streaming clients.
#[derive(Debug, Default)]
pub struct Collected {
    pub content: String,
    pub reasoning: String,
    workflow_final: Option<String>,
}

impl Collected {
    pub fn answer(&self) -> Cow<'_, str> {
        match &self.workflow_final {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Borrowed(&self.content),
        }
    }
}

impl Sink for Collected {
    fn content(&mut self, text: &str) {
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
}
