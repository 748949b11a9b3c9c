//! `fwd`: the load balancer binary and its operator commands.
#![forbid(unsafe_code)]

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "fwd", version, about = "L4 load balancer: AF_XDP data plane, Maglev, direct server return")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file: print a summary and warnings, exit 2 if it is invalid.
    CheckConfig(cmd::check_config::Args),
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => Ok(cmd::check_config::run(&args)),
    }
}
