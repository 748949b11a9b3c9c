//! End to end, as root: `tools/lab test` builds the namespace lab (client, router, L2 segment with
//! the fwd box and three DSR backends), runs this build's `fwd` on the fwd box, and checks with real
//! TCP and UDP traffic over IPv4 and IPv6 that:
//! - every one of 1000 connections/exchanges per family and protocol is answered by a backend;
//! - every backend gets a share within 10% of its weight share;
//! - `fwd which` names the backend of sampled flows;
//! - `ipip` and `gue` frames captured at a backend carry the right outer and inner headers;
//! - fwd received exactly the packets the router sent to the VIPs and replies bypassed it;
//! - the fwd box's own address still answers while fwd runs; fwd exits 0 on SIGTERM and leaves no
//!   XDP program behind; with two queues, both workers forward;
//! - idle workers give their core away as told: the one-worker run sleeps in ppoll until frames
//!   wake it (`--idle-wait-us`), the two-worker run yields (`--idle-yield`).
//!
//! And `tools/lab control` (tools/lab_control.py) checks the control side against real backends:
//! health checks of every type (tcp, http, udp, exec) take a stopped, failing (HTTP 503) or hung
//! backend out of its tables within fall x interval plus one interval and back after rise x
//! interval, while new connections avoid it and established ones to the others continue; drain;
//! a broken reload changes nothing and a valid one adds and removes services under traffic with
//! no failed connection; the Prometheus endpoint, `fwd status` and `fwd stats`.
//!
//! These tests need root and network namespaces. They fail (never skip) without them: CI runs as
//! root, and a skipped end-to-end test would hide a broken data plane.

use std::process::Command;
use std::sync::Mutex;

/// One lab at a time: each runs a busy-polling forwarder and a dozen processes on two cores.
static LAB: Mutex<()> = Mutex::new(());

/// `idle`: what fwd's idle workers do (LAB_IDLE: `wait` sleeps in ppoll until frames arrive,
/// `yield` yields the core); the lab checks that they did it.
fn run_lab(queues: u32, cores: &str, idle: &str) -> serde_json::Value {
    let summary = run_lab_mode(
        "test",
        &[
            ("LAB_FLOWS", "1000"),
            ("LAB_QUEUES", &queues.to_string()),
            ("LAB_CORES", cores),
            ("LAB_IDLE", idle),
        ],
    );
    let checks = summary["checks"].as_array().expect("checks");
    assert!(checks.len() >= 20, "too few checks ran: {summary}");
    summary
}

/// Runs `tools/lab MODE` with this build's fwd; asserts it succeeded and every check of its JSON
/// summary passed; returns the summary.
fn run_lab_mode(mode: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let _one_at_a_time = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/tools/lab"))
        .arg(mode)
        .env("FWD_BIN", env!("CARGO_BIN_EXE_fwd"))
        .envs(env.iter().copied())
        .output()
        .expect("running tools/lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("tools/lab {mode} (exit {:?}) printed no JSON summary ({e}):\n{stderr}", out.status.code())
    });
    let failed: Vec<&serde_json::Value> = summary["checks"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["ok"] != true).collect())
        .unwrap_or_default();
    assert!(
        out.status.success() && failed.is_empty(),
        "tools/lab {mode} failed (exit {:?}); failed checks: {failed:#?}\n{stderr}",
        out.status.code()
    );
    summary
}

#[test]
fn one_worker_forwards_real_traffic_by_dsr() {
    let s = run_lab(1, "0", "wait");
    assert!(s["fwd_rx"].as_u64().unwrap() >= 4 * 1000 * 2, "{s}");
    assert_eq!(s["fwd_rx"], s["router_to_vip"]);
    let (waits, wakeups) = (&s["worker_waits_wakeups"][0][0], &s["worker_waits_wakeups"][0][1]);
    assert!(waits.as_u64() > Some(0) && wakeups.as_u64() > Some(0), "{s}");
}

#[test]
fn two_workers_on_two_queues_both_forward_and_agree() {
    let s = run_lab(2, "0,1", "yield");
    let per_worker = s["worker_rx_frames"].as_array().unwrap();
    assert_eq!(per_worker.len(), 2, "{s}");
    assert_eq!(s["worker_waits_wakeups"], serde_json::json!([[0, 0], [0, 0]]), "{s}");
}

#[test]
fn control_health_drain_reload_and_metrics_on_real_backends() {
    let s = run_lab_mode("control", &[]);
    // The measured detection and return times, per scenario and service.
    println!("{}", serde_json::to_string_pretty(&s["measured"]).unwrap_or_default());
    let checks = s["checks"].as_array().expect("checks");
    for scenario in ["a", "b", "c", "d", "e", "f"] {
        let ran = checks.iter().filter(|c| c["scenario"] == scenario).count();
        assert!(ran >= 5, "scenario {scenario} ran only {ran} checks: {s}");
    }
    for (scenario, times) in
        [("a", "left_the_table_s"), ("a", "back_in_the_table_s"), ("c", "left_the_table_s")]
    {
        let measured = s["measured"][scenario][times].as_object().expect("measured times");
        assert!(measured.values().all(|t| t.is_number()), "{scenario} {times}: {measured:?}");
    }
    assert_eq!(s["measured"]["e"]["background_client"]["failed"], 0, "{s}");
}
