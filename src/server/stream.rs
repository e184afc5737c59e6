//! The body of a streaming response as it leaves opendify. It holds the request's slot under
//! MAX_CONCURRENT_UPSTREAM until the stream is over, keeps the open-streams gauge and the
//! duration histogram, counts a client that leaves mid-stream, and enters the request's
//! tracing span whenever it is polled or dropped, so what the relay logs while streaming
//! (and the Dify stop a dropped relay triggers) carries the request id.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::metrics::{Cut, Metrics};

pub struct TrackedStream {
    inner: Option<Body>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
    started: Instant,
    finished: bool,
    _permit: OwnedSemaphorePermit,
}

impl TrackedStream {
    pub fn new(
        inner: Body,
        metrics: Arc<Metrics>,
        span: tracing::Span,
        started: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        metrics.stream_opened();
        TrackedStream { inner: Some(inner), metrics, span, started, finished: false, _permit: permit }
    }

    fn on_end(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.metrics.stream_closed();
        self.metrics.observe_duration(true, self.started.elapsed());
    }
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
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            this.on_end();
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
            self.metrics.stream_closed();
            self.metrics.cut(Cut::ClientGone);
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "client went away before the stream ended"
            );
        }
    }
}
