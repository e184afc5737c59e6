//! Relays one Dify generation to one streaming client, in the client's dialect. Each upstream
//! event is translated and written out as soon as it arrives (no buffering, no pacing).
//! Whenever the answer ends without Dify having ended it (the client went away, a timeout,
//! a broken or oversized event, shutdown), Dify's stop endpoint is called for the task, so
//! Dify stops spending tokens on an answer nobody reads.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::finish::{End, Finisher};
use super::metrics::{Cut, Metrics};
use super::trim::Busy;
use super::{DRAIN_GRACE, Live};
use crate::bridge::AppRoute;
use crate::bridge::pipeline::Pipeline;
use crate::bridge::{Outcome, StopReason, StreamEncoder, Translator};
use crate::dify::{DifyError, EventStream};

/// Tells Dify to stop a generation opendify will not read to its end. Armed from the start;
/// disarmed once Dify itself ended the answer; dropped armed, it stops the task as
/// "client gone".
pub struct StopGuard {
    target: Option<StopTarget>,
    task_id: Option<String>,
}

/// What stopping a task takes: shared handles rather than copies, as every answer carries
/// one and few are ever used.
pub struct StopTarget {
    /// Its Dify client; its REQUEST_TIMEOUT bounds how long a stop waits for Dify to name the task.
    pub live: Arc<Live>,
    /// The app's key (the client's own with DIFY_KEY_PASSTHROUGH) and mode.
    pub route: Arc<AppRoute>,
    pub user: String,
    pub model: String,
    pub metrics: Arc<Metrics>,
}

impl StopGuard {
    pub fn new(target: StopTarget) -> Self {
        StopGuard { target: Some(target), task_id: None }
    }

    pub fn set_task(&mut self, task_id: Option<&String>) {
        if self.task_id.is_none() {
            self.task_id = task_id.cloned();
        }
    }

    /// Dify ended the generation itself: nothing to stop.
    pub fn disarm(&mut self) {
        self.target = None;
    }

    /// Stops the task now; when Dify has not named it yet, `upstream` is read in the
    /// background until it does (at most `chase_for`), then the task is stopped.
    pub fn stop(&mut self, reason: StopReason, upstream: Option<EventStream>) {
        let Some(target) = self.target.take() else { return };
        let task_id = self.task_id.take();
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        target.metrics.dify_stop(reason);
        // In the request's span, so the outcome is logged with its request id.
        let stopping = async move {
            let task_id = match (task_id, upstream) {
                (Some(id), _) => Some(id),
                (None, Some(upstream)) => chase_task(upstream, target.live.config.request_timeout).await,
                (None, None) => None,
            };
            let Some(task_id) = task_id else {
                tracing::info!(model = %target.model, reason = reason.as_str(), "Dify never named the task; nothing to stop");
                return;
            };
            match target.live.client.stop(&target.route.key, target.route.mode, &task_id, &target.user).await {
                Ok(()) => {
                    tracing::info!(model = %target.model, task_id, reason = reason.as_str(), "stopped the Dify task")
                }
                Err(e) => tracing::warn!(
                    model = %target.model,
                    task_id,
                    reason = reason.as_str(),
                    "stopping the Dify task failed: {e}"
                ),
            }
        };
        handle.spawn(tracing::Instrument::in_current_span(stopping));
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.stop(StopReason::ClientGone, None);
    }
}

/// Reads events until one names its task (Dify puts `task_id` on every answer event).
pub async fn chase_task(mut upstream: EventStream, within: Duration) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Task {
        task_id: Option<String>,
    }
    let reading = async {
        while let Some(Ok(event)) = upstream.next().await {
            if let Ok(Task { task_id: Some(id) }) = serde_json::from_str::<Task>(&event.data)
                && !id.is_empty()
            {
                return Some(id);
            }
        }
        None
    };
    tokio::time::timeout(within, reading).await.ok().flatten()
}

/// Reads what is left of a finished upstream body so its connection goes back to the pool.
/// Dify's closing chunk comes right after its last event, and hyper's connection task hands
/// it over on its next turn: that turn is waited for here, which costs less than a task of
/// its own. A body with more to say (audio after the answer) is drained in the background.
pub async fn drain(mut upstream: EventStream) {
    for _ in 0..4 {
        let next = tokio::select! {
            biased;
            next = upstream.next() => Some(next),
            () = tokio::task::yield_now() => None,
        };
        match next {
            Some(None) => return,
            Some(Some(_)) => continue,
            None => break,
        }
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_GRACE, async { while upstream.next().await.is_some() {} }).await;
    });
}

pub struct Relay<E: StreamEncoder> {
    upstream: Option<EventStream>,
    translator: Translator,
    pipeline: Pipeline<E>,
    guard: StopGuard,
    deadline: CancellationToken,
    metrics: Arc<Metrics>,
    started: Instant,
    began: bool,
    first_token: bool,
    done: bool,
    finisher: Option<Finisher>,
    model: String,
    _busy: Busy,
}

impl<E: StreamEncoder> Relay<E> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstream: EventStream,
        translator: Translator,
        pipeline: Pipeline<E>,
        guard: StopGuard,
        deadline: CancellationToken,
        metrics: Arc<Metrics>,
        finisher: Finisher,
        busy: Busy,
    ) -> Self {
        Relay {
            upstream: Some(upstream),
            translator,
            pipeline,
            guard,
            deadline,
            metrics,
            started: finisher.started,
            model: finisher.model.clone(),
            began: false,
            first_token: false,
            done: false,
            finisher: Some(finisher),
            _busy: busy,
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
        if !self.began {
            self.began = true;
            self.pipeline.sink().start();
            return Some(self.pipeline.sink().take());
        }
        loop {
            let upstream = self.upstream.as_mut()?;
            let next = tokio::select! {
                biased;
                next = upstream.next() => Some(next),
                () = self.deadline.cancelled() => None,
            };
            match next {
                Some(Some(Ok(event))) => {
                    self.translator.on_event(&event, &mut self.pipeline);
                    self.guard.set_task(self.translator.task_id.as_ref());
                }
                Some(Some(Err(err))) => {
                    self.metrics.upstream_error(err.kind());
                    self.translator.on_end(Some(&err), &mut self.pipeline);
                }
                Some(None) => self.translator.on_end(None, &mut self.pipeline),
                None => {
                    let shutting = DifyError::Transport("opendify is shutting down".into());
                    self.translator.abort(&shutting, StopReason::Shutdown, &mut self.pipeline);
                }
            }
            if !self.first_token && self.pipeline.answered() {
                self.first_token = true;
                self.metrics.observe_first_token(self.started.elapsed());
            }
            if self.translator.is_done() {
                return Some(self.complete().await);
            }
            let out = self.pipeline.sink().take();
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    async fn complete(&mut self) -> Bytes {
        self.done = true;
        let mut end = End::of(&self.translator);
        if let (Some(problem), Outcome::Finished { .. }) = (self.pipeline.refused(), &end.outcome) {
            // The encoder already told the client; the turn is not recorded as answered.
            let error = crate::bridge::structured::invalid_answer(problem, &self.model);
            end.outcome = Outcome::Failed { error, stop: None };
        }
        match &end.outcome {
            Outcome::Finished { .. } => {
                self.guard.disarm();
                if let Some(upstream) = self.upstream.take() {
                    drain(upstream).await;
                }
            }
            Outcome::Failed { stop, .. } => {
                self.metrics.cut(Cut::Error);
                match stop {
                    Some(reason) => self.guard.stop(*reason, self.upstream.take()),
                    // Dify ended the answer itself.
                    None => self.guard.disarm(),
                }
            }
            Outcome::Running => {}
        }
        if let Some(finisher) = self.finisher.take() {
            let summary = self.pipeline.sink().summary();
            finisher.finish(&end, self.pipeline.transcript(), summary).await;
        }
        self.pipeline.sink().take()
    }
}

impl<E: StreamEncoder> Drop for Relay<E> {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-answer: stop Dify, reading on for the task id if needed.
            self.guard.stop(StopReason::ClientGone, self.upstream.take());
        }
    }
}
