//! Log output: tracing to stderr, as text (with the guide's emoji markers) or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// RUST_LOG wins over LOG_LEVEL, so a developer can turn up one module.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("warn,opendify={level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
