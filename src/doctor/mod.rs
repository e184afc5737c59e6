//! `opendify doctor`: the original's troubleshooting guide, automated. Each check runs the
//! code `serve` runs (the config loader, the Dify client, the bridge, the conversation
//! store) and says what is wrong and the exact fix; people get one line per check, CI gets
//! one JSON document and an exit code (0 nothing failed, 1 a check failed, 2 could not run).
//!
//! This file holds the validated options, the order checks run in, the run itself (each
//! check bounded in time, typed [`context::Facts`] handed from one check to the next) and
//! `main`. Each check lives in its own file; [`report`] holds the result type and its
//! renderings. The modules, each with what it uses inside the doctor; there is no cycle,
//! and nothing uses this file:
//!
//! ```text
//! mod.rs            options, run, main           → every module below
//!   bundle          `doctor report` (Markdown)   → check_config (its id), context, files, cert, report
//!   check_config    check-config                 → context, files, report
//!   check_port      check-port                   → context, report
//!   inspect_mappings  inspect-mappings           → context, files, cert, report
//!   ping_dify       ping-dify                    → context, cert, report
//!   test_key        test-key                     → context, probe, report
//!   test_stream     test-stream                  → context, probe, report
//!   probe           explain a DifyError, measure one stream to Dify → context, report
//!   context         Context, Facts, Progress     → report
//!   report          CheckResult, Issue, renderings  (uses nothing in the doctor)
//!   files           directories and files: writable, mode, owner  (nothing)
//!   cert            the X.509 fields people read  (nothing)
//! ```

mod bundle;
mod cert;
mod check_config;
mod check_port;
mod context;
mod files;
mod inspect_mappings;
mod ping_dify;
mod probe;
mod report;
mod test_key;
mod test_stream;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use context::{Context, Facts, Progress, stdout};
use report::{CheckResult, RenderOptions, Report};

use crate::cli::{CheckId, DoctorArgs, DoctorCommand, NetworkErrors};
use crate::config::{self, LoadOptions, Loaded};
use crate::finding::Finding;

pub use ping_dify::PingOptions;

/// Every check, in the order a full run goes: local and fast first, the network last.
pub(crate) const ORDER: &[CheckId] = &[
    CheckId::CheckConfig,
    CheckId::CheckPort,
    CheckId::InspectMappings,
    CheckId::PingDify,
    CheckId::TestKey,
    CheckId::TestStream,
];

impl CheckId {
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn describe(self) -> &'static str {
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
    pub(crate) json: bool,
    pub(crate) strict: bool,
    pub(crate) network_errors_warn: bool,
    pub(crate) colour: bool,
    pub(crate) verbose: bool,
    /// `--timeout`, when given.
    pub(crate) timeout: Option<Duration>,
    /// The checks to run, in order.
    pub checks: Vec<CheckId>,
    pub ping: PingOptions,
    pub(crate) key: test_key::KeyOptions,
    pub(crate) stream: test_stream::StreamOptions,
    pub(crate) mappings: inspect_mappings::MappingOptions,
    /// `doctor report`: where the Markdown goes and how much log it carries.
    pub(crate) report: Option<bundle::BundleOptions>,
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
    /// What the checks of this run share.
    fn context(&self, loaded: Loaded, progress: Progress) -> Context {
        Context::new(loaded, self.timeout, self.checks.contains(&CheckId::CheckConfig), progress)
    }

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
            ping: PingOptions::default(),
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
            if let Some(id) = options.take(check)
                && !options.checks.contains(&id)
            {
                options.checks.push(id);
            }
        }
        Ok(options)
    }

    /// Takes the options of a check named on the command line; returns the check to run
    /// (none for `report`, which runs them all).
    fn take(&mut self, check: &DoctorCommand) -> Option<CheckId> {
        Some(match check {
            DoctorCommand::CheckConfig => CheckId::CheckConfig,
            DoctorCommand::CheckPort(_) => CheckId::CheckPort,
            DoctorCommand::InspectMappings(a) => {
                self.mappings = inspect_mappings::MappingOptions {
                    user: a.user.clone(),
                    chat: a.chat.clone(),
                    prune: a.prune,
                    verify: a.verify,
                    limit: a.limit,
                };
                CheckId::InspectMappings
            }
            DoctorCommand::PingDify(a) => {
                self.ping = PingOptions { dns: a.dns, count: a.count };
                CheckId::PingDify
            }
            DoctorCommand::TestKey(a) => {
                self.key = test_key::KeyOptions { models: a.models.clone(), live: a.live };
                CheckId::TestKey
            }
            DoctorCommand::TestStream(a) => {
                self.stream = test_stream::StreamOptions {
                    model: a.model.clone(),
                    via: a.via.clone(),
                    message: a.message.clone(),
                    user: a.user.clone(),
                    api: a.api,
                };
                CheckId::TestStream
            }
            DoctorCommand::Report(a) => {
                self.report = Some(bundle::BundleOptions { output: a.output.clone(), log_lines: a.log_lines });
                return None;
            }
        })
    }
}

/// Runs `options.checks` in order. `on_done` sees each result as soon as it is known (the
/// human output prints check by check).
pub(crate) async fn run(ctx: &Context, options: &Options, mut on_done: impl FnMut(&CheckResult)) -> Report {
    let mut report = Report { checks: Vec::new(), strict: options.strict };
    let mut facts = Facts::default();
    for &id in &options.checks {
        ctx.progress.set(format!("{}…", id.as_str()));
        let started = Instant::now();
        let mut result = run_one(ctx, options, id, &mut facts).await;
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

/// One check, bounded in time; `facts` carries what earlier checks found to later ones.
async fn run_one(ctx: &Context, options: &Options, id: CheckId, facts: &mut Facts) -> CheckResult {
    let limit = check_limit(ctx, options, id);
    let check = async {
        match id {
            CheckId::CheckConfig => check_config::run(ctx),
            CheckId::CheckPort => check_port::run(ctx).await,
            CheckId::InspectMappings => inspect_mappings::run(ctx, &options.mappings).await,
            CheckId::PingDify => ping_dify::run(ctx, &options.ping, facts).await,
            CheckId::TestKey => test_key::run(ctx, &options.key, facts).await,
            CheckId::TestStream => test_stream::run(ctx, &options.stream, facts).await,
        }
    };
    match tokio::time::timeout(limit, check).await {
        Ok(result) => result,
        Err(_) => {
            let mut result = CheckResult::new(id.as_str());
            result.summary(format!("did not finish within {}", report::format_duration(limit)));
            result.network_fail(Finding::with_fix(
                format!("{} was still waiting after {}", id.as_str(), report::format_duration(limit)),
                "a network step hangs: run `opendify doctor ping-dify`, or raise --timeout",
            ));
            result
        }
    }
}

/// A bound on a whole check, above the per-step limits, so the doctor always ends.
fn check_limit(ctx: &Context, options: &Options, id: CheckId) -> Duration {
    let limit = ctx.step_timeout * 6 + Duration::from_secs(5);
    match id {
        CheckId::PingDify => limit * options.ping.count.min(100),
        CheckId::TestStream => {
            let idle = ctx.config().map(|c| ctx.doctor_config(c).stream_idle_timeout).unwrap_or(ctx.step_timeout);
            limit.max(idle * 4)
        }
        _ => limit,
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
        match &options.report {
            Some(bundle_options) => write_bundle(loaded, &options, bundle_options).await,
            None => run_and_print(loaded, &options).await,
        }
    });
    // Background work (pooled connections, resolver tasks) must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// `opendify doctor [CHECK…]`: lines as each check ends (or one JSON document at the end),
/// then the exit code.
async fn run_and_print(loaded: Loaded, options: &Options) -> u8 {
    let progress = Progress::new(!options.json);
    let ctx = options.context(loaded, progress.clone());
    let render = RenderOptions { colour: options.colour, verbose: options.verbose };
    let report = run(&ctx, options, |result| {
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
}

/// `opendify doctor report`: runs every check and writes the Markdown bundle; 0 once
/// written (the checks' verdicts are in it), 2 when it cannot be written.
async fn write_bundle(loaded: Loaded, options: &Options, bundle_options: &bundle::BundleOptions) -> u8 {
    let gathered = bundle::Gathered::new(&loaded, bundle_options.log_lines);
    let progress = Progress::new(true);
    let ctx = options.context(loaded, progress.clone());
    let report = run(&ctx, options, |_| {}).await;
    progress.finish();
    gathered.write(&ctx.loaded, &report, bundle_options.output.as_deref())
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
