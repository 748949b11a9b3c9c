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

mod control;
mod worker;

use crate::netinfo;
use anyhow::{bail, Context, Result};
use control::Control;
use fwd_afxdp::{AttachMode, BindMode, IdleWait, Port, PortConfig, XdpProgram};
use fwd_control::admin::{next_call, AdminCall, AdminServer, SocketStats};
use fwd_control::config::{load_config, parse_cores, Config, XdpMode};
use fwd_control::metrics::MetricsServer;
use fwd_dataplane::conntrack::Timeouts;
use fwd_dataplane::counters::{DropReason, WorkerCounters};
use fwd_dataplane::pipeline::{ClassifyAhead, WorkerConfig};
use fwd_dataplane::rewrite::MAX_L2_HEADER_LEN;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{worker_loop, IdlePolicy, WorkerExit, WorkerShared};

/// A worker whose loop has not come round for this long is stuck: fail closed (withdraw every
/// prefix) so that the other boxes take its traffic. Far above any batch (microseconds) or idle
/// nap, far below BGP's hold time.
const WATCHDOG: Duration = Duration::from_secs(2);

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
    /// Bytes per UMEM frame: 2048 receives frames up to 1792 bytes, 4096 up to 3840 (for an
    /// interface MTU above 1770) at twice the locked memory.
    #[arg(long, default_value_t = 2048, value_parser = parse_frame_size)]
    pub frame_size: u32,
    /// Print the summed counters every stats interval.
    #[arg(long)]
    pub stats: bool,
    /// After 1024 empty polls in a row, sleep this many microseconds before polling again
    /// (0: pure busy polling, the default; set it on boxes where workers share cores).
    #[arg(long, default_value_t = 0)]
    pub idle_sleep_us: u64,
    /// After every empty poll, yield the core to any thread waiting for it (a `sched_yield`):
    /// for boxes where the interface's NAPI thread shares a worker's core (veth, copy mode),
    /// which otherwise waits for the scheduler to preempt the polling worker.
    #[arg(long)]
    pub idle_yield: bool,
    /// After `--idle-wait-polls` empty polls in a row, sleep in `ppoll(2)` on the socket until
    /// frames arrive, at most this many microseconds (1-10000; 0: never). It replaces the
    /// `--idle-sleep-us` nap: an idle worker leaves its core free and wakes when frames come.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub idle_wait_us: u64,
    /// Empty polls in a row before `--idle-wait-us` sleeps (1: after every empty poll, which
    /// also frees the core between batches under load, for the latency a wakeup costs).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_wait_polls: u32,
    /// Stop after this many seconds (for tests and demos; default: run until a signal).
    #[arg(long)]
    pub run_for: Option<f64>,
}

pub fn run(args: &Args) -> Result<()> {
    let config_path = args.config.clone().context("--config FILE is required to run the forwarder")?;
    let loaded = load_config(&config_path).map_err(|e| ExitWith(2, e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let config = loaded.config;
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
    keep_off_worker_cores(&available, &cores);
    let port_config = PortConfig {
        frame_count: args.umem_frames,
        frame_size: args.frame_size,
        bind_mode: match args.bind {
            BindArg::Auto => BindMode::Auto,
            BindArg::Copy => BindMode::Copy,
            BindArg::ZeroCopy => BindMode::ZeroCopy,
        },
        ..PortConfig::default()
    };
    if let Some(warning) = frame_fit_warning(&nic, iface.mtu, &port_config) {
        eprintln!("warning: {warning}");
    }

    let epoch = Instant::now();
    let mut program = XdpProgram::load().context("loading fwd's XDP program")?;
    let attach_mode = match args.xdp_mode.map(|m| match m {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    }) {
        Some(m) => m,
        None => config.xdp_mode,
    };
    // The admin socket first: if another fwd serves it, nothing on the interface is touched.
    let (calls_tx, calls) = mpsc::channel::<AdminCall>();
    let admin = AdminServer::start(&config.admin.socket, calls_tx.clone())
        .with_context(|| format!("{}: admin.socket", config_path.display()))?;
    let metrics = match config.admin.metrics_listen {
        Some(addr) => Some(
            MetricsServer::start(addr, calls_tx.clone())
                .with_context(|| format!("{}: admin.metrics_listen", config_path.display()))?,
        ),
        None => None,
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
    let worker_config = WorkerConfig {
        conn_capacity: config.conntrack.capacity_per_core as usize,
        timeouts: timeouts(&config),
        // Whatever the table holds: under load it is never in the caches (see ClassifyAhead).
        classify_ahead: ClassifyAhead::Always,
    };
    let stats_interval = config.stats.interval;
    let mut control = Control::new(config, config_path, iface, program, epoch)?;
    let vips = control.snapshots.load().vip_addresses();
    control.program().sync_vips(&vips).context("filling the XDP VIP map")?;
    eprintln!(
        "fwd: admin socket {}{}",
        admin.path().display(),
        metrics
            .as_ref()
            .map(|m| format!(", metrics on http://{}/metrics", m.local_addr()))
            .unwrap_or_default()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()).context("installing SIGHUP")?;

    let stop_workers = Arc::new(AtomicBool::new(false));
    let mut workers: Vec<JoinHandle<WorkerExit>> = Vec::new();
    for (&core, &queue) in cores.iter().zip(&queues) {
        let port = Port::open(&nic, queue, &port_config)
            .with_context(|| format!("opening queue {queue} of {nic}"))?;
        control
            .program()
            .register_port(&port)
            .with_context(|| format!("registering queue {queue}'s socket"))?;
        eprintln!("fwd: worker on core {core}: {nic} queue {queue}, {} mode", port.bound_mode());
        let shared = Arc::new(WorkerShared::new(core, queue, control.backend_capacity()));
        control.workers.push(shared.clone());
        let (snapshots, stop) = (control.snapshots.clone(), stop_workers.clone());
        let idle = IdlePolicy {
            sleep: Duration::from_micros(args.idle_sleep_us),
            each_empty_poll: IdleWait {
                yield_each: args.idle_yield,
                wait: Duration::from_micros(args.idle_wait_us),
                wait_after: u64::from(args.idle_wait_polls),
            },
        };
        workers.push(
            std::thread::Builder::new()
                .name(format!("fwd-worker-{core}"))
                .spawn(move || worker_loop(port, worker_config, snapshots, shared, stop, idle, epoch))
                .context("starting a worker thread")?,
        );
    }

    // The control loop: admin calls are answered as they come; periodic work every `refresh`.
    let mut last_stats = Instant::now();
    let mut last_totals = WorkerCounters::default();
    let mut last_socket = SocketStats::default();
    let refresh = Duration::from_millis(200);
    let mut next_tick = Instant::now() + refresh;
    let mut health_answered = false;
    let mut failed_closed = false;
    let mut last_round = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let wait = next_tick.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
        if let Some(call) = next_call(&calls, wait) {
            control.answer(call);
            continue;
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + refresh;
        if args.run_for.is_some_and(|s| epoch.elapsed().as_secs_f64() >= s) {
            break;
        }
        if workers.iter().any(|w| w.is_finished()) {
            eprintln!("fwd: a worker stopped unexpectedly; shutting down");
            control.fail_closed("a worker thread stopped");
            break;
        }
        // A control loop that itself did not run for a while (the whole process was stopped, or
        // the box starved it) cannot tell a stuck worker from a paused one: look again next round.
        let control_gap = last_round.elapsed();
        last_round = Instant::now();
        if !failed_closed && control_gap < WATCHDOG / 2 {
            if let Some((core, age)) = control.stalled_worker(WATCHDOG) {
                failed_closed = true;
                let reason = format!("worker on core {core} made no progress for {} ms", age.as_millis());
                eprintln!("fwd: watchdog: {reason}; withdrawing every prefix (fail closed)");
                control.fail_closed(&reason);
            }
        }
        if reload.swap(false, Ordering::Relaxed) {
            control.reload();
        }
        control.tick();
        if !health_answered && control.health_answered() {
            health_answered = true;
            eprintln!(
                "fwd: every health check has answered once ({:.1} s after start)",
                epoch.elapsed().as_secs_f64()
            );
        }
        if args.stats && last_stats.elapsed() >= stats_interval {
            let totals = control.totals();
            let socket = control.socket_totals();
            eprintln!("{}", stats_line(&totals, &last_totals, &socket, &last_socket, last_stats.elapsed()));
            last_totals = totals;
            last_socket = socket;
            last_stats = Instant::now();
        }
    }

    // Withdraw first, keep forwarding while routers converge, then stop the workers.
    let drain = control.withdraw_for_shutdown();
    let drain_end = Instant::now() + drain;
    while Instant::now() < drain_end && workers.iter().all(|w| !w.is_finished()) {
        if let Some(call) = next_call(&calls, drain_end.saturating_duration_since(Instant::now())) {
            control.answer(call);
        }
    }
    stop_workers.store(true, Ordering::Relaxed);
    // The busiest worker's median pipeline time per batch (without receive and transmit).
    let mut pipeline = (Duration::ZERO, 0u64);
    for w in workers {
        match w.join() {
            Ok(exit) => {
                eprintln!(
                    "fwd: worker on core {} (queue {}) stopped; port: {:?}; socket: {:?}",
                    exit.core, exit.queue, exit.port_stats, exit.socket
                );
                if exit.pipeline_batches > pipeline.1 {
                    pipeline = (exit.pipeline_p50, exit.pipeline_batches);
                }
            }
            Err(_) => eprintln!("fwd: a worker panicked"),
        }
    }
    control.program().detach().context("detaching the XDP program")?;
    drop(admin);
    let totals = control.totals();
    let frames_per_batch = totals.rx_packets as f64 / totals.batches.max(1) as f64;
    eprintln!(
        "fwd: {} batches ({:.1} frames each), {} empty polls; pipeline (without receive and transmit) \
         median {} ns per batch, {:.0} ns per frame",
        totals.batches,
        frames_per_batch,
        totals.empty_polls,
        pipeline.0.as_nanos(),
        pipeline.0.as_nanos() as f64 / frames_per_batch.max(1.0)
    );
    println!("{}", totals_line(&totals));
    Ok(())
}

/// Moves this thread, and so every thread it starts from now on (the control loop, the health
/// checker, the announcer, the admin and metrics servers; not the workers, which pin themselves),
/// to the allowed cores no worker polls: a poll-mode worker owns its core, and a control thread
/// there takes turns with it and with the interface's receive processing. When every allowed
/// core runs a worker they share, as before.
fn keep_off_worker_cores(available: &HashSet<usize>, workers: &[usize]) {
    let mut others: Vec<usize> = available.iter().copied().filter(|c| !workers.contains(c)).collect();
    others.sort_unstable();
    if others.is_empty() {
        eprintln!("fwd: every allowed core runs a worker; the control threads share them");
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    for &c in others.iter().filter(|&&c| c < rustix::thread::CpuSet::MAX_CPU) {
        set.set(c);
    }
    match rustix::thread::sched_setaffinity(None, &set) {
        Ok(()) => eprintln!("fwd: control threads on cores {others:?}"),
        Err(e) => eprintln!("fwd: could not move the control threads off the worker cores: {e}"),
    }
}

fn timeouts(config: &Config) -> Timeouts {
    let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
    Timeouts {
        tcp_established_ms: ms(config.conntrack.tcp_established_timeout),
        tcp_closing_ms: ms(config.conntrack.tcp_closing_timeout),
        udp_ms: ms(config.conntrack.udp_timeout),
    }
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

/// The `--stats` line: rates over the interval, totals of passes and drops since start, and the
/// frames the kernel dropped at the sockets (rx_ring_full, rx_dropped) per second.
fn stats_line(
    now: &WorkerCounters,
    before: &WorkerCounters,
    socket: &SocketStats,
    socket_before: &SocketStats,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    let polls = (now.batches + now.empty_polls).saturating_sub(before.batches + before.empty_polls);
    let busy = if polls == 0 {
        0.0
    } else {
        100.0 * now.batches.saturating_sub(before.batches) as f64 / polls as f64
    };
    format!(
        "fwd stats: rx {:.0} pps, tx {:.0} pps, pass {}, drops {} ({}), socket drops {:.0}/s (rx_ring_full {:.0}/s, \
         rx_dropped {:.0}/s), busy {:.1}%",
        rate(now.rx_packets, before.rx_packets),
        rate(now.tx_packets, before.tx_packets),
        now.pass,
        now.total_drops(),
        drops_text(now),
        rate(socket.rx_ring_full + socket.rx_dropped, socket_before.rx_ring_full + socket_before.rx_dropped),
        rate(socket.rx_ring_full, socket_before.rx_ring_full),
        rate(socket.rx_dropped, socket_before.rx_dropped),
        busy
    )
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

fn parse_frame_size(text: &str) -> std::result::Result<u32, String> {
    match text {
        "2048" => Ok(2048),
        "4096" => Ok(4096),
        _ => Err(format!("{text:?} is not a UMEM frame size: use 2048 or 4096")),
    }
}

/// Why frames may be lost before fwd sees them: the interface's MTU lets frames arrive that are
/// longer than a UMEM frame holds (the kernel drops those, counting them only in the socket's
/// `rx_dropped`). Not an error: a jumbo MTU can serve the tunnels towards the backends while no
/// VIP traffic comes near it.
fn frame_fit_warning(nic: &str, mtu: u16, port: &PortConfig) -> Option<String> {
    let longest = usize::from(mtu) + MAX_L2_HEADER_LEN;
    let holds = port.largest_frame() as usize;
    if longest <= holds {
        return None;
    }
    let larger = PortConfig { frame_size: 4096, ..*port };
    let bigger_frames = if port.frame_size < larger.frame_size {
        format!("--frame-size 4096 (frames up to {} bytes), or ", larger.largest_frame())
    } else {
        String::new()
    };
    Some(format!(
        "{nic} has MTU {mtu}: frames of up to {longest} bytes (two VLAN tags included) can arrive, but a \
         {}-byte UMEM frame holds {holds}; the kernel drops longer ones before fwd sees them (`fwd stats`: \
         socket rx_dropped). Use {bigger_frames}`ip link set {nic} mtu {}` if no VIP traffic needs more",
        port.frame_size,
        holds - MAX_L2_HEADER_LEN,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(frame_size: u32) -> PortConfig {
        PortConfig { frame_size, ..PortConfig::default() }
    }

    #[test]
    fn stats_line_gives_socket_drops_per_second() {
        let before =
            WorkerCounters { rx_packets: 1000, batches: 10, empty_polls: 10, ..WorkerCounters::default() };
        let now =
            WorkerCounters { rx_packets: 3000, batches: 20, empty_polls: 20, ..WorkerCounters::default() };
        let socket =
            |rx_ring_full, rx_dropped| SocketStats { rx_ring_full, rx_dropped, ..SocketStats::default() };
        let line = stats_line(&now, &before, &socket(500, 30), &socket(100, 10), Duration::from_secs(2));
        assert!(line.starts_with("fwd stats: rx 1000 pps,"), "{line}");
        assert!(
            line.contains("socket drops 210/s (rx_ring_full 200/s, rx_dropped 10/s), busy 50.0%"),
            "{line}"
        );
    }

    #[test]
    fn standard_mtus_fit_the_default_frames() {
        assert_eq!(frames(2048).largest_frame(), 1792);
        assert_eq!(frames(4096).largest_frame(), 3840);
        assert_eq!(frame_fit_warning("eth1", 1500, &frames(2048)), None);
        // 1770 + 22 = 1792: the longest MTU a 2048-byte frame takes with two VLAN tags.
        assert_eq!(frame_fit_warning("eth1", 1770, &frames(2048)), None);
        assert_eq!(frame_fit_warning("eth1", 3818, &frames(4096)), None);
    }

    #[test]
    fn a_larger_mtu_warns_with_both_ways_out() {
        let w = frame_fit_warning("eth1", 1771, &frames(2048)).expect("1793 > 1792");
        assert!(w.contains("up to 1793 bytes") && w.contains("holds 1792"), "{w}");
        assert!(w.contains("--frame-size 4096 (frames up to 3840 bytes)"), "{w}");
        assert!(w.contains("`ip link set eth1 mtu 1770`"), "{w}");
        // Already at 4096: only the MTU is left to change.
        let w = frame_fit_warning("eth1", 9000, &frames(4096)).expect("9022 > 3840");
        assert!(!w.contains("--frame-size") && w.contains("`ip link set eth1 mtu 3818`"), "{w}");
    }
}
