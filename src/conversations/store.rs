//! Where conversation mappings live: SQLite on one machine (the default, no setup), Redis
//! when several opendify instances share conversations. `serve` and `doctor` both open the
//! store through [`Store::open`], so the doctor inspects exactly what serving uses.
//!
//! Three kinds of record:
//! - turn: history fingerprint → (conversation, client turn number, Dify message id);
//! - conversation: id → app, model, user, chat id, latest turn and message, timestamps;
//! - chat: (app, user, client chat id) → conversation.
//!
//! Every record expires `MAPPING_TTL_DAYS` after its last use.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::fingerprint::Fingerprint;
use super::redis_store::RedisStore;
use super::sqlite::SqliteStore;
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
}

/// What a recorded turn points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnRecord {
    pub conversation_id: String,
    /// Number of user messages in the client's history up to this answer.
    pub turn: u32,
    pub message_id: Option<String>,
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
    pub created_at: u64,
    pub updated_at: u64,
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

pub enum Store {
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    /// Opens (creating when needed) the store named by CONVERSATION_STORE.
    pub async fn open(spec: &str, ttl: Duration) -> Result<Store, StoreError> {
        match StoreLocation::parse(spec) {
            StoreLocation::Sqlite(path) => Ok(Store::Sqlite(SqliteStore::open(&path, ttl, true)?)),
            StoreLocation::Redis(url) => Ok(Store::Redis(RedisStore::connect(&url, ttl).await?)),
        }
    }

    /// Opens an existing store without creating anything (the doctor: diagnosing changes
    /// nothing). `Ok(None)` when a SQLite file does not exist yet.
    pub async fn open_existing(spec: &str, ttl: Duration) -> Result<Option<Store>, StoreError> {
        match StoreLocation::parse(spec) {
            StoreLocation::Sqlite(path) => {
                if !path.exists() {
                    return Ok(None);
                }
                Ok(Some(Store::Sqlite(SqliteStore::open(&path, ttl, false)?)))
            }
            StoreLocation::Redis(url) => Ok(Some(Store::Redis(RedisStore::connect(&url, ttl).await?))),
        }
    }

    pub fn location(&self) -> StoreLocation {
        match self {
            Store::Sqlite(s) => StoreLocation::Sqlite(s.path().to_path_buf()),
            Store::Redis(r) => StoreLocation::Redis(r.url().to_string()),
        }
    }

    /// A turn and its conversation (one round trip on Redis).
    pub async fn turn_with_conversation(
        &self,
        fp: &Fingerprint,
    ) -> Result<Option<(TurnRecord, Option<ConversationRecord>)>, StoreError> {
        match self {
            Store::Sqlite(s) => match s.turn(fp)? {
                Some(turn) => {
                    let conversation = s.conversation(&turn.conversation_id)?;
                    Ok(Some((turn, conversation)))
                }
                None => Ok(None),
            },
            Store::Redis(r) => r.turn_with_conversation(fp).await,
        }
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.conversation(id),
            Store::Redis(r) => r.conversation(id).await,
        }
    }

    pub async fn chat(&self, app: &str, user: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.chat(app, user, chat_id),
            Store::Redis(r) => r.chat(app, user, chat_id).await,
        }
    }

    /// Records an answered turn: the fingerprint, the conversation's new latest turn, and
    /// the chat mapping when the client sent a chat id. One atomic write.
    pub async fn record(
        &self,
        fp: &Fingerprint,
        turn: TurnRecord,
        conversation: ConversationRecord,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record(fp, turn, conversation),
            Store::Redis(r) => r.record(fp, &turn, &conversation).await,
        }
    }

    /// Waits until every recorded turn is durable (SQLite commits in the background; Redis
    /// writes before `record` returns).
    pub async fn flush(&self) {
        if let Store::Sqlite(s) = self {
            s.flush().await;
        }
    }

    /// Drops a conversation Dify no longer knows and its chat mapping; its turns can no longer
    /// be found (SQLite leaves them to expire).
    pub async fn forget(&self, conversation_id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.forget(conversation_id);
                Ok(())
            }
            Store::Redis(r) => r.forget(conversation_id).await,
        }
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.health(),
            Store::Redis(r) => r.health().await,
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match self {
            Store::Sqlite(s) => s.stats(),
            Store::Redis(r) => r.stats().await,
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ConversationRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(filter),
            Store::Redis(r) => r.list(filter).await,
        }
    }

    /// Removes expired records; returns how many conversations were removed. (Redis
    /// expires keys by itself: nothing to do there.)
    pub async fn prune_expired(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune_expired().await,
            Store::Redis(_) => Ok(0),
        }
    }
}
