//! Agents and structured output over real HTTP: client tools emulated (the mock Dify follows
//! the tool instructions like a model would), tool results continuing the same Dify
//! conversation, `tool_choice`, TOOL_CALLS and Open WebUI's own tools, `response_format`
//! cleaned, checked and asked again, and every Chat Completions field answered honestly.

use serde_json::{Value, json};

use crate::common::*;

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    ])
}

fn with_tools(messages: Value, stream: bool) -> Value {
    json!({"model": "chat", "messages": messages, "tools": weather_tools(), "stream": stream})
}

/// Tool-call deltas merged as openai-python's stream accumulator merges them: by index,
/// strings concatenated, `index` and `type` replaced.
fn assembled_tool_calls(result: &StreamResult) -> Vec<Value> {
    let mut calls: Vec<Value> = Vec::new();
    for chunk in &result.chunks {
        let Some(deltas) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else { continue };
        for delta in deltas {
            let index = delta["index"].as_u64().expect("index") as usize;
            if calls.len() <= index {
                calls.push(json!({"id": "", "type": "", "function": {"name": "", "arguments": ""}}));
            }
            let call = &mut calls[index];
            if let Some(id) = delta["id"].as_str() {
                call["id"] = json!(format!("{}{id}", call["id"].as_str().unwrap_or("")));
            }
            if let Some(kind) = delta["type"].as_str() {
                call["type"] = json!(kind);
            }
            for field in ["name", "arguments"] {
                if let Some(text) = delta["function"][field].as_str() {
                    let so_far = call["function"][field].as_str().unwrap_or("").to_string();
                    call["function"][field] = json!(format!("{so_far}{text}"));
                }
            }
        }
    }
    calls
}

#[tokio::test]
async fn a_tool_call_comes_back_as_tool_calls_streaming_or_not() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let ask = json!([{"role": "user", "content": "What's the weather in Oslo?"}]);
    let (status, _, body) = post_chat(&gw, &with_tools(ask.clone(), false), &[]).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null, "content is null when the answer is only calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Oslo"})
    );

    let streamed = stream_chat(&gw, &with_tools(ask, true), &[]).await;
    assert!(streamed.done && streamed.error().is_none(), "{}", streamed.raw);
    assert_eq!(streamed.finish_reason().as_deref(), Some("tool_calls"));
    assert_eq!(streamed.content(), "", "the block is not streamed as text");
    let calls = assembled_tool_calls(&streamed);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("call_") && id.len() == 29), "{calls:?}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    // The query told the app about both tools, in the documented framing.
    let query = mock.generations()[0].body["query"].as_str().unwrap_or("").to_string();
    assert!(query.starts_with("[Tools]\nYou can call the tools below."), "{query}");
    assert!(query.contains("\"name\":\"get_time\""), "{query}");
    assert!(query.ends_with("[Current message]\nWhat's the weather in Oslo?"), "{query}");
}

#[tokio::test]
async fn parallel_calls_text_before_a_call_and_blocks_that_are_not_calls() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let ask = |text: &str| json!([{"role": "user", "content": text}]);
    let (_, _, body) = post_chat(&gw, &with_tools(ask("[[mock:parallel]] weather and time in Oslo"), false), &[]).await;
    let names: Vec<&str> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|calls| calls.iter().filter_map(|c| c["function"]["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["get_weather", "get_time"], "{body}");

    let (_, _, body) =
        post_chat(&gw, &with_tools(ask("[[mock:text-then-call]] weather in Oslo please"), false), &[]).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Let me look that up.\n");
    assert_eq!(body["choices"][0]["message"]["tool_calls"].as_array().map(Vec::len), Some(1));

    let mut one_only = with_tools(ask("[[mock:parallel]] weather and time in Oslo"), false);
    one_only["parallel_tool_calls"] = json!(false);
    let (_, _, body) = post_chat(&gw, &one_only, &[]).await;
    assert_eq!(body["choices"][0]["message"]["tool_calls"].as_array().map(Vec::len), Some(1), "{body}");
    let query =
        mock.generations().last().map(|g| g.body["query"].as_str().unwrap_or("").to_string()).unwrap_or_default();
    assert!(query.contains("Call at most one tool per answer."), "{query}");

    // A block that is not a valid call is left as text (and logged), never invented.
    let (_, _, body) = post_chat(&gw, &with_tools(ask("[[mock:bad-call]] weather?"), false), &[]).await;
    assert_eq!(body["choices"][0]["message"]["content"], "<tool_call>{not json}</tool_call>");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none(), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

/// An agent loop: the call, the tool's result, the final answer, in one Dify conversation
/// where the second turn sends only the result (the definitions are known by then).
#[tokio::test]
async fn a_tool_round_continues_the_same_conversation_sending_only_the_results() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for stream in [false, true] {
        let question = format!("What's the weather in Oslo? (round {stream})");
        let mut messages =
            json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}]);
        let (_, _, first) = post_chat(&gw, &with_tools(messages.clone(), false), &[]).await;
        let call = first["choices"][0]["message"]["tool_calls"][0].clone();
        let id = call["id"].as_str().expect("call id").to_string();
        messages.as_array_mut().expect("array").extend([
            json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            json!({"role": "tool", "tool_call_id": id, "content": "sunny, 21 °C"}),
        ]);
        let answer = if stream {
            let result = stream_chat(&gw, &with_tools(messages.clone(), true), &[]).await;
            assert_eq!(result.finish_reason().as_deref(), Some("stop"));
            result.content()
        } else {
            let (status, _, body) = post_chat(&gw, &with_tools(messages.clone(), false), &[]).await;
            assert_eq!(status, 200, "{body}");
            body["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string()
        };
        assert_eq!(answer, "The tools answered: get_weather said sunny, 21 °C.");
        let conversations: Vec<_> =
            mock.conversations().into_values().filter(|c| c.queries[0].contains(&question)).collect();
        assert_eq!(conversations.len(), 1, "one Dify conversation for the whole round");
        let queries = &conversations[0].queries;
        assert_eq!(queries.len(), 2);
        assert_eq!(
            queries[1], "<tool_response>\n{\"name\":\"get_weather\",\"content\":\"sunny, 21 °C\"}\n</tool_response>",
            "only the result is sent: the conversation has the history and the tools"
        );
        // The next user turn with the same tools: still no definitions again.
        messages.as_array_mut().expect("array").extend([
            json!({"role": "assistant", "content": answer}),
            json!({"role": "user", "content": "Thanks! And tomorrow?"}),
        ]);
        let (status, _, _) = post_chat(&gw, &with_tools(messages.clone(), false), &[]).await;
        assert_eq!(status, 200);
        let queries = mock.conversations().into_values().find(|c| c.queries[0].contains(&question)).expect("c").queries;
        assert_eq!(queries.len(), 3, "{queries:?}");
        assert_eq!(queries[2], "Thanks! And tomorrow?");
        // Tools that changed are told again.
        let mut changed = with_tools(messages.clone(), false);
        changed["tools"].as_array_mut().expect("tools").pop();
        messages.as_array_mut().expect("array").extend([
            json!({"role": "assistant", "content": "Echo: Thanks! And tomorrow?"}),
            json!({"role": "user", "content": "one more"}),
        ]);
        changed["messages"] = messages;
        post_chat(&gw, &changed, &[]).await;
        let queries = mock.conversations().into_values().find(|c| c.queries[0].contains(&question)).expect("c").queries;
        assert!(queries[3].starts_with("[Tools]") && !queries[3].contains("get_time"), "{queries:?}");
    }
}

#[tokio::test]
async fn tool_choice_required_named_and_none() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let mut body = with_tools(json!([{"role": "user", "content": "hello there"}]), false);
    body["tool_choice"] = json!("required");
    let (_, _, answer) = post_chat(&gw, &body, &[]).await;
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather", "{answer}");
    let query = mock.generations().last().map(|g| g.body["query"].to_string()).unwrap_or_default();
    assert!(query.contains("[Tool use]"), "{query}");

    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, _, answer) = post_chat(&gw, &body, &[]).await;
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_time", "{answer}");

    body["tool_choice"] = json!("none");
    body["messages"] = json!([{"role": "user", "content": "What's the weather in Oslo? none"}]);
    let (_, _, answer) = post_chat(&gw, &body, &[]).await;
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none(), "{answer}");
    let query = mock.generations().last().map(|g| g.body["query"].to_string()).unwrap_or_default();
    assert!(!query.contains("[Tools]"), "tool_choice none: the tools are not offered: {query}");

    body["tool_choice"] = json!({"type": "function", "function": {"name": "launch"}});
    let (status, _, error) = post_chat(&gw, &body, &[]).await;
    assert_eq!((status, &error["error"]["param"]), (400, &json!("tool_choice")), "{error}");
}

#[tokio::test]
async fn tool_calls_off_ignores_tools_and_refuses_a_forced_call() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("TOOL_CALLS", "off")]).await;
    let mut body = with_tools(json!([{"role": "user", "content": "What's the weather in Oslo?"}]), false);
    let (status, _, answer) = post_chat(&gw, &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(answer["choices"][0]["message"]["content"], "Echo: What's the weather in Oslo?");
    body["tool_choice"] = json!("required");
    let (status, _, error) = post_chat(&gw, &body, &[]).await;
    assert_eq!(status, 400);
    let error = assert_openai_error(&error);
    assert_eq!(error["param"], "tool_choice");
    assert!(error["message"].as_str().unwrap_or("").contains("TOOL_CALLS"), "{error}");
    // Per model, in MODEL_CONFIG.
    let models = r#"{"chat":"app-chat-key-0001","plain":{"key":"app-chat-key-0001","tools":"off"}}"#;
    let gw = gateway_with(&mock.base_url(), models, &[]).await;
    body["model"] = json!("plain");
    let (status, _, error) = post_chat(&gw, &body, &[]).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("MODEL_CONFIG"), "{error}");
    body["model"] = json!("chat");
    assert_eq!(post_chat(&gw, &body, &[]).await.0, 200);
}

/// Open WebUI sends its ~20 built-in tools on every turn; a Dify app has tools of its own.
/// By default they are ignored for its requests (by its headers, or by the list itself).
#[tokio::test]
async fn open_webuis_own_tools_are_ignored_by_default() {
    let mock = mock().await;
    let owui_tools: Vec<Value> =
        ["search_notes", "view_note", "write_note", "search_memories", "get_current_timestamp"]
            .iter()
            .map(|name| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}))
            .collect();
    let body =
        json!({"model": "chat", "tools": owui_tools, "messages": [{"role": "user", "content": "search my notes"}]});
    let gw = gateway(&mock, &[]).await;
    for headers in [&[("x-openwebui-user-id", "u1")][..], &[]] {
        let (status, _, answer) = post_chat(&gw, &body, headers).await;
        assert_eq!(status, 200);
        assert_eq!(answer["choices"][0]["message"]["content"], "Echo: search my notes", "{answer}");
    }
    let emulating = gateway(&mock, &[("OPENWEBUI_TOOLS", "emulate")]).await;
    let (_, _, answer) = post_chat(&emulating, &body, &[("x-openwebui-user-id", "u1")]).await;
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "search_notes", "{answer}");
}

fn weather_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "weather", "strict": true, "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
        "required": ["city", "degrees"], "additionalProperties": false}}})
}

#[tokio::test]
async fn structured_answers_are_cleaned_checked_and_asked_for_again() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let ask = |text: &str, stream: bool| {
        json!({"model": "chat", "messages": [{"role": "user", "content": text}], "stream": stream,
               "response_format": weather_format()})
    };
    // The mock fences its JSON and wraps it in prose: the client gets the JSON alone.
    let (status, _, body) = post_chat(&gw, &ask("Weather in Oslo, 12 degrees", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "{\"city\":\"Oslo\",\"degrees\":12}");
    let streamed = stream_chat(&gw, &ask("Weather in Bergen, 9 degrees", true), &[]).await;
    assert_eq!(streamed.content(), "{\"city\":\"Bergen\",\"degrees\":9}", "{}", streamed.raw);
    assert_eq!(streamed.finish_reason().as_deref(), Some("stop"));
    let query = mock.generations()[0].body["query"].as_str().unwrap_or("").to_string();
    assert!(query.starts_with("[Answer format]\nAnswer with one JSON value"), "{query}");

    // Wrong once: asked again in the same conversation, then right.
    let (status, _, body) =
        post_chat(&gw, &ask("[[mock:json-invalid-once]] Weather in Oslo, 3 degrees", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "{\"city\":\"Oslo\",\"degrees\":3}");
    let conversation =
        mock.conversations().into_values().find(|c| c.queries[0].contains("json-invalid-once")).expect("conversation");
    assert_eq!(conversation.queries.len(), 2, "asked again in the same conversation");
    assert!(conversation.queries[1].contains("was not what was asked for"), "{:?}", conversation.queries);

    // Wrong every time: a 502 naming what failed, never an invalid answer dressed as success.
    let (status, headers, body) = post_chat(&gw, &ask("[[mock:json-invalid-always]] Oslo", false), &[]).await;
    assert_eq!(status, 502, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "invalid_structured_output");
    assert!(error["message"].as_str().unwrap_or("").contains("degrees"), "{error}");
    assert_eq!(headers["x-should-retry"], "false");
    let streamed = stream_chat(&gw, &ask("[[mock:json-invalid-always]] Oslo", true), &[]).await;
    assert_eq!(
        streamed.error().map(|e| e["code"].clone()),
        Some(json!("invalid_structured_output")),
        "{}",
        streamed.raw
    );
    assert!(streamed.done);

    // json_object: any object.
    let mut object = ask("give me json", false);
    object["response_format"] = json!({"type": "json_object"});
    let (_, _, body) = post_chat(&gw, &object, &[]).await;
    let content: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content.is_object(), "{content}");
}

#[tokio::test]
async fn parameters_no_dify_app_can_honour_are_refused_naming_the_field() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let base = chat_body("chat", "hi", false);
    for (field, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let (status, _, error) = post_chat(&gw, &body, &[]).await;
        assert_eq!(status, 400, "{field}: {error}");
        assert_eq!(assert_openai_error(&error)["param"], field);
    }
    // What the app owns is accepted (and ignored).
    let mut body = base;
    for (field, value) in [
        ("temperature", json!(0.2)),
        ("max_tokens", json!(5)),
        ("seed", json!(1)),
        ("stop", json!(["x"])),
        ("n", json!(1)),
    ] {
        body[field] = value;
    }
    assert_eq!(post_chat(&gw, &body, &[]).await.0, 200);
    assert!(mock.generations().iter().all(|g| g.body.get("temperature").is_none()));
}

/// SDKs retry 5xx twice: an answer that failed after Dify had the request must say not to.
#[tokio::test]
async fn failures_after_dify_had_the_request_say_do_not_retry() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, headers, _) = post_chat(&gw, &chat_body("chat", "[[mock:error-mid]]", false), &[]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-should-retry"], "false");
    let (status, headers, _) = post_chat(&gw, &chat_body("chat", "[[mock:http-429]]", false), &[]).await;
    assert_eq!(status, 429);
    assert!(headers.get("x-should-retry").is_none() && headers.contains_key("retry-after"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let down = gateway_with(&format!("http://127.0.0.1:{port}/v1"), r#"{"chat":"app-chat-key-0001"}"#, &[]).await;
    let (status, headers, _) = post_chat(&down, &chat_body("chat", "anyone", false), &[]).await;
    assert_eq!(status, 502);
    assert!(headers.get("x-should-retry").is_none(), "nothing reached Dify: retrying is right");
}

/// Clients configured with a bare base URL, or one ending in a slash.
#[tokio::test]
async fn chat_and_models_answer_without_v1_and_with_a_trailing_slash() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for path in ["/chat/completions", "/v1/chat/completions/", "/chat/completions/"] {
        let response = client().post(gw.url(path)).json(&chat_body("chat", "hi", false)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/models", "/v1/models/", "/models/chat"] {
        let response = client().get(gw.url(path)).send().await.expect("send");
        assert_eq!(response.status(), 200, "{path}");
    }
}
