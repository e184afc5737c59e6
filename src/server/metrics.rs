//! Prometheus metrics, through `prometheus-client`, served on `GET /metrics` in the
//! OpenMetrics text format. Label sets are kept small: model names come from the registry,
//! never from what a client typed; statuses are folded into a fixed list; every other label
//! is a fixed word from an enum.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::bridge::StopReason;
use crate::dify::ErrorKind;

/// Response statuses with a series of their own; anything else counts as `other`.
const STATUSES: [&str; 17] = [
    "200", "400", "401", "403", "404", "405", "408", "413", "415", "422", "429", "499", "500", "502", "503", "504",
    "other",
];

const LATENCY_BUCKETS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const OVERHEAD_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
const STORE_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Why a request was turned away before reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized,
    TooLarge,
    SlowClient,
    Overloaded,
}

impl Rejection {
    const ALL: [Rejection; 4] =
        [Rejection::Unauthorized, Rejection::TooLarge, Rejection::SlowClient, Rejection::Overloaded];

    fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::TooLarge => "too_large",
            Rejection::SlowClient => "slow_client",
            Rejection::Overloaded => "overloaded",
        }
    }
}

/// Why a stream ended without finishing normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client went away mid-answer.
    ClientGone,
    /// The stream ended with an error (upstream failure, idle timeout, shutdown).
    Error,
}

impl Cut {
    const ALL: [Cut; 2] = [Cut::ClientGone, Cut::Error];

    fn as_str(self) -> &'static str {
        match self {
            Cut::ClientGone => "client_gone",
            Cut::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    status: &'static str,
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn stream_label(stream: bool) -> StreamLabel {
    StreamLabel { stream: if stream { "true" } else { "false" } }
}

/// Values read from elsewhere at scrape time (the limits, the store, readiness).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub conversation_mappings: Option<u64>,
    pub upstream_in_flight: usize,
    pub upstream_capacity: usize,
    pub ready: bool,
}

/// The last count of conversation mappings, when it was taken and how long it took.
#[derive(Clone, Copy)]
pub(super) struct MappingsCount {
    pub at: Instant,
    pub count: u64,
    pub took: Duration,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<StreamLabel>,
    ttft: Histogram,
    overhead: Histogram,
    upstream_errors: Family<KindLabel, Counter>,
    active_streams: Gauge,
    cuts: Family<ReasonLabel, Counter>,
    stops: Family<ReasonLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    upstream_in_flight: Gauge,
    upstream_capacity: Gauge,
    conversation_mappings: Gauge,
    store_latency: Histogram,
    ready: Gauge,
    /// The conversation count as last read from the store, and when (counting can be slow).
    pub(super) mappings_cache: Mutex<Option<MappingsCount>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("opendify_requests", "Chat requests by model, HTTP status and streaming", requests.clone());
        let duration: Histograms<StreamLabel> = Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "opendify_request_duration_seconds",
            "Request time, from the request body read to the last byte (streams: to their end)",
            duration.clone(),
        );
        let ttft = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "opendify_time_to_first_token_seconds",
            "Streams: time until the first answer token left opendify",
            ttft.clone(),
        );
        let overhead = Histogram::new(OVERHEAD_BUCKETS);
        registry.register(
            "opendify_overhead_seconds",
            "Non-streaming requests: total time minus the time spent waiting on Dify",
            overhead.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register("opendify_upstream_errors", "Failed Dify calls by kind of failure", upstream_errors.clone());
        let active_streams = Gauge::default();
        registry.register("opendify_active_streams", "Streaming responses open right now", active_streams.clone());
        let cuts = Family::<ReasonLabel, Counter>::default();
        registry.register("opendify_streams_cut", "Streams that did not finish normally, by reason", cuts.clone());
        let stops = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "opendify_dify_stops",
            "Dify tasks opendify told to stop (nobody would read their answer), by reason",
            stops.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register("opendify_rejected", "Requests turned away before any work, by reason", rejections.clone());
        let upstream_in_flight = Gauge::default();
        registry.register("opendify_upstream_in_flight", "Requests to Dify in flight", upstream_in_flight.clone());
        let upstream_capacity = Gauge::default();
        registry.register("opendify_upstream_capacity", "MAX_CONCURRENT_UPSTREAM", upstream_capacity.clone());
        let conversation_mappings = Gauge::default();
        registry.register(
            "opendify_conversation_mappings",
            "Conversations in the conversation store",
            conversation_mappings.clone(),
        );
        let store_latency = Histogram::new(STORE_BUCKETS);
        registry.register("opendify_store_latency_seconds", "Conversation store operations", store_latency.clone());
        let ready = Gauge::default();
        registry.register("opendify_ready", "1 when /ready answers 200", ready.clone());

        // Every fixed label is shown from the start (at 0), so alerts can rely on the series.
        for kind in ErrorKind::ALL {
            let _ = upstream_errors.get_or_create(&KindLabel { kind: kind.as_str() });
        }
        for cut in Cut::ALL {
            let _ = cuts.get_or_create(&ReasonLabel { reason: cut.as_str() });
        }
        for stop in StopReason::ALL {
            let _ = stops.get_or_create(&ReasonLabel { reason: stop.as_str() });
        }
        for rejection in Rejection::ALL {
            let _ = rejections.get_or_create(&ReasonLabel { reason: rejection.as_str() });
        }
        for stream in [false, true] {
            let _ = duration.get_or_create(&stream_label(stream));
        }
        Metrics {
            registry,
            requests,
            duration,
            ttft,
            overhead,
            upstream_errors,
            active_streams,
            cuts,
            stops,
            rejections,
            upstream_in_flight,
            upstream_capacity,
            conversation_mappings,
            store_latency,
            ready,
            mappings_cache: Mutex::new(None),
        }
    }
}

fn status_label(status: u16) -> &'static str {
    let text = status.to_string();
    STATUSES.iter().find(|s| **s == text).copied().unwrap_or("other")
}

impl Metrics {
    /// One finished request (for a stream: its response head). `model` is a registry name,
    /// or `None` when the request named no known model.
    pub fn count_request(&self, model: Option<&str>, stream: bool, status: u16) {
        self.requests.get_or_create(&request_labels(model, stream, status)).inc();
    }

    /// How many requests were counted for `model` with `status` (tests, the doctor).
    pub fn requests(&self, model: &str, stream: bool, status: u16) -> u64 {
        self.requests.get_or_create(&request_labels(Some(model), stream, status)).get()
    }

    pub fn observe_duration(&self, stream: bool, elapsed: Duration) {
        self.duration.get_or_create(&stream_label(stream)).observe(elapsed.as_secs_f64());
    }

    pub fn observe_overhead(&self, overhead: Duration) {
        self.overhead.observe(overhead.as_secs_f64());
    }

    pub fn observe_first_token(&self, elapsed: Duration) {
        self.ttft.observe(elapsed.as_secs_f64());
    }

    pub fn observe_store(&self, elapsed: Duration) {
        self.store_latency.observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: ErrorKind) {
        self.upstream_errors.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    pub fn reject(&self, why: Rejection) {
        self.rejections.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
    }

    pub fn cut(&self, why: Cut) {
        self.cuts.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
    }

    pub fn cuts(&self, why: Cut) -> u64 {
        self.cuts.get_or_create(&ReasonLabel { reason: why.as_str() }).get()
    }

    pub fn dify_stop(&self, why: StopReason) {
        self.stops.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
    }

    pub fn dify_stops(&self, why: StopReason) -> u64 {
        self.stops.get_or_create(&ReasonLabel { reason: why.as_str() }).get()
    }

    pub fn stream_opened(&self) {
        self.active_streams.inc();
    }

    pub fn stream_closed(&self) {
        self.active_streams.dec();
    }

    pub fn active_streams(&self) -> i64 {
        self.active_streams.get()
    }

    /// The OpenMetrics text exposition of everything, with the scrape-time values set.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.upstream_in_flight.set(i64::try_from(snapshot.upstream_in_flight).unwrap_or(i64::MAX));
        self.upstream_capacity.set(i64::try_from(snapshot.upstream_capacity).unwrap_or(i64::MAX));
        if let Some(n) = snapshot.conversation_mappings {
            self.conversation_mappings.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.ready.set(i64::from(snapshot.ready));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn request_labels(model: Option<&str>, stream: bool, status: u16) -> RequestLabels {
    RequestLabels {
        model: model.unwrap_or("unknown").to_string(),
        status: status_label(status),
        stream: if stream { "true" } else { "false" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(text.contains("opendify_dify_stops_total{reason=\"idle_timeout\"} 0"), "{text}");
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let m = Metrics::default();
        m.observe_store(Duration::from_micros(700));
        m.observe_store(Duration::from_secs(2));
        let text = m.render(&Snapshot::default());
        assert!(text.contains("opendify_store_latency_seconds_bucket{le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("opendify_store_latency_seconds_bucket{le=\"5.0\"} 2"), "{text}");
        assert!(text.contains("opendify_store_latency_seconds_count 2"), "{text}");
    }
}
