//! What happens once an answer is over, streamed or not: the turn is recorded (before the
//! client sees the end, so its next turn finds it) and the request's completion is logged.

use std::time::Instant;

use super::SharedState;
use crate::bridge::{Outcome, Translator};
use crate::conversations::{Continuity, Recorder, ResponseRecord};
use crate::logging::Shown;

/// What the log line and the recorder need once an answer is over.
pub struct End {
    pub outcome: Outcome,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub events: u64,
}

impl End {
    pub fn of(translator: &Translator) -> Self {
        End {
            outcome: translator.outcome().clone(),
            conversation_id: translator.conversation_id.clone(),
            message_id: translator.message_id.clone(),
            events: translator.events,
        }
    }
}

/// What happens once an answer is complete, streamed or not: the turn is recorded (before
/// the client sees the end, so its next turn finds it) and the completion is logged.
pub struct Finisher {
    pub state: SharedState,
    pub recorder: Option<Recorder>,
    pub model: String,
    pub user: String,
    pub continuity: Continuity,
    pub started: Instant,
    pub stream: bool,
    /// Keeps the answer's summary (a Responses API response) once it is over.
    pub keeper: Option<Keeper>,
    /// Deletes the answer's Dify conversation once it is over (Open WebUI's tasks). Boxed:
    /// few answers have one, and the finisher is moved with every answer.
    pub discard: Option<Box<Discard>>,
}

/// What deletes a conversation in Dify: the app's key and the user it belongs to.
pub struct Discard {
    pub client: crate::dify::DifyClient,
    pub key: crate::secret::Secret,
    pub user: String,
}

/// Keeps a Responses API response once it is over, so that `previous_response_id` continues
/// its Dify conversation and `GET /v1/responses/{id}` shows it again. Only the app and the
/// user that made it can do either.
#[derive(Clone)]
pub struct Keeper {
    pub state: SharedState,
    pub id: String,
    /// `app_id` of the app key.
    pub app: String,
    pub user: String,
    /// The tool definitions the conversation has after this turn.
    pub tools: Option<u64>,
}

impl Keeper {
    pub async fn keep(&self, conversation_id: Option<String>, body: String) {
        let record = ResponseRecord {
            id: self.id.clone(),
            app: self.app.clone(),
            user: self.user.clone(),
            conversation_id,
            tools: self.tools,
            body,
        };
        if let Err(e) = self.state.conversations.store().put_response(record).await {
            tracing::warn!(response = %self.id, "could not keep the response, so previous_response_id will not find it: {e}");
        }
    }
}

impl Finisher {
    pub fn records(&self) -> bool {
        self.recorder.is_some()
    }

    /// `summary`: the answer as one document, kept when the finisher has a keeper.
    pub async fn finish(self, end: &End, answer: &str, summary: Option<String>) {
        if let (Outcome::Finished { .. }, Some(recorder), Some(conversation)) =
            (&end.outcome, self.recorder, end.conversation_id.as_deref())
        {
            let recording = Instant::now();
            self.state.conversations.record(recorder, conversation, end.message_id.as_deref(), answer).await;
            self.state.metrics.observe_store(recording.elapsed());
        }
        if let (Some(keeper), Some(body)) = (&self.keeper, summary) {
            // Boxed: only Responses API answers are kept.
            Box::pin(keeper.keep(end.conversation_id.clone(), body)).await;
        }
        if let (Some(discard), Some(conversation)) = (self.discard, end.conversation_id.clone()) {
            // In the background: the client has its answer; a failure is only logged.
            let deleting = async move {
                match discard.client.delete_conversation(&discard.key, &conversation, &discard.user).await {
                    Ok(()) => tracing::debug!(conversation, "🧹 deleted the task's Dify conversation"),
                    Err(e) => tracing::warn!(conversation, "could not delete the task's Dify conversation: {e}"),
                }
            };
            tokio::spawn(tracing::Instrument::in_current_span(deleting));
        }
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (model, user) = (Shown(&self.model), Shown(&self.user));
        let (stream, continuity) = (self.stream, self.continuity.as_str());
        let conversation = end.conversation_id.as_deref().unwrap_or("-");
        let message_id = end.message_id.as_deref().unwrap_or("-");
        match &end.outcome {
            Outcome::Failed { error, .. } => tracing::warn!(
                %model,
                %user,
                conversation,
                message_id,
                continuity,
                stream,
                latency_ms,
                events = end.events,
                "❌ request failed: {}",
                error.message
            ),
            _ => tracing::info!(
                %model,
                %user,
                conversation,
                message_id,
                continuity,
                stream,
                latency_ms,
                events = end.events,
                "👤 {user} ✅ completed"
            ),
        }
    }
}
