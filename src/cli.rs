//! The command line: clap definitions only. Validation of settings happens in `config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use reqwest::Url;

use crate::config::LoadOptions;

#[derive(Debug, Parser)]
#[command(name = "opendify", version, about = "An OpenAI-compatible gateway for Dify apps", propagate_version = true)]
pub struct Cli {
    /// Read settings from this file instead of ./.env
    #[arg(long, global = true, value_name = "PATH", env = "OPENDIFY_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OpenAI-compatible server
    Serve(ServeArgs),
    /// Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations
    Doctor(DoctorArgs),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: SERVER_HOST] [default: 127.0.0.1]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on [env: SERVER_PORT] [default: 5000]
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Log level: error, warn, info, debug, trace [env: LOG_LEVEL]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl Cli {
    /// Parses the command line, with several doctor checks by name
    /// (`opendify doctor check-config ping-dify --count 3`): clap takes one subcommand, so the
    /// arguments are cut where a second check begins and each part is parsed on its own.
    pub fn parse_chained() -> Cli {
        match Self::try_parse_chained(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }

    pub fn try_parse_chained<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let (first, more) = split_doctor_checks(&args);
        let mut cli = Cli::try_parse_from(first)?;
        if let Command::Doctor(doctor) = &mut cli.command {
            for part in more {
                let mut command = Cli::command();
                let head = [args[0].clone(), "doctor".into()];
                let matches = command.try_get_matches_from_mut(head.iter().cloned().chain(part))?;
                let Some(("doctor", matches)) = matches.subcommand() else { continue };
                let extra = DoctorArgs::from_arg_matches(matches)?;
                doctor.merge(extra);
            }
        }
        Ok(cli)
    }

    /// The configuration sources this invocation names.
    pub fn load_options(&self) -> LoadOptions {
        let options = LoadOptions { env_file: self.env_file.clone(), ..LoadOptions::default() };
        match &self.command {
            Command::Serve(args) => options
                .override_with("SERVER_HOST", args.host.as_ref())
                .override_with("SERVER_PORT", args.port)
                .override_with("LOG_LEVEL", args.log_level.as_ref()),
            Command::Doctor(DoctorArgs { check: Some(DoctorCommand::CheckPort(args)), .. }) => {
                options.override_with("SERVER_HOST", args.host.as_ref()).override_with("SERVER_PORT", args.port)
            }
            Command::Doctor(_) | Command::Completions { .. } => options,
        }
    }
}

/// How `opendify doctor --help` ends: the checks and the exit codes scripts rely on.
pub const DOCTOR_AFTER_HELP: &str = "\
Checks, fast ones first: check-config, check-port, inspect-mappings, ping-dify, test-key, test-stream.
Run one with `opendify doctor CHECK [its options]`, some with `--only a,b`.
`opendify doctor report` prints a Markdown bundle (nothing secret in it) to paste into an issue.

Exit codes:
  0  no check failed (warnings allowed)
  1  at least one check failed (with --strict, a warning counts as a failure)
  2  the doctor could not run (bad arguments)";

#[derive(Debug, Args)]
#[command(after_help = DOCTOR_AFTER_HELP)]
pub struct DoctorArgs {
    /// Print one JSON document with a stable schema instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Longest wait, in seconds, for each network step [default: 10]
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_seconds, env = "OPENDIFY_DOCTOR_TIMEOUT")]
    pub timeout: Option<f64>,
    /// Run only these checks (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CHECK,...")]
    pub only: Vec<CheckId>,
    /// Name the checks and exit
    #[arg(long)]
    pub list: bool,
    /// Count warnings as failures (exit code 1)
    #[arg(long, global = true)]
    pub strict: bool,
    /// Report network failures as failures or, for flaky CI, as warnings
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "MODE",
        default_value_t = NetworkErrors::Fail,
        env = "OPENDIFY_DOCTOR_NETWORK_ERRORS"
    )]
    pub network_errors: NetworkErrors,
    /// Never colour the output (NO_COLOR is honoured too)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Show every check's details, not only its problems
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub check: Option<DoctorCommand>,

    /// Checks named after the first one (`doctor check-config ping-dify`), in order.
    #[arg(skip)]
    pub more: Vec<DoctorCommand>,
}

impl DoctorArgs {
    /// Takes in a later check's part of the command line: its check and any global flag.
    fn merge(&mut self, other: DoctorArgs) {
        self.json |= other.json;
        self.strict |= other.strict;
        self.no_color |= other.no_color;
        self.verbose |= other.verbose;
        self.list |= other.list;
        self.timeout = other.timeout.or(self.timeout);
        if other.network_errors == NetworkErrors::Warn {
            self.network_errors = NetworkErrors::Warn;
        }
        self.only.extend(other.only);
        self.more.extend(other.check);
        self.more.extend(other.more);
    }

    /// Every check named on the command line, in order.
    pub fn named_checks(&self) -> impl Iterator<Item = &DoctorCommand> {
        self.check.iter().chain(&self.more)
    }
}

/// Cuts `opendify … doctor [flags] A [A's args] B [B's args]` into the part clap parses as
/// usual (up to B) and one part per further check. A word is a check name only where a value
/// is not expected: `--message ping-dify` stays the message.
fn split_doctor_checks(args: &[std::ffi::OsString]) -> (Vec<std::ffi::OsString>, Vec<Vec<std::ffi::OsString>>) {
    let cli = Cli::command();
    let Some(doctor_at) = args.iter().position(|a| a == "doctor") else { return (args.to_vec(), Vec::new()) };
    let Some(doctor) = cli.find_subcommand("doctor") else { return (args.to_vec(), Vec::new()) };
    let takes_value = |command: &clap::Command, flag: &str| {
        let (name, inline) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        !inline
            && command.get_arguments().chain(doctor.get_arguments()).any(|arg| {
                let long = name.strip_prefix("--").is_some_and(|l| arg.get_long() == Some(l));
                let short = name.len() == 2
                    && name.starts_with('-')
                    && !name.starts_with("--")
                    && arg.get_short().is_some_and(|c| name.ends_with(c));
                (long || short) && arg.get_action().takes_values()
            })
    };
    let mut parts: Vec<Vec<std::ffi::OsString>> = vec![args[..=doctor_at].to_vec()];
    let mut current: Option<&clap::Command> = None;
    let mut skip_value = false;
    for arg in &args[doctor_at + 1..] {
        let text = arg.to_string_lossy();
        if skip_value {
            skip_value = false;
        } else if text.starts_with('-') {
            skip_value = takes_value(current.unwrap_or(doctor), &text);
        } else if let Some(check) = doctor.find_subcommand(text.as_ref()) {
            if current.is_some() && check.get_name() != "report" {
                parts.push(Vec::new());
            }
            current = Some(check);
        }
        if let Some(part) = parts.last_mut() {
            part.push(arg.clone());
        }
    }
    let first = parts.remove(0);
    (first, parts)
}

/// The checks `opendify doctor` runs, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum CheckId {
    CheckConfig,
    CheckPort,
    InspectMappings,
    PingDify,
    TestKey,
    TestStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkErrors {
    Fail,
    Warn,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DoctorCommand {
    /// Which .env was loaded, every setting with its source, every problem with its fix
    CheckConfig,
    /// Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not
    CheckPort(CheckPortArgs),
    /// The conversation store and the chat-to-conversation mappings in it
    InspectMappings(InspectMappingsArgs),
    /// DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer
    PingDify(PingDifyArgs),
    /// Each model's app key against Dify's /info and /parameters
    TestKey(TestKeyArgs),
    /// One streaming request, timed, to Dify or through a running opendify
    TestStream(TestStreamArgs),
    /// A Markdown bundle for an issue: OS, version, redacted config, every check, log tail
    Report(ReportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckPortArgs {
    /// Port to check instead of SERVER_PORT
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Address to check instead of SERVER_HOST
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InspectMappingsArgs {
    /// Only the mappings of this user
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only the mapping of this chat id
    #[arg(long, value_name = "CHAT")]
    pub chat: Option<String>,
    /// Remove expired mappings (the only option that changes anything)
    #[arg(long)]
    pub prune: bool,
    /// Ask Dify whether each listed conversation still exists
    #[arg(long)]
    pub verify: bool,
    /// Show at most this many mappings
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Clone, Args)]
pub struct PingDifyArgs {
    /// Also resolve with this DNS server (IP or IP:PORT) and compare
    #[arg(long, value_name = "SERVER", value_parser = parse_dns_server)]
    pub dns: Option<SocketAddr>,
    /// Repeat the TCP and HTTP steps N times and show min/avg/max and loss
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
}

#[derive(Debug, Clone, Args)]
pub struct TestKeyArgs {
    /// Models to test [default: all configured]
    #[arg(value_name = "MODEL")]
    pub models: Vec<String>,
    /// Also send one tiny message per model (as user opendify-doctor; it costs tokens)
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TestStreamArgs {
    /// Model to test [default: the first configured]
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// Go through a running opendify at this URL (e.g. http://127.0.0.1:5000) instead of to Dify
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    pub via: Option<Url>,
    /// The message to send
    #[arg(long, value_name = "TEXT", default_value = "Say hello in five words.")]
    pub message: String,
    /// The user to send as (X-OpenWebUI-User-Id with --via, Dify's `user` without)
    #[arg(long, value_name = "USER", default_value = "opendify-doctor")]
    pub user: String,
    /// The client API to test through opendify; other than chat it goes through the
    /// opendify at --via, or at SERVER_HOST:SERVER_PORT without it
    #[arg(long, value_enum, default_value_t = TestApi::Chat)]
    pub api: TestApi,
}

/// A client API opendify serves, as `doctor test-stream --api` sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum TestApi {
    /// OpenAI Chat Completions, POST /v1/chat/completions
    #[default]
    Chat,
    /// OpenAI Responses, POST /v1/responses
    Responses,
    /// Anthropic Messages, POST /v1/messages
    Messages,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Write the report to this file instead of stdout
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// How many lines of the log file to include
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub log_lines: usize,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => Ok(secs),
        _ => Err(format!("expected a number of seconds between 0 and 3600, got {text:?}")),
    }
}

/// `8.8.8.8`, `8.8.8.8:53`, `2001:4860:4860::8888` or `[2001:4860:4860::8888]:53`.
pub fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("expected a DNS server IP address, optionally with :PORT, got {text:?}"))
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    match Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url),
        _ => Err(format!("expected an http:// or https:// URL such as http://127.0.0.1:5000, got {text:?}")),
    }
}
