//! Network namespaces for the tests that need real interfaces (root only): the one place that
//! creates, enters, links and deletes them. This crate's tests use it directly; fwd-control's and
//! fwd-pktgen's tests use it through the `testnet` feature, which only their dev-dependencies turn
//! on, so no release build contains it.
//!
//! - [`Netns`] is a namespace named `fwdtest-<pid>-<n>-<tag>`, with `lo` up, deleted when dropped
//!   (also when a test fails: unwinding drops it). Deleting a namespace deletes the interfaces in
//!   it, and with a veth end its peer.
//! - [`veth`] joins two namespaces with a veth pair (one queue per side, so a socket on queue 0
//!   sees every frame), with addresses, and brings both ends up.
//! - [`NetnsPair`] is the topology of the AF_XDP and pktgen tests: two namespaces joined by
//!   [`IFACE`], with fixed MACs and addresses, and routes to the VIPs from `b` to `a`.
//! - [`run`] runs a command that must succeed; [`require_root`] asserts the effective uid is 0.
//!
//! A network namespace is a property of a thread, not of the process. [`Netns::run`] runs code on
//! a new thread that opened `/run/netns/<name>` (the file `ip netns add` binds the namespace to)
//! and called setns(2) on it; threads that code spawns inherit the namespace, and the test
//! harness's threads never move. [`Netns::exec`] runs a program there through `ip netns exec`.
//! setns and geteuid are called through `libc`, which this crate uses for every kernel call, in
//! the two unsafe blocks below (this is the only crate allowed them); fwd-control used to do the
//! same through rustix's safe wrappers, which would have added a dependency here for no gain.
//!
//! Everything here panics instead of skipping when a prerequisite is missing (not root, `ip` or
//! `ethtool` not installed, a command failing): a test that cannot run must not pass.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Panics unless the effective user is root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it builds network namespaces or loads XDP programs): run it as root"
    );
}

/// Runs a command that must succeed and returns its stdout; panics with the command, its exit
/// status and its output if it cannot start or fails.
pub fn run(program: &str, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&output.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace of this test process, with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fwdtest-<pid>-<n>-<tag>` (`tag` only tells a person which test made it).
    pub fn new(tag: &str) -> Netns {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fwdtest-{}-{n}-{tag}", std::process::id());
        // Left over by an earlier, killed process that had this pid: start clean.
        delete_netns(&name);
        run("ip", &["netns", "add", &name]);
        // From here on, Drop deletes it whatever fails next.
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> ARGS...`, which must succeed; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <name> PROGRAM ARGS...`, which must succeed; returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Adds `address` (`ADDR/LEN`) to `ifname`; an IPv6 one without duplicate address detection,
    /// which would keep it unusable for a while.
    pub fn add_address(&self, ifname: &str, address: &str) {
        if address.contains(':') {
            self.ip(&["-6", "addr", "add", address, "dev", ifname, "nodad"]);
        } else {
            self.ip(&["addr", "add", address, "dev", ifname]);
        }
    }

    /// The `ip -j -d link show` object of `ifname`.
    pub fn link_json(&self, ifname: &str) -> serde_json::Value {
        let text = self.ip(&["-j", "-d", "link", "show", "dev", ifname]);
        let links: serde_json::Value = serde_json::from_str(&text).expect("ip -j prints JSON");
        links.get(0).cloned().expect("ip -j link show lists the interface")
    }

    /// Moves the calling thread into the namespace, for good: call it on a thread of its own
    /// (see [`Netns::run`]), never on a test harness thread.
    pub fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        // SAFETY: setns on a namespace file we hold open; it changes only this thread's network
        // namespace, and nothing in this process relies on a thread's namespace staying put.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
    }

    /// Runs `body` on a new thread inside the namespace and returns its result (a panic in `body`
    /// is propagated).
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                self.enter();
                body()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Deletes a namespace if it exists (nothing to report if it does not).
fn delete_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// One end of a veth pair.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub netns: &'a Netns,
    pub ifname: &'a str,
    /// `None`: the kernel picks a random one.
    pub mac: Option<&'a str>,
    /// `ADDR/LEN` each, see [`Netns::add_address`].
    pub addresses: &'a [&'a str],
}

/// Joins two namespaces with a veth pair, one queue per side, adds the addresses and brings both
/// ends up.
pub fn veth(a: VethEnd<'_>, b: VethEnd<'_>) {
    let mut args = vec!["link", "add", a.ifname];
    args.extend(a.mac.map(|mac| ["address", mac]).into_iter().flatten());
    args.extend(["numtxqueues", "1", "numrxqueues", "1", "type", "veth", "peer", "name", b.ifname]);
    args.extend(b.mac.map(|mac| ["address", mac]).into_iter().flatten());
    args.extend(["netns", b.netns.name(), "numtxqueues", "1", "numrxqueues", "1"]);
    a.netns.ip(&args);
    for end in [a, b] {
        for address in end.addresses {
            end.netns.add_address(end.ifname, address);
        }
        end.netns.ip(&["link", "set", end.ifname, "up"]);
    }
}

/// Side A: where fwd runs. Side B: the peer that sends and receives.
pub const A_V4: &str = "198.18.0.1";
pub const B_V4: &str = "198.18.0.2";
pub const A_V6: &str = "fd00:18::1";
pub const B_V6: &str = "fd00:18::2";
pub const MAC_A: &str = "02:00:00:00:00:0a";
pub const MAC_B: &str = "02:00:00:00:00:0b";
/// VIPs, routed by B to A; not configured on any interface.
pub const VIP_V4: &str = "198.18.100.1";
pub const VIP_V6: &str = "fd00:18:100::1";
/// The veth on both sides.
pub const IFACE: &str = "veth0";

/// Two namespaces, `a` and `b`, joined by [`IFACE`] with [`MAC_A`]/[`MAC_B`], addressed with
/// [`A_V4`]/[`A_V6`] and [`B_V4`]/[`B_V6`]; `b` routes the VIPs to `a`. Dropping it deletes both.
#[derive(Debug)]
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
}

impl NetnsPair {
    pub fn new() -> NetnsPair {
        let pair = NetnsPair { a: Netns::new("a"), b: Netns::new("b") };
        let addresses = |v4: &str, v6: &str| [format!("{v4}/24"), format!("{v6}/64")];
        let (a, b) = (addresses(A_V4, A_V6), addresses(B_V4, B_V6));
        veth(
            VethEnd {
                netns: &pair.a,
                ifname: IFACE,
                mac: Some(MAC_A),
                addresses: &a.each_ref().map(String::as_str),
            },
            VethEnd {
                netns: &pair.b,
                ifname: IFACE,
                mac: Some(MAC_B),
                addresses: &b.each_ref().map(String::as_str),
            },
        );
        for netns in [&pair.a, &pair.b] {
            // veth leaves transport checksums to "hardware" (CHECKSUM_PARTIAL): a frame read
            // through XDP or a packet socket would carry a half-done checksum.
            netns.exec("ethtool", &["-K", IFACE, "tx", "off"]);
        }
        pair.b.ip(&["route", "add", &format!("{VIP_V4}/32"), "via", A_V4]);
        pair.b.ip(&["-6", "route", "add", &format!("{VIP_V6}/128"), "via", A_V6]);
        pair
    }
}

impl Default for NetnsPair {
    fn default() -> Self {
        NetnsPair::new()
    }
}
