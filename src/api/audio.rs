//! OpenAI's audio endpoints over a Dify app's speech features: `POST /v1/audio/transcriptions`
//! (a multipart upload, answered from Dify's `/audio-to-text`) and `POST /v1/audio/speech`
//! (JSON, answered with the audio Dify's `/text-to-audio` streams). This is the codec: the
//! form's fields and the JSON read and checked, the audio part relabelled with a MIME type
//! Dify accepts, the transcript rendered as JSON or text. Dify returns neither timestamps nor
//! segments, so the formats that need them are refused, naming `response_format`.

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::parse_json;
use crate::bridge::ApiError;
use crate::json_text::kind_of;

/// One field of a multipart form, as the server read it.
#[derive(Debug, Clone)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// How the transcript is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscriptFormat {
    /// `{"text": …}`, `application/json` (the default).
    Json,
    /// The bare text, `text/plain; charset=utf-8`.
    Text,
}

/// A transcription request, checked, with the audio ready for Dify.
#[derive(Debug, Clone)]
pub struct Transcription {
    pub model: String,
    /// The client's file name (or `audio.<ext>` when it sent none).
    pub filename: String,
    /// The MIME type Dify is told (see [`dify_mime`]).
    pub mime: String,
    pub audio: Bytes,
    pub format: TranscriptFormat,
}

/// Fields OpenAI's transcription API takes that a Dify app decides for itself (its
/// speech-to-text model): accepted and ignored.
const IGNORED_FORM_FIELDS: [&str; 5] = ["language", "prompt", "temperature", "chunking_strategy", "include[]"];

/// Reads a transcription form: `file` and `model` are required, `response_format` is
/// `json` or `text`.
pub fn parse_transcription(parts: Vec<FormPart>) -> Result<Transcription, ApiError> {
    let mut file: Option<FormPart> = None;
    let mut model: Option<String> = None;
    let mut format = TranscriptFormat::Json;
    let mut ignored = Vec::new();
    for part in parts {
        let text = || String::from_utf8_lossy(&part.data).trim().to_string();
        match part.name.as_str() {
            "file" => file = Some(part),
            "model" => model = Some(text()),
            "response_format" => format = transcript_format(&text())?,
            "stream" if text() == "true" => {
                return Err(ApiError::invalid_request(
                    "`stream` is not available: Dify transcribes a file in one answer (leave `stream` out)",
                )
                .param("stream")
                .code("unsupported_parameter"));
            }
            name if IGNORED_FORM_FIELDS.contains(&name) || name.starts_with("timestamp_granularities") => {
                ignored.push(part.name.clone());
            }
            _ => {}
        }
    }
    if !ignored.is_empty() {
        tracing::debug!("ignored (the Dify app's speech-to-text model decides): {}", ignored.join(", "));
    }
    let model = model.filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::invalid_request("Missing required field `model` (the model whose Dify app transcribes)")
            .param("model")
    })?;
    let Some(file) = file else {
        return Err(ApiError::invalid_request("Missing required field `file` (the audio to transcribe)").param("file"));
    };
    if file.data.is_empty() {
        return Err(ApiError::invalid_request("`file` is empty").param("file"));
    }
    let mime = dify_mime(file.filename.as_deref(), file.content_type.as_deref());
    let filename = match file.filename.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        Some(name) => name.to_string(),
        None => format!("audio.{}", mime.rsplit('/').next().unwrap_or("mp3")),
    };
    Ok(Transcription { model, filename, mime, audio: file.data, format })
}

fn transcript_format(value: &str) -> Result<TranscriptFormat, ApiError> {
    let refuse =
        |why: String| Err(ApiError::invalid_request(why).param("response_format").code("unsupported_parameter"));
    match value {
        "" | "json" => Ok(TranscriptFormat::Json),
        "text" => Ok(TranscriptFormat::Text),
        "verbose_json" | "srt" | "vtt" | "diarized_json" => refuse(format!(
            "`response_format` {value:?} is not available: Dify returns the text only, without timestamps, segments or speakers (use \"json\" or \"text\")"
        )),
        other => refuse(format!("`response_format` must be \"json\" or \"text\", got {other:?}")),
    }
}

/// The MIME type Dify is told for an audio part. Current Dify releases check the part's
/// type and accept only `audio/mp3`, `audio/m4a`, `audio/wav`, `audio/amr` and `audio/mpga`
/// (not the common `audio/mpeg`), whatever the client labelled it: so the file's extension
/// decides, then the client's type. Formats Dify does not take (webm, ogg, flac) keep an
/// honest `audio/<ext>`, and Dify's refusal becomes a clear error.
pub fn dify_mime(filename: Option<&str>, content_type: Option<&str>) -> String {
    let extension = filename
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.trim().to_ascii_lowercase())
        .filter(|ext| !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()));
    if let Some(ext) = extension {
        return match ext.as_str() {
            "mp3" | "mpeg" | "mpga" => "audio/mp3".to_string(),
            "wav" | "wave" => "audio/wav".to_string(),
            "m4a" => "audio/m4a".to_string(),
            "amr" => "audio/amr".to_string(),
            other => format!("audio/{other}"),
        };
    }
    let given = content_type.map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match given.as_deref() {
        Some("audio/mpeg" | "audio/mp3" | "audio/mpga" | "audio/mpeg3" | "audio/x-mpeg-3") => "audio/mp3".to_string(),
        Some("audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave") => "audio/wav".to_string(),
        Some("audio/m4a" | "audio/x-m4a") => "audio/m4a".to_string(),
        Some(other) if other.starts_with("audio/") => other.to_string(),
        // Nothing to go by: mp3 is what Dify itself assumes (it names the bytes `temp.mp3`).
        _ => "audio/mp3".to_string(),
    }
}

/// The transcript as the client asked for it.
pub fn transcript_response(format: TranscriptFormat, text: &str) -> Response {
    match format {
        TranscriptFormat::Json => axum::Json(serde_json::json!({ "text": text })).into_response(),
        TranscriptFormat::Text => {
            let mut response = text.to_string().into_response();
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            response
        }
    }
}

/// OpenAI's built-in voices. Clients send one by default (the SDKs require a voice), so they
/// are not passed to Dify: the app's configured voice speaks instead.
pub const OPENAI_VOICES: [&str; 13] =
    ["alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"];

/// The audio formats OpenAI's speech API names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechFormat {
    Mp3,
    Opus,
    Aac,
    Flac,
    Wav,
    Pcm,
}

impl SpeechFormat {
    fn parse(value: &str) -> Option<SpeechFormat> {
        Some(match value {
            "mp3" => SpeechFormat::Mp3,
            "opus" => SpeechFormat::Opus,
            "aac" => SpeechFormat::Aac,
            "flac" => SpeechFormat::Flac,
            "wav" => SpeechFormat::Wav,
            "pcm" => SpeechFormat::Pcm,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpeechFormat::Mp3 => "mp3",
            SpeechFormat::Opus => "opus",
            SpeechFormat::Aac => "aac",
            SpeechFormat::Flac => "flac",
            SpeechFormat::Wav => "wav",
            SpeechFormat::Pcm => "pcm",
        }
    }

    /// Whether audio of `content_type` is this format. mp3, the default, takes whatever Dify
    /// sends (older releases label every answer `audio/mpeg`); another format must be what
    /// was asked for, since opendify does not transcode.
    pub fn accepts(self, content_type: &str) -> bool {
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match self {
            SpeechFormat::Mp3 => true,
            SpeechFormat::Opus => matches!(mime.as_str(), "audio/opus" | "audio/ogg"),
            SpeechFormat::Aac => matches!(mime.as_str(), "audio/aac" | "audio/x-aac" | "audio/aacp"),
            SpeechFormat::Flac => matches!(mime.as_str(), "audio/flac" | "audio/x-flac"),
            SpeechFormat::Wav => matches!(mime.as_str(), "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave"),
            SpeechFormat::Pcm => matches!(mime.as_str(), "audio/pcm" | "audio/l16"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct SpeechBody {
    model: String,
    input: String,
    #[serde(default)]
    voice: Option<Value>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    stream_format: Option<String>,
    // Accepted and ignored: the Dify app's text-to-speech model decides these.
    #[serde(default)]
    speed: Option<IgnoredAny>,
    #[serde(default)]
    instructions: Option<IgnoredAny>,
}

/// A speech request, checked.
#[derive(Debug, Clone)]
pub struct Speech {
    pub model: String,
    pub input: String,
    /// The voice for Dify, when the client named one of its own (not OpenAI's built-ins).
    pub voice: Option<String>,
    pub format: SpeechFormat,
}

pub fn parse_speech(body: &[u8]) -> Result<Speech, ApiError> {
    let request: SpeechBody = parse_json(body)?;
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid_request("`model` must not be empty").param("model"));
    }
    if request.input.trim().is_empty() {
        return Err(ApiError::invalid_request("`input` must not be empty: it is the text to read aloud").param("input"));
    }
    let format = match request.response_format.as_deref() {
        None => SpeechFormat::Mp3,
        Some(value) => SpeechFormat::parse(value).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "`response_format` must be one of mp3, opus, aac, flac, wav, pcm, got {value:?}"
            ))
            .param("response_format")
        })?,
    };
    if request.stream_format.as_deref().is_some_and(|f| f != "audio") {
        return Err(ApiError::invalid_request(
            "`stream_format` must be \"audio\": the audio is streamed as Dify produces it, not as events",
        )
        .param("stream_format")
        .code("unsupported_parameter"));
    }
    let voice = match &request.voice {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.trim().to_string()),
        // A custom voice by id: `{"id": "voice_…"}`.
        Some(Value::Object(object)) => match object.get("id").and_then(Value::as_str) {
            Some(id) => Some(id.trim().to_string()),
            None => return Err(ApiError::invalid_request("`voice` must be a name or {\"id\": …}").param("voice")),
        },
        Some(other) => {
            return Err(
                ApiError::invalid_request(format!("`voice` must be a string, got {}", kind_of(other))).param("voice")
            );
        }
    };
    let voice = voice.filter(|v| !v.is_empty() && !OPENAI_VOICES.contains(&v.to_ascii_lowercase().as_str()));
    let ignored: Vec<&str> = [("speed", request.speed.is_some()), ("instructions", request.instructions.is_some())]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    if !ignored.is_empty() {
        tracing::debug!("ignored (the Dify app's text-to-speech model decides): {}", ignored.join(", "));
    }
    Ok(Speech { model: request.model, input: request.input, voice, format })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, data: &str) -> FormPart {
        FormPart { name: name.into(), filename: None, content_type: None, data: Bytes::from(data.to_string()) }
    }

    fn file(filename: &str, content_type: &str) -> FormPart {
        FormPart {
            name: "file".into(),
            filename: Some(filename.into()),
            content_type: Some(content_type.into()),
            data: Bytes::from_static(b"RIFF...."),
        }
    }

    #[test]
    fn audio_is_relabelled_with_a_type_dify_accepts() {
        for (name, given, expected) in [
            ("a.mp3", "audio/mpeg", "audio/mp3"),
            ("a.MPEG", "application/octet-stream", "audio/mp3"),
            ("a.mpga", "", "audio/mp3"),
            ("voice.wav", "audio/x-wav", "audio/wav"),
            ("memo.m4a", "audio/mp4", "audio/m4a"),
            ("note.amr", "", "audio/amr"),
            ("rec.webm", "video/webm", "audio/webm"),
            ("rec.ogg", "audio/ogg", "audio/ogg"),
            ("rec.flac", "audio/flac", "audio/flac"),
            ("blob", "audio/mpeg", "audio/mp3"),
            ("blob", "audio/x-m4a", "audio/m4a"),
            ("blob", "", "audio/mp3"),
        ] {
            assert_eq!(dify_mime(Some(name), Some(given)), expected, "{name} {given}");
        }
    }

    #[test]
    fn a_transcription_form_needs_a_file_and_a_model_and_a_format_dify_can_fill() {
        let ok = parse_transcription(vec![part("model", "chat"), file("hi.mp3", "audio/mpeg"), part("language", "en")])
            .expect("ok");
        assert_eq!((ok.model.as_str(), ok.filename.as_str(), ok.mime.as_str()), ("chat", "hi.mp3", "audio/mp3"));
        assert_eq!(ok.format, TranscriptFormat::Json);
        let text = parse_transcription(vec![part("model", "m"), file("a.wav", ""), part("response_format", "text")]);
        assert_eq!(text.expect("ok").format, TranscriptFormat::Text);
        for (parts, param) in [
            (vec![part("model", "m")], "file"),
            (vec![file("a.wav", "")], "model"),
            (vec![part("model", "m"), file("a.wav", ""), part("response_format", "verbose_json")], "response_format"),
            (vec![part("model", "m"), file("a.wav", ""), part("response_format", "srt")], "response_format"),
            (vec![part("model", "m"), file("a.wav", ""), part("response_format", "vtt")], "response_format"),
            (vec![part("model", "m"), file("a.wav", ""), part("response_format", "diarized_json")], "response_format"),
            (vec![part("model", "m"), file("a.wav", ""), part("stream", "true")], "stream"),
        ] {
            assert_eq!(parse_transcription(parts).expect_err("refused").param.as_deref(), Some(param));
        }
    }

    #[test]
    fn openai_voices_are_not_passed_on_and_custom_ones_are() {
        let speech = |body: &str| parse_speech(body.as_bytes());
        assert_eq!(speech(r#"{"model":"m","input":"hi","voice":"alloy"}"#).expect("ok").voice, None);
        assert_eq!(speech(r#"{"model":"m","input":"hi","voice":"Cedar"}"#).expect("ok").voice, None);
        assert_eq!(
            speech(r#"{"model":"m","input":"hi","voice":"zh-CN-XiaoxiaoNeural","speed":1.5}"#).expect("ok").voice,
            Some("zh-CN-XiaoxiaoNeural".into())
        );
        assert_eq!(
            speech(r#"{"model":"m","input":"hi","voice":{"id":"voice_1"}}"#).expect("ok").voice,
            Some("voice_1".into())
        );
        assert_eq!(speech(r#"{"model":"m","input":"hi"}"#).expect("ok").format, SpeechFormat::Mp3);
        let wav = speech(r#"{"model":"m","input":"hi","response_format":"wav"}"#).expect("ok").format;
        assert!(wav.accepts("audio/wav") && !wav.accepts("audio/mpeg"));
        assert!(SpeechFormat::Mp3.accepts("audio/wav"), "mp3, the default, takes what Dify sends");
        for (body, param) in [
            (r#"{"model":"m","input":"  ","voice":"alloy"}"#, "input"),
            (r#"{"model":"m","input":"hi","response_format":"ogg"}"#, "response_format"),
            (r#"{"model":"m","input":"hi","stream_format":"sse"}"#, "stream_format"),
            (r#"{"model":"m","input":"hi","voice":3}"#, "voice"),
            (r#"{"input":"hi"}"#, "model"),
        ] {
            assert_eq!(speech(body).expect_err("refused").param.as_deref(), Some(param), "{body}");
        }
    }
}
