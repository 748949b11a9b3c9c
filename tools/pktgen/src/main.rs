//! `fwd-pktgen`: a traffic generator and sink made for load balancers.
//!
//! Sends UDP or TCP (SYN, ACK or a mix) over IPv4 and IPv6 to the VIPs it is given, from as many
//! distinct flows as asked, at a fixed rate or as fast as the I/O goes, for a bounded time and
//! packet count; over AF_XDP (fwd-afxdp's ports) or AF_PACKET. `--sink` receives instead:
//! decodes plain, IP-in-IP and GUE frames, and reports loss, reordering, latency and the spread
//! over backends. `--with-sink` does both on the same sockets, for a device under test that sends
//! back to the segment the traffic came from.

#![forbid(unsafe_code)]

mod account;
mod decode;
mod frames;
mod io;
mod net;
mod run;
mod spec;

use anyhow::{bail, Context, Result};
use clap::Parser;
use frames::{FrameSource, Link};
use io::{Directions, IoConfig};
use run::{monotonic_ns, Job, Pacer, Progress, Totals};
use spec::{mac_text, RawSpec, TrafficSpec};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  # 1000 UDP flows to a VIP at 100 kpps for 5 s, over AF_XDP on queue 0 of eth1
  fwd-pktgen --iface eth1 --dst 198.18.100.1:80 --flows 1000 --rate 100k --duration 5
  # TCP SYNs, IPv4 and IPv6, IMIX sizes, as fast as possible, 1M packets, JSON at the end
  fwd-pktgen --iface eth1 --dst 198.18.100.1:443 --dst [fd00:18:100::1]:443 --proto tcp --size imix \\
      --rate 0 --count 1000000 --json
  # the sink on two interfaces, until 2 s without traffic
  fwd-pktgen --sink --iface eth2 --iface eth3 --duration 0 --idle-exit 2";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressArg {
    /// When stderr is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Parser)]
#[command(name = "fwd-pktgen", version, about = "Traffic generator and sink for load balancers", after_help = EXAMPLES)]
struct Args {
    /// Interface to send on; with --sink, to receive on (repeat for several).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Receive only: count what arrives, decode tunnels, report loss, latency and spread.
    #[arg(long, conflicts_with = "with_sink")]
    sink: bool,
    /// Send, and receive on the same sockets (generator and sink on one L2 segment).
    #[arg(long)]
    with_sink: bool,
    /// With --sink or --with-sink: the XDP program only counts the frames that arrive, and drops
    /// them (reported as `counted_and_dropped`; no loss, latency or decoding). Receiving then
    /// costs the core an XDP run per frame instead of a copy and the sink's accounting: for a
    /// generator at full load that shares its core with its sink.
    #[arg(long)]
    count_only: bool,
    /// Queues to use on each interface, one thread each: `0`, `0,1`.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    queues: Vec<u32>,
    /// Cores to pin the threads to, in thread order: `0`, `2,3` (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Traffic spec file (TOML, or JSON if it ends in .json); flags override its keys.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Destination VIP and port: `198.18.100.1:80`, `[fd00:18:100::1]:80` (repeatable).
    #[arg(long = "dst")]
    destinations: Vec<String>,
    /// IPv4 sources: an address, a prefix (`198.18.1.0/24`, the default) or `first-last`.
    #[arg(long)]
    src_v4: Option<String>,
    /// IPv6 sources (default `fd00:18:1::/112`).
    #[arg(long)]
    src_v6: Option<String>,
    /// Source ports: `1024-65535` (the default) or one port.
    #[arg(long)]
    sport: Option<String>,
    /// Distinct flows (5-tuples), spread over the destinations (default 1).
    #[arg(long)]
    flows: Option<u64>,
    #[arg(long, value_enum)]
    proto: Option<spec::Protocol>,
    /// TCP segments: syn (default), ack, or mix (first a SYN per flow, then ACKs).
    #[arg(long, value_enum)]
    tcp_flags: Option<spec::TcpFlags>,
    /// Frame size with FCS (64..1796; raised to fit headers and payload), or `imix`.
    #[arg(long)]
    size: Option<String>,
    /// Packets per second over all threads: `20000`, `20k`, `1.5M`; 0: as fast as possible.
    #[arg(long)]
    rate: Option<String>,
    /// Seconds to send (default 10; 0: no time limit). With --sink: seconds to listen.
    #[arg(long)]
    duration: Option<f64>,
    /// Packets to send over all threads (default 10000000; 0: no count limit).
    #[arg(long)]
    count: Option<u64>,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    src_mac: Option<String>,
    /// Destination MAC (default: the next hop's, from the neighbour table).
    #[arg(long)]
    dst_mac: Option<String>,
    #[arg(long)]
    ttl: Option<u8>,
    /// AF_XDP, AF_PACKET, or AF_XDP with AF_PACKET as the fallback.
    #[arg(long, value_enum, default_value = "auto")]
    io: io::IoKind,
    /// How the sink's XDP program is attached.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: io::XdpModeArg,
    /// How AF_XDP sockets bind.
    #[arg(long, value_enum, default_value = "auto")]
    bind: io::BindArg,
    /// UMEM frames per AF_XDP socket (a power of two).
    #[arg(long, default_value_t = 4096)]
    frames: u32,
    /// Kick the kernel on every transmit instead of when it asks.
    #[arg(long)]
    no_need_wakeup: bool,
    /// UDP destination port of GUE, for the sink's decoder.
    #[arg(long, default_value_t = 6080)]
    gue_port: u16,
    /// Receiving: seconds to keep listening after sending stopped.
    #[arg(long, default_value_t = 0.5)]
    drain: f64,
    /// Receiving: after 1024 empty polls in a row, sleep this many microseconds (0: spin). Lets
    /// the interface's NAPI thread run when it shares the core.
    #[arg(long, default_value_t = 50)]
    idle_sleep_us: u64,
    /// Sink: stop once nothing arrived for this many seconds (after something did).
    #[arg(long, conflicts_with = "count_only")]
    idle_exit: Option<f64>,
    /// Print one JSON object on stdout at the end (the summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// The live progress line on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
}

fn parse_rate(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    if t == "unlimited" || t == "max" {
        return Ok(0);
    }
    let (number, scale) = match t.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 1e6),
            None => (t.as_str(), 1.0),
        },
    };
    let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).with_context(|| {
        format!("--rate {text:?}: packets per second, like 20000, 20k or 1.5M (0: unlimited)")
    })?;
    Ok((value * scale).round() as u64)
}

fn raw_spec(args: &Args) -> Result<RawSpec> {
    let flags = RawSpec {
        destinations: (!args.destinations.is_empty()).then(|| args.destinations.clone()),
        sources_v4: args.src_v4.clone(),
        sources_v6: args.src_v6.clone(),
        source_ports: args.sport.clone(),
        flows: args.flows,
        protocol: args.proto,
        tcp_flags: args.tcp_flags,
        frame_size: args.size.clone(),
        rate: args.rate.as_deref().map(parse_rate).transpose()?,
        duration: args.duration,
        count: args.count,
        src_mac: args.src_mac.clone(),
        dst_mac: args.dst_mac.clone(),
        ttl: args.ttl,
    };
    Ok(match &args.spec {
        Some(path) => RawSpec::from_file(path)?.overridden_by(flags),
        None => flags,
    })
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("fwd-pktgen: error: {e:#}");
        std::process::exit(1);
    }
}

/// The sending side's resolved setup.
struct Sending {
    spec: TrafficSpec,
    link: Link,
}

fn run(args: &Args) -> Result<()> {
    let sending = !args.sink;
    let receiving = args.sink || args.with_sink;
    if sending && args.ifaces.len() > 1 {
        bail!(
            "--iface is given {} times: the generator sends on one interface (several are for --sink)",
            args.ifaces.len()
        );
    }
    if args.queues.is_empty() {
        bail!("--queues needs at least one queue");
    }
    if args.count_only && !receiving {
        bail!("--count-only is for the receive side: give --sink or --with-sink too");
    }
    let send_setup = if sending {
        let spec = raw_spec(args)?.validate()?;
        let ifname = &args.ifaces[0];
        let src_mac = match spec.src_mac {
            Some(mac) => mac,
            None => net::interface_mac(ifname)?,
        };
        let dst_mac = match spec.dst_mac {
            Some(mac) => mac,
            None => {
                let mut macs = Vec::new();
                for d in &spec.destinations {
                    macs.push((d, net::resolve_dst_mac(d.ip(), ifname)?));
                }
                if macs.iter().any(|(_, m)| *m != macs[0].1) {
                    let list: Vec<String> =
                        macs.iter().map(|(d, m)| format!("{d} via {}", mac_text(m))).collect();
                    bail!(
                        "the destinations have different next hops ({}): give one with --dst-mac",
                        list.join(", ")
                    );
                }
                macs[0].1
            }
        };
        Some(Sending { spec, link: Link { src_mac, dst_mac } })
    } else {
        None
    };
    let sink_duration = match args.duration {
        None => Some(spec::DEFAULT_DURATION_S),
        Some(d) if d > 0.0 => Some(d),
        Some(_) => None,
    };

    let io_config = IoConfig {
        kind: args.io,
        xdp_mode: args.xdp_mode,
        bind: args.bind,
        frames: args.frames,
        need_wakeup: !args.no_need_wakeup,
        count_only: args.count_only,
    };
    let directions = Directions { send: sending, receive: receiving };
    let mut opened = Vec::new();
    for ifname in &args.ifaces {
        opened.push(io::open(ifname, &args.queues, directions, &io_config)?);
    }
    let endpoint_count: usize = opened.iter().map(|o| o.endpoints.len()).sum();
    if !args.cores.is_empty() && args.cores.len() < endpoint_count {
        bail!(
            "--cores names {} core(s) for {endpoint_count} thread(s): give one per thread",
            args.cores.len()
        );
    }
    let description: Vec<String> = opened.iter().map(|o| o.to_string()).collect();
    let io_kind = opened.first().map(|o| o.kind).unwrap_or("none");
    let fallback = opened.iter().find_map(|o| o.fallback.clone());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let threads = endpoint_count as u64;
    let start_ns = monotonic_ns();
    let mut jobs = Vec::new();
    let run_id = (std::process::id() & 0x00ff_ffff) << 8;
    let build_started = Instant::now();
    let mut thread_index = 0u64;
    let mut captures = Vec::new();
    for o in opened {
        if let Some(c) = o.capture {
            captures.push(c);
        }
        for endpoint in o.endpoints {
            let t = thread_index;
            thread_index += 1;
            let (source, pacer, count, deadline_ns) = match &send_setup {
                Some(s) => {
                    let source = FrameSource::new(&s.spec, s.link, run_id | t as u32, t, threads);
                    let pacer = Pacer::new(s.spec.rate_pps.map(|r| r as f64 / threads as f64), start_ns);
                    let count = s.spec.count.map(|c| c / threads + u64::from(t < c % threads));
                    (Some(source), pacer, count, None)
                }
                None => (None, Pacer::new(None, start_ns), None, None),
            };
            jobs.push(Job {
                endpoint,
                source,
                pacer,
                count,
                deadline_ns,
                drain: Duration::from_secs_f64(args.drain.max(0.0)),
                idle_sleep: Duration::from_micros(args.idle_sleep_us),
                accounting: receiving.then(|| account::Accounting::new(args.gue_port)),
                core: args.cores.get(t as usize).copied(),
            });
        }
    }
    if send_setup.is_some() && build_started.elapsed() > Duration::from_millis(500) {
        eprintln!("fwd-pktgen: built the flow templates in {:.1} s", build_started.elapsed().as_secs_f64());
    }
    // The clock starts now: time limits count from here, after the templates are built.
    let start_ns = monotonic_ns();
    let duration_s = match &send_setup {
        Some(s) => s.spec.duration_s,
        None => sink_duration,
    };
    for job in &mut jobs {
        job.pacer.start_ns = start_ns;
        if send_setup.is_some() {
            job.deadline_ns = duration_s.map(|d| start_ns + (d * 1e9) as u64);
        }
    }
    eprintln!("fwd-pktgen: {}", description.join("; "));
    if let Some(s) = &send_setup {
        eprintln!("fwd-pktgen: sending {}", describe_spec(&s.spec, &s.link));
    }

    let progress: Arc<Vec<Progress>> = Arc::new((0..jobs.len()).map(|_| Progress::default()).collect());
    let show_progress = match args.progress {
        ProgressArg::Always => true,
        ProgressArg::Never => false,
        ProgressArg::Auto => std::io::stderr().is_terminal(),
    };
    let started = Instant::now();
    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let stop = &stop;
                let progress = &progress;
                scope.spawn(move || run::run_thread(job, stop, &progress[i]))
            })
            .collect();
        let tick = Duration::from_millis(250);
        let mut before = Totals::default();
        let mut last_rx_change = Instant::now();
        let mut last = Instant::now();
        while !progress.iter().all(|p| p.done.load(Ordering::Relaxed)) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() < tick {
                continue;
            }
            let now = Totals::of(&progress);
            let interval = last.elapsed().as_secs_f64();
            last = Instant::now();
            if now.rx_frames != before.rx_frames {
                last_rx_change = Instant::now();
            }
            if show_progress {
                let line = run::progress_line(
                    started.elapsed().as_secs_f64(),
                    &now,
                    &before,
                    interval,
                    sending,
                    receiving,
                );
                eprint!("\r{line}   ");
            }
            before = now;
            if !sending {
                let idle = args
                    .idle_exit
                    .is_some_and(|s| now.rx_frames > 0 && last_rx_change.elapsed().as_secs_f64() >= s);
                let over = sink_duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d);
                if idle || over {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        if show_progress {
            eprintln!();
        }
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(o) => results.push(o),
            Err(_) => bail!("a worker thread panicked"),
        }
    }
    let mut counted_and_dropped = 0u64;
    for c in &captures {
        counted_and_dropped +=
            c.program.counters().context("reading the XDP program's counters")?.counted_and_dropped;
    }
    drop(captures);

    let mut report = build_report(args, &send_setup, &results, elapsed, io_kind, fallback, &description);
    if args.count_only {
        report["counted_and_dropped"] = counted_and_dropped.into();
    }
    let summary = summary_text(&report);
    if args.json {
        eprint!("{summary}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

fn describe_spec(spec: &TrafficSpec, link: &Link) -> String {
    let destinations: Vec<String> = spec.destinations.iter().map(|d| d.to_string()).collect();
    format!(
        "{} flows of {:?}{} to {} ({} -> {}), frames {}, rate {}, limits {} / {}",
        spec.flows,
        spec.protocol,
        if spec.protocol == spec::Protocol::Tcp { format!(" {:?}", spec.tcp_flags) } else { String::new() },
        destinations.join(" "),
        mac_text(&link.src_mac),
        mac_text(&link.dst_mac),
        spec.frame_sizes,
        spec.rate_pps.map(|r| format!("{r} pps")).unwrap_or_else(|| "unlimited".into()),
        spec.duration_s.map(|d| format!("{d} s")).unwrap_or_else(|| "no time limit".into()),
        spec.count.map(|c| format!("{c} packets")).unwrap_or_else(|| "no count limit".into()),
    )
}

fn build_report(
    args: &Args,
    send_setup: &Option<Sending>,
    results: &[run::Outcome],
    elapsed: f64,
    io_kind: &str,
    fallback: Option<String>,
    description: &[String],
) -> serde_json::Value {
    let mut report = serde_json::json!({
        "mode": if args.sink { "sink" } else if args.with_sink { "send+sink" } else { "send" },
        "interfaces": args.ifaces,
        "io": io_kind,
        "io_fallback_reason": fallback,
        "endpoints": description,
        "elapsed_s": elapsed,
        "threads": results.iter().map(|r| serde_json::json!({
            "stream": r.stream.map(|s| format!("{s:08x}")), "sent": r.sent,
            "behind_schedule": r.behind_schedule, "flows": r.flows,
            "core": r.pinned, "endpoint": r.endpoint,
        })).collect::<Vec<_>>(),
    });
    if let Some(s) = send_setup {
        let sent: u64 = results.iter().map(|r| r.sent).sum();
        let bytes: u64 = results.iter().map(|r| r.sent_bytes).sum();
        let behind_schedule: u64 = results.iter().map(|r| r.behind_schedule).sum();
        let first = results.iter().map(|r| r.send_started_ns).min().unwrap_or(0);
        let last = results.iter().map(|r| r.send_ended_ns).max().unwrap_or(0);
        let seconds = (last.saturating_sub(first) as f64 / 1e9).max(1e-9);
        report["spec"] = serde_json::json!({
            "destinations": s.spec.destinations.iter().map(SocketAddr::to_string).collect::<Vec<_>>(),
            "flows": s.spec.flows, "protocol": format!("{:?}", s.spec.protocol).to_lowercase(),
            "tcp_flags": format!("{:?}", s.spec.tcp_flags).to_lowercase(),
            "frame_size": s.spec.frame_sizes.to_string(), "rate_pps": s.spec.rate_pps,
            "duration_s": s.spec.duration_s, "count": s.spec.count,
            "src_mac": mac_text(&s.link.src_mac), "dst_mac": mac_text(&s.link.dst_mac),
        });
        report["sent"] = serde_json::json!({
            "packets": sent, "bytes": bytes, "seconds": seconds,
            "pps": sent as f64 / seconds, "gbps": bytes as f64 * 8.0 / seconds / 1e9,
            "behind_schedule": behind_schedule,
        });
    }
    let mut merged: Option<account::Accounting> = None;
    for r in results {
        if let Some(a) = &r.accounting {
            match merged.as_mut() {
                Some(m) => m.merge(a),
                None => {
                    let mut first = account::Accounting::new(args.gue_port);
                    first.merge(a);
                    merged = Some(first);
                }
            }
        }
    }
    if let Some(m) = merged {
        let sink = m.report();
        let mut value = serde_json::to_value(&sink).unwrap_or_default();
        value["pps"] = serde_json::json!(sink.ours as f64 / elapsed.max(1e-9));
        if let Some(sent) = report.get("sent").and_then(|s| s.get("packets")).and_then(|p| p.as_u64()) {
            // Against what was sent, so tail loss counts too.
            value["lost_vs_sent"] = serde_json::json!(sent.saturating_sub(sink.received));
            value["loss_ratio_vs_sent"] = serde_json::json!(if sent > 0 {
                sent.saturating_sub(sink.received) as f64 / sent as f64
            } else {
                0.0
            });
        }
        report["sink"] = value;
    }
    report
}

fn summary_text(report: &serde_json::Value) -> String {
    let mut out = String::new();
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    if let Some(sent) = report.get("sent") {
        out += &format!(
            "sent:     {} packets in {:.2} s = {:.0} pps, {:.3} Gbit/s (frames without FCS)\n",
            sent["packets"],
            f(&sent["seconds"]),
            f(&sent["pps"]),
            f(&sent["gbps"])
        );
        if sent["behind_schedule"].as_u64().unwrap_or(0) > 0 {
            out += &format!(
                "          {} packets not sent: the sender fell more than a batch behind its rate\n",
                sent["behind_schedule"]
            );
        }
    }
    if let Some(counted) = report.get("counted_and_dropped") {
        out += &format!("counted:  {counted} frames arrived (--count-only: counted and dropped by XDP)\n");
    }
    if let Some(sink) = report.get("sink") {
        out += &format!(
            "received: {} frames ({} ours, {} foreign IP, {} not IP), {:.0} pps\n",
            sink["frames"],
            sink["ours"],
            sink["foreign"],
            sink["not_ip"],
            f(&sink["pps"])
        );
        out += &format!(
            "streams:  {} expected, {} received, {} lost ({:.4}%), {} late ({:.4}%), {} duplicates, {} flows seen\n",
            sink["expected"],
            sink["received"],
            sink["lost"],
            100.0 * f(&sink["loss_ratio"]),
            sink["late"],
            100.0 * f(&sink["late_ratio"]),
            sink["duplicates"],
            sink["flows_seen"]
        );
        if let Some(lost) = sink.get("lost_vs_sent") {
            out += &format!("vs sent:  {lost} lost ({:.4}%)\n", 100.0 * f(&sink["loss_ratio_vs_sent"]));
        }
        let l = &sink["latency_ns"];
        out += &format!(
            "latency:  min {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} us\n",
            f(&l["min"]) / 1e3,
            f(&l["p50"]) / 1e3,
            f(&l["p90"]) / 1e3,
            f(&l["p99"]) / 1e3,
            f(&l["p999"]) / 1e3,
            f(&l["max"]) / 1e3
        );
        if let Some(encaps) = sink["encapsulation"].as_array() {
            let list: Vec<String> =
                encaps.iter().map(|e| format!("{} {}", e[0].as_str().unwrap_or(""), e[1])).collect();
            out += &format!("encap:    {}\n", list.join(", "));
        }
        for d in sink["destinations"].as_array().into_iter().flatten() {
            let s = &d["spread"];
            out += &format!(
                "  {} {}: {} packets over {} backend(s), min {} max {} (max/mean {:.3})\n",
                d["destination"].as_str().unwrap_or(""),
                d["protocol"].as_str().unwrap_or(""),
                d["packets"],
                s["backends"],
                s["min"],
                s["max"],
                f(&s["max_over_mean"])
            );
        }
    }
    out
}

#[cfg(test)]
mod testnet;

#[cfg(test)]
mod tests {
    //! End to end, in network namespaces (root): the test binary runs itself again inside a
    //! namespace (`ip netns exec`), as the generator or the sink, through the same `run` as the
    //! command line; the parent checks what arrived.

    use super::*;
    use crate::testnet::{child_args, run_child, rx_packets, spawn_child, wait_for_sink};
    use fwd_afxdp::testnet::{NetnsPair, IFACE, MAC_A, MAC_B};

    /// In a child: runs fwd-pktgen with the arguments the parent passed and returns true.
    fn as_child() -> bool {
        match child_args() {
            Some(argv) => {
                let args = Args::parse_from(std::iter::once("fwd-pktgen".to_string()).chain(argv));
                if let Err(e) = run(&args) {
                    panic!("fwd-pktgen in the child failed: {e:#}");
                }
                true
            }
            None => false,
        }
    }

    const RATE_TEST: &str = "tests::the_rate_limiter_hits_the_asked_rate";

    #[test]
    fn the_rate_limiter_hits_the_asked_rate() {
        if as_child() {
            return;
        }
        const RATE: f64 = 20_000.0;
        let net = NetnsPair::new();
        let before = rx_packets(&net.b);
        let report = run_child(
            &net.a,
            RATE_TEST,
            &[
                "--iface",
                IFACE,
                "--dst",
                "198.18.100.1:80",
                "--dst-mac",
                MAC_B,
                "--flows",
                "100",
                "--rate",
                "20k",
                "--duration",
                "1",
                "--count",
                "0",
                "--json",
                "--progress",
                "never",
            ],
        );
        // Let the last frames land.
        std::thread::sleep(Duration::from_millis(200));
        let arrived = (rx_packets(&net.b) - before) as f64;
        let sent = report["sent"]["packets"].as_f64().unwrap();
        let seconds = report["sent"]["seconds"].as_f64().unwrap();
        assert!((0.98..1.1).contains(&seconds), "sent for {seconds} s: {report}");
        assert!((sent / RATE - 1.0).abs() < 0.05, "sent {sent} packets in 1 s at 20 kpps: {report}");
        // The receiving veth counts every frame (and maybe a stray IPv6 router solicitation).
        assert!((arrived / RATE - 1.0).abs() < 0.05, "{arrived} arrived for 20000 asked");
        assert!(arrived >= sent, "{arrived} arrived, {sent} sent");
    }

    /// fwd-pktgen's arguments to send from `a` to `b` over `io`, to one IPv4 and one IPv6 VIP,
    /// then `rest`.
    fn send_to_both_vips<'a>(io: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args =
            vec!["--iface", IFACE, "--io", io, "--dst", "198.18.100.1:80", "--dst", "[fd00:18:100::1]:443"];
        args.extend_from_slice(&["--dst-mac", MAC_B, "--src-mac", MAC_A]);
        args.extend_from_slice(rest);
        args
    }

    const COUNT_ONLY_TEST: &str = "tests::count_only_counts_every_frame_in_xdp_and_drops_it";

    #[test]
    fn count_only_counts_every_frame_in_xdp_and_drops_it() {
        if as_child() {
            return;
        }
        let net = NetnsPair::new();
        let sink_args = [
            "--sink",
            "--count-only",
            "--iface",
            IFACE,
            "--io",
            "xdp",
            "--xdp-mode",
            "generic",
            "--duration",
            "3",
            "--json",
            "--progress",
            "never",
        ];
        let sink = spawn_child(&net.b, COUNT_ONLY_TEST, &sink_args);
        wait_for_sink(&net.b, true);
        let sent = run_child(
            &net.a,
            COUNT_ONLY_TEST,
            &send_to_both_vips(
                "xdp",
                &["--flows", "100", "--rate", "10k", "--count", "3000", "--json", "--progress", "never"],
            ),
        );
        let report = sink.finish();
        assert_eq!(sent["sent"]["packets"], 3000, "{sent}");
        // Every IP frame counts, the peer's own IPv6 chatter too (MLD reports when its link
        // comes up: 3 seen here); only ARP and neighbour discovery are left to the kernel.
        let counted = report["counted_and_dropped"].as_u64().unwrap();
        assert!((3000..3010).contains(&counted), "{report}");
        assert_eq!(report["sink"]["frames"], 0, "dropped in XDP, never reaching the socket: {report}");
    }

    #[test]
    fn count_only_needs_a_receive_side_and_af_xdp() {
        let error = |argv: &[&str]| {
            let args = Args::try_parse_from(std::iter::once("fwd-pktgen").chain(argv.iter().copied()));
            match args {
                Err(e) => e.to_string(),
                Ok(args) => format!("{:#}", run(&args).unwrap_err()),
            }
        };
        let send_only = error(&["--iface", "lo", "--dst", "198.18.100.1:80", "--count-only"]);
        assert!(send_only.contains("--count-only is for the receive side"), "{send_only}");
        let idle = error(&["--iface", "lo", "--sink", "--count-only", "--idle-exit", "1"]);
        assert!(idle.contains("cannot be used with"), "{idle}");
        let packet = error(&["--iface", "lo", "--sink", "--count-only", "--io", "packet", "--duration", "1"]);
        assert!(packet.contains("needs AF_XDP, not --io packet"), "{packet}");
    }

    const SINK_TEST: &str = "tests::the_sink_counts_every_flow_and_packet_over_each_io";

    #[test]
    fn the_sink_counts_every_flow_and_packet_over_each_io() {
        if as_child() {
            return;
        }
        for io in ["xdp", "packet"] {
            let net = NetnsPair::new();
            let sink = spawn_child(
                &net.b,
                SINK_TEST,
                &[
                    "--sink",
                    "--iface",
                    IFACE,
                    "--io",
                    io,
                    "--duration",
                    "30",
                    "--idle-exit",
                    "1",
                    // Generic XDP: frames wait in the kernel's backlog (1000 frames, 100 ms at
                    // 10 kpps) if this loaded 2-core machine stalls the sink, where native mode on
                    // veth has a 256-frame ring (25 ms): it lost 539 of 4000 frames once in CI.
                    "--xdp-mode",
                    "generic",
                    "--json",
                    "--progress",
                    "never",
                ],
            );
            // Wait until the sink listens: its XDP program is attached, or its socket open.
            wait_for_sink(&net.b, io == "xdp");
            if io == "xdp" {
                let link = net.b.ip(&["link", "show", "dev", IFACE]);
                assert!(link.contains("xdpgeneric"), "the sink asked for generic XDP: {link}");
            }
            let sent = run_child(
                &net.a,
                SINK_TEST,
                &send_to_both_vips(
                    io,
                    &[
                        "--proto",
                        "tcp",
                        "--tcp-flags",
                        "mix",
                        "--flows",
                        "1000",
                        "--size",
                        "imix",
                        "--rate",
                        "10k",
                        "--count",
                        "4000",
                        "--json",
                        "--progress",
                        "never",
                    ],
                ),
            );
            let report = sink.finish();
            let s = &report["sink"];
            assert_eq!(sent["sent"]["packets"], 4000, "{io}: {sent}");
            assert_eq!(s["ours"], 4000, "{io}: {report}");
            assert_eq!((s["expected"].as_u64(), s["lost"].as_u64()), (Some(4000), Some(0)), "{io}: {report}");
            assert_eq!(s["flows_seen"], 1000, "{io}");
            assert_eq!(
                s["encapsulation"],
                serde_json::json!([["plain-v4", 2000], ["plain-v6", 2000]]),
                "{io}"
            );
            let destinations: Vec<&str> = s["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["destination"].as_str().unwrap())
                .collect();
            assert_eq!(destinations, ["198.18.100.1:80", "[fd00:18:100::1]:443"], "{io}");
            assert_eq!(s["destinations"][0]["backends"][0]["backend"], format!("mac {MAC_B}"), "{io}");
            let latency = &s["latency_ns"];
            assert!(
                latency["min"].as_u64().unwrap() > 0 && latency["p50"].as_u64() <= latency["max"].as_u64(),
                "{latency}"
            );
            // 500 flows per destination: all 256 IPv4 sources (a /24), 500 of the /112.
            assert_eq!(s["sources"]["distinct"], 256 + 500, "{io}");
        }
    }
}
