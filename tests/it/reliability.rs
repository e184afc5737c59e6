//! Bad input, broken upstreams, slow clients and load must not take opendify down. Every
//! case is bounded in time; after each, nothing is left running (no stream, no upstream
//! slot, no playing mock stream).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use mock_dify::{MockApp, MockDify, MockSettings};
use opendify::bridge::AppRoute;
use opendify::bridge::request::{self, BuildOptions, ConversationPlan};
use opendify::dify::AppMode;
use opendify::dify::sse::{SseError, SseEvent, SseParser};
use opendify::secret::Secret;
use serde_json::{Value, json};

/// A mock whose "chat" app always answers "ok", so huge inputs do not make huge outputs.
async fn terse_mock() -> MockDify {
    MockDify::start(vec![MockApp::new("app-chat-key-0001", "Chat Bot", "chat").answer("ok")]).await.expect("mock")
}

async fn send_raw(gw: &Gateway, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = client().post(gw.url("/v1/chat/completions")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}, not JSON ({e}): {text:.300}"));
    (status, json)
}

/// Waits until no stream, upstream slot or mock stream is left.
async fn assert_nothing_left_running(gw: &Gateway, mock: &MockDify) {
    // Polls until true: a generous deadline costs nothing when it holds, and a busy machine
    // needs it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (streams, slots, playing) =
            (gw.state.metrics.active_streams(), gw.state.live().limits.upstream_in_flight(), mock.active_streams());
        if streams == 0 && slots == 0 && playing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after 30 s: {streams} streams, {slots} upstream slots, {playing} mock streams"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_4xx_in_openai_shape_never_a_5xx() {
    let mock = terse_mock().await;
    let gw = gateway_with(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    let json_ct = Some("application/json");
    let user = |content: Value| json!({"model": "chat", "messages": [{"role": "user", "content": content}]});
    let image = |url: Value| user(json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": url}]));
    let nested = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"x"}}],"extra":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let nested_content = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":{}"x"{}}}]}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let mut invalid_utf8 = br#"{"model":"chat","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("empty body", json_ct, vec![], 400),
        ("malformed", json_ct, b"{model: chat}".to_vec(), 400),
        ("truncated", json_ct, br#"{"model":"chat","messages":[{"role":"user","content":"hi"#.to_vec(), 400),
        (
            "trailing garbage",
            json_ct,
            br#"{"model":"chat","messages":[{"role":"user","content":"hi"}]} x"#.to_vec(),
            400,
        ),
        ("not an object", json_ct, b"[1,2,3]".to_vec(), 400),
        ("model a number", json_ct, br#"{"model":42,"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400),
        ("messages an object", json_ct, br#"{"model":"chat","messages":{"role":"user"}}"#.to_vec(), 400),
        ("content a bool", json_ct, user(json!(true)).to_string().into_bytes(), 400),
        (
            "stream a string",
            json_ct,
            br#"{"model":"chat","stream":"yes","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            400,
        ),
        ("empty messages", json_ct, br#"{"model":"chat","messages":[]}"#.to_vec(), 400),
        (
            "only a system message",
            json_ct,
            br#"{"model":"chat","messages":[{"role":"system","content":"x"}]}"#.to_vec(),
            400,
        ),
        ("unknown role", json_ct, br#"{"model":"chat","messages":[{"role":"wizard","content":"x"}]}"#.to_vec(), 400),
        ("invalid UTF-8", json_ct, invalid_utf8, 400),
        ("deeply nested content", json_ct, nested_content.into_bytes(), 400),
        (
            "image: bad base64",
            json_ct,
            image(json!({"url": "data:image/png;base64,@@@not-base64@@@"})).to_string().into_bytes(),
            400,
        ),
        ("image: not base64", json_ct, image(json!({"url": "data:image/png,rawbytes"})).to_string().into_bytes(), 400),
        ("image: empty data", json_ct, image(json!({"url": "data:image/png;base64,"})).to_string().into_bytes(), 400),
        ("image: ftp url", json_ct, image(json!({"url": "ftp://example.com/cat.png"})).to_string().into_bytes(), 400),
        ("image: a number", json_ct, image(json!(42)).to_string().into_bytes(), 400),
        ("unknown part type", json_ct, user(json!([{"type": "video", "url": "x"}])).to_string().into_bytes(), 400),
        ("form encoded", Some("application/x-www-form-urlencoded"), b"model=chat&messages=hi".to_vec(), 400),
        ("multipart", Some("multipart/form-data; boundary=x"), b"--x\r\n\r\nhi\r\n--x--".to_vec(), 400),
        ("unknown model", json_ct, br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404),
    ];
    for (name, content_type, body, expected) in cases {
        let started = Instant::now();
        let (status, json) = send_raw(&gw, content_type, body).await;
        assert_eq!(status, expected, "{name}: {json}");
        let error = assert_openai_error(&json);
        assert_eq!(error["type"], "invalid_request_error", "{name}: {json}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
    assert!(mock.generations().is_empty(), "a bad request reached Dify");

    // Big but valid: served, not refused and not a 5xx.
    let one_mb = "a".repeat(1024 * 1024);
    let (status, json) = send_raw(&gw, json_ct, user(json!(one_mb)).to_string().into_bytes()).await;
    assert_eq!(status, 200, "1 MB message: {json:.300}");
    assert_eq!(json["choices"][0]["message"]["content"], "ok");
    assert_eq!(mock.generations()[0].body["query"].as_str().map(str::len), Some(1024 * 1024));
    // An unknown field nested 100 000 deep is skipped without recursion: harmless, ignored.
    let (status, json) = send_raw(&gw, json_ct, nested.into_bytes()).await;
    assert_eq!(status, 200, "deeply nested extra field: {json:.300}");
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("turn {i}")}))
        .collect();
    let (status, json) =
        send_raw(&gw, json_ct, json!({"model": "chat", "messages": many}).to_string().into_bytes()).await;
    assert_eq!(status, 200, "20 000 messages: {json:.300}");

    // Wrong method and a path that is not UTF-8: axum's own rejections, in OpenAI's shape.
    let wrong_method = client().get(gw.url("/v1/chat/completions")).send().await.expect("get");
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().contains_key("allow"));
    let json: Value = wrong_method.json().await.expect("405 is JSON");
    assert_eq!(assert_openai_error(&json)["code"], "method_not_allowed");
    let bad_path = client().get(gw.url("/v1/models/%FF%FE")).send().await.expect("get");
    assert!(bad_path.status().is_client_error(), "{}", bad_path.status());
    let json: Value = bad_path.json().await.expect("JSON");
    assert_openai_error(&json);

    let health = client().get(gw.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200, "still up after all that");
    assert_nothing_left_running(&gw, &mock).await;
}

#[tokio::test]
async fn missing_or_invalid_auth_is_a_401_before_the_body_is_read() {
    let mock = terse_mock().await;
    let gw = gateway_with(
        &mock.base_url(),
        r#"{"chat":"app-chat-key-0001"}"#,
        &[("PROXY_API_KEYS", "sk-reliable-0123456789"), ("MAX_BODY_MB", "1")],
    )
    .await;
    // Even an oversized body is refused for its missing key first.
    let (status, json) = send_raw(&gw, Some("application/json"), vec![b' '; 2 * 1024 * 1024]).await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(assert_openai_error(&json)["code"], "invalid_api_key");
}

#[tokio::test]
async fn bodies_over_max_body_mb_are_a_413_with_or_without_a_content_length() {
    let mock = terse_mock().await;
    let gw = gateway_with(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[("MAX_BODY_MB", "1")]).await;
    let big = json!({"model": "chat", "messages": [{"role": "user", "content": "a".repeat(1100 * 1024)}]});
    let (status, json) = send_raw(&gw, Some("application/json"), big.to_string().into_bytes()).await;
    assert_eq!(status, 413, "{json}");
    let error = assert_openai_error(&json);
    assert_eq!(error["code"], "request_too_large");
    assert!(error["message"].as_str().unwrap_or("").contains("MAX_BODY_MB"), "{json}");

    // Chunked, no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..12).map(|_| Ok(vec![b' '; 100 * 1024])).collect();
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    assert_openai_error(&response.json::<Value>().await.expect("JSON"));

    // Just under the limit is fine.
    let fits = json!({"model": "chat", "messages": [{"role": "user", "content": "a".repeat(900 * 1024)}]});
    let (status, _) = send_raw(&gw, Some("application/json"), fits.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    assert!(mock.generations().len() == 1, "only the request that fits reached Dify");
}

async fn tuned(mock: &MockDify, header: Duration, body: Duration) -> Gateway {
    gateway_tuned(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[], |state| {
        state.limits.header_timeout = header;
        state.limits.body_timeout = body;
    })
    .await
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected() {
    let mock = terse_mock().await;
    let gw = tuned(&mock, Duration::from_millis(500), Duration::from_secs(5)).await;
    let addr = gw.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl").expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let read = tcp.read(&mut buf);
        (started.elapsed(), read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
    })
    .await
    .expect("join");
    let (elapsed, read) = outcome;
    // Closed (EOF or reset) after the header timeout, not left hanging.
    assert!(elapsed < Duration::from_secs(3), "connection held for {elapsed:?}");
    if let Ok(text) = read {
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // The server still serves everyone else.
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "hi", false), &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_a_408() {
    let mock = terse_mock().await;
    let gw = tuned(&mock, Duration::from_secs(5), Duration::from_millis(500)).await;
    let addr = gw.addr;
    let (elapsed, response) = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        tcp.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
        )
        .expect("write");
        let started = Instant::now();
        let mut text = String::new();
        let _ = tcp.read_to_string(&mut text);
        (started.elapsed(), text)
    })
    .await
    .expect("join");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"request_timeout\""), "{response}");
    assert!(mock.generations().is_empty());
}

#[tokio::test]
async fn upstream_faults_give_the_right_status_or_error_chunk_and_leave_nothing_running() {
    let mock = mock().await;
    // Only the cases about timeouts run with short ones; the others get the defaults, so a
    // slow (debug, busy) machine never turns a 502 into a 504. The upper bounds on time only
    // tell "answered" from "hung": far above what any machine needs.
    let timed = gateway(&mock, &[("STREAM_IDLE_TIMEOUT", "1"), ("REQUEST_TIMEOUT", "2")]).await;
    let patient = gateway(&mock, &[]).await;
    // (directive, status without streaming, Some(needle in the error chunk) when streaming)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("[[mock:http-500]]", 502, None),
        ("[[mock:http-429]]", 429, None),
        ("[[mock:http-401]]", 502, None),
        ("[[mock:hang]]", 504, Some("STREAM_IDLE_TIMEOUT")),
        ("[[mock:cut]]", 502, Some("before the answer was complete")),
        ("[[mock:garbage]]", 502, Some("not valid JSON")),
        ("[[mock:huge]]", 502, Some("exceeded 16 MiB")),
        ("[[mock:trickle]]", 504, None),
    ];
    for (directive, status, needle) in cases {
        let gw = if directive.contains("hang") || directive.contains("trickle") { &timed } else { &patient };
        let started = Instant::now();
        let (got, headers, body) = post_chat(gw, &chat_body("chat", directive, false), &[]).await;
        assert_eq!(got, *status, "{directive}: {body}");
        let error = assert_openai_error(&body);
        assert!(started.elapsed() < Duration::from_secs(60), "{directive} took {:?}", started.elapsed());
        match *directive {
            "[[mock:http-429]]" => assert!(headers.contains_key("retry-after"), "429 without Retry-After"),
            "[[mock:http-401]]" => assert_eq!(error["code"], "upstream_auth_failed"),
            _ => {}
        }
        if let Some(needle) = needle {
            let result = stream_chat(gw, &chat_body("chat", directive, true), &[]).await;
            assert_eq!(result.status, 200, "{directive}");
            assert!(result.done, "{directive}: no [DONE]");
            let error = result.error().unwrap_or_else(|| panic!("{directive}: no error chunk: {:.300}", result.raw));
            assert!(error["message"].as_str().unwrap_or("").contains(needle), "{directive}: {error}");
            assert!(started.elapsed() < Duration::from_secs(120), "{directive} took {:?}", started.elapsed());
        } else if !directive.contains("trickle") {
            let (got, _, body) = post_chat(gw, &chat_body("chat", directive, true), &[]).await;
            assert_eq!(got, *status, "{directive} streaming: {body}");
        }
    }
    // HTTP errors were not retried: Dify saw each once per request.
    let http_500 = mock.generations().iter().filter(|r| r.body["query"] == "[[mock:http-500]]").count();
    assert_eq!(http_500, 2);

    // One byte per second: the stream stays open (data keeps coming) until the client leaves.
    let mut response = client()
        .post(timed.url("/v1/chat/completions"))
        .json(&chat_body("chat", "[[mock:trickle]]", true))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(3), response.chunk()).await.expect("role chunk");
    assert!(first.expect("chunk").is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(response);
    assert_nothing_left_running(&timed, &mock).await;
    assert_nothing_left_running(&patient, &mock).await;
    let mut metrics = String::new();
    for gw in [&timed, &patient] {
        metrics += &client().get(gw.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    }
    for kind in ["server", "rate_limit", "auth", "idle_timeout", "protocol"] {
        let prefix = format!("opendify_upstream_errors_total{{kind=\"{kind}\"}} ");
        let counted: u64 =
            metrics.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).filter_map(|n| n.parse::<u64>().ok()).sum();
        assert!(counted > 0, "{kind} not counted:\n{metrics}");
    }
}

#[tokio::test]
async fn connection_failures_are_retried_briefly_before_anything_is_sent() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let gw = gateway_with(&format!("http://127.0.0.1:{port}/v1"), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    // Dify comes up a moment after the first attempt was refused.
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        MockDify::start_with(all_apps(), MockSettings::default(), &format!("127.0.0.1:{port}")).await.expect("mock")
    });
    let started = Instant::now();
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "are you there", false), &[]).await;
    let mock = starter.await.expect("mock task");
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(60), "answered before Dify was up?");
    assert_eq!(mock.generations().len(), 1, "exactly one request reached Dify");
    drop(mock);

    // Down for good: a 502 after a bounded number of tries, not a hang.
    let started = Instant::now();
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "still there?", true), &[]).await;
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_full_upstream_cap_is_a_503_with_retry_after_not_a_queue() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("MAX_CONCURRENT_UPSTREAM", "2")]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut response = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body("chat", "[[mock:hang]]", true))
            .send()
            .await
            .expect("send");
        let mut seen = String::new();
        while !seen.contains("Echo") {
            seen.push_str(&String::from_utf8_lossy(&response.chunk().await.expect("chunk").expect("open")));
        }
        open.push(response);
    }
    for stream in [true, false] {
        let started = Instant::now();
        let (status, headers, body) = post_chat(&gw, &chat_body("chat", "one more", stream), &[]).await;
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < Duration::from_secs(1), "a full cap must answer at once");
        assert_eq!(headers["retry-after"], "1");
        let error = assert_openai_error(&body);
        assert_eq!(error["code"], "overloaded");
        assert!(error["message"].as_str().unwrap_or("").contains("MAX_CONCURRENT_UPSTREAM"));
    }
    assert_eq!(mock.generations().len(), 2, "refused requests never reached Dify");
    // Other routes are not capped.
    assert_eq!(client().get(gw.url("/v1/models")).send().await.expect("models").status(), 200);
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(3);
    while gw.state.live().limits.upstream_in_flight() > 1 {
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "now there is room", false), &[]).await;
    assert_eq!(status, 200);
    drop(open);
    assert_nothing_left_running(&gw, &mock).await;
}

// ---- property tests: the SSE parser and the request parser/translator, on random input ----

/// Random text for SSE field values: no CR or LF, some multi-byte characters and colons.
fn random_line(rng: &mut fastrand::Rng) -> String {
    const ALPHABET: &[char] = &['a', 'b', 'z', ' ', ':', '{', '"', '}', '0', '9', 'é', '你', '👋', '\t', 'д'];
    (0..rng.usize(0..24)).map(|_| ALPHABET[rng.usize(..ALPHABET.len())]).collect()
}

fn line_end(rng: &mut fastrand::Rng, after_cr: bool, blank: bool) -> &'static str {
    // A bare CR followed by an LF-terminated blank line would read as one CRLF.
    match rng.u8(0..3) {
        0 if !(after_cr && blank) => "\n",
        1 => "\r\n",
        _ => "\r",
    }
}

#[test]
fn sse_parser_recovers_every_event_whatever_the_line_endings_and_chunking() {
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        let mut after_cr = false;
        let push = |wire: &mut Vec<u8>, rng: &mut fastrand::Rng, text: &str, after_cr: &mut bool| {
            wire.extend_from_slice(text.as_bytes());
            let end = line_end(rng, *after_cr, text.is_empty());
            *after_cr = end == "\r";
            wire.extend_from_slice(end.as_bytes());
        };
        for _ in 0..rng.usize(1..20) {
            if rng.bool() {
                let comment = format!(":{}", random_line(&mut rng));
                push(&mut wire, &mut rng, &comment, &mut after_cr);
            }
            let name = rng.bool().then(|| format!("ev{}", rng.u8(..)));
            if let Some(name) = &name {
                push(&mut wire, &mut rng, &format!("event: {name}"), &mut after_cr);
            }
            let lines: Vec<String> =
                (0..rng.usize(usize::from(name.is_none())..4)).map(|_| random_line(&mut rng)).collect();
            for line in &lines {
                let sep = if rng.bool() { "data: " } else { "data:" };
                let value = if sep == "data:" && line.starts_with(' ') { format!(" {line}") } else { line.clone() };
                push(&mut wire, &mut rng, &format!("{sep}{value}"), &mut after_cr);
                if rng.u8(0..8) == 0 {
                    push(&mut wire, &mut rng, "id: 7", &mut after_cr);
                }
            }
            push(&mut wire, &mut rng, "", &mut after_cr);
            expected.push(SseEvent { event: name, data: lines.join("\n") });
        }
        let mut parser = SseParser::default();
        let mut got = Vec::new();
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(17));
            parser.feed(&rest[..n]);
            rest = &rest[n..];
            while let Some(event) = parser.next_event().expect("valid input") {
                got.push(event);
            }
        }
        while let Some(event) = parser.finish().expect("finish") {
            got.push(event);
        }
        assert_eq!(got, expected, "seed {seed}: {:?}", String::from_utf8_lossy(&wire));
    }
}

#[test]
fn sse_parser_survives_random_bytes_with_bounded_memory() {
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut parser = SseParser::new(4096);
        let mut fed = 0usize;
        'feeding: for _ in 0..rng.usize(1..64) {
            let chunk: Vec<u8> = (0..rng.usize(0..512))
                .map(|_| match rng.u8(0..10) {
                    0 => b'\n',
                    1 => b'\r',
                    2 => b':',
                    _ => rng.u8(..),
                })
                .collect();
            fed += chunk.len();
            parser.feed(&chunk);
            loop {
                match parser.next_event() {
                    Ok(Some(event)) => assert!(event.data.len() <= 4096 + 1, "seed {seed}"),
                    Ok(None) => break,
                    Err(SseError::TooLarge { limit }) => {
                        assert_eq!(limit, 4096);
                        break 'feeding;
                    }
                }
            }
        }
        let _ = parser.finish();
        assert!(fed < 64 * 512);
    }
}

fn valid_request(rng: &mut fastrand::Rng) -> Value {
    let roles = ["system", "developer", "user", "assistant", "tool"];
    let mut messages: Vec<Value> = (0..rng.usize(0..6))
        .map(|_| {
            let role = roles[rng.usize(..roles.len())];
            let content = if rng.bool() {
                json!(random_line(rng))
            } else {
                json!([{"type": "text", "text": random_line(rng)}, {"type": "text", "text": random_line(rng)}])
            };
            json!({"role": role, "content": content})
        })
        .collect();
    messages.push(json!({"role": "user", "content": random_line(rng)}));
    let mut body = json!({"model": "m", "messages": messages, "stream": rng.bool()});
    if rng.bool() {
        body["stream_options"] = json!({"include_usage": rng.bool()});
    }
    if rng.bool() {
        body["user"] = json!(random_line(rng));
    }
    body
}

fn route(mode: AppMode) -> AppRoute {
    AppRoute {
        name: "m".into(),
        key: Secret::new("app-property-test-key"),
        mode,
        mode_source: opendify::bridge::ModeSource::Configured,
        input: None,
        output: None,
        tools: None,
        app_name: None,
        parameters: None,
        discovery_error: None,
    }
}

#[test]
fn valid_random_requests_parse_and_translate_for_every_app_mode() {
    let modes = [
        AppMode::Chat,
        AppMode::AgentChat,
        AppMode::AdvancedChat,
        AppMode::Agent,
        AppMode::Completion,
        AppMode::Workflow,
    ];
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let body = valid_request(&mut rng).to_string();
        let (request, _) = opendify::api::chat::parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("seed {seed}: valid request refused: {} ({body})", e.message));
        let options = BuildOptions {
            user: "u",
            system_input: if rng.bool() { Some("sys") } else { None },
            sections: &[],
            instead: None,
        };
        let plan = ConversationPlan { seed_from: rng.bool().then_some(0), ..Default::default() };
        for mode in modes {
            let built = request::build(&request, &route(mode), &plan, Vec::new(), &options);
            let json = serde_json::to_value(&built).expect("serialisable");
            assert_eq!(json["user"], "u", "seed {seed} {mode:?}");
            assert_eq!(json["response_mode"], "streaming", "seed {seed} {mode:?}");
        }
    }
}

#[test]
fn mangled_requests_are_refused_with_a_400_never_a_panic() {
    for seed in 0..2000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bytes = valid_request(&mut rng).to_string().into_bytes();
        for _ in 0..rng.usize(1..4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.usize(..bytes.len());
            match rng.u8(0..4) {
                0 => bytes.truncate(at),
                1 => bytes[at] = rng.u8(..),
                2 => {
                    let specials = b"{}[]\",:\\\x00\xff";
                    bytes.insert(at, specials[rng.usize(..specials.len())]);
                }
                _ => {
                    let end = (at + rng.usize(1..8)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        match opendify::api::chat::parse(&bytes) {
            Ok(_) => {}
            Err(error) => {
                assert_eq!(error.status.as_u16(), 400, "seed {seed}");
                assert!(!error.message.is_empty(), "seed {seed}");
            }
        }
    }
}

#[tokio::test]
async fn adaptive_smoothing_keeps_every_chunk_and_never_caps_throughput() {
    // 3000 one-character events as fast as the mock can send them: the original's pacing
    // (1 ms per character when buffered) would add 3 s; smoothing may add at most its lag.
    let settings = MockSettings { chunk_chars: 1, events: Some(3000), delay: Duration::ZERO, fail_deletes: false };
    let fast = MockDify::start_with(all_apps(), settings, "127.0.0.1:0").await.expect("mock");
    let plain = gateway(&fast, &[]).await;
    let smooth = gateway(&fast, &[("STREAM_SMOOTHING", "adaptive")]).await;
    let body = chat_body("chat", "a fast and long answer", true);
    let started = Instant::now();
    let reference = stream_chat(&plain, &body, &[]).await;
    let baseline = started.elapsed();
    let started = Instant::now();
    let smoothed = stream_chat(&smooth, &body, &[]).await;
    let elapsed = started.elapsed();
    assert!(smoothed.done && smoothed.error().is_none(), "{:.300}", smoothed.raw);
    assert_eq!(smoothed.content().chars().count(), 3000);
    assert_eq!(smoothed.content(), reference.content());
    assert!(elapsed < baseline + Duration::from_millis(1500), "smoothed {elapsed:?} vs plain {baseline:?}");
    assert_eq!(sample_count(&smooth).await, 1, "time to first token is still measured");

    // Paced upstream (50 ms between events): passed on as it comes, intact.
    let paced = mock().await;
    let smooth = gateway(&paced, &[("STREAM_SMOOTHING", "adaptive")]).await;
    let result = stream_chat(&smooth, &chat_body("chat", "[[mock:slow]] paced", true), &[]).await;
    assert_eq!(result.content(), "Echo: [[mock:slow]] paced");
    assert_nothing_left_running(&smooth, &paced).await;
}

async fn sample_count(gw: &Gateway) -> u64 {
    let text = client().get(gw.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("opendify_time_to_first_token_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What hyper refuses before any handler runs (a malformed request line or header, an
/// over-long URL, oversized headers, an HTTP version it does not speak) still gets a JSON
/// error a person can read, in the API's shape, with the status hyper chose.
#[tokio::test]
async fn http_layer_errors_are_in_the_api_shape_too() {
    let mock = terse_mock().await;
    let gw = gateway_with(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    let addr = gw.addr;
    let long_url = format!("GET /v1/models?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let big_header = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(500_000));
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed_request", "invalid_request_error"),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "malformed_request",
            "invalid_request_error",
        ),
        (long_url.into_bytes(), 414, "uri_too_long", "invalid_request_error"),
        (big_header.into_bytes(), 431, "headers_too_large", "invalid_request_error"),
        (
            b"GET /v1/models HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(),
            505,
            "http_version_not_supported",
            "invalid_request_error",
        ),
    ];
    for (request, status, code, kind) in cases {
        let response = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let _ = tcp.write_all(&request);
            let mut text = String::new();
            let _ = tcp.read_to_string(&mut text);
            text
        })
        .await
        .expect("join");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response: {response:?}"));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        let error = assert_openai_error(&json);
        assert_eq!((error["code"].as_str(), error["type"].as_str()), (Some(code), Some(kind)), "{json}");
    }
    // Anthropic's path gets Anthropic's shape.
    let response = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let _ =
            tcp.write_all(format!("POST /v1/messages?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).as_bytes());
        let mut text = String::new();
        let _ = tcp.read_to_string(&mut text);
        text
    })
    .await
    .expect("join");
    let body: Value = serde_json::from_str(response.split_once("\r\n\r\n").map_or("", |(_, b)| b)).expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // The server still serves everyone else.
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "still here", false), &[]).await;
    assert_eq!(status, 200);
}

/// Dify's server (gunicorn) sends a stream's response head with the first event it writes,
/// not before it: the mock does too, or every gateway reading it would wake once for a head
/// alone, which Dify never costs them.
#[tokio::test]
async fn the_mock_sends_a_streams_head_with_its_first_event_as_dify_does() {
    let settings = MockSettings { delay: Duration::from_millis(300), ..MockSettings::default() };
    let mock = MockDify::start_with(all_apps(), settings, "127.0.0.1:0").await.expect("mock");
    let started = Instant::now();
    let mut response = client()
        .post(format!("{}/chat-messages", mock.base_url()))
        .bearer_auth("app-chat-key-0001")
        .json(&json!({"inputs": {}, "query": "hello", "response_mode": "streaming", "user": "u"}))
        .send()
        .await
        .expect("send");
    let head_after = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(head_after >= Duration::from_millis(250), "the head came {head_after:?} in, before the first event");
    // The first event is there with the head: no second wait for it.
    let first = tokio::time::timeout(Duration::from_millis(150), response.chunk())
        .await
        .expect("the first event came with the head")
        .expect("chunk")
        .expect("a first chunk");
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("data: ") && first.contains("\"event\":\"message\""), "{first:.200}");
}

/// An answer read to its end leaves its connection to Dify open for the next request, streamed
/// or not: one connection serves a whole conversation of requests made one after another.
#[tokio::test]
async fn answered_requests_leave_their_connection_to_dify_pooled() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "hello", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    // Startup's calls (app info) and the first answer have opened what they needed.
    let opened = mock.connections();
    for i in 0..6 {
        let stream = i % 2 == 1;
        let body = chat_body("chat", &format!("question {i}"), stream);
        if stream {
            let result = stream_chat(&gw, &body, &[]).await;
            assert!(result.done, "{:.300}", result.raw);
        } else {
            let (status, _, body) = post_chat(&gw, &body, &[]).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    assert_eq!(mock.generations().len(), 7);
    assert_eq!(mock.connections() - opened, 0, "answers opened connections of their own");
}
