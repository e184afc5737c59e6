//! Every Dify app mode and event type, streaming and not, through the OpenAI shapes.

use crate::common::*;
use mock_dify::{MockApp, MockDify};
use serde_json::json;

#[tokio::test]
async fn every_mode_answers_streaming_and_not_with_the_answer_exactly_once() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for model in ["chat", "agent-chat", "chatflow", "agent", "completion", "workflow"] {
        let question = format!("mode test {model}");
        let expected = format!("Echo: {question}");
        let result = stream_chat(&gw, &chat_body(model, &question, true), &[]).await;
        assert_eq!(result.status, 200, "{model}: {}", result.raw);
        assert!(result.error().is_none(), "{model}: {}", result.raw);
        assert_eq!(result.content(), expected, "{model} streaming");
        assert_eq!(result.finish_reason().as_deref(), Some("stop"), "{model}");
        assert!(result.done, "{model}");

        let (status, _, body) = post_chat(&gw, &chat_body(model, &question, false), &[]).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], expected.as_str(), "{model} non-streaming");
        assert!(body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0, "{model}: usage missing: {body}");
    }
    // Each mode went to its own endpoint, with its own shape.
    let sent = mock.generations();
    let path_of = |key: &str| sent.iter().find(|r| r.key == key).map(|r| r.path.clone()).unwrap_or_default();
    assert_eq!(path_of("app-complete-0005"), "/v1/completion-messages");
    assert_eq!(path_of("app-workflow-0006"), "/v1/workflows/run");
    assert_eq!(path_of("app-newagent-0004"), "/v1/chat-messages");
    let workflow = sent.iter().find(|r| r.key == "app-workflow-0006").expect("workflow request");
    // The workflow's only required paragraph input receives the message.
    assert_eq!(workflow.body["inputs"]["question"], "mode test workflow");
    assert!(workflow.body.get("query").is_none());
}

#[tokio::test]
async fn agent_thoughts_are_progress_not_answer_text() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("REASONING_PROGRESS", "true")]).await;
    let result = stream_chat(&gw, &chat_body("agent-chat", "use a tool", true), &[]).await;
    assert_eq!(result.content(), "Echo: use a tool", "agent_thought.thought must not be appended");
    let reasoning = result.reasoning();
    assert!(
        reasoning.contains("calculator") && reasoning.contains("→ 2"),
        "tool use shown as reasoning: {reasoning:?}"
    );
    let quiet = gateway(&mock, &[]).await;
    let result = stream_chat(&quiet, &chat_body("agent-chat", "use a tool", true), &[]).await;
    assert_eq!(result.reasoning(), "", "progress is off by default");
}

#[tokio::test]
async fn inline_reasoning_follows_reasoning_mode() {
    let mock = mock().await;
    let cases = [
        ("reasoning", "Echo: [[mock:think]]", "Let me think about it."),
        ("think", "<think>Let me think about it.</think>\n\nEcho: [[mock:think]]", ""),
        ("strip", "Echo: [[mock:think]]", ""),
    ];
    for (mode, content, reasoning) in cases {
        let gw = gateway(&mock, &[("REASONING_MODE", mode)]).await;
        let result = stream_chat(&gw, &chat_body("chat", "[[mock:think]]", true), &[]).await;
        assert_eq!(result.content(), content, "{mode} stream");
        assert_eq!(result.reasoning(), reasoning, "{mode} stream");
        let (_, _, body) = post_chat(&gw, &chat_body("chat", "[[mock:think]]", false), &[]).await;
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], content, "{mode} non-stream");
        assert_eq!(message["reasoning_content"].as_str().unwrap_or(""), reasoning, "{mode} non-stream");
    }
}

#[tokio::test]
async fn moderation_replacement_ends_with_content_filter() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let result = stream_chat(&gw, &chat_body("chat", "[[mock:replace]]", true), &[]).await;
    assert_eq!(result.finish_reason().as_deref(), Some("content_filter"));
    assert!(result.content().ends_with("\n\nThis answer was withheld by moderation."), "{}", result.content());
    let (_, _, body) = post_chat(&gw, &chat_body("chat", "[[mock:replace]]", false), &[]).await;
    assert_eq!(body["choices"][0]["message"]["content"], "This answer was withheld by moderation.");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn files_from_dify_become_markdown_images() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (_, _, body) = post_chat(&gw, &chat_body("chat", "[[mock:file]]", false), &[]).await;
    let content = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(content.contains("![image](https://files.example/cat.png)"), "{content}");
}

#[tokio::test]
async fn workflow_failures_become_openai_errors_with_difys_message() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    for model in ["workflow", "chatflow"] {
        let (status, _, body) = post_chat(&gw, &chat_body(model, "[[mock:fail]]", false), &[]).await;
        assert_eq!(status, 502, "{model}: {body}");
        let message = assert_openai_error(&body)["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("model quota exceeded"), "{model}: {message}");
        let result = stream_chat(&gw, &chat_body(model, "[[mock:fail]]", true), &[]).await;
        assert!(result.error().is_some() && result.done, "{model}: {}", result.raw);
        assert_eq!(result.finish_reason(), None);
    }
}

#[tokio::test]
async fn data_url_images_are_uploaded_and_https_images_passed_as_urls() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": png}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]}]});
    let headers = [("x-openwebui-user-id", "uploader")];
    let (status, _, answer) = post_chat(&gw, &body, &headers).await;
    assert_eq!(status, 200, "{answer}");
    let uploads = mock.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].0, "uploader", "uploads are scoped to the same user");
    assert_eq!(uploads[0].1, "image.png");
    let sent = mock.generations();
    let files = &sent[0].body["files"];
    assert_eq!(files[0]["transfer_method"], "local_file");
    assert!(files[0]["upload_file_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        files[1],
        json!({"type": "image", "transfer_method": "remote_url", "url": "https://example.com/cat.png"})
    );
    assert_eq!(sent[0].body["query"], "what is this?");

    // The same image again is not uploaded twice.
    post_chat(&gw, &body, &headers).await;
    assert_eq!(mock.uploads().len(), 1);

    // Bad base64 is a 400 naming the part.
    let bad = json!({"model": "chat", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]});
    let (status, _, error) = post_chat(&gw, &bad, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(assert_openai_error(&error)["param"], "messages[0].content[0]");
}

#[tokio::test]
async fn files_sent_to_an_app_without_file_upload_get_a_clear_400() {
    let no_upload = MockApp::new("app-noupload-001", "Plain", "chat")
        .parameters(json!({"user_input_form": [], "file_upload": {"image": {"enabled": false}}}));
    let mock = MockDify::start(vec![no_upload]).await.expect("mock");
    let gw = gateway_with(&mock.base_url(), r#"{"plain":"app-noupload-001"}"#, &[]).await;
    let body = json!({"model": "plain", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let (status, _, error) = post_chat(&gw, &body, &[]).await;
    assert_eq!(status, 400);
    assert!(assert_openai_error(&error)["message"].as_str().unwrap_or("").contains("file upload is switched off"));
}

#[tokio::test]
async fn system_prompt_goes_to_the_configured_input_or_is_framed_into_the_query() {
    let mock = mock().await;
    let body = json!({"model": "chat", "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]});
    let gw = gateway(&mock, &[]).await;
    post_chat(&gw, &body, &[]).await;
    let gw = gateway(&mock, &[("SYSTEM_INPUT", "persona")]).await;
    let mut with_inputs = body.clone();
    with_inputs["inputs"] = json!({"city": "Paris"});
    post_chat(&gw, &with_inputs, &[]).await;
    let sent = mock.generations();
    assert_eq!(sent[0].body["query"], "[System instructions]\nAnswer in French.\n\n[Current message]\nHello");
    assert_eq!(sent[1].body["query"], "Hello");
    assert_eq!(sent[1].body["inputs"], json!({"city": "Paris", "persona": "Answer in French."}));
}

#[tokio::test]
async fn models_can_come_from_dify_api_keys_named_by_their_apps() {
    let mock = MockDify::start(vec![
        MockApp::new("app-aaaaaaaaaaaa", "Support Bot", "chat"),
        MockApp::new("app-bbbbbbbbbbbb", "Support Bot", "workflow"),
    ])
    .await
    .expect("mock");
    let gw = gateway_with(&mock.base_url(), "", &[("DIFY_API_KEYS", "app-aaaaaaaaaaaa,app-bbbbbbbbbbbb")]).await;
    let list: serde_json::Value = client().get(gw.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["Support Bot", "Support Bot-2"]);
    let (status, _, body) = post_chat(&gw, &chat_body("Support Bot-2", "routed", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.generations()[0].path, "/v1/workflows/run", "mode learned from /info");
}

#[tokio::test]
async fn an_unreachable_dify_at_startup_is_a_warning_and_mode_overrides_apply() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let models = r#"{"flow":{"key":"app-cccccccccccc","mode":"workflow","input":"topic","output":"summary"}}"#;
    let gw = gateway_with(&format!("http://127.0.0.1:{port}/v1"), models, &[]).await;
    let route = gw.state.live().registry.get("flow").expect("model still listed");
    assert_eq!(route.mode.as_str(), "workflow");
    assert_eq!(route.input.as_deref(), Some("topic"));
    assert!(route.discovery_error.is_some());
    let (status, _, _) = post_chat(&gw, &chat_body("flow", "x", false), &[]).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn file_and_audio_parts_are_uploaded_with_their_names_and_types() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK", "filename": "report.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "SUQzBAAAAAAA", "format": "mp3"}}
    ]}]});
    let (status, _, answer) = post_chat(&gw, &body, &[]).await;
    assert_eq!(status, 200, "{answer}");
    let names: Vec<String> = mock.uploads().into_iter().map(|(_, name, _)| name).collect();
    assert_eq!(names, ["report.pdf", "audio.mp3"]);
    let files = &mock.generations()[0].body["files"];
    assert_eq!(files[0]["type"], "document");
    assert_eq!(files[1]["type"], "audio");
    assert!(files.as_array().is_some_and(|f| f.iter().all(|f| f["transfer_method"] == "local_file")));
}
