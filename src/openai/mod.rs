//! The OpenAI side: the chat-completion request opendify accepts, and the responses, chunks
//! and errors it produces, in the exact shapes OpenAI clients expect.

pub mod error;
pub mod request;
pub mod response;

pub use error::ApiError;
pub use request::{ChatCompletionRequest, ChatMessage, ContentPart, Role};
pub use response::*;
