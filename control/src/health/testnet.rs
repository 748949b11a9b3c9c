//! A network namespace per test, so that checks and test servers talk only to addresses inside it.
//!
//! [`Netns`] creates `fwdtest-health-<pid>-<n>` with `lo` up and [`V4`]/[`V6`] on it, and deletes
//! it when dropped (also when the test panics). [`Netns::run`] runs the test body on a thread that
//! entered the namespace; threads it spawns (the checker's runtime, test servers) inherit it. A
//! network namespace is a per-thread property, so the test harness's threads never move.
//!
//! These helpers panic instead of skipping when a prerequisite is missing: a test that cannot run
//! must not pass.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The namespace's addresses, both on `lo`.
pub(super) const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
pub(super) const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1));

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub(super) struct Netns {
    name: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip`: {e} (iproute2 is needed: see tools/install-deps)"));
    assert!(
        output.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        assert!(
            rustix::process::geteuid().is_root(),
            "the health tests create network namespaces: run them as root"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let netns = Netns { name: format!("fwdtest-health-{}-{n}", std::process::id()) };
        // Created before anything else can fail, so that Drop removes whatever exists.
        ip(&["netns", "add", &netns.name]);
        let ns = netns.name.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{V4}/24"), "dev", "lo"]);
        ip(&["-n", ns, "addr", "add", &format!("{V6}/64"), "dev", "lo", "nodad"]);
        netns
    }

    /// Runs `body` on a new thread inside the namespace and returns its result (a panic in `body`
    /// is propagated).
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                let path = format!("/run/netns/{}", self.name);
                let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns({path}): {e}"));
                body()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
