//! Legacy completions (`POST /v1/completions`) over real HTTP: a prompt answered as a
//! `text_completion` by a completion app and by a chat app, streamed as whole
//! `text_completion` chunks with usage when asked, nothing recorded as a conversation, and
//! every field no Dify app can honour refused, naming it.

use serde_json::{Value, json};

use crate::common::*;

fn completion_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "prompt": prompt, "stream": stream, "max_tokens": 16, "temperature": 0.2})
}

#[tokio::test]
async fn a_prompt_is_answered_as_a_text_completion_by_a_completion_app_and_a_chat_app() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for (model, endpoint) in [("completion", "/v1/completion-messages"), ("chat", "/v1/chat-messages")] {
        let (status, headers, body) =
            post_json(&gw, "/v1/completions", &completion_body(model, "Say hi", false), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "text_completion");
        assert!(body["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")), "{body}");
        assert_eq!(body["model"], model);
        assert!(body["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
        assert_eq!(
            body["choices"],
            json!([{"text": "Echo: Say hi", "index": 0, "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(body["usage"], json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}));
        assert_eq!(headers["x-opendify-user"], "default_user");
        let sent = mock.generations().last().cloned().expect("a generation");
        assert_eq!(sent.path, endpoint);
        assert_eq!(sent.body["query"], "Say hi", "the prompt is the query, as is");
        assert!(sent.body.get("conversation_id").is_none(), "{}", sent.body);
    }
    // A list of one prompt is that prompt; clients configured without /v1 reach it too.
    let mut body = completion_body("completion", "x", false);
    body["prompt"] = json!(["Say hello"]);
    let (status, _, answer) = post_json(&gw, "/completions", &body, &[]).await;
    assert_eq!((status, answer["choices"][0]["text"].as_str()), (200, Some("Echo: Say hello")), "{answer}");

    let metrics = scrape_metrics(&gw).await;
    let series = "opendify_requests_total{model=\"completion\",status=\"200\",stream=\"false\"}";
    assert_eq!(metric(&metrics, series), Some(2.0), "{metrics}");
}

#[tokio::test]
async fn a_streamed_completion_is_whole_text_completions_then_usage_then_done() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for model in ["completion", "chat", "workflow"] {
        let mut body = completion_body(model, "Stream me", true);
        body["stream_options"] = json!({"include_usage": true});
        let result = stream_post(&gw, "/v1/completions", &body, &[]).await;
        assert_eq!(result.status, 200, "{}", result.raw);
        assert!(result.done, "ends with [DONE]: {}", result.raw);
        assert!(result.error().is_none(), "{}", result.raw);
        let id = result.chunks[0]["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("cmpl-"));
        for chunk in &result.chunks {
            assert_eq!(chunk["object"], "text_completion", "every chunk is a whole text_completion: {chunk}");
            assert_eq!((chunk["id"].as_str(), chunk["model"].as_str()), (Some(id.as_str()), Some(model)));
        }
        let (usage, choices) = result.chunks.split_last().expect("chunks");
        assert_eq!(usage["choices"], json!([]), "{}", result.raw);
        assert!(usage["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0), "{}", result.raw);
        let text: String = choices.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(text, "Echo: Stream me", "{model}");
        let (last, deltas) = choices.split_last().expect("a closing chunk");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(deltas.len() > 1, "the answer streams in pieces: {}", result.raw);
        for chunk in deltas {
            assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null, "{chunk}");
            assert_eq!(chunk["choices"][0]["logprobs"], Value::Null, "{chunk}");
            assert_eq!(chunk["usage"], Value::Null, "usage is null until the last chunk: {chunk}");
        }
    }
    // Without include_usage, no usage anywhere.
    let result = stream_post(&gw, "/v1/completions", &completion_body("completion", "quiet", true), &[]).await;
    assert!(result.done && !result.raw.contains("usage"), "{}", result.raw);
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_frame_then_done_and_before_it_a_502() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result =
        stream_post(&gw, "/v1/completions", &completion_body("completion", "[[mock:error-mid]] hi", true), &[]).await;
    assert!(result.done, "{}", result.raw);
    let error = result.error().expect("an error frame");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("Rate Limit Error")), "{error}");
    assert!(!result.raw.contains("\"finish_reason\":\"stop\""), "never a fake stop: {}", result.raw);

    let (status, headers, body) =
        post_json(&gw, "/v1/completions", &completion_body("completion", "[[mock:http-500]]", false), &[]).await;
    assert_eq!(status, 502);
    assert_openai_error(&body);
    assert_eq!(headers["x-should-retry"], "false");
}

/// The legacy API has no history: a completion is never recorded as a conversation, even
/// with a chat id, and an explicit conversation id does not pull it into one.
#[tokio::test]
async fn a_completion_is_stateless_and_never_continues_or_records_a_conversation() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let chat_id = [("x-openwebui-chat-id", "chat-legacy-1")];
    let (status, _, body) =
        post_json(&gw, "/v1/completions", &completion_body("chat", "Remember 42", false), &chat_id).await;
    assert_eq!(status, 200, "{body}");
    let store = gw.state.conversations.store();
    store.flush().await;
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.conversations, stats.turns, stats.chats), (0, 0, 0), "nothing recorded");
    // A chat client whose history is exactly that prompt and answer starts a new, seeded
    // conversation: nothing was recorded that it could continue.
    let history = json!({"model": "chat", "messages": [
        {"role": "user", "content": "Remember 42"},
        {"role": "assistant", "content": "Echo: Remember 42"},
        {"role": "user", "content": "And now?"}]});
    for headers in [&chat_id[..], &[]] {
        let (status, _, _) = post_chat(&gw, &history, headers).await;
        assert_eq!(status, 200);
        let sent = mock.generations().last().cloned().expect("sent");
        assert!(sent.body.get("conversation_id").is_none(), "{}", sent.body);
        assert!(sent.body["query"].as_str().is_some_and(|q| q.contains("[Earlier conversation]")), "{}", sent.body);
    }
    // An explicit conversation is not continued by a legacy completion either.
    let conversation = mock.conversations().into_keys().next().expect("a conversation");
    let (status, _, _) = post_json(
        &gw,
        "/v1/completions",
        &completion_body("chat", "Stateless", false),
        &[("x-dify-conversation-id", &conversation)],
    )
    .await;
    assert_eq!(status, 200);
    let sent = mock.generations().last().cloned().expect("sent");
    assert!(sent.body.get("conversation_id").is_none(), "{}", sent.body);
    store.flush().await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.conversations, 2, "only the two chat requests were recorded, never the completions");
}

#[tokio::test]
async fn what_no_dify_app_can_give_is_a_400_naming_the_field() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let with = |field: &str, value: Value| {
        let mut body = completion_body("completion", "Once upon a time", false);
        body[field] = value;
        body
    };
    for (body, param, words) in [
        (with("suffix", json!(" the end.")), "suffix", "insertion is not available"),
        (with("n", json!(2)), "n", "one answer per request"),
        (with("best_of", json!(3)), "best_of", "one answer per request"),
        (with("echo", json!(true)), "echo", "never repeats the prompt"),
        (with("logprobs", json!(2)), "logprobs", "log probabilities"),
        (with("prompt", json!(["one", "two"])), "prompt", "2 prompts"),
        (with("prompt", json!([15496, 11, 995])), "prompt", "token array"),
        (with("prompt", json!([[15496, 11]])), "prompt", "token array"),
    ] {
        let (status, _, answer) = post_json(&gw, "/v1/completions", &body, &[]).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = assert_openai_error(&answer);
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"], param, "{answer}");
        assert!(error["message"].as_str().is_some_and(|m| m.contains(words)), "{answer}");
    }
    // Accepted and ignored: the sampling fields, an empty suffix, n and best_of of 1.
    let mut fine = completion_body("completion", "Once", false);
    for (field, value) in [
        ("suffix", json!("")),
        ("n", json!(1)),
        ("best_of", json!(1)),
        ("echo", json!(false)),
        ("logprobs", Value::Null),
        ("top_p", json!(0.9)),
        ("stop", json!(["\n"])),
        ("seed", json!(7)),
    ] {
        fine[field] = value;
    }
    let (status, _, answer) = post_json(&gw, "/v1/completions", &fine, &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(mock.generations().len(), 1, "only the valid request reached Dify");
}
