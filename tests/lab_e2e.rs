//! End to end, as root: `tools/lab test` builds the namespace lab (client, router, L2 segment with
//! the fwd box and three DSR backends), runs this build's `fwd` on the fwd box, and checks with real
//! TCP and UDP traffic over IPv4 and IPv6 that:
//! - every one of 1000 connections/exchanges per family and protocol is answered by a backend;
//! - every backend gets a share within 10% of its weight share;
//! - `fwd which` names the backend of sampled flows;
//! - `ipip` and `gue` frames captured at a backend carry the right outer and inner headers;
//! - fwd received exactly the packets the router sent to the VIPs and replies bypassed it;
//! - the fwd box's own address still answers while fwd runs; fwd exits 0 on SIGTERM and leaves no
//!   XDP program behind; with two queues, both workers forward.
//!
//! These tests need root and network namespaces. They fail (never skip) without them: CI runs as
//! root, and a skipped end-to-end test would hide a broken data plane.

use std::process::Command;
use std::sync::Mutex;

/// One lab at a time: each runs a busy-polling forwarder and a dozen processes on two cores.
static LAB: Mutex<()> = Mutex::new(());

fn run_lab(queues: u32, cores: &str) -> serde_json::Value {
    let _one_at_a_time = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/tools/lab"))
        .arg("test")
        .env("FWD_BIN", env!("CARGO_BIN_EXE_fwd"))
        .env("LAB_FLOWS", "1000")
        .env("LAB_QUEUES", queues.to_string())
        .env("LAB_CORES", cores)
        .output()
        .expect("running tools/lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tools/lab test failed:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tools/lab printed no JSON summary ({e}):\n{stderr}"));
    let checks = summary["checks"].as_array().expect("checks");
    assert!(checks.len() >= 20, "too few checks ran: {summary}");
    for c in checks {
        assert_eq!(c["ok"], true, "{}\n{stderr}", c["check"]);
    }
    summary
}

#[test]
fn one_worker_forwards_real_traffic_by_dsr() {
    let s = run_lab(1, "0");
    assert!(s["fwd_rx"].as_u64().unwrap() >= 4 * 1000 * 2, "{s}");
    assert_eq!(s["fwd_rx"], s["router_to_vip"]);
}

#[test]
fn two_workers_on_two_queues_both_forward_and_agree() {
    let s = run_lab(2, "0,1");
    let per_worker = s["worker_rx_frames"].as_array().unwrap();
    assert_eq!(per_worker.len(), 2, "{s}");
}
