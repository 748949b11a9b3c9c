//! `fwd which`: the backend a new flow goes to, computed by the data plane's own lookup and
//! hashing over the tables control would build from the config (every backend up).

use anyhow::{bail, Context, Result};
use fwd_control::config::load_config;
use fwd_control::tables::{InterfaceFacts, LiveState, SnapshotBuilder};
use fwd_dataplane::flow::{FlowKey, L4Proto};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl From<Proto> for L4Proto {
    fn from(p: Proto) -> L4Proto {
        match p {
            Proto::Tcp => L4Proto::Tcp,
            Proto::Udp => L4Proto::Udp,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// Client address and port: `198.18.0.10:40000` or `[fd00::10]:40000`.
    #[arg(long)]
    pub src: SocketAddr,
    /// VIP and port: `198.18.100.1:80` or `[fd00:18:100::1]:80`.
    #[arg(long)]
    pub dst: SocketAddr,
}

pub fn run(args: &Args) -> Result<()> {
    let loaded = load_config(&args.config)?;
    if args.src.is_ipv4() != args.dst.is_ipv4() {
        bail!("--src {} and --dst {} are of different address families", args.src, args.dst);
    }
    let (snap, _) = SnapshotBuilder::new()
        .build(&loaded.config, &InterfaceFacts::default(), &LiveState::default())
        .context("building the tables")?;
    let proto = L4Proto::from(args.proto);
    let key = FlowKey::new(args.src.ip(), args.dst.ip(), proto.number(), args.src.port(), args.dst.port());
    let Some((service, backend)) = snap.pick_for_new_flow(&key) else {
        let services: Vec<String> = loaded.config.services.iter().map(|s| s.key().to_string()).collect();
        bail!(
            "no service matches {}/{}; the config's services are: {}",
            args.dst,
            proto.name(),
            services.join(", ")
        );
    };
    let svc = &snap.services[service as usize];
    let b = &snap.backends[backend as usize];
    let addr = fwd_control::config::host_port(b.addr, b.port);
    let name = &loaded.config.services[service as usize].name;
    println!("{addr}");
    eprintln!(
        "service {name} ({}), mode {}, table {} fingerprint {}",
        svc.key,
        b.mode.name(),
        svc.table.size(),
        svc.table.fingerprint_hex()
    );
    Ok(())
}
