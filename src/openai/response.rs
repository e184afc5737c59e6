//! `chat.completion`, `chat.completion.chunk` and `/v1/models` objects. Chunks are written
//! straight into the response buffer with borrowed fields: they are the hot path.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::dify::Usage;

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: ResponseMessage<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ResponseMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    pub refusal: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless the client asked for usage; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
}

/// Writes the SSE frames of one streamed completion; all share id, created and model.
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Every delta frame up to its delta, and after it: the same bytes [`Chunk`] serialises
    /// to, made once per stream, so each answer event only serialises its own text.
    head: Vec<u8>,
    tail: &'static [u8],
}

impl ChunkWriter {
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(128 + id.len() + model.len());
        head.extend_from_slice(b"data: {\"id\":");
        // Serialising a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut head, &id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut head, &model);
        head.extend_from_slice(b",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":");
        let tail: &'static [u8] = if include_usage {
            b",\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        } else {
            b",\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        };
        ChunkWriter { id, created, model, include_usage, head, tail }
    }

    fn frame(&self, out: &mut BytesMut, choices: &[ChunkChoice<'_>], usage: Option<Option<Usage>>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        };
        out.put_slice(b"data: ");
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut *out).writer(), &chunk);
        out.put_slice(b"\n\n");
    }

    fn usage_slot(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    pub fn delta(&self, out: &mut BytesMut, delta: Delta<'_>) {
        out.reserve(self.head.len() + self.tail.len() + 32);
        out.put_slice(&self.head);
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut *out).writer(), &delta);
        out.put_slice(self.tail);
    }

    pub fn role(&self, out: &mut BytesMut) {
        self.delta(out, Delta { role: Some("assistant"), content: Some(""), reasoning_content: None });
    }

    pub fn content(&self, out: &mut BytesMut, text: &str) {
        self.delta(out, Delta { content: Some(text), ..Delta::default() });
    }

    pub fn reasoning(&self, out: &mut BytesMut, text: &str) {
        self.delta(out, Delta { reasoning_content: Some(text), ..Delta::default() });
    }

    /// The closing choice chunk, the usage chunk when asked for, and `[DONE]`.
    pub fn finish(&self, out: &mut BytesMut, reason: &str, usage: Option<Usage>) {
        let choice = ChunkChoice { index: 0, delta: Delta::default(), logprobs: None, finish_reason: Some(reason) };
        self.frame(out, std::slice::from_ref(&choice), self.usage_slot());
        if self.include_usage
            && let Some(usage) = usage
        {
            self.frame(out, &[], Some(Some(usage)));
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    /// A failure after the stream began: OpenAI's error object as a frame, then `[DONE]`.
    pub fn error(&self, out: &mut BytesMut, error_json: &str) {
        out.put_slice(b"data: ");
        out.put_slice(error_json.as_bytes());
        out.put_slice(b"\n\ndata: [DONE]\n\n");
    }
}

#[derive(Debug, Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

/// `chatcmpl-` plus 24 random hex digits.
pub fn completion_id() -> String {
    format!("chatcmpl-{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_openai_shape_and_usage_only_when_asked() {
        let w = ChunkWriter::new("chatcmpl-1".into(), 7, "m".into(), false);
        let mut out = BytesMut::new();
        w.role(&mut out);
        w.content(&mut out, "Hé\"");
        w.finish(&mut out, "stop", Some(Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }));
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[0],
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
        assert!(frames[1].contains(r#""delta":{"content":"Hé\""}"#));
        assert!(frames[2].contains(r#""delta":{},"logprobs":null,"finish_reason":"stop""#));
        assert!(!text.contains("usage"));
        assert_eq!(frames[3], "data: [DONE]");

        let w = ChunkWriter::new("c".into(), 7, "m".into(), true);
        let mut out = BytesMut::new();
        w.content(&mut out, "x");
        w.finish(&mut out, "stop", Some(Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }));
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(text.contains(r#""usage":null"#));
        assert!(text.contains(r#""choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#));
    }

    #[test]
    fn delta_frames_are_the_bytes_the_whole_chunk_serialises_to() {
        for include_usage in [false, true] {
            let w = ChunkWriter::new("chatcmpl-\"é\u{1}".into(), 1_700_000_000, "m/\\\"x".into(), include_usage);
            let deltas = [
                Delta { role: Some("assistant"), content: Some(""), reasoning_content: None },
                Delta { content: Some("Hé\"\n\t\u{7f}\u{1f} 👋</script>"), ..Delta::default() },
                Delta { reasoning_content: Some("\\think"), ..Delta::default() },
                Delta::default(),
            ];
            for delta in deltas {
                let (mut fast, mut whole) = (BytesMut::new(), BytesMut::new());
                let copy =
                    Delta { role: delta.role, content: delta.content, reasoning_content: delta.reasoning_content };
                w.delta(&mut fast, delta);
                let choice = ChunkChoice { index: 0, delta: copy, logprobs: None, finish_reason: None };
                w.frame(&mut whole, std::slice::from_ref(&choice), w.usage_slot());
                assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&whole));
            }
        }
    }
}
