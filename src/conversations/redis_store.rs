//! The shared store: Redis, so several opendify instances behind a load balancer continue
//! each other's conversations. Every key carries the mapping TTL, so Redis expires old
//! mappings itself. Commands have short timeouts: during a Redis outage a request degrades
//! to a stateless answer instead of hanging.
//!
//! Keys (`{fp}` a fingerprint in hex, `{chat}` a hash of app, user and chat id):
//! `opendify:turn:{fp}` hash, `opendify:conv:{id}` hash, `opendify:convturns:{id}` set of
//! the conversation's fingerprints, `opendify:chat:{chat}` string, `opendify:lease:{lock}`
//! string (which instance is answering in a conversation, see [`Lease`]).

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use super::fingerprint::{Fingerprint, hex};
use super::record::{ConversationRecord, ListFilter, ResponseRecord, StoreError, StoreStats, TurnRecord, now_secs};
use crate::secret::mask_url_credentials as redact_url;

pub struct RedisStore {
    url: String,
    conn: ConnectionManager,
    ttl: Duration,
}

const PREFIX: &str = "opendify";

/// How long a lease lives without renewal: a crashed holder blocks its conversation at
/// most this long.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a holder renews its lease while the answer streams.
const LEASE_RENEW: Duration = Duration::from_secs(5);

/// One conversation, one writer across instances: held by the request answering in a
/// conversation, renewed while its answer streams, released when it is recorded (or
/// dropped). Another instance's request on the same conversation waits until then.
pub struct Lease {
    conn: ConnectionManager,
    key: String,
    token: String,
    renewing: tokio::task::JoinHandle<()>,
}

/// A lease just taken, and what the conversation's latest turn was when it was taken.
pub struct Acquired {
    pub lease: Lease,
    /// Another request held it first: what was read before may be stale.
    pub waited: bool,
    pub latest_turn: Option<u32>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let (mut conn, key, token) =
            (self.conn.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.token));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let released: Result<i64, _> =
                    redis::cmd("EVAL").arg(RELEASE).arg(1).arg(&key).arg(&token).query_async(&mut conn).await;
                if let Err(e) = released {
                    tracing::warn!("⚠️ could not release a conversation lease (it expires by itself): {e}");
                }
            });
        }
    }
}

fn chat_key(app: &str, user: &str, chat_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [app, user, chat_id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let short: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}:chat:{short}")
}

impl RedisStore {
    pub async fn connect(url: &str, ttl: Duration) -> Result<RedisStore, StoreError> {
        let shown = redact_url(url);
        let open_error = |reason: String| {
            StoreError::Open {
            location: shown.clone(),
            reason,
            fix: "start Redis or fix CONVERSATION_STORE (redis://host:port/db); `redis-cli -u URL ping` should answer PONG"
                .into(),
        }
        };
        let client = redis::Client::open(url).map_err(|e| open_error(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_millis(1500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| open_error("no answer within 5s".into()))?
            .map_err(|e| open_error(e.to_string()))?;
        let store = RedisStore { url: url.to_string(), conn, ttl };
        store.health().await.map_err(|e| open_error(e.to_string()))?;
        Ok(store)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, e: redis::RedisError) -> StoreError {
        StoreError::Backend { location: redact_url(&self.url), reason: e.to_string() }
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }

    /// A turn and the conversation it belongs to, in one round trip (a server-side script:
    /// the conversation's key is only known from the turn).
    pub async fn turn_with_conversation(
        &self,
        fp: &Fingerprint,
    ) -> Result<Option<(TurnRecord, Option<ConversationRecord>)>, StoreError> {
        const SCRIPT: &str = "local t = redis.call('HGETALL', KEYS[1])
            if #t == 0 then return {} end
            for i = 1, #t, 2 do
              if t[i] == 'c' then return {t, redis.call('HGETALL', ARGV[1] .. t[i + 1])} end
            end
            return {t}";
        let mut conn = self.conn.clone();
        let replies: Vec<HashMap<String, String>> = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(format!("{PREFIX}:turn:{}", hex(fp)))
            .arg(format!("{PREFIX}:conv:"))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let mut replies = replies.into_iter();
        let Some(fields) = replies.next() else { return Ok(None) };
        let Some(turn) = turn_from(fields) else { return Ok(None) };
        let conversation = replies.next().and_then(|f| conversation_from(&turn.conversation_id, &f));
        Ok(Some((turn, conversation)))
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            conn.hgetall(format!("{PREFIX}:conv:{id}")).await.map_err(|e| self.err(e))?;
        Ok(conversation_from(id, &fields))
    }

    pub async fn chat(&self, app: &str, user: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.get(chat_key(app, user, chat_id)).await.map_err(|e| self.err(e))
    }

    pub async fn record(&self, fp: &Fingerprint, turn: &TurnRecord, c: &ConversationRecord) -> Result<(), StoreError> {
        let ttl = self.ttl_secs();
        let now = now_secs().to_string();
        let turn_key = format!("{PREFIX}:turn:{}", hex(fp));
        let conv_key = format!("{PREFIX}:conv:{}", c.conversation_id);
        let set_key = format!("{PREFIX}:convturns:{}", c.conversation_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &turn_key,
                &[
                    ("c", turn.conversation_id.as_str()),
                    ("t", &turn.turn.to_string()),
                    ("m", turn.message_id.as_deref().unwrap_or("")),
                    ("x", &turn.tools.map(|t| t.to_string()).unwrap_or_default()),
                ],
            )
            .ignore()
            .expire(&turn_key, ttl)
            .ignore()
            .hset_nx(&conv_key, "created", &now)
            .ignore()
            .hset_multiple(
                &conv_key,
                &[
                    ("app", c.app.as_str()),
                    ("model", c.model.as_str()),
                    ("user", c.user.as_str()),
                    ("turn", &c.latest_turn.to_string()),
                    ("msg", c.latest_message_id.as_deref().unwrap_or("")),
                    ("tools", &c.tools.map(|t| t.to_string()).unwrap_or_default()),
                    ("updated", &now),
                ],
            )
            .ignore()
            .expire(&conv_key, ttl)
            .ignore()
            .sadd(&set_key, hex(fp))
            .ignore()
            .expire(&set_key, ttl)
            .ignore();
        if let Some(chat_id) = &c.chat_id {
            pipe.hset(&conv_key, "chat", chat_id).ignore();
            pipe.set_ex(chat_key(&c.app, &c.user, chat_id), &c.conversation_id, ttl as u64).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| self.err(e))
    }

    pub async fn forget(&self, conversation_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let conv_key = format!("{PREFIX}:conv:{conversation_id}");
        let set_key = format!("{PREFIX}:convturns:{conversation_id}");
        let fields: HashMap<String, String> = conn.hgetall(&conv_key).await.map_err(|e| self.err(e))?;
        let turns: Vec<String> = conn.smembers(&set_key).await.map_err(|e| self.err(e))?;
        let mut keys: Vec<String> = turns.iter().map(|fp| format!("{PREFIX}:turn:{fp}")).collect();
        keys.push(conv_key);
        keys.push(set_key);
        if let (Some(app), Some(user), Some(chat)) = (fields.get("app"), fields.get("user"), fields.get("chat")) {
            keys.push(chat_key(app, user, chat));
        }
        conn.del::<_, ()>(keys).await.map_err(|e| self.err(e))
    }

    /// Takes the lease on `lock` (a conversation or chat), waiting while another request,
    /// on this instance or another, holds it. `conversation`: whose latest turn to report.
    pub async fn lease(&self, lock: &str, conversation: Option<&str>) -> Result<Acquired, StoreError> {
        // Set if free; then, in the same round trip, the conversation's latest turn.
        const ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              if KEYS[2] ~= '' then return {1, redis.call('HGET', KEYS[2], 'turn') or ''} end
              return {1, ''}
            end
            return {0, ''}";
        let key = format!("{PREFIX}:lease:{}", hex(&Sha256::digest(lock.as_bytes()).into()));
        let conv_key = conversation.map(|id| format!("{PREFIX}:conv:{id}")).unwrap_or_default();
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut conn = self.conn.clone();
        let mut waited = false;
        let mut pause = Duration::from_millis(5);
        loop {
            let (taken, turn): (i64, String) = redis::cmd("EVAL")
                .arg(ACQUIRE)
                .arg(2)
                .arg(&key)
                .arg(if conv_key.is_empty() { "" } else { conv_key.as_str() })
                .arg(&token)
                .arg(LEASE_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            if taken == 1 {
                let renewing = tokio::spawn(renew(conn.clone(), key.clone(), token.clone()));
                let lease = Lease { conn, key, token, renewing };
                return Ok(Acquired { lease, waited, latest_turn: turn.parse().ok() });
            }
            // Held elsewhere: poll, backing off to 100 ms (answers take seconds).
            waited = true;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub async fn put_response(&self, r: &ResponseRecord) -> Result<(), StoreError> {
        let key = format!("{PREFIX}:resp:{}", r.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("app", r.app.as_str()),
                    ("user", r.user.as_str()),
                    ("conv", r.conversation_id.as_deref().unwrap_or("")),
                    ("tools", &r.tools.map(|t| t.to_string()).unwrap_or_default()),
                    ("body", r.body.as_str()),
                ],
            )
            .ignore()
            .expire(&key, self.ttl_secs())
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| self.err(e))
    }

    pub async fn response(&self, id: &str) -> Result<Option<ResponseRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let mut f: HashMap<String, String> =
            conn.hgetall(format!("{PREFIX}:resp:{id}")).await.map_err(|e| self.err(e))?;
        let (Some(app), Some(user), Some(body)) = (f.remove("app"), f.remove("user"), f.remove("body")) else {
            return Ok(None);
        };
        Ok(Some(ResponseRecord {
            id: id.to_string(),
            app,
            user,
            conversation_id: f.remove("conv").filter(|c| !c.is_empty()),
            tools: f.get("tools").and_then(|t| t.parse().ok()),
            body,
        }))
    }

    pub async fn delete_response(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(format!("{PREFIX}:resp:{id}")).await.map_err(|e| self.err(e))
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| self.err(e))?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Backend { location: redact_url(&self.url), reason: format!("PING answered {pong:?}") })
        }
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            keys.extend(batch);
            if next == 0 || keys.len() > 1_000_000 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn all_conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        let keys = self.scan(&format!("{PREFIX}:conv:*")).await?;
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for key in keys {
            let fields: HashMap<String, String> = conn.hgetall(&key).await.map_err(|e| self.err(e))?;
            let id = key.trim_start_matches(&format!("{PREFIX}:conv:")).to_string();
            if let Some(record) = conversation_from(&id, &fields) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// How many conversations are stored (`/metrics`): their keys counted, none read.
    pub async fn conversation_count(&self) -> Result<u64, StoreError> {
        Ok(self.scan(&format!("{PREFIX}:conv:*")).await?.len() as u64)
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let conversations = self.all_conversations().await?;
        let mut stats = StoreStats {
            conversations: conversations.len() as u64,
            turns: self.scan(&format!("{PREFIX}:turn:*")).await?.len() as u64,
            chats: self.scan(&format!("{PREFIX}:chat:*")).await?.len() as u64,
            oldest_updated_at: conversations.iter().map(|c| c.updated_at).min(),
            newest_updated_at: conversations.iter().map(|c| c.updated_at).max(),
            ..StoreStats::default()
        };
        let mut per_user: HashMap<String, u64> = HashMap::new();
        let mut per_model: HashMap<String, u64> = HashMap::new();
        for c in &conversations {
            *per_user.entry(c.user.clone()).or_default() += 1;
            *per_model.entry(c.model.clone()).or_default() += 1;
        }
        let sorted = |m: HashMap<String, u64>| {
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(50);
            v
        };
        stats.per_user = sorted(per_user);
        stats.per_model = sorted(per_model);
        Ok(stats)
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut all: Vec<ConversationRecord> = self
            .all_conversations()
            .await?
            .into_iter()
            .filter(|c| filter.user.as_ref().is_none_or(|u| &c.user == u))
            .filter(|c| filter.chat_id.as_ref().is_none_or(|ch| c.chat_id.as_ref() == Some(ch)))
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.updated_at));
        all.truncate(if filter.limit == 0 { 100 } else { filter.limit });
        Ok(all)
    }
}

/// Keeps a lease alive while its answer streams (aborted when the lease is dropped).
async fn renew(mut conn: ConnectionManager, key: String, token: String) {
    const RENEW: &str =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let renewed: Result<i64, _> = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&key)
            .arg(&token)
            .arg(LEASE_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!("⚠️ a conversation lease expired while its answer was still streaming");
                return;
            }
            Err(e) => tracing::warn!("⚠️ could not renew a conversation lease: {e}"),
        }
    }
}

fn turn_from(mut fields: HashMap<String, String>) -> Option<TurnRecord> {
    Some(TurnRecord {
        conversation_id: fields.remove("c")?,
        turn: fields.get("t").and_then(|t| t.parse().ok()).unwrap_or(0),
        message_id: fields.remove("m").filter(|m| !m.is_empty()),
        tools: fields.get("x").and_then(|x| x.parse().ok()),
        // Redis writes every conversation's hash with its first turn.
        opening: false,
    })
}

fn conversation_from(id: &str, f: &HashMap<String, String>) -> Option<ConversationRecord> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(ConversationRecord {
        conversation_id: id.to_string(),
        app: f.get("app")?.clone(),
        model: f.get("model").cloned().unwrap_or_default(),
        user: f.get("user").cloned().unwrap_or_default(),
        chat_id: f.get("chat").cloned().filter(|c| !c.is_empty()),
        latest_turn: num("turn") as u32,
        latest_message_id: f.get("msg").cloned().filter(|m| !m.is_empty()),
        tools: f.get("tools").and_then(|x| x.parse().ok()),
        created_at: num("created"),
        updated_at: num("updated"),
    })
}
