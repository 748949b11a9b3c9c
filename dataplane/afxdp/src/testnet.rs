//! Network namespaces for the tests that need real interfaces (root only).
//!
//! [`NetnsPair`] builds two namespaces joined by a veth pair with one queue per side (so a socket
//! on queue 0 sees every frame) and removes them when dropped, also when a test fails. Code runs
//! inside a namespace on a thread of its own ([`NetnsPair::run_in`]): a network namespace is a
//! per-thread property, so the test thread itself never moves.
//!
//! These helpers fail (panic) instead of skipping when a prerequisite is missing: a test that
//! cannot run must not pass.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Side A: where fwd runs. Side B: the peer that sends and receives.
pub(crate) const A_V4: &str = "198.18.0.1";
pub(crate) const B_V4: &str = "198.18.0.2";
pub(crate) const A_V6: &str = "fd00:18::1";
pub(crate) const B_V6: &str = "fd00:18::2";
/// VIPs, routed by B to A; not configured on any interface.
pub(crate) const VIP_V4: &str = "198.18.100.1";
pub(crate) const VIP_V6: &str = "fd00:18:100::1";
/// The veth on both sides.
pub(crate) const IFACE: &str = "veth0";

pub(crate) fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test builds network namespaces and loads XDP programs: run it as root");
}

/// Runs a command, panicking with its output if it cannot start or fails.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e} (is it installed? see tools/install-deps)"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `a` and `b`, joined by `veth0`, addressed with [`A_V4`]/[`A_V6`] and
/// [`B_V4`]/[`B_V6`]; `b` routes the VIPs to `a`.
#[derive(Debug)]
pub(crate) struct NetnsPair {
    pub a: String,
    pub b: String,
}

impl NetnsPair {
    pub fn new() -> NetnsPair {
        require_root();
        let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let base = format!("fwdt-{}-{n}", std::process::id());
        let pair = NetnsPair { a: format!("{base}-a"), b: format!("{base}-b") };
        // Created before anything can fail, so that Drop cleans up whatever exists.
        run("ip", &["netns", "add", &pair.a]);
        run("ip", &["netns", "add", &pair.b]);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        run(
            "ip",
            &[
                "-n",
                a,
                "link",
                "add",
                IFACE,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
                "type",
                "veth",
                "peer",
                "name",
                IFACE,
                "netns",
                b,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
            ],
        );
        for (ns, v4, v6) in [(a, A_V4, A_V6), (b, B_V4, B_V6)] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", IFACE]);
            run("ip", &["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", IFACE, "nodad"]);
            run("ip", &["-n", ns, "link", "set", IFACE, "up"]);
            // veth leaves transport checksums to "hardware" (CHECKSUM_PARTIAL): a frame read
            // through XDP would carry a half-done checksum, and the bounced copy would be dropped.
            run("ip", &["netns", "exec", ns, "ethtool", "-K", IFACE, "tx", "off"]);
        }
        run("ip", &["-n", b, "route", "add", &format!("{VIP_V4}/32"), "via", A_V4]);
        run("ip", &["-n", b, "-6", "route", "add", &format!("{VIP_V6}/128"), "via", A_V6]);
        pair
    }

    /// Runs `f` on a new thread inside namespace `ns` and returns its result (a panic in `f`
    /// is propagated).
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                enter(ns);
                f()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The `ip -j link show` object of `IFACE` in namespace `ns`.
    pub fn link_json(ns: &str) -> serde_json::Value {
        let output = run("ip", &["-n", ns, "-j", "-d", "link", "show", "dev", IFACE]);
        let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip -j prints JSON");
        links.get(0).cloned().expect("ip -j link show lists the interface")
    }
}

/// Moves the calling thread into network namespace `ns`.
pub(crate) fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: setns on a namespace file we hold open; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it (and with it the pair).
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
