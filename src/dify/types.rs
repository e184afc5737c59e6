//! The JSON shapes of Dify's service API (see `docs/dify-api.md`), typed on what
//! opendify reads, and tolerant of what it does not: unknown fields and events are ignored,
//! because Dify adds new ones between releases.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `/chat-messages`, `/completion-messages` and `/workflows/run`; fields a mode
/// does not take are left out.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GenerateRequest {
    pub inputs: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub response_mode: &'static str,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_message_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_generate_name: Option<bool>,
}

/// A file attached to a request: a URL Dify fetches, or an id from `/files/upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub transfer_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_file_id: Option<String>,
}

/// One streamed event, flat: every field any event type carries, all optional. Borrowed
/// where it can be, since `answer` deltas are the hot path (the optional ones through
/// [`borrowed`]: serde borrows a bare `Cow<str>`, but copies one inside an `Option`).
#[derive(Debug, Deserialize)]
pub struct Event<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub answer: Option<Cow<'a, str>>,
    /// The ids every event repeats: borrowed too, so an event costs no allocation for them.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub conversation_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub message_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub task_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub workflow_run_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Workflow and node payloads.
    #[serde(default)]
    pub data: Option<Value>,
    /// `error` frames.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub status: Option<Value>,
    /// `agent_thought` frames.
    #[serde(default)]
    pub thought: Option<String>,
    #[serde(default)]
    pub observation: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub tool_input: Option<String>,
    #[serde(default)]
    pub position: Option<u32>,
    /// `message_file` frames.
    #[serde(default, rename = "type")]
    pub file_type: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub belongs_to: Option<String>,
    /// `message_replace` frames.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An optional string borrowed from the frame when it has no escapes (copied when it has).
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|Text(text)| text))
}

impl Event<'_> {
    /// The HTTP-like status of an `error` frame (a number, or a number in a string).
    pub fn error_status(&self) -> Option<u16> {
        match &self.status {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The knowledge-base passages the answer drew on.
    #[serde(default)]
    pub retriever_resources: Vec<Value>,
}

/// Token counts and price as Dify reports them (`message_end.metadata.usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    /// A decimal string (`"0.0000300"`).
    #[serde(default, deserialize_with = "text_or_number")]
    pub total_price: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A price Dify sends as a string, or as a number in some releases.
fn text_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// `GET /info`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AppInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub author_name: Option<String>,
}

/// `GET /parameters`, kept as JSON with accessors for what opendify uses.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AppParameters(pub Value);

/// One field of an app's input form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputField {
    pub control: String,
    pub variable: String,
    pub required: bool,
}

impl AppParameters {
    /// "Suggested questions after answer" is on: Dify has questions for each answer.
    pub fn suggests_after_answer(&self) -> bool {
        self.0.get("suggested_questions_after_answer").and_then(|s| s.get("enabled")).and_then(Value::as_bool)
            == Some(true)
    }

    pub fn input_fields(&self) -> Vec<InputField> {
        let Some(items) = self.0.get("user_input_form").and_then(Value::as_array) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let (control, body) = item.as_object()?.iter().next()?;
                Some(InputField {
                    control: control.clone(),
                    variable: body.get("variable")?.as_str()?.to_string(),
                    required: body.get("required").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect()
    }

    /// Whether the app accepts image uploads, and how many per message.
    pub fn image_upload(&self) -> Option<(bool, Option<u64>)> {
        let image = self.0.get("file_upload")?.get("image")?;
        let enabled = image.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        Some((enabled, image.get("number_limits").and_then(Value::as_u64)))
    }

    /// The app's Features > Speech to Text switch, when `/parameters` says.
    pub fn speech_to_text_enabled(&self) -> Option<bool> {
        self.0.get("speech_to_text")?.get("enabled")?.as_bool()
    }

    /// The app's Features > Text to Speech switch, when `/parameters` says.
    pub fn text_to_speech_enabled(&self) -> Option<bool> {
        self.0.get("text_to_speech")?.get("enabled")?.as_bool()
    }

    /// Whether any file upload is switched on (images or the newer generic file settings).
    pub fn file_upload_enabled(&self) -> bool {
        let Some(upload) = self.0.get("file_upload") else { return false };
        if upload.get("enabled").and_then(Value::as_bool) == Some(true) {
            return true;
        }
        upload
            .as_object()
            .map(|o| o.values().any(|v| v.get("enabled").and_then(Value::as_bool) == Some(true)))
            .unwrap_or(false)
    }
}

/// `POST /files/upload` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UploadedFile {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
}

/// `POST /audio-to-text` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Transcript {
    pub text: String,
}

/// `POST /text-to-audio` body. Without `voice`, the app's configured voice speaks.
#[derive(Debug, Clone, Serialize)]
pub struct TextToAudioRequest {
    pub text: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
}

/// Dify's error body: `{"code": "...", "message": "...", "status": 400}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_borrow_their_ids_and_answer_unless_escaped() {
        let frame = r#"{"event":"message","answer":"Hi \"there\"","conversation_id":"c-1","message_id":"m-1","task_id":"t-1","id":"m-1"}"#;
        let event: Event<'_> = serde_json::from_str(frame).unwrap();
        let borrowed = |c: &Option<Cow<'_, str>>| matches!(c, Some(Cow::Borrowed(_)));
        assert!(borrowed(&event.conversation_id) && borrowed(&event.message_id));
        assert!(borrowed(&event.task_id) && borrowed(&event.id));
        assert_eq!(event.answer.as_deref(), Some("Hi \"there\""));
        assert!(matches!(event.answer, Some(Cow::Owned(_))), "an escaped string is unescaped into a copy");
        let end: Event<'_> = serde_json::from_str(r#"{"event":"message_end","answer":null}"#).unwrap();
        assert!(end.answer.is_none() && end.conversation_id.is_none());
    }
}
