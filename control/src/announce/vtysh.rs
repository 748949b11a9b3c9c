//! Talking to FRR through `vtysh`: building the argument lists, running it with a deadline, and
//! reading its answers.
//!
//! Each run starts vtysh in its own process group, for two reasons: a hung vtysh is killed with
//! everything it started, and the Ctrl-C that stops fwd does not also kill the vtysh that is
//! withdrawing fwd's prefixes. Changes go to bgpd only (`-d bgpd`) with `-E`, so the echoed
//! commands show which command an error belongs to: vtysh stops at the first failing `-c`.

use super::frr_config::{parse_running_config, FrrBgpState};
use crate::config::{BgpConfig, IpPrefix};
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What FRR prints for `no network P` when P is not configured: the prefix is already withdrawn.
pub const NOT_CONFIGURED: &str = "% Can't find static route specified";

/// One change of FRR's `network` statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Announce(IpPrefix),
    Withdraw(IpPrefix),
}

impl Change {
    pub fn prefix(&self) -> IpPrefix {
        match self {
            Change::Announce(p) | Change::Withdraw(p) => *p,
        }
    }

    /// The command under `address-family`, rendered from the typed prefix.
    fn command(&self) -> String {
        match self {
            Change::Announce(p) => format!("network {p}"),
            Change::Withdraw(p) => format!("no network {p}"),
        }
    }
}

/// Why talking to FRR failed. Each message says what was run and what to check.
#[derive(Debug, thiserror::Error)]
pub enum VtyshError {
    /// The program could not be started.
    #[error("cannot run {program} (bgp.vtysh): {source}")]
    Spawn { program: String, source: std::io::Error },
    /// It ran past `bgp.vtysh_timeout` and was killed.
    #[error("{program} did not finish within {timeout:?} (bgp.vtysh_timeout); killed it")]
    Timeout { program: String, timeout: Duration },
    /// vtysh ran but could not reach bgpd: FRR is not running, or the socket settings are wrong.
    #[error("bgpd is not reachable through {program} {args}: {detail}")]
    Unreachable { program: String, args: String, detail: String },
    /// bgpd has no `router bgp ASN`; fwd adds `network` statements to it but never creates it.
    #[error("FRR's bgpd has no BGP instance: its configuration needs `router bgp ASN`")]
    NoBgpInstance,
    /// bgpd refused a command.
    #[error("FRR rejected `{command}`: {message}")]
    Rejected { command: String, message: String },
    /// Any other failure: an exit status or an output that fwd does not understand.
    #[error("{program} {what}: {output}")]
    Unexpected { program: String, what: String, output: String },
}

impl VtyshError {
    /// Whether vtysh got an answer from bgpd (which then refused), as opposed to no answer.
    pub fn reached_frr(&self) -> bool {
        matches!(self, VtyshError::NoBgpInstance | VtyshError::Rejected { .. })
    }
}

/// What one vtysh run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// How to run vtysh, from `[bgp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vtysh {
    program: PathBuf,
    vty_socket: Option<PathBuf>,
    namespace: Option<String>,
    extra_args: Vec<String>,
    timeout: Duration,
}

impl Vtysh {
    pub fn new(config: &BgpConfig) -> Vtysh {
        Vtysh {
            program: config.vtysh.clone(),
            vty_socket: config.vty_socket.clone(),
            namespace: config.namespace.clone(),
            extra_args: config.extra_args.clone(),
            timeout: config.vtysh_timeout,
        }
    }

    /// The program, for messages.
    pub fn program(&self) -> String {
        self.program.display().to_string()
    }

    /// The arguments that pick the FRR instance and its bgpd, before any command.
    pub fn connection_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(dir) = &self.vty_socket {
            args.push("--vty_socket".into());
            args.push(dir.into());
        }
        if let Some(name) = &self.namespace {
            args.push("-N".into());
            args.push(name.into());
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args.push("-d".into());
        args.push("bgpd".into());
        args
    }

    /// Arguments that read bgpd's running configuration.
    pub fn show_args(&self) -> Vec<OsString> {
        let mut args = self.connection_args();
        args.push("-c".into());
        args.push("show running-config".into());
        args
    }

    /// Arguments that apply all `changes` in one run: withdraws first (they matter more if the run
    /// is cut short), each family under its own `address-family`. The second list maps each `-c`
    /// command to the index of its change, `None` for the context commands.
    pub fn change_args(&self, changes: &[Change]) -> (Vec<OsString>, Vec<Option<usize>>) {
        let mut commands: Vec<(String, Option<usize>)> =
            vec![("configure terminal".into(), None), ("router bgp".into(), None)];
        for (family, is_family) in [
            ("ipv4", (|p: &IpPrefix| matches!(p, IpPrefix::V4(_))) as fn(&IpPrefix) -> bool),
            ("ipv6", |p: &IpPrefix| matches!(p, IpPrefix::V6(_))),
        ] {
            let mut ordered: Vec<(usize, &Change)> =
                changes.iter().enumerate().filter(|(_, c)| is_family(&c.prefix())).collect();
            if ordered.is_empty() {
                continue;
            }
            ordered.sort_by_key(|(_, c)| matches!(c, Change::Announce(_)));
            commands.push((format!("address-family {family} unicast"), None));
            commands.extend(ordered.into_iter().map(|(i, c)| (c.command(), Some(i))));
            commands.push(("exit-address-family".into(), None));
        }
        let mut args = self.connection_args();
        args.push("-E".into());
        let mut owners = Vec::with_capacity(commands.len());
        for (command, owner) in commands {
            args.push("-c".into());
            args.push(command.into());
            owners.push(owner);
        }
        (args, owners)
    }

    /// Reads which prefixes bgpd's default instance has `network` statements for.
    pub fn read_state(&self) -> Result<FrrBgpState, VtyshError> {
        let args = self.show_args();
        let out = self.run(&args)?;
        if !out.status.success() {
            return Err(self.failure(&args, &out));
        }
        let state = parse_running_config(&out.stdout).map_err(|e| VtyshError::Unexpected {
            program: self.program.display().to_string(),
            what: "printed a running-config fwd cannot read".into(),
            output: e.to_string(),
        })?;
        if !state.has_instance {
            return Err(VtyshError::NoBgpInstance);
        }
        Ok(state)
    }

    /// Applies `changes` in as few runs as possible. A `no network` that FRR answers with
    /// [`NOT_CONFIGURED`] counts as done; since vtysh stops there, the rest is sent again.
    pub fn apply(&self, changes: &[Change]) -> Result<(), VtyshError> {
        let mut remaining: Vec<Change> = changes.to_vec();
        // Each round finishes at least one change, so this bound is never the reason to stop.
        for _ in 0..=changes.len() {
            if remaining.is_empty() {
                return Ok(());
            }
            let (args, owners) = self.change_args(&remaining);
            let out = self.run(&args)?;
            match attribute_errors(&out.stdout, &args) {
                Outcome::Done if out.status.success() => return Ok(()),
                Outcome::Failed { index: Some(index), message, .. }
                    if message == NOT_CONFIGURED
                        && owners
                            .get(index)
                            .copied()
                            .flatten()
                            .is_some_and(|i| matches!(remaining.get(i), Some(Change::Withdraw(_)))) =>
                {
                    // Everything up to the refused command ran; the rest did not.
                    let unrun: Vec<usize> = owners.iter().skip(index + 1).flatten().copied().collect();
                    remaining = unrun.iter().filter_map(|&i| remaining.get(i).copied()).collect();
                }
                Outcome::Failed { message, .. } if message.contains("No BGP process is configured") => {
                    return Err(VtyshError::NoBgpInstance)
                }
                Outcome::Failed { command, message, .. } => {
                    return Err(VtyshError::Rejected { command, message })
                }
                Outcome::Done => return Err(self.failure(&args, &out)),
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        Err(VtyshError::Unexpected {
            program: self.program(),
            what: "kept refusing withdrawals".into(),
            output: format!("{} changes left unapplied", remaining.len()),
        })
    }

    /// Runs vtysh with `args`, killing its process group at the deadline.
    pub fn run(&self, args: &[OsString]) -> Result<RunOutput, VtyshError> {
        use std::os::unix::process::CommandExt;
        let program = || self.program.display().to_string();
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| VtyshError::Spawn { program: program(), source })?;
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                waited => {
                    // The group id is the child's pid (process_group(0)); killing the group also
                    // ends whatever vtysh started. The child is still unreaped, so its pid (and the
                    // group) cannot have been reused.
                    let _ = rustix::process::kill_process_group(
                        rustix::process::Pid::from_child(&child),
                        rustix::process::Signal::KILL,
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(match waited {
                        Err(e) => VtyshError::Unexpected {
                            program: program(),
                            what: "could not be waited for".into(),
                            output: e.to_string(),
                        },
                        _ => VtyshError::Timeout { program: program(), timeout: self.timeout },
                    });
                }
            }
        };
        // Output is complete once the pipes close; a leftover grandchild could hold them open.
        let grace = Instant::now() + Duration::from_millis(200);
        Ok(RunOutput { status, stdout: stdout.finish(grace), stderr: stderr.finish(grace) })
    }

    fn failure(&self, args: &[OsString], out: &RunOutput) -> VtyshError {
        let program = self.program.display().to_string();
        let stderr = out.stderr.trim();
        let stdout = out.stdout.trim();
        if stderr.contains("failed to connect to any daemons") || stderr.contains("is not running") {
            let args: Vec<String> =
                self.connection_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
            return VtyshError::Unreachable {
                program,
                args: args.join(" "),
                detail: stderr.lines().last().unwrap_or(stderr).to_string(),
            };
        }
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let output =
            [stdout, stderr].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" | ");
        VtyshError::Unexpected {
            program,
            what: format!("{} exited with {}", shown.join(" "), out.status),
            output: if output.is_empty() { "no output".into() } else { output },
        }
    }
}

/// A pipe being read to the end on its own thread.
struct Collector(Option<mpsc::Receiver<Vec<u8>>>);

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
    let Some(mut pipe) = pipe else { return Collector(None) };
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("fwd-vtysh-pipe".into()).spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Collector(spawned.ok().map(|_| rx))
}

impl Collector {
    fn finish(self, deadline: Instant) -> String {
        let Some(rx) = self.0 else { return String::new() };
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        }
    }
}

/// Where a `-E` run stopped.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// No `%` error line.
    Done,
    /// The first error line and the command echoed just before it, with its index among the
    /// `-c` commands.
    Failed { index: Option<usize>, command: String, message: String },
}

/// Matches `%` error lines to the command echoed before them (`host(config-router-af)# network
/// ...`).
fn attribute_errors(stdout: &str, args: &[OsString]) -> Outcome {
    let commands: Vec<String> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| flag.as_os_str() == "-c")
        .map(|(_, c)| c.to_string_lossy().into_owned())
        .collect();
    let mut next = 0;
    let mut current: Option<usize> = None;
    for line in stdout.lines() {
        if let Some(command) = commands.get(next) {
            if line.ends_with(&format!("# {command}")) {
                current = Some(next);
                next += 1;
                continue;
            }
        }
        if line.starts_with('%') {
            return Outcome::Failed {
                index: current,
                command: current.and_then(|i| commands.get(i)).cloned().unwrap_or_default(),
                message: line.trim().to_string(),
            };
        }
    }
    Outcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DampingConfig, Ipv4Prefix, Ipv6Prefix};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    pub(crate) fn bgp_config() -> BgpConfig {
        BgpConfig {
            vtysh: PathBuf::from("/usr/bin/vtysh"),
            vty_socket: None,
            namespace: None,
            extra_args: Vec::new(),
            reconcile_interval: Duration::from_secs(5),
            hold_down: Duration::from_secs(5),
            vtysh_timeout: Duration::from_secs(5),
            drain_time: Duration::from_secs(3),
            min_healthy: 1,
            damping: DampingConfig::default(),
            prefixes: Vec::new(),
        }
    }

    fn v4(text: &str) -> IpPrefix {
        IpPrefix::V4(text.parse::<Ipv4Prefix>().unwrap())
    }

    fn v6(text: &str) -> IpPrefix {
        IpPrefix::V6(text.parse::<Ipv6Prefix>().unwrap())
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn connection_args_follow_the_config() {
        let plain = Vtysh::new(&bgp_config());
        assert_eq!(strings(&plain.show_args()), ["-d", "bgpd", "-c", "show running-config"]);
        let config = BgpConfig {
            vty_socket: Some(PathBuf::from("/run/frr-edge")),
            namespace: Some("edge".into()),
            extra_args: vec!["-u".into(), "frr".into()],
            ..bgp_config()
        };
        assert_eq!(
            strings(&Vtysh::new(&config).connection_args()),
            ["--vty_socket", "/run/frr-edge", "-N", "edge", "-u", "frr", "-d", "bgpd"]
        );
        let only_namespace = BgpConfig { namespace: Some("edge".into()), ..bgp_config() };
        assert_eq!(strings(&Vtysh::new(&only_namespace).connection_args()), ["-N", "edge", "-d", "bgpd"]);
    }

    #[test]
    fn several_changes_of_both_families_make_one_call() {
        let vtysh = Vtysh::new(&BgpConfig { vty_socket: Some(PathBuf::from("/tmp/frr")), ..bgp_config() });
        let changes = [
            Change::Announce(v4("198.18.100.1/32")),
            Change::Announce(v6("fd00:18:100::1/128")),
            Change::Withdraw(v4("198.18.100.2/32")),
            Change::Announce(v4("198.18.101.0/24")),
            Change::Withdraw(v6("fd00:18:100::/64")),
        ];
        let (args, owners) = vtysh.change_args(&changes);
        let mut expected: Vec<String> =
            ["--vty_socket", "/tmp/frr", "-d", "bgpd", "-E"].iter().map(|s| s.to_string()).collect();
        for c in [
            "configure terminal",
            "router bgp",
            "address-family ipv4 unicast",
            "no network 198.18.100.2/32",
            "network 198.18.100.1/32",
            "network 198.18.101.0/24",
            "exit-address-family",
            "address-family ipv6 unicast",
            "no network fd00:18:100::/64",
            "network fd00:18:100::1/128",
            "exit-address-family",
        ] {
            expected.push("-c".into());
            expected.push(c.into());
        }
        assert_eq!(strings(&args), expected);
        assert_eq!(owners, [None, None, None, Some(2), Some(0), Some(3), None, None, Some(4), Some(1), None]);
        // One family only: no empty address-family block.
        let (args, _) = vtysh.change_args(&[Change::Withdraw(v6("fd00:18:100::1/128"))]);
        let commands: Vec<String> = strings(&args).into_iter().skip(5).filter(|a| a != "-c").collect();
        assert_eq!(
            commands,
            [
                "configure terminal",
                "router bgp",
                "address-family ipv6 unicast",
                "no network fd00:18:100::1/128",
                "exit-address-family"
            ]
        );
    }

    #[test]
    fn errors_are_attributed_to_the_echoed_command() {
        let vtysh = Vtysh::new(&bgp_config());
        let changes = [Change::Announce(v4("198.18.100.1/32")), Change::Withdraw(v4("198.18.100.9/32"))];
        let (args, _) = vtysh.change_args(&changes);
        // Captured from FRR 8.4.4: vtysh stops at the refused command.
        let stdout = "vm# configure terminal\nvm(config)# router bgp\n\
                      vm(config-router)# address-family ipv4 unicast\n\
                      vm(config-router-af)# no network 198.18.100.9/32\n\
                      % Can't find static route specified\n";
        assert_eq!(
            attribute_errors(stdout, &args),
            Outcome::Failed {
                index: Some(3),
                command: "no network 198.18.100.9/32".into(),
                message: NOT_CONFIGURED.into(),
            }
        );
        let stdout = "vm# configure terminal\nvm(config)# router bgp\n% No BGP process is configured\n";
        assert!(matches!(
            attribute_errors(stdout, &args),
            Outcome::Failed { index: Some(1), ref command, .. } if command == "router bgp"
        ));
        assert_eq!(attribute_errors("vm# configure terminal\n", &args), Outcome::Done);
    }

    /// A script standing in for vtysh, in a fresh directory.
    struct FakeVtysh {
        dir: PathBuf,
    }

    impl FakeVtysh {
        fn new(name: &str, body: &str) -> FakeVtysh {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("fwdtest-vtysh-{}-{name}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let script = dir.join("vtysh");
            std::fs::write(&script, format!("#!/bin/bash\n{body}\n")).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            FakeVtysh { dir }
        }

        fn vtysh(&self, timeout: Duration) -> Vtysh {
            Vtysh::new(&BgpConfig { vtysh: self.dir.join("vtysh"), vtysh_timeout: timeout, ..bgp_config() })
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
    }

    impl Drop for FakeVtysh {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn alive(pid: u32) -> bool {
        // A zombie has exited; nothing here reaps orphans, so look at the state too.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    #[test]
    fn a_hanging_vtysh_is_killed_with_its_children_at_the_timeout() {
        let fake = FakeVtysh::new("hang", "");
        let body = format!(
            "echo $$ > {me}\nsleep 30 &\necho $! > {child}\nwait",
            me = fake.path("pid").display(),
            child = fake.path("child").display()
        );
        std::fs::write(fake.path("vtysh"), format!("#!/bin/bash\n{body}\n")).unwrap();
        let vtysh = fake.vtysh(Duration::from_millis(300));
        let start = Instant::now();
        let err = vtysh.read_state().unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, VtyshError::Timeout { timeout, .. } if timeout == Duration::from_millis(300)));
        assert!(err.to_string().contains("bgp.vtysh_timeout"), "{err}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "{took:?}");
        for file in ["pid", "child"] {
            let pid: u32 = std::fs::read_to_string(fake.path(file)).unwrap().trim().parse().unwrap();
            let gone_by = Instant::now() + Duration::from_secs(2);
            while alive(pid) && Instant::now() < gone_by {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!alive(pid), "{file} {pid} survived the timeout");
        }
    }

    /// Echoes `-c` commands like vtysh -E and refuses every `no network` as FRR 8.4 does for a
    /// prefix it does not have. Appends what it executed to `log`.
    fn refusing_fake() -> FakeVtysh {
        let fake = FakeVtysh::new("refuse", "");
        let body = format!(
            r#"echo "run $*" >> {log}
while [ $# -gt 0 ]; do
  if [ "$1" = -c ]; then
    echo "vm# $2"
    case "$2" in "no network "*) echo "% Can't find static route specified"; exit 1;; esac
    echo "did $2" >> {log}
    shift
  fi
  shift
done"#,
            log = fake.path("log").display()
        );
        std::fs::write(fake.path("vtysh"), format!("#!/bin/bash\n{body}\n")).unwrap();
        fake
    }

    #[test]
    fn a_withdraw_of_a_missing_prefix_counts_as_done_and_the_rest_still_runs() {
        let fake = refusing_fake();
        let vtysh = fake.vtysh(Duration::from_secs(5));
        vtysh
            .apply(&[
                Change::Withdraw(v4("198.18.100.9/32")),
                Change::Announce(v4("198.18.100.1/32")),
                Change::Withdraw(v6("fd00:18:100::9/128")),
                Change::Announce(v6("fd00:18:100::1/128")),
            ])
            .unwrap();
        let log = std::fs::read_to_string(fake.path("log")).unwrap();
        let runs = log.lines().filter(|l| l.starts_with("run ")).count();
        // Refused at the v4 withdraw, then at the v6 one, then the last announcement.
        assert_eq!(runs, 3, "{log}");
        for done in ["did network 198.18.100.1/32", "did network fd00:18:100::1/128"] {
            assert!(log.lines().any(|l| l == done), "{done} missing from\n{log}");
        }
    }

    #[test]
    fn other_refusals_and_unreachable_frr_are_errors() {
        let fake = FakeVtysh::new(
            "unknown",
            "echo 'vm# configure terminal'; echo 'vm(config)# router bgp';\
             echo 'vm(config-router)# address-family ipv4 unicast';\
             echo 'vm(config-router-af)# network 198.18.100.1/32'; echo '% Unknown command: network'; exit 1",
        );
        let err = fake.vtysh(Duration::from_secs(5)).apply(&[Change::Announce(v4("198.18.100.1/32"))]);
        assert!(
            matches!(&err, Err(VtyshError::Rejected { command, .. }) if command == "network 198.18.100.1/32"),
            "{err:?}"
        );
        let fake = FakeVtysh::new("down", "echo 'Exiting: failed to connect to any daemons.' >&2; exit 1");
        let err = fake.vtysh(Duration::from_secs(5)).read_state().unwrap_err();
        assert!(matches!(err, VtyshError::Unreachable { .. }) && !err.reached_frr(), "{err:?}");
        let err = Vtysh::new(&BgpConfig { vtysh: Path::new("/nonexistent/vtysh").into(), ..bgp_config() })
            .read_state()
            .unwrap_err();
        assert!(err.to_string().contains("cannot run /nonexistent/vtysh (bgp.vtysh)"), "{err}");
        let fake = FakeVtysh::new("empty", "printf 'Building configuration...\\n\\nend\\n'");
        assert!(matches!(fake.vtysh(Duration::from_secs(5)).read_state(), Err(VtyshError::NoBgpInstance)));
    }
}
