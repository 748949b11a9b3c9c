//! `fwd`: the load balancer binary and its operator commands.
#![forbid(unsafe_code)]

mod cmd;
mod forwarder;
mod netinfo;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Large blocks (each worker's connection table) on transparent huge pages: a lookup per packet
/// at a random place in tens of MB must not also miss the TLB.
#[global_allocator]
static ALLOC: fwd_afxdp::HugePageAlloc = fwd_afxdp::HugePageAlloc;

#[derive(Parser, Debug)]
#[command(name = "fwd", version, about = "L4 load balancer: AF_XDP data plane, Maglev, direct server return")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: run the forwarder (`fwd --nic IF --cores C --config FILE`).
    #[command(flatten)]
    run: forwarder::Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file: print a summary and warnings, exit 2 if it is invalid.
    CheckConfig(cmd::check_config::Args),
    /// Which backend a new flow goes to, computed by the data plane's own code.
    Which(cmd::which::Args),
    /// A service's Maglev table: each backend's weight, slots and share, and the fingerprint.
    Table(cmd::table::Args),
    /// Services, backends, health, tables and traffic of the running fwd (like `ipvsadm -Ln --stats`).
    Status(cmd::admin::StatusArgs),
    /// Per-worker counters of the running fwd: rx, tx, pass, drops by reason, batch fill and time.
    Stats(cmd::admin::StatusArgs),
    /// Send no new flows to a backend; its existing flows continue until they end.
    Drain(cmd::admin::DrainArgs),
    /// Undo `fwd drain`.
    Undrain(cmd::admin::DrainArgs),
    /// Re-read the running fwd's configuration file (as SIGHUP does) and report the outcome.
    Reload(cmd::admin::ReloadArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            match e.downcast_ref::<forwarder::ExitWith>() {
                Some(forwarder::ExitWith(code, _)) => ExitCode::from(*code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => forwarder::run(&cli.run).map(|()| ExitCode::SUCCESS),
        Some(Command::CheckConfig(args)) => Ok(cmd::check_config::run(&args)),
        Some(Command::Which(args)) => cmd::which::run(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Table(args)) => cmd::table::run(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Status(args)) => cmd::admin::status(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Stats(args)) => cmd::admin::stats(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Drain(args)) => cmd::admin::drain(&args, true).map(|()| ExitCode::SUCCESS),
        Some(Command::Undrain(args)) => cmd::admin::drain(&args, false).map(|()| ExitCode::SUCCESS),
        Some(Command::Reload(args)) => cmd::admin::reload(&args).map(|()| ExitCode::SUCCESS),
    }
}
