//! Who the user is, and which Dify conversation a request continues.

pub mod identity;

pub use identity::{Identity, resolve_identity};
