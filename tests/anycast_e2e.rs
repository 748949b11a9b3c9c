//! End to end, as root, with real FRR: `tools/anycast_lab.py test` builds the anycast lab (a router
//! running FRR that spreads flows by ECMP over two fwd boxes, each with its own FRR and fwd, and
//! three DSR backends), runs this build's `fwd` on both boxes, and checks that:
//! 1. when every backend of a VIP stops, fwd withdraws it (IPv4 and IPv6) within fall x interval
//!    + 2 s, and announces it again after rise x interval and the hold-down when they return;
//! 2. after bgpd restarts on a box, fwd re-asserts its announcements within one reconcile interval;
//! 3. on SIGTERM fwd withdraws first and keeps forwarding for the drain time: the router loses the
//!    box before fwd exits, and no client connection fails;
//! 4. both boxes are next hops, flows spread over them and reach the backend `fwd which` names, and
//!    with one box frozen, new and long-lived connections keep working through the other one;
//! 5. a VIP whose backends flap every second changes route no faster than hold-down and damping allow.
//!
//! It needs root, network namespaces and FRR (tools/install-deps installs it). It fails (never
//! skips) without them: CI runs as root, and a skipped test would hide a broken announcer.

use std::process::Command;

#[test]
fn anycast_lab_scenarios_pass_with_real_frr() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/tools/anycast_lab.py"))
        .arg("test")
        .env("FWD_BIN", env!("CARGO_BIN_EXE_fwd"))
        .output()
        .expect("running tools/anycast_lab.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tools/anycast_lab.py printed no JSON summary ({e}):\n{stderr}"));
    println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    assert!(out.status.success(), "tools/anycast_lab.py test failed:\n{stderr}");
    assert_eq!(summary["announcer"], "fwd", "{summary}");
    let scenarios = summary["scenarios"].as_array().expect("scenarios");
    let mut numbers: Vec<u64> = scenarios.iter().filter_map(|s| s["scenario"].as_u64()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "every scenario must run: {summary}");
    for s in scenarios {
        assert_eq!(s["ok"], true, "scenario {} failed: {s}\n{stderr}", s["scenario"]);
        assert!(s["checks"].as_array().is_some_and(|c| c.len() >= 3), "too few checks: {s}");
    }
}
