//! Prometheus metrics, hand-written: a handful of counters, gauges and fixed-bucket
//! histograms on atomics, rendered as text on `GET /metrics`. No metrics crate, no locks on
//! the hot path (the model table is read-locked, written only the first time a model is
//! seen), and label sets kept small: model names come from the registry, never from what a
//! client typed; statuses are folded into a fixed list.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// Response statuses with a series of their own; anything else counts as `other`.
const STATUSES: [u16; 16] = [200, 400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 499, 500, 502, 503, 504];
const OTHER_STATUS: usize = STATUSES.len();

/// Never more model series than this (a safety net: names come from the registry).
const MAX_MODELS: usize = 256;

const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const OVERHEAD_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
const STORE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Why a request was turned away before reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized,
    TooLarge,
    SlowClient,
    Overloaded,
}

const REJECTIONS: [(Rejection, &str); 4] = [
    (Rejection::Unauthorized, "unauthorized"),
    (Rejection::TooLarge, "too_large"),
    (Rejection::SlowClient, "slow_client"),
    (Rejection::Overloaded, "overloaded"),
];

/// Why a stream ended without finishing normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client went away mid-answer.
    ClientGone,
    /// The stream ended with an error chunk (upstream failure, idle timeout, shutdown).
    Error,
}

const CUTS: [(Cut, &str); 2] = [(Cut::ClientGone, "client_gone"), (Cut::Error, "error")];

/// A fixed-bucket histogram: per-bucket counts (cumulated when rendered), sum in nanoseconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let slot = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Request counts of one model: `[stream][status]`.
struct ModelSeries {
    name: Box<str>,
    counts: [[AtomicU64; STATUSES.len() + 1]; 2],
}

impl ModelSeries {
    fn new(name: &str) -> Self {
        ModelSeries { name: name.into(), counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

/// Values that live elsewhere (the Dify client, the conversation store), read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub upstream_errors: Vec<(&'static str, u64)>,
    pub conversation_mappings: Option<u64>,
    pub upstream_in_flight: usize,
    pub upstream_capacity: usize,
    pub ready: bool,
}

pub struct Metrics {
    models: RwLock<Vec<ModelSeries>>,
    unknown: ModelSeries,
    /// `[non-streaming, streaming]`.
    duration: [Histogram; 2],
    ttft: Histogram,
    overhead: Histogram,
    pub store_latency: Histogram,
    active_streams: AtomicI64,
    cuts: [AtomicU64; CUTS.len()],
    rejections: [AtomicU64; REJECTIONS.len()],
    /// The conversation count as last read from the store, and when (read at scrape time).
    pub(super) mappings_cache: Mutex<Option<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            models: RwLock::new(Vec::new()),
            unknown: ModelSeries::new("unknown"),
            duration: [Histogram::new(LATENCY_BUCKETS), Histogram::new(LATENCY_BUCKETS)],
            ttft: Histogram::new(LATENCY_BUCKETS),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            store_latency: Histogram::new(STORE_BUCKETS),
            active_streams: AtomicI64::new(0),
            cuts: std::array::from_fn(|_| AtomicU64::new(0)),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            mappings_cache: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// One finished chat request (for a stream: its response head). `model` is a registry
    /// name, or `None` when the request named no known model.
    pub fn count_request(&self, model: Option<&str>, stream: bool, status: u16) {
        let slot = STATUSES.iter().position(|&s| s == status).unwrap_or(OTHER_STATUS);
        let stream = usize::from(stream);
        let Some(model) = model else {
            self.unknown.counts[stream][slot].fetch_add(1, Relaxed);
            return;
        };
        {
            let models = self.models.read().unwrap_or_else(|e| e.into_inner());
            if let Some(series) = models.iter().find(|s| &*s.name == model) {
                series.counts[stream][slot].fetch_add(1, Relaxed);
                return;
            }
        }
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = models.iter().find(|s| &*s.name == model) {
            series.counts[stream][slot].fetch_add(1, Relaxed);
        } else if models.len() < MAX_MODELS {
            let series = ModelSeries::new(model);
            series.counts[stream][slot].fetch_add(1, Relaxed);
            models.push(series);
        } else {
            self.unknown.counts[stream][slot].fetch_add(1, Relaxed);
        }
    }

    /// How many requests were counted for `model` with `status` (tests, the doctor).
    pub fn requests(&self, model: &str, stream: bool, status: u16) -> u64 {
        let slot = STATUSES.iter().position(|&s| s == status).unwrap_or(OTHER_STATUS);
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models.iter().find(|s| &*s.name == model).map_or(0, |s| s.counts[usize::from(stream)][slot].load(Relaxed))
    }

    pub fn observe_duration(&self, stream: bool, elapsed: Duration) {
        self.duration[usize::from(stream)].observe(elapsed);
    }

    pub fn observe_overhead(&self, overhead: Duration) {
        self.overhead.observe(overhead);
    }

    pub fn reject(&self, why: Rejection) {
        if let Some(i) = REJECTIONS.iter().position(|(r, _)| *r == why) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    pub fn active_streams(&self) -> i64 {
        self.active_streams.load(Relaxed)
    }

    pub fn cuts(&self, why: Cut) -> u64 {
        CUTS.iter().position(|(c, _)| *c == why).map_or(0, |i| self.cuts[i].load(Relaxed))
    }

    fn cut(&self, why: Cut) {
        if let Some(i) = CUTS.iter().position(|(c, _)| *c == why) {
            self.cuts[i].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "opendify_requests_total",
            "counter",
            "Chat completion requests by model, HTTP status and streaming",
        );
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        for series in models.iter().chain(std::iter::once(&self.unknown)) {
            let model = escape(&series.name);
            for (stream, counts) in series.counts.iter().enumerate() {
                for (slot, count) in counts.iter().enumerate() {
                    let n = count.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let status = STATUSES.get(slot).map_or_else(|| "other".to_string(), u16::to_string);
                    let stream = stream == 1;
                    let _ = writeln!(
                        out,
                        "opendify_requests_total{{model=\"{model}\",status=\"{status}\",stream=\"{stream}\"}} {n}"
                    );
                }
            }
        }
        drop(models);

        header(
            &mut out,
            "opendify_request_duration_seconds",
            "histogram",
            "Chat completion time, from the request body read to the last byte (streams: to [DONE])",
        );
        self.duration[0].render(&mut out, "opendify_request_duration_seconds", "stream=\"false\"");
        self.duration[1].render(&mut out, "opendify_request_duration_seconds", "stream=\"true\"");
        header(
            &mut out,
            "opendify_time_to_first_token_seconds",
            "histogram",
            "Streams: time until the first content chunk left opendify",
        );
        self.ttft.render(&mut out, "opendify_time_to_first_token_seconds", "");
        header(
            &mut out,
            "opendify_overhead_seconds",
            "histogram",
            "Non-streaming requests: total time minus the time spent waiting on Dify",
        );
        self.overhead.render(&mut out, "opendify_overhead_seconds", "");

        header(&mut out, "opendify_upstream_errors_total", "counter", "Failed Dify calls by kind of failure");
        for (kind, n) in &snapshot.upstream_errors {
            let _ = writeln!(out, "opendify_upstream_errors_total{{kind=\"{kind}\"}} {n}");
        }

        header(&mut out, "opendify_active_streams", "gauge", "Streaming responses open right now");
        let _ = writeln!(out, "opendify_active_streams {}", self.active_streams.load(Relaxed).max(0));
        header(&mut out, "opendify_streams_cut_total", "counter", "Streams that did not finish normally, by reason");
        for (i, (_, reason)) in CUTS.iter().enumerate() {
            let _ = writeln!(out, "opendify_streams_cut_total{{reason=\"{reason}\"}} {}", self.cuts[i].load(Relaxed));
        }
        header(&mut out, "opendify_rejected_total", "counter", "Requests turned away before any work, by reason");
        for (i, (_, reason)) in REJECTIONS.iter().enumerate() {
            let _ =
                writeln!(out, "opendify_rejected_total{{reason=\"{reason}\"}} {}", self.rejections[i].load(Relaxed));
        }
        header(&mut out, "opendify_upstream_in_flight", "gauge", "Requests to Dify in flight");
        let _ = writeln!(out, "opendify_upstream_in_flight {}", snapshot.upstream_in_flight);
        header(&mut out, "opendify_upstream_capacity", "gauge", "MAX_CONCURRENT_UPSTREAM");
        let _ = writeln!(out, "opendify_upstream_capacity {}", snapshot.upstream_capacity);

        header(&mut out, "opendify_conversation_mappings", "gauge", "Conversations in the conversation store");
        if let Some(n) = snapshot.conversation_mappings {
            let _ = writeln!(out, "opendify_conversation_mappings {n}");
        }
        header(&mut out, "opendify_store_latency_seconds", "histogram", "Conversation store operations");
        self.store_latency.render(&mut out, "opendify_store_latency_seconds", "");
        header(&mut out, "opendify_ready", "gauge", "1 when /ready answers 200");
        let _ = writeln!(out, "opendify_ready {}", u8::from(snapshot.ready));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as Prometheus wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A streaming response body that reports to the metrics as it goes: time to first token,
/// total duration, how it ended. It also holds the request's upstream slot until the stream
/// is over, and enters the request's tracing span whenever it is polled or dropped, so log
/// lines written while streaming carry the request id.
pub struct TrackedStream {
    inner: Option<Body>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
    started: Instant,
    frames: u64,
    first_token: bool,
    last: Bytes,
    finished: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl TrackedStream {
    pub fn new(
        inner: Body,
        metrics: Arc<Metrics>,
        span: tracing::Span,
        started: Instant,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        metrics.active_streams.fetch_add(1, Relaxed);
        TrackedStream {
            inner: Some(inner),
            metrics,
            span,
            started,
            frames: 0,
            first_token: false,
            last: Bytes::new(),
            finished: false,
            _permit: permit,
        }
    }

    fn on_data(&mut self, data: &Bytes) {
        self.frames += 1;
        // The first frame is the role chunk; the next chunk frame carries the first token.
        if !self.first_token && self.frames > 1 && data.starts_with(b"data: {\"id\"") {
            self.first_token = true;
            self.metrics.ttft.observe(self.started.elapsed());
        }
        self.last = data.clone();
    }

    fn on_end(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.metrics.active_streams.fetch_sub(1, Relaxed);
        self.metrics.observe_duration(true, self.started.elapsed());
        if contains(&self.last, b"data: {\"error\"") {
            self.metrics.cut(Cut::Error);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl http_body::Body for TrackedStream {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let polled = {
            let _entered = this.span.enter();
            Pin::new(inner).poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.on_data(data);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.on_end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        // Dropping the relay here may call Dify's stop endpoint: inside the request's span.
        self.inner.take();
        if !self.finished {
            self.finished = true;
            self.metrics.active_streams.fetch_sub(1, Relaxed);
            self.metrics.cut(Cut::ClientGone);
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "client went away before the stream ended"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 5.55\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn requests_are_counted_per_model_status_and_stream_with_escaped_labels() {
        let m = Metrics::default();
        m.count_request(Some("chat"), true, 200);
        m.count_request(Some("chat"), true, 200);
        m.count_request(Some("we\"ird"), false, 418);
        m.count_request(None, false, 400);
        assert_eq!(m.requests("chat", true, 200), 2);
        let text = m.render(&Snapshot::default());
        assert!(text.contains("opendify_requests_total{model=\"chat\",status=\"200\",stream=\"true\"} 2"), "{text}");
        assert!(text.contains("opendify_requests_total{model=\"we\\\"ird\",status=\"other\",stream=\"false\"} 1"));
        assert!(text.contains("opendify_requests_total{model=\"unknown\",status=\"400\",stream=\"false\"} 1"));
    }
}
