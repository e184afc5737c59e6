//! The embedded store: one SQLite file in WAL mode. Each answered turn is one transaction,
//! committed before the client receives `[DONE]`, so a crash of opendify loses nothing it
//! acknowledged. Operations take microseconds, so they run inline under one mutex rather
//! than hopping to a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::fingerprint::Fingerprint;
use super::store::{ConversationRecord, ListFilter, StoreError, StoreStats, TurnRecord, now_secs};

const SCHEMA_VERSION: &str = "1";
/// Size bound: beyond this many turns, the oldest are pruned first.
const MAX_TURNS: i64 = 2_000_000;
/// Legacy mappings imported from the original proxy match any app and user.
pub const ANY: &str = "*";

pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    ttl: Duration,
    /// Answered turns waiting for their commit (see [`SqliteStore::record_grouped`]).
    group: Arc<Mutex<Group>>,
}

/// Group commit: turns answered at the same time are written in one transaction. Each is
/// still committed before its own client sees the end of the answer, but they share the
/// locks, the commit and the WAL frames of the pages they touch in common.
#[derive(Default)]
struct Group {
    queue: Vec<Pending>,
    /// A writer is at work: a new turn only joins the queue.
    writing: bool,
}

struct Pending {
    fp: Fingerprint,
    turn: TurnRecord,
    conversation: ConversationRecord,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
struct Writer {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    group: Arc<Mutex<Group>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Writes the queued turns, at most `inline` batches on this thread; what is still
    /// queued then goes to a blocking task, so no request waits on the turns of many others.
    fn drain(&self, mut inline: usize) {
        loop {
            let batch = {
                let mut group = lock(&self.group);
                if group.queue.is_empty() {
                    group.writing = false;
                    return;
                }
                if inline == 0 {
                    break;
                }
                std::mem::take(&mut group.queue)
            };
            inline -= 1;
            self.write(batch);
        }
        let writer = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || writer.drain(usize::MAX))),
            Err(_) => writer.drain(usize::MAX),
        }
    }

    fn write(&self, batch: Vec<Pending>) {
        let mut conn = lock(&self.conn);
        let result = write_turns(&mut conn, &self.path, batch.iter().map(|p| (&p.fp, &p.turn, &p.conversation)));
        if result.is_err() && batch.len() > 1 {
            // One bad turn must not fail the others: each gets its own transaction.
            for p in batch {
                let one = write_turns(&mut conn, &self.path, std::iter::once((&p.fp, &p.turn, &p.conversation)));
                let _ = p.done.send(one);
            }
            return;
        }
        for p in batch {
            let _ = p.done.send(result.clone());
        }
    }
}

fn backend(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { location: path.display().to_string(), reason: e.to_string() }
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("not a database") || text.contains("malformed") || text.contains("no such table") {
        StoreError::Corrupt { location: path.display().to_string(), reason: text }
    } else if text.contains("readonly") || text.contains("unable to open") || text.contains("permission") {
        StoreError::Open { location: path.display().to_string(), reason: text, fix: writable_fix(path) }
    } else {
        backend(path, text)
    }
}

fn writable_fix(path: &Path) -> String {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    format!(
        "make {} writable by the user running opendify (e.g. chown -R $(id -u) {}), or set CONVERSATION_STORE to a writable path",
        dir.display(),
        dir.display()
    )
}

impl SqliteStore {
    pub fn open(path: &Path, ttl: Duration, create: bool) -> Result<SqliteStore, StoreError> {
        let location = path.display().to_string();
        if create && let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                location: location.clone(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
                fix: writable_fix(path),
            })?;
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| classify(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| classify(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| classify(path, e))?;
        // Checkpoint every 16 MiB of WAL rather than 4: pages every turn touches (the ends
        // of the time indexes) are copied back once per checkpoint, not four times. (A
        // checkpoint on a connection of its own, in the background, was tried: it fell behind
        // under load, the WAL grew, and turns stalled for tens of ms.)
        conn.pragma_update(None, "wal_autocheckpoint", 4000).map_err(|e| classify(path, e))?;
        if create {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS turns (
                     fingerprint BLOB PRIMARY KEY, conversation_id TEXT NOT NULL, turn INTEGER NOT NULL,
                     message_id TEXT, updated_at INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS turns_conversation ON turns(conversation_id);
                 CREATE INDEX IF NOT EXISTS turns_updated ON turns(updated_at);
                 CREATE TABLE IF NOT EXISTS conversations (
                     conversation_id TEXT PRIMARY KEY, app TEXT NOT NULL, model TEXT NOT NULL, user TEXT NOT NULL,
                     chat_id TEXT, latest_turn INTEGER NOT NULL, latest_message_id TEXT,
                     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS conversations_user ON conversations(user);
                 CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated_at);
                 CREATE TABLE IF NOT EXISTS chats (
                     app TEXT NOT NULL, user TEXT NOT NULL, chat_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
                     updated_at INTEGER NOT NULL, PRIMARY KEY (app, user, chat_id)) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS chats_conversation ON chats(conversation_id);
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');",
            )
            .map_err(|e| classify(path, e))?;
        }
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(|e| classify(path, e))?;
        match version.as_deref() {
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt { location, reason: format!("unknown schema version {other}") });
            }
            None => return Err(StoreError::Corrupt { location, reason: "no schema version".into() }),
        }
        let store =
            SqliteStore { path: path.to_path_buf(), conn: Arc::new(Mutex::new(conn)), ttl, group: Arc::default() };
        if create {
            store.import_legacy();
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    fn cutoff(&self) -> i64 {
        now_secs().saturating_sub(self.ttl.as_secs()) as i64
    }

    pub fn turn(&self, fp: &Fingerprint) -> Result<Option<TurnRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT conversation_id, turn, message_id FROM turns WHERE fingerprint = ?1 AND updated_at >= ?2",
            )
            .map_err(|e| classify(&self.path, e))?;
        stmt.query_row(params![&fp[..], self.cutoff()], |r| {
            Ok(TurnRecord { conversation_id: r.get(0)?, turn: r.get(1)?, message_id: r.get(2)? })
        })
        .optional()
        .map_err(|e| classify(&self.path, e))
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("{SELECT_CONVERSATION} WHERE conversation_id = ?1 AND updated_at >= ?2"))
            .map_err(|e| classify(&self.path, e))?;
        stmt.query_row(params![id, self.cutoff()], row_to_conversation).optional().map_err(|e| classify(&self.path, e))
    }

    pub fn chat(&self, app: &str, user: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT conversation_id FROM chats WHERE chat_id = ?3 AND updated_at >= ?4
                   AND ((app = ?1 AND user = ?2) OR (app = '*' AND (user = '*' OR user = ?2)))
                 ORDER BY app = '*' LIMIT 1",
            )
            .map_err(|e| classify(&self.path, e))?;
        stmt.query_row(params![app, user, chat_id, self.cutoff()], |r| r.get(0))
            .optional()
            .map_err(|e| classify(&self.path, e))
    }

    pub fn record(&self, fp: &Fingerprint, turn: &TurnRecord, c: &ConversationRecord) -> Result<(), StoreError> {
        write_turns(&mut self.conn(), &self.path, std::iter::once((fp, turn, c)))
    }

    /// [`SqliteStore::record`] for concurrent callers: the turn joins those being answered at
    /// the same time and is committed with them (group commit). Without contention the
    /// caller writes its turn itself, at once, as `record` does.
    pub async fn record_grouped(
        &self,
        fp: &Fingerprint,
        turn: TurnRecord,
        conversation: ConversationRecord,
    ) -> Result<(), StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut group = lock(&self.group);
            group.queue.push(Pending { fp: *fp, turn, conversation, done });
            !std::mem::replace(&mut group.writing, true)
        };
        if lead {
            Writer { path: self.path.clone(), conn: self.conn.clone(), group: self.group.clone() }.drain(1);
        }
        result.await.unwrap_or_else(|_| Err(backend(&self.path, "the writer of this store stopped")))
    }

    pub fn forget(&self, conversation_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| classify(&self.path, e))?;
        for table in ["turns", "chats", "conversations"] {
            tx.execute(&format!("DELETE FROM {table} WHERE conversation_id = ?1"), params![conversation_id])
                .map_err(|e| classify(&self.path, e))?;
        }
        tx.commit().map_err(|e| classify(&self.path, e))
    }

    pub fn health(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.query_row("SELECT count(*) FROM conversations WHERE rowid < 0", [], |r| r.get::<_, i64>(0))
            .map(drop)
            .map_err(|e| classify(&self.path, e))
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let conn = self.conn();
        let count = |sql: &str| -> Result<u64, StoreError> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(|e| classify(&self.path, e))
        };
        let cutoff = self.cutoff();
        let mut stats = StoreStats {
            conversations: count("SELECT count(*) FROM conversations")?,
            turns: count("SELECT count(*) FROM turns")?,
            chats: count("SELECT count(*) FROM chats")?,
            expired: count(&format!("SELECT count(*) FROM conversations WHERE updated_at < {cutoff}"))?,
            ..StoreStats::default()
        };
        let (oldest, newest): (Option<i64>, Option<i64>) = conn
            .query_row("SELECT min(updated_at), max(updated_at) FROM conversations", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| classify(&self.path, e))?;
        stats.oldest_updated_at = oldest.map(|v| v.max(0) as u64);
        stats.newest_updated_at = newest.map(|v| v.max(0) as u64);
        let group = |column: &str| -> Result<Vec<(String, u64)>, StoreError> {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {column}, count(*) FROM conversations GROUP BY {column} ORDER BY count(*) DESC LIMIT 50"
                ))
                .map_err(|e| classify(&self.path, e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
                .map_err(|e| classify(&self.path, e))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| classify(&self.path, e))
        };
        stats.per_user = group("user")?;
        stats.per_model = group("model")?;
        Ok(stats)
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<ConversationRecord>, StoreError> {
        let conn = self.conn();
        let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
        let mut stmt = conn
            .prepare(&format!(
                "{SELECT_CONVERSATION} WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR chat_id = ?2)
                 ORDER BY updated_at DESC LIMIT ?3"
            ))
            .map_err(|e| classify(&self.path, e))?;
        let rows = stmt
            .query_map(params![filter.user, filter.chat_id, limit], row_to_conversation)
            .map_err(|e| classify(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| classify(&self.path, e))
    }

    pub fn prune_expired(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let cutoff = self.cutoff();
        let tx = conn.transaction().map_err(|e| classify(&self.path, e))?;
        let removed = tx
            .execute("DELETE FROM conversations WHERE updated_at < ?1", params![cutoff])
            .map_err(|e| classify(&self.path, e))?;
        tx.execute("DELETE FROM turns WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(&self.path, e))?;
        tx.execute("DELETE FROM chats WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(&self.path, e))?;
        tx.execute(
            "DELETE FROM turns WHERE fingerprint IN
               (SELECT fingerprint FROM turns ORDER BY updated_at DESC LIMIT -1 OFFSET ?1)",
            params![MAX_TURNS],
        )
        .map_err(|e| classify(&self.path, e))?;
        tx.commit().map_err(|e| classify(&self.path, e))?;
        Ok(removed as u64)
    }

    /// Imports `conversation_mappings.json` of the original proxy, found beside the store,
    /// once. Its chat ids carry no app, so they match any app until first used (a wrong
    /// match is healed by Dify's 404). The file itself is left untouched.
    fn import_legacy(&self) {
        let Some(dir) = self.path.parent() else { return };
        let legacy = if dir.as_os_str().is_empty() {
            PathBuf::from("conversation_mappings.json")
        } else {
            dir.join("conversation_mappings.json")
        };
        let Ok(text) = std::fs::read_to_string(&legacy) else { return };
        let conn = self.conn();
        let done: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'legacy_imported'", [], |r| r.get(0))
            .optional()
            .unwrap_or(None);
        if done.is_some() {
            return;
        }
        let entries = match super::legacy::parse(&text) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("⚠️ not importing {}: {e}", legacy.display());
                return;
            }
        };
        let now = now_secs() as i64;
        let mut imported = 0;
        for entry in &entries {
            let user = entry.user.as_deref().unwrap_or(ANY);
            if conn
                .execute(
                    "INSERT OR IGNORE INTO chats (app, user, chat_id, conversation_id, updated_at) VALUES ('*', ?1, ?2, ?3, ?4)",
                    params![user, entry.chat_id, entry.conversation_id, now],
                )
                .is_ok()
            {
                imported += 1;
            }
        }
        let _ = conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('legacy_imported', ?1)",
            params![now.to_string()],
        );
        tracing::info!(
            "📥 imported {imported} conversation mappings from {} (the original proxy's file; left as it was)",
            legacy.display()
        );
    }
}

/// Writes turns in one transaction: for each, the fingerprint, the conversation's new latest
/// turn and, when the client sent a chat id, the chat mapping.
fn write_turns<'a>(
    conn: &mut Connection,
    path: &Path,
    turns: impl Iterator<Item = (&'a Fingerprint, &'a TurnRecord, &'a ConversationRecord)>,
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(|e| classify(path, e))?;
    let now = now_secs() as i64;
    for (fp, turn, c) in turns {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO turns (fingerprint, conversation_id, turn, message_id, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![&fp[..], turn.conversation_id, turn.turn, turn.message_id, now]))
        .map_err(|e| classify(path, e))?;
        tx.prepare_cached(
            "INSERT INTO conversations (conversation_id, app, model, user, chat_id, latest_turn, latest_message_id,
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(conversation_id) DO UPDATE SET latest_turn = excluded.latest_turn,
                 latest_message_id = excluded.latest_message_id, chat_id = COALESCE(excluded.chat_id, chat_id),
                 model = excluded.model, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                c.conversation_id,
                c.app,
                c.model,
                c.user,
                c.chat_id,
                c.latest_turn,
                c.latest_message_id,
                now
            ])
        })
        .map_err(|e| classify(path, e))?;
        if let Some(chat_id) = &c.chat_id {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO chats (app, user, chat_id, conversation_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![c.app, c.user, chat_id, c.conversation_id, now]))
            .map_err(|e| classify(path, e))?;
            // A legacy mapping is claimed by the first app and user that use it.
            tx.prepare_cached("DELETE FROM chats WHERE app = '*' AND chat_id = ?1")
                .and_then(|mut s| s.execute(params![chat_id]))
                .map_err(|e| classify(path, e))?;
        }
    }
    tx.commit().map_err(|e| classify(path, e))
}

const SELECT_CONVERSATION: &str = "SELECT conversation_id, app, model, user, chat_id, latest_turn, latest_message_id, created_at, updated_at FROM conversations";

fn row_to_conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationRecord> {
    Ok(ConversationRecord {
        conversation_id: r.get(0)?,
        app: r.get(1)?,
        model: r.get(2)?,
        user: r.get(3)?,
        chat_id: r.get(4)?,
        latest_turn: r.get(5)?,
        latest_message_id: r.get(6)?,
        created_at: r.get::<_, i64>(7)?.max(0) as u64,
        updated_at: r.get::<_, i64>(8)?.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(i: u8) -> (Fingerprint, TurnRecord, ConversationRecord) {
        let conversation_id = format!("conversation-{i}");
        let turn = TurnRecord { conversation_id: conversation_id.clone(), turn: 1, message_id: None };
        let conversation = ConversationRecord {
            conversation_id,
            app: "app".into(),
            model: "m".into(),
            user: "u".into(),
            chat_id: i.is_multiple_of(2).then(|| format!("chat-{i}")),
            latest_turn: 1,
            latest_message_id: None,
            created_at: 0,
            updated_at: 0,
        };
        ([i; 32], turn, conversation)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_recorded_at_once_are_all_committed_before_their_callers_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("c.db"), Duration::from_secs(3600), true).expect("open"));
        let writers: Vec<_> = (0..64u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (fp, t, c) = turn(i);
                    store.record_grouped(&fp, t, c).await?;
                    // Committed before the caller goes on: visible at once.
                    store.turn(&fp)
                })
            })
            .collect();
        for (i, writer) in writers.into_iter().enumerate() {
            let found = writer.await.expect("join").expect("recorded and read");
            assert_eq!(found.map(|t| t.conversation_id), Some(format!("conversation-{i}")));
        }
        assert_eq!(store.chat("app", "u", "chat-4").expect("chat"), Some("conversation-4".into()));
        assert_eq!(store.stats().expect("stats").conversations, 64);
    }

    /// Turns that fill the WAL past its checkpoint threshold (4000 pages) more than once.
    const CHECKPOINT_EVERY: usize = 500;

    #[test]
    fn the_wal_is_checkpointed_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        for i in 0..(4 * CHECKPOINT_EVERY) {
            let (mut fp, t, c) = turn((i % 251) as u8);
            fp[..8].copy_from_slice(&(i as u64).to_le_bytes());
            store.record(&fp, &t, &c).expect("record");
        }
        // Without checkpoints the WAL would hold every turn's pages (some 35 KiB a turn).
        let wal = std::fs::metadata(dir.path().join("c.db-wal")).expect("wal").len();
        assert!(wal < (2 * CHECKPOINT_EVERY * 40 * 1024) as u64, "WAL grew to {wal} bytes");
        drop(store);
        let reopened = SqliteStore::open(&path, Duration::from_secs(3600), false).expect("reopen");
        assert_eq!(reopened.stats().expect("stats").turns, (4 * CHECKPOINT_EVERY) as u64);
    }
}
