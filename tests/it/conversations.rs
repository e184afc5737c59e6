//! Conversation continuity over real HTTP: the mock Dify keeps conversations like Dify does
//! (per app and user, 404 for unknown ones), so it can tell which turns landed where.

use std::time::Duration;

use crate::common::*;
use mock_dify::MockDify;
use serde_json::{Value, json};

fn messages(turns: &[(&str, &str)]) -> Value {
    Value::Array(turns.iter().map(|(role, content)| json!({"role": role, "content": content})).collect())
}

/// Sends `turns` (ending with a user message) and returns the assistant's answer.
async fn ask(gw: &Gateway, model: &str, turns: &[(&str, &str)], headers: &[(&str, &str)], stream: bool) -> String {
    let body = json!({"model": model, "messages": messages(turns), "stream": stream});
    if stream {
        let result = stream_chat(gw, &body, headers).await;
        assert_eq!(result.status, 200, "{}", result.raw);
        assert!(result.error().is_none(), "{}", result.raw);
        result.content()
    } else {
        let (status, _, json) = post_chat(gw, &body, headers).await;
        assert_eq!(status, 200, "{json}");
        json["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
    }
}

/// Runs a three-turn chat the way OpenAI clients do: the whole history every time.
async fn three_turns(gw: &Gateway, model: &str, headers: &[(&str, &str)], tag: &str) -> Vec<String> {
    let q1 = format!("{tag} first");
    let q2 = format!("{tag} second");
    let q3 = format!("{tag} third");
    let a1 = ask(gw, model, &[("user", &q1)], headers, true).await;
    let a2 = ask(gw, model, &[("user", &q1), ("assistant", &a1), ("user", &q2)], headers, false).await;
    let a3 = ask(
        gw,
        model,
        &[("user", &q1), ("assistant", &a1), ("user", &q2), ("assistant", &a2), ("user", &q3)],
        headers,
        true,
    )
    .await;
    vec![a1, a2, a3]
}

fn conversations_with(mock: &MockDify, needle: &str) -> Vec<mock_dify::Conversation> {
    mock.conversations().into_values().filter(|c| c.queries.iter().any(|q| q.contains(needle))).collect()
}

#[tokio::test]
async fn openai_clients_without_headers_continue_one_conversation() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    three_turns(&gw, "chat", &[], "plain").await;
    let convs = conversations_with(&mock, "plain first");
    assert_eq!(convs.len(), 1, "all turns must land in one Dify conversation: {convs:?}");
    // Once the conversation exists, only the new message is sent: Dify has the memory.
    assert_eq!(convs[0].queries, ["plain first", "plain second", "plain third"]);
}

#[tokio::test]
async fn whitespace_differences_from_clients_do_not_break_continuity() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let a1 = ask(&gw, "chat", &[("user", "ws one")], &[], false).await;
    let resent = format!("  {}\n", a1.replace(' ', "  "));
    ask(&gw, "chat", &[("user", "ws one "), ("assistant", &resent), ("user", "ws two")], &[], false).await;
    assert_eq!(conversations_with(&mock, "ws one")[0].queries, ["ws one", "ws two"]);
}

#[tokio::test]
async fn regenerate_and_edit_start_a_new_seeded_conversation_instead_of_polluting() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let answers = three_turns(&gw, "chat", &[], "regen").await;
    // Regenerate the third answer: same history as the third turn.
    let history = [
        ("user", "regen first"),
        ("assistant", answers[0].as_str()),
        ("user", "regen second"),
        ("assistant", answers[1].as_str()),
        ("user", "regen third"),
    ];
    ask(&gw, "chat", &history, &[], true).await;
    // Edit the second question.
    ask(
        &gw,
        "chat",
        &[("user", "regen first"), ("assistant", &answers[0]), ("user", "regen second, edited")],
        &[],
        false,
    )
    .await;

    let original =
        conversations_with(&mock, "regen first").into_iter().find(|c| c.queries[0] == "regen first").expect("original");
    assert_eq!(original.queries, ["regen first", "regen second", "regen third"], "the old thread must stay clean");
    let all = mock.conversations();
    let seeded: Vec<_> = all.values().filter(|c| c.queries[0].starts_with("[Earlier conversation]")).collect();
    assert_eq!(seeded.len(), 2, "regenerate and edit each get a seeded conversation: {all:?}");
    assert!(seeded.iter().any(|c| c.queries[0].ends_with("[Current message]\nregen third")));
    assert!(seeded.iter().any(|c| c.queries[0].contains("User: regen first\nAssistant: Echo: regen first")));
}

#[tokio::test]
async fn open_webui_headers_key_conversations_by_app_user_and_chat() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let alice = [("X-OpenWebUI-User-Id", "alice"), ("X-OpenWebUI-Chat-Id", "chat-1")];
    three_turns(&gw, "chat", &alice, "owui").await;
    let convs = conversations_with(&mock, "owui first");
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].user, "alice");
    assert_eq!(convs[0].queries, ["owui first", "owui second", "owui third"]);

    // Same chat id, another user: never the same conversation.
    let bob = [("X-OpenWebUI-User-Id", "bob"), ("X-OpenWebUI-Chat-Id", "chat-1")];
    ask(&gw, "chat", &[("user", "bob first")], &bob, false).await;
    assert_eq!(conversations_with(&mock, "bob first")[0].user, "bob");
    // Same chat, another model (app): its own conversation, app A's id is never sent to B.
    ask(&gw, "chatflow", &[("user", "owui first"), ("assistant", "x"), ("user", "switched model")], &alice, false)
        .await;
    let switched = conversations_with(&mock, "switched model");
    assert_eq!(switched.len(), 1);
    assert_eq!(switched[0].app_key, "app-chatflow-0003");
    for request in mock.generations().iter().filter(|r| r.key == "app-chatflow-0003") {
        assert!(
            request.body.get("conversation_id").is_none(),
            "chat app's conversation sent to another app: {:?}",
            request.body
        );
    }
}

#[tokio::test]
async fn open_webui_background_tasks_stay_out_of_the_chat() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let headers = [("X-OpenWebUI-User-Id", "carol"), ("X-OpenWebUI-Chat-Id", "chat-t")];
    // Open WebUI sends the title task before the first turn.
    ask(&gw, "chat", &[("user", "### Task:\nGenerate a title for: hello")], &headers, false).await;
    let a1 = ask(&gw, "chat", &[("user", "task first")], &headers, true).await;
    ask(&gw, "chat", &[("user", "### Task:\nSuggest follow-ups")], &headers, false).await;
    ask(&gw, "chat", &[("user", "task first"), ("assistant", &a1), ("user", "task second")], &headers, true).await;
    let chat = conversations_with(&mock, "task first");
    assert_eq!(chat.len(), 1);
    assert_eq!(chat[0].queries, ["task first", "task second"]);
    let tasks: Vec<_> = mock
        .generations()
        .into_iter()
        .filter(|r| r.body["query"].as_str().is_some_and(|q| q.contains("### Task:")))
        .collect();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.body["conversation_id"].as_str().unwrap_or("").is_empty()), "each task on its own");
    // And its conversation is deleted (TASK_CONVERSATIONS=delete): the chat is all that is left.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !conversations_with(&mock, "### Task:").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.conversations().len(), 1, "{:?}", mock.conversations());
}

#[tokio::test]
async fn a_conversation_deleted_in_dify_heals_without_an_error() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let a1 = ask(&gw, "chat", &[("user", "heal first")], &[], false).await;
    let id =
        mock.conversations().into_iter().find(|(_, c)| c.queries == ["heal first"]).map(|(id, _)| id).expect("conv");
    mock.delete_conversation(&id);
    let a2 = ask(&gw, "chat", &[("user", "heal first"), ("assistant", &a1), ("user", "heal second")], &[], true).await;
    assert!(a2.contains("heal second"));
    let healed = conversations_with(&mock, "heal second");
    assert_eq!(healed.len(), 1);
    assert!(healed[0].queries[0].contains("[Earlier conversation]\nUser: heal first"), "seeded with the history");
    // The conversation after healing continues normally.
    let a3_history = [
        ("user", "heal first"),
        ("assistant", a1.as_str()),
        ("user", "heal second"),
        ("assistant", a2.as_str()),
        ("user", "heal third"),
    ];
    ask(&gw, "chat", &a3_history, &[], false).await;
    assert_eq!(conversations_with(&mock, "heal third")[0].queries.len(), 2);
}

#[tokio::test]
async fn an_explicit_conversation_id_is_used_as_is() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    ask(&gw, "chat", &[("user", "explicit first")], &[("x-openwebui-user-id", "dave")], false).await;
    let id = conversations_with(&mock, "explicit first")[0].clone();
    let conv_id = mock.conversations().into_iter().find(|(_, c)| c.queries == id.queries).map(|(k, _)| k).expect("id");
    ask(
        &gw,
        "chat",
        &[("user", "explicit second")],
        &[("x-openwebui-user-id", "dave"), ("X-Dify-Conversation-Id", &conv_id)],
        false,
    )
    .await;
    assert_eq!(mock.conversations()[&conv_id].queries, ["explicit first", "explicit second"]);
}

#[tokio::test]
async fn conversations_survive_a_restart_with_sqlite() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data").join("conversations.db");
    let db = db.to_str().expect("utf8 path");
    let answers = {
        let gw = gateway(&mock, &[("CONVERSATION_STORE", db)]).await;
        let a1 = ask(&gw, "chat", &[("user", "restart first")], &[], false).await;
        let a2 =
            ask(&gw, "chat", &[("user", "restart first"), ("assistant", &a1), ("user", "restart second")], &[], false)
                .await;
        // A conversation of one question: its opening turn is all the store writes of it.
        let lone = ask(&gw, "chat", &[("user", "lone first")], &[], false).await;
        vec![a1, a2, lone]
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gw = gateway(&mock, &[("CONVERSATION_STORE", db)]).await;
    let history = [
        ("user", "restart first"),
        ("assistant", answers[0].as_str()),
        ("user", "restart second"),
        ("assistant", answers[1].as_str()),
        ("user", "restart third"),
    ];
    ask(&gw, "chat", &history, &[], true).await;
    assert_eq!(
        conversations_with(&mock, "restart first")[0].queries,
        ["restart first", "restart second", "restart third"]
    );
    ask(
        &gw,
        "chat",
        &[("user", "lone first"), ("assistant", answers[2].as_str()), ("user", "lone second")],
        &[],
        false,
    )
    .await;
    assert_eq!(conversations_with(&mock, "lone first")[0].queries, ["lone first", "lone second"]);
}

#[tokio::test]
async fn the_original_proxys_mapping_file_is_imported() {
    let mock = mock().await;
    // A conversation that the original proxy had mapped to Open WebUI chat "legacy-chat".
    let first = {
        let gw = gateway(&mock, &[]).await;
        ask(&gw, "chat", &[("user", "legacy first")], &[("x-openwebui-user-id", "erin")], false).await
    };
    let conv_id =
        mock.conversations().into_iter().find(|(_, c)| c.queries == ["legacy first"]).map(|(k, _)| k).expect("conv");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("conversation_mappings.json"), json!({"legacy-chat": conv_id}).to_string())
        .expect("write");
    let db = dir.path().join("conversations.db");
    let gw = gateway(&mock, &[("CONVERSATION_STORE", db.to_str().expect("utf8"))]).await;
    let headers = [("x-openwebui-user-id", "erin"), ("x-openwebui-chat-id", "legacy-chat")];
    ask(&gw, "chat", &[("user", "legacy first"), ("assistant", &first), ("user", "legacy second")], &headers, false)
        .await;
    assert_eq!(mock.conversations()[&conv_id].queries, ["legacy first", "legacy second"]);
    assert!(dir.path().join("conversation_mappings.json").exists(), "the original file is left in place");
}

#[tokio::test]
async fn two_hundred_concurrent_chats_lose_no_mapping() {
    let mock = mock().await;
    let gw = std::sync::Arc::new(gateway(&mock, &[]).await);
    let run = |second: bool| {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let gw = gw.clone();
                tokio::spawn(async move {
                    let q1 = format!("load {i} first");
                    let headers = [
                        ("x-openwebui-user-id", format!("user-{}", i % 7)),
                        ("x-openwebui-chat-id", format!("chat-{i}")),
                    ];
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    if second {
                        let a1 = format!("Echo: {q1}");
                        ask(
                            &gw,
                            "chat",
                            &[("user", &q1), ("assistant", &a1), ("user", &format!("load {i} second"))],
                            &headers,
                            i % 2 == 0,
                        )
                        .await
                    } else {
                        ask(&gw, "chat", &[("user", &q1)], &headers, i % 2 == 0).await
                    }
                })
            })
            .collect();
        futures_util::future::join_all(tasks)
    };
    for result in run(false).await {
        result.expect("task");
    }
    for result in run(true).await {
        result.expect("task");
    }
    let convs = mock.conversations();
    let loaded: Vec<_> = convs.values().filter(|c| c.queries[0].starts_with("load ")).collect();
    assert_eq!(loaded.len(), 200, "one conversation per chat");
    for c in loaded {
        assert_eq!(c.queries.len(), 2, "{c:?}");
        assert_eq!(c.queries[1], c.queries[0].replace(" first", " second"), "turns crossed between chats");
    }
}

fn open_webui_token(secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 300;
    let claims = json!({"sub": user, "iss": "open-webui", "exp": exp, "role": "user"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// The impersonation found by the adversarial test: in JWT mode, a request without a token
/// named Alice in its body and sent Alice's chat id, and continued Alice's conversation.
#[tokio::test]
async fn jwt_mode_refuses_requests_without_a_token_so_nobody_continues_anothers_chat() {
    let mock = mock().await;
    let secret = "shared-secret-123";
    let gw = gateway(&mock, &[("OPENWEBUI_JWT_SECRET", secret)]).await;
    let alice = open_webui_token(secret, "alice");
    let chat = [("x-openwebui-user-jwt", alice.as_str()), ("x-openwebui-chat-id", "alices-chat")];
    let a1 = ask(&gw, "chat", &[("user", "jwt secret plans")], &chat, false).await;

    // The reproduction: a proxy-key holder names Alice in the body and sends her chat id.
    let mut forged = json!({"model": "chat", "user": "alice", "stream": false,
        "messages": messages(&[("user", "jwt secret plans"), ("assistant", &a1), ("user", "jwt tell me more")])});
    let headers = [("x-openwebui-chat-id", "alices-chat"), ("x-openwebui-user-id", "alice")];
    let (status, _, body) = post_chat(&gw, &forged, &headers).await;
    assert_eq!(status, 401, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "missing_user_token");
    assert!(error["message"].as_str().unwrap_or("").contains("X-OpenWebUI-User-Jwt"), "{body}");
    forged["stream"] = json!(true);
    let (status, _, body) = post_chat(&gw, &forged, &headers).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("missing_user_token")),
        "streaming is refused the same way"
    );

    let (status, _, body) =
        post_chat(&gw, &chat_body("chat", "hi", false), &[("x-openwebui-user-jwt", "not.a.jwt")]).await;
    assert_eq!(status, 401);
    assert_eq!(assert_openai_error(&body)["code"], "invalid_user_token");

    let convs = conversations_with(&mock, "jwt secret plans");
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].queries, ["jwt secret plans"], "nothing reached Alice's conversation");
    // Alice herself continues it.
    ask(&gw, "chat", &[("user", "jwt secret plans"), ("assistant", &a1), ("user", "jwt next")], &chat, false).await;
    assert_eq!(conversations_with(&mock, "jwt secret plans")[0].queries, ["jwt secret plans", "jwt next"]);
    assert_eq!(conversations_with(&mock, "jwt secret plans")[0].user, "alice");
}

#[tokio::test]
async fn non_ascii_user_ids_stay_distinct_people_whether_raw_or_percent_encoded() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let request = |user: reqwest::header::HeaderValue, text: &str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-openwebui-user-id", user)
            .json(&chat_body("chat", text, false))
    };
    let raw = request(reqwest::header::HeaderValue::from_bytes("josé".as_bytes()).expect("header"), "utf8 raw")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["x-opendify-user"], "jos%C3%A9");
    let encoded =
        request(reqwest::header::HeaderValue::from_static("jos%C3%A9"), "utf8 encoded").send().await.expect("send");
    assert_eq!(encoded.headers()["x-opendify-user"], "jos%C3%A9");
    let other =
        request(reqwest::header::HeaderValue::from_static("jos%C3%AB"), "utf8 other").send().await.expect("send");
    assert_eq!(other.headers()["x-opendify-user"], "jos%C3%AB");
    let users: Vec<String> = ["utf8 raw", "utf8 encoded", "utf8 other"]
        .iter()
        .map(|q| conversations_with(&mock, q)[0].user.clone())
        .collect();
    assert_eq!(users, ["josé", "josé", "josë"], "never default_user, never merged");

    let latin1 = request(reqwest::header::HeaderValue::from_bytes(b"jos\xe9").expect("header"), "utf8 bad")
        .send()
        .await
        .expect("send");
    assert_eq!(latin1.status(), 400);
    let body: Value = latin1.json().await.expect("json");
    assert_eq!(assert_openai_error(&body)["param"], "x-openwebui-user-id");
    assert!(conversations_with(&mock, "utf8 bad").is_empty(), "a refused request never reaches Dify");
}

#[tokio::test]
async fn two_instances_sharing_redis_continue_each_others_conversations() {
    let Some(redis) = start_redis() else { return };
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let mock = mock().await;
    let a = gateway(&mock, &[("CONVERSATION_STORE", &url)]).await;
    let b = gateway(&mock, &[("CONVERSATION_STORE", &url)]).await;
    let h = [("x-openwebui-user-id", "frank"), ("x-openwebui-chat-id", "shared")];
    let a1 = ask(&a, "chat", &[("user", "redis first")], &h, true).await;
    let a2 = ask(&b, "chat", &[("user", "redis first"), ("assistant", &a1), ("user", "redis second")], &h, false).await;
    ask(
        &a,
        "chat",
        &[
            ("user", "redis first"),
            ("assistant", &a1),
            ("user", "redis second"),
            ("assistant", &a2),
            ("user", "redis third"),
        ],
        &[("x-openwebui-user-id", "frank")],
        true,
    )
    .await;
    assert_eq!(conversations_with(&mock, "redis first")[0].queries, ["redis first", "redis second", "redis third"]);
    // Either instance counts the one shared conversation for /metrics.
    let metrics = client().get(b.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    let mappings = metrics.lines().find_map(|l| l.strip_prefix("opendify_conversation_mappings ")).map(str::trim);
    assert_eq!(mappings, Some("1"), "{metrics}");

    // Redis goes away while serving: answers continue, statelessly, never a 500.
    drop(redis);
    let (status, _, body) = post_chat(&a, &chat_body("chat", "during outage", false), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Echo: during outage");
}

#[tokio::test]
async fn an_unreachable_redis_at_startup_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = dir.path().join("empty.env");
    std::fs::write(&env, "").expect("write");
    let options = opendify::config::LoadOptions {
        env_file: Some(env),
        overrides: vec![
            ("DIFY_API_BASE", "http://127.0.0.1:9/v1".into()),
            ("MODEL_CONFIG", r#"{"m":"app-abcdefghijkl"}"#.into()),
            ("CONVERSATION_STORE", format!("redis://:hunter2@127.0.0.1:{port}/0")),
        ],
        ignore_process_env: true,
    };
    let loaded = opendify::config::load(&options);
    let err = opendify::server::AppState::build(loaded, options).await.err().expect("must fail").to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("hint:"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

/// A double submit: the same next turn sent twice at once. One request continues the
/// conversation; the other, finding it moved on once it gets the conversation's lock, starts a
/// new one seeded with the history: the Dify thread never gets the question twice.
#[tokio::test]
async fn the_same_turn_sent_twice_at_once_is_appended_once() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let first = ask(&gw, "chat", &[("user", "twice first")], &[], false).await;
    let second = "[[mock:slow]] twice second";
    let history = [("user", "twice first"), ("assistant", first.as_str()), ("user", second)];
    let (a, b) = tokio::join!(ask(&gw, "chat", &history, &[], false), ask(&gw, "chat", &history, &[], false));
    assert!(!a.is_empty() && !b.is_empty());
    let original: Vec<_> =
        mock.conversations().into_values().filter(|c| c.queries.first().is_some_and(|q| q == "twice first")).collect();
    assert_eq!(original.len(), 1, "{original:?}");
    assert_eq!(original[0].queries.len(), 2, "the turn was appended twice: {:?}", original[0].queries);
    assert_eq!(conversations_with(&mock, "twice second").len(), 2, "the duplicate starts its own conversation");
}

/// Several instances on one Redis answer one conversation one turn at a time: a lease in
/// Redis, held while the answer streams, serialises them (the in-process lock alone let two
/// instances append at the same moment). Every turn lands, none overlaps another.
#[tokio::test]
async fn two_instances_on_one_redis_answer_a_conversation_one_turn_at_a_time() {
    let Some(redis) = start_redis() else { return };
    let mock = mock().await;
    let a = gateway(&mock, &[("CONVERSATION_STORE", &redis.url())]).await;
    let b = gateway(&mock, &[("CONVERSATION_STORE", &redis.url())]).await;
    let user = [("x-openwebui-user-id", "lease-user")];
    ask(&a, "chat", &[("user", "lease start")], &user, false).await;
    let id = conversations_with(&mock, "lease start")[0].clone();
    let conversation_id = mock
        .conversations()
        .into_iter()
        .find(|(_, c)| c.queries == id.queries)
        .map(|(id, _)| id)
        .expect("conversation id");
    // Eight turns at once, half on each instance; each answer takes a few hundred ms.
    let turns = (0..8).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        let conversation_id = conversation_id.clone();
        async move {
            let body = chat_body("chat", &format!("[[mock:slow]] lease turn {i}"), i % 4 == 0);
            let headers = [("x-openwebui-user-id", "lease-user"), ("x-dify-conversation-id", conversation_id.as_str())];
            if i % 4 == 0 {
                let result = stream_chat(gw, &body, &headers).await;
                assert!(result.done && result.error().is_none(), "{}", result.raw);
            } else {
                let (status, _, json) = post_chat(gw, &body, &headers).await;
                assert_eq!(status, 200, "{json}");
            }
        }
    });
    futures_util::future::join_all(turns).await;
    let conversation = mock.conversations().remove(&conversation_id).expect("conversation");
    assert_eq!(conversation.queries.len(), 9, "every turn lands: {:?}", conversation.queries);
    assert_eq!(conversation.overlaps, 0, "two turns of one conversation were answered at once");
}
