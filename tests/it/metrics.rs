//! What an operator can see: `/metrics` in Prometheus text, the overhead header, request
//! ids, and `/ready` following the conversation store.

use std::time::Duration;

use crate::common::*;

async fn scrape(gw: &Gateway) -> String {
    let response = client().get(gw.url("/metrics")).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    response.text().await.expect("text")
}

/// The value of one sample line, e.g. `opendify_active_streams`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_requests_just_made() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let streamed = stream_chat(&gw, &chat_body("chat", "count me", true), &[]).await;
    assert!(streamed.done);
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "and me", false), &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = post_chat(&gw, &chat_body("gpt-unknown", "who", false), &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "[[mock:http-500]]", false), &[]).await;
    assert_eq!(status, 502);

    let text = scrape(&gw).await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect("opendify_requests_total{model=\"chat\",status=\"200\",stream=\"true\"}", 1.0);
    expect("opendify_requests_total{model=\"chat\",status=\"200\",stream=\"false\"}", 1.0);
    expect("opendify_requests_total{model=\"chat\",status=\"502\",stream=\"false\"}", 1.0);
    // A model name a client made up never becomes a label.
    expect("opendify_requests_total{model=\"unknown\",status=\"404\",stream=\"false\"}", 1.0);
    assert!(!text.contains("gpt-unknown"));
    expect("opendify_request_duration_seconds_count{stream=\"true\"}", 1.0);
    expect("opendify_request_duration_seconds_count{stream=\"false\"}", 3.0);
    expect("opendify_time_to_first_token_seconds_count", 1.0);
    // Only answers that reached Dify have an overhead to measure.
    expect("opendify_overhead_seconds_count", 1.0);
    expect("opendify_upstream_errors_total{kind=\"server\"}", 1.0);
    expect("opendify_upstream_errors_total{kind=\"connect\"}", 0.0);
    expect("opendify_active_streams", 0.0);
    expect("opendify_upstream_in_flight", 0.0);
    expect("opendify_upstream_capacity", 512.0);
    expect("opendify_ready", 1.0);
    assert!(sample(&text, "opendify_conversation_mappings").is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "opendify_store_latency_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    // OpenMetrics names a counter's family without `_total`; its samples carry it.
    for (name, kind) in [
        ("opendify_requests", "counter"),
        ("opendify_request_duration_seconds", "histogram"),
        ("opendify_time_to_first_token_seconds", "histogram"),
        ("opendify_overhead_seconds", "histogram"),
        ("opendify_upstream_errors", "counter"),
        ("opendify_active_streams", "gauge"),
        ("opendify_streams_cut", "counter"),
        ("opendify_dify_stops", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "no TYPE line for {name}");
    }
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    assert!(!text.contains("app-chat-key"), "an app key in /metrics");
}

#[tokio::test]
async fn overhead_header_on_non_streaming_answers_only() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, headers, _) = post_chat(&gw, &chat_body("chat", "how long", false), &[]).await;
    assert_eq!(status, 200);
    let overhead: f64 = headers["x-opendify-overhead-ms"].to_str().expect("ascii").parse().expect("a number");
    assert!((0.0..1000.0).contains(&overhead), "{overhead}");
    let streamed = stream_chat(&gw, &chat_body("chat", "how long", true), &[]).await;
    assert!(streamed.headers.get("x-opendify-overhead-ms").is_none());
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("PROXY_API_KEYS", "sk-id-test-123456")]).await;
    let auth = [("authorization", "Bearer sk-id-test-123456")];
    let (_, headers, _) = post_chat(&gw, &chat_body("chat", "id", false), &auth).await;
    let generated = headers["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(generated.len(), 16);
    assert!(generated.chars().all(|c| c.is_ascii_hexdigit()));
    let (_, again, _) = post_chat(&gw, &chat_body("chat", "id", false), &auth).await;
    assert_ne!(again["x-request-id"], generated.as_str(), "ids must differ per request");

    let given = [("authorization", "Bearer sk-id-test-123456"), ("x-request-id", "trace-42")];
    let streamed = stream_chat(&gw, &chat_body("chat", "id", true), &given).await;
    assert_eq!(streamed.headers["x-request-id"], "trace-42");
    // Errors too: a refused key, an unknown route.
    let (status, headers, _) = post_chat(&gw, &chat_body("chat", "id", false), &[("x-request-id", "r-401")]).await;
    assert_eq!((status, headers["x-request-id"].to_str().expect("ascii")), (401, "r-401"));
    let missing = client().get(gw.url("/nowhere")).bearer_auth("sk-id-test-123456").send().await.expect("get");
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn streams_are_counted_while_open_and_cuts_by_reason() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("chat", "[[mock:hang]]", true))
        .send()
        .await
        .expect("send");
    let mut seen = String::new();
    while !seen.contains("Echo") {
        let chunk = response.chunk().await.expect("chunk").expect("ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(gw.state.metrics.active_streams(), 1);
    assert_eq!(sample(&scrape(&gw).await, "opendify_active_streams"), Some(1.0));
    assert_eq!(gw.state.live().limits.upstream_in_flight(), 1, "the stream holds its upstream slot");
    drop(response);
    wait_until(|| gw.state.metrics.active_streams() == 0).await;
    assert_eq!(gw.state.live().limits.upstream_in_flight(), 0, "the slot is released with the stream");
    let text = scrape(&gw).await;
    assert_eq!(sample(&text, "opendify_streams_cut_total{reason=\"client_gone\"}"), Some(1.0), "{text}");

    let failed = stream_chat(&gw, &chat_body("chat", "[[mock:cut]]", true), &[]).await;
    assert!(failed.error().is_some());
    let text = scrape(&gw).await;
    assert_eq!(sample(&text, "opendify_streams_cut_total{reason=\"error\"}"), Some(1.0), "{text}");
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "condition not reached within 3 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ready_follows_the_conversation_store() {
    let Some(mut redis) = start_redis() else { return };
    let mock = mock().await;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let gw = gateway(&mock, &[("CONVERSATION_STORE", &url)]).await;
    let ready = client().get(gw.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<serde_json::Value>().await.expect("json")["status"], "ready");

    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let started = std::time::Instant::now();
    let ready = client().get(gw.url("/ready")).send().await.expect("ready");
    assert!(started.elapsed() < Duration::from_secs(5), "a dead store must not hang /ready");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "unavailable");
    let health = client().get(gw.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200, "/health says the process is up, whatever the store");
    assert_eq!(sample(&scrape(&gw).await, "opendify_ready"), Some(0.0));
}
