//! Where conversation mappings live: SQLite on one machine (the default, no setup), Redis
//! when several opendify instances share conversations. `serve` and `doctor` both open the
//! store through [`Store::open`], so the doctor inspects exactly what serving uses. The
//! records themselves are in [`super::record`].

use std::time::Duration;

use super::fingerprint::Fingerprint;
use super::record::{
    ConversationRecord, ListFilter, Placement, ResponseRecord, StoreError, StoreLocation, StoreStats, TurnRecord,
};
use super::redis_store::RedisStore;
use super::sqlite::SqliteStore;

/// The Redis calls are boxed where they are awaited: their futures are large, and unboxed
/// they would size (and be copied with) every request's future, whichever store is in use.
pub enum Store {
    Sqlite(SqliteStore),
    Redis(RedisStore),
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
            Store::Sqlite(s) => s.turn_with_conversation(fp),
            Store::Redis(r) => Box::pin(r.turn_with_conversation(fp)).await,
        }
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.conversation(id),
            Store::Redis(r) => Box::pin(r.conversation(id)).await,
        }
    }

    pub async fn chat(&self, app: &str, user: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.chat(app, user, chat_id),
            Store::Redis(r) => Box::pin(r.chat(app, user, chat_id)).await,
        }
    }

    /// Records an answered turn: the fingerprint, the conversation's new latest turn, and
    /// the chat mapping when the client sent a chat id. One atomic write. `placement` lets
    /// SQLite keep a conversation's opening turn as a single row (Redis has no use for it).
    pub async fn record(
        &self,
        fp: &Fingerprint,
        turn: TurnRecord,
        conversation: ConversationRecord,
        placement: Placement,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record(fp, turn, conversation, placement),
            Store::Redis(r) => Box::pin(r.record(fp, &turn, &conversation)).await,
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
            Store::Redis(r) => Box::pin(r.forget(conversation_id)).await,
        }
    }

    /// Keeps a Responses API response (same TTL as the mappings).
    pub async fn put_response(&self, record: ResponseRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.put_response(record);
                Ok(())
            }
            Store::Redis(r) => Box::pin(r.put_response(&record)).await,
        }
    }

    pub async fn response(&self, id: &str) -> Result<Option<ResponseRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.response(id),
            Store::Redis(r) => Box::pin(r.response(id)).await,
        }
    }

    pub async fn delete_response(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.delete_response(id);
                Ok(())
            }
            Store::Redis(r) => Box::pin(r.delete_response(id)).await,
        }
    }

    /// The lease on a conversation across instances: Redis only (a SQLite store is one
    /// process's, and the in-process lock is enough).
    pub async fn lease(
        &self,
        lock: &str,
        conversation: Option<&str>,
    ) -> Result<Option<super::redis_store::Acquired>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Redis(r) => Box::pin(r.lease(lock, conversation)).await.map(Some),
        }
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.health().await,
            Store::Redis(r) => Box::pin(r.health()).await,
        }
    }

    /// How many conversations are stored, without the rest of [`Store::stats`].
    pub async fn conversation_count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.conversation_count().await,
            Store::Redis(r) => Box::pin(r.conversation_count()).await,
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match self {
            Store::Sqlite(s) => s.stats().await,
            Store::Redis(r) => Box::pin(r.stats()).await,
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ConversationRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(filter).await,
            Store::Redis(r) => Box::pin(r.list(filter)).await,
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
