//! `inspect-mappings` (the guide's problem 9, "conversation context lost"): the store that
//! maps client chats to Dify conversations, opened through the same `Store` that `serve`
//! uses, but without creating anything. Is it there, reachable, readable, writable, with a
//! valid schema; how many conversations (per user, per model), how old, how many expired;
//! the mappings themselves, filtered. `--prune` removes expired ones (the only option that
//! changes anything) and `--verify` asks Dify whether each listed conversation still
//! exists. A fresh install without a store yet is fine: zero conversations, not a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cert::iso;
use super::context::Context;
use super::files::{dir_state, mode, owner, parent_dir};
use super::report::{CheckResult, format_duration};
use crate::config::Config;
use crate::conversations::fingerprint::app_id;
use crate::conversations::record::{ConversationRecord, ListFilter, StoreLocation, StoreStats, now_secs};
use crate::conversations::{Store, StoreError};
use crate::dify::{DifyClient, DifyError};
use crate::finding::Finding;
use crate::secret::Secret;

pub(crate) const ID: &str = "inspect-mappings";

#[derive(Debug, Clone)]
pub(crate) struct MappingOptions {
    pub user: Option<String>,
    pub chat: Option<String>,
    pub prune: bool,
    pub verify: bool,
    pub limit: usize,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions { user: None, chat: None, prune: false, verify: false, limit: 20 }
    }
}

#[derive(Debug, Default, Serialize)]
struct Details {
    /// `sqlite:data/conversations.db` or the Redis URL with its password masked.
    store: String,
    /// `sqlite` or `redis`.
    backend: &'static str,
    exists: bool,
    file: Option<FileState>,
    reachable: bool,
    schema_ok: bool,
    writable: Option<bool>,
    ttl_days: f64,
    counts: Option<Counts>,
    pruned: Option<u64>,
    mappings: Vec<Mapping>,
    verified: Option<Verified>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FileState {
    path: String,
    size_bytes: u64,
    mode: Option<String>,
    owner_uid: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Counts {
    conversations: u64,
    turns: u64,
    chats: u64,
    expired: u64,
    oldest_updated_at: Option<String>,
    newest_updated_at: Option<String>,
    per_user: Vec<Count>,
    per_model: Vec<Count>,
}

#[derive(Debug, Serialize)]
struct Count {
    name: String,
    conversations: u64,
}

#[derive(Debug, Serialize)]
struct Mapping {
    conversation_id: String,
    chat_id: Option<String>,
    user: String,
    model: String,
    latest_turn: u32,
    created_at: String,
    updated_at: String,
    expired: bool,
    /// `--verify`: whether Dify still has the conversation (null: not asked or unknown).
    exists_in_dify: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
struct Verified {
    checked: usize,
    missing: usize,
    /// Conversations of apps no longer configured (their key is unknown).
    unknown_app: usize,
    errors: usize,
}

pub(crate) async fn run(ctx: &Context, options: &MappingOptions) -> CheckResult {
    let config = match ctx.require_config(ID) {
        Ok(config) => config,
        Err(result) => return *result,
    };
    let mut inspection = Inspection::new(ctx, config, options);
    // Err: a phase ended the inspection early, and its result says why.
    let _ = inspection.inspect().await;
    inspection.result.details(inspection.details);
    inspection.result
}

/// A phase ended the inspection; the result already says why.
struct Stopped;

/// One inspection of the store, phase by phase: locate (SQLite: the file), open, check
/// writability (SQLite), count, prune, list (and verify with Dify), summarize.
struct Inspection<'a> {
    ctx: &'a Context,
    config: &'a Config,
    options: &'a MappingOptions,
    /// The SQLite file, or none for Redis.
    sqlite: Option<PathBuf>,
    result: CheckResult,
    details: Details,
}

impl<'a> Inspection<'a> {
    fn new(ctx: &'a Context, config: &'a Config, options: &'a MappingOptions) -> Self {
        let location = StoreLocation::parse(&config.conversation_store);
        let details = Details {
            store: location.describe(),
            backend: match location {
                StoreLocation::Sqlite(_) => "sqlite",
                StoreLocation::Redis(_) => "redis",
            },
            ttl_days: (config.mapping_ttl.as_secs_f64() / 86_400.0 * 100.0).round() / 100.0,
            ..Details::default()
        };
        let mut result = CheckResult::new(ID);
        result.line(format!("store: {}", details.store));
        let sqlite = match location {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Redis(_) => None,
        };
        Inspection { ctx, config, options, sqlite, result, details }
    }

    async fn inspect(&mut self) -> Result<(), Stopped> {
        if let Some(path) = self.sqlite.clone() {
            self.locate_sqlite(&path)?;
        }
        let (store, stats) = self.open().await?;
        if let Some(path) = self.sqlite.clone() {
            self.check_sqlite_writable(&path);
        }
        let counts = counts(&stats);
        self.show_counts(&counts);
        if self.options.prune {
            self.prune(&store).await;
        } else if counts.expired > 0 {
            self.result.line(format!("{} expired conversations can be removed with --prune", counts.expired));
        }
        self.list(&store).await;
        self.summarize(counts);
        Ok(())
    }

    /// SQLite: the file, its size and permissions. No file yet is a fresh install (fine when
    /// serve can create it); something else at its path is a failure.
    fn locate_sqlite(&mut self, path: &Path) -> Result<(), Stopped> {
        let legacy = parent_dir(path).join("conversation_mappings.json");
        if legacy.is_file() {
            self.result.line(format!(
                "{} (the original proxy's mappings) is imported by `opendify serve` once, when it opens the store",
                legacy.display()
            ));
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {
                self.details.exists = true;
                let file = file_state(path, &meta);
                self.result.line(format!(
                    "file: {} bytes, mode {}, owner uid {}",
                    file.size_bytes,
                    file.mode.as_deref().unwrap_or("?"),
                    file.owner_uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
                ));
                self.details.file = Some(file);
                Ok(())
            }
            Ok(_) => {
                self.details.exists = true;
                self.result.summary(format!("{} is not a file", path.display()));
                self.result.fail(Finding::with_fix(
                    format!("the conversation store {} exists but is not a file", path.display()),
                    "move it aside, or point CONVERSATION_STORE at a file path, e.g. data/conversations.db",
                ));
                self.details.error = Some("not a file".into());
                Err(Stopped)
            }
            Err(_) => {
                self.no_sqlite_file_yet(path);
                Err(Stopped)
            }
        }
    }

    /// A fresh install: serve creates the file with the first conversation, if it can.
    fn no_sqlite_file_yet(&mut self, path: &Path) {
        let dir = parent_dir(path);
        let state = dir_state(&dir);
        self.details.writable = Some(state.writable);
        if state.writable {
            self.result.summary(format!("no store yet at {} (fresh install): 0 conversations", path.display()));
            self.result.line("the file is created with the first conversation");
            return;
        }
        self.result.summary(format!("no store yet, and {} is not writable", dir.display()));
        self.result.fail(Finding::with_fix(
            format!(
                "the store {} cannot be created: {}",
                path.display(),
                state.error.as_deref().unwrap_or("directory not writable")
            ),
            format!(
                "make {} writable for the user running opendify, or set CONVERSATION_STORE to a writable path",
                dir.display()
            ),
        ));
    }

    /// Opens the store the way serve does, without creating it; reads its health and counts.
    async fn open(&mut self) -> Result<(Store, StoreStats), Stopped> {
        let (config, timeout) = (self.config, self.ctx.step_timeout);
        self.ctx.progress.set(format!("{ID}: opening {}…", self.details.store));
        let opened =
            tokio::time::timeout(timeout, Store::open_existing(&config.conversation_store, config.mapping_ttl));
        let store = match opened.await {
            Ok(Ok(Some(store))) => store,
            Ok(Ok(None)) => {
                self.result.summary("no store yet (fresh install): 0 conversations");
                return Err(Stopped);
            }
            Ok(Err(error)) => return Err(self.stop_on(&error, "cannot open")),
            Err(_) => {
                self.result.summary(format!("{} does not answer", self.details.store));
                self.result.network_fail(Finding::with_fix(
                    format!("opening {} took longer than {}", self.details.store, format_duration(timeout)),
                    "check that the store is reachable (`redis-cli -u URL ping`), or raise --timeout",
                ));
                return Err(Stopped);
            }
        };
        self.details.reachable = true;
        if let Err(error) = store.health().await {
            return Err(self.stop_on(&error, "is not healthy"));
        }
        let stats = store.stats().await.map_err(|error| self.stop_on(&error, "cannot be read"))?;
        self.details.schema_ok = true;
        Ok((store, stats))
    }

    /// A store error that ends the inspection.
    fn stop_on(&mut self, error: &StoreError, what: &str) -> Stopped {
        self.store_failure(error, what);
        self.details.error = Some(error.to_string());
        Stopped
    }

    /// Explains a store error: corrupt, unreadable, or unreachable (Redis).
    fn store_failure(&mut self, error: &StoreError, what: &str) {
        self.result.summary(format!("{} {what}", self.details.store));
        let mut finding = error.finding();
        match error {
            StoreError::Corrupt { .. } => self.result.fail(finding),
            StoreError::Open { .. } | StoreError::Backend { .. } if self.sqlite.is_none() => {
                self.result.network_fail(finding)
            }
            _ => {
                finding
                    .fix
                    .get_or_insert_with(|| "check the file's permissions and the disk (`df -h`, `ls -l`)".into());
                self.result.fail(finding)
            }
        };
    }

    /// SQLite: serve must be able to write the file and create files beside it.
    fn check_sqlite_writable(&mut self, path: &Path) {
        let writable = sqlite_writable(path);
        self.details.writable = Some(writable.is_ok());
        if let Err(reason) = writable {
            self.result.fail(Finding::with_fix(
                format!(
                    "the store {} is readable but not writable: {reason}; new conversations cannot be saved",
                    path.display()
                ),
                format!(
                    "make {} and its directory writable for the user running opendify (chown/chmod)",
                    path.display()
                ),
            ));
        }
    }

    fn show_counts(&mut self, counts: &Counts) {
        self.result.line(format!(
            "{} conversations, {} turns, {} chat mappings, {} expired (TTL {} days)",
            counts.conversations, counts.turns, counts.chats, counts.expired, self.details.ttl_days
        ));
        if let (Some(oldest), Some(newest)) = (&counts.oldest_updated_at, &counts.newest_updated_at) {
            self.result.line(format!("last used: oldest {oldest}, newest {newest}"));
        }
        if !counts.per_user.is_empty() {
            self.result.line(format!("per user: {}", top(&counts.per_user)));
            self.result.line(format!("per model: {}", top(&counts.per_model)));
        }
    }

    /// `--prune`: SQLite removes expired conversations; Redis expires them by itself.
    async fn prune(&mut self, store: &Store) {
        if self.sqlite.is_none() {
            self.result.line("--prune: Redis expires mappings by itself (TTL); nothing to remove");
            self.details.pruned = Some(0);
            return;
        }
        match store.prune_expired().await {
            Ok(removed) => {
                self.result.line(format!("--prune: removed {removed} expired conversation{}", plural(removed)));
                self.details.pruned = Some(removed);
            }
            Err(error) => self.store_failure(&error, "cannot be pruned"),
        }
    }

    /// The mappings matching `--user`/`--chat`, and with `--verify` whether Dify has them.
    async fn list(&mut self, store: &Store) {
        let options = self.options;
        let filter =
            ListFilter { user: options.user.clone(), chat_id: options.chat.clone(), limit: options.limit.max(1) };
        let records = match store.list(&filter).await {
            Ok(records) => records,
            Err(error) => {
                self.store_failure(&error, "cannot be listed");
                Vec::new()
            }
        };
        let cutoff = now_secs().saturating_sub(self.config.mapping_ttl.as_secs());
        self.details.mappings = records.iter().map(|r| mapping(r, cutoff)).collect();
        if options.verify {
            self.ctx.progress.set(format!("{ID}: asking Dify about {} conversations…", records.len()));
            let verified = verify(self.ctx, self.config, &records, &mut self.details.mappings, &mut self.result).await;
            self.details.verified = Some(verified);
        }
        if records.is_empty() && (options.user.is_some() || options.chat.is_some()) {
            self.result.line("no mapping matches the filter");
        }
        for m in &self.details.mappings {
            self.result.line(mapping_line(m));
        }
    }

    fn summarize(&mut self, counts: Counts) {
        let users = counts.per_user.len();
        self.result.summary(format!(
            "{}: {} conversation{} ({} user{}), {} expired{}",
            self.details.store,
            counts.conversations,
            plural(counts.conversations),
            users,
            plural(users as u64),
            counts.expired,
            self.details.pruned.map(|n| format!(", {n} pruned")).unwrap_or_default()
        ));
        self.details.counts = Some(counts);
    }
}

fn mapping_line(m: &Mapping) -> String {
    format!(
        "chat {} → {} ({}, user {}, turn {}, last used {}{}{})",
        m.chat_id.as_deref().unwrap_or("-"),
        m.conversation_id,
        m.model,
        m.user,
        m.latest_turn,
        m.updated_at,
        if m.expired { ", expired" } else { "" },
        match m.exists_in_dify {
            Some(true) => ", exists in Dify",
            Some(false) => ", GONE from Dify",
            None => "",
        }
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn top(list: &[Count]) -> String {
    let mut shown: Vec<String> = list.iter().take(10).map(|c| format!("{} ({})", c.name, c.conversations)).collect();
    if list.len() > 10 {
        shown.push(format!("… {} more", list.len() - 10));
    }
    shown.join(", ")
}

fn counts(stats: &StoreStats) -> Counts {
    let to_counts = |list: &[(String, u64)]| {
        list.iter().map(|(name, n)| Count { name: name.clone(), conversations: *n }).collect::<Vec<_>>()
    };
    Counts {
        conversations: stats.conversations,
        turns: stats.turns,
        chats: stats.chats,
        expired: stats.expired,
        oldest_updated_at: stats.oldest_updated_at.map(to_iso),
        newest_updated_at: stats.newest_updated_at.map(to_iso),
        per_user: to_counts(&stats.per_user),
        per_model: to_counts(&stats.per_model),
    }
}

fn to_iso(secs: u64) -> String {
    iso(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn mapping(record: &ConversationRecord, cutoff: u64) -> Mapping {
    Mapping {
        conversation_id: record.conversation_id.clone(),
        chat_id: record.chat_id.clone(),
        user: record.user.clone(),
        model: record.model.clone(),
        latest_turn: record.latest_turn,
        created_at: to_iso(record.created_at),
        updated_at: to_iso(record.updated_at),
        expired: record.updated_at < cutoff,
        exists_in_dify: None,
    }
}

fn file_state(path: &Path, meta: &std::fs::Metadata) -> FileState {
    FileState { path: path.display().to_string(), size_bytes: meta.len(), mode: mode(meta), owner_uid: owner(meta) }
}

/// Whether serve could write: the file opens for writing (nothing is written) and its
/// directory takes new files (SQLite's WAL and lock files live beside it).
fn sqlite_writable(path: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = dir_state(&parent_dir(path));
    if dir.writable {
        Ok(())
    } else {
        Err(format!("{}: {}", dir.path.display(), dir.error.unwrap_or_else(|| "not writable".into())))
    }
}

/// `--verify`: asks Dify whether each listed conversation still exists, with the key of
/// the app it belongs to (the store keeps only an id of the key).
async fn verify(
    ctx: &Context,
    config: &Config,
    records: &[ConversationRecord],
    mappings: &mut [Mapping],
    result: &mut CheckResult,
) -> Verified {
    let client = match ctx.client(config) {
        Ok(client) => client,
        Err(e) => {
            result.fail(Finding::new(format!("cannot build the Dify client: {e}")));
            return Verified::default();
        }
    };
    let (verified, first_error) = ask_dify(&client, config, records, mappings).await;
    judge_verified(result, &verified, first_error);
    verified
}

/// Asks Dify about each record, marking its mapping; returns the tally and the first error.
async fn ask_dify(
    client: &DifyClient,
    config: &Config,
    records: &[ConversationRecord],
    mappings: &mut [Mapping],
) -> (Verified, Option<DifyError>) {
    let keys: HashMap<String, Secret> = config
        .models
        .iter()
        .map(|m| m.key.clone())
        .chain(config.unnamed_keys.iter().cloned())
        .map(|key| (app_id(key.expose()), key))
        .collect();
    let mut verified = Verified::default();
    let mut first_error = None;
    for (record, mapping) in records.iter().zip(mappings.iter_mut()) {
        let Some(key) = keys.get(&record.app) else {
            verified.unknown_app += 1;
            continue;
        };
        verified.checked += 1;
        match client.conversation_exists(key, &record.conversation_id, &record.user).await {
            Ok(exists) => {
                mapping.exists_in_dify = Some(exists);
                if !exists {
                    verified.missing += 1;
                }
            }
            Err(e) => {
                verified.errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (verified, first_error)
}

fn judge_verified(result: &mut CheckResult, verified: &Verified, first_error: Option<DifyError>) {
    result.line(format!(
        "--verify: {} checked with Dify, {} gone, {} of apps no longer configured, {} errors",
        verified.checked, verified.missing, verified.unknown_app, verified.errors
    ));
    if verified.missing > 0 {
        result.warn(Finding::with_fix(
            format!(
                "{} mapped conversation{} no longer exist in Dify (deleted there)",
                verified.missing,
                plural(verified.missing as u64)
            ),
            "nothing to do: opendify starts a new conversation with the earlier turns as context and updates the mapping; `--prune` only removes expired ones",
        ));
    }
    if verified.unknown_app > 0 {
        result.line(format!(
            "{} conversations belong to apps whose key is no longer configured; they expire after MAPPING_TTL_DAYS",
            verified.unknown_app
        ));
    }
    if let Some(error) = first_error {
        result.network_fail(Finding::with_fix(
            format!("{} of the Dify checks failed: {error}", verified.errors),
            "run `opendify doctor ping-dify` and `opendify doctor test-key`",
        ));
    }
}
