//! What stands between the translator and a dialect's encoder (or the collector for
//! non-streaming answers): the stages that read the answer as it streams (the tool-call
//! parser, the structured-output check), and a tap that keeps the answer as the client saw
//! it (for the conversation fingerprint) and notices the first token (for the metrics).
//! Streaming and non-streaming answers go through the same pipeline, so both see the same
//! answer.

use super::error::ApiError;
use super::events::{Facts, FinishReason, Progress, Sink, Usage};
use super::structured::JsonAnswer;
use super::tools::{self, ToolCallParser};
use super::turn::ToolCall;

pub struct Pipeline<S: Sink> {
    tools: Option<ToolCallParser>,
    format: Option<JsonAnswer>,
    /// The tail of the pipeline, reachable for the encoder's output.
    pub out: Tap<S>,
    /// How the answer ended, as the client was told.
    ended: Option<FinishReason>,
}

/// The stages after the tool-call parser.
struct Next<'a, S: Sink> {
    format: &'a mut Option<JsonAnswer>,
    out: &'a mut Tap<S>,
}

impl<S: Sink> Sink for Next<'_, S> {
    fn text(&mut self, text: &str) {
        match self.format {
            Some(format) => format.text(text, self.out),
            None => self.out.text(text),
        }
    }
    fn reasoning(&mut self, text: &str) {
        self.out.reasoning(text);
    }
    fn replace(&mut self, text: &str) {
        self.out.replace(text);
    }
    fn final_answer(&mut self, text: &str) {
        self.out.final_answer(text);
    }
    fn tool_call(&mut self, call: &ToolCall) {
        self.out.tool_call(call);
    }
    fn progress(&mut self, step: &Progress) {
        self.out.progress(step);
    }
    fn facts(&mut self, facts: &Facts<'_>) {
        self.out.facts(facts);
    }
    fn keep_alive(&mut self) {
        self.out.keep_alive();
    }
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        match self.format {
            // An answer that calls tools is not the JSON answer yet.
            Some(format) if reason != FinishReason::ToolCalls => format.finish(self.out, reason, usage),
            _ => self.out.finish(reason, usage),
        }
    }
    fn fail(&mut self, error: &ApiError) {
        self.out.fail(error);
    }
}

/// Keeps what the client is shown, then hands every event to the sink.
pub struct Tap<S: Sink> {
    pub sink: S,
    /// The answer as the client sees it, when the turn will be recorded.
    transcript: Option<String>,
    /// Answer text (or a tool call) went out: the first token has been sent.
    pub answered: bool,
    sent_text: bool,
}

impl<S: Sink> Pipeline<S> {
    /// `record`: keep the answer's text for the conversation fingerprint.
    pub fn new(sink: S, record: bool) -> Self {
        Pipeline {
            tools: None,
            format: None,
            out: Tap { sink, transcript: record.then(String::new), answered: false, sent_text: false },
            ended: None,
        }
    }

    /// Reads emulated tool calls out of the answer.
    pub fn with_tools(mut self, parser: Option<ToolCallParser>) -> Self {
        self.tools = parser;
        self
    }

    /// Cleans and checks a structured answer.
    pub fn with_format(mut self, format: Option<JsonAnswer>) -> Self {
        self.format = format;
        self
    }

    /// Why a structured answer was refused, when it was.
    pub fn refused(&self) -> Option<&str> {
        self.format.as_ref().and_then(|f| f.refused.as_deref())
    }

    /// How the answer ended for the client (a tool call ends it as `tool_calls`).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.ended
    }

    pub fn sink(&mut self) -> &mut S {
        &mut self.out.sink
    }

    /// The answer as the client saw it: its text and its tool calls as blocks.
    pub fn transcript(&self) -> &str {
        self.out.transcript.as_deref().unwrap_or("")
    }

    pub fn answered(&self) -> bool {
        self.out.answered
    }
}

impl<S: Sink> Tap<S> {
    fn keep(&mut self, text: &str) {
        if let Some(transcript) = &mut self.transcript {
            transcript.push_str(text);
        }
    }
}

impl<S: Sink> Sink for Tap<S> {
    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.answered = true;
        self.sent_text = true;
        self.keep(text);
        self.sink.text(text);
    }
    fn reasoning(&mut self, text: &str) {
        if !text.is_empty() {
            self.answered = true;
        }
        self.sink.reasoning(text);
    }
    fn replace(&mut self, text: &str) {
        if self.sent_text {
            // Streamed text cannot be taken back: clients see the replacement after it.
            self.keep("\n\n");
        }
        self.keep(text);
        self.answered = true;
        self.sink.replace(text);
    }
    fn final_answer(&mut self, text: &str) {
        if !self.sent_text {
            self.keep(text);
        }
        self.sink.final_answer(text);
    }
    fn tool_call(&mut self, call: &ToolCall) {
        self.answered = true;
        if let Some(transcript) = &mut self.transcript {
            if !transcript.is_empty() {
                transcript.push('\n');
            }
            transcript.push_str(&tools::call_block(call));
        }
        self.sink.tool_call(call);
    }
    fn progress(&mut self, step: &Progress) {
        self.sink.progress(step);
    }
    fn facts(&mut self, facts: &Facts<'_>) {
        self.sink.facts(facts);
    }
    fn keep_alive(&mut self) {
        self.sink.keep_alive();
    }
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        self.sink.finish(reason, usage);
    }
    fn fail(&mut self, error: &ApiError) {
        self.sink.fail(error);
    }
}

impl<S: Sink> Pipeline<S> {
    fn next(&mut self) -> (&mut Option<ToolCallParser>, Next<'_, S>) {
        (&mut self.tools, Next { format: &mut self.format, out: &mut self.out })
    }
}

impl<S: Sink> Sink for Pipeline<S> {
    fn text(&mut self, text: &str) {
        let (tools, mut next) = self.next();
        match tools {
            Some(parser) => parser.text(text, &mut next),
            None => next.text(text),
        }
    }
    fn reasoning(&mut self, text: &str) {
        self.out.reasoning(text);
    }
    fn replace(&mut self, text: &str) {
        self.out.replace(text);
    }
    fn final_answer(&mut self, text: &str) {
        if self.tools.is_some() || self.format.is_some() {
            // A workflow's final output, when nothing streamed, is read like streamed text.
            if !self.out.sent_text {
                self.text(text);
            }
            return;
        }
        self.out.final_answer(text);
    }
    fn tool_call(&mut self, call: &ToolCall) {
        self.out.tool_call(call);
    }
    fn progress(&mut self, step: &Progress) {
        self.out.progress(step);
    }
    fn facts(&mut self, facts: &Facts<'_>) {
        self.out.facts(facts);
    }
    fn keep_alive(&mut self) {
        self.out.keep_alive();
    }
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        let (tools, mut next) = self.next();
        let reason = match tools {
            Some(parser) => {
                parser.finish(&mut next);
                tools::finish_reason(parser.calls(), reason)
            }
            None => reason,
        };
        next.finish(reason, usage);
        self.ended = Some(reason);
    }
    fn fail(&mut self, error: &ApiError) {
        self.out.fail(error);
    }
}
