//! STREAM_SMOOTHING=adaptive: evens out bursty streams. The original proxy slept between
//! characters (`calculate_delay`), which capped every answer at a few hundred characters a
//! second. Here nothing is ever delayed while chunks arrive at an even pace; only a burst
//! (several chunks arriving at once after a pause) is spread over the time the previous
//! pause suggests, at most 25 ms apart, and no chunk is held more than 250 ms after it
//! arrived. Output therefore keeps up with any upstream rate: smoothing adds a bounded lag,
//! never a throughput cap. Off by default: most clients render bursts fine.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;

/// The largest gap put between two chunks of a burst.
const MAX_PACE: Duration = Duration::from_millis(25);
/// The longest a chunk may be held back.
const MAX_LAG: Duration = Duration::from_millis(250);
/// Chunks read ahead at most; beyond that a burst is passed on as it is.
const MAX_QUEUE: usize = 64;

/// The body, smoothed.
pub fn adaptive(body: Body) -> Body {
    Body::from_stream(smooth(body.into_data_stream()))
}

pub fn smooth<S>(inner: S) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin,
{
    let state = Smoother {
        inner,
        queue: VecDeque::new(),
        ended: false,
        failed: None,
        last_burst: None,
        gap: Duration::ZERO,
        pace: Duration::ZERO,
        next_at: Instant::now(),
    };
    futures_util::stream::unfold(state, |mut s| async move { s.next().await.map(|item| (item, s)) })
}

struct Smoother<S> {
    inner: S,
    /// Chunks received and not yet sent, with their arrival time.
    queue: VecDeque<(Instant, Bytes)>,
    ended: bool,
    failed: Option<axum::Error>,
    /// When the latest burst began, and the running average gap between bursts.
    last_burst: Option<Instant>,
    gap: Duration,
    /// Spacing for the current burst, and when its next chunk may go.
    pace: Duration,
    next_at: Instant,
}

impl<S> Smoother<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    async fn next(&mut self) -> Option<Result<Bytes, axum::Error>> {
        loop {
            if self.queue.is_empty() {
                if let Some(error) = self.failed.take() {
                    return Some(Err(error));
                }
                if self.ended {
                    return None;
                }
                // Nothing pending: wait for upstream, then send the first chunk at once.
                let item = self.inner.next().await;
                if !self.accept(item) {
                    continue;
                }
                self.start_burst();
                return self.pop();
            }
            let (arrived, _) = self.queue[0];
            let due = self.next_at.min(arrived + MAX_LAG);
            if self.queue.len() >= MAX_QUEUE || Instant::now() >= due || (self.ended && self.failed.is_some()) {
                return self.pop();
            }
            if self.ended {
                tokio::time::sleep_until(due).await;
                return self.pop();
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => return self.pop(),
                item = self.inner.next() => {
                    self.accept(item);
                }
            }
        }
    }

    /// Queues what upstream sent; false when it sent no chunk.
    fn accept(&mut self, item: Option<Result<Bytes, axum::Error>>) -> bool {
        match item {
            Some(Ok(bytes)) => {
                self.queue.push_back((Instant::now(), bytes));
                true
            }
            Some(Err(error)) => {
                self.failed = Some(error);
                self.ended = true;
                false
            }
            None => {
                self.ended = true;
                false
            }
        }
    }

    /// A chunk arrived after a wait: read what else is already there (the burst), learn the
    /// gap between bursts, and set the spacing for this one.
    fn start_burst(&mut self) {
        while self.queue.len() < MAX_QUEUE && !self.ended {
            match self.inner.next().now_or_never() {
                Some(item) => {
                    self.accept(item);
                }
                None => break,
            }
        }
        let now = Instant::now();
        if let Some(previous) = self.last_burst.replace(now) {
            let gap = now.saturating_duration_since(previous);
            self.gap = if self.gap.is_zero() { gap } else { (self.gap * 7 + gap) / 8 };
        }
        let parts = u32::try_from(self.queue.len()).unwrap_or(u32::MAX).max(1);
        self.pace = (self.gap / parts).min(MAX_PACE);
        self.next_at = now;
    }

    fn pop(&mut self) -> Option<Result<Bytes, axum::Error>> {
        let (_, bytes) = self.queue.pop_front()?;
        self.next_at = Instant::now() + self.pace;
        Some(Ok(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize) -> Vec<Result<Bytes, axum::Error>> {
        (0..n).map(|i| Ok(Bytes::from(format!("data: {i}\n\n")))).collect()
    }

    #[tokio::test]
    async fn everything_arrives_in_order_and_nothing_is_lost() {
        let out: Vec<_> = smooth(futures_util::stream::iter(chunks(200))).collect().await;
        assert_eq!(out.len(), 200);
        for (i, item) in out.iter().enumerate() {
            assert_eq!(item.as_ref().expect("ok"), &Bytes::from(format!("data: {i}\n\n")));
        }
    }

    #[tokio::test]
    async fn a_fast_upstream_is_not_slowed_down() {
        // 5000 chunks arriving at once: smoothing may hold each at most MAX_LAG, so the whole
        // stream takes far less than per-chunk sleeps would (5000 × 1 ms = 5 s).
        let started = std::time::Instant::now();
        let out: Vec<_> = smooth(futures_util::stream::iter(chunks(5000))).collect().await;
        assert_eq!(out.len(), 5000);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bursts_after_pauses_are_spread_but_bounded() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(64);
        tokio::spawn(async move {
            for _ in 0..3 {
                for chunk in chunks(5) {
                    let _ = tx.send(chunk).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let started = std::time::Instant::now();
        let mut times = Vec::new();
        let mut out = Box::pin(smooth(Box::pin(stream)));
        while let Some(item) = out.next().await {
            item.expect("ok");
            times.push(started.elapsed());
        }
        assert_eq!(times.len(), 15);
        // The last burst was spread: its chunks did not all leave at the same instant.
        let last = &times[10..];
        assert!(last[4] - last[0] >= Duration::from_millis(20), "{times:?}");
        // And nothing was held longer than the lag bound.
        assert!(times[14] < Duration::from_millis(300) + MAX_LAG, "{times:?}");
    }
}
