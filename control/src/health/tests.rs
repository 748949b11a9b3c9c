//! The checker against real servers in a network namespace of each test's own ([`testnet::netns`]), plus
//! the pure pieces (state machine, phase, interval statistics) on their own.

use super::testnet::{self, V4, V6};
use super::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec(kind: CheckKind, port: u16, interval_ms: u64, timeout_ms: u64) -> CheckSpec {
    CheckSpec {
        kind,
        port,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise: 1,
        fall: 1,
    }
}

fn tcp(addr: IpAddr, port: u16, interval_ms: u64, timeout_ms: u64) -> CheckTarget {
    CheckTarget { addr, spec: spec(CheckKind::Tcp, port, interval_ms, timeout_ms) }
}

fn http(addr: IpAddr, port: u16, expect_status: u16, expect_body: Option<&str>) -> CheckTarget {
    let kind = CheckKind::Http {
        path: "/healthz".into(),
        expect_status,
        expect_body: expect_body.map(String::from),
    };
    CheckTarget { addr, spec: spec(kind, port, 200, 100) }
}

fn udp(addr: IpAddr, port: u16, payload: Option<&str>, expect: Option<&str>) -> CheckTarget {
    let kind = CheckKind::Udp { payload: payload.map(String::from), expect: expect.map(String::from) };
    CheckTarget { addr, spec: spec(kind, port, 200, 100) }
}

fn exec(command: &[&str], interval_ms: u64, timeout_ms: u64) -> CheckTarget {
    let kind = CheckKind::Exec { command: command.iter().map(|s| s.to_string()).collect() };
    CheckTarget { addr: V4, spec: spec(kind, 4242, interval_ms, timeout_ms) }
}

/// Polls `done` every 5 ms; panics naming `what` if it is still false after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "still not {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn started_with(targets: &[CheckTarget]) -> HealthChecker {
    let checker = HealthChecker::start().expect("the checker starts");
    checker.set_targets(targets.iter().cloned());
    checker
}

/// Each target's (health, reason) once every target answered.
fn answers(checker: &HealthChecker, targets: &[CheckTarget]) -> Vec<(Health, String)> {
    wait_until(Duration::from_secs(5), "answered", || checker.all_answered());
    let status = checker.status();
    targets.iter().map(|t| (status[t].health, status[t].reason.clone())).collect()
}

fn http_response(status: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Test servers on a current-thread runtime of their own, started from (so inside) the test's
/// namespace. Sockets are bound by the caller, so they listen before the function returns.
struct Servers {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What an HTTP test server saw.
#[derive(Clone, Default)]
struct HttpSeen {
    requests: Arc<AtomicU64>,
    last_request: Arc<Mutex<Vec<u8>>>,
}

impl Servers {
    fn start() -> Servers {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        });
        Servers { runtime: handle, stop: Some(stop), thread: Some(thread) }
    }

    fn listen(addr: IpAddr, port: u16) -> TcpListener {
        let listener = TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr} {port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        listener
    }

    /// Accepts and closes connections, counting them.
    fn tcp(&self, addr: IpAddr, port: u16) -> Arc<AtomicU64> {
        let listener = Self::listen(addr, port);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        self.runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((_stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        accepted
    }

    /// Answers each request with the next response of `script`, the last one forever.
    fn http(&self, addr: IpAddr, port: u16, script: Vec<Vec<u8>>) -> HttpSeen {
        let listener = Self::listen(addr, port);
        let seen = HttpSeen::default();
        let server_seen = seen.clone();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        self.runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut stream, _)) = listener.accept().await {
                let response = {
                    let mut script = script.lock().unwrap();
                    if script.len() > 1 { script.pop_front() } else { script.front().cloned() }
                        .unwrap_or_default()
                };
                let seen = server_seen.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    *seen.last_request.lock().unwrap() = request;
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        seen
    }

    /// Accepts and never answers; closes when the client does.
    fn hang(&self, addr: IpAddr, port: u16) {
        let listener = Self::listen(addr, port);
        self.runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                });
            }
        });
    }

    /// Sends every datagram back (`echo`), or reads and ignores them.
    fn udp(&self, addr: IpAddr, port: u16, echo: bool) {
        let socket =
            std::net::UdpSocket::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr} {port}: {e}"));
        socket.set_nonblocking(true).unwrap();
        self.runtime.spawn(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if echo {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
            }
        });
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fwd-health-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pid written in `path`, once the file holds a complete line.
fn read_pid(path: &str) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.strip_suffix('\n')?.trim().parse().ok()
}

/// Whether the process is gone (or dead and waiting to be reaped by whoever inherited it).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

// ---- pure pieces ----

#[test]
fn state_machine_follows_first_probe_then_rise_and_fall() {
    let spec = CheckSpec { rise: 2, fall: 3, ..spec(CheckKind::Tcp, 80, 1000, 500) };
    use Health::{Down, Unknown, Up};
    // (health, ok, consecutive_ok, consecutive_fail) -> next health
    let cases = [
        ((Unknown, true, 1, 0), Up),
        ((Unknown, false, 0, 1), Down),
        ((Up, true, 5, 0), Up),
        ((Up, false, 0, 1), Up),
        ((Up, false, 0, 2), Up),
        ((Up, false, 0, 3), Down),
        ((Down, false, 0, 7), Down),
        ((Down, true, 1, 0), Down),
        ((Down, true, 2, 0), Up),
    ];
    for ((health, ok, n_ok, n_fail), expected) in cases {
        assert_eq!(
            next_health(health, ok, n_ok, n_fail, &spec),
            expected,
            "{health:?} ok={ok} {n_ok}/{n_fail}"
        );
    }
}

#[test]
fn phase_is_deterministic_and_within_the_spread() {
    let mut phases = HashSet::new();
    for port in 1..=500 {
        let target = tcp(V4, port, 1000, 500);
        let p = phase(&target);
        assert_eq!(p, phase(&target.clone()));
        assert!(p < MAX_PHASE_SPREAD, "{p:?}");
        phases.insert(p.as_millis());
        // A short interval spreads over a quarter of itself.
        assert!(phase(&tcp(V4, port, 200, 100)) < Duration::from_millis(50));
    }
    // 500 targets land on many different milliseconds, not a few.
    assert!(phases.len() > 150, "only {} distinct phases", phases.len());
}

#[test]
fn interval_statistics() {
    let mut recorder = IntervalRecorder::default();
    assert_eq!(recorder.stats(), IntervalStats::default());
    let start = Instant::now();
    let offsets_ms = [0u64, 1000, 2001, 2999, 4000, 5100];
    for ms in offsets_ms {
        recorder.record(start + Duration::from_millis(ms));
    }
    let stats = recorder.stats();
    assert_eq!(stats.count, 5);
    assert_eq!(stats.mean, Duration::from_millis(1020));
    assert_eq!(stats.min, Duration::from_millis(998));
    assert_eq!(stats.max, Duration::from_millis(1100));
    assert_eq!(stats.recent_p99, Duration::from_millis(1100));
    // Only the last 128 intervals count for the percentile; the maximum is all-time.
    let mut at = 5100;
    for _ in 0..200 {
        at += 1000;
        recorder.record(start + Duration::from_millis(at));
    }
    let stats = recorder.stats();
    assert_eq!(
        (stats.count, stats.max, stats.recent_p99),
        (205, Duration::from_millis(1100), Duration::from_secs(1))
    );
}

#[test]
fn events_and_health_display() {
    let event = HealthEvent {
        target: tcp("198.18.2.11".parse().unwrap(), 80, 1000, 500),
        from: Health::Up,
        to: Health::Down,
        reason: "connection refused".into(),
        streak: 3,
        at: SystemTime::UNIX_EPOCH,
    };
    assert_eq!(event.to_string(), "198.18.2.11:80 tcp: up -> down (connection refused, 3 in a row)");
    let first =
        HealthEvent { target: http(V6, 8080, 200, None), from: Health::Unknown, to: Health::Up, ..event };
    assert_eq!(
        first.to_string(),
        "[fd00:18::1]:8080 http /healthz: unknown -> up (connection refused, first probe)"
    );
    assert_eq!(exec(&["/usr/bin/check", "-q"], 1000, 500).to_string(), "198.18.0.1:4242 exec /usr/bin/check");
    assert_eq!(
        serde_json::to_string(&[Health::Unknown, Health::Up, Health::Down]).unwrap(),
        r#"["unknown","up","down"]"#
    );
}

#[test]
fn event_queue_is_bounded_and_stale_probes_are_ignored() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let task = runtime.spawn(async {}).abort_handle();
    let shared = Shared::default();
    let target = tcp(V4, 80, 1000, 500);
    shared.lock().targets.insert(target.clone(), Entry::new(7, task));
    let start = Instant::now();
    let record = |generation, ok| {
        let outcome = if ok { ProbeOutcome::Ok } else { ProbeOutcome::Refused };
        shared.record(&target, generation, start, SystemTime::now(), Duration::from_millis(1), &outcome)
    };
    // A probe of an earlier task of an equal target (removed, then added again) changes nothing.
    assert_eq!(record(6, true), None);
    assert_eq!(shared.lock().targets[&target].status.probes, 0);
    // rise = fall = 1: every probe flips the health.
    for i in 0..MAX_QUEUED_EVENTS + 10 {
        assert!(record(7, i % 2 == 0).is_some());
    }
    let state = shared.lock();
    assert_eq!((state.events.len(), state.dropped_events), (MAX_QUEUED_EVENTS, 10));
    // The oldest went first: the first kept event is the 11th transition, Down -> Up.
    assert_eq!((state.events[0].from, state.events[0].to), (Health::Down, Health::Up));
    assert_eq!(state.targets[&target].status.probes, MAX_QUEUED_EVENTS as u64 + 10);
}

// ---- probes against servers in a namespace ----

#[test]
fn tcp_checks_up_and_refused() {
    let netns = testnet::netns();
    netns.run(|| {
        let _listeners = [Servers::listen(V4, 8001), Servers::listen(V6, 8001)];
        let targets = [
            tcp(V4, 8001, 200, 100),
            tcp(V6, 8001, 200, 100),
            tcp(V4, 8002, 200, 100),
            tcp(V6, 8002, 200, 100),
        ];
        let checker = started_with(&targets);
        let up = (Health::Up, "ok".to_string());
        let refused = (Health::Down, "connection refused".to_string());
        assert_eq!(answers(&checker, &targets), [up.clone(), up, refused.clone(), refused]);
        let mut events = checker.try_events();
        events.sort_by_key(|e| (e.target.spec.port, e.target.addr));
        let summary: Vec<_> = events.iter().map(|e| (e.target.clone(), e.from, e.to, e.streak)).collect();
        assert_eq!(
            summary,
            [
                (targets[0].clone(), Health::Unknown, Health::Up, 1),
                (targets[1].clone(), Health::Unknown, Health::Up, 1),
                (targets[2].clone(), Health::Unknown, Health::Down, 1),
                (targets[3].clone(), Health::Unknown, Health::Down, 1),
            ]
        );
        assert!(checker.try_events().is_empty(), "events are drained once");
        let samples = checker.latency_samples();
        assert_eq!(samples.len(), 4);
        assert!(samples
            .iter()
            .all(|s| s.latency < Duration::from_millis(100) && s.ok == (s.target.spec.port == 8001)));
    });
}

#[test]
fn http_checks_status_and_body() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        let ok = servers.http(V4, 8080, vec![http_response(200, "all ok")]);
        servers.http(V6, 8080, vec![http_response(200, "all ok")]);
        servers.http(V4, 8081, vec![http_response(503, "overloaded")]);
        servers.http(V4, 8082, vec![http_response(200, "nope")]);
        // "o" and "k" in different chunks: only a decoded body contains "ok".
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nal\r\n3\r\nl o\r\n1\r\nk\r\n0\r\n\r\n";
        servers.http(V4, 8083, vec![chunked.to_vec()]);
        servers.http(V4, 8084, vec![b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()]);
        servers.http(V4, 8085, vec![http_response(204, "")]);
        let targets = [
            http(V4, 8080, 200, Some("ok")),
            http(V6, 8080, 200, Some("ok")),
            http(V4, 8081, 200, None),
            http(V4, 8082, 200, Some("ok")),
            http(V4, 8083, 200, Some("ok")),
            http(V4, 8084, 200, None),
            http(V4, 8085, 204, None),
            http(V4, 8086, 200, None),
        ];
        let checker = started_with(&targets);
        let found = answers(&checker, &targets);
        let expected = [
            (Health::Up, "ok"),
            (Health::Up, "ok"),
            (Health::Down, "status 503"),
            (Health::Down, "body lacks \"ok\""),
            (Health::Up, "ok"),
            (Health::Down, "malformed status line"),
            (Health::Up, "ok"),
            (Health::Down, "connection refused"),
        ];
        let found: Vec<(Health, &str)> = found.iter().map(|(h, r)| (*h, r.as_str())).collect();
        assert_eq!(found, expected);
        // The request on the wire, byte for byte.
        assert!(ok.requests.load(Ordering::Relaxed) >= 1);
        assert_eq!(
            String::from_utf8(ok.last_request.lock().unwrap().clone()).unwrap(),
            "GET /healthz HTTP/1.1\r\nHost: 198.18.0.1\r\nConnection: close\r\nUser-Agent: fwd-health\r\n\r\n"
        );
    });
}

#[test]
fn hung_http_server_times_out_while_other_targets_stay_on_time() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        servers.hang(V4, 8090);
        let _listener = Servers::listen(V4, 8091);
        let hung = CheckTarget {
            addr: V4,
            spec: spec(
                CheckKind::Http { path: "/".into(), expect_status: 200, expect_body: None },
                8090,
                500,
                300,
            ),
        };
        let steady = tcp(V4, 8091, 200, 100);
        let checker = started_with(&[hung.clone(), steady.clone()]);
        // The steady target answers at once; the hung one only at its timeout.
        wait_until(Duration::from_secs(1), "steady up", || checker.health(&steady) == Health::Up);
        assert!(!checker.all_answered(), "the hung target answered before its timeout");
        assert_eq!(checker.health(&hung), Health::Unknown);
        std::thread::sleep(Duration::from_millis(2100));
        let status = checker.status();
        let (hung_status, steady_status) = (&status[&hung], &status[&steady]);
        assert_eq!((hung_status.health, hung_status.reason.as_str()), (Health::Down, "timeout"));
        let latency = hung_status.last_latency.unwrap();
        assert!(latency >= Duration::from_millis(300) && latency < Duration::from_millis(400), "{latency:?}");
        assert!(hung_status.probes >= 4, "{hung_status:?}");
        // Start to start, not end to start: a 300 ms probe every 500 ms keeps the 500 ms grid.
        let hung_intervals = hung_status.interval_stats;
        assert!(hung_intervals.max < Duration::from_millis(550), "{hung_intervals:?}");
        let steady_intervals = steady_status.interval_stats;
        println!("steady target beside a hung one: {steady_intervals:?}");
        assert!(steady_intervals.count >= 9, "{steady_intervals:?}");
        assert!(steady_intervals.max < Duration::from_millis(220), "{steady_intervals:?}");
    });
}

#[test]
fn udp_checks_echo_refused_and_silence() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        servers.udp(V4, 5353, true);
        servers.udp(V6, 5353, true);
        servers.udp(V4, 5354, false);
        let targets = [
            udp(V4, 5353, Some("ping"), Some("ping")),
            udp(V6, 5353, Some("ping"), None),
            udp(V4, 5353, None, None),
            udp(V4, 5353, Some("ping"), Some("pong")),
            udp(V4, 5354, Some("ping"), None),
            udp(V4, 5355, Some("ping"), None),
            udp(V6, 5355, None, None),
        ];
        let checker = started_with(&targets);
        let found = answers(&checker, &targets);
        let found: Vec<(Health, &str)> = found.iter().map(|(h, r)| (*h, r.as_str())).collect();
        let refused = "refused (ICMP port unreachable)";
        assert_eq!(
            found,
            [
                (Health::Up, "ok"),
                (Health::Up, "ok"),
                (Health::Up, "ok"),
                (Health::Down, "reply lacks \"pong\""),
                (Health::Down, "no reply"),
                (Health::Down, refused),
                (Health::Down, refused),
            ]
        );
    });
}

#[test]
fn exec_checks_exit_status_timeout_and_environment() {
    let dir = TempDir::new();
    let env_file = dir.file("env");
    let pid_file = dir.file("pid");
    let child_file = dir.file("child");
    let env_script =
        format!("printf '%s|%s|%s' \"$FWD_CHECK_ADDR\" \"$FWD_CHECK_PORT\" \"$PATH\" > {env_file}");
    let hang_script = format!("echo $$ > {pid_file}; sleep 10 & echo $! > {child_file}; wait");
    let targets = [
        exec(&["true"], 200, 100),
        exec(&["false"], 200, 100),
        exec(&["sh", "-c", "echo 'disk full' >&2; echo more >&2; exit 3"], 200, 100),
        exec(&["/nonexistent/fwd-check"], 200, 100),
        exec(&["sh", "-c", &env_script], 200, 100),
        exec(&["sh", "-c", &hang_script], 2000, 300),
    ];
    let checker = started_with(&targets);
    let found = answers(&checker, &targets);
    let found: Vec<(Health, &str)> = found.iter().map(|(h, r)| (*h, r.as_str())).collect();
    assert_eq!(
        found,
        [
            (Health::Up, "ok"),
            (Health::Down, "exit status 1"),
            (Health::Down, "exit status 3: disk full"),
            (Health::Down, "cannot run \"/nonexistent/fwd-check\": no such file or directory"),
            (Health::Up, "ok"),
            (Health::Down, "killed at timeout"),
        ]
    );
    let latency = checker.status()[&targets[5]].last_latency.unwrap();
    assert!(latency >= Duration::from_millis(300) && latency < Duration::from_millis(1300), "{latency:?}");
    // The whole process group went, the shell and what it started.
    let (shell, sleeper) = (read_pid(&pid_file).unwrap(), read_pid(&child_file).unwrap());
    wait_until(Duration::from_secs(1), "killed", || dead(shell) && dead(sleeper));
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env, format!("198.18.0.1|4242|{}", std::env::var("PATH").unwrap()));
}

#[test]
fn dropping_the_checker_kills_running_exec_checks() {
    let dir = TempDir::new();
    let (pid_file, child_file) = (dir.file("pid"), dir.file("child"));
    let script = format!("echo $$ > {pid_file}; sleep 30 & echo $! > {child_file}; wait");
    let checker = started_with(&[exec(&["sh", "-c", &script], 20_000, 10_000)]);
    wait_until(Duration::from_secs(5), "started", || {
        read_pid(&pid_file).is_some() && read_pid(&child_file).is_some()
    });
    let (shell, sleeper) = (read_pid(&pid_file).unwrap(), read_pid(&child_file).unwrap());
    assert!(!dead(shell) && !dead(sleeper));
    let dropped = std::time::Instant::now();
    drop(checker);
    assert!(dropped.elapsed() < Duration::from_secs(2), "drop waited for the check");
    wait_until(Duration::from_secs(1), "killed", || dead(shell) && dead(sleeper));
}

// ---- state machine, target set ----

#[test]
fn rise_and_fall_count_probes_exactly() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        let (ok, failing) = (http_response(200, "ok"), http_response(503, ""));
        // Probe by probe: up, three failures (fall = 3: down at the third), two successes
        // (rise = 2: up at the second).
        let script =
            vec![ok.clone(), failing.clone(), failing.clone(), failing.clone(), ok.clone(), ok.clone()];
        servers.http(V4, 8080, script);
        // Only two failures: never down.
        servers.http(V4, 8081, vec![ok.clone(), failing.clone(), failing.clone(), ok.clone()]);
        let rise_fall = |port| {
            let mut target = http(V4, port, 200, None);
            target.spec.interval = Duration::from_millis(100);
            target.spec.timeout = Duration::from_millis(50);
            target.spec.rise = 2;
            target.spec.fall = 3;
            target
        };
        let (flapping, blip) = (rise_fall(8080), rise_fall(8081));
        let checker = started_with(&[flapping.clone(), blip.clone()]);
        wait_until(Duration::from_secs(3), "8 probes", || checker.status().values().all(|s| s.probes >= 8));
        let events = checker.try_events();
        let of = |target: &CheckTarget| -> Vec<(Health, Health, String, u32)> {
            events
                .iter()
                .filter(|e| e.target == *target)
                .map(|e| (e.from, e.to, e.reason.clone(), e.streak))
                .collect()
        };
        assert_eq!(
            of(&flapping),
            [
                (Health::Unknown, Health::Up, "ok".to_string(), 1),
                (Health::Up, Health::Down, "status 503".to_string(), 3),
                (Health::Down, Health::Up, "ok".to_string(), 2),
            ]
        );
        assert_eq!(of(&blip), [(Health::Unknown, Health::Up, "ok".to_string(), 1)]);
        let status = checker.status();
        assert_eq!(
            (status[&blip].health, status[&blip].consecutive_ok),
            (Health::Up, status[&blip].probes as u32 - 3)
        );
        assert_eq!(status[&flapping].reason, "ok");
    });
}

#[test]
fn duplicate_targets_run_once() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        let accepted = servers.tcp(V4, 8001);
        let target = tcp(V4, 8001, 100, 50);
        let checker = HealthChecker::start().unwrap();
        checker.set_targets([target.clone(), target.clone(), target.clone()]);
        checker.set_targets(vec![target.clone(); 5]);
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(1050));
        let status = checker.status();
        assert_eq!(status.len(), 1);
        let probes = status[&target].probes;
        let accepted = accepted.load(Ordering::Relaxed);
        // One stream of probes: as many connections as probes, one per interval.
        assert!(accepted == probes || accepted == probes + 1, "{accepted} connections for {probes} probes");
        let most = started.elapsed().as_millis() as u64 / 100 + 1;
        assert!((9..=most).contains(&probes), "{probes} probes in {:?}", started.elapsed());
    });
}

#[test]
fn set_targets_keeps_unchanged_targets_and_stops_removed_ones() {
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        let (seen_a, seen_b, seen_c) = (servers.tcp(V4, 8001), servers.tcp(V4, 8002), servers.tcp(V4, 8003));
        let (a, b, c) = (tcp(V4, 8001, 100, 50), tcp(V4, 8002, 100, 50), tcp(V4, 8003, 100, 50));
        let checker = started_with(&[a.clone(), b.clone()]);
        wait_until(Duration::from_secs(2), "3 probes each", || {
            checker.status().values().all(|s| s.probes >= 3)
        });
        let before = checker.status()[&a].clone();

        checker.set_targets([a.clone(), c.clone()]);
        let status = checker.status();
        assert_eq!(status.keys().cloned().collect::<HashSet<_>>(), HashSet::from([a.clone(), c.clone()]));
        assert_eq!(status[&c].health, Health::Unknown);
        assert_eq!((status[&a].health, status[&a].since), (before.health, before.since));
        assert!(status[&a].probes >= before.probes);
        assert_eq!(checker.health(&b), Health::Unknown, "a removed target has no health");

        // B's probe stream stopped (a probe in flight at the removal may still land).
        std::thread::sleep(Duration::from_millis(50));
        let b_connections = seen_b.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(seen_b.load(Ordering::Relaxed), b_connections);
        let status = checker.status();
        assert!(status[&a].probes >= before.probes + 4, "A kept its schedule: {:?}", status[&a]);
        assert_eq!(status[&a].since, before.since, "A did not move");
        assert!(
            status[&a].interval_stats.max < Duration::from_millis(150),
            "{:?}",
            status[&a].interval_stats
        );
        assert!(status[&c].probes >= 4 && seen_c.load(Ordering::Relaxed) >= 4);
        assert!(seen_a.load(Ordering::Relaxed) >= status[&a].probes);

        // Added again, B starts over.
        checker.set_targets([a.clone(), b.clone()]);
        let status = checker.status();
        assert_eq!((status[&b].health, status[&b].probes), (Health::Unknown, 0));
        assert!(!status.contains_key(&c));
        wait_until(Duration::from_secs(2), "B answered", || checker.all_answered());
        assert!(checker.try_events().iter().any(|e| e.target == b && e.from == Health::Unknown));
    });
}

// ---- 500 targets: drift ----

/// The two 500-target tests measure timing: run them one at a time.
static TIMING: Mutex<()> = Mutex::new(());

/// Mean interval of `targets` between two status copies (so that the first round, which a loaded
/// machine starts late, does not count), the largest interval seen, and the intervals counted.
fn drift(
    warm: &HashMap<CheckTarget, TargetStatus>,
    end: &HashMap<CheckTarget, TargetStatus>,
    targets: &[CheckTarget],
) -> (Duration, Duration, u64) {
    let (mut total, mut max, mut count) = (Duration::ZERO, Duration::ZERO, 0u64);
    for target in targets {
        let (a, b) = (warm[target].interval_stats, end[target].interval_stats);
        assert!(b.count >= a.count + 3, "{target}: {a:?} then {b:?}");
        total += b.mean * u32::try_from(b.count).unwrap() - a.mean * u32::try_from(a.count).unwrap();
        max = max.max(b.max);
        count += b.count - a.count;
    }
    (total / u32::try_from(count).unwrap(), max, count)
}

/// The mean must stay within 1% of the interval. The largest single interval may stretch on a
/// loaded machine, but a checker stuck behind a 500 ms timeout would show 1.5 s or more.
fn assert_on_time(what: &str, mean: Duration, max: Duration, count: u64) {
    println!("{what}: {count} intervals after the first round, mean {mean:?}, max {max:?}");
    let error = mean.abs_diff(Duration::from_secs(1));
    assert!(error < Duration::from_millis(10), "{what}: mean interval {mean:?} is more than 1% off 1 s");
    assert!(max < Duration::from_millis(1250), "{what}: max interval {max:?}");
}

/// Lets the first round finish, copies the status, then runs long enough for 4-5 more intervals.
fn warm_and_end(
    checker: &HealthChecker,
) -> (HashMap<CheckTarget, TargetStatus>, HashMap<CheckTarget, TargetStatus>) {
    std::thread::sleep(Duration::from_millis(1800));
    let warm = checker.status();
    std::thread::sleep(Duration::from_millis(4600));
    (warm, checker.status())
}

#[test]
fn five_hundred_targets_at_one_second_do_not_drift() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(PoisonError::into_inner);
    let netns = testnet::netns();
    netns.run(|| {
        let listeners: Vec<TcpListener> = (20000..20500).map(|port| Servers::listen(V4, port)).collect();
        let targets: Vec<CheckTarget> = (20000..20500).map(|port| tcp(V4, port, 1000, 500)).collect();
        let checker = started_with(&targets);
        let (warm, status) = warm_and_end(&checker);
        drop(checker);
        drop(listeners);
        assert!(targets.iter().all(|t| status[t].health == Health::Up && status[t].probes >= 5));
        let (mean, max, count) = drift(&warm, &status, &targets);
        assert_on_time("500 tcp targets at 1 s", mean, max, count);
        let p99 = targets.iter().map(|t| status[t].interval_stats.recent_p99).max().unwrap();
        println!("500 tcp targets at 1 s: worst per-target p99 {p99:?}");
    });
}

#[test]
fn a_hundred_hung_targets_do_not_delay_four_hundred_others() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(PoisonError::into_inner);
    let netns = testnet::netns();
    netns.run(|| {
        let servers = Servers::start();
        let listeners: Vec<TcpListener> = (21000..21400).map(|port| Servers::listen(V4, port)).collect();
        for port in 22000..22100 {
            servers.hang(V4, port);
        }
        let steady: Vec<CheckTarget> = (21000..21400).map(|port| tcp(V4, port, 1000, 500)).collect();
        let hung: Vec<CheckTarget> = (22000..22100)
            .map(|port| {
                let kind = CheckKind::Http { path: "/".into(), expect_status: 200, expect_body: None };
                CheckTarget { addr: V4, spec: spec(kind, port, 1000, 500) }
            })
            .collect();
        let checker = started_with(&[steady.clone(), hung.clone()].concat());
        let (warm, status) = warm_and_end(&checker);
        drop(checker);
        drop(listeners);
        assert!(steady.iter().all(|t| status[t].health == Health::Up));
        for target in &hung {
            let s = &status[target];
            assert_eq!((s.health, s.reason.as_str()), (Health::Down, "timeout"), "{target}");
            assert!(s.last_latency.unwrap() >= Duration::from_millis(500), "{target}: {s:?}");
        }
        let (mean, max, count) = drift(&warm, &status, &steady);
        assert_on_time("400 tcp targets beside 100 hung http targets", mean, max, count);
        let (mean, max, count) = drift(&warm, &status, &hung);
        assert_on_time("100 hung http targets (500 ms timeouts)", mean, max, count);
    });
}
