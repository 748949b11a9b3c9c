//! Prometheus metrics: the text exposition format, and a small HTTP endpoint serving it.
//!
//! [`Exposition`] collects samples in any order and writes each family once, with its HELP and
//! TYPE lines and all its samples together, as the format requires. The endpoint
//! ([`MetricsServer`]) answers `GET /metrics` by asking the control loop for a fresh rendering
//! through the same channel as the admin socket, so metrics and `fwd status` come from one state.
//! It is a hand-written HTTP/1.0 responder: one route, no keep-alive, no TLS (bind it to loopback
//! or a management network), which a web framework would only make heavier.

use crate::admin::{call, AdminCall, Request};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Quantile samples plus `_sum` and `_count` (add those with [`Kind::Summary`] too).
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: String,
    samples: String,
}

/// Metric families being assembled.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Adds one sample to family `name` (declared with `kind` and `help` the first time).
    pub fn sample(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample_in(name, kind, help, name, labels, value);
    }

    /// Adds a sample named `sample` (e.g. a summary's `NAME_sum`) to family `family`.
    pub fn sample_in(
        &mut self,
        family: &str,
        kind: Kind,
        help: &str,
        sample: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let i = *self.index.entry(family.to_string()).or_insert_with(|| {
            self.families.push(Family {
                name: family.to_string(),
                kind,
                help: help.to_string(),
                samples: String::new(),
            });
            self.families.len() - 1
        });
        let f = &mut self.families[i];
        f.samples.push_str(sample);
        if !labels.is_empty() {
            f.samples.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    f.samples.push(',');
                }
                let _ = write!(f.samples, "{k}=\"{}\"", escape_label(v));
            }
            f.samples.push('}');
        }
        let _ = writeln!(f.samples, " {}", format_value(value));
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, Kind::Counter, help, labels, value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, Kind::Gauge, help, labels, value);
    }

    /// The text exposition (format version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\\', "\\\\").replace('\n', "\\n"));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            out.push_str(&f.samples);
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr} (admin.metrics_listen): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The HTTP endpoint; runs until the process ends.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr, calls: Sender<AdminCall>) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
        std::thread::Builder::new()
            .name("fwd-metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                    // Scrapes are rare (every few seconds) and answered quickly: one at a time.
                    serve(stream, &calls);
                }
            })
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { addr: bound })
    }

    /// The address actually bound (port 0 in the config picks a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Answers one HTTP request on `stream` (a TCP connection; any byte stream in tests).
fn serve(mut stream: impl Read + Write, calls: &Sender<AdminCall>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let r = call(calls, Request::Metrics);
            match (r.ok, r.result.as_str()) {
                (true, Some(text)) => {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text.to_string())
                }
                _ => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    r.error.unwrap_or_else(|| "no metrics".into()) + "\n",
                ),
            }
        }
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "fwd: metrics at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found; try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Response;

    #[test]
    fn families_are_grouped_with_help_and_type_once() {
        let mut e = Exposition::new();
        e.counter("fwd_backend_packets_total", "Packets sent.", &[("service", "web"), ("backend", "a")], 5);
        e.gauge("fwd_backend_up", "1 when healthy.", &[("backend", "a")], 1.0);
        e.counter("fwd_backend_packets_total", "Packets sent.", &[("service", "web"), ("backend", "b")], 7);
        e.gauge("fwd_batch_seconds", "Batch time.", &[("quantile", "0.99")], 0.000_012_5);
        e.sample("fwd_lat", Kind::Summary, "Latency.", &[("quantile", "0.5")], 2.0);
        e.sample_in("fwd_lat", Kind::Summary, "Latency.", "fwd_lat_sum", &[], 10.0);
        e.sample_in("fwd_lat", Kind::Summary, "Latency.", "fwd_lat_count", &[], 4.0);
        e.gauge("fwd_odd", "Quotes \"and\" backslashes.", &[("v", "a\"b\\c\nd")], f64::INFINITY);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP fwd_backend_packets_total Packets sent.\n\
             # TYPE fwd_backend_packets_total counter\n\
             fwd_backend_packets_total{service=\"web\",backend=\"a\"} 5\n\
             fwd_backend_packets_total{service=\"web\",backend=\"b\"} 7\n\
             # HELP fwd_backend_up 1 when healthy.\n\
             # TYPE fwd_backend_up gauge\n\
             fwd_backend_up{backend=\"a\"} 1\n\
             # HELP fwd_batch_seconds Batch time.\n\
             # TYPE fwd_batch_seconds gauge\n\
             fwd_batch_seconds{quantile=\"0.99\"} 0.0000125\n\
             # HELP fwd_lat Latency.\n\
             # TYPE fwd_lat summary\n\
             fwd_lat{quantile=\"0.5\"} 2\n\
             fwd_lat_sum 10\n\
             fwd_lat_count 4\n\
             # HELP fwd_odd Quotes \"and\" backslashes.\n\
             # TYPE fwd_odd gauge\n\
             fwd_odd{v=\"a\\\"b\\\\c\\nd\"} +Inf\n"
        );
    }

    /// One request through `serve` over a socket pair (the TCP side is exercised by the lab,
    /// inside its namespaces).
    fn http_get(calls: &Sender<AdminCall>, path: &str) -> String {
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        write!(client, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        serve(server, calls);
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn endpoint_serves_what_the_control_loop_renders() {
        let (tx, rx) = std::sync::mpsc::channel::<AdminCall>();
        std::thread::spawn(move || {
            while let Ok(c) = rx.recv() {
                assert_eq!(c.request, Request::Metrics);
                let mut e = Exposition::new();
                e.counter("fwd_test_total", "A test.", &[], 3);
                let _ = c.reply.send(Response::ok(e.render()));
            }
        });
        let page = http_get(&tx, "/metrics");
        assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"));
        assert!(page
            .ends_with("# HELP fwd_test_total A test.\n# TYPE fwd_test_total counter\nfwd_test_total 3\n"));
        assert!(http_get(&tx, "/nope").starts_with("HTTP/1.0 404"));
        assert!(http_get(&tx, "/").starts_with("HTTP/1.0 200"));
    }
}
