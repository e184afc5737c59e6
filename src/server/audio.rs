//! `POST /v1/audio/transcriptions` and `POST /v1/audio/speech` (and both without `/v1`):
//! the audio codec (`api::audio`) around Dify's `/audio-to-text` and `/text-to-audio` of the
//! model's app, as the same Dify user opendify resolves for any request. Like generations,
//! they hold an upstream slot (speech until its audio has been relayed) and are counted by
//! model. The app's speech switches are checked before Dify is called, and Dify's own
//! refusals become errors that say which setting or file to change.

use std::time::Instant;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt;

use super::SharedState;
use super::auth::ClientAppKey;
use super::chat::{rejected, with_content_type_hint};
use super::exchange::{ClientRoute, client_key_refused, echo_encoded};
use super::gate::Generation;
use super::gate::{GenerationLabels, USER_HEADER, UpstreamTime};
use crate::api::Dialect;
use crate::api::audio::{self, FormPart, SpeechFormat};
use crate::bridge::{ApiError, AppRoute, ErrorType};
use crate::dify::{AppParameters, DifyError, TextToAudioRequest};
use crate::logging::Shown;

const DIALECT: Dialect = Dialect::OpenAi;

pub async fn transcriptions(
    State(state): State<SharedState>,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let generation = match Generation::start(&state, DIALECT) {
        Ok(generation) => generation,
        Err(refused) => return refused,
    };
    let response = transcriptions_answer(&state, client_key, headers, form).await;
    generation.finish(&state, response)
}

async fn transcriptions_answer(
    state: &SharedState,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let form = match form {
        Ok(form) => form,
        Err(rejection) => return rejected(DIALECT, not_a_form(&rejection.body_text())),
    };
    let parts = match read_form(form).await {
        Ok(parts) => parts,
        Err(error) => return rejected(DIALECT, error),
    };
    let request = match audio::parse_transcription(parts) {
        Ok(request) => request,
        Err(error) => return rejected(DIALECT, error),
    };
    let live = state.live();
    let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
    let ClientRoute { route, passthrough } = match ClientRoute::find(&live, &request.model, client_key).await {
        Ok(found) => found,
        Err(error) => return rejected(DIALECT, error),
    };
    let user = match live.identity.resolve(&headers, None) {
        Ok(identity) => identity.user,
        Err(error) => return labelled(rejected(DIALECT, error), &route, None, false),
    };
    if let Err(error) = Feature::SpeechToText.check(&route) {
        return labelled(rejected(DIALECT, error), &route, Some(&user), false);
    }
    let size = request.audio.len();
    let asked = Instant::now();
    let answer =
        live.client.audio_to_text(&route.key, &user, &request.filename, &request.mime, request.audio.clone()).await;
    let waited = asked.elapsed();
    let mut response = match answer {
        Ok(transcript) => {
            tracing::info!(
                model = %Shown(&route.name),
                user = %Shown(&user),
                bytes = size,
                mime = %request.mime,
                latency_ms = waited.as_secs_f64() * 1000.0,
                "👤 {} ✅ transcribed",
                Shown(&user)
            );
            audio::transcript_response(request.format, &transcript.text)
        }
        Err(DifyError::Unauthorized { .. }) if passthrough => DIALECT.error_response(&client_key_refused()),
        Err(error) => {
            state.metrics.upstream_error(error.kind());
            tracing::warn!(model = %Shown(&route.name), kind = %error.kind(), "❌ Dify API error: {error}");
            DIALECT.error_response(&refusal(&error, &route.name, Feature::SpeechToText, Some(&request.mime)))
        }
    };
    response.extensions_mut().insert(UpstreamTime(waited));
    labelled(response, &route, Some(&user), false)
}

pub async fn speech(
    State(state): State<SharedState>,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let generation = match Generation::start(&state, DIALECT) {
        Ok(generation) => generation,
        Err(refused) => return refused,
    };
    let response = speech_answer(&state, client_key, headers, body).await;
    generation.finish(&state, response)
}

async fn speech_answer(
    state: &SharedState,
    client_key: Option<Extension<ClientAppKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let speech = match audio::parse_speech(&body) {
        Ok(speech) => speech,
        Err(error) => return rejected(DIALECT, with_content_type_hint(error, &headers)),
    };
    let live = state.live();
    let client_key = client_key.map(|Extension(ClientAppKey(key))| key);
    let ClientRoute { route, passthrough } = match ClientRoute::find(&live, &speech.model, client_key).await {
        Ok(found) => found,
        Err(error) => return rejected(DIALECT, error),
    };
    let user = match live.identity.resolve(&headers, None) {
        Ok(identity) => identity.user,
        Err(error) => return labelled(rejected(DIALECT, error), &route, None, true),
    };
    if let Err(error) = Feature::TextToSpeech.check(&route) {
        return labelled(rejected(DIALECT, error), &route, Some(&user), true);
    }
    let request = TextToAudioRequest { text: speech.input, user: user.clone(), voice: speech.voice };
    let audio = match live.client.text_to_audio(&route.key, &request).await {
        Ok(audio) => audio,
        Err(DifyError::Unauthorized { .. }) if passthrough => {
            return labelled(DIALECT.error_response(&client_key_refused()), &route, Some(&user), true);
        }
        Err(error) => {
            state.metrics.upstream_error(error.kind());
            tracing::warn!(model = %Shown(&route.name), kind = %error.kind(), "❌ Dify API error: {error}");
            let error = refusal(&error, &route.name, Feature::TextToSpeech, None);
            return labelled(DIALECT.error_response(&error), &route, Some(&user), true);
        }
    };
    if !speech.format.accepts(&audio.content_type) {
        let error = format_mismatch(&route.name, speech.format, &audio.content_type);
        tracing::warn!(model = %Shown(&route.name), "❌ {}", error.message);
        return labelled(DIALECT.error_response(&error), &route, Some(&user), true);
    }
    tracing::info!(
        model = %Shown(&route.name),
        user = %Shown(&user),
        content_type = %Shown(&audio.content_type),
        "👤 {} ✅ speech from Dify, relaying",
        Shown(&user)
    );
    let model = route.name.clone();
    let relayed = audio.body.inspect_err(move |error| {
        tracing::warn!(model = %Shown(&model), "❌ Dify's audio broke off: {error}");
    });
    let mut response = Response::new(Body::from_stream(relayed));
    let content_type =
        HeaderValue::from_str(&audio.content_type).unwrap_or_else(|_| HeaderValue::from_static("audio/mpeg"));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    labelled(response, &route, Some(&user), true)
}

/// Every field of the form, read whole (the gate has bounded the body by MAX_BODY_MB).
async fn read_form(mut form: Multipart) -> Result<Vec<FormPart>, ApiError> {
    let mut parts = Vec::new();
    while let Some(field) = form.next_field().await.map_err(broken_form)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(str::to_string);
        let data = field.bytes().await.map_err(broken_form)?;
        parts.push(FormPart { name, filename, content_type, data });
    }
    Ok(parts)
}

fn not_a_form(why: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "Send the audio as multipart/form-data with the file in `file` and the model in `model` ({why})"
    ))
    .param("file")
}

fn broken_form(error: MultipartError) -> ApiError {
    ApiError::invalid_request(format!("The multipart form could not be read: {}", error.body_text())).param("file")
}

/// The headers every audio answer carries: who the user was, and the labels for the metrics.
fn labelled(mut response: Response, route: &AppRoute, user: Option<&str>, stream: bool) -> Response {
    if let Some(value) = user.and_then(|u| HeaderValue::from_str(&echo_encoded(u)).ok()) {
        response.headers_mut().insert(USER_HEADER, value);
    }
    response.extensions_mut().insert(GenerationLabels { model: Some(route.name.clone()), stream });
    response
}

/// A Dify app's speech switch (Features in the app's editor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feature {
    SpeechToText,
    TextToSpeech,
}

impl Feature {
    fn setting(self) -> &'static str {
        match self {
            Feature::SpeechToText => "Speech to Text",
            Feature::TextToSpeech => "Text to Speech",
        }
    }

    fn enabled(self, parameters: &AppParameters) -> Option<bool> {
        match self {
            Feature::SpeechToText => parameters.speech_to_text_enabled(),
            Feature::TextToSpeech => parameters.text_to_speech_enabled(),
        }
    }

    /// Refuses before calling Dify when the app's `/parameters` say the feature is off; an
    /// app Dify did not describe is asked anyway (Dify refuses if it must).
    fn check(self, route: &AppRoute) -> Result<(), ApiError> {
        match route.parameters.as_ref().and_then(|p| self.enabled(p)) {
            Some(false) => Err(self.disabled(&route.name)),
            _ => Ok(()),
        }
    }

    fn disabled(self, model: &str) -> ApiError {
        let (setting, model) = (self.setting(), Shown(model));
        ApiError::invalid_request(format!(
            "{setting} is off in the Dify app of model `{model}`: enable Features > {setting} in the Dify app for model `{model}`"
        ))
        .param("model")
        .code(match self {
            Feature::SpeechToText => "speech_to_text_disabled",
            Feature::TextToSpeech => "text_to_speech_disabled",
        })
    }
}

/// Dify's refusal of an audio call, as an error that says what to change; anything not
/// specific to audio is mapped as for any Dify call.
fn refusal(error: &DifyError, model: &str, feature: Feature, mime: Option<&str>) -> ApiError {
    let shown = Shown(model);
    match error {
        DifyError::Api { status, code, message } => {
            let lower = message.to_ascii_lowercase();
            let switched_off = code == "speech_to_text_disabled"
                || code == "text_to_speech_disabled"
                || (*status == 400 && (lower.contains("not enabled") || lower.contains("is disabled")));
            if switched_off {
                return feature.disabled(model);
            }
            match (code.as_str(), *status) {
                ("unsupported_audio_type", _) | (_, 415) => ApiError::invalid_request(format!(
                    "Dify does not accept this type of audio{} (model `{shown}`): send mp3, wav or m4a (current Dify releases take mp3, m4a, wav, amr and mpga)",
                    mime.map(|m| format!(", {m}")).unwrap_or_default()
                ))
                .param("file")
                .code("unsupported_audio_type"),
                ("audio_too_large", _) | (_, 413) => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorType::InvalidRequest,
                    format!(
                        "The audio is larger than Dify accepts (model `{shown}`: {message}); send a shorter or more compressed recording"
                    ),
                )
                .param("file")
                .code("audio_too_large"),
                ("no_audio_uploaded", _) => {
                    ApiError::invalid_request(format!("Dify received no audio (model `{shown}`): {message}"))
                        .param("file")
                        .code("no_audio_uploaded")
                }
                _ => ApiError::from_dify(error, model),
            }
        }
        DifyError::Protocol(detail) if feature == Feature::TextToSpeech => ApiError::server(
            StatusCode::BAD_GATEWAY,
            format!(
                "Dify produced no audio for model `{shown}`: its {detail}; check Features > Text to Speech (its model and voice) in the Dify app for model `{shown}`"
            ),
        )
        .code("no_audio")
        .not_retryable(),
        other => ApiError::from_dify(other, model),
    }
}

/// Dify's audio is not the format the client asked for, and opendify does not transcode.
fn format_mismatch(model: &str, asked: SpeechFormat, content_type: &str) -> ApiError {
    let format = asked.as_str();
    ApiError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "The Dify app of model `{}` speaks {}, not the {format} you asked for (opendify does not convert audio): ask for mp3 (`response_format: \"mp3\"`, the default), or pick a text-to-speech model in the Dify app that produces {format}",
            Shown(model),
            Shown(content_type)
        ),
    )
    .param("response_format")
    .code("unsupported_response_format")
    .not_retryable()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> DifyError {
        DifyError::Api { status, code: code.into(), message: message.into() }
    }

    #[test]
    fn difys_refusals_say_what_to_change() {
        for (error, feature) in [
            (api(400, "speech_to_text_disabled", "Speech to text is disabled."), Feature::SpeechToText),
            (api(400, "invalid_param", "Speech to text is not enabled"), Feature::SpeechToText),
            (api(400, "invalid_param", "TTS is not enabled"), Feature::TextToSpeech),
        ] {
            let mapped = refusal(&error, "chat", feature, None);
            assert_eq!(mapped.status, StatusCode::BAD_REQUEST);
            let setting = feature.setting();
            assert!(
                mapped.message.contains(&format!("enable Features > {setting} in the Dify app for model `chat`")),
                "{}",
                mapped.message
            );
        }
        let webm = refusal(
            &api(415, "unsupported_audio_type", "Audio type not allowed."),
            "chat",
            Feature::SpeechToText,
            Some("audio/webm"),
        );
        assert_eq!((webm.status, webm.param.as_deref()), (StatusCode::BAD_REQUEST, Some("file")));
        assert!(
            webm.message.contains("audio/webm") && webm.message.contains("send mp3, wav or m4a"),
            "{}",
            webm.message
        );
        let large = refusal(
            &api(413, "audio_too_large", "Audio size exceeded. Audio size larger than 30 mb"),
            "chat",
            Feature::SpeechToText,
            None,
        );
        assert_eq!(large.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(large.message.contains("30 mb"), "{}", large.message);
        let null = DifyError::Protocol("/text-to-audio answered `null` instead of audio".into());
        let mapped = refusal(&null, "chat", Feature::TextToSpeech, None);
        assert_eq!(mapped.status, StatusCode::BAD_GATEWAY);
        assert!(mapped.message.contains("answered `null`"), "{}", mapped.message);
        let other = refusal(&api(500, "internal_server_error", "boom"), "chat", Feature::TextToSpeech, None);
        assert_eq!(other.status, StatusCode::BAD_GATEWAY);
    }
}
