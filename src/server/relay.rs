//! Relays one Dify generation to one OpenAI client. Each upstream event is translated and
//! written out as soon as it arrives (no buffering, no pacing). When the client goes away
//! first, the upstream request is dropped and Dify's stop endpoint is called, so Dify stops
//! spending tokens on an answer nobody reads.

use std::convert::Infallible;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{DRAIN_GRACE, SharedState};
use crate::bridge::{Outcome, Sink, Translator};
use crate::conversations::Recorder;
use crate::dify::{AppMode, DifyClient, DifyError, EventStream};
use crate::openai::ChunkWriter;
use crate::secret::Secret;

/// Calls Dify's stop endpoint if dropped while armed: the client left mid-answer.
pub struct StopGuard {
    target: Option<StopTarget>,
    task_id: Option<String>,
}

struct StopTarget {
    client: DifyClient,
    key: Secret,
    mode: AppMode,
    user: String,
    model: String,
}

impl StopGuard {
    pub fn new(client: DifyClient, key: Secret, mode: AppMode, user: String, model: String) -> Self {
        idle_trim::begin();
        StopGuard { target: Some(StopTarget { client, key, mode, user, model }), task_id: None }
    }

    pub fn set_task(&mut self, task_id: Option<&String>) {
        if self.task_id.is_none() {
            self.task_id = task_id.cloned();
        }
    }

    pub fn disarm(&mut self) {
        self.target = None;
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        idle_trim::end();
        let Some(target) = self.target.take() else { return };
        let Some(task_id) = self.task_id.take() else {
            tracing::info!(model = %target.model, "client went away before Dify named the task; nothing to stop");
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        // In the request's span, so the outcome is logged with its request id.
        let stopping = async move {
            match target.client.stop(&target.key, target.mode, &task_id, &target.user).await {
                Ok(()) => tracing::info!(model = %target.model, task_id, "client went away: stopped the Dify task"),
                Err(e) => {
                    tracing::warn!(model = %target.model, task_id, "client went away; stopping the Dify task failed: {e}")
                }
            }
        };
        handle.spawn(tracing::Instrument::in_current_span(stopping));
    }
}

/// Gives the heap memory a burst of requests freed back to the system once opendify has been
/// idle for a moment. glibc's allocator keeps it otherwise (tens of MiB after a thousand
/// concurrent streams); trimming off the hot path, after a quiet second, costs the requests
/// nothing.
mod idle_trim {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    /// Generations to Dify in flight, and how many have started so far.
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    static STARTED: AtomicU64 = AtomicU64::new(0);
    /// A watcher task is waiting for a quiet moment.
    static WATCHING: AtomicBool = AtomicBool::new(false);
    const QUIET: Duration = Duration::from_secs(1);

    pub fn begin() {
        OPEN.fetch_add(1, Ordering::AcqRel);
        STARTED.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end() {
        if OPEN.fetch_sub(1, Ordering::AcqRel) != 1 || WATCHING.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            WATCHING.store(false, Ordering::Release);
            return;
        };
        handle.spawn(async {
            let _watching = Watching;
            loop {
                let seen = STARTED.load(Ordering::Acquire);
                tokio::time::sleep(QUIET).await;
                if OPEN.load(Ordering::Acquire) == 0 && STARTED.load(Ordering::Acquire) == seen {
                    let _ = tokio::task::spawn_blocking(trim).await;
                    return;
                }
            }
        });
    }

    /// Clears [`WATCHING`] however the watcher ends (also when its runtime shuts down).
    struct Watching;

    impl Drop for Watching {
        fn drop(&mut self) {
            WATCHING.store(false, Ordering::Release);
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim() {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only hands free pages of glibc's heap back to the kernel; it
        // is thread-safe and has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn trim() {}
}

/// Reads what is left of a finished upstream body so its connection goes back to the pool.
pub fn drain(mut upstream: EventStream) {
    for _ in 0..4 {
        match upstream.next().now_or_never() {
            Some(None) => return,
            Some(Some(_)) => continue,
            None => break,
        }
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_GRACE, async { while upstream.next().await.is_some() {} }).await;
    });
}

/// Writes translated output as SSE frames into the current buffer.
struct StreamSink<'a> {
    writer: &'a ChunkWriter,
    out: &'a mut BytesMut,
    sent_text: &'a mut bool,
    /// The answer as the client sees it, kept only when the turn will be recorded.
    answer: Option<&'a mut String>,
}

impl Sink for StreamSink<'_> {
    fn content(&mut self, text: &str) {
        if !text.is_empty() {
            *self.sent_text = true;
            self.writer.content(self.out, text);
            if let Some(answer) = self.answer.as_deref_mut() {
                answer.push_str(text);
            }
        }
    }
    fn reasoning(&mut self, text: &str) {
        if !text.is_empty() {
            self.writer.reasoning(self.out, text);
        }
    }
    fn replace(&mut self, text: &str) {
        // Text already sent cannot be taken back: the replacement follows after a blank line.
        let sep = if *self.sent_text { "\n\n" } else { "" };
        self.content(&format!("{sep}{text}"));
    }
    fn final_answer(&mut self, text: &str) {
        if !*self.sent_text {
            self.content(text);
        }
    }
    fn keep_alive(&mut self) {
        self.out.put_slice(b": keep-alive\n\n");
    }
}

/// What the relay reports when the stream is over (for logs and metrics).
pub struct RelayEnd {
    pub outcome: Outcome,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub events: u64,
}

impl RelayEnd {
    pub fn from_translator(translator: &Translator) -> Self {
        RelayEnd {
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
    pub continuity: &'static str,
    pub started: Instant,
    pub stream: bool,
}

impl Finisher {
    pub fn records(&self) -> bool {
        self.recorder.is_some()
    }

    pub async fn finish(self, end: &RelayEnd, answer: &str) {
        if let (Outcome::Finished { .. }, Some(recorder), Some(conversation)) =
            (&end.outcome, self.recorder, end.conversation_id.as_deref())
        {
            let recording = Instant::now();
            self.state.conversations.record(recorder, conversation, end.message_id.as_deref(), answer).await;
            self.state.metrics.store_latency.observe(recording.elapsed());
        }
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (model, user, stream, continuity) = (self.model.as_str(), self.user.as_str(), self.stream, self.continuity);
        let conversation = end.conversation_id.as_deref().unwrap_or("-");
        let message_id = end.message_id.as_deref().unwrap_or("-");
        match &end.outcome {
            Outcome::Failed(error) => tracing::warn!(
                model,
                user,
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
                model,
                user,
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

pub struct Relay {
    upstream: Option<EventStream>,
    translator: Translator,
    writer: ChunkWriter,
    guard: StopGuard,
    deadline: CancellationToken,
    sent_role: bool,
    sent_text: bool,
    done: bool,
    answer: Option<String>,
    finisher: Option<Finisher>,
}

impl Relay {
    pub fn new(
        upstream: EventStream,
        translator: Translator,
        writer: ChunkWriter,
        guard: StopGuard,
        deadline: CancellationToken,
        finisher: Finisher,
    ) -> Self {
        Relay {
            upstream: Some(upstream),
            translator,
            writer,
            guard,
            deadline,
            sent_role: false,
            sent_text: false,
            done: false,
            answer: finisher.records().then(String::new),
            finisher: Some(finisher),
        }
    }

    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut relay| async move {
            let bytes = relay.next_frame().await?;
            Some((Ok(bytes), relay))
        })
    }

    /// The next bytes for the client, or `None` when the response is complete.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        if !self.sent_role {
            self.sent_role = true;
            self.writer.role(&mut out);
            return Some(out.freeze());
        }
        loop {
            let upstream = self.upstream.as_mut()?;
            let next = tokio::select! {
                biased;
                next = upstream.next() => next,
                () = self.deadline.cancelled() => Some(Err(DifyError::Transport("opendify is shutting down".into()))),
            };
            let mut sink = StreamSink {
                writer: &self.writer,
                out: &mut out,
                sent_text: &mut self.sent_text,
                answer: self.answer.as_mut(),
            };
            match next {
                Some(Ok(event)) => {
                    self.translator.on_event(&event, &mut sink);
                    self.guard.set_task(self.translator.task_id.as_ref());
                }
                Some(Err(err)) => self.translator.on_end(Some(&err), &mut sink),
                None => self.translator.on_end(None, &mut sink),
            }
            match self.translator.outcome().clone() {
                Outcome::Running => {
                    if !out.is_empty() {
                        return Some(out.freeze());
                    }
                }
                Outcome::Finished { reason, usage } => {
                    self.writer.finish(&mut out, reason, usage);
                    return Some(self.complete(out).await);
                }
                Outcome::Failed(error) => {
                    self.writer.error(&mut out, &error.to_json());
                    return Some(self.complete(out).await);
                }
            }
        }
    }

    async fn complete(&mut self, out: BytesMut) -> Bytes {
        self.done = true;
        // The generation is over either way: nothing left for Dify to stop. Unless the
        // shutdown deadline ended the stream: then Dify is still generating.
        if !self.deadline.is_cancelled() {
            self.guard.disarm();
        }
        let end = RelayEnd::from_translator(&self.translator);
        if let Some(upstream) = self.upstream.take()
            && matches!(end.outcome, Outcome::Finished { .. })
        {
            drain(upstream);
        }
        if let Some(finisher) = self.finisher.take() {
            finisher.finish(&end, self.answer.as_deref().unwrap_or("")).await;
        }
        out.freeze()
    }
}
