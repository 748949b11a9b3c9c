//! Network namespaces for the end-to-end tests (root only), built with `ip` alone.
//!
//! [`Testnet`] is two namespaces, `fwdtest-pktgen-<pid>-<n>-a` and `-b`, joined by a veth pair
//! with one queue per side, addressed in 198.18.0.0/24 and fd00:18::/64, and removed on drop
//! (also when a test fails: unwinding drops it). A test runs fwd-pktgen inside a namespace by
//! starting its own test binary again there (`ip netns exec NS <test binary> --exact TEST`), with
//! the fwd-pktgen arguments in an environment variable; the child parses them like the command
//! line and prints its JSON report.
//!
//! Missing prerequisites fail the test: a test that cannot run must not pass.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const IFACE: &str = "veth0";
pub const MAC_A: &str = "02:00:00:00:00:0a";
pub const MAC_B: &str = "02:00:00:00:00:0b";
const ARGS_VAR: &str = "FWD_PKTGEN_TEST_ARGS";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e} (see tools/install-deps)"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[derive(Debug)]
pub struct Testnet {
    pub a: String,
    pub b: String,
}

impl Testnet {
    pub fn new() -> Testnet {
        let uid = run("id", &["-u"]);
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "these tests build network namespaces: run as root"
        );
        let base = format!("fwdtest-pktgen-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let net = Testnet { a: format!("{base}-a"), b: format!("{base}-b") };
        run("ip", &["netns", "add", &net.a]);
        run("ip", &["netns", "add", &net.b]);
        run(
            "ip",
            &[
                "-n",
                &net.a,
                "link",
                "add",
                IFACE,
                "address",
                MAC_A,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
                "type",
                "veth",
                "peer",
                "name",
                IFACE,
                "address",
                MAC_B,
                "netns",
                &net.b,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
            ],
        );
        for (ns, v4, v6) in
            [(&net.a, "198.18.0.1/24", "fd00:18::1/64"), (&net.b, "198.18.0.2/24", "fd00:18::2/64")]
        {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", ns, "addr", "add", v4, "dev", IFACE]);
            run("ip", &["-n", ns, "addr", "add", v6, "dev", IFACE, "nodad"]);
            run("ip", &["-n", ns, "link", "set", IFACE, "up"]);
            // veth would leave transport checksums to "hardware" for frames the kernel builds.
            run("ip", &["netns", "exec", ns, "ethtool", "-K", IFACE, "tx", "off"]);
        }
        net
    }

    /// Frames the namespace's veth received.
    pub fn rx_packets(&self, ns: &str) -> u64 {
        let out = run(
            "ip",
            &["netns", "exec", ns, "cat", &format!("/sys/class/net/{IFACE}/statistics/rx_packets")],
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a counter")
    }

    /// Whether a sink listens in `ns`: its XDP program is attached (AF_XDP) or a packet socket is
    /// open on the interface (AF_PACKET, seen in /proc/net/packet).
    pub fn sink_ready(&self, ns: &str, xdp: bool) -> bool {
        if xdp {
            let out = run("ip", &["-n", ns, "link", "show", "dev", IFACE]);
            String::from_utf8_lossy(&out.stdout).contains("xdp")
        } else {
            let out = run("ip", &["netns", "exec", ns, "cat", "/proc/net/packet"]);
            // Header line, then one line per socket; the sink's is bound to ETH_P_ALL (0003).
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(3) == Some("0003"))
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// In a child started by [`run_child`]/[`spawn_child`]: the fwd-pktgen arguments.
pub fn child_args() -> Option<Vec<String>> {
    let text = std::env::var(ARGS_VAR).ok()?;
    serde_json::from_str(&text).ok()
}

fn child_command(ns: &str, test: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
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
pub fn run_child(ns: &str, test: &str, args: &[&str]) -> serde_json::Value {
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

pub fn spawn_child(ns: &str, test: &str, args: &[&str]) -> ChildRun {
    ChildRun(Some(child_command(ns, test, args).spawn().expect("starting the child")))
}
