//! Who may use the gateway: PROXY_API_KEYS on every `/v1/*` route (OpenAI's 401 otherwise),
//! the probes left open, DIFY_KEY_PASSTHROUGH carrying a client's own app key to Dify, and
//! CORS off unless CORS_ORIGINS allows an origin.

use std::time::Duration;

use crate::common::*;
use mock_dify::{MockApp, MockDify};
use serde_json::Value;

const KEYS: &str = "sk-alpha-0123456789,sk-beta-9876543210";

async fn get(gw: &Gateway, path: &str, auth: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client().get(gw.url(path));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

#[tokio::test]
async fn proxy_keys_guard_every_v1_route_with_openai_401s() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("PROXY_API_KEYS", KEYS)]).await;
    for (path, auth, code) in [
        ("/v1/models", None, 401),
        ("/v1/models", Some("Bearer sk-wrong"), 401),
        ("/v1/models", Some("sk-alpha-0123456789"), 401),
        ("/v1/models", Some("Basic sk-alpha-0123456789"), 401),
        ("/v1/models/chat", None, 401),
        ("/v1/not-a-route", None, 401),
        ("/v1/models", Some("Bearer sk-beta-9876543210"), 200),
        ("/v1/models", Some("bearer sk-alpha-0123456789"), 200),
    ] {
        let (status, headers, body) = get(&gw, path, auth).await;
        assert_eq!(status, code, "{path} {auth:?}: {body}");
        if code == 401 {
            let json: Value = serde_json::from_str(&body).expect("JSON 401");
            let error = assert_openai_error(&json);
            assert_eq!(error["code"], "invalid_api_key");
            assert_eq!(error["type"], "invalid_request_error");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert!(!body.contains("sk-wrong") && !body.contains("sk-alpha"), "the key is echoed: {body}");
        }
    }
    // Chat completions too, streaming or not; nothing reaches Dify without a key.
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "hi", false), &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "hi", true), &[("authorization", "Bearer nope")]).await;
    assert_eq!(status, 401);
    assert!(mock.generations().is_empty(), "an unauthenticated request reached Dify");

    let ok =
        stream_chat(&gw, &chat_body("chat", "let me in", true), &[("authorization", "Bearer sk-alpha-0123456789")])
            .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.content(), "Echo: let me in");
    assert_eq!(mock.generations()[0].key, "app-chat-key-0001", "the configured app key is used upstream");
    assert_eq!(gw.state.metrics.requests("chat", true, 200), 1);
}

#[tokio::test]
async fn health_ready_and_metrics_stay_open() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("PROXY_API_KEYS", KEYS)]).await;
    for path in ["/health", "/ready", "/metrics"] {
        let (status, _, body) = get(&gw, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, _, metrics) = get(&gw, "/metrics", None).await;
    assert!(metrics.contains("opendify_rejected_total{reason=\"unauthorized\"} 0"), "{metrics}");
    get(&gw, "/v1/models", None).await;
    let (_, _, metrics) = get(&gw, "/metrics", None).await;
    assert!(metrics.contains("opendify_rejected_total{reason=\"unauthorized\"} 1"), "{metrics}");
    assert!(!metrics.contains("sk-alpha") && !metrics.contains("app-chat-key"), "a secret in /metrics");
}

#[tokio::test]
async fn without_keys_the_gateway_is_open() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let (status, _, _) = get(&gw, "/v1/models", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&gw, "/v1/models", Some("Bearer anything")).await;
    assert_eq!(status, 200, "with no PROXY_API_KEYS any bearer (the SDKs always send one) is fine");
}

/// One app with two keys, as a Dify admin hands out per-user keys.
async fn mock_with_user_keys() -> MockDify {
    MockDify::start(vec![
        MockApp::new("app-chat-key-0001", "Chat Bot", "chat"),
        MockApp::new("app-user-anna-0042", "Chat Bot", "chat"),
    ])
    .await
    .expect("mock")
}

#[tokio::test]
async fn passthrough_sends_the_clients_own_app_key_to_dify() {
    let mock = mock_with_user_keys().await;
    let gw = gateway_with(
        &mock.base_url(),
        r#"{"chat":"app-chat-key-0001"}"#,
        &[("PROXY_API_KEYS", "sk-proxy-0123456789"), ("DIFY_KEY_PASSTHROUGH", "true")],
    )
    .await;
    let anna = [("authorization", "Bearer app-user-anna-0042")];
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "mine", false), &anna).await;
    assert_eq!(status, 200, "{body}");
    let streamed = stream_chat(&gw, &chat_body("chat", "mine too", true), &anna).await;
    assert_eq!(streamed.content(), "Echo: mine too");
    let (status, _, _) =
        post_chat(&gw, &chat_body("chat", "proxy", false), &[("authorization", "Bearer sk-proxy-0123456789")]).await;
    assert_eq!(status, 200);
    let keys: Vec<String> = mock.generations().iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, ["app-user-anna-0042", "app-user-anna-0042", "app-chat-key-0001"]);

    // A key Dify does not know is the client's 401, not a gateway misconfiguration (502).
    let (status, _, body) =
        post_chat(&gw, &chat_body("chat", "x", true), &[("authorization", "Bearer app-revoked-000000")]).await;
    assert_eq!(status, 401, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "invalid_api_key");
    assert!(!body.to_string().contains("app-revoked-000000"), "key echoed: {body}");
    // Not an app key and not a proxy key: refused before Dify.
    let (status, _, _) = post_chat(&gw, &chat_body("chat", "x", true), &[("authorization", "Bearer sk-nope")]).await;
    assert_eq!(status, 401);
    // (The mock records only requests whose key it accepted.)
    assert_eq!(mock.generations().len(), 3);
}

#[tokio::test]
async fn passthrough_stops_the_dify_task_with_the_clients_key() {
    let mock = mock_with_user_keys().await;
    let gw =
        gateway_with(&mock.base_url(), r#"{"chat":"app-chat-key-0001"}"#, &[("DIFY_KEY_PASSTHROUGH", "true")]).await;
    let mut response = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer app-user-anna-0042")
        .json(&chat_body("chat", "[[mock:hang]]", true))
        .send()
        .await
        .expect("send");
    let mut seen = String::new();
    while !seen.contains("Echo") {
        let chunk = response.chunk().await.expect("chunk").expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while mock.stops().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The mock accepts the stop only with a key of the app: the client's key went along.
    assert_eq!(mock.stops().len(), 1);
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("send");
    assert!(preflight.headers().get("access-control-allow-origin").is_none());
    let plain = client().get(gw.url("/v1/models")).header("origin", "https://chat.example").send().await.expect("get");
    assert!(plain.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_origins_allow_browser_clients_even_with_keys() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("CORS_ORIGINS", "https://chat.example"), ("PROXY_API_KEYS", KEYS)]).await;
    // A preflight carries no Authorization: it must be answered, not refused.
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .expect("send");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://chat.example");
    let allowed = client()
        .post(gw.url("/v1/chat/completions"))
        .header("origin", "https://chat.example")
        .header("authorization", "Bearer sk-beta-9876543210")
        .json(&chat_body("chat", "from a browser", false))
        .send()
        .await
        .expect("post");
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://chat.example");
    let exposed = allowed.headers()["access-control-expose-headers"].to_str().expect("ascii").to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let other = client().get(gw.url("/health")).header("origin", "https://evil.example").send().await.expect("get");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let any = gateway(&mock, &[("CORS_ORIGINS", "*")]).await;
    let response = client().get(any.url("/v1/models")).header("origin", "https://x.example").send().await.expect("x");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}
