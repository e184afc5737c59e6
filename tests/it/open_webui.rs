//! What Dify knows, carried to Open WebUI over real HTTP: citations as `source` events (one
//! per document), progress as `status` events (one per step, none for a plain chat app),
//! usage in the last chunk, follow-ups from Dify's own suggestions, task conversations
//! deleted; none of it for other clients unless asked for, and the `dify` object on request.

use std::time::{Duration, Instant};

use mock_dify::{MockApp, MockDify, MockSettings};
use serde_json::{Value, json};

use crate::common::*;

const OWUI: [(&str, &str); 2] = [("x-openwebui-user-id", "u-ada"), ("x-openwebui-chat-id", "chat-1")];

fn events_of(result: &StreamResult) -> Vec<&Value> {
    result.chunks.iter().filter_map(|c| c.get("event")).collect()
}

fn statuses(result: &StreamResult) -> Vec<(String, bool)> {
    events_of(result)
        .into_iter()
        .filter(|e| e["type"] == "status")
        .map(|e| (e["data"]["description"].as_str().unwrap_or("").to_string(), e["data"]["done"] == true))
        .collect()
}

fn sources(result: &StreamResult) -> Vec<&Value> {
    events_of(result).into_iter().filter(|e| e["type"] == "source").map(|e| &e["data"]).collect()
}

/// Usage of every chunk that has one.
fn usages(result: &StreamResult) -> Vec<&Value> {
    result.chunks.iter().filter_map(|c| c.get("usage")).filter(|u| !u.is_null()).collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn open_webui_gets_sources_per_document_status_per_node_and_usage_other_clients_plain_chunks() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let body = chat_body("chatflow", "[[mock:rag]] How much leave do I get?", true);
    let result = stream_chat(&gw, &body, &OWUI).await;
    assert_eq!(result.status, 200, "{}", result.raw);
    assert!(result.done && result.error().is_none(), "{}", result.raw);

    // One source per document, passages grouped, with names, dataset and scores.
    let found = sources(&result);
    assert_eq!(found.len(), 2, "{}", result.raw);
    assert_eq!(found[0]["source"]["name"], "leave-policy.pdf");
    assert_eq!(
        found[0]["document"],
        json!(["Employees get 25 days of paid leave a year.", "Unused leave carries over until March."])
    );
    assert_eq!(found[0]["metadata"][0]["dataset"], "Handbook");
    assert_eq!(found[0]["distances"], json!([0.91, 0.77]));
    assert_eq!(found[1]["source"]["name"], "payroll.md");

    // A status per node as it starts, the last one marked done at the end.
    let lines = statuses(&result);
    assert_eq!(
        lines,
        [
            ("Searching knowledge base: Handbook".to_string(), false),
            ("LLM".to_string(), false),
            ("LLM".to_string(), true)
        ],
        "{}",
        result.raw
    );
    // Usage exactly once (Open WebUI adds up every usage it gets), with Dify's price, and
    // after the answer: sources and statuses come before the closing chunk.
    let usage = usages(&result);
    assert_eq!(usage.len(), 1, "{}", result.raw);
    assert_eq!(usage[0]["price"], json!({"total": "0.0000300", "currency": "USD"}));
    assert!(usage[0]["total_tokens"].as_u64().is_some_and(|t| t > 0));
    let finish = result.chunks.iter().position(|c| c["choices"][0]["finish_reason"].is_string()).expect("finish");
    let last_event = result.chunks.iter().rposition(|c| c.get("event").is_some()).expect("events");
    assert!(last_event < finish, "events come before the closing chunk");
    assert!(result.content().contains("How much leave"), "the answer is untouched: {}", result.content());

    // The same request from the openai SDK (no Open WebUI headers): strictly OpenAI-shaped.
    let plain = stream_chat(&gw, &body, &[]).await;
    for chunk in &plain.chunks {
        let keys: Vec<&str> = chunk.as_object().expect("object").keys().map(String::as_str).collect();
        for key in &keys {
            assert!(
                ["id", "object", "created", "model", "system_fingerprint", "choices"].contains(key),
                "{key} in {chunk}"
            );
        }
    }
    assert_eq!(plain.content(), result.content());
}

#[tokio::test]
async fn a_plain_chat_app_gets_no_status_agents_get_their_tools_and_the_setting_decides() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let chat = stream_chat(&gw, &chat_body("chat", "hello", true), &OWUI).await;
    assert!(statuses(&chat).is_empty() && sources(&chat).is_empty(), "no noise: {}", chat.raw);
    assert_eq!(usages(&chat).len(), 1, "usage even without stream_options: {}", chat.raw);

    let agent = stream_chat(&gw, &chat_body("agent-chat", "add one", true), &OWUI).await;
    assert_eq!(
        statuses(&agent),
        [("Using tool: calculator".to_string(), false), ("Using tool: calculator".to_string(), true)],
        "{}",
        agent.raw
    );
    assert!(agent.reasoning().is_empty(), "progress is in status lines, not the reasoning");

    // REASONING_PROGRESS stays for other clients.
    let progress = gateway(&mock, &[("REASONING_PROGRESS", "true")]).await;
    let other = stream_chat(&progress, &chat_body("agent-chat", "add one", true), &[]).await;
    assert!(other.reasoning().contains("calculator") && statuses(&other).is_empty(), "{}", other.raw);
    let owui = stream_chat(&progress, &chat_body("agent-chat", "add one", true), &OWUI).await;
    assert!(owui.reasoning().is_empty() && !statuses(&owui).is_empty(), "{}", owui.raw);

    let off = gateway(&mock, &[("OPENWEBUI_EVENTS", "off")]).await;
    let quiet = stream_chat(&off, &chat_body("chatflow", "[[mock:rag]] x", true), &OWUI).await;
    assert!(events_of(&quiet).is_empty() && usages(&quiet).is_empty(), "{}", quiet.raw);
    let on = gateway(&mock, &[("OPENWEBUI_EVENTS", "on")]).await;
    let loud = stream_chat(&on, &chat_body("chatflow", "[[mock:rag]] x", true), &[]).await;
    assert_eq!(sources(&loud).len(), 2, "{}", loud.raw);
}

fn follow_up_task(history: &str) -> Value {
    let prompt = format!(
        "### Task:\nPredict 3-5 useful messages this user might naturally send next to advance their current objective.\n\
         ### Output:\nJSON format: {{ \"follow_ups\": [\"Suggested next message 1\"] }}\n### Chat History:\n<chat_history>\n{history}\n</chat_history>"
    );
    json!({"model": "chat", "messages": [{"role": "user", "content": prompt}], "stream": false})
}

#[tokio::test]
async fn follow_ups_come_from_difys_suggestions_and_fall_back_when_the_app_has_none() {
    let apps = vec![MockApp::new("app-suggests-1", "Suggests", "chat").suggestions()];
    let suggesting = MockDify::start(apps).await.expect("mock");
    let gw = gateway_with(&suggesting.base_url(), r#"{"chat":"app-suggests-1"}"#, &[]).await;
    let answer = stream_chat(&gw, &chat_body("chat", "Plan a trip to Oslo", true), &OWUI).await;
    assert_eq!(answer.status, 200);
    let generations = suggesting.generations().len();

    let (status, _, body) = post_chat(&gw, &follow_up_task("USER: Plan a trip to Oslo"), &OWUI).await;
    assert_eq!(status, 200, "{body}");
    let content: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().expect("content"))
        .unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        content["follow_ups"],
        json!(["Tell me more about Plan a trip to Oslo", "Can you give an example?", "What should I do next?"])
    );
    assert_eq!(suggesting.generations().len(), generations, "no LLM call for the follow-ups");
    let asked = suggesting.requests().into_iter().find(|r| r.path.ends_with("/suggested")).expect("asked Dify");
    assert_eq!(asked.body["user"], "u-ada", "asked as the same user");

    // Without Open WebUI's chat (or with an app that has suggestions off): answered as before.
    let plain = mock().await;
    let gw = gateway(&plain, &[]).await;
    stream_chat(&gw, &chat_body("chat", "Plan a trip to Oslo", true), &OWUI).await;
    let before = plain.generations().len();
    let (status, _, _) = post_chat(&gw, &follow_up_task("USER: Plan a trip to Oslo"), &OWUI).await;
    assert_eq!(status, 200);
    assert_eq!(plain.generations().len(), before + 1, "the task went to the app");
    assert!(!plain.requests().iter().any(|r| r.path.ends_with("/suggested")));
}

fn title_task() -> Value {
    let prompt = "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Chat History:\n<chat_history>\nUSER: hi\n</chat_history>";
    json!({"model": "chat", "messages": [{"role": "user", "content": prompt}], "stream": false})
}

#[tokio::test]
async fn task_conversations_are_deleted_in_dify_and_a_failed_delete_is_not_the_clients_problem() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, _, _) = post_chat(&gw, &title_task(), &OWUI).await;
    assert_eq!(status, 200);
    wait_until("the task's conversation is deleted", || {
        mock.conversations().values().all(|c| !c.queries.iter().any(|q| q.contains("concise")))
    })
    .await;
    let delete = mock.requests().into_iter().find(|r| r.method == "DELETE").expect("a delete");
    assert_eq!(delete.body["user"], "u-ada");
    // The chat itself stays.
    stream_chat(&gw, &chat_body("chat", "real question", true), &OWUI).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.conversations().len(), 1);

    let keep = gateway(&mock, &[("TASK_CONVERSATIONS", "keep")]).await;
    post_chat(&keep, &title_task(), &OWUI).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.conversations().len(), 2, "TASK_CONVERSATIONS=keep keeps it");

    let failing = MockSettings { fail_deletes: true, ..MockSettings::default() };
    let broken = MockDify::start_with(all_apps(), failing, "127.0.0.1:0").await.expect("mock");
    let gw = gateway(&broken, &[]).await;
    let (status, _, body) = post_chat(&gw, &title_task(), &OWUI).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string());
    wait_until("the delete was tried", || broken.requests().iter().any(|r| r.method == "DELETE")).await;
}

#[tokio::test]
async fn dify_metadata_on_request_or_for_everyone() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (_, headers, plain) = post_chat(&gw, &chat_body("chat", "[[mock:rag]] hi", false), &[]).await;
    assert!(plain.get("dify").is_none(), "off by default: {plain}");
    let conversation = headers["x-dify-conversation-id"].to_str().expect("header").to_string();

    let asked = [("x-dify-metadata", "true")];
    let (_, _, body) = post_chat(&gw, &chat_body("chat", "[[mock:rag]] again", false), &asked).await;
    let dify = &body["dify"];
    assert!(dify["conversation_id"].as_str().is_some_and(|c| mock.conversations().contains_key(c)), "{body}");
    assert!(dify["message_id"].is_string());
    assert_eq!(dify["retriever_resources"].as_array().map(Vec::len), Some(3));
    assert_eq!(dify["retriever_resources"][0]["document_name"], "leave-policy.pdf");
    assert_eq!(dify["usage"]["total_price"], "0.0000300");
    assert_eq!(dify["usage"]["currency"], "USD");

    let everyone = gateway(&mock, &[("DIFY_METADATA", "true")]).await;
    let streamed = stream_chat(&everyone, &chat_body("chat", "[[mock:rag]] streamed", true), &[]).await;
    let closing = streamed.chunks.iter().find(|c| c["choices"][0]["finish_reason"].is_string()).expect("closing");
    assert_eq!(closing["dify"]["retriever_resources"].as_array().map(Vec::len), Some(3), "{}", streamed.raw);
    assert_eq!(streamed.chunks.iter().filter(|c| c.get("dify").is_some()).count(), 1, "only the closing chunk");

    let response = client()
        .post(gw.url("/v1/responses"))
        .header("x-dify-metadata", "true")
        .json(&json!({"model": "chat", "input": "[[mock:rag]] via responses"}))
        .send()
        .await
        .expect("send")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(response["dify"]["retriever_resources"].as_array().map(Vec::len), Some(3), "{response}");
    assert_ne!(conversation, "");
    let (status, _, error) = post_chat(&gw, &chat_body("chat", "x", false), &[("x-dify-metadata", "maybe")]).await;
    assert_eq!((status, assert_openai_error(&error)["param"].as_str()), (400, Some("x-dify-metadata")));
}
