//! `fwd --nic IF --cores C --config FILE`: the forwarder.
//!
//! Start-up checks everything that can be wrong before any packet is touched (config, interface,
//! queues, cores, locked memory) and fails with a message that says what to change. Then:
//! - one worker thread per core, pinned, owning one AF_XDP [`Port`] (queue i for the i-th core)
//!   and one pipeline [`Worker`]; it busy-polls: receive a batch, run the pipeline against the
//!   snapshot it loaded for this batch, transmit, and publish its counters, never locking;
//! - the control loop on the main thread: it resolves next-hop MACs from the kernel's neighbour
//!   table, rebuilds and publishes snapshots when something changed, reloads the config on SIGHUP,
//!   prints the counters at `--stats`, and on SIGINT/SIGTERM stops the workers and detaches the XDP
//!   program.

use crate::netinfo::{self, Interface};
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use fwd_afxdp::{AttachMode, BindMode, Port, PortConfig, XdpProgram};
use fwd_control::config::{load_config, parse_cores, Config, XdpMode};
use fwd_control::tables::{InterfaceFacts, LiveState, SnapshotBuilder};
use fwd_dataplane::conntrack::Timeouts;
use fwd_dataplane::counters::{DropReason, SharedCounters, WorkerCounters};
use fwd_dataplane::io::{PacketIo, MAX_BATCH};
use fwd_dataplane::pipeline::{Worker, WorkerConfig};
use fwd_dataplane::snapshot::{ForwardMode, Snapshot};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindArg {
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The interface to forward on (overrides `nic` in the config).
    #[arg(long)]
    pub nic: Option<String>,
    /// Cores to run workers on: `2-7`, `0,2,4` (overrides `cores` in the config).
    #[arg(long)]
    pub cores: Option<String>,
    /// NIC queues, one per core in the same order (default: 0, 1, ... in core order).
    #[arg(long)]
    pub queues: Option<String>,
    /// The TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Force how the XDP program is attached (overrides `xdp_mode` in the config).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// How AF_XDP sockets bind: zero-copy where the driver has it (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    pub bind: BindArg,
    /// UMEM frames per queue (a power of two).
    #[arg(long, default_value_t = 4096)]
    pub umem_frames: u32,
    /// Print the summed counters every stats interval.
    #[arg(long)]
    pub stats: bool,
    /// After 1024 empty polls in a row, sleep this many microseconds before polling again
    /// (0: pure busy polling, the default; set it on boxes where workers share cores).
    #[arg(long, default_value_t = 0)]
    pub idle_sleep_us: u64,
    /// Stop after this many seconds (for tests and demos; default: run until a signal).
    #[arg(long)]
    pub run_for: Option<f64>,
}

/// What a worker thread returns when it stops.
struct WorkerExit {
    core: usize,
    queue: u32,
    port_stats: fwd_afxdp::PortStats,
}

pub fn run(args: &Args) -> Result<()> {
    let config_path = args.config.clone().context("--config FILE is required to run the forwarder")?;
    let loaded = load_config(&config_path).map_err(|e| ExitWith(2, e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let mut config = loaded.config;
    let nic = args
        .nic
        .clone()
        .or(config.nic.clone())
        .context("no interface: give --nic IF or `nic` in the config")?;
    let cores_text = args.cores.clone().or(config.cores.clone()).unwrap_or_else(|| "0".to_string());
    let cores = parse_cores(&cores_text).map_err(|e| anyhow::anyhow!("--cores {cores_text:?}: {e}"))?;
    let queues: Vec<u32> = match &args.queues {
        Some(q) => parse_cores(q)
            .map_err(|e| anyhow::anyhow!("--queues {q:?}: {e}"))?
            .into_iter()
            .map(|q| q as u32)
            .collect(),
        None => (0..cores.len() as u32).collect(),
    };
    if queues.len() != cores.len() {
        bail!(
            "--queues names {} queues but --cores {} cores: give one queue per core",
            queues.len(),
            cores.len()
        );
    }
    let iface = netinfo::interface(&nic)?;
    if let Some(&q) = queues.iter().find(|&&q| q as usize >= iface.rx_queues) {
        bail!(
            "interface {nic} has {} receive queue(s), queue {q} is needed for {} worker(s): raise them with \
             `ethtool -L {nic} combined {}`, or use fewer cores",
            iface.rx_queues,
            cores.len(),
            queues.iter().max().map_or(1, |m| m + 1)
        );
    }
    let available: HashSet<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if let Some(c) = cores.iter().find(|c| !available.contains(c)) {
        let mut list: Vec<usize> = available.into_iter().collect();
        list.sort_unstable();
        bail!("core {c} does not exist or is not allowed for this process (cores here: {list:?})");
    }

    let mut builder = SnapshotBuilder::new();
    let facts = InterfaceFacts { mac: iface.mac, ipv4: iface.ipv4, ipv6: iface.ipv6 };
    let mut resolver = NextHopResolver::default();
    let mut live = LiveState { next_hops: resolver.resolve(&iface, &config), ..LiveState::default() };
    let (snap, _) = builder.build(&config, &facts, &live)?;
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));

    let mut program = XdpProgram::load().context("loading fwd's XDP program")?;
    let attach_mode = match args.xdp_mode.map(|m| match m {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    }) {
        Some(m) => m,
        None => config.xdp_mode,
    };
    let report = program
        .attach(
            &nic,
            match attach_mode {
                XdpMode::Auto => AttachMode::Auto,
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
            },
        )
        .with_context(|| format!("attaching the XDP program to {nic}"))?;
    eprintln!("fwd: XDP program attached to {nic} ({report:?})");
    program.sync_vips(&snapshots.load().vip_addresses()).context("filling the XDP VIP map")?;

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()).context("installing SIGHUP")?;

    let port_config = PortConfig {
        frame_count: args.umem_frames,
        bind_mode: match args.bind {
            BindArg::Auto => BindMode::Auto,
            BindArg::Copy => BindMode::Copy,
            BindArg::ZeroCopy => BindMode::ZeroCopy,
        },
        ..PortConfig::default()
    };
    let worker_config = WorkerConfig {
        conn_capacity: config.conntrack.capacity_per_core as usize,
        timeouts: timeouts(&config),
    };
    let mut shared = Vec::new();
    let mut workers: Vec<JoinHandle<WorkerExit>> = Vec::new();
    for (&core, &queue) in cores.iter().zip(&queues) {
        let port = Port::open(&nic, queue, &port_config)
            .with_context(|| format!("opening queue {queue} of {nic}"))?;
        program.register_port(&port).with_context(|| format!("registering queue {queue}'s socket"))?;
        eprintln!("fwd: worker on core {core}: {nic} queue {queue}, {} mode", port.bound_mode());
        let counters = Arc::new(SharedCounters::default());
        shared.push(counters.clone());
        let (snapshots, stop) = (snapshots.clone(), stop.clone());
        let idle_sleep = Duration::from_micros(args.idle_sleep_us);
        workers.push(
            std::thread::Builder::new()
                .name(format!("fwd-worker-{core}"))
                .spawn(move || worker_loop(core, port, worker_config, snapshots, counters, stop, idle_sleep))
                .context("starting a worker thread")?,
        );
    }

    // The control loop.
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_totals = WorkerCounters::default();
    let refresh = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(refresh);
        if args.run_for.is_some_and(|s| started.elapsed().as_secs_f64() >= s) {
            break;
        }
        if workers.iter().any(|w| w.is_finished()) {
            eprintln!("fwd: a worker stopped unexpectedly; shutting down");
            break;
        }
        let mut changed = false;
        if reload.swap(false, Ordering::Relaxed) {
            match load_config(&config_path) {
                Ok(l)
                    if l.config.nic.is_none()
                        || l.config.nic.as_deref() == Some(nic.as_str())
                        || args.nic.is_some() =>
                {
                    eprintln!("fwd: reloaded {}: {}", config_path.display(), l.config.summary());
                    config = l.config;
                    changed = true;
                }
                Ok(_) => {
                    eprintln!("fwd: reload refused: the config names another interface; restart to move")
                }
                Err(e) => eprintln!("fwd: reload failed, keeping the running config: {e}"),
            }
        }
        let next_hops = resolver.resolve(&iface, &config);
        if next_hops != live.next_hops || changed {
            live.next_hops = next_hops;
            match builder.build(&config, &facts, &live) {
                Ok((snap, changes)) => {
                    for c in changes {
                        eprintln!(
                            "fwd: service {}: table rebuilt, {} of {} slots moved",
                            c.service, c.moved_slots, c.size
                        );
                    }
                    let vips = snap.vip_addresses();
                    snapshots.store(Arc::new(snap));
                    if let Err(e) = program.sync_vips(&vips) {
                        eprintln!("fwd: updating the XDP VIP map failed: {e}");
                    }
                }
                Err(e) => eprintln!("fwd: rebuilding the tables failed, keeping the previous ones: {e}"),
            }
        }
        if args.stats && last_stats.elapsed() >= config.stats.interval {
            let totals = sum(&shared);
            print_stats(&totals, &last_totals, last_stats.elapsed());
            last_totals = totals;
            last_stats = Instant::now();
        }
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        match w.join() {
            Ok(exit) => eprintln!(
                "fwd: worker on core {} (queue {}) stopped; port: {:?}",
                exit.core, exit.queue, exit.port_stats
            ),
            Err(_) => eprintln!("fwd: a worker panicked"),
        }
    }
    program.detach().context("detaching the XDP program")?;
    let totals = sum(&shared);
    println!("{}", totals_line(&totals));
    Ok(())
}

fn worker_loop(
    core: usize,
    mut port: Port,
    config: WorkerConfig,
    snapshots: Arc<ArcSwap<Snapshot>>,
    shared: Arc<SharedCounters>,
    stop: Arc<AtomicBool>,
    idle_sleep: Duration,
) -> WorkerExit {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("fwd: could not pin the worker to core {core}; it runs unpinned");
    }
    let mut worker = Worker::new(config);
    let start = Instant::now();
    let mut empty_streak = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let snap = snapshots.load();
        let now_ms = start.elapsed().as_millis() as u64;
        let received =
            port.poll(MAX_BATCH, &mut |batch, verdicts| worker.process_batch(&snap, batch, verdicts, now_ms));
        if received > 0 {
            empty_streak = 0;
            shared.publish(worker.counters());
        } else {
            worker.note_empty_poll();
            empty_streak += 1;
            if empty_streak.is_multiple_of(1024) {
                shared.publish(worker.counters());
                if !idle_sleep.is_zero() {
                    std::thread::sleep(idle_sleep);
                }
            }
        }
    }
    shared.publish(worker.counters());
    WorkerExit { core, queue: port.queue(), port_stats: port.stats() }
}

fn timeouts(config: &Config) -> Timeouts {
    let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
    Timeouts {
        tcp_established_ms: ms(config.conntrack.tcp_established_timeout),
        tcp_closing_ms: ms(config.conntrack.tcp_closing_timeout),
        udp_ms: ms(config.conntrack.udp_timeout),
    }
}

fn sum(shared: &[Arc<SharedCounters>]) -> WorkerCounters {
    let mut total = WorkerCounters::default();
    for s in shared {
        total.add(&s.read());
    }
    total
}

fn drops_text(c: &WorkerCounters) -> String {
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| c.drops_of(**r) > 0)
        .map(|r| format!("{}={}", r.name(), c.drops_of(*r)))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(" ")
    }
}

fn totals_line(c: &WorkerCounters) -> String {
    format!(
        "fwd totals: rx {} tx {} pass {} icmp_generated {} drops {} ({})",
        c.rx_packets,
        c.tx_packets,
        c.pass,
        c.icmp_generated,
        c.total_drops(),
        drops_text(c)
    )
}

fn print_stats(now: &WorkerCounters, before: &WorkerCounters, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    let polls = (now.batches + now.empty_polls).saturating_sub(before.batches + before.empty_polls);
    let busy = if polls == 0 { 0.0 } else { 100.0 * (now.batches - before.batches) as f64 / polls as f64 };
    eprintln!(
        "fwd stats: rx {:.0} pps, tx {:.0} pps, pass {}, drops {} ({}), busy {:.1}%",
        rate(now.rx_packets, before.rx_packets),
        rate(now.tx_packets, before.tx_packets),
        now.pass,
        now.total_drops(),
        drops_text(now),
        busy
    );
}

/// Finds the next-hop MAC of every backend: its own neighbour entry for `l2`, the neighbour entry
/// of the route's gateway for tunnels. Routes are cached (they rarely change); neighbours are read
/// every time; unknown neighbours are solicited so the next refresh finds them.
#[derive(Debug, Default)]
struct NextHopResolver {
    routes: HashMap<IpAddr, (IpAddr, Instant)>,
}

const ROUTE_CACHE: Duration = Duration::from_secs(30);

impl NextHopResolver {
    fn resolve(&mut self, iface: &Interface, config: &Config) -> HashMap<IpAddr, [u8; 6]> {
        let neighbours = netinfo::neighbours(&iface.name).unwrap_or_default();
        let mut out = HashMap::new();
        for s in &config.services {
            let fallback_mode = s.fallback_mode.unwrap_or(ForwardMode::Ipip);
            let all =
                s.backends.iter().map(|b| (b, s.mode)).chain(s.fallback.iter().map(|b| (b, fallback_mode)));
            for (b, mode) in all {
                if b.mac.is_some() || out.contains_key(&b.address) {
                    continue;
                }
                let hop = match mode {
                    ForwardMode::L2 => b.address,
                    _ => self.next_hop(b.address),
                };
                match neighbours.get(&hop) {
                    Some(mac) => {
                        out.insert(b.address, *mac);
                    }
                    None => netinfo::solicit(hop),
                }
            }
        }
        out
    }

    fn next_hop(&mut self, addr: IpAddr) -> IpAddr {
        if let Some((hop, at)) = self.routes.get(&addr) {
            if at.elapsed() < ROUTE_CACHE {
                return *hop;
            }
        }
        let hop = netinfo::next_hop(addr).unwrap_or(addr);
        self.routes.insert(addr, (hop, Instant::now()));
        hop
    }
}

/// An error that carries its own exit code (2: invalid configuration).
#[derive(Debug)]
pub struct ExitWith(pub u8, pub String);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitWith {}
