//! Decides which Dify conversation a request continues, and records each answered turn.
//!
//! In order: an explicit id (`X-Dify-Conversation-Id` or body `conversation_id`) is used as
//! is; a client chat id (Open WebUI's `X-OpenWebUI-Chat-Id`) is looked up per (app, user,
//! chat), never by chat id alone; otherwise the fingerprint of the history before the last
//! user message finds the conversation. Either way the fingerprint says where in the
//! conversation the request belongs: the next turn (continue), or an earlier one (the client
//! regenerated or edited: never appended to the old thread). With no match but earlier
//! turns, a new conversation starts with those turns as context. Open WebUI's background
//! tasks (`### Task:`) are answered outside any conversation.
//!
//! Requests on the same conversation are handled one at a time, so turns are recorded in
//! order. The store being down never fails a request: it is answered statelessly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::fingerprint::{Fingerprint, Fingerprinter, app_id};
use super::record::{ConversationRecord, Placement, StoreError, TurnRecord};
use super::redis_store::Lease;
use super::store::Store;
use crate::bridge::ConversationPlan;
use crate::bridge::{Role, Turn};

/// How the conversation was chosen (logs, tests, the doctor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    Explicit,
    /// Continues the conversation the client's chat id maps to.
    Chat,
    /// Continues the conversation whose last answer matches the history.
    Fingerprint,
    /// The history matches an earlier turn: regenerate or edit.
    Branch,
    /// No earlier turns: a new conversation.
    New,
    /// Earlier turns but no mapping: a new conversation seeded with them.
    Seeded,
    /// Open WebUI background task: outside any conversation.
    Task,
    /// The store failed: answered statelessly.
    Stateless,
}

impl Continuity {
    pub fn as_str(self) -> &'static str {
        match self {
            Continuity::Explicit => "explicit",
            Continuity::Chat => "chat",
            Continuity::Fingerprint => "fingerprint",
            Continuity::Branch => "branch",
            Continuity::New => "new",
            Continuity::Seeded => "seeded",
            Continuity::Task => "task",
            Continuity::Stateless => "stateless",
        }
    }
}

pub struct Decision {
    pub plan: ConversationPlan,
    pub continuity: Continuity,
    /// The conversation id came from the store (so Dify's 404 means the mapping is stale).
    pub from_store: bool,
    /// The tool definitions the continued conversation already has (a hash).
    pub tools_sent: Option<u64>,
    /// What to record once the answer is complete; `None` for stateless answers.
    pub recorder: Option<Recorder>,
}

/// Everything needed to record the turn after the answer, plus the conversation lock.
pub struct Recorder {
    fingerprint: Fingerprinter,
    turn: u32,
    app: String,
    model: String,
    user: String,
    chat_id: Option<String>,
    lock: Option<Guard>,
    /// The tool definitions the conversation has after this turn (a hash).
    pub tools: Option<u64>,
    /// The continued conversation's opening turn, when its row still stands for the
    /// conversation (its mark is cleared with this turn).
    opening: Option<Fingerprint>,
    /// When the continued conversation started (0: unknown, or a new one).
    created_at: u64,
    /// Dify was asked for a new conversation (set from the final plan by [`Recorder::asked`]).
    starts_conversation: bool,
    /// The conversation will be continued by its id (see [`Recorder::continued_by_id`]).
    by_id: bool,
}

impl Recorder {
    /// What Dify was finally asked: to continue a conversation, or to start one (also when a
    /// stale conversation was dropped and the request sent again).
    pub fn asked(&mut self, plan: &ConversationPlan) {
        self.starts_conversation = plan.conversation_id.is_none();
    }

    /// The answer is kept to be continued by its conversation's id (a stored Responses API
    /// response): the conversation's row is written with its first turn, since a continuation
    /// by id cannot find the opening turn again to clear its mark.
    pub fn continued_by_id(&mut self) {
        self.by_id = true;
    }
}

/// A held conversation (or chat) lock: this process's own, which remembers when a turn was
/// last recorded under it (so a request that read the store before taking it knows whether
/// it read too early), and, with Redis, the lease that holds the conversation across every
/// instance sharing the store.
pub struct Guard {
    local: OwnedMutexGuard<Option<Instant>>,
    _lease: Option<Lease>,
}

/// A lock just taken.
struct Locked {
    guard: Guard,
    /// Another request held it first: what was read before may be stale.
    waited: bool,
    /// The conversation's latest turn as the store said when the lock was taken (Redis).
    latest_turn: Option<u32>,
}

pub struct RequestView<'a> {
    pub key: &'a str,
    pub model: &'a str,
    pub user: &'a str,
    pub chat_id: Option<&'a str>,
    pub explicit: Option<&'a str>,
    pub turn: &'a Turn,
}

pub struct Conversations {
    store: Store,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    branch_with_parent: bool,
}

/// `### Task:` prompts are Open WebUI's title/tags/follow-up generation.
pub fn is_background_task(turn: &Turn) -> bool {
    turn.input().first().is_some_and(|m| m.role == Role::User && m.joined_text().trim_start().starts_with("### Task:"))
}

impl Conversations {
    pub fn new(store: Store, branch_with_parent: bool) -> Self {
        Conversations { store, locks: Mutex::new(HashMap::new()), branch_with_parent }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes the lock on `key`: first this process's, then the store's lease (Redis), so
    /// requests on one conversation are answered one at a time on every instance.
    async fn lock(&self, key: String, conversation: Option<&str>) -> Result<Locked, StoreError> {
        let (local, waited_here) = self.local_lock(&key).await;
        let acquired = self.store.lease(&key, conversation).await?;
        Ok(match acquired {
            Some(acquired) => Locked {
                guard: Guard { local, _lease: Some(acquired.lease) },
                waited: waited_here || acquired.waited,
                latest_turn: acquired.latest_turn,
            },
            None => Locked { guard: Guard { local, _lease: None }, waited: waited_here, latest_turn: None },
        })
    }

    /// This process's lock, and whether another request held it.
    async fn local_lock(&self, key: &str) -> (OwnedMutexGuard<Option<Instant>>, bool) {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() > 4096 {
                // Keep what is held, waited for, or recorded under lately (a request that read
                // the store just before may still come for it).
                locks.retain(|_, m| {
                    Arc::strong_count(m) > 1
                        || m.try_lock().map_or(true, |at| at.is_some_and(|at| at.elapsed() < Duration::from_secs(5)))
                });
            }
            locks.entry(key.to_string()).or_default().clone()
        };
        match mutex.clone().try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (mutex.lock_owned().await, true),
        }
    }

    pub async fn decide(&self, req: &RequestView<'_>) -> Decision {
        let app = app_id(req.key);
        let mut prefix = Fingerprinter::new(&app, req.user);
        let input_start = req.turn.input_start();
        let mut has_history = false;
        for m in &req.turn.messages[..input_start] {
            if m.role != Role::System {
                prefix.message(m, req.turn);
                has_history = true;
            }
        }
        let prefix_fp = prefix.finish();
        let mut full = prefix;
        for m in req.turn.input() {
            full.message(m, req.turn);
        }
        let turn = req.turn.turn_number();
        let recorder = |lock: Option<Guard>| Recorder {
            fingerprint: full.clone(),
            turn,
            app: app.clone(),
            model: req.model.to_string(),
            user: req.user.to_string(),
            chat_id: req.chat_id.map(str::to_string),
            lock,
            tools: None,
            opening: None,
            created_at: 0,
            starts_conversation: false,
            by_id: false,
        };
        let fresh = |continuity: Continuity, recorder: Option<Recorder>| Decision {
            plan: ConversationPlan { seed_from: has_history.then_some(0), ..Default::default() },
            continuity: if continuity == Continuity::New && has_history { Continuity::Seeded } else { continuity },
            from_store: false,
            tools_sent: None,
            recorder,
        };

        if is_background_task(req.turn) {
            return fresh(Continuity::Task, None);
        }
        let outcome: Result<Decision, StoreError> = async {
            if let Some(id) = req.explicit {
                let locked = self.lock(format!("conv:{id}"), None).await?;
                return Ok(Decision {
                    plan: ConversationPlan { conversation_id: Some(id.to_string()), ..Default::default() },
                    continuity: Continuity::Explicit,
                    from_store: false,
                    tools_sent: None,
                    recorder: Some(recorder(Some(locked.guard))),
                });
            }
            if let Some(chat_id) = req.chat_id {
                let lock = self.lock(format!("chat:{app}:{}:{chat_id}", req.user), None).await?.guard;
                let mapped = self.store.chat(&app, req.user, chat_id).await?;
                let matched = if has_history { self.store.turn_with_conversation(&prefix_fp).await? } else { None };
                if let Some((found, conversation)) = matched {
                    return Ok(self.place(found, conversation, &prefix_fp, &recorder, Some(lock), has_history));
                }
                if let (Some(conversation_id), true) = (mapped, has_history) {
                    // The history did not match (a client rewrote it), but the chat id is
                    // trusted when the turn count shows this is the next turn. A mapping
                    // imported from the original proxy has no conversation row: trusted too.
                    let record = self.store.conversation(&conversation_id).await?;
                    if record.as_ref().is_none_or(|r| r.latest_turn + 1 == turn) {
                        tracing::debug!(conversation = %conversation_id, "🔍 continuing by chat id");
                        return Ok(Decision {
                            plan: ConversationPlan { conversation_id: Some(conversation_id), ..Default::default() },
                            continuity: Continuity::Chat,
                            from_store: true,
                            tools_sent: record.and_then(|r| r.tools),
                            recorder: Some(recorder(Some(lock))),
                        });
                    }
                }
                return Ok(fresh(Continuity::New, Some(recorder(Some(lock)))));
            }
            let read_at = Instant::now();
            if has_history && let Some((found, conversation)) = self.store.turn_with_conversation(&prefix_fp).await? {
                let id = found.conversation_id.clone();
                let latest_read = conversation.as_ref().map(|c| c.latest_turn);
                let locked = self.lock(format!("conv:{id}"), Some(&id)).await?;
                // Read again when another request on this conversation held the lock, recorded
                // a turn since the read, or (another instance) moved it on: it may have changed.
                let moved_on = locked.latest_turn.is_some_and(|latest| Some(latest) != latest_read);
                let (found, conversation) =
                    if locked.waited || moved_on || (*locked.guard.local).is_some_and(|at| at >= read_at) {
                        match self.store.turn_with_conversation(&prefix_fp).await? {
                            Some((found, conversation)) => (found, conversation),
                            None => (found, None),
                        }
                    } else {
                        (found, conversation)
                    };
                return Ok(self.place(found, conversation, &prefix_fp, &recorder, Some(locked.guard), has_history));
            }
            Ok(fresh(Continuity::New, Some(recorder(None))))
        }
        .await;
        match outcome {
            Ok(decision) => {
                tracing::debug!(continuity = decision.continuity.as_str(), "🔍 conversation lookup");
                decision
            }
            Err(e) => {
                tracing::warn!("⚠️ conversation store unavailable, answering without conversation memory: {e}");
                fresh(Continuity::Stateless, None)
            }
        }
    }

    /// The history (fingerprint `prefix`) matched a recorded turn: the next turn of its
    /// conversation (whose latest turn, read under the lock, is that turn), or a branch.
    fn place(
        &self,
        found: TurnRecord,
        conversation: Option<ConversationRecord>,
        prefix: &Fingerprint,
        recorder: &(dyn Fn(Option<Guard>) -> Recorder + Sync),
        lock: Option<Guard>,
        has_history: bool,
    ) -> Decision {
        let latest = conversation.as_ref().map(|c| c.latest_turn);
        let continuing = |lock: Option<Guard>| {
            let mut continued = recorder(lock);
            continued.opening = found.opening.then_some(*prefix);
            continued.created_at = conversation.as_ref().map_or(0, |c| c.created_at);
            continued
        };
        match latest {
            Some(latest) if latest == found.turn => Decision {
                recorder: Some(continuing(lock)),
                plan: ConversationPlan { conversation_id: Some(found.conversation_id), ..Default::default() },
                continuity: Continuity::Fingerprint,
                from_store: true,
                tools_sent: found.tools,
            },
            Some(_) if self.branch_with_parent && found.message_id.is_some() => Decision {
                plan: ConversationPlan {
                    conversation_id: Some(found.conversation_id),
                    parent_message_id: found.message_id,
                    seed_from: None,
                },
                continuity: Continuity::Branch,
                from_store: true,
                tools_sent: found.tools,
                recorder: Some(continuing(lock)),
            },
            _ => Decision {
                // Regenerate/edit of an earlier turn, or the conversation expired: a new
                // conversation seeded with the history, so the old thread stays clean.
                plan: ConversationPlan { seed_from: has_history.then_some(0), ..Default::default() },
                continuity: if latest.is_some() { Continuity::Branch } else { Continuity::Seeded },
                from_store: false,
                tools_sent: None,
                recorder: Some(recorder(lock)),
            },
        }
    }

    /// Records an answered turn (before the client sees `[DONE]`). Failures are logged: the
    /// answer itself was fine.
    pub async fn record(&self, recorder: Recorder, conversation_id: &str, message_id: Option<&str>, answer: &str) {
        let mut fp = recorder.fingerprint;
        fp.turn(Role::Assistant, answer);
        let fingerprint = fp.finish();
        let turn = TurnRecord {
            conversation_id: conversation_id.to_string(),
            turn: recorder.turn,
            message_id: message_id.map(str::to_string),
            tools: recorder.tools,
            opening: false,
        };
        let placement = if recorder.starts_conversation && !recorder.by_id {
            Placement::Opening
        } else {
            Placement::Next { opening: recorder.opening }
        };
        let conversation = ConversationRecord {
            conversation_id: conversation_id.to_string(),
            app: recorder.app,
            model: recorder.model,
            user: recorder.user,
            chat_id: recorder.chat_id,
            latest_turn: recorder.turn,
            latest_message_id: message_id.map(str::to_string),
            tools: recorder.tools,
            created_at: recorder.created_at,
            updated_at: 0,
        };
        let result = self.store.record(&fingerprint, turn, conversation, placement).await;
        if let Some(mut lock) = recorder.lock {
            // After the record is visible: a request that read before this instant reads again.
            *lock.local = Some(Instant::now());
            // Dropping the guard now releases the lease: the next turn may start.
        }
        if let Err(e) = result {
            tracing::warn!(
                conversation = conversation_id,
                "⚠️ could not record the turn; the next one starts a new conversation: {e}"
            );
        }
    }

    /// Dify no longer knows this conversation: drop its mappings.
    pub async fn forget(&self, conversation_id: &str) {
        if let Err(e) = self.store.forget(conversation_id).await {
            tracing::warn!(conversation = conversation_id, "⚠️ could not drop a stale mapping: {e}");
        }
    }
}
