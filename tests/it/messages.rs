//! The Anthropic Messages API over real HTTP, against the mock Dify: the message and its
//! streamed events as Anthropic's SDKs read them, `x-api-key`, conversations continued by
//! the re-sent history, a tool round, thinking blocks, errors in Anthropic's shape, Dify
//! stopped when the client leaves, `metadata.user_id`, `count_tokens`, and the model list.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

fn ask(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 1024, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

async fn post_messages(
    gw: &Gateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().post(gw.url("/v1/messages")).header(VERSION.0, VERSION.1).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, json)
}

/// Asserts Anthropic's error shape and returns the error's `type`.
fn anthropic_error(body: &Value) -> String {
    assert_eq!(body["type"], "error", "not Anthropic's error shape: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {body}");
    body["error"]["type"].as_str().unwrap_or_else(|| panic!("no error type: {body}")).to_string()
}

/// A streamed message as Anthropic's SDKs accumulate it, checking what they rely on: every
/// frame named by its `type`, `message_start` first, blocks started in index order and
/// addressed only while open, nothing after `message_stop` or `error`.
#[derive(Debug)]
struct Streamed {
    status: u16,
    content_type: String,
    names: Vec<String>,
    /// The message as accumulated: `message_start`'s, with the blocks and the final delta.
    message: Value,
    error: Option<Value>,
    raw: String,
}

impl Streamed {
    fn text(&self) -> String {
        self.blocks("text").iter().filter_map(|b| b["text"].as_str()).collect()
    }

    fn blocks(&self, kind: &str) -> Vec<Value> {
        self.message["content"].as_array().into_iter().flatten().filter(|b| b["type"] == kind).cloned().collect()
    }
}

async fn stream_messages(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Streamed {
    let mut request = client().post(gw.url("/v1/messages")).header(VERSION.0, VERSION.1).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let raw = response.text().await.expect("body");
    let mut streamed =
        Streamed { status, content_type, names: Vec::new(), message: Value::Null, error: None, raw: raw.clone() };
    if status != 200 {
        streamed.message = serde_json::from_str(&raw).unwrap_or(Value::Null);
        return streamed;
    }
    let mut open: Option<u64> = None;
    let mut json_inputs: Vec<String> = Vec::new();
    let mut ended = false;
    for frame in raw.split("\n\n").filter(|f| !f.trim().is_empty()) {
        assert!(!ended, "a frame after message_stop or error: {frame:?}\n{raw}");
        let (event, data) = frame.split_once('\n').unwrap_or_else(|| panic!("frame without two lines: {frame:?}"));
        let name = event.strip_prefix("event: ").unwrap_or_else(|| panic!("no event line: {frame:?}"));
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
            .unwrap_or_else(|e| panic!("bad data ({e}): {frame:?}"));
        assert_eq!(data["type"], name, "the event name is the JSON type: {frame}");
        assert!(
            streamed.names.first().is_some_and(|n| n == "message_start") || name == "message_start",
            "message_start first: {raw}"
        );
        streamed.names.push(name.to_string());
        match name {
            "message_start" => {
                assert!(streamed.message.is_null(), "a second message_start");
                streamed.message = data["message"].clone();
                assert_eq!(streamed.message["content"], json!([]));
                assert!(streamed.message["usage"]["output_tokens"].is_u64(), "message_start without usage");
            }
            "content_block_start" => {
                assert_eq!(open, None, "a block started while another is open: {raw}");
                let index = data["index"].as_u64().expect("index");
                let content = streamed.message["content"].as_array_mut().expect("content");
                assert_eq!(index as usize, content.len(), "blocks start in index order: {raw}");
                content.push(data["content_block"].clone());
                json_inputs.push(String::new());
                open = Some(index);
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().expect("index");
                assert_eq!(open, Some(index), "a delta for a block that is not open: {raw}");
                let block = &mut streamed.message["content"][index as usize];
                let delta = &data["delta"];
                let append = |block: &mut Value, field: &str, text: &Value| {
                    let so_far = block[field].as_str().unwrap_or("").to_string();
                    block[field] = json!(format!("{so_far}{}", text.as_str().expect("text")));
                };
                match delta["type"].as_str().unwrap_or("") {
                    "text_delta" => append(block, "text", &delta["text"]),
                    "thinking_delta" => append(block, "thinking", &delta["thinking"]),
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    "input_json_delta" => json_inputs[index as usize].push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("unknown delta {other}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().expect("index");
                assert_eq!(open, Some(index), "stop for a block that is not open: {raw}");
                let block = &mut streamed.message["content"][index as usize];
                if block["type"] == "tool_use" {
                    block["input"] = serde_json::from_str(&json_inputs[index as usize]).expect("tool input JSON");
                }
                open = None;
            }
            "message_delta" => {
                assert_eq!(open, None, "message_delta with a block open: {raw}");
                streamed.message["stop_reason"] = data["delta"]["stop_reason"].clone();
                streamed.message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
                if let Some(input) = data["usage"]["input_tokens"].as_u64() {
                    streamed.message["usage"]["input_tokens"] = json!(input);
                }
            }
            "message_stop" => ended = true,
            "ping" => {}
            "error" => {
                streamed.error = Some(data.clone());
                ended = true;
            }
            other => panic!("unknown event {other}: {raw}"),
        }
    }
    assert!(!raw.contains("[DONE]"), "no [DONE] in Anthropic streams");
    streamed
}

#[tokio::test]
async fn a_text_answer_has_anthropics_message_shape_streamed_or_not() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, headers, body) = post_messages(&gw, &ask("chat", "Hello there", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("msg_") && id.len() > 10), "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "chat");
    assert_eq!(body["content"], json!([{"type": "text", "text": "Echo: Hello there"}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    // The mock reports 10 prompt tokens and one completion token per character.
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 10, "output_tokens": 17, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );
    assert!(headers.contains_key("x-dify-conversation-id"));

    let streamed = stream_messages(&gw, &ask("chat", "Hello there, streamed", true), &[]).await;
    assert_eq!(streamed.status, 200, "{}", streamed.raw);
    assert!(streamed.content_type.starts_with("text/event-stream"), "{}", streamed.content_type);
    assert_eq!(streamed.text(), "Echo: Hello there, streamed");
    assert_eq!(streamed.names.first().map(String::as_str), Some("message_start"));
    assert_eq!(&streamed.names[streamed.names.len() - 2..], ["message_delta", "message_stop"]);
    // The mock streams 4 characters per event: each is a delta, as it comes.
    let deltas = streamed.names.iter().filter(|n| *n == "content_block_delta").count();
    assert_eq!(deltas, "Echo: Hello there, streamed".len().div_ceil(4), "{}", streamed.raw);
    assert_eq!(streamed.message["stop_reason"], "end_turn");
    assert_eq!(streamed.message["usage"]["output_tokens"], 27);
    assert_eq!(streamed.message["usage"]["input_tokens"], 10);
    assert!(streamed.message["id"].as_str().is_some_and(|id| id.starts_with("msg_")));

    // Clients configured without `/v1`, like every API endpoint; errors there are Anthropic's too.
    let response = client().post(gw.url("/messages")).json(&ask("chat", "no v1", false)).send().await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.expect("json")["content"][0]["text"], "Echo: no v1");
    let response = client().post(gw.url("/messages")).json(&json!({"model": "chat"})).send().await.expect("send");
    assert_eq!(response.status(), 400);
    assert_eq!(anthropic_error(&response.json().await.expect("json")), "invalid_request_error");

    // Dify's pings are Anthropic's.
    let pinged = stream_messages(&gw, &ask("chat", "[[mock:ping]] hi", true), &[]).await;
    assert!(pinged.names.iter().any(|n| n == "ping"), "{}", pinged.raw);
    assert!(pinged.raw.contains("event: ping\ndata: {\"type\":\"ping\"}\n\n"), "{}", pinged.raw);
    assert_eq!(pinged.text(), "Echo: [[mock:ping]] hi");
}

#[tokio::test]
async fn x_api_key_is_the_key_and_a_wrong_one_is_anthropics_401() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("PROXY_API_KEYS", "sk-right")]).await;
    let (status, _, body) = post_messages(&gw, &ask("chat", "hi", false), &[("x-api-key", "sk-right")]).await;
    assert_eq!(status, 200, "{body}");
    for headers in [&[("x-api-key", "sk-wrong")][..], &[]] {
        let (status, response_headers, body) = post_messages(&gw, &ask("chat", "hi", false), headers).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(anthropic_error(&body), "authentication_error");
        assert!(!body.to_string().contains("sk-wrong"), "the key is never echoed");
        assert!(response_headers.contains_key("x-request-id"));
    }
    // Anthropic's model list too: its error in Anthropic's shape.
    let response =
        client().get(gw.url("/v1/models")).header(VERSION.0, VERSION.1).header("x-api-key", "sk-wrong").send().await;
    let body: Value = response.expect("send").json().await.expect("json");
    assert_eq!(anthropic_error(&body), "authentication_error");
    assert_eq!(mock.generations().len(), 1, "refused requests never reach Dify");
}

/// Anthropic's clients re-send the whole history each turn, as OpenAI's do: one Dify
/// conversation, and only the new message sent once it exists.
#[tokio::test]
async fn a_resent_history_continues_one_dify_conversation_sending_only_the_new_message() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut messages = vec![json!({"role": "user", "content": "anth first"})];
    let body = |messages: &[Value], stream: bool| json!({"model": "chat", "max_tokens": 100, "system": "Be terse.", "stream": stream, "messages": messages});
    let (_, _, first) = post_messages(&gw, &body(&messages, false), &[]).await;
    // The answer goes back as the SDK gives it: content blocks.
    messages.push(json!({"role": "assistant", "content": first["content"]}));
    messages.push(json!({"role": "user", "content": [{"type": "text", "text": "anth second"}]}));
    let second = stream_messages(&gw, &body(&messages, true), &[]).await;
    assert_eq!(second.text(), "Echo: anth second", "{}", second.raw);
    messages.push(json!({"role": "assistant", "content": second.text()}));
    messages.push(json!({"role": "user", "content": "anth third"}));
    let (status, _, third) = post_messages(&gw, &body(&messages, false), &[]).await;
    assert_eq!(status, 200, "{third}");

    let conversations: Vec<_> =
        mock.conversations().into_values().filter(|c| c.queries.iter().any(|q| q.contains("anth first"))).collect();
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    assert_eq!(
        conversations[0].queries,
        ["[System instructions]\nBe terse.\n\n[Current message]\nanth first", "anth second", "anth third"]
    );
}

fn weather_tools() -> Value {
    json!([{"name": "get_weather", "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

/// A tool round: the call as a `tool_use` block (stop_reason `tool_use`), then the result as
/// a `tool_result` block, continuing the same Dify conversation and sending only the result.
#[tokio::test]
async fn a_tool_round_continues_the_conversation_sending_only_the_result() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for stream in [false, true] {
        let question = format!("What's the weather in Oslo? (round {stream})");
        let mut messages = vec![json!({"role": "user", "content": question})];
        let body = |messages: &[Value], stream: bool| json!({"model": "chat", "max_tokens": 100, "tools": weather_tools(), "stream": stream, "messages": messages});
        let first = if stream {
            let streamed = stream_messages(&gw, &body(&messages, true), &[]).await;
            assert!(streamed.error.is_none(), "{}", streamed.raw);
            streamed.message
        } else {
            post_messages(&gw, &body(&messages, false), &[]).await.2
        };
        assert_eq!(first["stop_reason"], "tool_use", "{first}");
        let content = first["content"].as_array().expect("content");
        assert_eq!(content.len(), 1, "only the call, no text block: {first}");
        let call = &content[0];
        assert_eq!(call["type"], "tool_use");
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["input"], json!({"city": "Oslo"}));
        let id = call["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("toolu_"), "{id}");
        messages.push(json!({"role": "assistant", "content": first["content"]}));
        // Anthropic's clients may add a note after the results, in the same message: it goes
        // with them (streamed round), never instead of them.
        let mut results = vec![
            json!({"type": "tool_result", "tool_use_id": id, "content": [{"type": "text", "text": "sunny, 21 °C"}]}),
        ];
        if stream {
            results.push(json!({"type": "text", "text": "Answer briefly."}));
        }
        messages.push(json!({"role": "user", "content": results}));
        let answer = if stream {
            let streamed = stream_messages(&gw, &body(&messages, true), &[]).await;
            assert_eq!(streamed.message["stop_reason"], "end_turn");
            streamed.text()
        } else {
            let (status, _, final_message) = post_messages(&gw, &body(&messages, false), &[]).await;
            assert_eq!(status, 200, "{final_message}");
            final_message["content"][0]["text"].as_str().unwrap_or("").to_string()
        };
        assert_eq!(answer, "The tools answered: get_weather said sunny, 21 °C.");
        let conversations: Vec<_> =
            mock.conversations().into_values().filter(|c| c.queries[0].contains(&question)).collect();
        assert_eq!(conversations.len(), 1, "one Dify conversation for the round");
        let queries = &conversations[0].queries;
        assert!(queries[0].starts_with("[Tools]\n"), "{queries:?}");
        let note = if stream { "\n\nAnswer briefly." } else { "" };
        assert_eq!(
            queries[1],
            format!(
                "<tool_response>\n{{\"name\":\"get_weather\",\"content\":\"sunny, 21 °C\"}}\n</tool_response>{note}"
            ),
            "only the result is sent"
        );
    }
}

#[tokio::test]
async fn tool_choice_and_structured_output_use_the_same_emulation() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut body = json!({"model": "chat", "max_tokens": 100, "tools": weather_tools(),
        "tool_choice": {"type": "tool", "name": "get_weather"}, "messages": [{"role": "user", "content": "hello Bergen"}]});
    let (_, _, answer) = post_messages(&gw, &body, &[]).await;
    assert_eq!(answer["content"][0]["name"], "get_weather", "{answer}");
    let query = mock.generations().last().map(|g| g.body["query"].to_string()).unwrap_or_default();
    assert!(query.contains("calling the tool `get_weather` now"), "{query}");
    body["tool_choice"] = json!({"type": "none"});
    body["messages"] = json!([{"role": "user", "content": "What's the weather in Oslo? none"}]);
    let (_, _, answer) = post_messages(&gw, &body, &[]).await;
    assert_eq!(answer["content"], json!([{"type": "text", "text": "Echo: What's the weather in Oslo? none"}]));

    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
                        "required": ["city", "degrees"], "additionalProperties": false});
    let structured = json!({"model": "chat", "max_tokens": 100, "output_config": {"format": {"type": "json_schema", "schema": schema}},
                            "messages": [{"role": "user", "content": "Weather in Oslo, 12 degrees"}]});
    let (status, _, answer) = post_messages(&gw, &structured, &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["content"], json!([{"type": "text", "text": "{\"city\":\"Oslo\",\"degrees\":12}"}]));
    let mut streamed = structured.clone();
    streamed["stream"] = json!(true);
    streamed["messages"] = json!([{"role": "user", "content": "Weather in Bergen, 9 degrees"}]);
    assert_eq!(stream_messages(&gw, &streamed, &[]).await.text(), "{\"city\":\"Bergen\",\"degrees\":9}");
}

#[tokio::test]
async fn reasoning_comes_as_thinking_blocks_unless_thinking_is_disabled() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (_, _, body) = post_messages(&gw, &ask("chat", "[[mock:think]]", false), &[]).await;
    assert_eq!(
        body["content"],
        json!([{"type": "thinking", "thinking": "Let me think about it.", "signature": ""},
               {"type": "text", "text": "Echo: [[mock:think]]"}])
    );
    let streamed = stream_messages(&gw, &ask("chat", "[[mock:think]]", true), &[]).await;
    assert_eq!(streamed.message["content"], body["content"], "{}", streamed.raw);
    let signature = streamed.raw.find("signature_delta").expect("a signature_delta");
    let first_stop = streamed.raw.find("content_block_stop").expect("a stop");
    assert!(signature < first_stop, "the signature comes before the thinking block stops");

    let mut quiet = ask("chat", "[[mock:think]]", true);
    quiet["thinking"] = json!({"type": "disabled"});
    let streamed = stream_messages(&gw, &quiet, &[]).await;
    assert_eq!(streamed.message["content"], json!([{"type": "text", "text": "Echo: [[mock:think]]"}]));
}

#[tokio::test]
async fn errors_are_anthropics_shape_and_status() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut missing = ask("chat", "hi", false);
    missing.as_object_mut().expect("object").remove("max_tokens");
    let (status, _, body) = post_messages(&gw, &missing, &[]).await;
    assert_eq!((status, anthropic_error(&body)), (400, "invalid_request_error".into()), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("max_tokens"), "{body}");
    let response = client()
        .post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    assert_eq!(anthropic_error(&response.json().await.expect("json")), "invalid_request_error");

    // Message threads: refused with the code Anthropic's tool runner takes as "send the
    // whole history instead" (e2e/messages.py runs that fallback).
    let mut threaded = ask("chat", "hi", false);
    threaded["thread"] = json!({"type": "create"});
    let (status, _, body) = post_messages(&gw, &threaded, &[]).await;
    assert_eq!((status, anthropic_error(&body)), (400, "invalid_request_error".into()), "{body}");
    assert_eq!(body["error"]["details"], json!({"error_code": "thread_unsupported_request"}));

    let (status, _, body) = post_messages(&gw, &ask("claude-nope", "hi", false), &[]).await;
    assert_eq!((status, anthropic_error(&body)), (404, "not_found_error".into()), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("chat"), "lists the models: {body}");

    let (status, headers, body) = post_messages(&gw, &ask("chat", "[[mock:error-mid]]", false), &[]).await;
    assert_eq!((status, anthropic_error(&body)), (502, "api_error".into()), "{body}");
    assert_eq!(headers["x-should-retry"], "false", "Dify had the request");
    let (status, _, body) = post_messages(&gw, &ask("chat", "[[mock:http-429]]", false), &[]).await;
    assert_eq!((status, anthropic_error(&body)), (429, "rate_limit_error".into()), "{body}");

    let streamed = stream_messages(&gw, &ask("chat", "[[mock:error-mid]]", true), &[]).await;
    assert_eq!(streamed.status, 200);
    let error = streamed.error.as_ref().unwrap_or_else(|| panic!("no error event: {}", streamed.raw));
    assert_eq!(anthropic_error(error), "api_error");
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("Rate Limit Error"), "{error}");
    assert_eq!(streamed.names.last().map(String::as_str), Some("error"), "nothing after the error");
    assert!(!streamed.names.iter().any(|n| n == "message_stop"), "never a fake end: {}", streamed.raw);

    // A stream that fails before it starts is an error response, not a stream.
    let streamed = stream_messages(&gw, &ask("chat", "[[mock:http-500]]", true), &[]).await;
    assert_eq!((streamed.status, anthropic_error(&streamed.message)), (502, "api_error".into()));
}

#[tokio::test]
async fn metadata_user_id_is_the_dify_user_and_a_client_leaving_stops_dify() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut body = ask("chat", "who am I", false);
    body["metadata"] = json!({"user_id": "u-42"});
    let (status, headers, _) = post_messages(&gw, &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(mock.generations()[0].body["user"], "u-42");
    assert_eq!(headers["x-opendify-user"], "u-42");

    let mut body = ask("chat", "[[mock:hang]] and then?", true);
    body["metadata"] = json!({"user_id": "leaver"});
    let mut response =
        client().post(gw.url("/v1/messages")).header(VERSION.0, VERSION.1).json(&body).send().await.expect("send");
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !seen.contains("text_delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("a chunk in time");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").expect("not the end")));
    }
    assert!(seen.starts_with("event: message_start\n"), "{seen}");
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.stops().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stops = mock.stops();
    assert_eq!(stops.len(), 1, "Dify was not told to stop");
    assert_eq!(stops[0].1, "leaver", "the stop is sent as the same user");
}

#[tokio::test]
async fn images_and_documents_reach_dify_as_files() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let body = json!({"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "page one"}},
        {"type": "text", "text": "What is in this image?"}]}]});
    let (status, _, answer) = post_messages(&gw, &body, &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["content"][0]["text"], "Echo: Notes\n\npage one\nWhat is in this image?");
    let uploads = mock.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].1, "image.png");
    let files = mock.generations()[0].body["files"].clone();
    assert_eq!(files[0]["transfer_method"], "local_file", "{files}");
    assert_eq!(
        files[1],
        json!({"type": "image", "transfer_method": "remote_url", "url": "https://example.com/cat.png"})
    );
}

#[tokio::test]
async fn count_tokens_is_an_honest_404() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let response = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header(VERSION.0, VERSION.1)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(anthropic_error(&body), "not_found_error");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("cannot count tokens"), "{body}");
    let response = client().post(gw.url("/messages/count_tokens")).json(&json!({})).send().await.expect("send");
    assert_eq!(response.status(), 404);
    assert_eq!(anthropic_error(&response.json().await.expect("json")), "not_found_error");
    assert!(mock.generations().is_empty());
}

#[tokio::test]
async fn the_model_list_is_anthropics_for_anthropics_clients() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let get = |path: &str, anthropic: bool| {
        let request = client().get(gw.url(path));
        let request = if anthropic { request.header(VERSION.0, VERSION.1) } else { request };
        async move {
            let response = request.send().await.expect("send");
            (response.status().as_u16(), response.json::<Value>().await.expect("json"))
        }
    };
    let (status, list) = get("/v1/models", true).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["chat", "agent-chat", "chatflow", "agent", "completion", "workflow"]);
    let chat = &list["data"][0];
    assert_eq!(chat["type"], "model");
    assert_eq!(chat["display_name"], "Chat Bot", "the Dify app's name");
    let created = chat["created_at"].as_str().expect("created_at");
    assert!(created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T', "{created}");
    assert_eq!((list["has_more"].clone(), list["first_id"].clone()), (json!(false), json!("chat")));
    assert_eq!(list["last_id"], "workflow");
    assert!(list.get("object").is_none());

    let (_, page) = get("/v1/models?limit=2&after_id=chat", true).await;
    let ids: Vec<&str> = page["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!((ids, page["has_more"].clone()), (vec!["agent-chat", "chatflow"], json!(true)));

    let (status, one) = get("/v1/models/chat", true).await;
    assert_eq!((status, one["type"].clone(), one["id"].clone()), (200, json!("model"), json!("chat")));
    let (status, missing) = get("/v1/models/claude-nope", true).await;
    assert_eq!((status, anthropic_error(&missing)), (404, "not_found_error".into()));

    // Without the header: OpenAI's list, as before.
    let (_, openai) = get("/v1/models", false).await;
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "model");
}
