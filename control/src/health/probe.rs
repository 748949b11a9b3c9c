//! One probe of one target: connect, ask, or run, and say what happened in a [`ProbeOutcome`].
//!
//! Every probe gets a deadline (its start plus the spec's timeout) and returns by then, or a few
//! milliseconds after it for an exec check whose child must be killed and reaped. A probe never
//! fails with an error: whatever goes wrong is an outcome, the reason an operator reads.

use super::http;
use super::CheckTarget;
use crate::config::CheckKind;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout_at, Instant};

/// Most bytes of an exec check's stderr kept for its reason (its first line, cut there).
const MAX_STDERR_LINE: usize = 200;
/// How long an exec check's stderr is still read after the program exited: long enough for what
/// it wrote just before exiting, short enough that a background process holding the pipe open
/// cannot stall the probe.
const STDERR_GRACE: Duration = Duration::from_millis(20);
/// How long a killed exec check may take to be reaped before it is left to tokio's orphan reaper.
const REAP_GRACE: Duration = Duration::from_secs(1);
/// Largest UDP reply read (the whole of any datagram).
const MAX_DATAGRAM: usize = 65536;

/// What a single probe found. `Display` is the short text shown in status and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The check passed.
    Ok,
    /// No answer (no TCP handshake, no HTTP status line, no complete body) before the timeout.
    Timeout,
    /// TCP: the target answered the SYN with a RST.
    Refused,
    /// UDP: an ICMP port unreachable came back (a connected UDP socket reports it as ECONNREFUSED).
    UdpRefused,
    /// Any other socket error, with the operation that failed: "connect: network unreachable".
    Io { operation: &'static str, error: String },
    /// HTTP: the status differs from `expect_status`.
    HttpStatus(u16),
    /// HTTP: the answer is not HTTP/1.x, or closed before its status line.
    HttpMalformed(&'static str),
    /// HTTP: the body (its first 64 KiB) lacks `expect_body`.
    BodyLacks(String),
    /// UDP: nothing came back before the timeout.
    NoReply,
    /// UDP: replies came, none containing `expect`.
    ReplyLacks(String),
    /// Exec: the program exited with a status other than 0; the first line of its stderr, if any.
    ExitStatus { code: i32, stderr: Option<String> },
    /// Exec: the program was killed by a signal it did not get from the checker.
    Signaled(i32),
    /// Exec: still running at the timeout, so killed (with its whole process group).
    KilledAtTimeout,
    /// Exec: the program could not be started.
    SpawnFailed { program: String, error: String },
}

impl ProbeOutcome {
    pub fn is_ok(&self) -> bool {
        *self == ProbeOutcome::Ok
    }

    fn io(operation: &'static str, error: &io::Error) -> ProbeOutcome {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
            _ => ProbeOutcome::Io { operation, error: error_text(error) },
        }
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Ok => f.write_str("ok"),
            ProbeOutcome::Timeout => f.write_str("timeout"),
            ProbeOutcome::Refused => f.write_str("connection refused"),
            ProbeOutcome::UdpRefused => f.write_str("refused (ICMP port unreachable)"),
            ProbeOutcome::Io { operation, error } => write!(f, "{operation}: {error}"),
            ProbeOutcome::HttpStatus(code) => write!(f, "status {code}"),
            ProbeOutcome::HttpMalformed(what) => f.write_str(what),
            ProbeOutcome::BodyLacks(text) => write!(f, "body lacks {text:?}"),
            ProbeOutcome::NoReply => f.write_str("no reply"),
            ProbeOutcome::ReplyLacks(text) => write!(f, "reply lacks {text:?}"),
            ProbeOutcome::ExitStatus { code, stderr: None } => write!(f, "exit status {code}"),
            ProbeOutcome::ExitStatus { code, stderr: Some(line) } => write!(f, "exit status {code}: {line}"),
            ProbeOutcome::Signaled(signal) => write!(f, "killed by signal {signal}"),
            ProbeOutcome::KilledAtTimeout => f.write_str("killed at timeout"),
            ProbeOutcome::SpawnFailed { program, error } => write!(f, "cannot run {program:?}: {error}"),
        }
    }
}

/// "Network is unreachable (os error 101)" -> "network is unreachable": the reason is read among
/// other short lower-case texts, and the errno number helps nobody there.
fn error_text(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(cut) if text.ends_with(')') => text.get(..cut).unwrap_or(&text).to_string(),
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Runs one probe of `target`, finishing by `deadline` (exec: plus the time to kill and reap).
pub(super) async fn run(target: &CheckTarget, deadline: Instant) -> ProbeOutcome {
    let socket = SocketAddr::new(target.addr, target.spec.port);
    match &target.spec.kind {
        CheckKind::Tcp => timeout_at(deadline, tcp(socket)).await.unwrap_or(ProbeOutcome::Timeout),
        CheckKind::Http { path, expect_status, expect_body } => {
            timeout_at(deadline, http_get(socket, path, *expect_status, expect_body.as_deref()))
                .await
                .unwrap_or(ProbeOutcome::Timeout)
        }
        CheckKind::Udp { payload, expect } => {
            udp(socket, payload.as_deref().unwrap_or_default(), expect.as_deref(), deadline).await
        }
        CheckKind::Exec { command } => exec(command, target.addr, target.spec.port, deadline).await,
    }
}

async fn tcp(socket: SocketAddr) -> ProbeOutcome {
    match TcpStream::connect(socket).await {
        // Dropping the stream closes it: the handshake was the check.
        Ok(_stream) => ProbeOutcome::Ok,
        Err(e) => ProbeOutcome::io("connect", &e),
    }
}

async fn http_get(
    socket: SocketAddr,
    path: &str,
    expect_status: u16,
    expect_body: Option<&str>,
) -> ProbeOutcome {
    let mut stream = match TcpStream::connect(socket).await {
        Ok(stream) => stream,
        Err(e) => return ProbeOutcome::io("connect", &e),
    };
    if let Err(e) = stream.write_all(&http::request(path, socket.ip())).await {
        return ProbeOutcome::io("send", &e);
    }
    let mut buf = Vec::with_capacity(4096);
    let mut head: Option<http::Head> = None;
    loop {
        let eof = match read_more(&mut stream, &mut buf).await {
            Ok(n) => n == 0,
            Err(e) => return ProbeOutcome::io("receive", &e),
        };
        if head.is_none() {
            match http::status(&buf) {
                Err(malformed) => return ProbeOutcome::HttpMalformed(malformed.text()),
                Ok(None) if eof => return ProbeOutcome::HttpMalformed("closed before the status line"),
                Ok(None) => continue,
                Ok(Some(code)) if code != expect_status => return ProbeOutcome::HttpStatus(code),
                Ok(Some(_)) => {}
            }
            let Some(expected) = expect_body else { return ProbeOutcome::Ok };
            match http::head(&buf) {
                Err(malformed) => return ProbeOutcome::HttpMalformed(malformed.text()),
                Ok(None) if eof => return ProbeOutcome::BodyLacks(expected.to_string()),
                Ok(None) => continue,
                Ok(Some(found)) => head = Some(found),
            }
        }
        let (Some((head_len, framing)), Some(expected)) = (head, expect_body) else { continue };
        let raw = buf.get(head_len..).unwrap_or_default();
        let (body, complete) = match http::body(raw, framing) {
            Ok(decoded) => decoded,
            Err(malformed) => return ProbeOutcome::HttpMalformed(malformed.text()),
        };
        if http::contains(&body, expected.as_bytes()) {
            return ProbeOutcome::Ok;
        }
        if complete || eof || raw.len() >= http::MAX_BODY {
            return ProbeOutcome::BodyLacks(expected.to_string());
        }
    }
}

/// Appends what the stream has (at most 16 KiB) to `buf`; 0 at the end of the stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + 16 * 1024, 0);
    let read = stream.read(buf.get_mut(start..).unwrap_or_default()).await;
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

async fn udp(socket: SocketAddr, payload: &str, expect: Option<&str>, deadline: Instant) -> ProbeOutcome {
    let local: SocketAddr = match socket {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = match UdpSocket::bind(local).await {
        Ok(udp) => udp,
        Err(e) => return ProbeOutcome::io("bind", &e),
    };
    // Connected, so that the kernel reports an ICMP port unreachable as ECONNREFUSED on receive
    // and drops datagrams from anyone but the target.
    if let Err(e) = udp.connect(socket).await {
        return ProbeOutcome::io("connect", &e);
    }
    if let Err(e) = udp.send(payload.as_bytes()).await {
        return udp_error("send", &e);
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut replied = false;
    loop {
        match timeout_at(deadline, udp.recv(&mut buf)).await {
            Err(_elapsed) if replied => {
                return ProbeOutcome::ReplyLacks(expect.unwrap_or_default().to_string())
            }
            Err(_elapsed) => return ProbeOutcome::NoReply,
            Ok(Err(e)) => return udp_error("receive", &e),
            Ok(Ok(n)) => match expect {
                Some(expected) if !http::contains(buf.get(..n).unwrap_or_default(), expected.as_bytes()) => {
                    replied = true;
                }
                _ => return ProbeOutcome::Ok,
            },
        }
    }
}

fn udp_error(operation: &'static str, error: &io::Error) -> ProbeOutcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ProbeOutcome::UdpRefused,
        _ => ProbeOutcome::io(operation, error),
    }
}

async fn exec(command: &[String], addr: IpAddr, port: u16, deadline: Instant) -> ProbeOutcome {
    let Some((program, args)) = command.split_first() else {
        return ProbeOutcome::SpawnFailed { program: String::new(), error: "empty command".into() };
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env("FWD_CHECK_ADDR", addr.to_string())
        .env("FWD_CHECK_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what a shell script started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return ProbeOutcome::SpawnFailed { program: program.clone(), error: error_text(&e) },
    };
    let mut group = ProcessGroup::of(&child);
    let mut stderr = child.stderr.take();
    let mut first_line = Vec::new();

    let waited = timeout_at(deadline, async {
        let wait = child.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                status = &mut wait => break status,
                keep = read_stderr(&mut stderr, &mut first_line), if stderr.is_some() => {
                    if !keep {
                        stderr = None;
                    }
                }
            }
        }
    })
    .await;

    let status = match waited {
        Err(_elapsed) => {
            group.kill();
            // Reaped here when possible, so that no zombie waits for the orphan reaper.
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            return ProbeOutcome::KilledAtTimeout;
        }
        Ok(Err(e)) => return ProbeOutcome::io("wait", &e),
        Ok(Ok(status)) => status,
    };
    // The leader is reaped: anything it left running in its group goes too (the group's id stays
    // reserved while a member lives, so this cannot hit an unrelated process).
    group.kill();
    group.forget();
    if status.success() {
        return ProbeOutcome::Ok;
    }
    let _ = tokio::time::timeout(STDERR_GRACE, async {
        while stderr.is_some() {
            if !read_stderr(&mut stderr, &mut first_line).await {
                stderr = None;
            }
        }
    })
    .await;
    let line = String::from_utf8_lossy(&first_line);
    let line = line.lines().next().unwrap_or_default().trim();
    let stderr_line = (!line.is_empty()).then(|| line.chars().take(MAX_STDERR_LINE).collect());
    match status.code() {
        Some(code) => ProbeOutcome::ExitStatus { code, stderr: stderr_line },
        None => ProbeOutcome::Signaled(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
    }
}

/// Reads a piece of stderr, keeping bytes until the first newline (at most `MAX_STDERR_LINE`);
/// the rest is read and dropped so that a chatty program never blocks on a full pipe.
/// Returns false at the end of the stream or on an error.
async fn read_stderr(stderr: &mut Option<tokio::process::ChildStderr>, first_line: &mut Vec<u8>) -> bool {
    let Some(pipe) = stderr.as_mut() else { return false };
    let mut chunk = [0u8; 1024];
    match pipe.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let have_line = first_line.contains(&b'\n') || first_line.len() >= MAX_STDERR_LINE;
            if !have_line {
                let room = MAX_STDERR_LINE - first_line.len();
                first_line.extend(chunk.iter().take(n.min(room)));
            }
            true
        }
    }
}

/// An exec check's process group, killed with SIGKILL when the probe times out or is dropped
/// (the checker stopped, or the target was removed) while the program runs.
struct ProcessGroup {
    leader: Option<rustix::process::Pid>,
}

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> ProcessGroup {
        let leader =
            child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
        ProcessGroup { leader }
    }

    fn kill(&mut self) {
        if let Some(leader) = self.leader {
            // ESRCH (the group is gone) is the normal case after a clean exit.
            let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
        }
    }

    /// After the group was killed once its leader was reaped: the id may be reused from now on.
    fn forget(&mut self) {
        self.leader = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_texts() {
        let cases = [
            (ProbeOutcome::Ok, "ok"),
            (ProbeOutcome::Timeout, "timeout"),
            (ProbeOutcome::Refused, "connection refused"),
            (ProbeOutcome::UdpRefused, "refused (ICMP port unreachable)"),
            (
                ProbeOutcome::Io { operation: "connect", error: "network is unreachable".into() },
                "connect: network is unreachable",
            ),
            (ProbeOutcome::HttpStatus(503), "status 503"),
            (ProbeOutcome::HttpMalformed("malformed status line"), "malformed status line"),
            (ProbeOutcome::BodyLacks("ok".into()), "body lacks \"ok\""),
            (ProbeOutcome::NoReply, "no reply"),
            (ProbeOutcome::ReplyLacks("pong".into()), "reply lacks \"pong\""),
            (ProbeOutcome::ExitStatus { code: 1, stderr: None }, "exit status 1"),
            (
                ProbeOutcome::ExitStatus { code: 2, stderr: Some("disk full".into()) },
                "exit status 2: disk full",
            ),
            (ProbeOutcome::Signaled(15), "killed by signal 15"),
            (ProbeOutcome::KilledAtTimeout, "killed at timeout"),
            (
                ProbeOutcome::SpawnFailed { program: "/x".into(), error: "no such file or directory".into() },
                "cannot run \"/x\": no such file or directory",
            ),
        ];
        for (outcome, text) in cases {
            assert_eq!(outcome.to_string(), text);
            assert_eq!(outcome.is_ok(), text == "ok");
        }
    }

    #[test]
    fn error_texts_drop_the_errno() {
        let e = io::Error::from_raw_os_error(101);
        assert_eq!(error_text(&e), "network is unreachable");
        assert_eq!(error_text(&io::Error::other("Odd thing")), "odd thing");
        assert_eq!(ProbeOutcome::io("connect", &io::Error::from_raw_os_error(111)), ProbeOutcome::Refused);
    }
}
