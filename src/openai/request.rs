//! The chat-completion request as clients send it, and its validation. Unknown fields are
//! ignored (clients send many); every rejection names the field, in OpenAI's error shape.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ApiError;
use crate::json_text::{kind_of, reason};

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// Not OpenAI: an explicit Dify conversation to continue.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Not OpenAI: values for the Dify app's input form, passed through.
    #[serde(default)]
    pub inputs: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Value>,
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    Text(String),
    /// `image_url` part: an http(s) URL or a `data:` URL.
    Image {
        url: String,
    },
    /// `file` part: inline data (a `data:` URL) with an optional file name, or a file id.
    File {
        data: Option<String>,
        filename: Option<String>,
        file_id: Option<String>,
    },
    /// `input_audio` part: base64 data and its format (`wav`, `mp3`).
    Audio {
        data: String,
        format: String,
    },
}

impl ChatCompletionRequest {
    /// Parses and validates a request body. Errors name the offending field.
    pub fn from_slice(body: &[u8]) -> Result<Self, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let request: ChatCompletionRequest = match serde_path_to_error::deserialize(&mut de) {
            Ok(r) => r,
            Err(err) => return Err(describe_parse_error(err)),
        };
        if let Err(e) = de.end() {
            return Err(ApiError::invalid_request(format!("Request body is not valid JSON: {e}")));
        }
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<(), ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_request("`model` must not be empty").param("model"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_request("`messages` must contain at least one message").param("messages"));
        }
        for (index, message) in self.messages.iter().enumerate() {
            message.parts(index)?;
        }
        if !self.messages.iter().any(|m| m.role == Role::User) {
            return Err(
                ApiError::invalid_request("`messages` must contain at least one user message").param("messages")
            );
        }
        Ok(())
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// Index of the last user message: the one Dify receives as `query`.
    pub fn last_user_index(&self) -> usize {
        self.messages.iter().rposition(|m| m.role == Role::User).unwrap_or(0)
    }
}

impl ChatMessage {
    /// The content as parts; `index` is the message's position, for error messages.
    pub fn parts(&self, index: usize) -> Result<Vec<ContentPart>, ApiError> {
        let param = format!("messages[{index}].content");
        match &self.content {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![ContentPart::Text(s.clone())]),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, item)| parse_part(item, &format!("{param}[{i}]"))).collect()
            }
            Some(other) => Err(ApiError::invalid_request(format!(
                "`{param}` must be a string or an array of content parts, got {}",
                kind_of(other)
            ))
            .param(param)),
        }
    }

    /// The text of the message: text parts joined with newlines.
    pub fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
}

fn parse_part(item: &Value, param: &str) -> Result<ContentPart, ApiError> {
    let bad = |msg: String| ApiError::invalid_request(msg).param(param.to_string());
    let Some(obj) = item.as_object() else {
        return Err(bad(format!("`{param}` must be an object with a `type`, got {}", kind_of(item))));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let str_field = |v: Option<&Value>, name: &str| -> Result<String, ApiError> {
        v.and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(format!("`{param}.{name}` must be a string")))
    };
    match kind {
        "text" => Ok(ContentPart::Text(str_field(obj.get("text"), "text")?)),
        "image_url" => {
            let url = match obj.get("image_url") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => str_field(o.get("url"), "image_url.url")?,
                _ => return Err(bad(format!("`{param}.image_url` must be an object with a `url`"))),
            };
            let lower = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("data:")) {
                return Err(bad(format!("`{param}.image_url.url` must be an http(s) URL or a data: URL")));
            }
            Ok(ContentPart::Image { url })
        }
        "file" => {
            let Some(file) = obj.get("file").and_then(Value::as_object) else {
                return Err(bad(format!("`{param}.file` must be an object")));
            };
            let opt = |name: &str| file.get(name).and_then(Value::as_str).map(str::to_string);
            let (data, filename, file_id) = (opt("file_data"), opt("filename"), opt("file_id"));
            if data.is_none() && file_id.is_none() {
                return Err(bad(format!("`{param}.file` needs `file_data` (a data: URL) or `file_id`")));
            }
            Ok(ContentPart::File { data, filename, file_id })
        }
        "input_audio" => {
            let Some(audio) = obj.get("input_audio").and_then(Value::as_object) else {
                return Err(bad(format!("`{param}.input_audio` must be an object")));
            };
            Ok(ContentPart::Audio {
                data: str_field(audio.get("data"), "input_audio.data")?,
                format: str_field(audio.get("format"), "input_audio.format")?,
            })
        }
        "" => Err(bad(format!("`{param}` has no `type`"))),
        other => {
            Err(bad(format!("`{param}` has unsupported type {other:?}; supported: text, image_url, file, input_audio")))
        }
    }
}

fn describe_parse_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() || path == "." {
        if inner.is_data() && path == "." {
            // Valid JSON, wrong shape at the top (e.g. missing field, or not an object).
            let text = reason(inner);
            let field = text.strip_prefix("missing field `").and_then(|s| s.split('`').next()).map(str::to_string);
            let mut error = ApiError::invalid_request(match &field {
                Some(f) => format!("Missing required field `{f}`"),
                None => format!("Request body must be a JSON object: {text}"),
            });
            if let Some(f) = field {
                error = error.param(f);
            }
            return error;
        }
        return ApiError::invalid_request(format!("Request body is not valid JSON: {inner}"));
    }
    let text = reason(inner);
    if let Some(field) = text.strip_prefix("missing field `").and_then(|s| s.split('`').next()) {
        let param = format!("{path}.{field}");
        return ApiError::invalid_request(format!("Missing required field `{param}`")).param(param);
    }
    ApiError::invalid_request(format!("Invalid value for `{path}`: {text}")).param(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        ChatCompletionRequest::from_slice(body.as_bytes()).expect_err("should fail")
    }

    #[test]
    fn accepts_string_and_part_content_and_ignores_unknown_fields() {
        let r = ChatCompletionRequest::from_slice(
            br#"{"model":"m","temperature":0.2,"tools":[],"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("valid");
        assert!(r.is_stream() && r.include_usage());
        assert_eq!(r.messages[1].text(), "a\nb");
        assert_eq!(r.last_user_index(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{"messages":[]}"#).param.as_deref(), Some("model"));
        assert!(err("{not json").message.starts_with("Request body is not valid JSON"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":1}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{}", e.message);
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = err(r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = err(r#"{"model":"m","messages":[{"role":"assistant","content":"x"}]}"#);
        assert!(e.message.contains("at least one user message"));
        let e = err(r#"{"model":"m","messages":[{"content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{}", e.message);
    }
}
