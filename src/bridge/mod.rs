//! The dialect-neutral core: one turn in, one event stream out. Every client API (Chat
//! Completions, Responses, Anthropic Messages, legacy completions) is a codec over these
//! types; what is here exists once. `apps` says which Dify app serves a model, `turn` is the
//! request, `request` and `uploads` make it Dify's, `events` turns Dify's answer into the
//! neutral stream (with `reasoning` splitting inline thinking from answers), `tools` emulates
//! client tools, and `error` is the one error every dialect renders.

pub mod apps;
pub mod error;
pub mod events;
pub mod pipeline;
pub mod reasoning;
pub mod request;
pub mod structured;
pub mod tools;
pub mod turn;
pub mod uploads;

pub use apps::{AppRoute, ModeSource, Registry};
pub use error::{ApiError, ErrorType};
pub use events::{
    Citation, Collected, Facts, FinishReason, Outcome, OwnedFacts, Progress, ProgressMode, Sink, StopReason,
    StreamEncoder, Translator, TranslatorOptions, Usage, replacement,
};
pub use request::{BuildOptions, ConversationPlan};
pub use turn::{Message, OutputFormat, Part, Role, ToolCall, ToolChoice, ToolSpec, Tools, Turn};
pub use uploads::UploadCache;

/// `prefix` and 24 random hex digits: `chatcmpl-…`, `resp_…`, `msg_…`, `call_…`.
pub fn random_id(prefix: &str) -> String {
    // 24 hex digits, written directly (this runs for every answer).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (high, low) = (fastrand::u64(..), fastrand::u32(..));
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend((0..16).rev().map(|i| HEX[(high >> (i * 4)) as usize & 15] as char));
    id.extend((0..8).rev().map(|i| HEX[(low >> (i * 4)) as usize & 15] as char));
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_ids_are_the_prefix_and_24_hex_digits() {
        let id = super::random_id("chatcmpl-");
        let digits = id.strip_prefix("chatcmpl-").expect("prefix");
        assert_eq!(digits.len(), 24, "{id}");
        assert!(digits.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
        assert_ne!(super::random_id("x"), super::random_id("x"));
    }
}
