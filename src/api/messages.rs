//! Anthropic Messages (`POST /v1/messages`): the request as Anthropic's SDKs send it, turned
//! into a [`Turn`]; the neutral events written as Anthropic's named SSE events
//! (`message_start`, content blocks with their deltas, `message_delta`, `message_stop`); a
//! collected answer written as one `message`. Unknown request fields are ignored (clients
//! send many); every rejection names the field.
//!
//! Content blocks map onto the neutral turn: `text` → text, `image` → an image (base64 as a
//! `data:` URL, or by URL), `document` → a file (a PDF as a `data:` URL or by URL) or its
//! text, `tool_use` → an assistant's tool call (its `input` as the arguments' JSON text),
//! `tool_result` → a tool message (one per block; any other content of the same user message
//! follows them as a user message), `thinking` in the history → nothing (Dify keeps its own).

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::is_fetchable;
use super::{anthropic, parse_json, tool_spec, tools};
use crate::bridge::uploads::extension_for;
use crate::bridge::{
    ApiError, Collected, FinishReason, Message, Part, Role, Sink, StreamEncoder, ToolCall, ToolChoice, Tools, Turn,
    Usage, replacement,
};
use crate::json_text::kind_of;

#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    /// Required by Anthropic's API, so required here; the Dify app decides the length.
    pub max_tokens: u64,
    pub messages: Vec<MessageParam>,
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub thinking: Option<Value>,
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
    /// The structured-outputs beta's name for `output_config.format`.
    #[serde(default)]
    pub output_format: Option<Value>,
    /// Remote MCP servers Anthropic would call itself: refused, no Dify app can.
    #[serde(default)]
    pub mcp_servers: Option<Vec<IgnoredAny>>,
    /// Message threads (the server keeping the conversation between turns): refused with
    /// the code Anthropic's SDKs take as "send the full history instead".
    #[serde(default)]
    pub thread: Option<IgnoredAny>,
    // Accepted and ignored: the Dify app's own model settings decide these ([`MessagesRequest::app_owned`]).
    #[serde(default)]
    temperature: Option<IgnoredAny>,
    #[serde(default)]
    top_k: Option<IgnoredAny>,
    #[serde(default)]
    top_p: Option<IgnoredAny>,
    #[serde(default)]
    stop_sequences: Option<IgnoredAny>,
    #[serde(default)]
    service_tier: Option<IgnoredAny>,
    #[serde(default)]
    cache_control: Option<IgnoredAny>,
    #[serde(default)]
    container: Option<IgnoredAny>,
    #[serde(default)]
    inference_geo: Option<IgnoredAny>,
    #[serde(default)]
    speed: Option<IgnoredAny>,
}

impl MessagesRequest {
    /// Messages API fields a Dify app decides for itself that the request set: accepted, so
    /// that clients that set them work, and logged at debug level.
    fn app_owned(&self) -> Vec<&'static str> {
        let effort = self.output_config.as_ref().is_some_and(|c| c.effort.is_some());
        let fields: [(&'static str, bool); 11] = [
            ("max_tokens", true),
            ("temperature", self.temperature.is_some()),
            ("top_k", self.top_k.is_some()),
            ("top_p", self.top_p.is_some()),
            ("stop_sequences", self.stop_sequences.is_some()),
            ("service_tier", self.service_tier.is_some()),
            ("cache_control", self.cache_control.is_some()),
            ("container", self.container.is_some()),
            ("inference_geo", self.inference_geo.is_some()),
            ("speed", self.speed.is_some()),
            ("output_config.effort", effort),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OutputConfig {
    #[serde(default)]
    pub effort: Option<IgnoredAny>,
    #[serde(default)]
    pub format: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
    /// Not in Anthropic's API reference, but in its SDKs' types.
    System,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageParam {
    pub role: MessageRole,
    pub content: Value,
}

/// What the encoder needs to know of the request.
#[derive(Debug, Clone)]
pub struct MessagesOptions {
    pub model: String,
    /// Reasoning is shown as `thinking` blocks (unless the request said `thinking: disabled`).
    pub thinking: bool,
}

/// Parses a request body into the neutral turn and the options its answer is written with.
pub fn parse(body: &[u8]) -> Result<(Turn, MessagesOptions), ApiError> {
    let request: MessagesRequest = parse_json(body)?;
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid_request("`model` must not be empty").param("model"));
    }
    if request.max_tokens == 0 {
        return Err(ApiError::invalid_request("`max_tokens` must be at least 1").param("max_tokens"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid_request("`messages` must contain at least one message").param("messages"));
    }
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        let parts = text_only(system, "system")?;
        if !parts.is_empty() {
            messages.push(Message::new(Role::System, parts, "system"));
        }
    }
    for (index, message) in request.messages.iter().enumerate() {
        messages_of(message, index, &mut messages)?;
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(ApiError::invalid_request("`messages` must contain at least one user message").param("messages"));
    }
    if let Some(last) = request.messages.iter().rposition(|m| m.role != MessageRole::System)
        && request.messages[last].role == MessageRole::Assistant
    {
        return Err(ApiError::invalid_request(format!(
            "`messages[{last}]`: the last message is the assistant's (a prefill), and a Dify app cannot continue \
             an answer it did not write; end with a user message"
        ))
        .param(format!("messages[{last}]")));
    }
    if request.mcp_servers.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_request(
            "`mcp_servers` is not available: a Dify app cannot call remote MCP servers for you (give the Dify app the tools, or pass them as `tools`)",
        )
        .param("mcp_servers"));
    }
    if request.thread.is_some() {
        return Err(ApiError::invalid_request(
            "`thread` is not available: opendify does not keep message threads; send the full `messages` (the Dify \
             conversation is continued from the re-sent history all the same)",
        )
        .param("thread")
        .code("thread_unsupported_request"));
    }
    let ignored = request.app_owned();
    tracing::debug!("ignored (the Dify app's own settings decide): {}", ignored.join(", "));
    let thinking = thinking_shown(request.thinking.as_ref())?;
    let tools = tools_of(&request)?;
    let (format, param) = match (request.output_config.as_ref().and_then(|c| c.format.as_ref()), &request.output_format)
    {
        (Some(format), _) => (Some(format), "output_config.format"),
        (None, format) => (format.as_ref(), "output_format"),
    };
    let output = super::chat::output_format(format, param)?;
    let options = MessagesOptions { model: request.model.clone(), thinking };
    let turn = Turn {
        model: request.model,
        messages,
        stream: request.stream.unwrap_or(false),
        user: request.metadata.and_then(|m| m.user_id).filter(|u| !u.trim().is_empty()),
        conversation_id: None,
        previous_response_id: None,
        inputs: None,
        tools,
        output,
    };
    Ok((turn, options))
}

/// `thinking`: `enabled` and `adaptive` (and no `thinking` at all) show the app's reasoning
/// as thinking blocks; `disabled` leaves it out.
fn thinking_shown(thinking: Option<&Value>) -> Result<bool, ApiError> {
    let Some(thinking) = thinking.filter(|t| !t.is_null()) else { return Ok(true) };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled" | "adaptive") => Ok(true),
        Some("disabled") => Ok(false),
        _ => Err(ApiError::invalid_request("`thinking.type` must be \"enabled\", \"adaptive\" or \"disabled\"")
            .param("thinking.type")),
    }
}

/// `tools` (custom tools only: server tools run at Anthropic), `tool_choice` and its
/// `disable_parallel_tool_use`.
fn tools_of(request: &MessagesRequest) -> Result<Tools, ApiError> {
    let mut specs = Vec::new();
    for (i, tool) in request.tools.iter().flatten().enumerate() {
        let param = format!("tools[{i}]");
        match tool.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "custom" => {}
            Some(other) => {
                return Err(ApiError::invalid_request(format!(
                    "`{param}.type` is {other}: server tools (web search, code execution, bash, text editor, computer \
                     use…) run at Anthropic and cannot be emulated; only custom tools (`name`, `description`, \
                     `input_schema`) can"
                ))
                .param(format!("{param}.type")));
            }
        }
        specs.push(tool_spec(Some(tool), "input_schema", &param)?);
    }
    let (choice, parallel) = tool_choice(request.tool_choice.as_ref())?;
    tools(specs, choice, parallel, "tool_choice.name")
}

/// `{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}`.
fn tool_choice(value: Option<&Value>) -> Result<(ToolChoice, bool), ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok((ToolChoice::Auto, true)) };
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid_request(format!(
            "`tool_choice` must be an object with a `type`, got {}",
            kind_of(value)
        ))
        .param("tool_choice"));
    };
    let parallel = !object.get("disable_parallel_tool_use").and_then(Value::as_bool).unwrap_or(false);
    let choice = match object.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => match object.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty()) {
            Some(name) => ToolChoice::Named(name.to_string()),
            None => {
                return Err(ApiError::invalid_request("`tool_choice.name` is required with `\"type\": \"tool\"`")
                    .param("tool_choice.name"));
            }
        },
        _ => {
            return Err(ApiError::invalid_request(
                "`tool_choice.type` must be \"auto\", \"any\", \"tool\" or \"none\"",
            )
            .param("tool_choice.type"));
        }
    };
    Ok((choice, parallel))
}

/// One content block, as the turn takes it.
enum Block {
    Part(Part),
    ToolUse(ToolCall),
    ToolResult {
        id: String,
        parts: Vec<Part>,
        is_error: bool,
    },
    /// Thinking the client echoes back: Dify keeps the app's own reasoning.
    Skipped,
}

/// The blocks of a message's `content` (a string is one text block).
fn blocks(content: &Value, param: &str) -> Result<Vec<(String, Block)>, ApiError> {
    match content {
        Value::String(text) => Ok(vec![(param.to_string(), Block::Part(Part::Text(text.clone())))]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let param = format!("{param}[{i}]");
                block(item, &param).map(|b| (param, b))
            })
            .collect(),
        other => Err(ApiError::invalid_request(format!(
            "`{param}` must be a string or an array of content blocks, got {}",
            kind_of(other)
        ))
        .param(param.to_string())),
    }
}

/// A user or assistant message: one message, or for a user message with `tool_result`
/// blocks, one tool message per result and then a user message with the rest.
fn messages_of(message: &MessageParam, index: usize, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let origin = format!("messages[{index}]");
    let param = format!("{origin}.content");
    if message.role == MessageRole::System {
        out.push(Message::new(Role::System, text_only(&message.content, &param)?, origin));
        return Ok(());
    }
    let role = if message.role == MessageRole::User { Role::User } else { Role::Assistant };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut results = 0;
    for (at, block) in blocks(&message.content, &param)? {
        match (block, role) {
            (Block::Part(part), _) => parts.push(part),
            (Block::ToolUse(call), Role::Assistant) => calls.push(call),
            (Block::ToolResult { id, mut parts, is_error }, Role::User) => {
                if is_error {
                    parts.insert(0, Part::Text("Error:".into()));
                }
                let mut result = Message::new(Role::Tool, parts, at);
                result.tool_call_id = Some(id);
                out.push(result);
                results += 1;
            }
            (Block::ToolUse(_), _) => {
                return Err(ApiError::invalid_request(format!(
                    "`{at}`: a `tool_use` block belongs in an assistant message"
                ))
                .param(at));
            }
            (Block::ToolResult { .. }, _) => {
                return Err(ApiError::invalid_request(format!(
                    "`{at}`: a `tool_result` block belongs in a user message"
                ))
                .param(at));
            }
            (Block::Skipped, _) => {}
        }
    }
    // The results are the message; any other content follows them as the user's.
    if results > 0 && parts.is_empty() {
        return Ok(());
    }
    let mut parsed = Message::new(role, parts, origin);
    parsed.tool_calls = calls;
    out.push(parsed);
    Ok(())
}

/// `system`, a system message, or content that may hold text only.
fn text_only(content: &Value, param: &str) -> Result<Vec<Part>, ApiError> {
    let mut parts = Vec::new();
    for (at, block) in blocks(content, param)? {
        match block {
            Block::Part(part @ Part::Text(_)) => parts.push(part),
            Block::Skipped => {}
            _ => {
                return Err(ApiError::invalid_request(format!("`{at}` must be a text block")).param(at));
            }
        }
    }
    Ok(parts)
}

fn block(item: &Value, param: &str) -> Result<Block, ApiError> {
    let bad = |msg: String| ApiError::invalid_request(msg).param(param.to_string());
    let Some(obj) = item.as_object() else {
        return Err(bad(format!("`{param}` must be an object with a `type`, got {}", kind_of(item))));
    };
    let string = |name: &str| -> Result<String, ApiError> {
        obj.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            ApiError::invalid_request(format!("`{param}.{name}` must be a string")).param(format!("{param}.{name}"))
        })
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(Block::Part(Part::Text(string("text")?))),
        "image" => image(obj.get("source"), &format!("{param}.source")).map(Block::Part),
        "document" => document(obj, param).map(Block::Part),
        "search_result" => {
            let texts = text_only(obj.get("content").unwrap_or(&Value::Null), &format!("{param}.content"))?;
            let texts: Vec<String> =
                texts.into_iter().filter_map(|p| if let Part::Text(t) = p { Some(t) } else { None }).collect();
            let title = obj.get("title").and_then(Value::as_str).unwrap_or("");
            let source = obj.get("source").and_then(Value::as_str).unwrap_or("");
            Ok(Block::Part(Part::Text(format!("{title} ({source})\n{}", texts.join("\n")))))
        }
        "tool_use" => {
            let input = match obj.get("input") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(input @ Value::Object(_)) => input.to_string(),
                Some(other) => {
                    return Err(ApiError::invalid_request(format!(
                        "`{param}.input` must be an object, got {}",
                        kind_of(other)
                    ))
                    .param(format!("{param}.input")));
                }
            };
            Ok(Block::ToolUse(ToolCall { id: string("id")?, name: string("name")?, arguments: input }))
        }
        "tool_result" => {
            let id = string("tool_use_id")?;
            let content_param = format!("{param}.content");
            let mut parts = Vec::new();
            if let Some(content) = obj.get("content").filter(|c| !c.is_null()) {
                for (at, block) in blocks(content, &content_param)? {
                    match block {
                        Block::Part(part) => parts.push(part),
                        Block::Skipped => {}
                        _ => {
                            return Err(ApiError::invalid_request(format!(
                                "`{at}` must be a text, image, document or search_result block"
                            ))
                            .param(at));
                        }
                    }
                }
            }
            let is_error = obj.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            Ok(Block::ToolResult { id, parts, is_error })
        }
        "thinking" | "redacted_thinking" => Ok(Block::Skipped),
        "" => Err(bad(format!("`{param}` has no `type`"))),
        other => Err(ApiError::invalid_request(format!(
            "`{param}.type` {other:?} is not supported; supported: text, image, document, search_result, tool_use, \
             tool_result, thinking, redacted_thinking"
        ))
        .param(format!("{param}.type"))),
    }
}

/// An image's `source`: base64 data (as a `data:` URL) or an http(s) URL.
fn image(source: Option<&Value>, param: &str) -> Result<Part, ApiError> {
    let (kind, field) = source_of(source, param)?;
    match kind {
        "base64" => {
            let (media_type, data) = (field("media_type")?, field("data")?);
            Ok(Part::Image { url: format!("data:{media_type};base64,{data}") })
        }
        "url" => Ok(Part::Image { url: url(field("url")?, param)? }),
        other => Err(unavailable_source(other, param, "base64 or url")),
    }
}

/// A document's `source`: a base64 PDF, a URL, plain text, or content blocks.
fn document(block: &serde_json::Map<String, Value>, param: &str) -> Result<Part, ApiError> {
    let source_param = format!("{param}.source");
    let (kind, field) = source_of(block.get("source"), &source_param)?;
    let title = block.get("title").and_then(Value::as_str).filter(|t| !t.trim().is_empty());
    match kind {
        "base64" => {
            let (media_type, data) = (field("media_type")?, field("data")?);
            // Dify reads a file's type from its name: the title gets the extension.
            let extension = extension_for(&media_type);
            let filename = title.map(|t| {
                if t.to_ascii_lowercase().ends_with(&format!(".{extension}")) {
                    t.to_string()
                } else {
                    format!("{t}.{extension}")
                }
            });
            let data = format!("data:{media_type};base64,{data}");
            Ok(Part::File { data: Some(data), filename, file_id: None, url: None })
        }
        "url" => {
            let url = url(field("url")?, &source_param)?;
            Ok(Part::File { data: None, filename: title.map(str::to_string), file_id: None, url: Some(url) })
        }
        "text" => {
            let text = field("data")?;
            Ok(Part::Text(match title {
                Some(title) => format!("{title}\n\n{text}"),
                None => text,
            }))
        }
        "content" => {
            let content = block.get("source").and_then(|s| s.get("content")).unwrap_or(&Value::Null);
            let texts = text_only(content, &format!("{source_param}.content"))?;
            let mut text = title.map(|t| format!("{t}\n\n")).unwrap_or_default();
            for part in texts {
                if let Part::Text(t) = part {
                    text.push_str(&t);
                    text.push('\n');
                }
            }
            Ok(Part::Text(text.trim_end().to_string()))
        }
        other => Err(unavailable_source(other, &source_param, "base64, url, text or content")),
    }
}

type SourceField<'a> = Box<dyn Fn(&str) -> Result<String, ApiError> + 'a>;

/// A `source` object's `type`, and a reader of its string fields that names them in errors.
fn source_of<'a>(source: Option<&'a Value>, param: &'a str) -> Result<(&'a str, SourceField<'a>), ApiError> {
    let Some(source) = source.and_then(Value::as_object) else {
        return Err(ApiError::invalid_request(format!("`{param}` must be an object with a `type`")).param(param));
    };
    let kind = source.get("type").and_then(Value::as_str).unwrap_or("");
    let field = move |name: &str| -> Result<String, ApiError> {
        source.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            ApiError::invalid_request(format!("`{param}.{name}` must be a string")).param(format!("{param}.{name}"))
        })
    };
    Ok((kind, Box::new(field)))
}

fn url(url: String, param: &str) -> Result<String, ApiError> {
    if is_fetchable(&url) && !url.to_ascii_lowercase().starts_with("data:") {
        Ok(url)
    } else {
        Err(ApiError::invalid_request(format!("`{param}.url` must be an http(s) URL")).param(format!("{param}.url")))
    }
}

fn unavailable_source(kind: &str, param: &str, supported: &str) -> ApiError {
    let why = if kind == "file" {
        "files uploaded to Anthropic's Files API are not available to a Dify app".to_string()
    } else {
        format!("{kind:?} is not a source type opendify knows")
    };
    ApiError::invalid_request(format!("`{param}.type`: {why}; send the content as {supported}"))
        .param(format!("{param}.type"))
}

/// Anthropic's `stop_reason` for how the answer ended.
pub fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// A call's id as Anthropic's clients know ids: `toolu_…` (the core's are `call_…`).
fn tool_use_id(call: &ToolCall) -> String {
    match call.id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => call.id.clone(),
    }
}

/// A call's arguments as the `input` object.
fn tool_input(call: &ToolCall) -> Value {
    serde_json::from_str::<Value>(&call.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}))
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock<'a> {
    Thinking { thinking: &'a str, signature: &'a str },
    Text { text: &'a str },
    ToolUse { id: String, name: &'a str, input: Value },
}

#[derive(Debug, Default, Serialize)]
struct UsageBody {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl UsageBody {
    /// Dify's counts; zeros when it reported none (workflows report only a total).
    fn of(usage: Option<&Usage>) -> Self {
        let (input_tokens, output_tokens) = usage.map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
        UsageBody { input_tokens, output_tokens, ..UsageBody::default() }
    }
}

#[derive(Debug, Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<ContentBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: UsageBody,
}

/// The `message` object for a collected answer: thinking, then text, then tool calls.
pub fn message(options: &MessagesOptions, answer: &Collected, reason: FinishReason, usage: Option<&Usage>) -> Value {
    let id = super::random_id("msg_");
    let text = answer.answer();
    let mut content = Vec::new();
    if options.thinking && !answer.reasoning.is_empty() {
        content.push(ContentBlock::Thinking { thinking: &answer.reasoning, signature: "" });
    }
    // An answer that is only calls has no text block; any other answer has one, even empty.
    if !text.is_empty() || answer.tool_calls.is_empty() {
        content.push(ContentBlock::Text { text: &text });
    }
    for call in &answer.tool_calls {
        content.push(ContentBlock::ToolUse { id: tool_use_id(call), name: &call.name, input: tool_input(call) });
    }
    let body = MessageBody {
        id: &id,
        kind: "message",
        role: "assistant",
        model: &options.model,
        content,
        stop_reason: Some(stop_reason(reason)),
        stop_sequence: None,
        usage: UsageBody::of(usage),
    };
    serde_json::to_value(&body).unwrap_or(Value::Null)
}

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Debug, Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct DeltaUsage {
    input_tokens: u64,
    output_tokens: u64,
}

/// Every streamed event; the SSE `event:` name is its `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart { message: MessageBody<'a> },
    ContentBlockStart { index: usize, content_block: ContentBlock<'a> },
    ContentBlockDelta { index: usize, delta: Delta<'a> },
    ContentBlockStop { index: usize },
    MessageDelta { delta: StopDelta, usage: DeltaUsage },
    MessageStop,
    Ping,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Ping => "ping",
        }
    }
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

/// Writes the named SSE events of one streamed message: blocks open as their kind of
/// content begins and close when another begins, each at the next index.
pub struct MessagesEncoder {
    id: String,
    model: String,
    thinking: bool,
    out: BytesMut,
    open: Option<(Open, usize)>,
    blocks: usize,
    sent_text: bool,
}

impl MessagesEncoder {
    pub fn new(options: &MessagesOptions) -> Self {
        MessagesEncoder {
            id: super::random_id("msg_"),
            model: options.model.clone(),
            thinking: options.thinking,
            out: BytesMut::new(),
            open: None,
            blocks: 0,
            sent_text: false,
        }
    }

    fn event(&mut self, event: &Event<'_>) {
        self.out.put_slice(b"event: ");
        self.out.put_slice(event.name().as_bytes());
        self.out.put_slice(b"\ndata: ");
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.out).writer(), event);
        self.out.put_slice(b"\n\n");
    }

    /// Opens a block of `kind` unless one is open; returns its index.
    fn open(&mut self, kind: Open) -> usize {
        if let Some((open, index)) = self.open {
            if open == kind {
                return index;
            }
            self.close();
        }
        let index = self.next_index();
        let block = match kind {
            Open::Text => ContentBlock::Text { text: "" },
            Open::Thinking => ContentBlock::Thinking { thinking: "", signature: "" },
        };
        self.event(&Event::ContentBlockStart { index, content_block: block });
        self.open = Some((kind, index));
        index
    }

    fn next_index(&mut self) -> usize {
        self.blocks += 1;
        self.blocks - 1
    }

    /// Closes the open block; a thinking block gets its (empty) signature first.
    fn close(&mut self) {
        let Some((kind, index)) = self.open.take() else { return };
        if kind == Open::Thinking {
            self.event(&Event::ContentBlockDelta { index, delta: Delta::Signature { signature: "" } });
        }
        self.event(&Event::ContentBlockStop { index });
    }
}

impl Sink for MessagesEncoder {
    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.sent_text = true;
        let index = self.open(Open::Text);
        self.event(&Event::ContentBlockDelta { index, delta: Delta::Text { text } });
    }

    fn reasoning(&mut self, text: &str) {
        if text.is_empty() || !self.thinking {
            return;
        }
        let index = self.open(Open::Thinking);
        self.event(&Event::ContentBlockDelta { index, delta: Delta::Thinking { thinking: text } });
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
        self.close();
        let index = self.next_index();
        let block = ContentBlock::ToolUse { id: tool_use_id(call), name: &call.name, input: serde_json::json!({}) };
        self.event(&Event::ContentBlockStart { index, content_block: block });
        let delta = Delta::InputJson { partial_json: &call.arguments };
        self.event(&Event::ContentBlockDelta { index, delta });
        self.event(&Event::ContentBlockStop { index });
    }

    fn keep_alive(&mut self) {
        self.event(&Event::Ping);
    }

    /// The open block's end, `message_delta` with the stop reason and usage, `message_stop`.
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        self.close();
        let usage = UsageBody::of(usage);
        self.event(&Event::MessageDelta {
            delta: StopDelta { stop_reason: stop_reason(reason), stop_sequence: None },
            usage: DeltaUsage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens },
        });
        self.event(&Event::MessageStop);
    }

    /// A failure after the stream began: Anthropic's `error` event, and nothing after it.
    fn fail(&mut self, error: &ApiError) {
        self.out.put_slice(b"event: error\ndata: ");
        self.out.put_slice(anthropic::error_json(error).as_bytes());
        self.out.put_slice(b"\n\n");
    }
}

impl StreamEncoder for MessagesEncoder {
    fn start(&mut self) {
        let (id, model) = (self.id.clone(), self.model.clone());
        let message = MessageBody {
            id: &id,
            kind: "message",
            role: "assistant",
            model: &model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: UsageBody::default(),
        };
        self.event(&Event::MessageStart { message });
    }

    fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::OutputFormat;

    fn parsed(body: Value) -> (Turn, MessagesOptions) {
        parse(body.to_string().as_bytes()).expect("valid")
    }

    fn err(body: Value) -> ApiError {
        parse(body.to_string().as_bytes()).expect_err("should fail")
    }

    fn base(messages: Value) -> Value {
        serde_json::json!({"model": "m", "max_tokens": 64, "messages": messages})
    }

    /// The events of an encoder's output: (`event:` name, JSON data).
    fn events(encoder: &mut MessagesEncoder) -> Vec<(String, Value)> {
        let bytes = encoder.take();
        String::from_utf8_lossy(&bytes)
            .split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|frame| {
                let (event, data) = frame.split_once('\n').expect("two lines");
                let name = event.strip_prefix("event: ").expect("event line").to_string();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("json");
                (name, data)
            })
            .collect()
    }

    #[test]
    fn system_blocks_tool_rounds_and_metadata_become_the_turn() {
        let (turn, options) = parsed(serde_json::json!({
            "model": "m", "max_tokens": 1024, "system": [{"type": "text", "text": "Be terse."}],
            "metadata": {"user_id": "u-42"}, "temperature": 0.3, "stop_sequences": ["x"],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "document", "title": "Report", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": [{"type": "text", "text": "timeout"}]},
                    {"type": "text", "text": "and tomorrow?"}]}
            ]
        }));
        assert!(options.thinking);
        let roles: Vec<Role> = turn.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Tool, Role::User]);
        assert_eq!(turn.messages[0].joined_text(), "Be terse.");
        assert_eq!(turn.messages[1].content[1], Part::Image { url: "data:image/png;base64,iVBO".into() });
        assert_eq!(
            turn.messages[1].content[2],
            Part::File {
                data: Some("data:application/pdf;base64,JVBE".into()),
                filename: Some("Report.pdf".into()),
                file_id: None,
                url: None
            }
        );
        assert_eq!(turn.messages[2].content, []);
        assert_eq!(turn.messages[2].tool_calls[0].arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(turn.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(turn.messages[4].joined_text(), "Error:\ntimeout");
        assert_eq!(turn.messages[4].origin, "messages[2].content[1]");
        assert_eq!(turn.user.as_deref(), Some("u-42"));
        assert_eq!(turn.tools.choice, ToolChoice::Required);
        assert!(!turn.tools.parallel);
        // The results and the note after them are the new input.
        assert_eq!(turn.input_start(), 3);
        assert_eq!(turn.input().len(), 3);
    }

    #[test]
    fn rejections_name_the_field() {
        let user = serde_json::json!([{"role": "user", "content": "hi"}]);
        let e = err(serde_json::json!({"model": "m", "messages": user}));
        assert_eq!((e.param.as_deref(), e.status.as_u16()), (Some("max_tokens"), 400));
        assert!(e.message.contains("max_tokens"), "{}", e.message);
        let mut body = base(user.clone());
        body["tools"] = serde_json::json!([{"type": "web_search_20250305", "name": "web_search"}]);
        assert_eq!(err(body).param.as_deref(), Some("tools[0].type"));
        let mut body = base(user.clone());
        body["tool_choice"] = serde_json::json!({"type": "tool", "name": "nope"});
        assert_eq!(err(body).param.as_deref(), Some("tool_choice.name"));
        let mut body = base(user.clone());
        body["tool_choice"] = serde_json::json!({"type": "sometimes"});
        assert_eq!(err(body).param.as_deref(), Some("tool_choice.type"));
        let e = err(base(serde_json::json!([{"role": "user", "content": [{"type": "video"}]}])));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = err(base(
            serde_json::json!([{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
        ));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].source.type"));
        assert!(e.message.contains("Files API"), "{}", e.message);
        let e = err(base(
            serde_json::json!([{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]),
        ));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].source.url"));
        let e = err(base(serde_json::json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "{"}])));
        assert_eq!(e.param.as_deref(), Some("messages[1]"), "a prefill is refused: {}", e.message);
        let e = err(base(
            serde_json::json!([{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}, {"role": "user", "content": "a"}]),
        ));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = err(base(serde_json::json!([{"role": "wizard", "content": "a"}])));
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let mut body = base(user.clone());
        body["output_config"] = serde_json::json!({"format": {"type": "json_schema", "schema": 3}});
        assert_eq!(err(body).param.as_deref(), Some("output_config.format.schema"));
        let mut body = base(user.clone());
        body["thread"] = serde_json::json!({"type": "create"});
        let e = err(body);
        assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some("thread"), Some("thread_unsupported_request")));
        assert!(super::anthropic::error_json(&e).contains(r#""details":{"error_code":"thread_unsupported_request"}"#));
        let mut body = base(user);
        body["mcp_servers"] = serde_json::json!([{"type": "url", "url": "https://mcp.example", "name": "x"}]);
        assert_eq!(err(body).param.as_deref(), Some("mcp_servers"));
    }

    #[test]
    fn structured_output_and_thinking_are_read() {
        let mut body = base(serde_json::json!([{"role": "user", "content": "Oslo"}]));
        body["output_config"] =
            serde_json::json!({"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}});
        body["thinking"] = serde_json::json!({"type": "disabled"});
        let (turn, options) = parsed(body);
        assert!(matches!(turn.output, OutputFormat::JsonSchema { .. }), "{:?}", turn.output);
        assert!(!options.thinking);
    }

    #[test]
    fn a_stream_opens_and_closes_blocks_in_index_order() {
        let options = MessagesOptions { model: "m".into(), thinking: true };
        let mut w = MessagesEncoder::new(&options);
        w.start();
        w.reasoning("Let me");
        w.reasoning(" think.");
        w.keep_alive();
        w.text("Hé\"");
        w.text("llo");
        let call =
            ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: "{\"city\":\"Oslo\"}".into() };
        w.tool_call(&call);
        let usage = Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, price: None };
        w.finish(FinishReason::ToolCalls, Some(&usage));
        let events = events(&mut w);
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str(), "the event name is the JSON type");
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let message = &events[0].1["message"];
        assert_eq!(message["content"], serde_json::json!([]));
        assert_eq!(message["usage"]["output_tokens"], 0);
        assert_eq!(
            events[1].1["content_block"],
            serde_json::json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(events[5].1["delta"], serde_json::json!({"type": "signature_delta", "signature": ""}));
        assert_eq!(events[7].1["index"], 1);
        assert_eq!(events[8].1["delta"], serde_json::json!({"type": "text_delta", "text": "Hé\""}));
        assert_eq!(
            events[11].1["content_block"],
            serde_json::json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}})
        );
        assert_eq!(events[12].1["delta"]["partial_json"], "{\"city\":\"Oslo\"}");
        assert_eq!(events[13].1["index"], 2);
        assert_eq!(events[14].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[14].1["usage"], serde_json::json!({"input_tokens": 7, "output_tokens": 3}));
    }

    #[test]
    fn a_failure_is_an_error_event_and_the_end() {
        let mut w = MessagesEncoder::new(&MessagesOptions { model: "m".into(), thinking: false });
        w.start();
        w.reasoning("hidden");
        w.text("partial");
        w.fail(&ApiError::server(axum::http::StatusCode::BAD_GATEWAY, "Dify failed"));
        let events = events(&mut w);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "content_block_start", "content_block_delta", "error"]);
        assert_eq!(
            events[3].1,
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": "Dify failed"}})
        );
    }

    #[test]
    fn a_collected_message_has_thinking_text_and_tool_use_blocks() {
        let options = MessagesOptions { model: "m".into(), thinking: true };
        let mut answer = Collected::default();
        answer.content = "Checking.".into();
        answer.reasoning = "hm".into();
        answer.tool_calls = vec![ToolCall { id: "call_9".into(), name: "f".into(), arguments: "{\"a\":1}".into() }];
        let body = message(&options, &answer, FinishReason::ToolCalls, None);
        assert!(body["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(
            body["content"],
            serde_json::json!([
                {"type": "thinking", "thinking": "hm", "signature": ""},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}
            ])
        );
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(body["stop_sequence"], Value::Null);
        assert_eq!(
            body["usage"],
            serde_json::json!({"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        );
        let refused = message(&options, &Collected::default(), FinishReason::ContentFilter, None);
        assert_eq!(refused["content"], serde_json::json!([{"type": "text", "text": ""}]));
        assert_eq!(refused["stop_reason"], "refusal");
    }
}
