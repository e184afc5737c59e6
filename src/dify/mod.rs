//! Dify's service API as opendify speaks it: the app modes, the request and event types, the
//! SSE framing, and the one HTTP client that `serve` and `doctor` share.

pub mod audio;
pub mod client;
mod direct;
pub mod error;
#[cfg(test)]
mod one_shot;
pub mod sse;
pub mod stream;
pub mod types;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use audio::AudioStream;
pub use client::{ClientOptions, DifyClient};
pub use error::{DifyError, ErrorKind, ForeignBody};
pub use stream::EventStream;
pub use types::*;

/// What kind of Dify app a key belongs to; decides the endpoint and the event shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum AppMode {
    #[serde(rename = "chat")]
    Chat,
    #[serde(rename = "agent-chat")]
    AgentChat,
    #[serde(rename = "advanced-chat")]
    AdvancedChat,
    #[serde(rename = "agent")]
    Agent,
    #[serde(rename = "completion")]
    Completion,
    #[serde(rename = "workflow")]
    Workflow,
}

impl AppMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AppMode::Chat => "chat",
            AppMode::AgentChat => "agent-chat",
            AppMode::AdvancedChat => "advanced-chat",
            AppMode::Agent => "agent",
            AppMode::Completion => "completion",
            AppMode::Workflow => "workflow",
        }
    }

    /// Modes served by `/chat-messages`, which keep conversations on Dify's side.
    pub fn is_chat_family(self) -> bool {
        matches!(self, AppMode::Chat | AppMode::AgentChat | AppMode::AdvancedChat | AppMode::Agent)
    }

    pub fn generate_path(self) -> &'static str {
        match self {
            AppMode::Completion => "/completion-messages",
            AppMode::Workflow => "/workflows/run",
            _ => "/chat-messages",
        }
    }

    pub fn stop_path(self, task_id: &str) -> String {
        match self {
            AppMode::Completion => format!("/completion-messages/{task_id}/stop"),
            AppMode::Workflow => format!("/workflows/tasks/{task_id}/stop"),
            _ => format!("/chat-messages/{task_id}/stop"),
        }
    }
}

impl fmt::Display for AppMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AppMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "chat" | "chatbot" => AppMode::Chat,
            "agent-chat" => AppMode::AgentChat,
            "advanced-chat" | "chatflow" => AppMode::AdvancedChat,
            "agent" => AppMode::Agent,
            "completion" => AppMode::Completion,
            "workflow" => AppMode::Workflow,
            other => return Err(format!("unknown Dify app mode {other:?}")),
        })
    }
}
