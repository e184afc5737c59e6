//! Translation between the OpenAI API and Dify's, per app mode: which app serves a model
//! (`apps`), how a chat request becomes a Dify request (`request`), and how Dify's events
//! become OpenAI output (`events`, with `reasoning` splitting inline thinking from answers).

pub mod apps;
pub mod events;
pub mod reasoning;
pub mod request;

pub use apps::{AppRoute, Registry};
pub use events::{Collected, Outcome, Sink, Translator, TranslatorOptions};
pub use request::{BuildOptions, ConversationPlan, UploadCache};
