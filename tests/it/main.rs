//! The integration tests, as one binary (one link for CI): opendify over real HTTP against
//! the mock Dify (`crates/mock-dify`), the real binary where a process matters (signals,
//! logs, exit codes), and the documentation checked against the code.

// Helpers not every test module uses.
#[allow(dead_code)]
mod common;

mod agents;
mod architecture;
mod audio;
mod auth;
mod cli;
mod cli_doctor;
mod completions;
mod conversations;
mod docs;
mod doctor;
mod load;
mod messages;
mod metrics;
mod modes;
mod open_webui;
mod reliability;
mod responses;
mod serve;
mod shutdown;
mod stops;
