//! OpenAI's legacy completions (`POST /v1/completions`): a prompt in, a `text_completion`
//! out, streamed as full `text_completion` objects whose `choices[0].text` is the delta. It
//! is what LlamaIndex's `OpenAILike(is_chat_model=False)`, LangChain's `OpenAI` LLM and many
//! scripts call, and a natural fit for Dify's completion (text generator) apps; chat-family
//! and workflow apps answer it too.
//!
//! The prompt becomes the one user message of a [`Turn`]; everything after is the shared
//! exchange. What the API asks for that no Dify app can give is a 400 naming the field:
//! several prompts or token arrays, `suffix` (insertion), `n`/`best_of` above 1, `echo`,
//! `logprobs`. Sampling fields are accepted and ignored, as in chat. Reasoning has no place
//! in this API and goes nowhere; there are no `tools` to emulate.
//!
//! Stateless: the API has no history, so every request is a fresh Dify conversation, and the
//! handler prepares its exchange without the conversation rules (no lookup, no lock, nothing
//! recorded). A single user message would never *continue* anything anyway, but recording
//! its fingerprint would be wrong: it would cost a store write per request (batch
//! and autocomplete callers send many), a chat id header would map the client's chat to a
//! one-shot completion, and an explicit `X-Dify-Conversation-Id` would append a stateless
//! prompt to someone's conversation. None of those happen.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat::{StreamOptions, UsageBody};
use super::openai::error_json;
use super::parse_json;
use crate::bridge::{
    ApiError, Collected, FinishReason, Message, Role, Sink, StreamEncoder, ToolCall, Turn, Usage, replacement,
};
use crate::json_text::kind_of;

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// Not OpenAI: values for the Dify app's input form, passed through.
    #[serde(default)]
    pub inputs: Option<Map<String, Value>>,
    /// Refused when they ask for what a Dify app cannot give (see [`refuse_unavailable`]).
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    // Accepted and ignored: the Dify app's own model settings decide these.
    #[serde(default)]
    temperature: Option<IgnoredAny>,
    #[serde(default)]
    top_p: Option<IgnoredAny>,
    #[serde(default)]
    max_tokens: Option<IgnoredAny>,
    #[serde(default)]
    frequency_penalty: Option<IgnoredAny>,
    #[serde(default)]
    presence_penalty: Option<IgnoredAny>,
    #[serde(default)]
    logit_bias: Option<IgnoredAny>,
    #[serde(default)]
    seed: Option<IgnoredAny>,
    #[serde(default)]
    stop: Option<IgnoredAny>,
}

impl CompletionRequest {
    /// Fields the Dify app decides for itself that the request set (logged at debug level).
    fn app_owned(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 8] = [
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            ("frequency_penalty", self.frequency_penalty.is_some()),
            ("presence_penalty", self.presence_penalty.is_some()),
            ("logit_bias", self.logit_bias.is_some()),
            ("seed", self.seed.is_some()),
            ("stop", self.stop.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }
}

/// What the encoder and the renderer need to know of the request.
#[derive(Debug, Clone)]
pub struct CompletionOptions {
    pub model: String,
    pub include_usage: bool,
}

/// Parses a request body into the neutral turn (one user message) and the answer's options.
pub fn parse(body: &[u8]) -> Result<(Turn, CompletionOptions), ApiError> {
    let request: CompletionRequest = parse_json(body)?;
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid_request("`model` must not be empty").param("model"));
    }
    let prompt = prompt_of(request.prompt.as_ref())?;
    refuse_unavailable(&request)?;
    let ignored = request.app_owned();
    if !ignored.is_empty() {
        tracing::debug!("ignored (the Dify app's own settings decide): {}", ignored.join(", "));
    }
    let options = CompletionOptions {
        model: request.model.clone(),
        include_usage: request.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
    };
    let turn = Turn {
        model: request.model,
        messages: vec![Message::text(Role::User, prompt, "prompt")],
        stream: request.stream.unwrap_or(false),
        user: request.user,
        conversation_id: None,
        inputs: request.inputs,
        ..Turn::default()
    };
    Ok((turn, options))
}

/// The prompt as one text: a string, or a list holding exactly one string.
fn prompt_of(prompt: Option<&Value>) -> Result<String, ApiError> {
    let bad = |message: String| ApiError::invalid_request(message).param("prompt");
    let text = match prompt {
        None | Some(Value::Null) => return Err(bad("Missing required field `prompt`".to_string())),
        Some(Value::String(text)) => text,
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(text)] => text,
            [] => return Err(bad("`prompt` must not be an empty list".to_string())),
            items if items.iter().all(Value::is_string) => {
                return Err(bad(format!(
                    "`prompt` holds {} prompts: a Dify app answers one prompt per request (send one request per prompt)",
                    items.len()
                ))
                .code("unsupported_parameter"));
            }
            items if items.iter().all(|i| i.is_number() || i.is_array()) => {
                return Err(bad(
                    "`prompt` is a token array: Dify apps take text, not tokens (send the prompt as a string)"
                        .to_string(),
                )
                .code("unsupported_parameter"));
            }
            _ => return Err(bad("`prompt` must be a string or a list of one string".to_string())),
        },
        Some(other) => return Err(bad(format!("`prompt` must be a string, got {}", kind_of(other)))),
    };
    if text.trim().is_empty() {
        return Err(bad("`prompt` must not be empty: a Dify app answers a message".to_string()));
    }
    Ok(text.clone())
}

/// What a client may ask for that no Dify app can give: a 400 naming the field, since
/// answering without it would break the client quietly.
fn refuse_unavailable(request: &CompletionRequest) -> Result<(), ApiError> {
    let refuse = |param: &str, why: &str| {
        Err(ApiError::invalid_request(format!("`{param}` {why}")).param(param).code("unsupported_parameter"))
    };
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return refuse(
            "suffix",
            "is not available: insertion is not available in Dify apps (send the text before the gap as the prompt)",
        );
    }
    if request.n.is_some_and(|n| n > 1) {
        return refuse(
            "n",
            "must be 1: a Dify app generates one answer per request (send several requests for several answers)",
        );
    }
    if request.best_of.is_some_and(|n| n > 1) {
        return refuse("best_of", "must be 1: a Dify app generates one answer per request");
    }
    if request.echo == Some(true) {
        return refuse("echo", "is not available: the answer never repeats the prompt (prepend it yourself)");
    }
    if request.logprobs.is_some() {
        return refuse("logprobs", "is not available: Dify does not report token log probabilities");
    }
    Ok(())
}

/// The legacy API's `finish_reason`: `stop`, `length` or `content_filter` (a tool call
/// cannot happen: there are no tools to emulate).
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Stop | FinishReason::ToolCalls => "stop",
    }
}

#[derive(Debug, Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    /// Absent unless usage is reported (a body) or asked for (a stream, `null` on every
    /// chunk but the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageBody>>,
}

#[derive(Debug, Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// The `text_completion` object for a collected answer.
pub fn completion(
    options: &CompletionOptions,
    answer: &Collected,
    reason: FinishReason,
    usage: Option<&Usage>,
    created: u64,
) -> Value {
    let id = super::random_id("cmpl-");
    let text = answer.answer();
    let choice = TextChoice { text: &text, index: 0, logprobs: None, finish_reason: Some(finish_reason(reason)) };
    let body = TextCompletion {
        id: &id,
        object: "text_completion",
        created,
        model: &options.model,
        choices: std::slice::from_ref(&choice),
        usage: usage.map(|u| Some(u.into())),
    };
    serde_json::to_value(&body).unwrap_or(Value::Null)
}

/// Writes the SSE frames of one streamed completion; all share id, created and model.
pub struct CompletionEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    out: BytesMut,
    sent_text: bool,
}

impl CompletionEncoder {
    pub fn new(options: &CompletionOptions, created: u64) -> Self {
        CompletionEncoder {
            id: super::random_id("cmpl-"),
            created,
            model: options.model.clone(),
            include_usage: options.include_usage,
            out: BytesMut::new(),
            sent_text: false,
        }
    }

    fn frame(&mut self, choices: &[TextChoice<'_>], usage: Option<Option<UsageBody>>) {
        let chunk = TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        self.out.put_slice(b"data: ");
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.out).writer(), &chunk);
        self.out.put_slice(b"\n\n");
    }

    /// A usage slot on every chunk when the client asked for usage: `null` until the last.
    fn usage_slot(&self) -> Option<Option<UsageBody>> {
        self.include_usage.then_some(None)
    }
}

impl Sink for CompletionEncoder {
    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.sent_text = true;
        let choice = TextChoice { text, index: 0, logprobs: None, finish_reason: None };
        let slot = self.usage_slot();
        self.frame(std::slice::from_ref(&choice), slot);
    }

    /// The legacy API has no place for reasoning.
    fn reasoning(&mut self, _text: &str) {}

    fn replace(&mut self, text: &str) {
        self.text(&replacement(self.sent_text, text));
    }

    fn final_answer(&mut self, text: &str) {
        if !self.sent_text {
            self.text(text);
        }
    }

    /// Never called (no tools are emulated for this API); written as the block it was.
    fn tool_call(&mut self, call: &ToolCall) {
        self.text(&crate::bridge::tools::call_block(call));
    }

    fn keep_alive(&mut self) {
        self.out.put_slice(b": keep-alive\n\n");
    }

    /// The closing choice chunk, the usage chunk when asked for, and `[DONE]`.
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        let choice = TextChoice { text: "", index: 0, logprobs: None, finish_reason: Some(finish_reason(reason)) };
        let slot = self.usage_slot();
        self.frame(std::slice::from_ref(&choice), slot);
        if self.include_usage
            && let Some(usage) = usage
        {
            self.frame(&[], Some(Some(usage.into())));
        }
        self.out.put_slice(b"data: [DONE]\n\n");
    }

    /// A failure after the stream began: OpenAI's error object as a frame, then `[DONE]`.
    fn fail(&mut self, error: &ApiError) {
        self.out.put_slice(b"data: ");
        self.out.put_slice(error_json(error).as_bytes());
        self.out.put_slice(b"\n\ndata: [DONE]\n\n");
    }
}

impl StreamEncoder for CompletionEncoder {
    /// The legacy stream has no opening frame: the first chunk carries text.
    fn start(&mut self) {}

    fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes()).expect_err("should fail")
    }

    fn frames_of(encoder: &mut CompletionEncoder) -> Vec<String> {
        let bytes = encoder.take();
        String::from_utf8_lossy(&bytes).split("\n\n").filter(|f| !f.is_empty()).map(str::to_string).collect()
    }

    #[test]
    fn a_prompt_or_a_list_of_one_becomes_one_user_message() {
        let (turn, options) =
            parse(br#"{"model":"m","prompt":"Say hi","temperature":0.1,"max_tokens":16,"stream":true}"#).expect("ok");
        assert_eq!(turn.messages.len(), 1);
        assert_eq!((turn.messages[0].role, turn.messages[0].joined_text()), (Role::User, "Say hi".to_string()));
        assert!(turn.stream && !options.include_usage);
        let (turn, _) = parse(br#"{"model":"m","prompt":["Say hi"],"suffix":"","n":1,"echo":false}"#).expect("ok");
        assert_eq!(turn.messages[0].joined_text(), "Say hi");
    }

    #[test]
    fn what_no_dify_app_can_give_is_refused_naming_the_field() {
        for (body, param) in [
            (r#"{"model":"m","prompt":["a","b"]}"#, "prompt"),
            (r#"{"model":"m","prompt":[1,2,3]}"#, "prompt"),
            (r#"{"model":"m","prompt":[[1,2]]}"#, "prompt"),
            (r#"{"model":"m","prompt":[]}"#, "prompt"),
            (r#"{"model":"m","prompt":"  "}"#, "prompt"),
            (r#"{"model":"m"}"#, "prompt"),
            (r#"{"model":"m","prompt":"a","suffix":"b"}"#, "suffix"),
            (r#"{"model":"m","prompt":"a","n":2}"#, "n"),
            (r#"{"model":"m","prompt":"a","best_of":3}"#, "best_of"),
            (r#"{"model":"m","prompt":"a","echo":true}"#, "echo"),
            (r#"{"model":"m","prompt":"a","logprobs":0}"#, "logprobs"),
            (r#"{"model":"","prompt":"a"}"#, "model"),
        ] {
            assert_eq!(err(body).param.as_deref(), Some(param), "{body}");
        }
        assert!(err(r#"{"model":"m","prompt":"a","suffix":"b"}"#).message.contains("insertion is not available"));
        assert!(err(r#"{"model":"m","prompt":["a","b"]}"#).message.contains("2 prompts"));
    }

    #[test]
    fn chunks_are_whole_text_completions_with_usage_only_when_asked() {
        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, price: None };
        let mut w = CompletionEncoder::new(&CompletionOptions { model: "m".into(), include_usage: false }, 7);
        w.start();
        w.reasoning("hidden");
        w.text("Hé\"");
        w.finish(FinishReason::Stop, Some(&usage));
        let frames = frames_of(&mut w);
        assert_eq!(frames.len(), 3, "{frames:?}");
        let first: Value = serde_json::from_str(frames[0].trim_start_matches("data: ")).expect("json");
        assert_eq!(first["object"], "text_completion");
        assert!(first["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
        assert_eq!(
            first["choices"],
            serde_json::json!([{"text": "Hé\"", "index": 0, "logprobs": null, "finish_reason": null}])
        );
        let last: Value = serde_json::from_str(frames[1].trim_start_matches("data: ")).expect("json");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["id"], first["id"]);
        assert!(!frames.concat().contains("usage") && !frames.concat().contains("hidden"));
        assert_eq!(frames[2], "data: [DONE]");

        let mut w = CompletionEncoder::new(&CompletionOptions { model: "m".into(), include_usage: true }, 7);
        w.text("x");
        w.finish(FinishReason::ContentFilter, Some(&usage));
        let text = frames_of(&mut w).concat();
        assert!(text.contains(r#""finish_reason":"content_filter"}],"usage":null"#), "{text}");
        assert!(text.contains(r#""choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#));
    }

    #[test]
    fn a_failure_mid_stream_is_an_error_frame_then_done() {
        let mut w = CompletionEncoder::new(&CompletionOptions { model: "m".into(), include_usage: false }, 7);
        w.text("partial");
        w.fail(&ApiError::invalid_request("boom"));
        let frames = frames_of(&mut w);
        assert!(frames[1].starts_with(r#"data: {"error":{"message":"boom""#), "{frames:?}");
        assert_eq!(frames[2], "data: [DONE]");
    }
}
