//! OpenAI Chat Completions (`POST /v1/chat/completions`): the request as clients send it,
//! turned into a [`Turn`]; the neutral events written as `chat.completion.chunk` frames; a
//! collected answer written as one `chat.completion`. Unknown request fields are ignored
//! (clients send many); every rejection names the field.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::openai::error_json;
use super::{parse_json, tool_spec, tools};
use crate::bridge::{
    ApiError, Collected, Facts, FinishReason, Message, OutputFormat, OwnedFacts, Part, Progress, Role, Sink,
    StreamEncoder, ToolCall, ToolChoice, ToolSpec, Tools, Turn, Usage, replacement,
};
use crate::json_text::kind_of;

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// Not OpenAI: an explicit Dify conversation to continue.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Not OpenAI: values for the Dify app's input form, passed through.
    #[serde(default)]
    pub inputs: Option<Map<String, Value>>,
    /// A stable end-user id: the Dify user when neither a header nor `user` names one.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated forms of `tools` and `tool_choice`, still sent by older clients.
    #[serde(default)]
    pub functions: Option<Vec<Value>>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Refused when they ask for what a Dify app cannot give (see [`refuse_unavailable`]).
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub audio: Option<IgnoredAny>,
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    // Accepted and ignored: the Dify app's own model settings decide these ([`ChatRequest::app_owned`]).
    #[serde(default)]
    temperature: Option<IgnoredAny>,
    #[serde(default)]
    top_p: Option<IgnoredAny>,
    #[serde(default)]
    max_tokens: Option<IgnoredAny>,
    #[serde(default)]
    max_completion_tokens: Option<IgnoredAny>,
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
    #[serde(default)]
    reasoning_effort: Option<IgnoredAny>,
    #[serde(default)]
    verbosity: Option<IgnoredAny>,
    #[serde(default)]
    service_tier: Option<IgnoredAny>,
    #[serde(default)]
    store: Option<IgnoredAny>,
    #[serde(default)]
    metadata: Option<IgnoredAny>,
    #[serde(default)]
    prediction: Option<IgnoredAny>,
    #[serde(default)]
    prompt_cache_key: Option<IgnoredAny>,
    #[serde(default)]
    web_search_options: Option<IgnoredAny>,
    #[serde(default)]
    moderation: Option<IgnoredAny>,
}

impl ChatRequest {
    /// Chat Completions fields a Dify app decides for itself that the request set: accepted,
    /// so that clients that set them work, and logged at debug level, so that nobody wonders
    /// why they made no difference.
    fn app_owned(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 18] = [
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            ("max_completion_tokens", self.max_completion_tokens.is_some()),
            ("frequency_penalty", self.frequency_penalty.is_some()),
            ("presence_penalty", self.presence_penalty.is_some()),
            ("logit_bias", self.logit_bias.is_some()),
            ("seed", self.seed.is_some()),
            ("stop", self.stop.is_some()),
            ("reasoning_effort", self.reasoning_effort.is_some()),
            ("verbosity", self.verbosity.is_some()),
            ("service_tier", self.service_tier.is_some()),
            ("store", self.store.is_some()),
            ("metadata", self.metadata.is_some()),
            ("prediction", self.prediction.is_some()),
            ("prompt_cache_key", self.prompt_cache_key.is_some()),
            ("web_search_options", self.web_search_options.is_some()),
            ("moderation", self.moderation.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ChatToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatToolCall {
    pub id: String,
    pub function: ChatFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// What the encoder needs to know of the request.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub model: String,
    pub include_usage: bool,
    /// Open WebUI's events (status, sources) and usage in the stream.
    pub events: bool,
    /// A `dify` object in the final chunk or the completion (DIFY_METADATA).
    pub metadata: bool,
}

/// Parses a request body into the neutral turn and the options its answer is written with.
pub fn parse(body: &[u8]) -> Result<(Turn, ChatOptions), ApiError> {
    let request: ChatRequest = parse_json(body)?;
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid_request("`model` must not be empty").param("model"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid_request("`messages` must contain at least one message").param("messages"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.iter().enumerate() {
        messages.push(message_of(message, index)?);
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(ApiError::invalid_request("`messages` must contain at least one user message").param("messages"));
    }
    refuse_unavailable(&request)?;
    let ignored = request.app_owned();
    if !ignored.is_empty() {
        tracing::debug!("ignored (the Dify app's own settings decide): {}", ignored.join(", "));
    }
    let tools = tools_of(&request)?;
    let output = output_format(request.response_format.as_ref(), "response_format")?;
    let options = ChatOptions {
        model: request.model.clone(),
        include_usage: request.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
        events: false,
        metadata: false,
    };
    let turn = Turn {
        model: request.model,
        messages,
        stream: request.stream.unwrap_or(false),
        user: request.user.or(request.safety_identifier),
        conversation_id: request.conversation_id.filter(|c| !c.trim().is_empty()),
        previous_response_id: None,
        inputs: request.inputs,
        tools,
        output,
    };
    Ok((turn, options))
}

/// What a client may ask for that no Dify app can give: a 400 naming the field, since
/// answering without it would break the client quietly.
fn refuse_unavailable(request: &ChatRequest) -> Result<(), ApiError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ApiError::invalid_request(
            "`n` must be 1: a Dify app generates one answer per request (send several requests for several answers)",
        )
        .param("n")
        .code("unsupported_parameter"));
    }
    if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n > 0) {
        let param = if request.logprobs == Some(true) { "logprobs" } else { "top_logprobs" };
        return Err(ApiError::invalid_request(format!(
            "`{param}` is not available: Dify does not report token log probabilities"
        ))
        .param(param)
        .code("unsupported_parameter"));
    }
    let audio_out = request.modalities.as_ref().is_some_and(|m| m.iter().any(|m| m == "audio"));
    if request.audio.is_some() || audio_out {
        return Err(ApiError::invalid_request(
            "Audio output is not available in chat completions; ask /v1/audio/speech to read an answer aloud",
        )
        .param(if audio_out { "modalities" } else { "audio" })
        .code("unsupported_parameter"));
    }
    Ok(())
}

/// `tools` (or the deprecated `functions`), `tool_choice` and `parallel_tool_calls`.
fn tools_of(request: &ChatRequest) -> Result<Tools, ApiError> {
    let mut specs = Vec::new();
    if let Some(tools) = &request.tools {
        for (i, tool) in tools.iter().enumerate() {
            let param = format!("tools[{i}]");
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {}
                other => {
                    return Err(ApiError::invalid_request(format!(
                        "`{param}.type` must be \"function\" (got {}): only function tools can be emulated",
                        other.map_or("nothing".to_string(), |t| format!("{t:?}"))
                    ))
                    .param(format!("{param}.type")));
                }
            }
            specs.push(tool_spec(tool.get("function"), "parameters", &format!("{param}.function"))?);
        }
    }
    if let Some(functions) = &request.functions {
        for (i, function) in functions.iter().enumerate() {
            specs.push(tool_spec(Some(function), "parameters", &format!("functions[{i}]"))?);
        }
    }
    let choice_value = request.tool_choice.as_ref().or(request.function_call.as_ref());
    let (choice, allowed) =
        tool_choice(choice_value, if request.tool_choice.is_some() { "tool_choice" } else { "function_call" })?;
    if let Some(allowed) = allowed {
        specs.retain(|s| allowed.contains(&s.name));
    }
    tools(specs, choice, request.parallel_tool_calls.unwrap_or(true), "tool_choice")
}

/// A function tool's definition (`{name, description, parameters}`: the Chat Completions
/// `function` object, or the Responses API's flat tool).
pub fn function_spec(function: Option<&Value>, param: &str) -> Result<ToolSpec, ApiError> {
    tool_spec(function, "parameters", param)
}

/// `tool_choice`: `none`, `auto`, `required`, a named function (nested under `function` in
/// Chat Completions, flat in the Responses API), or `allowed_tools` (which also narrows the
/// tools).
pub fn tool_choice(value: Option<&Value>, param: &str) -> Result<(ToolChoice, Option<Vec<String>>), ApiError> {
    let bad = || {
        ApiError::invalid_request(format!(
            "`{param}` must be \"none\", \"auto\", \"required\" or a function by name ({{\"type\": \"function\", \"function\": {{\"name\": …}}}}, or {{\"type\": \"function\", \"name\": …}} in the Responses API)"
        ))
        .param(param.to_string())
    };
    fn named(v: &Value) -> Option<&str> {
        v.get("function").and_then(|f| f.get("name")).or(v.get("name")).and_then(Value::as_str)
    }
    Ok(match value {
        None | Some(Value::Null) => (ToolChoice::Auto, None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => (ToolChoice::Auto, None),
            "none" => (ToolChoice::None, None),
            "required" | "any" => (ToolChoice::Required, None),
            _ => return Err(bad()),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("allowed_tools") => {
            // Nested under `allowed_tools` in Chat Completions, flat in the Responses API.
            let allowed = v.get("allowed_tools").unwrap_or(v);
            let names: Vec<String> = allowed
                .get("tools")
                .and_then(Value::as_array)
                .map(|tools| tools.iter().filter_map(|t| named(t).map(str::to_string)).collect())
                .unwrap_or_default();
            let choice = match allowed.get("mode").and_then(Value::as_str) {
                Some("required") => ToolChoice::Required,
                _ => ToolChoice::Auto,
            };
            (choice, Some(names))
        }
        Some(v) => match named(v) {
            Some(name) => (ToolChoice::Named(name.to_string()), None),
            None => return Err(bad()),
        },
    })
}

/// `response_format` (Chat Completions), `text.format` (Responses) or `output_config.format`
/// (Anthropic Messages): text, `json_object`, or `json_schema` (nested under `json_schema`
/// in Chat Completions, flat in the others).
pub fn output_format(value: Option<&Value>, param: &str) -> Result<OutputFormat, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(OutputFormat::Text) };
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(OutputFormat::Text),
        "json_object" => Ok(OutputFormat::JsonObject),
        "json_schema" => {
            let spec = value.get("json_schema").unwrap_or(value);
            let schema_param = if value.get("json_schema").is_some() {
                format!("{param}.json_schema.schema")
            } else {
                format!("{param}.schema")
            };
            let name = spec.get("name").and_then(Value::as_str).unwrap_or("response").to_string();
            match spec.get("schema") {
                Some(schema) if schema.is_object() || schema.is_boolean() => {
                    jsonschema::validator_for(schema).map_err(|e| {
                        ApiError::invalid_request(format!("`{schema_param}` is a schema that cannot be used: {e}"))
                            .param(schema_param.clone())
                    })?;
                    Ok(OutputFormat::JsonSchema {
                        name,
                        schema: schema.clone(),
                        strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
                    })
                }
                None => Ok(OutputFormat::JsonObject),
                Some(_) => Err(ApiError::invalid_request(format!("`{schema_param}` must be a JSON Schema object"))
                    .param(schema_param)),
            }
        }
        other => Err(ApiError::invalid_request(format!(
            "`{param}.type` must be text, json_object or json_schema, got {other:?}"
        ))
        .param(format!("{param}.type"))),
    }
}

fn message_of(message: &ChatMessage, index: usize) -> Result<Message, ApiError> {
    let role = match message.role {
        ChatRole::System | ChatRole::Developer => Role::System,
        ChatRole::User => Role::User,
        ChatRole::Assistant => Role::Assistant,
        ChatRole::Tool | ChatRole::Function => Role::Tool,
    };
    let origin = format!("messages[{index}]");
    let mut parsed = Message::new(role, parts(message.content.as_ref(), &origin)?, origin);
    parsed.tool_calls = message
        .tool_calls
        .iter()
        .flatten()
        .map(|c| ToolCall { id: c.id.clone(), name: c.function.name.clone(), arguments: c.function.arguments.clone() })
        .collect();
    parsed.tool_call_id = message.tool_call_id.clone();
    parsed.name = message.name.clone();
    Ok(parsed)
}

/// The content as parts; `origin` is the message's place in the request, for errors.
fn parts(content: Option<&Value>, origin: &str) -> Result<Vec<Part>, ApiError> {
    // Written out only where it is used: most content is a plain string.
    let param = || format!("{origin}.content");
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => {
            let param = param();
            items.iter().enumerate().map(|(i, item)| part(item, &format!("{param}[{i}]"))).collect()
        }
        Some(other) => Err(ApiError::invalid_request(format!(
            "`{}` must be a string or an array of content parts, got {}",
            param(),
            kind_of(other)
        ))
        .param(param())),
    }
}

fn part(item: &Value, param: &str) -> Result<Part, ApiError> {
    let bad = |msg: String| ApiError::invalid_request(msg).param(param.to_string());
    let Some(obj) = item.as_object() else {
        return Err(bad(format!("`{param}` must be an object with a `type`, got {}", kind_of(item))));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let str_field = |v: Option<&Value>, name: &str| -> Result<String, ApiError> {
        v.and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(format!("`{param}.{name}` must be a string")))
    };
    match kind {
        "text" => Ok(Part::Text(str_field(obj.get("text"), "text")?)),
        // An assistant's refusal in the history is what it said.
        "refusal" => Ok(Part::Text(str_field(obj.get("refusal"), "refusal")?)),
        "image_url" => {
            let url = match obj.get("image_url") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => str_field(o.get("url"), "image_url.url")?,
                _ => return Err(bad(format!("`{param}.image_url` must be an object with a `url`"))),
            };
            if !is_fetchable(&url) {
                return Err(bad(format!("`{param}.image_url.url` must be an http(s) URL or a data: URL")));
            }
            Ok(Part::Image { url })
        }
        "file" => {
            let Some(file) = obj.get("file").and_then(Value::as_object) else {
                return Err(bad(format!("`{param}.file` must be an object")));
            };
            let opt = |name: &str| file.get(name).and_then(Value::as_str).map(str::to_string);
            let (data, filename, file_id) = (opt("file_data"), opt("filename"), opt("file_id"));
            if data.is_none() && file_id.is_none() {
                return Err(bad(format!("`{param}.file` needs `file_data` (a data: URL) or `file_id`")));
            }
            Ok(Part::File { data, filename, file_id, url: None })
        }
        "input_audio" => {
            let Some(audio) = obj.get("input_audio").and_then(Value::as_object) else {
                return Err(bad(format!("`{param}.input_audio` must be an object")));
            };
            Ok(Part::Audio {
                data: str_field(audio.get("data"), "input_audio.data")?,
                format: str_field(audio.get("format"), "input_audio.format")?,
            })
        }
        "" => Err(bad(format!("`{param}` has no `type`"))),
        other => {
            Err(bad(format!("`{param}` has unsupported type {other:?}; supported: text, image_url, file, input_audio")))
        }
    }
}

/// An http(s) or `data:` URL: what an image or file can be given as.
pub fn is_fetchable(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("data:")
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::ToolCalls => "tool_calls",
    }
}

#[derive(Debug, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

#[derive(Debug, Serialize)]
struct ToolCallBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionBody<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionBody<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageBody>,
    system_fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dify: Option<Value>,
}

#[derive(Debug, Serialize)]
struct Choice<'a> {
    index: u32,
    message: ResponseMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Debug, Serialize)]
struct ResponseMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallBody<'a>>,
    refusal: Option<&'a str>,
}

/// The `chat.completion` object for a collected answer.
pub fn completion(
    options: &ChatOptions,
    answer: &Collected,
    reason: FinishReason,
    usage: Option<&Usage>,
    created: u64,
) -> serde_json::Result<Vec<u8>> {
    let id = super::random_id("chatcmpl-");
    let text = answer.answer();
    let tool_calls: Vec<ToolCallBody<'_>> = answer
        .tool_calls
        .iter()
        .map(|c| ToolCallBody {
            id: &c.id,
            kind: "function",
            function: FunctionBody { name: &c.name, arguments: &c.arguments },
        })
        .collect();
    // With tool calls and no text, `content` is null, as OpenAI sends it.
    let content = if text.is_empty() && !tool_calls.is_empty() { None } else { Some(text.as_ref()) };
    let body = Completion {
        id: &id,
        object: "chat.completion",
        created,
        model: &options.model,
        choices: [Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content,
                reasoning_content: (!answer.reasoning.is_empty()).then_some(answer.reasoning.as_str()),
                tool_calls,
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish_reason(reason),
        }],
        usage: usage.map(UsageBody::from),
        system_fingerprint: None,
        dify: options.metadata.then(|| super::dify_object(&answer.facts.view(), usage)),
    };
    // Written straight to bytes: no intermediate `Value` tree to build and drop.
    serde_json::to_vec(&body)
}

#[derive(Debug, Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless the client asked for usage; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
    /// An Open WebUI event (see `open_webui`).
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Value>,
    /// DIFY_METADATA, on the closing chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    dify: Option<Value>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Debug, Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Debug, Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Writes the SSE frames of one streamed completion; all share id, created and model.
pub struct ChatEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Every delta frame up to its delta, and after it: the same bytes [`Chunk`] serialises
    /// to, made once per stream, so each answer event only serialises its own text.
    head: Vec<u8>,
    tail: &'static [u8],
    out: BytesMut,
    sent_text: bool,
    tool_calls: usize,
    events: bool,
    metadata: bool,
    /// Open WebUI: the latest status line, marked done when the answer ends.
    status: Option<String>,
    /// What Dify reported besides the text, when it is rendered (events or metadata).
    facts: Option<OwnedFacts>,
}

impl ChatEncoder {
    pub fn new(options: &ChatOptions, created: u64) -> Self {
        let id = super::random_id("chatcmpl-");
        let model = options.model.clone();
        let mut head = Vec::with_capacity(128 + id.len() + model.len());
        head.extend_from_slice(b"data: {\"id\":");
        // Serialising a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut head, &id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut head, &model);
        head.extend_from_slice(b",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":");
        let tail: &'static [u8] = if options.include_usage {
            b",\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        } else {
            b",\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        };
        ChatEncoder {
            id,
            created,
            model,
            include_usage: options.include_usage,
            head,
            tail,
            out: BytesMut::new(),
            sent_text: false,
            tool_calls: 0,
            events: options.events,
            metadata: options.metadata,
            status: None,
            facts: None,
        }
    }

    /// The `usage` of a chunk that carries none: `null` when the client asked for usage.
    fn no_usage(&self) -> Option<Value> {
        self.include_usage.then_some(Value::Null)
    }

    fn frame(&mut self, choices: &[ChunkChoice<'_>], usage: Option<Value>) {
        self.chunk(choices, usage, None, None);
    }

    fn chunk(&mut self, choices: &[ChunkChoice<'_>], usage: Option<Value>, event: Option<&Value>, dify: Option<Value>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
            event,
            dify,
        };
        self.out.put_slice(b"data: ");
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.out).writer(), &chunk);
        self.out.put_slice(b"\n\n");
    }

    fn delta(&mut self, delta: Delta<'_>) {
        self.out.reserve(self.head.len() + self.tail.len() + 32);
        self.out.put_slice(&self.head);
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.out).writer(), &delta);
        self.out.put_slice(self.tail);
    }
}

impl Sink for ChatEncoder {
    fn text(&mut self, text: &str) {
        if !text.is_empty() {
            self.sent_text = true;
            self.delta(Delta { content: Some(text), ..Delta::default() });
        }
    }

    fn reasoning(&mut self, text: &str) {
        if !text.is_empty() {
            self.delta(Delta { reasoning_content: Some(text), ..Delta::default() });
        }
    }

    fn replace(&mut self, text: &str) {
        self.text(&replacement(self.sent_text, text));
    }

    fn final_answer(&mut self, text: &str) {
        if !self.sent_text {
            self.text(text);
        }
    }

    fn tool_call(&mut self, call: &ToolCall) {
        let index = self.tool_calls;
        self.tool_calls += 1;
        // As OpenAI streams them: the call's id and name first, then its arguments.
        let opening = ToolCallDelta {
            index,
            id: Some(&call.id),
            kind: Some("function"),
            function: FunctionDelta { name: Some(&call.name), arguments: "" },
        };
        self.delta(Delta { tool_calls: Some([opening]), ..Delta::default() });
        let arguments = ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta { name: None, arguments: &call.arguments },
        };
        self.delta(Delta { tool_calls: Some([arguments]), ..Delta::default() });
    }

    fn keep_alive(&mut self) {
        self.out.put_slice(b": keep-alive\n\n");
    }

    /// Open WebUI: a status line when a step begins (one per step: its end is not a line of
    /// its own; the last one is marked done when the answer ends).
    fn progress(&mut self, step: &Progress) {
        if !self.events || step.done {
            return;
        }
        let event = super::open_webui::status(&step.label, false);
        let usage = self.no_usage();
        self.chunk(&[], usage, Some(&event), None);
        self.status = Some(step.label.clone());
    }

    fn facts(&mut self, facts: &Facts<'_>) {
        if self.events || self.metadata {
            self.facts = Some(facts.owned());
        }
    }

    /// Open WebUI's sources and closing status, the closing choice chunk (with the `dify`
    /// object for DIFY_METADATA), the usage chunk when asked for (always for Open WebUI), and
    /// `[DONE]`.
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        let facts = self.facts.take();
        if self.events {
            for event in super::open_webui::sources(facts.as_ref().map_or(&[][..], |f| &f.citations)) {
                let usage = self.no_usage();
                self.chunk(&[], usage, Some(&event), None);
            }
            if let Some(label) = self.status.take() {
                let event = super::open_webui::status(&label, true);
                let usage = self.no_usage();
                self.chunk(&[], usage, Some(&event), None);
            }
        }
        let choice = ChunkChoice {
            index: 0,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish_reason(reason)),
        };
        let dify = match (&facts, self.metadata) {
            (Some(facts), true) => Some(super::dify_object(&facts.view(), usage)),
            (None, true) => Some(super::dify_object(&Facts::default(), usage)),
            _ => None,
        };
        let slot = self.no_usage();
        self.chunk(std::slice::from_ref(&choice), slot, None, dify);
        if let Some(usage) = usage {
            if self.events {
                self.frame(&[], Some(super::open_webui::usage(usage)));
            } else if self.include_usage {
                self.frame(&[], Some(json_of(&UsageBody::from(usage))));
            }
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

fn json_of(usage: &UsageBody) -> Value {
    serde_json::to_value(usage).unwrap_or(Value::Null)
}

impl StreamEncoder for ChatEncoder {
    fn start(&mut self) {
        self.delta(Delta { role: Some("assistant"), content: Some(""), ..Delta::default() });
    }

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

    fn frames_of(encoder: &mut ChatEncoder) -> Vec<String> {
        let bytes = encoder.take();
        String::from_utf8_lossy(&bytes).split("\n\n").filter(|f| !f.is_empty()).map(str::to_string).collect()
    }

    #[test]
    fn accepts_string_and_part_content_and_ignores_unknown_fields() {
        let (turn, options) = parse(
            br#"{"model":"m","temperature":0.2,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("valid");
        assert!(turn.stream && options.include_usage);
        assert_eq!(turn.messages[1].joined_text(), "a\nb");
        assert_eq!(turn.input_start(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{"messages":[]}"#).param.as_deref(), Some("model"));
        assert!(err("{not json").message.starts_with("Request body is not valid JSON"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":1}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{}", e.message);
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = err(r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = err(r#"{"model":"m","messages":[{"role":"assistant","content":"x"}]}"#);
        assert!(e.message.contains("at least one user message"));
        let e = err(r#"{"model":"m","messages":[{"content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{}", e.message);
    }

    #[test]
    fn chunks_have_openai_shape_and_usage_only_when_asked() {
        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, price: None };
        let mut w = ChatEncoder::new(
            &ChatOptions { model: "m".into(), include_usage: false, events: false, metadata: false },
            7,
        );
        w.start();
        w.text("Hé\"");
        w.finish(FinishReason::Stop, Some(&usage));
        let frames = frames_of(&mut w);
        assert_eq!(frames.len(), 4);
        let first: Value = serde_json::from_str(frames[0].trim_start_matches("data: ")).expect("json");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], serde_json::json!({"role": "assistant", "content": ""}));
        assert!(frames[1].contains(r#""delta":{"content":"Hé\""}"#));
        assert!(frames[2].contains(r#""delta":{},"logprobs":null,"finish_reason":"stop""#));
        assert!(!frames.concat().contains("usage"));
        assert_eq!(frames[3], "data: [DONE]");

        let mut w = ChatEncoder::new(
            &ChatOptions { model: "m".into(), include_usage: true, events: false, metadata: false },
            7,
        );
        w.text("x");
        w.finish(FinishReason::Stop, Some(&usage));
        let text = frames_of(&mut w).concat();
        assert!(text.contains(r#""usage":null"#));
        assert!(text.contains(r#""choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#));
    }

    #[test]
    fn delta_frames_are_the_bytes_the_whole_chunk_serialises_to() {
        for include_usage in [false, true] {
            let options = ChatOptions { model: "m/\\\"x".into(), include_usage, events: false, metadata: false };
            let mut w = ChatEncoder::new(&options, 1_700_000_000);
            for text in ["", "Hé\"\n\t\u{7f}\u{1f} 👋</script>", "\\think"] {
                w.delta(Delta { content: Some(text), ..Delta::default() });
                let fast = w.take();
                let choice = ChunkChoice {
                    index: 0,
                    delta: Delta { content: Some(text), ..Delta::default() },
                    logprobs: None,
                    finish_reason: None,
                };
                w.frame(std::slice::from_ref(&choice), include_usage.then_some(Value::Null));
                let whole = w.take();
                assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&whole));
            }
        }
    }

    #[test]
    fn tool_calls_stream_as_openai_does_id_and_name_first_then_arguments() {
        let mut w = ChatEncoder::new(
            &ChatOptions { model: "m".into(), include_usage: false, events: false, metadata: false },
            7,
        );
        let call = ToolCall { id: "call_1".into(), name: "weather".into(), arguments: "{\"city\":\"Oslo\"}".into() };
        w.tool_call(&call);
        w.finish(FinishReason::ToolCalls, None);
        let frames = frames_of(&mut w);
        let first: Value = serde_json::from_str(frames[0].trim_start_matches("data: ")).expect("json");
        assert_eq!(
            first["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}})
        );
        let second: Value = serde_json::from_str(frames[1].trim_start_matches("data: ")).expect("json");
        assert_eq!(
            second["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index": 0, "function": {"arguments": "{\"city\":\"Oslo\"}"}})
        );
        assert!(frames[2].contains(r#""finish_reason":"tool_calls""#));
    }
}
