//! The OpenAI Responses API over real HTTP: response objects and typed, numbered events as
//! the SDKs read them; `previous_response_id` continuing one Dify conversation and sending
//! only the new input; stored responses readable and deletable by their own user only;
//! tools, reasoning and failures in the Responses API's own shapes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use mock_dify::MockDify;

/// One streamed response: its events in order, each checked to carry its name as `type`
/// and the next `sequence_number`.
struct Events {
    status: u16,
    events: Vec<Value>,
    raw: String,
}

impl Events {
    fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }

    fn last(&self) -> &Value {
        self.events.last().unwrap_or_else(|| panic!("no events: {}", self.raw))
    }

    /// The text deltas, concatenated as the SDKs' accumulators do.
    fn text(&self) -> String {
        self.of_type("response.output_text.delta").iter().filter_map(|e| e["delta"].as_str()).collect()
    }
}

async fn post(gw: &Gateway, path: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(gw.url(path)).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("send")
}

async fn create(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let response = post(gw, "/v1/responses", body, headers).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

async fn stream(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Events {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = post(gw, "/v1/responses", &body, headers).await;
    let status = response.status().as_u16();
    let raw = response.text().await.expect("body");
    let mut events = Vec::new();
    for frame in raw.split("\n\n").filter(|f| !f.trim().is_empty() && !f.starts_with(':')) {
        let (name, data) = frame.split_once('\n').unwrap_or_else(|| panic!("frame without data: {frame:?}"));
        let name = name.strip_prefix("event: ").unwrap_or_else(|| panic!("frame without event name: {frame:?}"));
        let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("frame without data: {frame:?}"));
        assert_ne!(data, "[DONE]", "the Responses API has no [DONE]");
        let event: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event {data:?}: {e}"));
        assert_eq!(event["type"], name, "event name and type differ: {frame}");
        assert_eq!(event["sequence_number"], events.len(), "sequence numbers count up from 0: {raw}");
        events.push(event);
    }
    Events { status, events, raw }
}

fn answer_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().into_iter().flatten())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

fn conversation_with(mock: &MockDify, needle: &str) -> Vec<String> {
    let found: Vec<_> =
        mock.conversations().into_values().filter(|c| c.queries.iter().any(|q| q.contains(needle))).collect();
    assert_eq!(found.len(), 1, "one Dify conversation has {needle:?}: {found:?}");
    found[0].queries.clone()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

#[tokio::test]
async fn a_response_has_the_sdk_shape_and_is_kept_for_its_user() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let alice = [("x-openwebui-user-id", "alice")];
    let (status, body) =
        create(&gw, &json!({"model": "chat", "input": "hello there", "metadata": {"k": "v"}}), &alice).await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!((body["object"].as_str(), body["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(answer_text(&body), "Echo: hello there");
    let message = &body["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["annotations"], json!([]));
    for key in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(body["usage"][key].is_u64(), "usage.{key}: {body}");
    }
    assert_eq!(body["metadata"], json!({"k": "v"}));
    for key in ["error", "incomplete_details", "instructions", "temperature", "top_p", "previous_response_id"] {
        assert!(body[key].is_null(), "{key} is present and null: {body}");
    }
    assert_eq!((body["tools"].clone(), body["tool_choice"].clone()), (json!([]), json!("auto")));

    // Kept: the same object again, for the same user only.
    let path = format!("/v1/responses/{id}");
    let again = client().get(gw.url(&path)).header("x-openwebui-user-id", "alice").send().await.expect("get");
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.expect("json"), body);
    let other = client().get(gw.url(&path)).header("x-openwebui-user-id", "mallory").send().await.expect("get");
    assert_eq!(other.status(), 404, "another user cannot read it");
    assert_eq!(assert_openai_error(&other.json::<Value>().await.expect("json"))["code"], "response_not_found");
    let deleted = client().delete(gw.url(&path)).header("x-openwebui-user-id", "mallory").send().await.expect("del");
    assert_eq!(deleted.status(), 404, "nor delete it");

    let deleted = client().delete(gw.url(&path)).header("x-openwebui-user-id", "alice").send().await.expect("del");
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.json::<Value>().await.expect("json"), json!({"id": id, "object": "response", "deleted": true}));
    let gone = client().get(gw.url(&path)).header("x-openwebui-user-id", "alice").send().await.expect("get");
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn a_streamed_response_is_the_documented_event_sequence_ending_in_the_response() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream(&gw, &json!({"model": "chat", "input": "[[mock:think]] stream me"}), &[]).await;
    assert_eq!(result.status, 200, "{}", result.raw);
    let kinds: Vec<&str> = result.events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(result.events[0]["response"]["output"], json!([]), "the snapshot starts empty");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    let done = &result.last()["response"];
    assert_eq!(done["status"], "completed");
    // Reasoning first, as a summary; then the message whose deltas add up to its text.
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][0]["summary"][0]["text"], "Let me think about it.");
    assert!(!result.of_type("response.reasoning_summary_text.delta").is_empty());
    assert_eq!(done["output"][1]["type"], "message");
    assert_eq!(answer_text(done), result.text());
    assert!(result.text().contains("stream me"), "{}", result.text());
    // Every item-scoped event names the item it belongs to, at its index.
    for event in &result.events {
        if let (Some(item_id), Some(index)) = (event["item_id"].as_str(), event["output_index"].as_u64()) {
            assert_eq!(done["output"][index as usize]["id"], item_id, "{event}");
        }
    }
    let added: Vec<u64> =
        result.of_type("response.output_item.added").iter().filter_map(|e| e["output_index"].as_u64()).collect();
    assert_eq!(added, [0, 1]);

    // The streamed response is kept like any other.
    let id = done["id"].as_str().expect("id");
    let kept = client().get(gw.url(&format!("/v1/responses/{id}"))).send().await.expect("get");
    assert_eq!(kept.json::<Value>().await.expect("json"), *done);
}

#[tokio::test]
async fn previous_response_id_continues_one_dify_conversation_sending_only_the_new_input() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let bob = [("x-openwebui-user-id", "bob")];
    let (_, first) =
        create(&gw, &json!({"model": "chat", "input": "chain first", "instructions": "Be brief."}), &bob).await;
    let first_id = first["id"].as_str().expect("id");
    let second =
        stream(&gw, &json!({"model": "chat", "input": "chain second", "previous_response_id": first_id}), &bob).await;
    let second = &second.last()["response"];
    assert_eq!(second["previous_response_id"], first_id);
    let (status, third) = create(
        &gw,
        &json!({"model": "chat", "input": [{"role": "user", "content": "chain third"}], "previous_response_id": second["id"]}),
        &bob,
    )
    .await;
    assert_eq!(status, 200, "{third}");
    let queries = conversation_with(&mock, "chain first");
    assert_eq!(queries[1..], ["chain second", "chain third"], "{queries:?}");
    assert!(queries[0].contains("Be brief.") && queries[0].ends_with("chain first"), "instructions go with the input");
    // Continued by id only, the conversation is counted once: a kept response's conversation
    // gets its row with its first turn (no opening turn left standing for it too).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let metrics = client().get(gw.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let mappings = metrics.lines().find_map(|l| l.strip_prefix("opendify_conversation_mappings ")).map(str::trim);
    assert_eq!(mappings, Some("1"), "{metrics}");

    // Another user, another app or an unknown id: a 404 naming the id, and nothing sent.
    let before = mock.generations().len();
    for (model, user, id) in [("chat", "eve", first_id), ("agent-chat", "bob", first_id), ("chat", "bob", "resp_nope")]
    {
        let body = json!({"model": model, "input": "hijack", "previous_response_id": id});
        let (status, error) = create(&gw, &body, &[("x-openwebui-user-id", user)]).await;
        assert_eq!(status, 404, "{model} {user} {id}: {error}");
        let error = assert_openai_error(&error);
        assert_eq!(
            (error["param"].as_str(), error["code"].as_str()),
            (Some("previous_response_id"), Some("previous_response_not_found"))
        );
        assert!(error["message"].as_str().unwrap_or("").contains(id), "{error}");
    }
    assert_eq!(mock.generations().len(), before, "no refused continuation reached Dify");

    // A workflow keeps no conversation: said so, not silently a new one.
    let (status, error) =
        create(&gw, &json!({"model": "workflow", "input": "x", "previous_response_id": first_id}), &bob).await;
    assert_eq!(status, 400, "{error}");
    assert!(assert_openai_error(&error)["message"].as_str().unwrap_or("").contains("workflow"), "{error}");
}

#[tokio::test]
async fn store_false_keeps_nothing_but_a_resent_history_still_continues() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (_, first) = create(&gw, &json!({"model": "chat", "input": "unstored first", "store": false}), &[]).await;
    assert_eq!(first["store"], false);
    let id = first["id"].as_str().expect("id");
    let get = client().get(gw.url(&format!("/v1/responses/{id}"))).send().await.expect("get");
    assert_eq!(get.status(), 404, "store: false keeps nothing");
    let (status, _) = create(&gw, &json!({"model": "chat", "input": "x", "previous_response_id": id}), &[]).await;
    assert_eq!(status, 404);
    // Stateless clients send the history as items: it continues like a chat history does.
    let history = json!([
        {"role": "user", "content": "unstored first"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer_text(&first)}]},
        {"role": "user", "content": "unstored second"}
    ]);
    let (status, _) = create(&gw, &json!({"model": "chat", "input": history, "store": false}), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(conversation_with(&mock, "unstored first"), ["unstored first", "unstored second"]);
}

#[tokio::test]
async fn a_tool_round_continues_by_previous_response_id_sending_only_the_result() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for streamed in [false, true] {
        let city = if streamed { "Lima" } else { "Oslo" };
        let ask = json!({"model": "chat", "input": format!("What's the weather in {city}?"), "tools": weather_tool()});
        let called = if streamed {
            stream(&gw, &ask, &[]).await.last()["response"].clone()
        } else {
            create(&gw, &ask, &[]).await.1
        };
        let call = called["output"].as_array().and_then(|o| o.iter().find(|i| i["type"] == "function_call")).cloned();
        let call = call.unwrap_or_else(|| panic!("no function_call item: {called}"));
        assert_eq!(call["name"], "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(call["arguments"].as_str().expect("arguments")).expect("json"),
            json!({"city": city})
        );
        assert!(
            call["call_id"].as_str().is_some_and(|c| !c.is_empty())
                && call["id"].as_str().is_some_and(|i| i.starts_with("fc_"))
        );

        let result = json!({"model": "chat", "previous_response_id": called["id"], "tools": weather_tool(),
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "{\"temp\":12}"}]});
        let answer = if streamed {
            stream(&gw, &result, &[]).await.last()["response"].clone()
        } else {
            create(&gw, &result, &[]).await.1
        };
        assert_eq!(answer["status"], "completed", "{answer}");
        assert!(answer_text(&answer).contains("12"), "the model used the result: {answer}");
        let queries = conversation_with(&mock, &format!("weather in {city}"));
        assert_eq!(queries.len(), 2, "{queries:?}");
        // Only the result went to Dify, named after the call it answers; the definitions
        // were not sent again.
        assert!(
            queries[1].starts_with("<tool_response>") && queries[1].contains("\"name\":\"get_weather\""),
            "{}",
            queries[1]
        );
        assert!(!queries[1].contains("Weather now"), "definitions re-sent: {}", queries[1]);
    }
}

#[tokio::test]
async fn failures_are_response_failed_then_an_error_event_and_errors_have_openai_shape() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream(&gw, &json!({"model": "chat", "input": "[[mock:error-mid]] go"}), &[]).await;
    let kinds: Vec<&str> = result.events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds[kinds.len() - 2..], ["response.failed", "error"], "{}", result.raw);
    assert!(!kinds.contains(&"response.completed"));
    let failed = &result.events[kinds.len() - 2]["response"];
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{failed}");
    let error = result.last();
    assert_eq!(error["message"], error["error"]["message"], "both the flat and the nested form");

    let (status, body) = create(&gw, &json!({"model": "nope", "input": "x"}), &[]).await;
    assert_eq!(status, 404);
    assert_openai_error(&body);
    let (status, body) =
        create(&gw, &json!({"model": "chat", "input": "x", "tools": [{"type": "web_search"}]}), &[]).await;
    assert_eq!((status, assert_openai_error(&body)["param"].as_str()), (400, Some("tools[0].type")));
    let (status, body) = create(&gw, &json!({"model": "chat"}), &[]).await;
    assert_eq!((status, assert_openai_error(&body)["param"].as_str()), (400, Some("input")));
    let items = client().get(gw.url("/v1/responses/resp_x/input_items")).send().await.expect("get");
    assert_eq!(items.status(), 404);
}

#[tokio::test]
async fn a_client_leaving_mid_response_stops_dify() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let body = json!({"model": "chat", "input": "[[mock:slow]] a long answer", "stream": true});
    let mut response = post(&gw, "/v1/responses", &body, &[("x-openwebui-user-id", "leaver")]).await;
    let first = response.chunk().await.expect("read").expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("response.created"));
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.stops().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.stops().len(), 1, "Dify was not told to stop");
    assert_eq!(mock.stops()[0].1, "leaver");
}

#[tokio::test]
async fn structured_output_through_text_format() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
                        "required": ["city", "temp"], "additionalProperties": false});
    let body = json!({"model": "chat", "input": "Weather in Oslo as JSON",
                      "text": {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": true}}});
    let (status, response) = create(&gw, &body, &[]).await;
    assert_eq!(status, 200, "{response}");
    let parsed: Value = serde_json::from_str(&answer_text(&response)).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert!(parsed["city"].is_string() && parsed["temp"].is_i64(), "{parsed}");
    assert_eq!(response["text"]["format"]["type"], "json_schema");
}
