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
    format!("{prefix}{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}
