//! The audio endpoints over real HTTP against the mock Dify: transcriptions answered from
//! Dify's `/audio-to-text` (as JSON or text, for the user opendify resolves, with the audio
//! relabelled to a MIME type current Dify accepts), speech relayed from `/text-to-audio`
//! with Dify's content type (OpenAI's voice names kept from Dify, custom ones passed), and
//! every refusal saying what to change: an app with the feature off, audio Dify does not
//! take, a format Dify cannot give.

use mock_dify::{MockApp, MockDify};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::common::*;

/// A few bytes that look like a WAV file (the mock counts them, it does not decode them).
fn audio_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
    bytes.resize(len, 0);
    bytes
}

fn form(model: &str, filename: &str, mime: &str, len: usize) -> Form {
    let part = Part::bytes(audio_bytes(len)).file_name(filename.to_string()).mime_str(mime).expect("mime");
    Form::new().text("model", model.to_string()).part("file", part)
}

async fn transcribe(gw: &Gateway, path: &str, form: Form, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(gw.url(path)).multipart(form);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("send")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn transcriptions(mock: &MockDify) -> Vec<Value> {
    mock.audio_requests().into_iter().filter(|r| r.path.ends_with("/audio-to-text")).map(|r| r.body).collect()
}

fn speeches(mock: &MockDify) -> Vec<Value> {
    mock.audio_requests().into_iter().filter(|r| r.path.ends_with("/text-to-audio")).map(|r| r.body).collect()
}

#[tokio::test]
async fn a_transcription_is_difys_text_as_json_or_text_for_the_resolved_user() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let alice = [("x-openwebui-user-id", "alice")];
    let response = transcribe(&gw, "/v1/audio/transcriptions", form("chat", "hello.mp3", "audio/mpeg", 1234), &alice)
        .await
        .error_for_status()
        .expect("200");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-opendify-user"], "alice");
    let (_, body) = json_of(response).await;
    assert_eq!(body, json!({"text": "transcript of 1234 bytes of hello.mp3"}));
    // Dify got the bytes as `audio/mp3` (it refuses `audio/mpeg`), for the same user.
    let sent = mock.audio_requests();
    assert_eq!(sent[0].key, "app-chat-key-0001");
    assert_eq!(
        sent[0].body,
        json!({"user": "alice", "filename": "hello.mp3", "content_type": "audio/mp3", "bytes": 1234})
    );

    let text_form = form("chat", "voice.wav", "application/octet-stream", 300).text("response_format", "text");
    let text_form = text_form.text("language", "en").text("temperature", "0");
    let response = transcribe(&gw, "/audio/transcriptions", text_form, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(response.text().await.expect("text"), "transcript of 300 bytes of voice.wav");
    let last = transcriptions(&mock).pop().expect("sent");
    assert_eq!((last["content_type"].as_str(), last["user"].as_str()), (Some("audio/wav"), Some("default_user")));

    let metrics = scrape_metrics(&gw).await;
    let series = "opendify_requests_total{model=\"chat\",status=\"200\",stream=\"false\"}";
    assert_eq!(metric(&metrics, series), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "opendify_upstream_in_flight"), Some(0.0));
}

#[tokio::test]
async fn what_dify_cannot_transcribe_or_answer_is_refused_naming_the_field() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    // webm: current Dify refuses it (415), and the client learns what to send instead.
    let response = transcribe(&gw, "/v1/audio/transcriptions", form("chat", "rec.webm", "audio/webm", 64), &[]).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["param"], "file");
    assert_eq!(error["code"], "unsupported_audio_type");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("send mp3, wav or m4a")), "{body}");
    assert_eq!(transcriptions(&mock)[0]["content_type"], "audio/webm");

    // Formats that need timestamps or segments Dify does not return; Dify is not asked.
    for format in ["verbose_json", "srt", "vtt", "diarized_json"] {
        let asked = form("chat", "a.mp3", "audio/mpeg", 10).text("response_format", format);
        let (status, body) = json_of(transcribe(&gw, "/v1/audio/transcriptions", asked, &[]).await).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(assert_openai_error(&body)["param"], "response_format", "{body}");
    }
    let no_file = Form::new().text("model", "chat");
    let (status, body) = json_of(transcribe(&gw, "/v1/audio/transcriptions", no_file, &[]).await).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("file")), "{body}");
    let response = client().post(gw.url("/v1/audio/transcriptions")).json(&json!({"model": "chat"})).send().await;
    let (status, body) = json_of(response.expect("send")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("multipart/form-data")), "{body}");
    let unknown = form("whisper-1", "a.mp3", "audio/mpeg", 10);
    let (status, body) = json_of(transcribe(&gw, "/v1/audio/transcriptions", unknown, &[]).await).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
    assert_eq!(transcriptions(&mock).len(), 1, "only the webm upload reached Dify");
}

#[tokio::test]
async fn an_app_with_speech_switched_off_is_a_400_naming_the_setting() {
    let quiet = MockApp::new("app-quiet-0001", "Quiet", "chat").speech_to_text(false).text_to_speech(false);
    // An app whose /parameters do not mention speech at all: opendify asks Dify, which refuses.
    let undescribed = MockApp::new("app-older-0002", "Older", "chat")
        .parameters(json!({"opening_statement": "", "user_input_form": [], "file_upload": {}}));
    let mock = MockDify::start(vec![quiet, undescribed]).await.expect("mock");
    let gw = gateway_with(&mock.base_url(), r#"{"quiet":"app-quiet-0001","older":"app-older-0002"}"#, &[]).await;
    for model in ["quiet", "older"] {
        let response = transcribe(&gw, "/v1/audio/transcriptions", form(model, "a.mp3", "audio/mpeg", 10), &[]).await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{body}");
        let error = assert_openai_error(&body);
        let setting = format!("enable Features > Speech to Text in the Dify app for model `{model}`");
        assert!(error["message"].as_str().is_some_and(|m| m.contains(&setting)), "{body}");
        assert_eq!(error["code"], "speech_to_text_disabled");

        let response = client()
            .post(gw.url("/v1/audio/speech"))
            .json(&json!({"model": model, "input": "hi", "voice": "alloy"}))
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{body}");
        let setting = format!("enable Features > Text to Speech in the Dify app for model `{model}`");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(&setting)), "{body}");
    }
    // The switched-off app was refused without asking Dify; the undescribed one by Dify.
    assert!(mock.audio_requests().iter().all(|r| r.key == "app-older-0002"), "{:?}", mock.audio_requests());
    assert_eq!(mock.audio_requests().len(), 2);
}

async fn speak(gw: &Gateway, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(gw.url("/v1/audio/speech")).json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("send")
}

#[tokio::test]
async fn speech_is_difys_audio_with_its_content_type_and_only_custom_voices_reach_dify() {
    let mock = mock().await;
    let gw = gateway(&mock, &[]).await;
    let bob = [("x-openwebui-user-id", "bob")];
    let body =
        json!({"model": "chat", "input": "Hello there", "voice": "alloy", "speed": 1.2, "instructions": "cheerful"});
    let response = speak(&gw, body, &bob).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    assert_eq!(response.headers()["x-opendify-user"], "bob");
    let audio = response.bytes().await.expect("audio");
    assert!(audio.starts_with(b"ID3") && audio.len() > 20, "{audio:?}");
    // OpenAI's default voice is not passed: the app's configured voice speaks.
    assert_eq!(speeches(&mock)[0], json!({"text": "Hello there", "user": "bob"}));

    let custom = json!({"model": "chat", "input": "Ni hao", "voice": "zh-CN-XiaoxiaoNeural"});
    assert_eq!(speak(&gw, custom, &[]).await.status(), 200);
    assert_eq!(speeches(&mock)[1], json!({"text": "Ni hao", "user": "default_user", "voice": "zh-CN-XiaoxiaoNeural"}));

    // wav asked for, mp3 given: opendify does not transcode, and says so before any audio.
    let wav = json!({"model": "chat", "input": "Hello", "voice": "alloy", "response_format": "wav"});
    let (status, body) = json_of(speak(&gw, wav, &[]).await).await;
    assert_eq!(status, 502, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["param"], "response_format");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("audio/mpeg") && m.contains("wav")), "{body}");
    // …and when Dify does speak wav, wav is fine.
    let real_wav = json!({"model": "chat", "input": "[[mock:wav]] Hello", "voice": "alloy", "response_format": "wav"});
    let response = speak(&gw, real_wav, &[]).await;
    assert_eq!(
        (response.status().as_u16(), response.headers()["content-type"].to_str().ok()),
        (200, Some("audio/wav"))
    );

    // Dify's `null` instead of audio is an error, never an empty 200.
    let null = json!({"model": "chat", "input": "[[mock:null]] Hello", "voice": "alloy"});
    let (status, body) = json_of(speak(&gw, null, &[]).await).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("answered `null`")), "{body}");

    let (status, body) = json_of(speak(&gw, json!({"model": "chat", "input": "", "voice": "alloy"}), &[]).await).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("input")), "{body}");

    // Counted by model, as a stream; its slot was given back when the audio ended.
    let metrics = scrape_metrics(&gw).await;
    let series = "opendify_requests_total{model=\"chat\",status=\"200\",stream=\"true\"}";
    assert_eq!(metric(&metrics, series), Some(3.0), "{metrics}");
    assert_eq!(metric(&metrics, "opendify_upstream_in_flight"), Some(0.0), "{metrics}");
    assert_eq!(metric(&metrics, "opendify_active_streams"), Some(0.0), "{metrics}");
}

/// Speech holds its upstream slot until its audio has been relayed, like a streamed answer:
/// with MAX_CONCURRENT_UPSTREAM=1, a request made while the audio is still coming is a 503.
#[tokio::test]
async fn speech_holds_its_upstream_slot_until_the_audio_ends() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("MAX_CONCURRENT_UPSTREAM", "1")]).await;
    let slow = json!({"model": "chat", "input": "[[mock:slow]] a long read", "voice": "alloy"});
    let response = speak(&gw, slow, &[]).await;
    assert_eq!(response.status(), 200, "the head came: the audio is still on its way");
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "meanwhile", false), &[]).await;
    assert_eq!(status, 503, "the only slot is the speech's: {body}");
    let audio = response.bytes().await.expect("audio");
    assert!(audio.starts_with(b"ID3") && audio.ends_with(b"d"), "the whole audio: {audio:?}");
    let (status, _, body) = post_chat(&gw, &chat_body("chat", "now", false), &[]).await;
    assert_eq!(status, 200, "the slot was given back: {body}");
}
