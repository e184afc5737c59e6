//! The accept loop. axum's `serve` offers no header-read timeout, so a client trickling its
//! request headers could hold a connection (and a task) forever. This loop serves each
//! connection with hyper's HTTP/1 server and a timer: headers must arrive within the header
//! timeout (an idle keep-alive connection is closed after the same time). On shutdown it
//! stops accepting, lets each connection finish its in-flight request, and once the drain
//! deadline has passed (streams ended with an error chunk) gives connections a short grace
//! before closing whatever is left, so the process always exits. Each socket is wrapped in
//! [`super::raw_errors::RawErrors`], so even requests hyper cannot parse get a JSON error.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long connections may take to close after the drain deadline.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct ServeOptions {
    pub header_timeout: Duration,
    /// Cancelled when in-flight streams have been told to end.
    pub drain_deadline: CancellationToken,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> std::io::Result<()> {
    let (close_tx, close_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(connection(tcp, app.clone(), close_rx.clone(), options.header_timeout));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!("❌ accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(());
    let all_closed = async { while connections.join_next().await.is_some() {} };
    let hard_stop = async {
        options.drain_deadline.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        () = all_closed => {}
        () = hard_stop => {
            tracing::warn!("{} connections still open after the shutdown timeout; closing them", connections.len());
            connections.shutdown().await;
        }
    }
    Ok(())
}

async fn connection(tcp: TcpStream, app: Router, mut close: watch::Receiver<()>, header_timeout: Duration) {
    // Small SSE frames must leave at once, not wait for an ACK (Nagle).
    let _ = tcp.set_nodelay(true);
    let service = TowerToHyperService::new(tower::util::MapRequest::new(app, without_trailing_slash));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(super::raw_errors::RawErrors::new(tcp)), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        _ = close.changed() => {}
    }
    // Shutting down: finish the request in flight, then close.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// `/v1/chat/completions/` is `/v1/chat/completions`: clients configured with a base URL
/// ending in a slash send such paths, and a 404 for them helps nobody.
fn without_trailing_slash<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let rebuilt = match request.uri().query() {
            Some(query) => format!("{}?{query}", if trimmed.is_empty() { "/" } else { trimmed }),
            None => (if trimmed.is_empty() { "/" } else { trimmed }).to_string(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
