//! The one request every API dialect becomes: a turn. Chat Completions, Responses, Anthropic
//! Messages and legacy completions each parse their own JSON and produce a [`Turn`]; from
//! there on, conversation resolution, uploads, the Dify request, the relay and the recording
//! of the answer are the same code for all of them.

use serde_json::{Map, Value};

/// Who wrote a message. OpenAI's `developer` is a system message; its legacy `function`
/// role is a tool result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// An image by http(s) URL or `data:` URL.
    Image {
        url: String,
    },
    /// A file as inline data (a `data:` URL) with an optional name, by a Dify file id, or by
    /// an http(s) URL Dify fetches.
    File {
        data: Option<String>,
        filename: Option<String>,
        file_id: Option<String>,
        url: Option<String>,
    },
    /// Base64 audio and its format (`wav`, `mp3`).
    Audio {
        data: String,
        format: String,
    },
}

/// A function call the model asked for (emulated: see `tools`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`, chosen by opendify when the call is made; clients send it back with the result.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as the client will see them.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
    /// Assistant messages: the calls it made.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call this is the result of, and the tool's name when known.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// Where the message is in the client's request (`messages[3]`, `input[1]`), for errors.
    pub origin: String,
}

impl Message {
    pub fn new(role: Role, content: Vec<Part>, origin: impl Into<String>) -> Self {
        Message { role, content, tool_calls: Vec::new(), tool_call_id: None, name: None, origin: origin.into() }
    }

    pub fn text(role: Role, text: impl Into<String>, origin: impl Into<String>) -> Self {
        Message::new(role, vec![Part::Text(text.into())], origin)
    }

    /// The text parts, joined with newlines.
    pub fn joined_text(&self) -> String {
        let mut texts = self.content.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        });
        let Some(first) = texts.next() else { return String::new() };
        let mut out = first.to_string();
        for t in texts {
            out.push('\n');
            out.push_str(t);
        }
        out
    }

    /// Whether the message has any attachment (image, file, audio).
    pub fn has_attachments(&self) -> bool {
        self.content.iter().any(|p| !matches!(p, Part::Text(_)))
    }
}

/// A function the client offers the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// Whether and how the model may call the client's tools.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    /// Some tool must be called (`required`, Anthropic's `any`).
    Required,
    /// This tool must be called.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// `false`: at most one call per answer.
    pub parallel: bool,
}

impl Tools {
    /// Tools the model is to be told about (none when the client said `none`).
    pub fn offered(&self) -> bool {
        !self.specs.is_empty() && self.choice != ToolChoice::None
    }
}

/// What shape the answer must have.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema { name: String, schema: Value, strict: bool },
}

/// One request, whatever API it came in through.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    /// The user the body names (OpenAI's `user`, Anthropic's `metadata.user_id`); headers
    /// and JWT mode decide whether it is used.
    pub user: Option<String>,
    /// An explicit Dify conversation to continue.
    pub conversation_id: Option<String>,
    /// A stored response whose conversation this turn continues (the Responses API's
    /// `previous_response_id`): the input is then only what is new.
    pub previous_response_id: Option<String>,
    /// Values for the Dify app's input form, passed through.
    pub inputs: Option<Map<String, Value>>,
    pub tools: Tools,
    pub output: OutputFormat,
}

impl Turn {
    /// Where the new input starts: the trailing tool results when the history ends with
    /// them (an agent returning what its tools said), or with them and a user message right
    /// after them (Anthropic's clients put a note after the results in the same message),
    /// else the last user message. What comes before is the history Dify already has, or
    /// has to be told.
    pub fn input_start(&self) -> usize {
        let last_of = |end: usize| self.messages[..end].iter().rposition(|m| m.role != Role::System);
        let last = match last_of(self.messages.len()) {
            Some(last) if self.messages[last].role == Role::User => match last_of(last) {
                Some(results) if self.messages[results].role == Role::Tool => Some(results),
                _ => Some(last),
            },
            other => other,
        };
        match last {
            Some(last) if self.messages[last].role == Role::Tool => {
                let mut start = last;
                while start > 0 && matches!(self.messages[start - 1].role, Role::Tool | Role::System) {
                    start -= 1;
                }
                // System messages between the calls and the results belong to the history.
                while start < last && self.messages[start].role == Role::System {
                    start += 1;
                }
                start
            }
            _ => self.messages.iter().rposition(|m| m.role == Role::User).unwrap_or(0),
        }
    }

    /// The new input's messages (one user message, or a run of tool results and the user
    /// message that may follow them).
    pub fn input(&self) -> &[Message] {
        let start = self.input_start();
        let end = match self.messages[start..].iter().position(|m| m.role == Role::User) {
            // A user message: only that one.
            Some(0) => start + 1,
            _ => self.messages.len(),
        };
        &self.messages[start.min(self.messages.len())..end.max(start).min(self.messages.len())]
    }

    /// How many inputs the client's history holds up to this one: user messages and runs
    /// of tool results (with the user message that may follow them) each count once.
    pub fn turn_number(&self) -> u32 {
        let end = self.input_start();
        let mut count = 0;
        let mut previous = None;
        for m in &self.messages[..=end.min(self.messages.len().saturating_sub(1))] {
            match m.role {
                Role::User if previous != Some(Role::Tool) => count += 1,
                Role::Tool if previous != Some(Role::Tool) => count += 1,
                _ => {}
            }
            if m.role != Role::System {
                previous = Some(m.role);
            }
        }
        count
    }

    /// The tool name a result answers, from the assistant message that made the call.
    pub fn tool_name_for(&self, call_id: &str) -> Option<&str> {
        self.messages.iter().flat_map(|m| &m.tool_calls).find(|c| c.id == call_id).map(|c| c.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(roles: &[Role]) -> Turn {
        let messages = roles.iter().enumerate().map(|(i, r)| Message::text(*r, format!("m{i}"), "")).collect();
        Turn { messages, ..Turn::default() }
    }

    #[test]
    fn the_input_is_the_last_user_message_or_the_trailing_tool_results() {
        use Role::*;
        let chat = turn(&[System, User, Assistant, User]);
        assert_eq!((chat.input_start(), chat.input().len(), chat.turn_number()), (3, 1, 2));
        let two_users = turn(&[User, User]);
        assert_eq!((two_users.input_start(), two_users.turn_number()), (1, 2));
        let tools = turn(&[User, Assistant, Tool, Tool]);
        assert_eq!((tools.input_start(), tools.input().len(), tools.turn_number()), (2, 2, 2));
        let next = turn(&[User, Assistant, Tool, Assistant, User]);
        assert_eq!((next.input_start(), next.turn_number()), (4, 3));
        let system_between = turn(&[User, Assistant, System, Tool]);
        assert_eq!(system_between.input_start(), 3);
        // Results and a note after them are one input, counted once.
        let noted = turn(&[User, Assistant, Tool, Tool, User]);
        assert_eq!((noted.input_start(), noted.input().len(), noted.turn_number()), (2, 3, 2));
        let after = turn(&[User, Assistant, Tool, User, Assistant, User]);
        assert_eq!((after.input_start(), after.input().len(), after.turn_number()), (5, 1, 3));
    }
}
