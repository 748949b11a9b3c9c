//! `fwd`: the load balancer binary and its operator commands.
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "fwd", version, about = "L4 load balancer: AF_XDP data plane, Maglev, direct server return")]
struct Cli {}

fn main() -> Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
