//! The operator commands that talk to a running fwd over its admin socket: `fwd status`,
//! `fwd stats`, `fwd drain`, `fwd undrain`, `fwd reload`.

use anyhow::{bail, Context, Result};
use fwd_control::admin::{request, Request, Response, StatsReport, StatusReport};
use fwd_control::config::load_config;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Where the running fwd listens.
#[derive(clap::Args, Debug)]
pub struct SocketArgs {
    /// The admin socket (default: admin.socket of --config, else /run/fwd/admin.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Read the socket path from this configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.socket {
            return Ok(p.clone());
        }
        if let Some(c) = &self.config {
            let loaded = load_config(c).map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(loaded.config.admin.socket);
        }
        Ok(fwd_control::config::AdminConfig::default().socket)
    }
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The backend: ADDRESS (every port), ADDRESS:PORT or [IPV6]:PORT.
    pub backend: String,
    /// Only in this service (its name, or its key like 198.18.100.1:80/tcp); default: every service.
    #[arg(long)]
    pub service: Option<String>,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

const TIMEOUT: Duration = Duration::from_secs(15);

fn ask(socket: &SocketArgs, req: &Request) -> Result<Response> {
    let path = socket.path()?;
    Ok(request(&path, req, TIMEOUT)?)
}

fn ok_or_bail(r: Response) -> Result<serde_json::Value> {
    if r.ok {
        Ok(r.result)
    } else {
        bail!("{}", r.error.unwrap_or_else(|| "fwd refused the request".into()))
    }
}

pub fn status(args: &StatusArgs) -> Result<()> {
    let value = ok_or_bail(ask(&args.socket, &Request::Status)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let report: StatusReport = serde_json::from_value(value).context("reading fwd's status answer")?;
    print!("{}", render_status(&report));
    Ok(())
}

pub fn stats(args: &StatusArgs) -> Result<()> {
    let value = ok_or_bail(ask(&args.socket, &Request::Stats)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let report: StatsReport = serde_json::from_value(value).context("reading fwd's stats answer")?;
    print!("{}", render_stats(&report));
    Ok(())
}

pub fn drain(args: &DrainArgs, drained: bool) -> Result<()> {
    let req = if drained {
        Request::Drain { backend: args.backend.clone(), service: args.service.clone() }
    } else {
        Request::Undrain { backend: args.backend.clone(), service: args.service.clone() }
    };
    let value = ok_or_bail(ask(&args.socket, &req)?)?;
    let list = |k: &str| -> Vec<String> {
        value[k]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let (matched, changed) = (list("matched"), list("changed"));
    let verb = if drained { "drained" } else { "undrained" };
    for m in &matched {
        let note = if changed.contains(m) { verb.to_string() } else { format!("already {verb}") };
        println!("{m}: {note}");
    }
    Ok(())
}

pub fn reload(args: &ReloadArgs) -> Result<()> {
    let r = ask(&args.socket, &Request::Reload)?;
    let added = |k: &str| r.result[k].as_array().map(|a| a.len()).unwrap_or(0);
    if !r.ok {
        bail!("reload rejected, fwd keeps the running config: {}", r.error.unwrap_or_default());
    }
    println!(
        "reloaded: {} services added, {} removed, {} changed",
        added("services_added"),
        added("services_removed"),
        added("services_changed")
    );
    if let Some(list) = r.result["needs_restart"].as_array().filter(|a| !a.is_empty()) {
        let names: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
        println!("changed but applied only at restart: {}", names.join(", "));
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

fn human_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `ipvsadm -Ln --stats`-like text.
pub fn render_status(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fwd {} on {}, up {}, config {}, cluster fingerprint {}",
        r.version,
        r.nic,
        human_duration(r.uptime_seconds),
        r.config_path,
        r.cluster_fingerprint
    );
    if let Some(l) = &r.last_reload {
        let _ = writeln!(
            out,
            "last reload: {}",
            if l.ok {
                "applied".to_string()
            } else {
                format!("REJECTED: {}", l.error.as_deref().unwrap_or(""))
            }
        );
    }
    let _ = writeln!(
        out,
        "{:<34} {:<5} {:<9} {:>8} {:>8} {:>9} {:>9}",
        "service / backend", "mode", "state", "flows", "new", "packets", "bytes"
    );
    for s in &r.services {
        let label = if s.name == s.key { s.key.clone() } else { format!("{} {}", s.name, s.key) };
        let _ = writeln!(
            out,
            "{:<34} {:<5} {:<9} {:>8} {:>8} {:>9} {:>9}",
            label,
            s.mode,
            s.state,
            human_count(s.active_flows),
            human_count(s.new_flows),
            human_count(s.packets),
            human_count(s.bytes)
        );
        for b in &s.backends {
            let role = if b.fallback { "fallback " } else { "" };
            let health = match (b.health.as_str(), b.health_since_seconds) {
                (h, Some(t)) => format!("{h} {}", human_duration(t)),
                (h, None) => h.to_string(),
            };
            let table = if b.drained { "drained".to_string() } else { b.table_state.clone() };
            let _ = writeln!(
                out,
                "  -> {:<29} {:<5} {:<9} {:>8} {:>8} {:>9} {:>9}  w {} slots {} ({:.1}%) {}{}{}",
                format!("{role}{}", b.address),
                "",
                table,
                human_count(b.active_flows),
                human_count(b.new_flows),
                human_count(b.packets),
                human_count(b.bytes),
                b.weight,
                b.slots,
                b.share_percent,
                health,
                if b.health_reason.is_empty() { String::new() } else { format!(" ({})", b.health_reason) },
                if b.next_hop_mac.is_none() { ", next hop unresolved" } else { "" }
            );
        }
    }
    if let Some(bgp) = &r.bgp {
        render_bgp(&mut out, bgp);
    }
    out
}

/// The announcer's part of `fwd status`: FRR's reachability, then one line per prefix.
fn render_bgp(out: &mut String, bgp: &serde_json::Value) {
    let frr = &bgp["frr"];
    let reach = match frr["reachable"].as_bool() {
        Some(true) => "reachable".to_string(),
        Some(false) => format!("UNREACHABLE ({})", frr["last_error"].as_str().unwrap_or("")),
        None => "not asked yet".to_string(),
    };
    let mut head = format!("bgp: FRR {reach}");
    if let Some(s) = frr["last_reconcile_secs_ago"].as_f64() {
        let _ = write!(head, ", reconciled {} ago", human_duration(s));
    }
    if let Some(reason) = bgp["fail_closed"].as_str() {
        let _ = write!(head, ", FAIL CLOSED: {reason}");
    }
    if bgp["shutting_down"].as_bool() == Some(true) {
        head.push_str(", shutting down");
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(
        out,
        "  {:<24} {:<9} {:<9} {:<7} {:>8} {:>8}  note",
        "prefix", "desired", "announce", "in FRR", "changed", "penalty"
    );
    for p in bgp["prefixes"].as_array().into_iter().flatten() {
        let yes = |k: &str| if p[k].as_bool() == Some(true) { "yes" } else { "no" };
        let in_frr = match p["in_frr"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let mut note = Vec::new();
        if p["can_serve"].as_bool() == Some(false) {
            note.push("cannot serve".to_string());
        }
        if p["suppressed"].as_bool() == Some(true) {
            note.push("damped".to_string());
        }
        if let Some(h) = p["hold_down_remaining_secs"].as_f64() {
            note.push(format!("hold-down {h:.1}s"));
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {:<9} {:<7} {:>8} {:>8.0}  {}",
            p["prefix"].as_str().unwrap_or("?"),
            yes("desired"),
            yes("effective"),
            in_frr,
            p["last_change_secs_ago"].as_f64().map(human_duration).unwrap_or_else(|| "-".into()),
            p["penalty"].as_f64().unwrap_or(0.0),
            note.join(", ")
        );
    }
}

pub fn render_stats(r: &StatsReport) -> String {
    let mut out = String::new();
    for w in &r.workers {
        let drops: Vec<String> =
            w.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let socket: Vec<String> =
            w.socket.named().iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let umem = match w.umem.means() {
            Some([fill, rx, transmit]) => {
                format!("fill ring {fill:.0} rx ring {rx:.0} transmit {transmit:.0}")
            }
            None => "not sampled".to_string(),
        };
        let t = &w.batch_time_ns;
        let _ = writeln!(
            out,
            "worker core {} queue {}: rx {} ({} B) tx {} ({} B) pass {} icmp {} drops {} | socket {} | \
             umem frames (mean since start) {} | batches {} fill {:.1} busy {:.1}% | \
             batch time p50 {} ns p99 {} ns p99.9 {} ns max {} ns ({} samples/s) | flows {} | heartbeat {} ms ago",
            w.core,
            w.queue,
            w.rx_packets,
            w.rx_bytes,
            w.tx_packets,
            w.tx_bytes,
            w.pass,
            w.icmp_generated,
            if drops.is_empty() { "none".to_string() } else { drops.join(" ") },
            if socket.is_empty() { "clean".to_string() } else { socket.join(" ") },
            umem,
            w.batches,
            w.batch_fill,
            100.0 * w.busy_ratio,
            t.p50,
            t.p99,
            t.p999,
            t.max,
            t.samples,
            w.active_flows,
            w.heartbeat_age_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_control::admin::{SocketStats, UmemOccupancy, WorkerStats};

    #[test]
    fn stats_name_the_socket_counters_that_moved_and_where_the_frames_were() {
        let worker = |socket, umem| WorkerStats { core: 2, queue: 0, socket, umem, ..WorkerStats::default() };
        let report = StatsReport {
            workers: vec![
                worker(SocketStats::default(), UmemOccupancy::default()),
                worker(
                    SocketStats { rx_ring_full: 12, rx_dropped: 3, ..SocketStats::default() },
                    UmemOccupancy { samples: 10, fill_ring: 20_000, rx_ring: 19_004, transmit: 1_500 },
                ),
            ],
        };
        let text = render_stats(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("drops none | socket clean |"), "{text}");
        assert!(lines[1].contains("| socket rx_dropped=3 rx_ring_full=12 |"), "{text}");
        assert!(lines[0].contains("| umem frames (mean since start) not sampled |"), "{text}");
        assert!(
            lines[1].contains("| umem frames (mean since start) fill ring 2000 rx ring 1900 transmit 150 |"),
            "{text}"
        );
    }
}
