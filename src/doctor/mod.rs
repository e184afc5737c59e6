//! `opendify doctor`: the original's troubleshooting guide, automated. Each check runs the
//! code `serve` runs (the config loader, the Dify client, the bridge, the conversation
//! store) and says what is wrong and the exact fix; people get one line per check, CI gets
//! one JSON document and an exit code (0 nothing failed, 1 a check failed, 2 could not run).
//!
//! This file holds what the checks share: the validated options, the context (loaded
//! configuration, time limits, progress), the order checks run in and the run itself.
//! Each check lives in its own file; [`report`] holds the result type and its renderings.

pub mod bundle;
mod cert;
pub mod check_config;
pub mod check_port;
pub mod inspect_mappings;
pub mod ping_dify;
pub mod report;
pub mod test_key;
pub mod test_stream;

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::cli::{CheckId, DoctorArgs, DoctorCommand, NetworkErrors};
use crate::config::{self, Config, LoadOptions, Loaded};
use crate::dify::{DifyClient, DifyError};

pub use report::{CheckResult, Issue, RenderOptions, Report, Status};

/// Every check, in the order a full run goes: local and fast first, the network last.
pub const ORDER: &[CheckId] = &[
    CheckId::CheckConfig,
    CheckId::CheckPort,
    CheckId::InspectMappings,
    CheckId::PingDify,
    CheckId::TestKey,
    CheckId::TestStream,
];

impl CheckId {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::CheckConfig => "check-config",
            CheckId::CheckPort => "check-port",
            CheckId::InspectMappings => "inspect-mappings",
            CheckId::PingDify => "ping-dify",
            CheckId::TestKey => "test-key",
            CheckId::TestStream => "test-stream",
        }
    }

    /// One line for `doctor --list`.
    pub fn describe(self) -> &'static str {
        match self {
            CheckId::CheckConfig => "which .env was loaded, every setting and its source, problems with fixes",
            CheckId::CheckPort => "whether SERVER_HOST:SERVER_PORT can be bound, and who holds it if not",
            CheckId::InspectMappings => "the conversation store: reachable, writable, schema, counts, expired",
            CheckId::PingDify => "DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer",
            CheckId::TestKey => "each model's app key against Dify's /info and /parameters",
            CheckId::TestStream => "one short streamed message (user opendify-doctor): first event, gaps, end, usage",
        }
    }
}

/// The doctor's options once validated (the second stage after clap's parsing).
#[derive(Debug, Clone)]
pub struct Options {
    pub json: bool,
    pub strict: bool,
    pub network_errors_warn: bool,
    pub colour: bool,
    pub verbose: bool,
    /// `--timeout`, when given.
    pub timeout: Option<Duration>,
    pub checks: Vec<CheckId>,
    pub ping: ping_dify::PingOptions,
    pub key: test_key::KeyOptions,
    pub stream: test_stream::StreamOptions,
    pub mappings: inspect_mappings::MappingOptions,
    /// `doctor report`: where the Markdown goes and how much log it carries.
    pub report: Option<bundle::BundleOptions>,
}

/// A reason the doctor cannot run at all (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("--only cannot be combined with a check name; use either `doctor --only a,b` or `doctor CHECK`")]
    OnlyWithCheck,
    #[error("--only needs at least one check; `opendify doctor --list` names them")]
    EmptyOnly,
}

impl Options {
    pub fn from_args(args: &DoctorArgs) -> Result<Options, UsageError> {
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let mut options = Options {
            json: args.json,
            strict: args.strict,
            network_errors_warn: args.network_errors == NetworkErrors::Warn,
            colour: !args.no_color && !no_color_env && !args.json && std::io::stdout().is_terminal(),
            verbose: args.verbose,
            timeout: args.timeout.map(Duration::from_secs_f64),
            checks: ORDER.to_vec(),
            ping: ping_dify::PingOptions::default(),
            key: test_key::KeyOptions::default(),
            stream: test_stream::StreamOptions::default(),
            mappings: inspect_mappings::MappingOptions::default(),
            report: None,
        };
        if !args.only.is_empty() {
            if args.check.is_some() {
                return Err(UsageError::OnlyWithCheck);
            }
            options.checks = ORDER.iter().copied().filter(|id| args.only.contains(id)).collect();
            if options.checks.is_empty() {
                return Err(UsageError::EmptyOnly);
            }
        }
        let named: Vec<&DoctorCommand> = args.named_checks().collect();
        if !named.is_empty() && !matches!(named[..], [DoctorCommand::Report(_)]) {
            // Checks asked for by name: those, in the order given, showing everything found.
            options.checks.clear();
            options.verbose = true;
        }
        for check in named {
            let id = match check {
                DoctorCommand::CheckConfig => CheckId::CheckConfig,
                DoctorCommand::CheckPort(_) => CheckId::CheckPort,
                DoctorCommand::InspectMappings(a) => {
                    options.mappings = inspect_mappings::MappingOptions {
                        user: a.user.clone(),
                        chat: a.chat.clone(),
                        prune: a.prune,
                        verify: a.verify,
                        limit: a.limit,
                    };
                    CheckId::InspectMappings
                }
                DoctorCommand::PingDify(a) => {
                    options.ping = ping_dify::PingOptions { dns: a.dns, count: a.count };
                    CheckId::PingDify
                }
                DoctorCommand::TestKey(a) => {
                    options.key = test_key::KeyOptions { models: a.models.clone(), live: a.live };
                    CheckId::TestKey
                }
                DoctorCommand::TestStream(a) => {
                    options.stream = test_stream::StreamOptions {
                        model: a.model.clone(),
                        via: a.via.clone(),
                        message: a.message.clone(),
                        user: a.user.clone(),
                    };
                    CheckId::TestStream
                }
                DoctorCommand::Report(a) => {
                    options.report = Some(bundle::BundleOptions { output: a.output.clone(), log_lines: a.log_lines });
                    continue;
                }
            };
            if !options.checks.contains(&id) {
                options.checks.push(id);
            }
        }
        Ok(options)
    }
}

/// What every check may use: the configuration as `serve` would load it, the time limits
/// and the progress line.
pub struct Context {
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

/// Default for `--timeout`: long enough for a slow Dify, short enough for a doctor.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

impl Context {
    pub fn new(loaded: Loaded, options: &Options, progress: Progress) -> Self {
        Context {
            loaded,
            step_timeout: options.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
            explicit_timeout: options.timeout,
            progress,
            config_checked: options.checks.contains(&CheckId::CheckConfig),
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
        result.fail(
            format!("{} configuration problem(s), the first: {first}", self.loaded.problems.len()),
            Some("run `opendify doctor check-config` to see every problem and its fix".into()),
        );
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
    pub fn dify(&self, id: &'static str, before: &[CheckResult]) -> Result<(&Config, DifyClient), Box<CheckResult>> {
        let config = self.require_config(id)?;
        let unreachable = before
            .iter()
            .any(|c| c.id == ping_dify::ID && c.details.get("reachable") == Some(&serde_json::Value::Bool(false)));
        if unreachable {
            return Err(Box::new(CheckResult::skipped(id, "skipped: Dify is unreachable (see ping-dify)")));
        }
        match self.client(config) {
            Ok(client) => Ok((config, client)),
            Err(e) => {
                let mut result = CheckResult::new(id);
                result.summary("cannot build the Dify client");
                result.fail(e.to_string(), None);
                Err(Box::new(result))
            }
        }
    }
}

/// A spinner on stderr while a check runs, only on a terminal and never with `--json`.
#[derive(Clone, Default)]
pub struct Progress(Option<indicatif::ProgressBar>);

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

    pub fn hidden() -> Self {
        Progress(None)
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

/// Runs `options.checks` in order. `on_done` sees each result as soon as it is known (the
/// human output prints check by check).
pub async fn run(ctx: &Context, options: &Options, mut on_done: impl FnMut(&CheckResult)) -> Report {
    let mut report = Report { checks: Vec::new(), strict: options.strict };
    for &id in &options.checks {
        ctx.progress.set(format!("{}…", id.as_str()));
        let started = Instant::now();
        let mut result = run_one(ctx, options, id, &report.checks).await;
        result.duration = started.elapsed();
        if options.network_errors_warn {
            result.soften_network_failures();
        }
        on_done(&result);
        report.checks.push(result);
    }
    ctx.progress.set("");
    report
}

async fn run_one(ctx: &Context, options: &Options, id: CheckId, before: &[CheckResult]) -> CheckResult {
    // A bound on the whole check, above the per-step limits, so the doctor always ends.
    let limit = ctx.step_timeout * 6 + Duration::from_secs(5);
    let limit = match id {
        CheckId::PingDify => limit * options.ping.count.min(100),
        CheckId::TestStream => {
            let idle = ctx.config().map(|c| ctx.doctor_config(c).stream_idle_timeout).unwrap_or(ctx.step_timeout);
            limit.max(idle * 4)
        }
        _ => limit,
    };
    let check = async {
        match id {
            CheckId::CheckConfig => check_config::run(ctx),
            CheckId::CheckPort => check_port::run(ctx).await,
            CheckId::InspectMappings => inspect_mappings::run(ctx, &options.mappings).await,
            CheckId::PingDify => ping_dify::run(ctx, &options.ping).await,
            CheckId::TestKey => test_key::run(ctx, &options.key, before).await,
            CheckId::TestStream => test_stream::run(ctx, &options.stream, before).await,
        }
    };
    match tokio::time::timeout(limit, check).await {
        Ok(result) => result,
        Err(_) => {
            let mut result = CheckResult::new(id.as_str());
            result.summary(format!("did not finish within {}", report::format_duration(limit)));
            result.network_fail(
                format!("{} was still waiting after {}", id.as_str(), report::format_duration(limit)),
                Some("a network step hangs: run `opendify doctor ping-dify`, or raise --timeout".into()),
            );
            result
        }
    }
}

/// `opendify doctor …`: runs, prints, and returns the exit code (0, 1 or 2).
pub fn main(args: &DoctorArgs, load: &LoadOptions) -> u8 {
    let options = match Options::from_args(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if args.list {
        print_list(options.json);
        return 0;
    }
    colored::control::set_override(options.colour);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 2;
        }
    };
    let loaded = config::load(load);
    let code = runtime.block_on(async {
        if let Some(bundle_options) = &options.report {
            return bundle::main(loaded, &options, bundle_options).await;
        }
        let progress = Progress::new(!options.json);
        let ctx = Context::new(loaded, &options, progress.clone());
        let render = RenderOptions { colour: options.colour, verbose: options.verbose };
        let report = run(&ctx, &options, |result| {
            if !options.json {
                progress.print(&report::render_check(result, render));
            }
        })
        .await;
        progress.finish();
        if options.json {
            stdout(&format!("{}\n", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()));
        } else {
            progress.print(&report.render_summary(render));
        }
        report.exit_code()
    });
    // Background work (pooled connections, resolver tasks) must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

fn print_list(json: bool) {
    if json {
        let checks: Vec<_> =
            ORDER.iter().map(|id| serde_json::json!({"id": id.as_str(), "description": id.describe()})).collect();
        stdout(&format!("{}\n", serde_json::json!({ "checks": checks })));
        return;
    }
    for id in ORDER {
        stdout(&format!("{:<16} {}\n", id.as_str(), id.describe()));
    }
}

/// Writes to stdout; a closed pipe (`opendify doctor | head`) is not an error worth a panic.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
