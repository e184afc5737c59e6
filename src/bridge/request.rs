//! Builds the Dify request for a turn: which text becomes the `query` (or the app's input
//! variable), where the system prompt goes, how earlier turns are carried when a new Dify
//! conversation has to be started, and what opendify itself has to tell the app (the client's
//! tools, the answer's format).
//!
//! Framing, when a new conversation needs context (documented in the README):
//! ```text
//! [System instructions]
//! …system messages…
//!
//! [Earlier conversation]
//! User: …
//! Assistant: …
//!
//! [Current message]
//! …the new input…
//! ```
//! With neither a system prompt, nor earlier turns, nor instructions, the query is the user's
//! text as is.

use serde_json::{Map, Value};

use super::apps::AppRoute;
use super::tools;
use super::turn::{Message, Role, Turn};
use crate::dify::{AppMode, FileRef, GenerateRequest};

/// How the request relates to a Dify conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationPlan {
    /// Continue this conversation (Dify has the earlier turns).
    pub conversation_id: Option<String>,
    /// Branch from this message (regenerate/edit), when the server supports it.
    pub parent_message_id: Option<String>,
    /// Index of the first message to carry as context in a new conversation (`None`: none).
    pub seed_from: Option<usize>,
}

pub struct BuildOptions<'a> {
    pub user: &'a str,
    pub system_input: Option<&'a str>,
    /// Sections opendify adds before the current message (tools, answer format), each with
    /// its own `[Heading]`.
    pub sections: &'a [String],
    /// What opendify says instead of the client's message (asking again for a structured
    /// answer, in the conversation that has the first one).
    pub instead: Option<&'a str>,
}

/// Builds the body for the app's generate endpoint. Files must have been resolved before.
pub fn build(
    turn: &Turn,
    route: &AppRoute,
    plan: &ConversationPlan,
    files: Vec<FileRef>,
    options: &BuildOptions<'_>,
) -> GenerateRequest {
    let input_start = turn.input_start();
    let current = match options.instead {
        Some(text) => text.to_string(),
        None => input_text(turn),
    };
    let mut inputs: Map<String, Value> = turn.inputs.clone().unwrap_or_default();

    let system: Vec<String> = turn
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(Message::joined_text)
        .filter(|t| !t.trim().is_empty())
        .collect();
    let starts_conversation = plan.conversation_id.is_none();
    let mut sections: Vec<String> = Vec::new();
    // A continued conversation already has its system prompt and inputs on Dify's side.
    if starts_conversation && !system.is_empty() {
        let text = system.join("\n\n");
        match options.system_input {
            Some(var) => {
                inputs.insert(var.to_string(), Value::String(text));
            }
            None => sections.push(format!("[System instructions]\n{text}")),
        }
    }
    if let (Some(from), true) = (plan.seed_from, route.mode.is_chat_family()) {
        let transcript = transcript(turn, from, input_start);
        if !transcript.is_empty() {
            sections.push(format!("[Earlier conversation]\n{transcript}"));
        }
    }
    sections.extend(options.sections.iter().cloned());
    let query = if sections.is_empty() {
        current
    } else {
        sections.push(format!("[Current message]\n{current}"));
        sections.join("\n\n")
    };

    let mut body = GenerateRequest {
        inputs,
        query: None,
        response_mode: "streaming",
        user: options.user.to_string(),
        conversation_id: None,
        parent_message_id: None,
        files,
        auto_generate_name: None,
    };
    match route.mode {
        AppMode::Workflow => {
            body.inputs.insert(route.input_variable(), Value::String(query));
        }
        AppMode::Completion => {
            let var = route.input_variable();
            let declared =
                route.parameters.as_ref().is_some_and(|p| p.input_fields().iter().any(|f| f.variable == var));
            if declared || route.input.is_some() {
                body.inputs.insert(var, Value::String(query.clone()));
            }
            body.query = Some(query);
        }
        _ => {
            body.query = Some(query);
            body.conversation_id = plan.conversation_id.clone();
            body.parent_message_id = plan.parent_message_id.clone();
            // Titles cost an extra LLM call per conversation; OpenAI clients make their own.
            body.auto_generate_name = Some(false);
        }
    }
    body
}

/// The new input as text: the user's message, or the tool results as framed blocks (and
/// after them, the user's message that follows them).
pub fn input_text(turn: &Turn) -> String {
    let input = turn.input();
    match input.first() {
        Some(m) if m.role == Role::User => m.joined_text(),
        _ => {
            let mut text = input
                .iter()
                .filter(|m| m.role == Role::Tool)
                .map(|m| tools::response_block(m, turn))
                .collect::<Vec<_>>()
                .join("\n");
            for note in input.iter().filter(|m| m.role == Role::User).map(Message::joined_text) {
                if !note.trim().is_empty() {
                    text.push_str("\n\n");
                    text.push_str(&note);
                }
            }
            text
        }
    }
}

/// The text a message stands for in a transcript, or in a fingerprint: its text, and for an
/// assistant its tool calls as the blocks it answered with.
pub fn message_text(message: &Message, turn: &Turn) -> String {
    match message.role {
        Role::Tool => tools::response_block(message, turn),
        Role::Assistant if !message.tool_calls.is_empty() => {
            let mut text = message.joined_text();
            for call in &message.tool_calls {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&tools::call_block(call));
            }
            text
        }
        _ => message.joined_text(),
    }
}

fn transcript(turn: &Turn, from: usize, until: usize) -> String {
    turn.messages[from.min(until)..until]
        .iter()
        .filter_map(|m| {
            let who = match m.role {
                Role::User => "User",
                Role::Assistant => "Assistant",
                Role::Tool => "Tool",
                Role::System => return None,
            };
            let text = message_text(m, turn);
            (!text.trim().is_empty()).then(|| format!("{who}: {text}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::apps::ModeSource;
    use crate::bridge::turn::ToolCall;

    fn route(mode: AppMode) -> AppRoute {
        AppRoute {
            name: "m".into(),
            key: crate::secret::Secret::new("app-k"),
            mode,
            mode_source: ModeSource::Configured,
            input: None,
            output: None,
            tools: None,
            app_name: None,
            parameters: None,
            discovery_error: None,
        }
    }

    fn turn(messages: &[(Role, &str)]) -> Turn {
        let messages = messages
            .iter()
            .enumerate()
            .map(|(i, (role, text))| Message::text(*role, *text, format!("messages[{i}]")))
            .collect();
        Turn { model: "m".into(), messages, ..Turn::default() }
    }

    const OPTS: BuildOptions<'static> = BuildOptions { user: "u1", system_input: None, sections: &[], instead: None };

    #[test]
    fn plain_message_is_the_query_as_is() {
        let t = turn(&[(Role::User, "Hi there")]);
        let body = build(&t, &route(AppMode::Chat), &ConversationPlan::default(), vec![], &OPTS);
        assert_eq!(body.query.as_deref(), Some("Hi there"));
        assert_eq!(body.user, "u1");
        assert_eq!(body.response_mode, "streaming");
        assert!(body.inputs.is_empty());
    }

    #[test]
    fn system_and_history_are_framed_for_a_new_conversation_only() {
        let t = turn(&[(Role::System, "Be brief"), (Role::User, "a"), (Role::Assistant, "b"), (Role::User, "c")]);
        let plan = ConversationPlan { seed_from: Some(0), ..Default::default() };
        let body = build(&t, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(
            body.query.as_deref(),
            Some(
                "[System instructions]\nBe brief\n\n[Earlier conversation]\nUser: a\nAssistant: b\n\n[Current message]\nc"
            )
        );
        let plan = ConversationPlan { conversation_id: Some("conv".into()), ..Default::default() };
        let body = build(&t, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(body.query.as_deref(), Some("c"));
        assert_eq!(body.conversation_id.as_deref(), Some("conv"));
    }

    #[test]
    fn system_input_variable_and_workflow_input() {
        let t = turn(&[(Role::System, "S"), (Role::User, "go")]);
        let opts = BuildOptions { user: "u", system_input: Some("persona"), sections: &[], instead: None };
        let body = build(&t, &route(AppMode::Workflow), &ConversationPlan::default(), vec![], &opts);
        assert_eq!(body.inputs.get("persona"), Some(&Value::String("S".into())));
        assert_eq!(body.inputs.get("query"), Some(&Value::String("go".into())));
        assert!(body.query.is_none() && body.conversation_id.is_none());
    }

    #[test]
    fn tool_results_are_the_input_and_calls_are_framed_in_the_history() {
        let mut t = turn(&[(Role::User, "weather?"), (Role::Assistant, ""), (Role::Tool, "sunny")]);
        t.messages[1].tool_calls =
            vec![ToolCall { id: "call_1".into(), name: "weather".into(), arguments: "{\"city\":\"Oslo\"}".into() }];
        t.messages[2].tool_call_id = Some("call_1".into());
        let plan = ConversationPlan { conversation_id: Some("conv".into()), ..Default::default() };
        let body = build(&t, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(
            body.query.as_deref(),
            Some("<tool_response>\n{\"name\":\"weather\",\"content\":\"sunny\"}\n</tool_response>")
        );
        // A note after the results goes with them.
        let mut noted = t.clone();
        noted.messages.push(Message::text(Role::User, "and be quick", "messages[3]"));
        let body = build(&noted, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(
            body.query.as_deref(),
            Some("<tool_response>\n{\"name\":\"weather\",\"content\":\"sunny\"}\n</tool_response>\n\nand be quick")
        );
        let seeded = ConversationPlan { seed_from: Some(0), ..Default::default() };
        let body = build(&t, &route(AppMode::Chat), &seeded, vec![], &OPTS);
        let query = body.query.unwrap_or_default();
        assert!(
            query.contains(
                "Assistant: <tool_call>\n{\"name\":\"weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"
            ),
            "{query}"
        );
    }
}
