//! Parses the command line, runs the command, maps the outcome to an exit code:
//! 0 success, 1 a problem found (doctor), 2 could not run (bad configuration or arguments).

use std::process::ExitCode;

use clap::CommandFactory;
use colored::Colorize;

use opendify::cli::{Cli, Command};
use opendify::config;

fn main() -> ExitCode {
    let cli = Cli::parse_chained();
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "opendify", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Serve(_) => serve(&cli),
        Command::Doctor(args) => ExitCode::from(opendify::doctor::main(args, &cli.load_options())),
    }
}

fn serve(cli: &Cli) -> ExitCode {
    let options = cli.load_options();
    let loaded = config::load(&options);
    if !loaded.problems.is_empty() {
        eprint!("{}", loaded.problem_report());
        eprintln!("❌ Startup aborted due to configuration errors");
        return ExitCode::from(2);
    }
    let Some(config) = loaded.config.clone() else {
        return ExitCode::from(2);
    };
    // Declared before the runtime so it is dropped after it: queued log lines are flushed.
    let _log_guard = match opendify::logging::init_serve(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("❌ {e:#}");
            return ExitCode::from(2);
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("⚠️ {}", warning.message);
    }
    // One worker by default: opendify waits on sockets, and a second worker mostly wakes up to
    // find nothing to steal (about 10% more CPU per request, and a second malloc arena).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{} cannot start the async runtime: {e}", "❌".red());
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        let state = opendify::server::AppState::build(loaded, options).await?;
        opendify::server::serve(state).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("❌ {e:#}");
            ExitCode::from(2)
        }
    }
}
