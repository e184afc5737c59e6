//! What the conversation store keeps, whatever the backend, and how it fails:
//! - turn: history fingerprint → (conversation, client turn number, Dify message id);
//! - conversation: id → app, model, user, chat id, latest turn and message, timestamps;
//! - chat: (app, user, client chat id) → conversation.
//!
//! Every record expires `MAPPING_TTL_DAYS` after its last use.

use std::path::PathBuf;

use serde::Serialize;

use super::fingerprint::Fingerprint;
use crate::finding::Finding;
use crate::secret::mask_url_credentials;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the conversation store {location}: {reason}")]
    Open { location: String, reason: String, fix: String },
    #[error("conversation store {location}: {reason}")]
    Backend { location: String, reason: String },
    #[error("conversation store {location} is corrupt or not an opendify store: {reason}")]
    Corrupt { location: String, reason: String },
}

impl StoreError {
    pub fn fix(&self) -> Option<&str> {
        match self {
            StoreError::Open { fix, .. } => Some(fix),
            StoreError::Corrupt { .. } => Some("move the file aside (opendify creates a new one) or restore a backup"),
            StoreError::Backend { .. } => None,
        }
    }

    /// The error as a problem with its fix, for people.
    pub fn finding(&self) -> Finding {
        Finding { message: self.to_string(), fix: self.fix().map(str::to_string) }
    }
}

/// What a recorded turn points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnRecord {
    pub conversation_id: String,
    /// Number of user messages in the client's history up to this answer.
    pub turn: u32,
    pub message_id: Option<String>,
    /// The tool definitions the conversation was told about by then (a hash), so they are
    /// sent again only when they change.
    pub tools: Option<u64>,
    /// Its row stands for its conversation (SQLite: an opening turn, whose conversation may
    /// have no row of its own yet). The next turn found by its fingerprint clears the mark
    /// ([`Placement::Next`]).
    #[serde(skip)]
    pub opening: bool,
}

/// Where a recorded turn stands in its conversation, as the resolver decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The first turn of a conversation Dify starts with this answer.
    Opening,
    /// A turn of a conversation Dify already has. `opening` is the fingerprint of the
    /// conversation's opening turn when that turn was still all the store held of it.
    Next { opening: Option<Fingerprint> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRecord {
    pub conversation_id: String,
    /// `app_id` of the app key (never the key).
    pub app: String,
    pub model: String,
    pub user: String,
    pub chat_id: Option<String>,
    pub latest_turn: u32,
    pub latest_message_id: Option<String>,
    /// As [`TurnRecord::tools`], for the conversation's latest turn.
    pub tools: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A response of the Responses API, kept so that `previous_response_id` continues its Dify
/// conversation and `GET /v1/responses/{id}` can show it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub id: String,
    /// `app_id` of the app key, and the user: only they may continue or read it.
    pub app: String,
    pub user: String,
    pub conversation_id: Option<String>,
    /// The tool definitions the conversation has by now (a hash).
    pub tools: Option<u64>,
    /// The response object as the client got it, JSON.
    pub body: String,
}

/// Counts and ages, for the doctor and /metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub conversations: u64,
    pub turns: u64,
    pub chats: u64,
    pub expired: u64,
    pub oldest_updated_at: Option<u64>,
    pub newest_updated_at: Option<u64>,
    pub per_user: Vec<(String, u64)>,
    pub per_model: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub user: Option<String>,
    pub chat_id: Option<String>,
    pub limit: usize,
}

/// Where the store is, parsed from CONVERSATION_STORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Redis(String),
}

impl StoreLocation {
    pub fn parse(spec: &str) -> StoreLocation {
        let spec = spec.trim();
        if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("redis+unix://") {
            StoreLocation::Redis(spec.to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(spec.strip_prefix("sqlite://").unwrap_or(spec)))
        }
    }

    /// For people: the path, or the Redis URL with any password masked.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => format!("sqlite:{}", path.display()),
            StoreLocation::Redis(url) => mask_url_credentials(url),
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
