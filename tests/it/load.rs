//! Load: a few hundred concurrent streams through opendify to the mock Dify complete without
//! an error, leave nothing running, and memory settles. In a test binary of its own, so no
//! other test's allocations blur the memory reading.

use std::time::{Duration, Instant};

use crate::common::*;
use mock_dify::MockDify;
use serde_json::Value;

/// Waits until no stream, upstream slot or mock stream is left.
async fn assert_nothing_left_running(gw: &Gateway, mock: &MockDify) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (streams, slots, playing) =
            (gw.state.metrics.active_streams(), gw.state.live().limits.upstream_in_flight(), mock.active_streams());
        if streams == 0 && slots == 0 && playing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {streams} streams, {slots} slots, {playing} mock streams");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resident memory of this test process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_streams_complete_and_memory_settles() {
    const STREAMS: usize = 300;
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(STREAMS).build().expect("client");
    let round = |label: &'static str| {
        let http = http.clone();
        let url = gw.url("/v1/chat/completions");
        async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..STREAMS)
                .map(|i| {
                    let (http, url) = (http.clone(), url.clone());
                    tokio::spawn(async move {
                        let body = chat_body("chat", &format!("{label} stream {i}"), true);
                        let response = http.post(url).json(&body).send().await.expect("send");
                        assert_eq!(response.status(), 200);
                        let text = response.text().await.expect("body");
                        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                        assert!(!text.contains("\"error\""), "{text}");
                        let content: String = text
                            .split("\n\n")
                            .filter_map(|f| f.strip_prefix("data: "))
                            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                            .collect();
                        assert_eq!(content, format!("Echo: {label} stream {i}"));
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a stream failed");
            }
            started.elapsed()
        }
    };
    // Warm up until allocator arenas, connection pools and the store's cache have grown.
    for label in ["warm-1", "warm-2", "warm-3"] {
        let elapsed = round(label).await;
        assert!(elapsed < Duration::from_secs(60), "{label} round took {elapsed:?}");
        mock.forget_everything();
    }
    assert_nothing_left_running(&gw, &mock).await;
    let settled = rss();
    for label in ["1", "2", "3", "4", "5"] {
        let elapsed = round(label).await;
        assert!(elapsed < Duration::from_secs(60), "round {label} took {elapsed:?}");
        // The mock records every request; only opendify's memory is under test.
        mock.forget_everything();
    }
    assert_nothing_left_running(&gw, &mock).await;
    let after = rss();
    eprintln!("resident memory: {} MiB after warming up, {} MiB after 5 more rounds", settled >> 20, after >> 20);
    // A leak of even 10 KiB per request would show as 15 MiB here.
    let grown = after.saturating_sub(settled);
    assert!(grown < 12 * 1024 * 1024, "memory grew by {} MiB over 5 more rounds", grown >> 20);
    assert_eq!(gw.state.metrics.requests("chat", true, 200), 8 * STREAMS as u64);
}
