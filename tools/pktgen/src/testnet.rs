//! The end-to-end tests' network is `fwd_afxdp::testnet::NetnsPair`: two
//! namespaces (`a`, `b`) joined by a veth pair with one queue per side, with fixed MACs, addressed
//! in 198.18.0.0/24 and fd00:18::/64, and removed on drop (also when a test fails: unwinding drops
//! it). What is fwd-pktgen's own is here: a test runs fwd-pktgen inside a namespace by starting
//! its own test binary again there (`ip netns exec NS <test binary> --exact TEST`), with the
//! fwd-pktgen arguments in an environment variable; the child parses them like the command line
//! and prints its JSON report.
//!
//! Missing prerequisites fail the test: a test that cannot run must not pass.

use fwd_afxdp::testnet::{Netns, IFACE};
use std::process::{Child, Command, Output, Stdio};

const ARGS_VAR: &str = "FWD_PKTGEN_TEST_ARGS";

/// Frames the veth in `ns` received.
pub fn rx_packets(ns: &Netns) -> u64 {
    let counter = ns.exec("cat", &[&format!("/sys/class/net/{IFACE}/statistics/rx_packets")]);
    counter.trim().parse().expect("a counter")
}

/// Whether a sink listens in `ns`: its XDP program is attached (AF_XDP) or a packet socket is
/// open on the interface (AF_PACKET, seen in /proc/net/packet).
pub fn sink_ready(ns: &Netns, xdp: bool) -> bool {
    if xdp {
        ns.ip(&["link", "show", "dev", IFACE]).contains("xdp")
    } else {
        // Header line, then one line per socket; the sink's is bound to ETH_P_ALL (0003).
        ns.exec("cat", &["/proc/net/packet"])
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(3) == Some("0003"))
    }
}

/// Waits up to 20 s for a sink to listen in `ns` (see [`sink_ready`]); panics if it does not.
pub fn wait_for_sink(ns: &Netns, xdp: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sink_ready(ns, xdp) {
        assert!(std::time::Instant::now() < deadline, "the sink did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// In a child started by [`run_child`]/[`spawn_child`]: the fwd-pktgen arguments.
pub fn child_args() -> Option<Vec<String>> {
    let text = std::env::var(ARGS_VAR).ok()?;
    serde_json::from_str(&text).ok()
}

fn child_command(ns: &Netns, test: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns.name()])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ARGS_VAR, serde_json::to_string(args).expect("JSON"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The JSON report a child printed among the test harness's lines.
fn report_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    // The harness may print "test NAME ... " in front of it on the same line.
    let line = stdout.lines().find_map(|l| l.find("{\"").map(|at| &l[at..])).unwrap_or_else(|| {
        panic!("no JSON report from the child: {stdout}{}", String::from_utf8_lossy(&output.stderr))
    });
    serde_json::from_str(line).expect("the report is JSON")
}

/// Runs fwd-pktgen `args` in `ns` to the end and returns its report.
pub fn run_child(ns: &Netns, test: &str, args: &[&str]) -> serde_json::Value {
    let output = child_command(ns, test, args).output().expect("starting the child");
    report_of(&output)
}

/// A child running in the background: [`ChildRun::finish`] waits for its report. Killed if
/// dropped unfinished (a failing test).
pub struct ChildRun(Option<Child>);

impl ChildRun {
    pub fn finish(mut self) -> serde_json::Value {
        let child = self.0.take().expect("finished once");
        report_of(&child.wait_with_output().expect("waiting for the child"))
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn spawn_child(ns: &Netns, test: &str, args: &[&str]) -> ChildRun {
    ChildRun(Some(child_command(ns, test, args).spawn().expect("starting the child")))
}
