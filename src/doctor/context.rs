//! What a check runs with: the configuration as `serve` loads it, the doctor's time limits,
//! the Dify client `serve` would build, the progress spinner, and the typed [`Facts`] that
//! earlier checks of the same run established. Kept apart from `mod.rs` (which runs the
//! checks) so that the checks depend on this and never on the module that calls them.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::report::CheckResult;
use crate::config::{Config, Loaded};
use crate::dify::{DifyClient, DifyError};
use crate::finding::Finding;

/// Default for `--timeout`: long enough for a slow Dify, short enough for a doctor.
pub(crate) const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every check may use: the configuration as `serve` would load it, the time limits
/// and the progress line.
pub(crate) struct Context {
    pub loaded: Loaded,
    /// The longest any one network step may take.
    pub step_timeout: Duration,
    /// `--timeout`, when given (it also shortens the stream idle timeout).
    pub explicit_timeout: Option<Duration>,
    pub progress: Progress,
    /// check-config runs in this session: other checks skip on configuration problems
    /// rather than fail a second time for the same reason.
    pub config_checked: bool,
}

/// What checks found that later checks of the same run act on. Typed, so that no check
/// reads another check's JSON details.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// ping-dify found Dify unreachable: the checks that talk to Dify skip instead of
    /// failing a second time for the same reason.
    pub dify_unreachable: bool,
    /// test-key: the models whose key or app failed; test-stream skips them.
    pub failed_models: Vec<String>,
}

impl Context {
    pub fn new(loaded: Loaded, timeout: Option<Duration>, config_checked: bool, progress: Progress) -> Self {
        Context {
            loaded,
            step_timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
            explicit_timeout: timeout,
            progress,
            config_checked,
        }
    }

    pub fn config(&self) -> Option<&Config> {
        self.loaded.config.as_ref()
    }

    /// The configuration, or the result that explains why check `id` cannot run without it.
    pub fn require_config(&self, id: &'static str) -> Result<&Config, Box<CheckResult>> {
        if let Some(config) = self.config() {
            return Ok(config);
        }
        if self.config_checked {
            return Err(Box::new(CheckResult::skipped(
                id,
                "skipped: the configuration has problems (see check-config)",
            )));
        }
        let mut result = CheckResult::new(id);
        result.summary("cannot run: the configuration has problems");
        let first = self.loaded.problems.first().map(|p| p.message.clone()).unwrap_or_default();
        result.fail(Finding::with_fix(
            format!("{} configuration problem(s), the first: {first}", self.loaded.problems.len()),
            "run `opendify doctor check-config` to see every problem and its fix",
        ));
        Err(Box::new(result))
    }

    /// The configuration serve runs with, its Dify timeouts bounded by the doctor's.
    pub fn doctor_config(&self, config: &Config) -> Config {
        let mut config = config.clone();
        config.connect_timeout = config.connect_timeout.min(self.step_timeout);
        config.request_timeout = config.request_timeout.min(self.step_timeout);
        if let Some(limit) = self.explicit_timeout {
            config.stream_idle_timeout = config.stream_idle_timeout.min(limit);
        }
        config
    }

    /// The Dify client `serve` builds, with the doctor's time limits.
    pub fn client(&self, config: &Config) -> Result<DifyClient, DifyError> {
        DifyClient::new(&self.doctor_config(config).dify_client_options())
    }

    /// For the checks that talk to Dify: the configuration and the client serve would use,
    /// or the finished result when the check cannot run (bad configuration, Dify found
    /// unreachable by ping-dify earlier in this run, a client that cannot be built).
    pub fn dify(&self, id: &'static str, facts: &Facts) -> Result<(&Config, DifyClient), Box<CheckResult>> {
        let config = self.require_config(id)?;
        if facts.dify_unreachable {
            return Err(Box::new(CheckResult::skipped(id, "skipped: Dify is unreachable (see ping-dify)")));
        }
        match self.client(config) {
            Ok(client) => Ok((config, client)),
            Err(e) => {
                let mut result = CheckResult::new(id);
                result.summary("cannot build the Dify client");
                result.fail(Finding::new(e.to_string()));
                Err(Box::new(result))
            }
        }
    }
}

/// A spinner on stderr while a check runs, only on a terminal and never with `--json`.
#[derive(Clone, Default)]
pub(crate) struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new(enabled: bool) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    pub fn set(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message);
        }
    }

    /// Prints above the spinner without tearing it.
    pub fn print(&self, text: &str) {
        match &self.0 {
            Some(bar) => bar.suspend(|| stdout(text)),
            None => stdout(text),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Writes to stdout; a closed pipe (`opendify doctor | head`) is not an error worth a panic.
pub(crate) fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
