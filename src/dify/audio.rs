//! The audio Dify sends back from `/text-to-audio`, relayed as it arrives: its content type
//! (which differs between Dify releases, so callers trust it rather than assume one) and its
//! bytes, each wait for the next bytes bounded by the idle timeout.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::Response;

use super::error::{DifyError, error_chain};

pub struct AudioStream {
    /// Dify's `Content-Type` (`audio/mpeg` when it sent none, as older releases always meant).
    pub content_type: String,
    pub body: BoxStream<'static, Result<Bytes, DifyError>>,
}

impl AudioStream {
    pub(super) fn new(response: Response, content_type: String, idle: Duration) -> Self {
        let body = futures_util::stream::unfold(Some(response.bytes_stream()), move |state| async move {
            let mut inner = state?;
            match tokio::time::timeout(idle, inner.next()).await {
                Err(_) => Some((Err(DifyError::Idle(idle)), None)),
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(inner))),
                Ok(Some(Err(e))) => Some((Err(DifyError::Transport(error_chain(&e))), None)),
            }
        })
        .boxed();
        AudioStream { content_type, body }
    }
}

/// What a `/text-to-audio` answer that is not audio says, for the error: Dify answers a JSON
/// `null` with status 200 when its text-to-speech produced nothing.
pub(super) fn not_audio(content_type: &str, body: &[u8]) -> DifyError {
    let described = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Null) => "`null`".to_string(),
        Ok(value) => match value.get("message").and_then(serde_json::Value::as_str) {
            Some(message) => format!("{content_type} ({})", crate::secret::mask_keys_in(message)),
            None => content_type.to_string(),
        },
        Err(_) if body.is_empty() => "an empty body".to_string(),
        Err(_) => content_type.to_string(),
    };
    DifyError::Protocol(format!("/text-to-audio answered {described} instead of audio"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_are_not_audio_say_what_came_instead() {
        assert_eq!(
            not_audio("application/json", b"null").to_string(),
            "Dify sent something that is not a valid event: /text-to-audio answered `null` instead of audio"
        );
        let error = not_audio("application/json", br#"{"code":"x","message":"TTS is not enabled"}"#);
        assert!(error.to_string().contains("application/json (TTS is not enabled)"), "{error}");
    }
}
