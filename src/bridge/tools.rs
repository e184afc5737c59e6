//! Client tools, emulated. Dify apps cannot take an OpenAI `tools` list, so opendify tells the
//! app about the tools in the query and reads calls back out of the answer, in the
//! Hermes/Qwen convention current models are trained on:
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Oslo"}}
//! </tool_call>
//! ```
//! Results go back the same way, as `<tool_response>{"name", "content"}</tool_response>`.

use serde_json::{Value, json};

use super::turn::{Message, ToolCall, Turn};

/// A call as the model wrote it (and as it stands in a transcript or fingerprint).
pub fn call_block(call: &ToolCall) -> String {
    // The arguments are JSON text; embedded as JSON when they parse, as text when not.
    let arguments = serde_json::from_str::<Value>(&call.arguments).unwrap_or(Value::String(call.arguments.clone()));
    format!("<tool_call>\n{}\n</tool_call>", json!({"name": call.name, "arguments": arguments}))
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
