//! `fwd table`: each backend of a service with its weight, Maglev slots and share, and the table
//! fingerprint that every box with the same config must show.

use anyhow::{bail, Context, Result};
use fwd_control::config::load_config;
use fwd_control::tables::{table_reports, InterfaceFacts, LiveState, SnapshotBuilder};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// The service: `VIP:PORT/PROTO` (`198.18.100.1:80/tcp`, `[fd00:18:100::1]:80/tcp`,
    /// `198.18.100.1:*/udp` for all ports) or its name.
    #[arg(long)]
    pub service: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let loaded = load_config(&args.config)?;
    let (snap, _) = SnapshotBuilder::new()
        .build(&loaded.config, &InterfaceFacts::default(), &LiveState::default())
        .context("building the tables")?;
    let Some(index) = loaded
        .config
        .services
        .iter()
        .position(|s| s.name == args.service || s.key().to_string() == args.service)
    else {
        let services: Vec<String> =
            loaded.config.services.iter().map(|s| format!("{} ({})", s.key(), s.name)).collect();
        bail!("no service {:?}; the config's services are: {}", args.service, services.join(", "));
    };
    let report = &table_reports(&loaded.config, &snap)[index];
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "service {}  mode {}  table size {}  fingerprint {}",
        report.service, report.mode, report.size, report.fingerprint
    );
    println!("  {:<32} {:>8} {:>8} {:>8} {:>8}", "backend", "weight", "state", "slots", "share");
    for b in &report.backends {
        let mut addr = fwd_control::config::host_port(b.address, b.port);
        if b.fallback {
            addr.push_str(" (fallback)");
        }
        println!("  {:<32} {:>8} {:>8} {:>8} {:>7.2}%", addr, b.weight, b.state, b.slots, b.share_percent);
    }
    Ok(())
}
