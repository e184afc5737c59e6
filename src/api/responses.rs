//! OpenAI Responses API (`POST /v1/responses`): `instructions` and `input` (a string, or
//! message, `function_call` and `function_call_output` items) become a [`Turn`]; the neutral
//! events are written as the documented typed events, each with its `sequence_number`; a
//! collected answer becomes the same `response` object `response.completed` carries (one
//! encoder builds both, so they cannot drift apart). `previous_response_id` continues a Dify
//! conversation: the server keeps each response (see `server::responses`).

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat::{function_spec, is_fetchable, output_format, tool_choice};
use super::{parse_json, random_id};
use crate::bridge::{
    ApiError, Collected, Facts, FinishReason, Message, OutputFormat, OwnedFacts, Part, Role, Sink, StreamEncoder,
    ToolCall, ToolChoice, Tools, Turn, Usage, replacement,
};
use crate::json_text::kind_of;

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Not an OpenAI conversation object: the id of a Dify conversation to continue.
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<Map<String, Value>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Not OpenAI: values for the Dify app's input form, passed through.
    #[serde(default)]
    pub inputs: Option<Map<String, Value>>,
    // Refused when they ask for what opendify cannot give (see [`refuse_unavailable`]).
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    prompt: Option<IgnoredAny>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    include: Option<Vec<String>>,
    // Accepted and ignored: the Dify app's own model settings decide these.
    #[serde(default)]
    temperature: Option<IgnoredAny>,
    #[serde(default)]
    top_p: Option<IgnoredAny>,
    #[serde(default)]
    max_output_tokens: Option<IgnoredAny>,
    #[serde(default)]
    max_tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    reasoning: Option<IgnoredAny>,
    #[serde(default)]
    truncation: Option<IgnoredAny>,
    #[serde(default)]
    service_tier: Option<IgnoredAny>,
    #[serde(default)]
    prompt_cache_key: Option<IgnoredAny>,
    #[serde(default)]
    prompt_cache_retention: Option<IgnoredAny>,
    #[serde(default)]
    stream_options: Option<IgnoredAny>,
    #[serde(default)]
    context_management: Option<IgnoredAny>,
    #[serde(default)]
    moderation: Option<IgnoredAny>,
}

impl ResponsesRequest {
    /// Fields the Dify app decides for itself that the request set: accepted, and logged at
    /// debug level so that nobody wonders why they made no difference.
    fn app_owned(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 12] = [
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("max_output_tokens", self.max_output_tokens.is_some()),
            ("max_tool_calls", self.max_tool_calls.is_some()),
            ("reasoning", self.reasoning.is_some()),
            ("truncation", self.truncation.is_some()),
            ("service_tier", self.service_tier.is_some()),
            ("prompt_cache_key", self.prompt_cache_key.is_some()),
            ("prompt_cache_retention", self.prompt_cache_retention.is_some()),
            ("stream_options", self.stream_options.is_some()),
            ("context_management", self.context_management.is_some()),
            ("moderation", self.moderation.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }
}

/// What a response object repeats of its request, and how it is kept.
#[derive(Debug, Clone)]
pub struct ResponseOptions {
    pub model: String,
    /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}` (default).
    pub store: bool,
    /// A `dify` object in the response (DIFY_METADATA).
    pub metadata: bool,
    /// The request's own settings, echoed in every response object (`instructions`,
    /// `tools`, `tool_choice`, `text`, `metadata`…).
    echo: Map<String, Value>,
}

/// Parses a request body into the neutral turn and the options its answer is written with.
pub fn parse(body: &[u8]) -> Result<(Turn, ResponseOptions), ApiError> {
    let request: ResponsesRequest = parse_json(body)?;
    let model = request.model.clone().filter(|m| !m.trim().is_empty());
    let Some(model) = model else {
        return Err(ApiError::invalid_request("Missing required field `model`").param("model"));
    };
    refuse_unavailable(&request)?;
    let ignored = request.app_owned();
    if !ignored.is_empty() {
        tracing::debug!("ignored (the Dify app's own settings decide): {}", ignored.join(", "));
    }
    let conversation_id = match &request.conversation {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Object(o)) if o.get("id").is_some_and(Value::is_string) => {
            o.get("id").and_then(Value::as_str).map(str::to_string)
        }
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "`conversation` must be a Dify conversation id (a string or {{\"id\": …}}), got {}",
                kind_of(other)
            ))
            .param("conversation"));
        }
    }
    .filter(|c| !c.trim().is_empty());
    let previous = request.previous_response_id.clone().filter(|p| !p.trim().is_empty());
    if previous.is_some() && conversation_id.is_some() {
        return Err(ApiError::invalid_request(
            "`previous_response_id` and `conversation` cannot be used together: the previous response already names its conversation",
        )
        .param("conversation"));
    }

    let mut messages = Vec::new();
    if let Some(instructions) = request.instructions.as_deref().filter(|i| !i.trim().is_empty()) {
        messages.push(Message::text(Role::System, instructions, "instructions"));
    }
    messages.extend(input_messages(request.input.as_ref())?);
    if !messages.iter().any(|m| matches!(m.role, Role::User | Role::Tool)) {
        return Err(ApiError::invalid_request(
            "`input` must contain a user message or a `function_call_output` (the new input to answer)",
        )
        .param("input"));
    }

    let tools = tools_of(&request)?;
    let format = request.text.as_ref().and_then(|t| t.get("format"));
    let output = output_format(format, "text.format")?;
    let echo = echo_of(&request, &tools, &output);
    let turn = Turn {
        model: model.clone(),
        messages,
        stream: request.stream.unwrap_or(false),
        user: request.user.or(request.safety_identifier),
        conversation_id,
        previous_response_id: previous,
        inputs: request.inputs,
        tools,
        output,
    };
    Ok((turn, ResponseOptions { model, store: request.store.unwrap_or(true), metadata: false, echo }))
}

/// What a client may ask for that opendify cannot give: a 400 naming the field.
fn refuse_unavailable(request: &ResponsesRequest) -> Result<(), ApiError> {
    let unsupported = |param: &str, why: &str| {
        Err(ApiError::invalid_request(format!("`{param}` is not available: {why}"))
            .param(param.to_string())
            .code("unsupported_parameter"))
    };
    if request.background == Some(true) {
        return unsupported(
            "background",
            "opendify answers while the request is open (stream with `stream: true` for long answers)",
        );
    }
    if request.prompt.is_some() {
        return unsupported("prompt", "stored prompts live in OpenAI; the Dify app has its own prompt");
    }
    let logprobs = request.include.iter().flatten().any(|i| i == "message.output_text.logprobs");
    if request.top_logprobs.is_some_and(|n| n > 0) || logprobs {
        let param = if logprobs { "include" } else { "top_logprobs" };
        return unsupported(param, "Dify does not report token log probabilities");
    }
    Ok(())
}

/// `tools` (function tools only: the Dify app's own tools are configured in Dify),
/// `tool_choice` and `parallel_tool_calls`.
fn tools_of(request: &ResponsesRequest) -> Result<Tools, ApiError> {
    let mut specs = Vec::new();
    for (i, tool) in request.tools.iter().flatten().enumerate() {
        let param = format!("tools[{i}]");
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => specs.push(function_spec(Some(tool), &param)?),
            other => {
                return Err(ApiError::invalid_request(format!(
                    "`{param}.type` must be \"function\" (got {}): only function tools can be emulated; \
                     a Dify app's own tools (web search, knowledge bases) are set up in the Dify app",
                    other.map_or("nothing".to_string(), |t| format!("{t:?}"))
                ))
                .param(format!("{param}.type")));
            }
        }
    }
    let (choice, allowed) = tool_choice(request.tool_choice.as_ref(), "tool_choice")?;
    if let Some(allowed) = allowed {
        specs.retain(|s| allowed.contains(&s.name));
    }
    super::tools(specs, choice, request.parallel_tool_calls.unwrap_or(true), "tool_choice")
}

/// The request's settings as every response object repeats them. Settings the Dify app
/// decides (temperature, top_p, max_output_tokens) are `null`: they were not applied.
fn echo_of(request: &ResponsesRequest, tools: &Tools, output: &OutputFormat) -> Map<String, Value> {
    let tool_choice = match &tools.choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(name) => json!({"type": "function", "name": name}),
    };
    let format = match output {
        OutputFormat::Text => json!({"type": "text"}),
        OutputFormat::JsonObject => json!({"type": "json_object"}),
        OutputFormat::JsonSchema { name, schema, strict } => {
            json!({"type": "json_schema", "name": name, "schema": schema, "strict": strict})
        }
    };
    let tools: Vec<Value> = tools
        .specs
        .iter()
        .map(|s| {
            json!({"type": "function", "name": s.name, "description": s.description, "parameters": s.parameters, "strict": false})
        })
        .collect();
    let mut echo = Map::new();
    echo.insert("instructions".into(), request.instructions.clone().map_or(Value::Null, Value::String));
    echo.insert("metadata".into(), Value::Object(request.metadata.clone().unwrap_or_default()));
    echo.insert("parallel_tool_calls".into(), json!(request.parallel_tool_calls.unwrap_or(true)));
    echo.insert("previous_response_id".into(), json!(request.previous_response_id));
    echo.insert("store".into(), json!(request.store.unwrap_or(true)));
    echo.insert("text".into(), json!({"format": format}));
    echo.insert("tool_choice".into(), tool_choice);
    echo.insert("tools".into(), Value::Array(tools));
    echo.insert("user".into(), json!(request.user));
    echo.insert("safety_identifier".into(), json!(request.safety_identifier));
    for name in ["temperature", "top_p", "max_output_tokens", "max_tool_calls"] {
        echo.insert(name.into(), Value::Null);
    }
    echo.insert("reasoning".into(), json!({"effort": null, "summary": null}));
    echo.insert("truncation".into(), json!("disabled"));
    echo.insert("background".into(), json!(false));
    echo.insert("service_tier".into(), json!("default"));
    echo
}

/// `input`: a string (one user message) or a list of items.
fn input_messages(input: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let items = match input {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_request("Missing required field `input`").param("input"));
        }
        Some(Value::String(text)) => return Ok(vec![Message::text(Role::User, text.clone(), "input")]),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "`input` must be a string or a list of items, got {}",
                kind_of(other)
            ))
            .param("input"));
        }
    };
    let mut messages: Vec<Message> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let origin = format!("input[{i}]");
        let bad = |why: String| ApiError::invalid_request(why).param(origin.clone());
        let Some(obj) = item.as_object() else {
            return Err(bad(format!("`{origin}` must be an object, got {}", kind_of(item))));
        };
        let text_field = |name: &str| -> Result<String, ApiError> {
            obj.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                ApiError::invalid_request(format!("`{origin}.{name}` must be a string"))
                    .param(format!("{origin}.{name}"))
            })
        };
        let kind =
            obj.get("type").and_then(Value::as_str).unwrap_or(if obj.contains_key("role") { "message" } else { "" });
        match kind {
            "message" => messages.push(message_item(obj, &origin)?),
            "function_call" => {
                let call = ToolCall {
                    id: text_field("call_id")?,
                    name: text_field("name")?,
                    arguments: obj.get("arguments").and_then(Value::as_str).unwrap_or("{}").to_string(),
                };
                // Calls belong to the assistant turn they follow (its text, its other calls).
                match messages.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => {
                        let mut message = Message::new(Role::Assistant, Vec::new(), origin.clone());
                        message.tool_calls.push(call);
                        messages.push(message);
                    }
                }
            }
            "function_call_output" => {
                let call_id = text_field("call_id")?;
                let content = match obj.get("output") {
                    Some(Value::String(text)) => vec![Part::Text(text.clone())],
                    Some(Value::Array(parts)) => parts_of(parts, &format!("{origin}.output"))?,
                    _ => {
                        return Err(ApiError::invalid_request(format!(
                            "`{origin}.output` must be a string or a list of content parts"
                        ))
                        .param(format!("{origin}.output")));
                    }
                };
                let mut message = Message::new(Role::Tool, content, origin.clone());
                message.tool_call_id = Some(call_id);
                messages.push(message);
            }
            // The model's reasoning in the history: Dify keeps its own.
            "reasoning" => {}
            "item_reference" => {
                return Err(bad(format!(
                    "`{origin}` is an item_reference, which opendify cannot resolve: send the item itself, or continue with `previous_response_id`"
                )));
            }
            "" => return Err(bad(format!("`{origin}` has no `type` (nor a `role`)"))),
            other => {
                return Err(bad(format!(
                    "`{origin}` has unsupported type {other:?}; supported: message, function_call, function_call_output, reasoning"
                )));
            }
        }
    }
    Ok(messages)
}

fn message_item(obj: &Map<String, Value>, origin: &str) -> Result<Message, ApiError> {
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system" | "developer") => Role::System,
        other => {
            return Err(ApiError::invalid_request(format!(
                "`{origin}.role` must be user, assistant, system or developer, got {}",
                other.map_or("nothing".to_string(), |r| format!("{r:?}"))
            ))
            .param(format!("{origin}.role")));
        }
    };
    let param = format!("{origin}.content");
    let content = match obj.get("content") {
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(parts)) => parts_of(parts, &param)?,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "`{param}` must be a string or a list of content parts, got {}",
                kind_of(other)
            ))
            .param(param));
        }
    };
    Ok(Message::new(role, content, origin))
}

fn parts_of(parts: &[Value], param: &str) -> Result<Vec<Part>, ApiError> {
    parts.iter().enumerate().map(|(i, part)| content_part(part, &format!("{param}[{i}]"))).collect()
}

fn content_part(item: &Value, param: &str) -> Result<Part, ApiError> {
    let bad = |msg: String| ApiError::invalid_request(msg).param(param.to_string());
    let Some(obj) = item.as_object() else {
        return Err(bad(format!("`{param}` must be an object with a `type`, got {}", kind_of(item))));
    };
    let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
    let required = |name: &str| text(name).ok_or_else(|| bad(format!("`{param}.{name}` must be a string")));
    match obj.get("type").and_then(Value::as_str).unwrap_or("") {
        "input_text" | "output_text" | "text" => Ok(Part::Text(required("text")?)),
        "refusal" => Ok(Part::Text(required("refusal")?)),
        "input_image" => match (text("image_url"), text("file_id")) {
            (Some(url), _) if is_fetchable(&url) => Ok(Part::Image { url }),
            (Some(_), _) => Err(bad(format!("`{param}.image_url` must be an http(s) URL or a data: URL"))),
            (None, Some(file_id)) => Ok(Part::File { data: None, filename: None, file_id: Some(file_id), url: None }),
            (None, None) => Err(bad(format!("`{param}` needs `image_url` or `file_id`"))),
        },
        "input_file" => {
            let (data, filename, file_id, url) =
                (text("file_data"), text("filename"), text("file_id"), text("file_url"));
            if data.is_none() && file_id.is_none() && url.is_none() {
                return Err(bad(format!("`{param}` needs `file_data`, `file_url` or `file_id`")));
            }
            if let Some(url) = url.as_deref().filter(|u| !is_fetchable(u)) {
                return Err(bad(format!("`{param}.file_url` must be an http(s) URL, got {url:?}")));
            }
            // `file_data` is a data: URL, or (as some clients send it) bare base64.
            let data = data
                .map(|d| if d.starts_with("data:") { d } else { format!("data:application/octet-stream;base64,{d}") });
            Ok(Part::File { data, filename, file_id, url })
        }
        "input_audio" => {
            let Some(audio) = obj.get("input_audio").and_then(Value::as_object) else {
                return Err(bad(format!("`{param}.input_audio` must be an object")));
            };
            let field = |name: &str| audio.get(name).and_then(Value::as_str).map(str::to_string);
            match (field("data"), field("format")) {
                (Some(data), Some(format)) => Ok(Part::Audio { data, format }),
                _ => Err(bad(format!("`{param}.input_audio` needs `data` and `format`"))),
            }
        }
        "" => Err(bad(format!("`{param}` has no `type`"))),
        other => Err(bad(format!(
            "`{param}` has unsupported type {other:?}; supported: input_text, input_image, input_file, input_audio"
        ))),
    }
}

/// One typed event: its type, number, and fields.
#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    fields: T,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct SummaryDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    summary_index: u32,
    delta: &'a str,
}

/// The output item being written: a message or a reasoning summary grows with each delta.
enum Open {
    None,
    Message { id: String, text: String },
    Reasoning { id: String, text: String },
}

/// Writes one response: its events as they happen (`streaming`), and the response object it
/// ends as, which `response.completed` carries, a non-streaming client gets, and the server keeps.
pub struct ResponsesEncoder {
    id: String,
    created_at: u64,
    options: ResponseOptions,
    streaming: bool,
    sequence: u64,
    out: BytesMut,
    /// The finished output items.
    output: Vec<Value>,
    open: Open,
    sent_text: bool,
    /// The response object as it ended.
    last: Option<Value>,
    /// What Dify reported besides the text, for the `dify` object.
    facts: Option<OwnedFacts>,
}

impl ResponsesEncoder {
    pub fn new(id: String, options: ResponseOptions, created_at: u64) -> Self {
        ResponsesEncoder {
            id,
            created_at,
            options,
            streaming: true,
            sequence: 0,
            out: BytesMut::new(),
            output: Vec::new(),
            open: Open::None,
            sent_text: false,
            last: None,
            facts: None,
        }
    }

    /// The response object of a collected answer.
    pub fn collected(
        id: String,
        options: ResponseOptions,
        created_at: u64,
        answer: &Collected,
        reason: FinishReason,
        usage: Option<&Usage>,
    ) -> Value {
        let mut encoder = ResponsesEncoder { streaming: false, ..ResponsesEncoder::new(id, options, created_at) };
        encoder.reasoning(&answer.reasoning);
        encoder.text(&answer.answer());
        for call in &answer.tool_calls {
            encoder.tool_call(call);
        }
        encoder.facts(&answer.facts.view());
        encoder.finish(reason, usage);
        encoder.last.take().unwrap_or(Value::Null)
    }

    /// The response object as it ended (completed, incomplete or failed), once it has.
    pub fn last(&self) -> Option<&Value> {
        self.last.as_ref()
    }

    fn event<T: Serialize>(&mut self, kind: &str, fields: T) {
        let number = self.sequence;
        self.sequence += 1;
        if !self.streaming {
            return;
        }
        self.out.put_slice(b"event: ");
        self.out.put_slice(kind.as_bytes());
        self.out.put_slice(b"\ndata: ");
        // Serialising plain values into memory cannot fail.
        let _ = serde_json::to_writer((&mut self.out).writer(), &Event { kind, sequence_number: number, fields });
        self.out.put_slice(b"\n\n");
    }

    /// The response object now: `status`, the output so far, usage and error.
    fn response(&self, status: &str, usage: Option<&Usage>, error: Option<Value>, incomplete: Option<&str>) -> Value {
        let dify = match (&self.facts, self.options.metadata && status != "in_progress") {
            (Some(facts), true) => Some(super::dify_object(&facts.view(), usage)),
            (None, true) => Some(super::dify_object(&Facts::default(), usage)),
            (_, false) => None,
        };
        let mut body = Map::with_capacity(32);
        body.insert("id".into(), json!(self.id));
        body.insert("object".into(), json!("response"));
        body.insert("created_at".into(), json!(self.created_at));
        body.insert("status".into(), json!(status));
        body.insert("model".into(), json!(self.options.model));
        body.insert("output".into(), Value::Array(self.output.clone()));
        body.insert("error".into(), error.unwrap_or(Value::Null));
        body.insert("incomplete_details".into(), incomplete.map_or(Value::Null, |reason| json!({"reason": reason})));
        body.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        for (key, value) in &self.options.echo {
            body.insert(key.clone(), value.clone());
        }
        if let Some(dify) = dify {
            body.insert("dify".into(), dify);
        }
        Value::Object(body)
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn open_message(&mut self) {
        if matches!(self.open, Open::Message { .. }) {
            return;
        }
        self.close("completed");
        let id = random_id("msg_");
        let index = self.output_index();
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        );
        self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part("")}),
        );
        self.open = Open::Message { id, text: String::new() };
    }

    fn open_reasoning(&mut self) {
        if matches!(self.open, Open::Reasoning { .. }) {
            return;
        }
        self.close("completed");
        let id = random_id("rs_");
        let index = self.output_index();
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {"id": id, "type": "reasoning", "summary": []}}),
        );
        self.event(
            "response.reasoning_summary_part.added",
            json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
        );
        self.open = Open::Reasoning { id, text: String::new() };
    }

    /// Ends the item being written with its `…done` events; `status` is `incomplete` when
    /// the answer failed while it was being written.
    fn close(&mut self, status: &str) {
        let index = self.output_index();
        let item = match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Message { id, text } => {
                let fields =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []});
                self.event("response.output_text.done", fields);
                let part = json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part(&text)});
                self.event("response.content_part.done", part);
                json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": [text_part(&text)]})
            }
            Open::Reasoning { id, text } => {
                let fields = json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text});
                self.event("response.reasoning_summary_text.done", fields);
                let part = json!({"type": "summary_text", "text": text});
                let fields = json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part});
                self.event("response.reasoning_summary_part.done", fields);
                json!({"id": id, "type": "reasoning", "summary": [part]})
            }
        };
        self.event("response.output_item.done", json!({"output_index": index, "item": item}));
        self.output.push(item);
    }

    fn end(&mut self, kind: &str, body: Value) {
        self.event(kind, json!({ "response": body }));
        self.last = Some(body);
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// `response.error.code`: the Responses API's own short list.
fn error_code(error: &ApiError) -> &'static str {
    match error.status.as_u16() {
        429 => "rate_limit_exceeded",
        _ => "server_error",
    }
}

impl Sink for ResponsesEncoder {
    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.open_message();
        self.sent_text = true;
        let index = self.output_index();
        let Open::Message { id, text: so_far } = &mut self.open else { return };
        so_far.push_str(text);
        let id = id.clone();
        let delta = TextDelta { item_id: &id, output_index: index, content_index: 0, delta: text, logprobs: [] };
        self.event("response.output_text.delta", delta);
    }

    fn reasoning(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.open_reasoning();
        let index = self.output_index();
        let Open::Reasoning { id, text: so_far } = &mut self.open else { return };
        so_far.push_str(text);
        let id = id.clone();
        let delta = SummaryDelta { item_id: &id, output_index: index, summary_index: 0, delta: text };
        self.event("response.reasoning_summary_text.delta", delta);
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
        self.close("completed");
        let id = random_id("fc_");
        let index = self.output_index();
        let item = |status: &str, arguments: &str| json!({"id": id, "type": "function_call", "status": status, "call_id": call.id, "name": call.name, "arguments": arguments});
        self.event("response.output_item.added", json!({"output_index": index, "item": item("in_progress", "")}));
        let fields = json!({"item_id": id, "output_index": index, "delta": call.arguments});
        self.event("response.function_call_arguments.delta", fields);
        let fields = json!({"item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments});
        self.event("response.function_call_arguments.done", fields);
        let done = item("completed", &call.arguments);
        self.event("response.output_item.done", json!({"output_index": index, "item": done}));
        self.output.push(done);
    }

    fn facts(&mut self, facts: &Facts<'_>) {
        if self.options.metadata {
            self.facts = Some(facts.owned());
        }
    }

    fn keep_alive(&mut self) {
        if self.streaming {
            self.out.put_slice(b": keep-alive\n\n");
        }
    }

    /// `response.completed`, or `response.incomplete` when moderation replaced the answer.
    fn finish(&mut self, reason: FinishReason, usage: Option<&Usage>) {
        if self.output.is_empty() && matches!(self.open, Open::None) {
            // An empty answer is still a message, as OpenAI sends it.
            self.open_message();
        }
        self.close("completed");
        if reason == FinishReason::ContentFilter {
            let body = self.response("incomplete", usage, None, Some("content_filter"));
            self.end("response.incomplete", body);
        } else {
            let body = self.response("completed", usage, None, None);
            self.end("response.completed", body);
        }
    }

    /// `response.failed` (what Open WebUI and the accumulators read), then an `error` event
    /// in both the documented flat form and the nested one the SDKs raise on.
    fn fail(&mut self, error: &ApiError) {
        self.close("incomplete");
        let failure = json!({"code": error_code(error), "message": error.message});
        let body = self.response("failed", None, Some(failure), None);
        self.end("response.failed", body);
        let code = error.code.as_deref().unwrap_or(error_code(error));
        let nested = json!({"type": super::openai::error_type(error.kind), "code": code, "message": error.message, "param": error.param});
        let fields = json!({"code": code, "message": error.message, "param": error.param, "error": nested});
        self.event("error", fields);
    }
}

impl StreamEncoder for ResponsesEncoder {
    /// `response.created` and `response.in_progress`, with no output yet.
    fn start(&mut self) {
        let body = self.response("in_progress", None, None, None);
        self.event("response.created", json!({ "response": body }));
        self.event("response.in_progress", json!({ "response": body }));
    }

    fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    fn summary(&self) -> Option<String> {
        self.last.as_ref().map(Value::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ResponseOptions {
        parse(br#"{"model":"m","input":"hi"}"#).expect("valid").1
    }

    fn events(encoder: &mut ResponsesEncoder) -> Vec<Value> {
        let bytes = encoder.take();
        let text = String::from_utf8_lossy(&bytes).to_string();
        text.split("\n\n")
            .filter(|f| !f.is_empty() && !f.starts_with(':'))
            .map(|frame| {
                let (name, data) = frame.split_once("\ndata: ").expect("event and data lines");
                let value: Value = serde_json::from_str(data).expect("json");
                assert_eq!(name.trim_start_matches("event: "), value["type"], "{frame}");
                value
            })
            .collect()
    }

    #[test]
    fn input_items_become_messages_with_calls_on_the_assistant_turn() {
        let (turn, options) = parse(
            br#"{"model":"m","instructions":"be brief","store":false,"input":[
                {"role":"user","content":"weather?"},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"checking"}]},
                {"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Oslo\"}"},
                {"type":"reasoning","id":"rs_1","summary":[]},
                {"type":"function_call_output","call_id":"call_1","output":"sunny"}]}"#,
        )
        .expect("valid");
        assert!(!options.store);
        let roles: Vec<Role> = turn.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(turn.messages[2].tool_calls[0].name, "get_weather");
        assert_eq!(turn.tool_name_for("call_1"), Some("get_weather"));
        assert_eq!(turn.input_start(), 3);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |body: &str| parse(body.as_bytes()).expect_err("should fail");
        assert_eq!(err(r#"{"input":"x"}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("input"));
        let e = err(r#"{"model":"m","input":[{"type":"message","role":"user","content":[{"type":"video"}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("input[0].content[0]"), "{}", e.message);
        let e = err(r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#);
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = err(r#"{"model":"m","input":"x","background":true}"#);
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        let e = err(r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"a","schema":3}}}"#);
        assert_eq!(e.param.as_deref(), Some("text.format.schema"), "{}", e.message);
        let e = err(r#"{"model":"m","input":[{"role":"assistant","content":"only me"}]}"#);
        assert_eq!(e.param.as_deref(), Some("input"));
    }

    #[test]
    fn a_streamed_answer_is_numbered_and_ends_as_the_collected_one() {
        let mut w = ResponsesEncoder::new("resp_1".into(), options(), 7);
        w.start();
        w.reasoning("hm");
        w.text("Hel");
        w.text("lo");
        let call = ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
        w.tool_call(&call);
        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, price: None };
        w.finish(FinishReason::ToolCalls, Some(&usage));
        let events = events(&mut w);
        let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().expect("number")).collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("type")).collect();
        assert_eq!(
            kinds[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added"
            ]
        );
        assert_eq!(kinds.last(), Some(&"response.completed"));
        let done = &events.last().expect("completed")["response"];
        let types: Vec<&str> =
            done["output"].as_array().expect("output").iter().map(|i| i["type"].as_str().unwrap_or("")).collect();
        assert_eq!(types, ["reasoning", "message", "function_call"]);
        assert_eq!(done["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(done["usage"]["total_tokens"], 3);

        let mut collected = Collected::default();
        collected.reasoning.push_str("hm");
        collected.content.push_str("Hello");
        collected.tool_calls.push(call);
        let body = ResponsesEncoder::collected(
            "resp_1".into(),
            options(),
            7,
            &collected,
            FinishReason::ToolCalls,
            Some(&usage),
        );
        let strip_ids = |v: &Value| {
            let mut v = v.clone();
            for item in v["output"].as_array_mut().into_iter().flatten() {
                item["id"] = Value::Null;
            }
            v
        };
        assert_eq!(strip_ids(&body), strip_ids(done));
    }

    #[test]
    fn a_failure_is_response_failed_then_an_error_event() {
        let mut w = ResponsesEncoder::new("resp_1".into(), options(), 7);
        w.start();
        w.text("partial");
        w.fail(&ApiError::server(axum::http::StatusCode::BAD_GATEWAY, "Dify broke"));
        let events = events(&mut w);
        let failed = &events[events.len() - 2];
        assert_eq!(failed["type"], "response.failed");
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["error"]["message"], "Dify broke");
        assert_eq!(failed["response"]["output"][0]["status"], "incomplete");
        let error = &events[events.len() - 1];
        assert_eq!((error["type"].as_str(), error["message"].as_str()), (Some("error"), Some("Dify broke")));
        assert_eq!(error["error"]["message"], "Dify broke");
    }
}
