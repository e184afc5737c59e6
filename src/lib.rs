//! opendify: an OpenAI-compatible gateway for Dify apps.
//!
//! One shared core (configuration, the Dify client, translation, conversations) with two
//! front ends: the server (`serve`) and the diagnostics (`doctor`).

pub mod api;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod conversations;
pub mod dify;
pub mod doctor;
pub mod finding;
pub mod json_text;
pub mod logging;
pub mod secret;
pub mod server;
