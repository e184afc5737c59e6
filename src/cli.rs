//! The command line: clap definitions only. Validation of settings happens in `config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// The configuration sources this invocation names.
    pub fn load_options(&self) -> LoadOptions {
        let options = LoadOptions { env_file: self.env_file.clone(), ..LoadOptions::default() };
        match &self.command {
            Command::Serve(args) => options
                .override_with("SERVER_HOST", args.host.as_ref())
                .override_with("SERVER_PORT", args.port)
                .override_with("LOG_LEVEL", args.log_level.as_ref()),
            Command::Completions { .. } => options,
        }
    }
}
