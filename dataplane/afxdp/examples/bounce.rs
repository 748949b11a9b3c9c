//! AF_XDP bounce: receives the frames addressed to `--vip` on one queue, swaps their MAC addresses
//! and sends them back out of the same queue, for `--seconds`.
//!
//! This is the ceiling of anything fwd can do through one AF_XDP port (no parsing, no lookup):
//! the benchmark harness runs it as the "receive + transmit only" baseline. Prints a summary on
//! stderr and one JSON object on stdout, also when stopped early by SIGINT or SIGTERM.
//!
//! ```text
//! cargo run --release -p fwd-afxdp --example bounce -- --iface veth0 --queue 0 --seconds 10 --vip 198.18.100.1
//! ```

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use fwd_afxdp::{AttachMode, BindMode, IdleWait, Port, PortConfig, XdpProgram};
use fwd_dataplane::io::{PacketIo, Verdict, MAX_BATCH};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BindArg {
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Debug, Parser)]
#[command(about = "Receive VIP frames on one AF_XDP queue, swap MACs, send them back")]
struct Args {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    /// Queue to bind the AF_XDP socket to.
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Destination address steered to the socket (the generator's destination); repeatable.
    #[arg(long = "vip", required = true)]
    vips: Vec<IpAddr>,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    #[arg(long, value_enum, default_value = "auto")]
    bind: BindArg,
    /// UMEM frames (a power of two).
    #[arg(long, default_value_t = 4096)]
    frames: u32,
    /// Bytes per UMEM frame (2048 or 4096).
    #[arg(long, default_value_t = 2048)]
    frame_size: u32,
    /// Kick the kernel on every transmit instead of when it asks.
    #[arg(long)]
    no_need_wakeup: bool,
    /// Frames per poll (at most 64).
    #[arg(long, default_value_t = MAX_BATCH)]
    batch: usize,
    /// After 1024 empty polls in a row, sleep this many microseconds (fwd's `--idle-sleep-us`:
    /// 0 busy-polls; set it where the poller shares its core with the interface's NAPI thread).
    #[arg(long, default_value_t = 0)]
    idle_sleep_us: u64,
    /// Yield the core after every empty poll (fwd's `--idle-yield`).
    #[arg(long)]
    idle_yield: bool,
    /// After `--idle-wait-polls` empty polls in a row, sleep in ppoll(2) until frames arrive, at
    /// most this many microseconds (fwd's `--idle-wait-us`; 0: never; replaces the nap).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    idle_wait_us: u64,
    /// Empty polls in a row before `--idle-wait-us` sleeps (fwd's `--idle-wait-polls`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    idle_wait_polls: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut program = XdpProgram::load().context("loading the XDP program")?;
    let mode = match args.xdp_mode {
        XdpModeArg::Auto => AttachMode::Auto,
        XdpModeArg::Native => AttachMode::Native,
        XdpModeArg::Generic => AttachMode::Generic,
    };
    let attached = program.attach(&args.iface, mode)?;
    let config = PortConfig {
        frame_count: args.frames,
        frame_size: args.frame_size,
        bind_mode: match args.bind {
            BindArg::Auto => BindMode::Auto,
            BindArg::Copy => BindMode::Copy,
            BindArg::ZeroCopy => BindMode::ZeroCopy,
        },
        need_wakeup: !args.no_need_wakeup,
        ..PortConfig::default()
    };
    let mut port = Port::open(&args.iface, args.queue, &config)?;
    program.register_port(&port)?;
    program.sync_vips(&args.vips)?;
    eprintln!(
        "bounce: {} queue {} ({} XDP, {} socket, tx budget {:?}), {} s",
        args.iface,
        args.queue,
        attached.mode,
        port.bound_mode(),
        port.tx_budget(),
        args.seconds
    );

    let mut busy_polls = 0u64;
    let mut empty_polls = 0u64;
    let mut bytes = 0u64;
    let mut swap = |batch: &mut fwd_dataplane::io::Batch<'_>, verdicts: &mut [Verdict]| {
        for (frame, verdict) in batch.iter_mut().zip(verdicts.iter_mut()) {
            let data = frame.data_mut();
            if data.len() >= 12 {
                let (dst, src) = data.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
                bytes += data.len() as u64;
                *verdict = Verdict::Tx;
            }
        }
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut polls_since_clock = 0u32;
    let mut empty_streak = 0u64;
    let idle_sleep = Duration::from_micros(args.idle_sleep_us);
    let each_empty_poll = IdleWait {
        yield_each: args.idle_yield,
        wait: Duration::from_micros(args.idle_wait_us),
        wait_after: u64::from(args.idle_wait_polls),
    };
    loop {
        if port.poll(args.batch, &mut swap) == 0 {
            empty_polls += 1;
            empty_streak += 1;
            // As fwd's worker: a wait that timed out looks at the clock at once.
            if each_empty_poll.after_empty_poll(&mut port, empty_streak) {
                polls_since_clock = 1024;
            }
            if empty_streak.is_multiple_of(1024) && !idle_sleep.is_zero() && !each_empty_poll.sleeps() {
                std::thread::sleep(idle_sleep);
            }
        } else {
            busy_polls += 1;
            empty_streak = 0;
        }
        polls_since_clock += 1;
        if polls_since_clock >= 1024 {
            polls_since_clock = 0;
            if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = port.stats();
    let kernel = port.kernel_stats().context("reading the socket's kernel counters")?;
    let xdp = program.counters()?;
    let mpps = stats.tx_frames as f64 / elapsed / 1e6;
    let mean = |sum: u64| sum as f64 / stats.occupancy_samples.max(1) as f64;
    eprintln!(
        "bounce: rx {} tx {} frames in {elapsed:.2} s: {mpps:.3} Mpps; polls busy {busy_polls} empty {empty_polls}; \
         tx kicks {}; waits {} woken {}; frames on fill / rx / in transmit {:.0} / {:.0} / {:.0} (mean of {} samples); \
         xdp redirected {} passed {}; kernel rx_dropped {} rx_ring_full {} fill_empty {}",
        stats.rx_frames,
        stats.tx_frames,
        stats.tx_kicks,
        stats.waits,
        stats.wakeups,
        mean(stats.fill_level_sum),
        mean(stats.rx_backlog_sum),
        mean(stats.tx_in_flight_sum),
        stats.occupancy_samples,
        xdp.redirected,
        xdp.passed,
        kernel.rx_dropped,
        kernel.rx_ring_full,
        kernel.rx_fill_ring_empty_descs
    );
    let report = serde_json::json!({
        "iface": args.iface,
        "queue": args.queue,
        "xdp_mode": attached.mode.name(),
        "bind_mode": port.bound_mode().name(),
        "seconds": elapsed,
        "rx_frames": stats.rx_frames,
        "tx_frames": stats.tx_frames,
        "tx_bytes": bytes,
        "mpps": mpps,
        "busy_polls": busy_polls,
        "empty_polls": empty_polls,
        "tx_kicks": stats.tx_kicks,
        "tx_kick_errors": stats.tx_kick_errors,
        "fill_kicks": stats.fill_kicks,
        "mean_fill_level": mean(stats.fill_level_sum),
        "mean_rx_backlog": mean(stats.rx_backlog_sum),
        "mean_tx_in_flight": mean(stats.tx_in_flight_sum),
        "xdp_redirected": xdp.redirected,
        "xdp_passed": xdp.passed,
        "xdp_vip_without_socket": xdp.vip_without_socket,
        "kernel_rx_dropped": kernel.rx_dropped,
        "kernel_rx_ring_full": kernel.rx_ring_full,
        "kernel_rx_fill_ring_empty": kernel.rx_fill_ring_empty_descs,
        "kernel_tx_invalid_descs": kernel.tx_invalid_descs,
    });
    println!("{report}");
    Ok(())
}
