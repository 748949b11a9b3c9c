//! The admin socket: a Unix stream socket with a one-request, one-response JSON protocol, and the
//! reports it carries.
//!
//! A client connects, writes one [`Request`] as a JSON line, and reads one [`Response`] line. The
//! server thread never touches the forwarder's state itself: it hands each request to the control
//! loop through a channel ([`AdminCall`]) and writes back what the loop answers, so all state has
//! one owner and no lock is shared with the workers.
//!
//! The socket is created mode 0600 (only the user running fwd, and root, may connect): drain and
//! reload change what the box does. A stale socket file from a crashed fwd is replaced; a socket
//! that still answers means another fwd runs with the same path, and start-up refuses.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long the server waits for a client's request line, and for the control loop's answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Services, backends, health, tables and traffic: [`StatusReport`].
    Status,
    /// Per-worker counters: [`StatsReport`].
    Stats,
    /// Take no new flows to a backend (`ADDRESS` or `ADDRESS:PORT`), in one service or all.
    Drain { backend: String, service: Option<String> },
    /// Undo a drain.
    Undrain { backend: String, service: Option<String> },
    /// Re-read the configuration file: [`ReloadReport`].
    Reload,
    /// The Prometheus text exposition, as a JSON string.
    Metrics,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// Why the request failed, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The report asked for (a [`StatusReport`], ...), or null.
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(result) => Response { ok: true, error: None, result },
            Err(e) => Response::error(format!("cannot encode the answer: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response { ok: false, error: Some(message.into()), result: serde_json::Value::Null }
    }
}

/// `fwd status`: like `ipvsadm -Ln --stats`, plus health and tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub nic: String,
    pub config_path: String,
    pub uptime_seconds: f64,
    /// One fingerprint over every service's table: equal on boxes that pick alike.
    pub cluster_fingerprint: String,
    pub last_reload: Option<ReloadReport>,
    pub services: Vec<ServiceStatus>,
    /// The BGP announcer's view, when `[bgp]` is configured.
    #[serde(default)]
    pub bgp: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `198.18.100.1:80/tcp`.
    pub key: String,
    pub mode: String,
    /// `serving`, `fallback` (every backend is down, the fallback takes the traffic) or `down`.
    pub state: String,
    pub table_size: u32,
    pub fingerprint: String,
    pub packets: u64,
    pub bytes: u64,
    pub active_flows: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `198.18.2.11:80` or `[fd00::1]:80`.
    pub address: String,
    pub fallback: bool,
    pub weight: u32,
    /// `up`, `down`, `unknown` (no answer yet) or `unchecked` (no check configured).
    pub health: String,
    /// The outcome behind the last health change (`connection refused`, `status 503`, ...).
    pub health_reason: String,
    /// Seconds since the last health change.
    pub health_since_seconds: Option<f64>,
    /// When the last health change happened, in seconds since the Unix epoch.
    #[serde(default)]
    pub health_since_unix: Option<f64>,
    pub drained: bool,
    /// In the table: `up`, `drained` (no new flows) or `down` (out of the table).
    pub table_state: String,
    pub slots: u32,
    pub share_percent: f64,
    pub packets: u64,
    pub bytes: u64,
    pub active_flows: u64,
    pub new_flows: u64,
    /// The MAC frames to this backend are sent to; none: not resolved yet.
    pub next_hop_mac: Option<String>,
}

/// `fwd stats`: per worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub workers: Vec<WorkerStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub core: usize,
    pub queue: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub pass: u64,
    pub icmp_generated: u64,
    pub drops: BTreeMap<String, u64>,
    pub batches: u64,
    pub empty_polls: u64,
    /// Frames classified while the batch before theirs waited for memory.
    #[serde(default)]
    pub classified_ahead: u64,
    /// Average frames per non-empty batch.
    pub batch_fill: f64,
    /// Non-empty polls over all polls, since start.
    pub busy_ratio: f64,
    /// Processing time of one batch over the last stats interval, in nanoseconds.
    pub batch_time_ns: BatchTimes,
    /// Live flows in this worker's connection table at its last census.
    pub active_flows: u64,
    /// Milliseconds since the worker last reported progress (its heartbeat).
    pub heartbeat_age_ms: u64,
    /// The kernel's counters for the worker's AF_XDP socket: frames it dropped before the
    /// pipeline saw them (so no drop reason above counts them).
    #[serde(default)]
    pub socket: SocketStats,
    /// Where the socket's UMEM frames were, as its port sampled them.
    #[serde(default)]
    pub umem: UmemOccupancy,
}

/// Where a worker's UMEM frames were, as its port sampled them (once per 16 batches): the number
/// of samples and the frames summed over them in each place. Totals since start, like counters:
/// the difference of two reports' sums over the difference of their samples is the mean between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UmemOccupancy {
    pub samples: u64,
    /// Free frames, on the fill ring for the kernel to receive into.
    pub fill_ring: u64,
    /// Received frames on the RX ring, not yet polled: many means the worker is behind.
    pub rx_ring: u64,
    /// Frames given to the kernel to transmit and not completed: many means the way out is slow.
    pub transmit: u64,
}

impl UmemOccupancy {
    /// Each place with its summed frames, as the metrics label them.
    pub fn named(&self) -> [(&'static str, u64); 3] {
        [("fill_ring", self.fill_ring), ("rx_ring", self.rx_ring), ("transmit", self.transmit)]
    }

    /// Mean frames on the fill ring, on the RX ring and in transmit; None before any sample.
    pub fn means(&self) -> Option<[f64; 3]> {
        let n = self.samples as f64;
        (self.samples > 0)
            .then(|| [self.fill_ring as f64 / n, self.rx_ring as f64 / n, self.transmit as f64 / n])
    }
}

/// The kernel's counters for one AF_XDP socket (`getsockopt(XDP_STATISTICS)`), read by its
/// worker every 100 ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStats {
    /// Received frames the kernel could not deliver: no free UMEM frame to receive into (the
    /// worker did not keep up; also counted in `rx_fill_ring_empty`), or longer than a UMEM frame
    /// holds (the interface MTU against fwd's `--frame-size`).
    pub rx_dropped: u64,
    /// Received frames dropped because the RX ring was full. Stays 0 with fwd's rings, which are
    /// as large as the UMEM: the fill ring runs empty first.
    pub rx_ring_full: u64,
    /// Times a frame arrived and the fill ring held no free UMEM frame for it.
    pub rx_fill_ring_empty: u64,
    /// Descriptors the kernel rejected: on the fill ring (rx) and on the TX ring (tx).
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Times the kernel was asked to transmit and found the TX ring empty.
    pub tx_ring_empty: u64,
}

impl SocketStats {
    /// Adds `other`'s counters to these (totals over workers).
    pub fn add(&mut self, other: &SocketStats) {
        self.rx_dropped += other.rx_dropped;
        self.rx_ring_full += other.rx_ring_full;
        self.rx_fill_ring_empty += other.rx_fill_ring_empty;
        self.rx_invalid_descs += other.rx_invalid_descs;
        self.tx_invalid_descs += other.tx_invalid_descs;
        self.tx_ring_empty += other.tx_ring_empty;
    }

    /// Each counter with its name, as `fwd stats` and the metrics label them.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("rx_dropped", self.rx_dropped),
            ("rx_ring_full", self.rx_ring_full),
            ("rx_fill_ring_empty", self.rx_fill_ring_empty),
            ("rx_invalid_descs", self.rx_invalid_descs),
            ("tx_invalid_descs", self.tx_invalid_descs),
            ("tx_ring_empty", self.tx_ring_empty),
        ]
    }
}

/// Percentiles of per-batch processing time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchTimes {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The outcome of a reload (SIGHUP or `fwd reload`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// The validation error, when not ok.
    pub error: Option<String>,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    /// Settings that changed but take effect only at restart.
    pub needs_restart: Vec<String>,
}

/// A request from the socket (or the metrics endpoint) and where its answer goes.
#[derive(Debug)]
pub struct AdminCall {
    pub request: Request,
    pub reply: SyncSender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "another fwd is already serving the admin socket {0}; stop it or set admin.socket to another path"
    )]
    InUse(PathBuf),
    #[error("cannot create the admin socket {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("fwd is not running: no admin socket at {0} (is fwd started, with this admin.socket?)")]
    NotRunning(PathBuf),
    #[error(
        "permission denied on the admin socket {0}: it is mode 0600, owned by the user running fwd; \
         run this command as that user or as root"
    )]
    Denied(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("admin socket {path}: unreadable answer: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// The listening side; removes its socket file when dropped.
#[derive(Debug)]
pub struct AdminServer {
    path: PathBuf,
}

impl AdminServer {
    /// Binds `path` (mode 0600) and serves it on a thread of its own, sending every request to
    /// `calls`.
    pub fn start(path: &Path, calls: Sender<AdminCall>) -> Result<AdminServer, AdminError> {
        let create = |source| AdminError::Create { path: path.to_path_buf(), source };
        if UnixStream::connect(path).is_ok() {
            return Err(AdminError::InUse(path.to_path_buf()));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(create(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(create)?;
        }
        let listener = UnixListener::bind(path).map_err(create)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(create)?;
        std::thread::Builder::new()
            .name("fwd-admin".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let calls = calls.clone();
                    // One thread per connection: a slow client cannot hold up the next one.
                    let _ = std::thread::Builder::new()
                        .name("fwd-admin-conn".into())
                        .spawn(move || serve_connection(stream, &calls));
                }
            })
            .map_err(create)?;
        Ok(AdminServer { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_connection(stream: UnixStream, calls: &Sender<AdminCall>) {
    let _ = stream.set_read_timeout(Some(SERVER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SERVER_TIMEOUT));
    let mut line = String::new();
    let Ok(reader) = stream.try_clone() else { return };
    let response = match BufReader::new(reader.take(MAX_REQUEST)).read_line(&mut line) {
        Err(e) => Response::error(format!("reading the request: {e}")),
        Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::error(format!(
                "not a request: {e}; expected one JSON object per line like {{\"command\":\"status\"}}"
            )),
            Ok(request) => call(calls, request),
        },
    };
    let mut stream = stream;
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = stream.write_all(text.as_bytes());
    }
}

/// Hands a request to the control loop and waits for its answer.
pub fn call(calls: &Sender<AdminCall>, request: Request) -> Response {
    let (reply, answer) = mpsc::sync_channel(1);
    if calls.send(AdminCall { request, reply }).is_err() {
        return Response::error("fwd is shutting down");
    }
    match answer.recv_timeout(SERVER_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Response::error("the control loop did not answer in time"),
    }
}

/// Sends one request to a running fwd and returns its answer.
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response, AdminError> {
    let io = |source| AdminError::Io { path: path.to_path_buf(), source };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            AdminError::NotRunning(path.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => AdminError::Denied(path.to_path_buf()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut text = serde_json::to_string(request)
        .map_err(|e| AdminError::Protocol { path: path.to_path_buf(), message: e.to_string() })?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    serde_json::from_str(line.trim())
        .map_err(|e| AdminError::Protocol { path: path.to_path_buf(), message: format!("{e}: {line:?}") })
}

/// Receives the calls of [`AdminServer`] in the control loop: waits up to `timeout` for one.
pub fn next_call(calls: &Receiver<AdminCall>, timeout: Duration) -> Option<AdminCall> {
    calls.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A socket path in a fresh directory of its own (the server creates the missing `sub`),
    /// removed with everything in it on drop, also when the test fails.
    struct TempSocket {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl std::ops::Deref for TempSocket {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    impl AsRef<Path> for TempSocket {
        fn as_ref(&self) -> &Path {
            &self.path
        }
    }

    fn temp_socket(name: &str) -> TempSocket {
        let dir = std::env::temp_dir().join(format!("fwd-admin-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("admin.sock");
        TempSocket { dir, path }
    }

    /// A control loop stand-in: answers status with a fixed report, drain with an echo.
    fn answer_calls(calls: Receiver<AdminCall>) {
        std::thread::spawn(move || {
            while let Ok(c) = calls.recv() {
                let r = match c.request {
                    Request::Status => {
                        Response::ok(StatusReport { nic: "veth0".into(), ..StatusReport::default() })
                    }
                    Request::Drain { backend, service } => Response::ok((backend, service)),
                    other => Response::error(format!("unsupported {other:?}")),
                };
                let _ = c.reply.send(r);
            }
        });
    }

    /// A report from a fwd without socket counters still reads (as zeros): `fwd stats` of one
    /// version can talk to a running fwd of the previous one.
    #[test]
    fn worker_stats_without_socket_counters_read_as_zero() {
        let mut value = serde_json::to_value(WorkerStats { core: 3, ..WorkerStats::default() }).unwrap();
        assert!(value.as_object_mut().unwrap().remove("socket").is_some());
        assert!(value.as_object_mut().unwrap().remove("umem").is_some());
        let read: WorkerStats = serde_json::from_value(value).unwrap();
        assert_eq!(
            (read.core, read.socket, read.umem),
            (3, SocketStats::default(), UmemOccupancy::default())
        );
        let umem = UmemOccupancy { samples: 4, fill_ring: 400, rx_ring: 40, transmit: 0 };
        assert_eq!(umem.means(), Some([100.0, 10.0, 0.0]));
        assert_eq!(UmemOccupancy::default().means(), None);
        let named = SocketStats { rx_ring_full: 7, tx_ring_empty: 2, ..SocketStats::default() }.named();
        assert_eq!(named.iter().map(|(_, v)| v).sum::<u64>(), 9);
        assert!(named.contains(&("rx_ring_full", 7)) && named.contains(&("tx_ring_empty", 2)));
    }

    #[test]
    fn round_trip_mode_and_cleanup() {
        let path = temp_socket("rt");
        let (tx, rx) = mpsc::channel();
        let server = AdminServer::start(&path, tx.clone()).unwrap();
        answer_calls(rx);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let r = request(&path, &Request::Status, Duration::from_secs(5)).unwrap();
        assert!(r.ok);
        let report: StatusReport = serde_json::from_value(r.result).unwrap();
        assert_eq!(report.nic, "veth0");
        let r = request(
            &path,
            &Request::Drain { backend: "198.18.2.11:80".into(), service: Some("web".into()) },
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.result, serde_json::json!(["198.18.2.11:80", "web"]));
        let r = request(&path, &Request::Reload, Duration::from_secs(5)).unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("unsupported Reload"));

        // A second server on the same path refuses while the first answers.
        let err = AdminServer::start(&path, tx).unwrap_err();
        assert!(matches!(err, AdminError::InUse(_)), "{err}");
        drop(server);
        assert!(!path.exists());
        let err = request(&path, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AdminError::NotRunning(_)), "{err}");
        assert!(err.to_string().contains("fwd is not running"));
    }

    #[test]
    fn stale_socket_is_replaced_and_garbage_gets_an_error() {
        let path = temp_socket("stale");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
        let (tx, rx) = mpsc::channel();
        let _server = AdminServer::start(&path, tx).unwrap();
        answer_calls(rx);
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"command\":\"explode\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("not a request"), "{line}");
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"command":"status"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Undrain { backend: "198.18.2.11".into(), service: None })
                .unwrap(),
            r#"{"command":"undrain","backend":"198.18.2.11","service":null}"#
        );
        let r: Request = serde_json::from_str(r#"{"command":"drain","backend":"[fd00::1]:80"}"#).unwrap();
        assert_eq!(r, Request::Drain { backend: "[fd00::1]:80".into(), service: None });
    }
}
