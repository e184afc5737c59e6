//! Client tools, emulated. Dify apps cannot take an OpenAI `tools` list, so opendify tells the
//! app about the tools in the query and reads calls back out of the answer, in the
//! Hermes/Qwen convention current models are trained on:
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Oslo"}}
//! </tool_call>
//! ```
//! Results go back the same way, as `<tool_response>{"name", "content"}</tool_response>`.
//! The parser is written here by hand: it works on a stream, holding back only what may be
//! the start of a block, which no JSON or XML library does.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::events::{FinishReason, Sink};
use super::turn::{Message, ToolCall, ToolChoice, Tools, Turn};
use crate::logging::Shown;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// A block longer than this is not a tool call: it goes out as text.
const MAX_BLOCK: usize = 1024 * 1024;

/// A call as the model wrote it (and as it stands in a transcript or fingerprint).
pub fn call_block(call: &ToolCall) -> String {
    // The arguments are JSON text; embedded as JSON when they parse, as text when not.
    let arguments = serde_json::from_str::<Value>(&call.arguments).unwrap_or(Value::String(call.arguments.clone()));
    format!("{OPEN}\n{}\n{CLOSE}", json!({"name": call.name, "arguments": arguments}))
}

/// A tool's result, for the model.
pub fn response_block(message: &Message, turn: &Turn) -> String {
    let name = message
        .name
        .as_deref()
        .or_else(|| message.tool_call_id.as_deref().and_then(|id| turn.tool_name_for(id)))
        .unwrap_or("tool");
    format!("<tool_response>\n{}\n</tool_response>", json!({"name": name, "content": message.joined_text()}))
}

/// The tools as the model is told about them: name, description, JSON Schema of the arguments.
fn definitions(tools: &Tools) -> String {
    let list: Vec<Value> = tools
        .specs
        .iter()
        .map(|t| {
            let mut spec = json!({"name": t.name, "parameters": t.parameters});
            if let Some(description) = &t.description {
                spec["description"] = json!(description);
            }
            spec
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// A short fingerprint of the tool definitions: a conversation is told them again only when
/// they changed since its last turn.
pub fn definitions_hash(tools: &Tools) -> u64 {
    let digest = Sha256::digest(definitions(tools).as_bytes());
    u64::from_le_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7]])
}

/// What the query carries about the tools: the definitions (when the conversation does not
/// have them yet), and what this turn must do (when the client insists on a call).
pub fn sections(tools: &Tools, with_definitions: bool) -> Vec<String> {
    let mut sections = Vec::new();
    if with_definitions {
        let mut text = String::from(
            "[Tools]\nYou can call the tools below. To call one, answer with this block, and nothing after it:\n\
             <tool_call>\n{\"name\": \"<tool name>\", \"arguments\": {<the arguments, as JSON>}}\n</tool_call>\n",
        );
        if tools.parallel {
            text.push_str("To call several tools at once, write one block per call.\n");
        } else {
            text.push_str("Call at most one tool per answer.\n");
        }
        text.push_str(
            "Each result comes back in a <tool_response> block. When no tool is needed, answer normally, without a block.\n\
             Tools (the arguments as JSON Schema):\n",
        );
        text.push_str(&definitions(tools));
        sections.push(text);
    }
    match &tools.choice {
        ToolChoice::Required => {
            sections.push("[Tool use]\nAnswer with a <tool_call> block: call one of the tools now.".to_string())
        }
        ToolChoice::Named(name) => {
            sections.push(format!("[Tool use]\nAnswer with a <tool_call> block calling the tool `{name}` now."))
        }
        ToolChoice::Auto | ToolChoice::None => {}
    }
    sections
}

/// Tools Open WebUI offers every model on every turn (notes, memories, calendar, knowledge
/// search…): a request carrying mostly these comes from Open WebUI, even without its headers.
pub const OPEN_WEBUI_BUILTIN_TOOLS: &[&str] = &[
    "notify",
    "get_current_timestamp",
    "calculate_timestamp",
    "search_web",
    "fetch_url",
    "generate_image",
    "edit_image",
    "ask_user",
    "execute_code",
    "list_memory_paths",
    "read_memory_path",
    "search_memories",
    "add_memory",
    "update_memory",
    "replace_memory_content",
    "delete_memory",
    "list_memories",
    "search_notes",
    "view_note",
    "write_note",
    "replace_note_content",
    "search_chats",
    "view_chat",
    "delegate_task",
    "timer",
    "search_channels",
    "search_channel_messages",
    "view_channel_message",
    "view_channel_thread",
    "list_knowledge_bases",
    "search_knowledge_bases",
    "search_knowledge_files",
    "list_chat_files",
    "grep_chat_files",
    "query_chat_files",
    "grep_knowledge_files",
    "view_file",
    "view_knowledge_file",
    "list_knowledge",
    "query_knowledge_files",
    "query_knowledge_bases",
    "view_skill",
    "read_skill_file",
    "grep_skill_files",
    "create_skill",
    "update_skill_files",
    "search_tools",
    "create_tasks",
    "update_task",
    "create_automation",
    "update_automation",
    "list_automations",
    "toggle_automation",
    "delete_automation",
    "search_calendar_events",
    "create_calendar_event",
    "update_calendar_event",
    "delete_calendar_event",
];

/// Whether a tool list is Open WebUI's own (at least three tools, nearly all built in).
pub fn is_open_webui_tool_list(tools: &Tools) -> bool {
    let builtin = tools.specs.iter().filter(|t| OPEN_WEBUI_BUILTIN_TOOLS.contains(&t.name.as_str())).count();
    builtin >= 3 && builtin * 5 >= tools.specs.len() * 4
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Answer text; a block may start.
    Text,
    /// Inside `<tool_call>`, until `</tool_call>`.
    Block,
}

/// Reads tool calls out of a streamed answer: text streams through as it comes, except what
/// may be the start of a block; a block becomes a [`ToolCall`] once it closes. A block that
/// is not a call of a known tool goes out as the text it was (and is logged), never invented.
pub struct ToolCallParser {
    known: Vec<String>,
    parallel: bool,
    state: State,
    /// Held back: a possible `<tool_call>` prefix, or a block being read.
    held: String,
    /// Whitespace after a call, held until text follows (a call's trailing newlines are
    /// not an answer).
    pending_space: String,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(tools: &Tools) -> Self {
        ToolCallParser {
            known: tools.specs.iter().map(|t| t.name.clone()).collect(),
            parallel: tools.parallel,
            state: State::Text,
            held: String::new(),
            pending_space: String::new(),
            calls: 0,
        }
    }

    /// How many calls the answer made.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn text(&mut self, text: &str, out: &mut impl Sink) {
        // The common case: nothing held, no `<` in sight.
        if self.state == State::Text && self.held.is_empty() && !text.contains('<') {
            self.emit_text(text, out);
            return;
        }
        let mut input = std::mem::take(&mut self.held);
        input.push_str(text);
        let mut rest = input.as_str();
        loop {
            match self.state {
                State::Text => match rest.find(OPEN) {
                    Some(at) => {
                        self.emit_text(&rest[..at], out);
                        rest = &rest[at + OPEN.len()..];
                        self.state = State::Block;
                    }
                    None => {
                        // Hold back a tail that may be the start of `<tool_call>`.
                        let keep = partial_suffix(rest, OPEN);
                        self.emit_text(&rest[..rest.len() - keep], out);
                        self.held.push_str(&rest[rest.len() - keep..]);
                        return;
                    }
                },
                State::Block => match rest.find(CLOSE) {
                    Some(at) => {
                        let block = rest[..at].to_string();
                        rest = &rest[at + CLOSE.len()..];
                        self.state = State::Text;
                        self.on_block(&block, out);
                    }
                    None => {
                        self.held.push_str(rest);
                        if self.held.len() > MAX_BLOCK {
                            let block = format!("{OPEN}{}", std::mem::take(&mut self.held));
                            tracing::warn!("a <tool_call> block grew past 1 MiB without closing; sent as text");
                            self.state = State::Text;
                            self.emit_text(&block, out);
                        }
                        return;
                    }
                },
            }
        }
    }

    /// The answer ended: what is held goes out as text (an unclosed block is not a call).
    pub fn finish(&mut self, out: &mut impl Sink) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Text => self.emit_text(&held, out),
            State::Block => {
                tracing::warn!("the answer ended inside a <tool_call> block; sent as text");
                self.emit_text(&format!("{OPEN}{held}"), out);
            }
        }
        self.state = State::Text;
        self.pending_space.clear();
    }

    fn emit_text(&mut self, text: &str, out: &mut impl Sink) {
        if text.is_empty() {
            return;
        }
        if self.calls > 0 && text.trim().is_empty() {
            self.pending_space.push_str(text);
            return;
        }
        if !self.pending_space.is_empty() {
            let space = std::mem::take(&mut self.pending_space);
            out.text(&space);
        }
        out.text(text);
    }

    fn on_block(&mut self, block: &str, out: &mut impl Sink) {
        match self.parse(block) {
            Ok(call) => {
                self.calls += 1;
                self.pending_space.clear();
                out.tool_call(&call);
            }
            Err(why) => {
                tracing::warn!("a <tool_call> block was not used as a call ({why}): {}", Shown(block.trim()));
                self.emit_text(&format!("{OPEN}{block}{CLOSE}"), out);
            }
        }
    }

    fn parse(&self, block: &str) -> Result<ToolCall, String> {
        let value: Value = serde_json::from_str(block.trim())
            .map_err(|e| format!("not valid JSON: {}", crate::json_text::reason(&e)))?;
        let name = value.get("name").and_then(Value::as_str).ok_or("no \"name\"")?.trim().to_string();
        if !self.known.contains(&name) {
            return Err(format!("no tool is named {name:?}"));
        }
        if self.calls > 0 && !self.parallel {
            return Err("parallel_tool_calls is false and a call was already made".into());
        }
        let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
            None | Some(Value::Null) => "{}".to_string(),
            // Some models write the arguments as a JSON string; the client wants the object's text.
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(parsed) if parsed.is_object() => parsed.to_string(),
                _ => return Err("\"arguments\" is a string that is not a JSON object".into()),
            },
            Some(arguments) if arguments.is_object() => arguments.to_string(),
            Some(_) => return Err("\"arguments\" is not a JSON object".into()),
        };
        Ok(ToolCall { id: super::random_id("call_"), name, arguments })
    }
}

/// The length of the longest end of `text` that `pattern` starts with.
pub fn partial_suffix(text: &str, pattern: &str) -> usize {
    (1..pattern.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && pattern.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// Ends an answer that made calls as a tool-call answer.
pub fn finish_reason(calls: usize, reason: FinishReason) -> FinishReason {
    if calls > 0 && reason == FinishReason::Stop { FinishReason::ToolCalls } else { reason }
}

/// Refuses a request that insists on a tool call when tools are not emulated for it.
pub fn refuse_forced_call(tools: &Tools, model: &str, why: &str) -> Result<(), ApiError> {
    match &tools.choice {
        ToolChoice::Required | ToolChoice::Named(_) => Err(ApiError::invalid_request(format!(
            "Model `{model}` cannot call client tools here: {why}. Without emulation the app answers in text, so \
             tool_choice \"required\" or a named function cannot be honoured."
        ))
        .param("tool_choice")
        .code("tool_calls_unavailable")),
        ToolChoice::Auto | ToolChoice::None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::events::Collected;
    use crate::bridge::turn::ToolSpec;

    fn tools(parallel: bool) -> Tools {
        let spec =
            |name: &str| ToolSpec { name: name.into(), description: None, parameters: json!({"type": "object"}) };
        Tools { specs: vec![spec("get_weather"), spec("get_time")], choice: ToolChoice::Auto, parallel }
    }

    fn run(pieces: &[&str], parallel: bool) -> Collected {
        let mut parser = ToolCallParser::new(&tools(parallel));
        let mut out = Collected::default();
        for piece in pieces {
            parser.text(piece, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn a_block_becomes_a_call_even_split_at_any_byte() {
        let answer = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        for cut in 1..answer.len() {
            let out = run(&[&answer[..cut], &answer[cut..]], true);
            assert_eq!(out.tool_calls.len(), 1, "cut at {cut}");
            assert_eq!(out.tool_calls[0].name, "get_weather");
            assert_eq!(out.tool_calls[0].arguments, "{\"city\":\"Oslo\"}");
            assert!(out.tool_calls[0].id.starts_with("call_"));
            assert_eq!(out.content, "", "cut at {cut}");
        }
    }

    #[test]
    fn text_before_stays_content_and_parallel_calls_all_count() {
        let out = run(
            &[
                "Let me check.\n<tool_call>{\"name\":\"get_weather\",\"arguments\":{}}</tool_call>\n<tool_call>{\"name\":\"get_time\"}</tool_call>\n",
            ],
            true,
        );
        assert_eq!(out.content, "Let me check.\n");
        let names: Vec<_> = out.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"]);
        assert_eq!(out.tool_calls[1].arguments, "{}");
    }

    #[test]
    fn invalid_or_unknown_blocks_and_extra_calls_are_left_as_text() {
        let out = run(&["<tool_call>{not json}</tool_call>"], true);
        assert!(out.tool_calls.is_empty());
        assert_eq!(out.content, "<tool_call>{not json}</tool_call>");
        let out = run(&["<tool_call>{\"name\":\"launch_rockets\"}</tool_call>"], true);
        assert!(out.tool_calls.is_empty() && out.content.contains("launch_rockets"));
        let out = run(
            &["<tool_call>{\"name\":\"get_time\"}</tool_call><tool_call>{\"name\":\"get_weather\"}</tool_call>"],
            false,
        );
        assert_eq!(out.tool_calls.len(), 1, "parallel_tool_calls: false allows one");
        assert!(out.content.contains("get_weather"));
        let out = run(&["almost <tool_ca", "ll but not closed"], true);
        assert_eq!(out.content, "almost <tool_call but not closed");
        let out = run(&["a < b and <tool", "> c"], true);
        assert_eq!(out.content, "a < b and <tool> c");
    }

    #[test]
    fn open_webui_tool_lists_are_recognised() {
        let spec = |name: &str| ToolSpec { name: name.into(), description: None, parameters: json!({}) };
        let owui = Tools {
            specs: ["search_notes", "view_note", "write_note", "search_memories", "get_current_timestamp"]
                .iter()
                .map(|n| spec(n))
                .collect(),
            ..Tools::default()
        };
        assert!(is_open_webui_tool_list(&owui));
        assert!(!is_open_webui_tool_list(&tools(true)));
    }
}
