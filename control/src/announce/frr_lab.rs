//! Test helper: FRR (zebra + bgpd) in network namespaces, as measured in `notes/frr.md`. The
//! namespaces and the veth links between them are `fwd_afxdp::testnet`'s (`Netns`, `veth`).
//! Everything is undone by `Drop`, also when a test panics: daemons are killed through their pid
//! files (after checking that the pid still runs that daemon of that instance), then the namespace
//! is deleted.
//!
//! Declare the namespaces first and the [`Frr`] instances after them, so the daemons stop before
//! their namespace goes (locals drop in reverse order).
//!
//! ```text
//! let box_ns = Netns::new("ecmp-box1");          // fwdtest-<pid>-<n>-ecmp-box1
//! let router = Netns::new("ecmp-rtr");
//! veth(
//!     VethEnd { netns: &box_ns, ifname: "eth0", mac: None, addresses: &["198.18.0.1/24", "fd00:18::1/64"] },
//!     VethEnd { netns: &router, ifname: "eth1", mac: None, addresses: &["198.18.0.2/24", "fd00:18::2/64"] },
//! );
//! let box_frr = Frr::start(&box_ns, "router bgp 65001\n ...");
//! let rtr_frr = Frr::start(&router, "router bgp 65000\n ...");
//! rtr_frr.wait_established(&["198.18.0.1"], Duration::from_secs(15));
//! box_frr.dir()                                   // --vty_socket for fwd's [bgp]
//! ```

use fwd_afxdp::testnet::{run, Netns};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The FRR daemons the lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Daemon {
    Zebra,
    Bgpd,
}

impl Daemon {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Daemon::Zebra => "zebra",
            Daemon::Bgpd => "bgpd",
        }
    }
}

/// Runs a command and returns its output, whatever the exit status.
pub(crate) fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// The kernel's routes in `netns` for exactly `prefix` (`ip route show PREFIX`), one line each.
pub(crate) fn routes(netns: &Netns, prefix: &str) -> Vec<String> {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    netns.ip(&[family, "route", "show", prefix]).lines().map(|l| l.trim().to_string()).collect()
}

/// One FRR instance (zebra + bgpd) in a namespace, with its own directory for sockets, pid files,
/// logs and bgpd's startup configuration. Nothing touches /etc/frr or /var/run/frr.
#[derive(Debug)]
pub(crate) struct Frr {
    ns: String,
    dir: PathBuf,
}

impl Frr {
    /// Starts zebra and bgpd in `ns`; bgpd loads `bgpd_conf` at every start, like a real
    /// deployment's frr.conf, so a restarted bgpd has the base configuration but none of the
    /// runtime changes.
    pub(crate) fn start(ns: &Netns, bgpd_conf: &str) -> Frr {
        let dir = std::env::temp_dir().join(format!("{}-frr", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bgpd.conf"), bgpd_conf).unwrap();
        run("chown", &["-R", "frr:frr", &dir.display().to_string()]);
        let frr = Frr { ns: ns.name().to_string(), dir };
        frr.start_daemon(Daemon::Zebra);
        frr.start_daemon(Daemon::Bgpd);
        frr
    }

    /// The vty socket directory: `--vty_socket` for vtysh, `bgp.vty_socket` for fwd.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts one daemon and waits until vtysh gets an answer from it.
    pub(crate) fn start_daemon(&self, daemon: Daemon) {
        let d = self.dir.display().to_string();
        let name = daemon.name();
        let config = match daemon {
            Daemon::Zebra => "/dev/null".to_string(),
            Daemon::Bgpd => format!("{d}/bgpd.conf"),
        };
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                &format!("/usr/lib/frr/{name}"),
                "-d",
                "-F",
                "traditional",
                "-P",
                "0",
                "-f",
                &config,
                "-i",
                &format!("{d}/{name}.pid"),
                "-z",
                &format!("{d}/zserv.api"),
                "--vty_socket",
                &d,
                "--log",
                &format!("file:{d}/{name}.log"),
            ],
        );
        let end = Instant::now() + Duration::from_secs(10);
        while !self.vtysh_daemon(daemon, &["show version"]).status.success() {
            assert!(Instant::now() < end, "{name} in {} did not answer within 10 s", self.ns);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of a running daemon of this instance, from its pid file; `None` if the file is
    /// missing or stale (so a recycled pid is never signalled).
    pub(crate) fn pid(&self, daemon: Daemon) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join(format!("{}.pid", daemon.name())))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = cmdline.contains(&format!("/usr/lib/frr/{}", daemon.name()))
            && cmdline.contains(&self.dir.display().to_string());
        (ours && alive(pid)).then_some(pid)
    }

    /// Sends `signal` to a daemon and waits (5 s at most) until it is gone.
    pub(crate) fn signal_daemon(&self, daemon: Daemon, signal: rustix::process::Signal) {
        let Some(pid) = self.pid(daemon) else { return };
        let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else { return };
        let _ = rustix::process::kill_process(raw, signal);
        let end = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops a daemon cleanly (SIGTERM, then SIGKILL if it lingers).
    pub(crate) fn stop_daemon(&self, daemon: Daemon) {
        self.signal_daemon(daemon, rustix::process::Signal::TERM);
        self.signal_daemon(daemon, rustix::process::Signal::KILL);
    }

    /// Runs vtysh against one daemon of this instance.
    pub(crate) fn vtysh_daemon(&self, daemon: Daemon, commands: &[&str]) -> Output {
        let d = self.dir.display().to_string();
        let mut args = vec!["--vty_socket", &d, "-d", daemon.name()];
        for c in commands {
            args.push("-c");
            args.push(c);
        }
        output("vtysh", &args)
    }

    /// Runs vtysh commands against bgpd, which must accept them; returns the output.
    pub(crate) fn bgpd(&self, commands: &[&str]) -> String {
        let out = self.vtysh_daemon(Daemon::Bgpd, commands);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "vtysh {commands:?} in {}: {text}{}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// bgpd's running configuration; empty when bgpd does not answer.
    pub(crate) fn running_config(&self) -> String {
        let out = self.vtysh_daemon(Daemon::Bgpd, &["show running-config"]);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    }

    /// The prefixes with a `network` line in bgpd's running configuration, read as plain text
    /// (independently of the announcer's parser).
    pub(crate) fn network_lines(&self) -> BTreeSet<String> {
        self.running_config()
            .lines()
            .filter_map(|l| l.strip_prefix("  network "))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    /// The prefixes in bgpd's BGP table for `family` ("ipv4" or "ipv6"), from its JSON.
    pub(crate) fn bgp_table(&self, family: &str) -> BTreeSet<String> {
        let text = self.bgpd(&[&format!("show bgp {family} unicast json")]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        json["routes"].as_object().map(|r| r.keys().cloned().collect()).unwrap_or_default()
    }

    /// Waits until bgpd has an established session with every neighbour in `peers`.
    pub(crate) fn wait_established(&self, peers: &[&str], timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let text = self.bgpd(&["show bgp neighbors json"]);
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if peers.iter().all(|p| json[*p]["bgpState"] == "Established") {
                return;
            }
            assert!(
                Instant::now() < end,
                "sessions in {} not established within {timeout:?}: {text}",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.stop_daemon(Daemon::Bgpd);
        self.stop_daemon(Daemon::Zebra);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a process runs: it exists and is not a zombie (nothing here reaps orphaned daemons,
/// so a dead one can stay a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
