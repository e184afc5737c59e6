//! The embedded store: one SQLite file in WAL mode.
//!
//! Serving never waits on the disk. An answered turn goes into memory at once (the next
//! request sees it) and a writer thread commits what accumulated, at most [`FLUSH_DELAY`]
//! later, in one transaction: a turn costs its b-tree inserts, not a commit of its own with
//! every page it touched written again. Lookups read memory first, then the file through a
//! connection of their own, so they never queue behind a commit. What is in memory is written
//! when the store closes (shutdown); a crash can lose the last [`FLUSH_DELAY`] of turns, and
//! those conversations continue as new ones seeded with their history. (With
//! `synchronous=NORMAL`, which WAL mode is made for, a power cut could already lose the last
//! commits.)
//!
//! A conversation's opening turn is one row. Each row keyed by a random value (a fingerprint,
//! Dify's conversation id) costs a turn a page written at a random place in the file, and
//! most conversations through an API are a single question: so until a conversation has a
//! second turn, its opening turn's row also carries the conversation (`app` is set on it) and
//! the conversations table has no row for it. The second turn writes that row and clears the
//! mark. Opening turns of conversations with a client chat id are not kept this way: the
//! chat's row is written anyway, and the chat's conversation is looked up by its id.
//! A forgotten conversation leaves a tombstone row (`latest_turn` 0) until its turns expire,
//! so that an opening turn is not found again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::fingerprint::Fingerprint;
use super::record::{
    ConversationRecord, ListFilter, Placement, ResponseRecord, StoreError, StoreStats, TurnRecord, now_secs,
};

/// The in-memory maps of pending turns: foldhash (randomly seeded per process) instead of
/// SipHash, which showed in every turn's profile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const SCHEMA_VERSION: &str = "1";
/// Size bound: beyond this many turns, the oldest are pruned first.
const MAX_TURNS: i64 = 2_000_000;
/// Checkpoint every 16 MiB of WAL rather than SQLite's 4: a page that every commit touches is
/// copied back once per checkpoint, not four times. (64 MiB saves another 10% of a turn's
/// store CPU in a 150k-turn file, for a WAL file four times larger.)
const CHECKPOINT_PAGES: i64 = 4_000;
/// Legacy mappings imported from the original proxy match any app and user.
pub const ANY: &str = "*";
/// `latest_turn` of a forgotten conversation's tombstone.
const TOMBSTONE: i64 = 0;
/// How long an answered turn may wait in memory for the commit it shares with others.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// A batch this large is committed without waiting for the delay.
const MAX_BATCH: usize = 4096;
/// Turns waiting beyond this (the disk stalls) are not queued: they are answered, logged,
/// and not remembered, rather than growing memory without bound.
const MAX_PENDING: usize = 100_000;

pub struct SqliteStore {
    path: PathBuf,
    ttl: Duration,
    /// The turns table has the columns of opening rows (a file the doctor opens may be from
    /// an earlier version; serving adds them).
    opening_rows: bool,
    /// Lookups, the doctor's reads. The writer thread has its own connection.
    reader: Arc<Mutex<Connection>>,
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// What is queued for the writer, and what lookups must see until it is committed.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    /// When the oldest queued op was queued (the writer commits [`FLUSH_DELAY`] after).
    since: Option<Instant>,
    /// Set on close: the writer commits what is queued and stops.
    closing: bool,
    seq: u64,
    turns: HashMap<Fingerprint, (u64, TurnRecord)>,
    conversations: HashMap<String, (u64, ConversationRecord)>,
    chats: HashMap<(String, String, String), (u64, String)>,
    /// Conversations dropped but not yet deleted from the file: invisible to lookups.
    forgotten: HashMap<String, u64>,
    /// Responses kept (`Some`) or deleted (`None`) and not yet committed.
    responses: HashMap<String, (u64, Option<ResponseRecord>)>,
    /// Turns not queued because the writer had fallen too far behind (logged once a burst).
    overflowed: bool,
}

// Nearly every op is a Record: boxing it would only add an allocation per turn.
#[allow(clippy::large_enum_variant)]
enum Op {
    /// `opening`: the turn's row stands for its conversation (see the module comment);
    /// `clears`: the opening turn whose mark this turn's conversation row replaces.
    Record {
        seq: u64,
        fp: Fingerprint,
        turn: TurnRecord,
        conversation: ConversationRecord,
        opening: bool,
        clears: Option<Fingerprint>,
    },
    Forget {
        seq: u64,
        conversation_id: String,
    },
    Response {
        seq: u64,
        id: String,
        record: Option<ResponseRecord>,
    },
    Prune(tokio::sync::oneshot::Sender<Result<u64, StoreError>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Op {
    fn urgent(&self) -> bool {
        matches!(self, Op::Prune(_) | Op::Flush(_))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { location: path.display().to_string(), reason: e.to_string() }
}

/// What a SQLite failure means for a person, by SQLite's own error code.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let location = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { location, reason: e.to_string() }
        }
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::Open { location, reason: e.to_string(), fix: writable_fix(path) }
        }
        _ => backend(path, e),
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

fn connect(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| classify(path, e))?;
    // 512 KiB of page cache per connection (SQLite's default is 2 MiB): enough for the
    // interior pages every lookup and insert walks; leaves on random keys miss either way and
    // come from the kernel's page cache.
    conn.pragma_update(None, "cache_size", -512).map_err(|e| classify(path, e))?;
    Ok(conn)
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
        let conn = connect(path, create)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES).map_err(|e| classify(path, e))?;
        if create {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS turns (
                     fingerprint BLOB PRIMARY KEY, conversation_id TEXT NOT NULL, turn INTEGER NOT NULL,
                     message_id TEXT, updated_at INTEGER NOT NULL, tools INTEGER,
                     app TEXT, model TEXT, user TEXT) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS conversations (
                     conversation_id TEXT PRIMARY KEY, app TEXT NOT NULL, model TEXT NOT NULL, user TEXT NOT NULL,
                     chat_id TEXT, latest_turn INTEGER NOT NULL, latest_message_id TEXT,
                     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, tools INTEGER);
                 CREATE TABLE IF NOT EXISTS responses (
                     id TEXT PRIMARY KEY, app TEXT NOT NULL, user TEXT NOT NULL, conversation_id TEXT,
                     tools INTEGER, body TEXT NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS chats (
                     app TEXT NOT NULL, user TEXT NOT NULL, chat_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
                     updated_at INTEGER NOT NULL, PRIMARY KEY (app, user, chat_id)) WITHOUT ROWID;
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
                 -- Each secondary index costs every turn a B-tree insert, and one on a random
                 -- key a page write. Turns of a dropped conversation are left to expire (lookups
                 -- join the conversation); the hourly prune and the doctor's rare listings scan
                 -- instead of keeping time indexes (20% of a turn's cost with random
                 -- fingerprints): files from earlier versions lose these five.
                 DROP INDEX IF EXISTS turns_conversation;
                 DROP INDEX IF EXISTS conversations_user;
                 DROP INDEX IF EXISTS chats_conversation;
                 DROP INDEX IF EXISTS turns_updated;
                 DROP INDEX IF EXISTS conversations_updated;",
            )
            .map_err(|e| classify(path, e))?;
            // Files from before tool emulation get the column for its definitions hash, and
            // files from before opening turns were kept as one row the conversation's columns.
            for table in ["turns", "conversations"] {
                add_column_if_missing(&conn, path, table, "tools", "INTEGER")?;
            }
            for column in ["app", "model", "user"] {
                add_column_if_missing(&conn, path, "turns", column, "TEXT")?;
            }
        }
        let has_meta: bool = conn
            .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| {
                r.get(0)
            })
            .map_err(|e| classify(path, e))?;
        if !has_meta {
            return Err(StoreError::Corrupt { location, reason: "not an opendify store (no meta table)".into() });
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
        if create {
            import_legacy(&conn, path);
        }
        let opening_rows = has_column(&conn, path, "turns", "app")?;
        let reader = connect(path, false)?;
        let shared = Arc::new(Shared { pending: Mutex::default(), wake: Condvar::new() });
        let writer = {
            let shared = shared.clone();
            let owned = path.to_path_buf();
            std::thread::Builder::new()
                .name("opendify-store".into())
                .spawn(move || write_loop(conn, &owned, ttl, &shared))
                .map_err(|e| backend(path, format!("cannot start the store's writer thread: {e}")))?
        };
        Ok(SqliteStore {
            path: path.to_path_buf(),
            ttl,
            opening_rows,
            reader: Arc::new(Mutex::new(reader)),
            shared,
            writer: Some(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.reader)
    }

    fn cutoff(&self) -> i64 {
        now_secs().saturating_sub(self.ttl.as_secs()) as i64
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        lock(&self.shared.pending)
    }

    fn is_forgotten(&self, conversation_id: &str) -> bool {
        let pending = self.pending();
        !pending.forgotten.is_empty() && pending.forgotten.contains_key(conversation_id)
    }

    /// The turn alone (the tests' view; serving reads it with its conversation).
    #[cfg(test)]
    pub fn turn(&self, fp: &Fingerprint) -> Result<Option<TurnRecord>, StoreError> {
        Ok(self.turn_with_conversation(fp)?.map(|(turn, _)| turn))
    }

    /// The turn with this fingerprint and its conversation: from memory, or one read of the
    /// file (the conversation's row, or the opening turn's row standing for it).
    pub fn turn_with_conversation(
        &self,
        fp: &Fingerprint,
    ) -> Result<Option<(TurnRecord, Option<ConversationRecord>)>, StoreError> {
        let pending_turn = self.pending().turns.get(fp).map(|(_, turn)| turn.clone());
        if let Some(turn) = pending_turn {
            let conversation = self.conversation(&turn.conversation_id)?;
            return Ok(Some((turn, conversation)));
        }
        let cutoff = self.cutoff();
        let found = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(LOOKUP_TURN).map_err(|e| classify(&self.path, e))?;
            stmt.query_row(params![&fp[..], cutoff], |r| row_to_turn(r, cutoff))
                .optional()
                .map_err(|e| classify(&self.path, e))?
        };
        let Some(Some((turn, conversation))) = found else { return Ok(None) };
        let pending = self.pending();
        if pending.forgotten.contains_key(&turn.conversation_id) {
            return Ok(None);
        }
        // A later turn of the conversation may still be in memory.
        let conversation = match pending.conversations.get(&turn.conversation_id) {
            Some((_, newer)) => Some(newer.clone()),
            None => conversation,
        };
        Ok(Some((turn, conversation)))
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        {
            let pending = self.pending();
            if let Some((_, c)) = pending.conversations.get(id) {
                return Ok(Some(c.clone()));
            }
            if pending.forgotten.contains_key(id) {
                return Ok(None);
            }
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "{SELECT_CONVERSATION_TOOLS} WHERE conversation_id = ?1 AND updated_at >= ?2 AND latest_turn != {TOMBSTONE}"
            ))
            .map_err(|e| classify(&self.path, e))?;
        stmt.query_row(params![id, self.cutoff()], row_to_conversation).optional().map_err(|e| classify(&self.path, e))
    }

    pub fn chat(&self, app: &str, user: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        {
            let pending = self.pending();
            if !pending.chats.is_empty()
                && let Some((_, id)) = pending.chats.get(&(app.to_string(), user.to_string(), chat_id.to_string()))
            {
                return Ok(Some(id.clone()));
            }
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT conversation_id FROM chats WHERE chat_id = ?3 AND updated_at >= ?4
                   AND ((app = ?1 AND user = ?2) OR (app = '*' AND (user = '*' OR user = ?2)))
                 ORDER BY app = '*' LIMIT 1",
            )
            .map_err(|e| classify(&self.path, e))?;
        let found: Option<String> = stmt
            .query_row(params![app, user, chat_id, self.cutoff()], |r| r.get(0))
            .optional()
            .map_err(|e| classify(&self.path, e))?;
        Ok(found.filter(|id| !self.is_forgotten(id)))
    }

    /// Records an answered turn: visible to lookups at once, committed by the writer
    /// thread within [`FLUSH_DELAY`] (see the module comment).
    pub fn record(
        &self,
        fp: &Fingerprint,
        mut turn: TurnRecord,
        c: ConversationRecord,
        placement: Placement,
    ) -> Result<(), StoreError> {
        let (opening, clears) = match placement {
            Placement::Opening => (c.chat_id.is_none(), None),
            Placement::Next { opening } => (false, opening),
        };
        turn.opening = opening;
        let mut pending = self.pending();
        if pending.ops.len() >= MAX_PENDING {
            let first = !std::mem::replace(&mut pending.overflowed, true);
            drop(pending);
            if first {
                tracing::warn!(
                    "⚠️ conversation store {}: {MAX_PENDING} turns are waiting for the disk; new turns are answered but not remembered until it catches up",
                    self.path.display()
                );
            }
            return Err(backend(&self.path, "the store is not keeping up with the disk"));
        }
        pending.overflowed = false;
        pending.seq += 1;
        let seq = pending.seq;
        pending.turns.insert(*fp, (seq, turn.clone()));
        if let Some(chat_id) = &c.chat_id {
            pending.chats.insert((c.app.clone(), c.user.clone(), chat_id.clone()), (seq, c.conversation_id.clone()));
        }
        let now = now_secs();
        let mut visible = c.clone();
        if let Some((_, earlier)) = pending.conversations.get(&c.conversation_id) {
            visible.created_at = earlier.created_at;
            visible.chat_id = visible.chat_id.or_else(|| earlier.chat_id.clone());
        } else if visible.created_at == 0 {
            visible.created_at = now;
        }
        visible.updated_at = now;
        pending.conversations.insert(c.conversation_id.clone(), (seq, visible));
        self.queue(pending, Op::Record { seq, fp: *fp, turn, conversation: c, opening, clears });
        Ok(())
    }

    fn queue(&self, mut pending: MutexGuard<'_, Pending>, op: Op) {
        let notify = pending.ops.is_empty() || op.urgent();
        if pending.ops.is_empty() {
            pending.since = Some(Instant::now());
        }
        pending.ops.push(op);
        drop(pending);
        if notify {
            self.shared.wake.notify_one();
        }
    }

    /// Waits until everything recorded so far is committed.
    pub async fn flush(&self) {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.queue(self.pending(), Op::Flush(done));
        let _ = committed.await;
    }

    /// Drops a conversation: invisible at once, deleted from the file with the next commit.
    pub fn forget(&self, conversation_id: &str) {
        let mut pending = self.pending();
        pending.seq += 1;
        let seq = pending.seq;
        pending.turns.retain(|_, (_, t)| t.conversation_id != conversation_id);
        pending.chats.retain(|_, (_, id)| id != conversation_id);
        pending.conversations.remove(conversation_id);
        pending.forgotten.insert(conversation_id.to_string(), seq);
        self.queue(pending, Op::Forget { seq, conversation_id: conversation_id.to_string() });
    }

    /// Keeps a response (visible at once, committed with the next batch).
    pub fn put_response(&self, record: ResponseRecord) {
        self.queue_response(record.id.clone(), Some(record));
    }

    pub fn delete_response(&self, id: &str) {
        self.queue_response(id.to_string(), None);
    }

    fn queue_response(&self, id: String, record: Option<ResponseRecord>) {
        let mut pending = self.pending();
        pending.seq += 1;
        let seq = pending.seq;
        pending.responses.insert(id.clone(), (seq, record.clone()));
        self.queue(pending, Op::Response { seq, id, record });
    }

    pub fn response(&self, id: &str) -> Result<Option<ResponseRecord>, StoreError> {
        if let Some((_, record)) = self.pending().responses.get(id) {
            return Ok(record.clone());
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, app, user, conversation_id, tools, body FROM responses WHERE id = ?1 AND updated_at >= ?2",
            )
            .map_err(|e| classify(&self.path, e))?;
        stmt.query_row(params![id, self.cutoff()], |r| {
            Ok(ResponseRecord {
                id: r.get(0)?,
                app: r.get(1)?,
                user: r.get(2)?,
                conversation_id: r.get(3)?,
                tools: hash_of(r.get(4)?),
                body: r.get(5)?,
            })
        })
        .optional()
        .map_err(|e| classify(&self.path, e))
    }

    /// Runs `read` on the reader connection on a blocking thread: the scans of the doctor,
    /// `/metrics` and `/ready` may take a while on a large file, and must not hold a tokio
    /// worker (nor make the timeouts around them unable to fire).
    async fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, &Path, i64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reader, path, cutoff) = (self.reader.clone(), self.path.clone(), self.cutoff());
        tokio::task::spawn_blocking(move || read(&lock(&reader), &path, cutoff))
            .await
            .unwrap_or_else(|e| Err(backend(&self.path, format!("the read was interrupted: {e}"))))
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        self.read_blocking(|conn, path, _| {
            conn.query_row("SELECT count(*) FROM conversations WHERE rowid < 0", [], |r| r.get::<_, i64>(0))
                .map(drop)
                .map_err(|e| classify(path, e))
        })
        .await
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let every = self.every_conversation();
        self.read_blocking(move |conn, path, cutoff| stats(conn, path, cutoff, every)).await
    }

    /// How many conversations the file holds (`/metrics`): two counts, not the doctor's stats.
    /// A conversation continued by its id alone while its opening turn was still marked is
    /// counted twice until the hourly prune clears the mark (finding each such turn costs a
    /// lookup per opening turn: seconds for a million).
    pub async fn conversation_count(&self) -> Result<u64, StoreError> {
        let sql = if self.opening_rows { COUNT_CONVERSATIONS } else { COUNT_CONVERSATION_ROWS };
        self.read_blocking(move |conn, path, _| count_rows(conn, path, sql)).await
    }

    /// Every conversation the file holds, as rows [`row_to_conversation`] reads (no column a
    /// file from an earlier version may lack).
    fn every_conversation(&self) -> &'static str {
        if self.opening_rows { EVERY_CONVERSATION } else { EVERY_CONVERSATION_ROW }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ConversationRecord>, StoreError> {
        let filter = filter.clone();
        let every = self.every_conversation();
        self.read_blocking(move |conn, path, _| {
            let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT * FROM {every} WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR chat_id = ?2)
                     ORDER BY updated_at DESC LIMIT ?3"
                ))
                .map_err(|e| classify(path, e))?;
            let rows = stmt
                .query_map(params![filter.user, filter.chat_id, limit], row_to_conversation)
                .map_err(|e| classify(path, e))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| classify(path, e))
        })
        .await
    }

    /// Removes expired records (on the writer thread, between commits).
    pub async fn prune_expired(&self) -> Result<u64, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.queue(self.pending(), Op::Prune(done));
        result.await.unwrap_or_else(|_| Err(backend(&self.path, "the writer of this store stopped")))
    }
}

impl Drop for SqliteStore {
    /// Commits what is still in memory before the store goes away.
    fn drop(&mut self) {
        lock(&self.shared.pending).closing = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The conversations that have a row, in the columns [`row_to_conversation`] reads (none a
/// file from an earlier version may lack); `0` is [`TOMBSTONE`]: tombstones are not
/// conversations. A macro, so that the queries below are built from it at compile time.
macro_rules! conversation_rows {
    () => {
        "SELECT conversation_id, app, model, user, chat_id, latest_turn, latest_message_id,
            created_at, updated_at FROM conversations WHERE latest_turn != 0"
    };
}
const COUNT_CONVERSATION_ROWS: &str = concat!("SELECT count(*) FROM (", conversation_rows!(), ")");
const COUNT_CONVERSATIONS: &str = concat!(
    "SELECT (SELECT count(*) FROM (",
    conversation_rows!(),
    ")) + (SELECT count(*) FROM turns WHERE app IS NOT NULL)"
);
/// Every conversation with a row.
const EVERY_CONVERSATION_ROW: &str = concat!("(", conversation_rows!(), ")");
/// Every conversation: those with a row, and those whose opening turn stands for them (its
/// mark is left on a conversation continued by id alone: such a one is counted once).
const EVERY_CONVERSATION: &str = concat!(
    "(",
    conversation_rows!(),
    " UNION ALL
   SELECT t.conversation_id, t.app, t.model, t.user, NULL, t.turn, t.message_id, t.updated_at, t.updated_at
     FROM turns t WHERE t.app IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = t.conversation_id))"
);

/// The one number a counting query answers.
fn count_rows(conn: &Connection, path: &Path, sql: &str) -> Result<u64, StoreError> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64).map_err(|e| classify(path, e))
}

/// Counts and ages of what the file holds (the doctor). `every`: [`EVERY_CONVERSATION`] or,
/// in a file from before opening rows, [`EVERY_CONVERSATION_ROW`].
fn stats(conn: &Connection, path: &Path, cutoff: i64, every: &str) -> Result<StoreStats, StoreError> {
    let count = |sql: &str| count_rows(conn, path, sql);
    let mut stats = StoreStats {
        conversations: count(&format!("SELECT count(*) FROM {every}"))?,
        turns: count("SELECT count(*) FROM turns")?,
        chats: count("SELECT count(*) FROM chats")?,
        expired: count(&format!("SELECT count(*) FROM {every} WHERE updated_at < {cutoff}"))?,
        ..StoreStats::default()
    };
    let (oldest, newest): (Option<i64>, Option<i64>) = conn
        .query_row(&format!("SELECT min(updated_at), max(updated_at) FROM {every}"), [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| classify(path, e))?;
    stats.oldest_updated_at = oldest.map(|v| v.max(0) as u64);
    stats.newest_updated_at = newest.map(|v| v.max(0) as u64);
    let group = |column: &str| -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {column}, count(*) FROM {every} GROUP BY {column} ORDER BY count(*) DESC LIMIT 50"
            ))
            .map_err(|e| classify(path, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .map_err(|e| classify(path, e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| classify(path, e))
    };
    stats.per_user = group("user")?;
    stats.per_model = group("model")?;
    Ok(stats)
}

/// Deletes what expired before `cutoff` and, beyond `max_turns` turns, the oldest turns.
fn prune(conn: &mut Connection, path: &Path, cutoff: i64, max_turns: i64) -> Result<u64, StoreError> {
    let tx = conn.transaction().map_err(|e| classify(path, e))?;
    let mut removed = tx
        .execute(
            "DELETE FROM turns WHERE updated_at < ?1 AND app IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = turns.conversation_id)",
            params![cutoff],
        )
        .map_err(|e| classify(path, e))?;
    removed += tx
        .execute(
            &format!("DELETE FROM conversations WHERE updated_at < ?1 AND latest_turn != {TOMBSTONE}"),
            params![cutoff],
        )
        .map_err(|e| classify(path, e))?;
    // Tombstones, then the turns they hid: none is newer than its tombstone.
    tx.execute("DELETE FROM conversations WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(path, e))?;
    tx.execute("DELETE FROM turns WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(path, e))?;
    // Opening turns of conversations that got a row since (continued by id alone, so their
    // turn was not known) stop standing for them: counted once again.
    tx.execute(
        "UPDATE turns SET app = NULL, model = NULL, user = NULL WHERE app IS NOT NULL
           AND EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = turns.conversation_id)",
        [],
    )
    .map_err(|e| classify(path, e))?;
    tx.execute("DELETE FROM chats WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(path, e))?;
    tx.execute("DELETE FROM responses WHERE updated_at < ?1", params![cutoff]).map_err(|e| classify(path, e))?;
    // Over the size bound, the oldest turns go. Counted first: without a time index, finding
    // the oldest sorts the table, which only an oversized store should pay for.
    let turns = count_rows(&tx, path, "SELECT count(*) FROM turns")? as i64;
    if turns > max_turns {
        tx.execute(
            "DELETE FROM turns WHERE fingerprint IN
               (SELECT fingerprint FROM turns ORDER BY updated_at ASC LIMIT ?1)",
            params![turns - max_turns],
        )
        .map_err(|e| classify(path, e))?;
    }
    tx.commit().map_err(|e| classify(path, e))?;
    Ok(removed as u64)
}

/// The writer thread: waits for work, lets a batch gather for up to [`FLUSH_DELAY`], commits
/// it in one transaction, then drops from memory what the file now holds.
fn write_loop(mut conn: Connection, path: &Path, ttl: Duration, shared: &Shared) {
    loop {
        let (batch, closing) = {
            let mut pending = lock(&shared.pending);
            loop {
                if pending.closing || pending.ops.iter().any(Op::urgent) || pending.ops.len() >= MAX_BATCH {
                    break;
                }
                match pending.since {
                    None => pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner()),
                    Some(since) => {
                        let Some(left) = FLUSH_DELAY.checked_sub(since.elapsed()) else { break };
                        pending = shared.wake.wait_timeout(pending, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
            pending.since = None;
            (std::mem::take(&mut pending.ops), pending.closing)
        };
        let mut writes = Vec::with_capacity(batch.len());
        let mut prunes = Vec::new();
        let mut flushes = Vec::new();
        for op in batch {
            match op {
                Op::Prune(done) => prunes.push(done),
                Op::Flush(done) => flushes.push(done),
                write => writes.push(write),
            }
        }
        if !writes.is_empty() {
            commit(&mut conn, path, &writes);
            // What the file holds now leaves memory, unless a later op replaced it meanwhile.
            let mut pending = lock(&shared.pending);
            for op in &writes {
                match op {
                    Op::Record { seq, fp, conversation, .. } => {
                        settle(&mut pending.turns, fp, *seq);
                        settle(&mut pending.conversations, &conversation.conversation_id, *seq);
                        if let Some(chat_id) = &conversation.chat_id {
                            let key = (conversation.app.clone(), conversation.user.clone(), chat_id.clone());
                            settle(&mut pending.chats, &key, *seq);
                        }
                    }
                    Op::Forget { seq, conversation_id } => {
                        if pending.forgotten.get(conversation_id) == Some(seq) {
                            pending.forgotten.remove(conversation_id);
                        }
                    }
                    Op::Response { seq, id, .. } => settle(&mut pending.responses, id, *seq),
                    Op::Prune(_) | Op::Flush(_) => {}
                }
            }
        }
        for done in prunes {
            let cutoff = now_secs().saturating_sub(ttl.as_secs()) as i64;
            let _ = done.send(prune(&mut conn, path, cutoff, MAX_TURNS));
        }
        for done in flushes {
            let _ = done.send(());
        }
        if closing {
            return;
        }
    }
}

/// Drops a committed entry from memory, unless a later op (`seq` higher) replaced it.
fn settle<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, (u64, V)>, key: &K, seq: u64) {
    if map.get(key).is_some_and(|(s, _)| *s == seq) {
        map.remove(key);
    }
}

/// Commits a batch in one transaction; when that fails, each op alone, so one bad turn does
/// not lose the others. What still fails is logged: those conversations continue as new ones.
fn commit(conn: &mut Connection, path: &Path, writes: &[Op]) {
    let Err(e) = write_ops(conn, path, writes) else { return };
    let failed = if writes.len() == 1 {
        1
    } else {
        writes.iter().filter(|op| write_ops(conn, path, std::slice::from_ref(*op)).is_err()).count()
    };
    if failed > 0 {
        tracing::warn!(
            "⚠️ could not record {failed} of {} turns in the conversation store: {e}; their next turns start new conversations",
            writes.len()
        );
    }
}

/// A turn; on an opening turn (see the module comment) also its conversation's app, model
/// and user, NULL otherwise.
const PUT_TURN: &str =
    "INSERT OR REPLACE INTO turns (fingerprint, conversation_id, turn, message_id, updated_at, tools, app, model, user)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
/// A conversation's row, new (then created at `?8`, or now) or updated (a tombstone comes
/// back to life whole).
const PUT_CONVERSATION: &str = "INSERT INTO conversations (conversation_id, app, model, user, chat_id, latest_turn,
         latest_message_id, created_at, updated_at, tools) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT(conversation_id) DO UPDATE SET latest_turn = excluded.latest_turn,
         latest_message_id = excluded.latest_message_id, chat_id = COALESCE(excluded.chat_id, chat_id),
         app = excluded.app, user = excluded.user, model = excluded.model, updated_at = excluded.updated_at,
         tools = excluded.tools";
/// The opening turn's mark goes once its conversation has a row.
const CLEAR_OPENING: &str =
    "UPDATE turns SET app = NULL, model = NULL, user = NULL WHERE fingerprint = ?1 AND conversation_id = ?2";

/// One transaction of ops, committed.
fn write_ops(conn: &mut Connection, path: &Path, ops: &[Op]) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(|e| classify(path, e))?;
    write_batch(&tx, path, ops)?;
    tx.commit().map_err(|e| classify(path, e))
}

/// For each answered turn: the fingerprint, the conversation's new latest turn and, when the
/// client sent a chat id, the chat mapping. For each forgotten conversation: every row of it.
/// The statements every turn runs are taken from the cache once per batch, not once per turn
/// (each take hashes the SQL text).
fn write_batch(tx: &Connection, path: &Path, ops: &[Op]) -> Result<(), StoreError> {
    let now = now_secs() as i64;
    let mut put_turn = tx.prepare_cached(PUT_TURN).map_err(|e| classify(path, e))?;
    let mut put_conversation = tx.prepare_cached(PUT_CONVERSATION).map_err(|e| classify(path, e))?;
    for op in ops {
        match op {
            Op::Record { fp, turn, conversation: c, opening, clears, .. } => {
                let tools = turn.tools.map(|t| t as i64);
                let (app, model, user) = match opening {
                    true => (Some(&c.app), Some(&c.model), Some(&c.user)),
                    false => (None, None, None),
                };
                put_turn
                    .execute(params![
                        &fp[..],
                        turn.conversation_id,
                        turn.turn,
                        turn.message_id,
                        now,
                        tools,
                        app,
                        model,
                        user
                    ])
                    .map_err(|e| classify(path, e))?;
                if *opening {
                    continue;
                }
                let created_at = if c.created_at > 0 { c.created_at as i64 } else { now };
                put_conversation
                    .execute(params![
                        c.conversation_id,
                        c.app,
                        c.model,
                        c.user,
                        c.chat_id,
                        c.latest_turn,
                        c.latest_message_id,
                        created_at,
                        now,
                        c.tools.map(|t| t as i64)
                    ])
                    .map_err(|e| classify(path, e))?;
                if let Some(opening) = clears {
                    tx.prepare_cached(CLEAR_OPENING)
                        .and_then(|mut s| s.execute(params![&opening[..], c.conversation_id]))
                        .map_err(|e| classify(path, e))?;
                }
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
            Op::Response { id, record: Some(r), .. } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO responses (id, app, user, conversation_id, tools, body, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![id, r.app, r.user, r.conversation_id, r.tools.map(|t| t as i64), r.body, now])
                })
                .map_err(|e| classify(path, e))?;
            }
            Op::Response { id, record: None, .. } => {
                tx.prepare_cached("DELETE FROM responses WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id]))
                    .map_err(|e| classify(path, e))?;
            }
            Op::Forget { conversation_id, .. } => {
                // By primary keys only; its turns stay until they expire, unreachable: the
                // tombstone outlives them (it is as new as the newest).
                for sql in [
                    "DELETE FROM chats WHERE (app, user, chat_id) IN
                       (SELECT app, user, chat_id FROM conversations WHERE conversation_id = ?1)",
                    "DELETE FROM chats WHERE app = '*' AND conversation_id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![conversation_id]))
                        .map_err(|e| classify(path, e))?;
                }
                tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO conversations (conversation_id, app, model, user, latest_turn, created_at, updated_at)
                     VALUES (?1, '', '', '', {TOMBSTONE}, ?2, ?2)"
                ))
                .and_then(|mut s| s.execute(params![conversation_id, now]))
                .map_err(|e| classify(path, e))?;
            }
            Op::Prune(_) | Op::Flush(_) => {}
        }
    }
    Ok(())
}

/// Imports `conversation_mappings.json` of the original proxy, found beside the store,
/// once. Its chat ids carry no app, so they match any app until first used (a wrong
/// match is healed by Dify's 404). The file itself is left untouched.
fn import_legacy(conn: &Connection, path: &Path) {
    let Some(dir) = path.parent() else { return };
    let legacy = if dir.as_os_str().is_empty() {
        PathBuf::from("conversation_mappings.json")
    } else {
        dir.join("conversation_mappings.json")
    };
    let Ok(text) = std::fs::read_to_string(&legacy) else { return };
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
    let _ = conn
        .execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('legacy_imported', ?1)", params![now.to_string()]);
    tracing::info!(
        "📥 imported {imported} conversation mappings from {} (the original proxy's file; left as it was)",
        legacy.display()
    );
}

/// What serving reads (the file was brought up to date when the server opened it).
const SELECT_CONVERSATION_TOOLS: &str = "SELECT conversation_id, app, model, user, chat_id, latest_turn, latest_message_id, created_at, updated_at, tools FROM conversations";

fn has_column(conn: &Connection, path: &Path, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row(&format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"), [column], |r| {
        r.get(0)
    })
    .map_err(|e| classify(path, e))
}

fn add_column_if_missing(
    conn: &Connection,
    path: &Path,
    table: &str,
    column: &str,
    kind: &str,
) -> Result<(), StoreError> {
    if !has_column(conn, path, table, column)? {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            .map_err(|e| classify(path, e))?;
    }
    Ok(())
}

fn hash_of(value: Option<i64>) -> Option<u64> {
    value.map(|v| v as u64)
}

/// A turn, its row's conversation columns (set on a marked opening turn) and its
/// conversation's row.
const LOOKUP_TURN: &str =
    "SELECT t.conversation_id, t.turn, t.message_id, t.tools, t.app, t.model, t.user, t.updated_at,
        c.app, c.model, c.user, c.chat_id, c.latest_turn, c.latest_message_id, c.created_at, c.updated_at, c.tools
   FROM turns t LEFT JOIN conversations c ON c.conversation_id = t.conversation_id
  WHERE t.fingerprint = ?1 AND t.updated_at >= ?2";

/// A row of [`LOOKUP_TURN`]; `None` when the turn is not to be found: its conversation was
/// forgotten (a tombstone), or has no row and the turn does not stand for it (dropped before
/// tombstones). The conversation is `None` when its row expired.
fn row_to_turn(
    r: &rusqlite::Row<'_>,
    cutoff: i64,
) -> rusqlite::Result<Option<(TurnRecord, Option<ConversationRecord>)>> {
    let opening_app: Option<String> = r.get(4)?;
    let latest_turn: Option<i64> = r.get(12)?;
    let turn = TurnRecord {
        conversation_id: r.get(0)?,
        turn: r.get(1)?,
        message_id: r.get(2)?,
        tools: hash_of(r.get(3)?),
        opening: opening_app.is_some(),
    };
    let conversation = match (latest_turn, opening_app) {
        (Some(TOMBSTONE), _) | (None, None) => return Ok(None),
        (Some(latest_turn), _) => {
            let updated_at: i64 = r.get(15)?;
            (updated_at >= cutoff)
                .then(|| -> rusqlite::Result<ConversationRecord> {
                    Ok(ConversationRecord {
                        conversation_id: turn.conversation_id.clone(),
                        app: r.get(8)?,
                        model: r.get(9)?,
                        user: r.get(10)?,
                        chat_id: r.get(11)?,
                        latest_turn: latest_turn.clamp(0, u32::MAX as i64) as u32,
                        latest_message_id: r.get(13)?,
                        created_at: r.get::<_, i64>(14)?.max(0) as u64,
                        updated_at: updated_at.max(0) as u64,
                        tools: hash_of(r.get(16)?),
                    })
                })
                .transpose()?
        }
        (None, Some(app)) => {
            let at = r.get::<_, i64>(7)?.max(0) as u64;
            Some(ConversationRecord {
                conversation_id: turn.conversation_id.clone(),
                app,
                model: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                user: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                chat_id: None,
                latest_turn: turn.turn,
                latest_message_id: turn.message_id.clone(),
                tools: turn.tools,
                created_at: at,
                updated_at: at,
            })
        }
    };
    Ok(Some((turn, conversation)))
}

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
        tools: if r.as_ref().column_count() > 9 { hash_of(r.get(9)?) } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_what_expired_and_beyond_the_bound_the_oldest_turns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        drop(SqliteStore::open(&path, Duration::from_secs(3600), true).expect("create"));
        let mut conn = connect(&path, false).expect("connect");
        // Six turns of six conversations, one a second apart from t=100.
        for i in 0..6i64 {
            let id = format!("conversation-{i}");
            conn.execute(
                "INSERT INTO turns (fingerprint, conversation_id, turn, updated_at) VALUES (?1, ?2, 1, ?3)",
                params![vec![i as u8; 32], id, 100 + i],
            )
            .expect("turn");
            conn.execute(
                "INSERT INTO conversations (conversation_id, app, model, user, latest_turn, created_at, updated_at)
                 VALUES (?1, 'app', 'm', 'u', 1, ?2, ?2)",
                params![id, 100 + i],
            )
            .expect("conversation");
        }
        let left = |conn: &Connection, table: &str| -> Vec<i64> {
            let mut stmt =
                conn.prepare(&format!("SELECT updated_at FROM {table} ORDER BY updated_at")).expect("prepare");
            stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows")
        };
        // Under the bound: only what is older than the cutoff goes.
        assert_eq!(prune(&mut conn, &path, 101, 10).expect("prune"), 1);
        assert_eq!(left(&conn, "turns"), vec![101, 102, 103, 104, 105]);
        assert_eq!(left(&conn, "conversations"), vec![101, 102, 103, 104, 105]);
        // Over the bound: the oldest turns go until it is met; conversations stay until they expire.
        prune(&mut conn, &path, 0, 3).expect("prune");
        assert_eq!(left(&conn, "turns"), vec![103, 104, 105]);
        assert_eq!(left(&conn, "conversations"), vec![101, 102, 103, 104, 105]);
        // A file from an earlier version loses its time indexes when opened.
        conn.execute_batch("CREATE INDEX turns_updated ON turns(updated_at)").expect("old index");
        drop(conn);
        drop(SqliteStore::open(&path, Duration::from_secs(3600), true).expect("reopen"));
        let conn = connect(&path, false).expect("connect");
        let indexes: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%updated'", [], |r| {
                r.get(0)
            })
            .expect("count");
        assert_eq!(indexes, 0);
    }

    fn turn(i: u8) -> (Fingerprint, TurnRecord, ConversationRecord) {
        let conversation_id = format!("conversation-{i}");
        let turn = TurnRecord {
            conversation_id: conversation_id.clone(),
            turn: 1,
            message_id: None,
            tools: Some(7),
            opening: false,
        };
        let conversation = ConversationRecord {
            conversation_id,
            app: "app".into(),
            model: "m".into(),
            user: "u".into(),
            chat_id: i.is_multiple_of(2).then(|| format!("chat-{i}")),
            latest_turn: 1,
            latest_message_id: None,
            tools: Some(7),
            created_at: 0,
            updated_at: 0,
        };
        ([i; 32], turn, conversation)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_recorded_at_once_are_all_visible_at_once_and_all_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("c.db"), Duration::from_secs(3600), true).expect("open"));
        let writers: Vec<_> = (0..64u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (fp, t, c) = turn(i);
                    store.record(&fp, t, c, Placement::Opening)?;
                    // Visible at once, before the commit.
                    store.turn(&fp)
                })
            })
            .collect();
        for (i, writer) in writers.into_iter().enumerate() {
            let found = writer.await.expect("join").expect("recorded and read");
            assert_eq!(found.map(|t| t.conversation_id), Some(format!("conversation-{i}")));
        }
        assert_eq!(store.chat("app", "u", "chat-4").expect("chat"), Some("conversation-4".into()));
        store.flush().await;
        assert_eq!(store.stats().await.expect("stats").conversations, 64);
        assert_eq!(store.conversation_count().await.expect("count"), 64);
    }

    #[tokio::test]
    async fn a_forgotten_conversation_is_invisible_at_once_and_gone_from_the_file_after_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        let (old_fp, t, c) = turn(2);
        store.record(&old_fp, t, c, Placement::Opening).expect("record");
        store.flush().await;
        let (new_fp, t, c) = turn(2);
        let new_fp = {
            let mut fp = new_fp;
            fp[0] = 99;
            fp
        };
        store.record(&new_fp, t, c, Placement::Next { opening: None }).expect("record");
        store.forget("conversation-2");
        // Neither the committed turn nor the one still in memory is found.
        assert_eq!(store.turn(&old_fp).expect("turn"), None);
        assert_eq!(store.turn(&new_fp).expect("turn"), None);
        assert_eq!(store.conversation("conversation-2").expect("conversation"), None);
        assert_eq!(store.chat("app", "u", "chat-2").expect("chat"), None);
        store.flush().await;
        assert_eq!(store.turn(&old_fp).expect("turn"), None);
        assert_eq!(store.chat("app", "u", "chat-2").expect("chat"), None);
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.conversations, stats.chats), (0, 0));
    }

    /// Turn `n` of conversation `i` (its own fingerprint), as its conversation's latest.
    fn later_turn(i: u8, n: u8) -> (Fingerprint, TurnRecord, ConversationRecord) {
        let (mut fp, mut t, mut c) = turn(i);
        fp[0] = fp[0].wrapping_add(100 + n);
        (t.turn, c.latest_turn) = (n.into(), n.into());
        (fp, t, c)
    }

    /// Rows in a table of the file, read past the store.
    fn rows(path: &Path, sql: &str) -> i64 {
        connect(path, false).expect("connect").query_row(sql, [], |r| r.get(0)).expect("count")
    }

    #[tokio::test]
    async fn an_opening_turn_is_one_row_until_its_conversation_has_a_second_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        // Conversation 1 has no chat id: its opening turn is all that is written.
        let (first_fp, t, c) = turn(1);
        store.record(&first_fp, t, c, Placement::Opening).expect("record");
        store.flush().await;
        assert_eq!(rows(&path, "SELECT count(*) FROM conversations"), 0);
        assert_eq!(rows(&path, "SELECT count(*) FROM turns WHERE app = 'app' AND user = 'u' AND model = 'm'"), 1);
        let (found, conversation) = store.turn_with_conversation(&first_fp).expect("read").expect("found");
        assert!(found.opening);
        let conversation = conversation.expect("the opening turn stands for its conversation");
        assert_eq!((conversation.conversation_id.as_str(), conversation.latest_turn), ("conversation-1", 1));
        assert_eq!((conversation.app.as_str(), conversation.user.as_str(), conversation.tools), ("app", "u", Some(7)));
        let started = conversation.created_at;
        assert!(started > 0);
        assert_eq!(store.stats().await.expect("stats").conversations, 1);
        assert_eq!(store.conversation_count().await.expect("count"), 1);
        let listed = store.list(&ListFilter { user: Some("u".into()), ..ListFilter::default() }).await.expect("list");
        assert_eq!(listed.iter().map(|c| c.conversation_id.as_str()).collect::<Vec<_>>(), ["conversation-1"]);

        // Its second turn, continued by id alone (no fingerprint match): the conversation gets
        // its row. The doctor counts it once; /metrics' quick count twice, until the mark goes.
        let (second_fp, t, mut c) = later_turn(1, 2);
        c.created_at = started;
        store.record(&second_fp, t, c, Placement::Next { opening: None }).expect("record");
        store.flush().await;
        assert_eq!(rows(&path, "SELECT count(*) FROM conversations"), 1);
        assert_eq!(store.conversation_count().await.expect("count"), 2);
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.conversations, stats.turns), (1, 2));
        // The third turn matches the second by fingerprint; the opening turn's mark is
        // cleared once a turn continues from it.
        let (found, conversation) = store.turn_with_conversation(&first_fp).expect("read").expect("found");
        assert!(found.opening, "still marked");
        assert_eq!(conversation.map(|c| c.latest_turn), Some(2), "the conversation's row wins over the mark");
        let (third_fp, t, c) = later_turn(1, 3);
        store.record(&third_fp, t, c, Placement::Next { opening: Some(first_fp) }).expect("record");
        store.flush().await;
        assert_eq!(rows(&path, "SELECT count(*) FROM turns WHERE app IS NOT NULL"), 0);
        assert_eq!(store.conversation_count().await.expect("count"), 1);
        let conversation = store.conversation("conversation-1").expect("read").expect("found");
        assert_eq!((conversation.latest_turn, conversation.created_at), (3, started));
        drop(store);
        // And all of it is the same once the file is opened again.
        let store = SqliteStore::open(&path, Duration::from_secs(3600), false).expect("reopen");
        assert_eq!(store.turn(&third_fp).expect("read").map(|t| t.turn), Some(3));
        assert_eq!(store.conversation_count().await.expect("count"), 1);
    }

    #[tokio::test]
    async fn a_forgotten_opening_turn_is_not_found_again_and_its_tombstone_expires_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        let (fp, t, c) = turn(3);
        store.record(&fp, t, c, Placement::Opening).expect("record");
        store.flush().await;
        store.forget("conversation-3");
        assert_eq!(store.turn(&fp).expect("read"), None);
        store.flush().await;
        assert_eq!(store.turn(&fp).expect("read"), None);
        assert_eq!(store.conversation("conversation-3").expect("read"), None);
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.conversations, stats.turns), (0, 1));
        assert!(store.list(&ListFilter::default()).await.expect("list").is_empty());
        assert_eq!(rows(&path, &format!("SELECT count(*) FROM conversations WHERE latest_turn = {TOMBSTONE}")), 1);
        drop(store);
        // Everything expired: the turn and its tombstone go together, and the tombstone is
        // not counted as a conversation removed.
        let mut conn = connect(&path, false).expect("connect");
        let (fp2, _, _) = turn(5);
        conn.execute(
            "INSERT INTO turns (fingerprint, conversation_id, turn, updated_at, app, model, user)
             VALUES (?1, 'conversation-5', 1, 1, 'app', 'm', 'u')",
            params![&fp2[..]],
        )
        .expect("an expired opening turn");
        assert_eq!(prune(&mut conn, &path, i64::MAX, MAX_TURNS).expect("prune"), 1);
        assert_eq!(rows(&path, "SELECT count(*) FROM conversations"), 0);
        assert_eq!(rows(&path, "SELECT count(*) FROM turns"), 0);
    }

    #[tokio::test]
    async fn the_prune_clears_the_mark_of_an_opening_turn_whose_conversation_got_a_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        let (first_fp, t, c) = turn(7);
        store.record(&first_fp, t, c, Placement::Opening).expect("record");
        let (second_fp, t, c) = later_turn(7, 2);
        store.record(&second_fp, t, c, Placement::Next { opening: None }).expect("record");
        store.flush().await;
        assert_eq!(store.conversation_count().await.expect("count"), 2);
        assert_eq!(store.prune_expired().await.expect("prune"), 0);
        assert_eq!(store.conversation_count().await.expect("count"), 1);
        assert_eq!(store.stats().await.expect("stats").conversations, 1);
        // Both turns are still found, and lead to the conversation's row.
        let (_, conversation) = store.turn_with_conversation(&first_fp).expect("read").expect("found");
        assert_eq!(conversation.map(|c| c.latest_turn), Some(2));
    }

    #[tokio::test]
    async fn turns_still_in_memory_are_committed_when_the_store_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        for i in 0..10u8 {
            let (fp, t, c) = turn(i);
            store.record(&fp, t, c, Placement::Opening).expect("record");
        }
        drop(store);
        let reopened = SqliteStore::open(&path, Duration::from_secs(3600), false).expect("reopen");
        assert_eq!(reopened.stats().await.expect("stats").conversations, 10);
        assert_eq!(reopened.turn(&[7; 32]).expect("turn").map(|t| t.conversation_id), Some("conversation-7".into()));
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600), true).expect("open");
        let frame = 4096 + 24;
        let wal_bound = (CHECKPOINT_PAGES as u64 + 1000) * frame;
        let db_size = || std::fs::metadata(&path).expect("db").len();
        let initial = db_size();
        // Many small commits, as under light load: until the first checkpoint (the file grows,
        // which without checkpoints it never does), then twice as many again.
        let mut turns = 0u64;
        let mut until = u64::MAX;
        while turns < until {
            for _ in 0..4 {
                let (mut fp, t, c) = turn((turns % 251) as u8);
                fp[..8].copy_from_slice(&turns.to_le_bytes());
                store.record(&fp, t, c, Placement::Opening).expect("record");
                turns += 1;
            }
            store.flush().await;
            let wal = std::fs::metadata(dir.path().join("c.db-wal")).expect("wal").len();
            assert!(wal < wal_bound, "WAL grew to {wal} bytes after {turns} turns");
            if until == u64::MAX && db_size() > initial {
                until = 3 * turns;
            }
            assert!(turns < 200_000, "no checkpoint after {turns} turns");
        }
        drop(store);
        let reopened = SqliteStore::open(&path, Duration::from_secs(3600), false).expect("reopen");
        assert_eq!(reopened.stats().await.expect("stats").turns, turns);
    }
}
