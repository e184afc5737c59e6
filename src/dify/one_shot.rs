//! Tests only: a raw HTTP/1.1 server that answers each connection's first request with fixed
//! bytes and closes it, for the answers the mock Dify does not give (a server ignoring the
//! streaming mode, keep-alive running out after one answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the server; returns its port and the count of connections it accepted.
pub async fn answering(answer: String) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answer: Arc<str> = answer.into();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                // The whole request (head, then the body its Content-Length announces): closing
                // with unread bytes would reset the connection before the answer is read.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}
