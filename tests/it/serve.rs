//! `opendify serve` against the mock Dify, over real HTTP: the OpenAI shapes, streaming,
//! errors on both sides, and the user's identity.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn models_are_listed_in_config_order_and_found_by_id() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let list: serde_json::Value = client().get(gw.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["chat", "agent-chat", "chatflow", "agent", "completion", "workflow"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "dify");
    assert!(list["data"][0]["created"].as_u64().unwrap() > 1_700_000_000);

    let one = client().get(gw.url("/v1/models/chatflow")).send().await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<serde_json::Value>().await.unwrap()["id"], "chatflow");

    let missing = client().get(gw.url("/v1/models/gpt-5")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");

    let health: serde_json::Value = client().get(gw.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({"status": "ok"}));
}

#[tokio::test]
async fn streaming_sends_role_then_each_delta_then_stop_and_done() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream_chat(&gw, &chat_body("chat", "Hello there, world", true), &[]).await;
    assert_eq!(result.status, 200);
    assert!(result.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // nginx in front must pass each event on, not buffer the stream.
    assert_eq!(result.headers["x-accel-buffering"], "no");
    assert!(result.done, "no [DONE]: {}", result.raw);
    let first = &result.chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(result.content(), "Echo: Hello there, world");
    // The mock sends 4 characters per event: one chunk per event, never coalesced.
    let content_chunks = result
        .chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()))
        .count();
    assert_eq!(content_chunks, "Echo: Hello there, world".chars().count().div_ceil(4));
    assert_eq!(result.finish_reason().as_deref(), Some("stop"));
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(result.chunks.iter().all(|c| c["id"] == id && c["model"] == "chat"));
    assert!(!result.raw.contains("usage"), "usage sent without include_usage");

    // The Dify side: always streaming, the query, the default user.
    let sent = &mock.generations()[0];
    assert_eq!(sent.path, "/v1/chat-messages");
    assert_eq!(sent.body["response_mode"], "streaming");
    assert_eq!(sent.body["query"], "Hello there, world");
    assert_eq!(sent.body["user"], "default_user");
    assert_eq!(sent.body["inputs"], json!({}));
}

#[tokio::test]
async fn include_usage_adds_one_usage_chunk_from_message_end() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut body = chat_body("chat", "count me", true);
    body["stream_options"] = json!({"include_usage": true});
    let result = stream_chat(&gw, &body, &[]).await;
    let usage = result.usage().expect("usage chunk");
    let completion = "Echo: count me".chars().count() as u64;
    assert_eq!(usage, &json!({"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}));
    assert!(
        result.chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).all(|c| c["usage"].is_null())
    );
}

#[tokio::test]
async fn non_streaming_returns_the_whole_answer_with_usage() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, headers, body) = post_chat(&gw, &chat_body("chat", "all at once", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "chat");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Echo: all at once");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(headers["x-opendify-user"], "default_user");
    // Upstream is streamed even for a non-streaming client.
    assert_eq!(mock.generations()[0].body["response_mode"], "streaming");
}

#[tokio::test]
async fn multibyte_characters_split_across_network_chunks_arrive_intact() {
    let mock = mock_dify::MockDify::start(vec![
        mock_dify::MockApp::new("app-chat-key-0001", "Chat", "chat").answer("你好世界，こんにちは 👋 мир"),
    ])
    .await
    .unwrap();
    let gw = gateway_with(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    let result = stream_chat(&gw, &chat_body("chat", "[[mock:split-utf8]]", true), &[]).await;
    assert_eq!(result.content(), "你好世界，こんにちは 👋 мир");
    assert!(!result.raw.contains('\u{FFFD}'), "replacement character in output");
    let (_, _, body) = post_chat(&gw, &chat_body("chat", "[[mock:split-utf8]]", false), &[]).await;
    assert_eq!(body["choices"][0]["message"]["content"], "你好世界，こんにちは 👋 мир");
}

#[tokio::test]
async fn dify_ping_becomes_a_keep_alive_comment() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream_chat(&gw, &chat_body("chat", "[[mock:ping]] hi", true), &[]).await;
    assert_eq!(result.comments, 1, "{}", result.raw);
    assert_eq!(result.content(), "Echo: [[mock:ping]] hi");
    assert!(result.done);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let cases: Vec<(&str, u16, Option<&str>)> = vec![
        ("{not json", 400, None),
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, 400, Some("model")),
        (r#"{"model":"chat"}"#, 400, Some("messages")),
        (r#"{"model":"chat","messages":[]}"#, 400, Some("messages")),
        (r#"{"model":"chat","messages":"hello"}"#, 400, Some("messages")),
        (r#"{"model":"chat","messages":[{"role":"user","content":42}]}"#, 400, Some("messages[0].content")),
        (r#"{"model":"chat","messages":[{"role":"robot","content":"x"}]}"#, 400, Some("messages[0].role")),
        (r#"{"model":"chat","stream":"yes","messages":[{"role":"user","content":"x"}]}"#, 400, Some("stream")),
        (r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#, 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let response = client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let json: serde_json::Value = response.json().await.unwrap();
        let error = assert_openai_error(&json);
        assert_eq!(error["param"].as_str(), param, "{body} -> {json}");
        if status == 400 {
            assert_eq!(error["type"], "invalid_request_error");
        }
    }
    let (_, _, body) = post_chat(&gw, &chat_body("nope", "x", false), &[]).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("chat, agent-chat, chatflow"), "should list the models: {message}");
    assert!(mock.generations().is_empty(), "bad requests must not reach Dify");
}

#[tokio::test]
async fn dify_errors_before_the_stream_map_to_http_statuses() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for (directive, status, needle) in [
        ("[[mock:http-429]]", 429, "Too many requests"),
        ("[[mock:http-500]]", 502, "Internal Server Error"),
        ("[[mock:http-524]]", 504, "HTTP 524 (an HTML page from a proxy in front of Dify)"),
        (
            "[[mock:http-504-html]]",
            504,
            "Dify answered 504 Gateway Time-out (an HTML page from a proxy in front of Dify)",
        ),
    ] {
        for stream in [true, false] {
            let (got, _, body) = post_chat(&gw, &chat_body("chat", directive, stream), &[]).await;
            assert_eq!(got, status, "{directive} stream={stream}: {body}");
            let error = assert_openai_error(&body);
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(needle), "{body}");
            assert!(!message.contains('<'), "no markup reaches the user: {message}");
        }
    }
}

#[tokio::test]
async fn a_rejected_app_key_is_a_502_naming_the_model() {
    let mock = mock().await;
    let gw = gateway_with(&mock.base_url(), r#"{"broken":"app-not-a-real-key-99"}"#, &[]).await;
    let (status, _, body) = post_chat(&gw, &chat_body("broken", "hi", false), &[]).await;
    assert_eq!(status, 502);
    let message = assert_openai_error(&body)["message"].as_str().unwrap().to_string();
    assert!(message.contains("`broken`") && message.contains("MODEL_CONFIG"), "{message}");
    assert!(!message.contains("app-not-a-real-key-99"), "key leaked: {message}");
}

#[tokio::test]
async fn unreachable_dify_is_a_502_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = gateway_with(&format!("http://127.0.0.1:{port}/v1"), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "hi", true), &[]).await;
    assert_eq!(status, 502);
    assert!(assert_openai_error(&body)["message"].as_str().unwrap().contains("cannot connect to Dify"), "{body}");
}

#[tokio::test]
async fn failures_after_the_stream_began_end_with_an_error_chunk_and_done() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for (directive, needle) in [
        ("[[mock:error-mid]]", "Rate Limit Error"),
        ("[[mock:cut]]", "before the answer was complete"),
        ("[[mock:garbage]]", "not valid JSON"),
    ] {
        let result = stream_chat(&gw, &chat_body("chat", directive, true), &[]).await;
        assert_eq!(result.status, 200);
        assert!(result.done, "{directive}: no [DONE]");
        let error = result.error().unwrap_or_else(|| panic!("{directive}: no error chunk in {}", result.raw));
        assert!(error["message"].as_str().unwrap().contains(needle), "{directive}: {error}");
        assert_eq!(result.finish_reason(), None, "{directive}: a failed stream must not claim finish_reason stop");
        assert!(result.content().starts_with("Echo"), "the text before the failure is kept");

        let (status, _, body) = post_chat(&gw, &chat_body("chat", directive, false), &[]).await;
        assert_eq!(status, 502, "{directive}: {body}");
        assert!(assert_openai_error(&body)["message"].as_str().unwrap().contains(needle));
    }
}

#[tokio::test]
async fn a_silent_upstream_is_cut_after_the_idle_timeout() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let started = std::time::Instant::now();
    let result = stream_chat(&gw, &chat_body("chat", "[[mock:hang]]", true), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = result.error().expect("error chunk");
    assert!(error["message"].as_str().unwrap().contains("STREAM_IDLE_TIMEOUT"), "{error}");
    assert!(result.done);
}

#[tokio::test]
async fn client_disconnect_stops_the_dify_task() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut response = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-openwebui-user-id", "leaver")
        .json(&chat_body("chat", "[[mock:hang]]", true))
        .send()
        .await
        .unwrap();
    // Read until the first content arrives, then walk away.
    let mut seen = String::new();
    while !seen.contains("Echo") {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while mock.stops().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stops = mock.stops();
    assert_eq!(stops.len(), 1, "Dify's stop endpoint was not called within a second");
    assert_eq!(stops[0].1, "leaver", "stop must carry the same user");
}

#[tokio::test]
async fn the_user_comes_from_the_open_webui_header_then_the_body() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream_chat(&gw, &chat_body("chat", "who am i", true), &[("X-OpenWebUI-User-Id", "owui-5f2c")]).await;
    assert_eq!(result.headers["x-opendify-user"], "owui-5f2c");
    let mut body = chat_body("chat", "who am i", false);
    body["user"] = json!("sdk-user");
    let (_, headers, _) = post_chat(&gw, &body, &[]).await;
    assert_eq!(headers["x-opendify-user"], "sdk-user");
    let users: Vec<String> = mock.generations().iter().map(|r| r.body["user"].as_str().unwrap().to_string()).collect();
    assert_eq!(users, ["owui-5f2c", "sdk-user"]);
}
