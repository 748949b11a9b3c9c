//! fwd's configuration: a TOML file read into typed structures with every default filled in.
//!
//! Reading happens in two steps. Serde (through `serde_path_to_error`, so a bad value is reported
//! with its field path) turns the text into the [`raw`] structures, rejecting unknown keys, wrong
//! types and malformed durations, addresses, prefixes and MACs. [`validate`] then checks the rules
//! that span several fields (duplicates, address families a mode can carry, MTU, check timing)
//! and builds a [`Config`]. Every error names the file, the line when it can, the field path
//! (`services[2].backends[1].weight`), the bad value and what is allowed.
//!
//! See `tools/examples/` for complete files.

mod raw;
mod validate;
mod values;

pub use values::{
    format_duration, format_mac, host_port, parse_cores, parse_duration, parse_mac, IpPrefix, Ipv4Prefix,
    Ipv6Prefix, ValueError, MAX_CORE,
};

use fwd_dataplane::flow::L4Proto;
use fwd_dataplane::snapshot::{ForwardMode, FragmentPolicy, ServiceKey};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest L3 MTU accepted: the IPv4 minimum every host must reassemble.
pub const MIN_MTU: u16 = 576;
/// Smallest L3 MTU when any service carries IPv6 (RFC 8200's minimum link MTU).
pub const MIN_MTU_IPV6: u16 = 1280;
/// Largest L3 MTU accepted: common jumbo-frame limit.
pub const MAX_MTU: u16 = 9216;
/// Bounds of `conntrack.capacity_per_core`.
pub const MIN_CONNTRACK_CAPACITY: u32 = 1024;
pub const MAX_CONNTRACK_CAPACITY: u32 = 64 * 1024 * 1024;
/// Shortest health-check interval: faster checks load backends without detecting failures sooner
/// in any useful way.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Bounds of a check's `rise` and `fall`.
pub const MAX_RISE_FALL: u32 = 100;
/// Largest backend weight (Maglev weights are relative; this keeps sums far from overflow).
pub const MAX_WEIGHT: u32 = 65535;
/// Maglev's imbalance bound: with a table at least this many times the backend count, each
/// backend's share of slots stays within about 1% of its weighted share (Maglev paper, section 3.4).
pub const TABLE_SIZE_PER_BACKEND: u32 = 100;

/// Port of the metrics endpoint when `admin.metrics_listen` is not given (on loopback).
pub const DEFAULT_METRICS_PORT: u16 = 9779;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// Native if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode; fail if the driver lacks it.
    Native,
    /// SKB (generic) mode: works everywhere, slower.
    Generic,
}

impl XdpMode {
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// The whole configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interface to serve on; the `--nic` flag overrides it.
    pub nic: Option<String>,
    /// Worker cores as written ("2-7", "0,2,4"); validated with [`parse_cores`].
    pub cores: Option<String>,
    pub xdp_mode: XdpMode,
    /// A prime in `MIN_TABLE_SIZE..=MAX_TABLE_SIZE` of `fwd_dataplane::maglev`.
    pub maglev_table_size: u32,
    /// Layer-3 MTU of the interface, `MIN_MTU..=MAX_MTU`.
    pub mtu: u16,
    /// UDP destination port of GUE packets, never 0.
    pub gue_port: u16,
    pub answer_echo: bool,
    /// Per-worker budget of generated ICMP errors per second; 0 sends none.
    pub icmp_rate_per_sec: u32,
    /// Outer source addresses of IPv4 tunnels.
    pub tunnel_source_v4: Option<Ipv4Prefix>,
    /// Outer source addresses of IPv6 tunnels.
    pub tunnel_source_v6: Option<Ipv6Prefix>,
    pub conntrack: ConntrackConfig,
    pub stats: StatsConfig,
    pub admin: AdminConfig,
    /// Present when the file has a `[bgp]` table.
    pub bgp: Option<BgpConfig>,
    pub services: Vec<ServiceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nic: None,
            cores: None,
            xdp_mode: XdpMode::Auto,
            maglev_table_size: fwd_dataplane::maglev::DEFAULT_TABLE_SIZE,
            mtu: 1500,
            gue_port: 6080,
            answer_echo: true,
            icmp_rate_per_sec: 1000,
            tunnel_source_v4: None,
            tunnel_source_v6: None,
            conntrack: ConntrackConfig::default(),
            stats: StatsConfig::default(),
            admin: AdminConfig::default(),
            bgp: None,
            services: Vec::new(),
        }
    }
}

/// `[conntrack]`: the per-core connection tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Entries per worker, `MIN_CONNTRACK_CAPACITY..=MAX_CONNTRACK_CAPACITY`.
    pub capacity_per_core: u32,
    pub tcp_established_timeout: Duration,
    /// After FIN or RST.
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity_per_core: 1_000_000,
            tcp_established_timeout: Duration::from_secs(15 * 60),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
        }
    }
}

/// `[stats]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsConfig {
    /// How often workers' counters are gathered.
    pub interval: Duration,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { interval: Duration::from_secs(1) }
    }
}

/// `[admin]`: the operator interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Unix socket of the admin commands.
    pub socket: PathBuf,
    /// Where Prometheus metrics are served: loopback port 9779 unless configured ("off": nowhere).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("/run/fwd/admin.sock"),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
        }
    }
}

/// `[bgp]`: announcing VIPs through FRR's vtysh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub vtysh: PathBuf,
    /// vtysh's `--vty_socket`.
    pub vty_socket: Option<PathBuf>,
    /// vtysh's `-N` (FRR pathspace); an empty string in the file means none.
    pub namespace: Option<String>,
    pub extra_args: Vec<String>,
    /// How often announcements are compared with FRR's state and repaired.
    pub reconcile_interval: Duration,
    /// How long a VIP must stay healthy before it is announced again.
    pub hold_down: Duration,
    /// Longest a vtysh run may take before it is killed.
    pub vtysh_timeout: Duration,
    /// Between withdrawing a VIP and taking its backends down on shutdown.
    pub drain_time: Duration,
    /// Healthy backends a service needs for its VIP to be announced.
    pub min_healthy: u32,
    pub damping: DampingConfig,
    pub prefixes: Vec<BgpPrefixConfig>,
}

/// Flap damping of announcements, RFC 2439 style: each flap adds `penalty`, which halves every
/// `half_life`; an announcement is suppressed above `suppress` and allowed again below `reuse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DampingConfig {
    pub half_life: Duration,
    pub suppress: u32,
    pub reuse: u32,
    pub penalty: u32,
}

impl Default for DampingConfig {
    fn default() -> Self {
        DampingConfig { half_life: Duration::from_secs(60), suppress: 3000, reuse: 750, penalty: 1000 }
    }
}

/// A covering prefix announced while enough of the services inside it are healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPrefixConfig {
    pub prefix: IpPrefix,
    /// Defaults to `bgp.min_healthy`.
    pub min_healthy: u32,
}

/// One `[[services]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Label for logs and the admin socket; defaults to the key, e.g. `198.18.100.1:80/tcp`.
    pub name: String,
    pub vip: IpAddr,
    pub protocol: L4Proto,
    /// `None`: every port.
    pub port: Option<u16>,
    pub mode: ForwardMode,
    pub hash_src_port: bool,
    pub fragments: FragmentPolicy,
    /// Set exactly when `fallback` is not empty; never `L2`.
    pub fallback_mode: Option<ForwardMode>,
    /// Never empty.
    pub backends: Vec<BackendConfig>,
    pub fallback: Vec<BackendConfig>,
}

impl ServiceConfig {
    pub fn key(&self) -> ServiceKey {
        ServiceKey { vip: self.vip, proto: self.protocol, port: self.port }
    }
}

/// One backend (or fallback backend), with the service's default check merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Part of the backend's identity, and the default health-check port.
    pub port: Option<u16>,
    /// `0..=MAX_WEIGHT`; 0 is drained.
    pub weight: u32,
    /// Only on `l2` services; normally resolved from the kernel's neighbour table.
    pub mac: Option<[u8; 6]>,
    /// `None`: no check anywhere, the backend is always up.
    pub check: Option<CheckSpec>,
}

/// A health check, complete: identical specs can be deduplicated and run once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// The check's own `port`, else the backend's; never 0.
    pub port: u16,
    /// At least `MIN_CHECK_INTERVAL`.
    pub interval: Duration,
    /// Less than `interval`.
    pub timeout: Duration,
    /// Consecutive successes to go up, `1..=MAX_RISE_FALL`.
    pub rise: u32,
    /// Consecutive failures to go down, `1..=MAX_RISE_FALL`.
    pub fall: u32,
}

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP GET of `path` answers `expect_status`, with `expect_body` in the body if given.
    Http { path: String, expect_status: u16, expect_body: Option<String> },
    /// `payload` is sent (an empty datagram if `None`); with `expect`, the reply must contain it.
    Udp { payload: Option<String>, expect: Option<String> },
    /// The command exits 0. `command[0]` is the program; never empty.
    Exec { command: Vec<String> },
}

impl CheckKind {
    pub const fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
            CheckKind::Exec { .. } => "exec",
        }
    }
}

/// A valid configuration and the warnings it raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    /// Each is a full message: file, field path, what is questionable.
    pub warnings: Vec<String>,
}

/// A line and column (both from 1) in the configuration text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Why a configuration was rejected. The Display is the complete message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the configuration: {source}")]
    Read { origin: String, source: std::io::Error },
    /// Not TOML, an unknown key, or a value of the wrong type or syntax.
    #[error("{origin}{}: {}{message}", fmt_location(.location), fmt_path(.path))]
    Parse { origin: String, location: Option<Location>, path: Option<String>, message: String },
    /// Well-formed, but against a rule.
    #[error("{origin}{}: {path}: {message}", fmt_location(.location))]
    Invalid { origin: String, location: Option<Location>, path: String, message: String },
}

impl ConfigError {
    /// The field path of the offending value, e.g. `services[2].backends[1].weight`.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { path, .. } => path.as_deref(),
            ConfigError::Invalid { path, .. } => Some(path),
        }
    }

    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { location, .. } | ConfigError::Invalid { location, .. } => *location,
        }
    }
}

fn fmt_location(location: &Option<Location>) -> String {
    location.map(|l| format!(":{}:{}", l.line, l.column)).unwrap_or_default()
}

fn fmt_path(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default()
}

/// Parses and validates configuration text; `origin` (usually the file name) starts every message.
pub fn parse_config(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    let raw = deserialize(text, origin)?;
    validate::validate(raw, text, origin)
}

/// Reads, parses and validates a configuration file.
pub fn load_config(path: &Path) -> Result<Loaded, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { origin: origin.clone(), source })?;
    parse_config(&text, &origin)
}

fn deserialize(text: &str, origin: &str) -> Result<raw::RawConfig, ConfigError> {
    let parse_error = |e: toml::de::Error, path: Option<String>| ConfigError::Parse {
        origin: origin.to_string(),
        location: e.span().map(|s| location_of(text, s.start)),
        path,
        // serde names the Rust type; operators wrote TOML.
        message: e.message().trim().replace("expected i64", "expected an integer"),
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| parse_error(e, None))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = (path != ".").then_some(path);
        parse_error(e.into_inner(), path)
    })
}

/// Line and column (in characters) of a byte offset.
fn location_of(text: &str, offset: usize) -> Location {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before.get(line_start..).map_or(0, |l| l.chars().count()) + 1,
    }
}

/// Finds where a field path (`services[2].backends[1].weight`) is written, or the nearest
/// enclosing table that is; `None` when not even the first key is in the text (a default).
fn locate(text: &str, path: &str) -> Option<Location> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let root = toml::Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    let mut current = &root;
    let mut found = None;
    'walk: for part in path.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        let Some(next) = current.get_ref().get(key) else { break };
        current = next;
        found = Some(current.span().start);
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let Ok(i) = index.trim_end_matches(']').parse::<usize>() else { break 'walk };
            let Some(next) = current.get_ref().get(i) else { break 'walk };
            current = next;
            found = Some(current.span().start);
        }
    }
    found.map(|offset| location_of(text, offset))
}

impl Config {
    /// One line for operators: `ok: 3 services (2 IPv4, 1 IPv6), 9 backends, modes l2 ipip gue`.
    pub fn summary(&self) -> String {
        let services = self.services.len();
        let v4 = self.services.iter().filter(|s| s.vip.is_ipv4()).count();
        let v6 = services - v4;
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let fallback: usize = self.services.iter().map(|s| s.fallback.len()).sum();
        let modes: BTreeSet<u8> = self
            .services
            .iter()
            .flat_map(|s| std::iter::once(s.mode).chain(s.fallback_mode))
            .map(|m| match m {
                ForwardMode::L2 => 0,
                ForwardMode::Ipip => 1,
                ForwardMode::Gue => 2,
            })
            .collect();
        let plural =
            |n: usize, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
        let mut out = format!("ok: {}", plural(services, "service"));
        if services > 0 {
            out.push_str(&format!(" ({v4} IPv4, {v6} IPv6)"));
        }
        out.push_str(&format!(", {}", plural(backends, "backend")));
        if fallback > 0 {
            out.push_str(&format!(" + {fallback} fallback"));
        }
        if !modes.is_empty() {
            out.push_str(", modes");
            for m in modes {
                out.push(' ');
                out.push_str([ForwardMode::L2, ForwardMode::Ipip, ForwardMode::Gue][usize::from(m)].name());
            }
        }
        out
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/examples")
    }

    fn example_texts() -> Vec<(PathBuf, String)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
    }

    #[test]
    fn every_example_is_valid_and_warning_free() {
        let examples = example_texts();
        let names: Vec<String> =
            examples.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for wanted in ["lab.toml", "minimal.toml", "tunnels.toml"] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} missing from {names:?}");
        }
        for (path, _) in &examples {
            let loaded = load_config(path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(loaded.warnings, Vec::<String>::new(), "{}", path.display());
        }
    }

    #[test]
    fn lab_example_has_the_lab_services() {
        let config = load_config(&examples_dir().join("lab.toml")).unwrap().config;
        let keys: Vec<String> = config.services.iter().map(|s| s.key().to_string()).collect();
        assert_eq!(keys, ["198.18.100.1:80/tcp", "198.18.100.1:53/udp", "[fd00:18:100::1]:80/tcp"]);
        for s in &config.services {
            assert_eq!(s.mode, ForwardMode::L2);
            assert_eq!(s.backends.len(), 3);
            for (b, last) in s.backends.iter().zip([11, 12, 13]) {
                let want: IpAddr = if s.vip.is_ipv4() {
                    format!("198.18.2.{last}").parse().unwrap()
                } else {
                    format!("fd00:18:2::{last}").parse().unwrap()
                };
                assert_eq!(b.address, want);
                let check = b.check.as_ref().unwrap();
                assert_eq!(check.kind, CheckKind::Tcp);
                assert_eq!(check.port, s.port.unwrap());
            }
        }
        assert_eq!(config.summary(), "ok: 3 services (2 IPv4, 1 IPv6), 9 backends, modes l2");
        assert_eq!(parse_cores(config.cores.as_deref().unwrap()).unwrap(), [2, 3]);
    }

    #[test]
    fn tunnels_example_mixes_modes_families_and_fallback() {
        let config = load_config(&examples_dir().join("tunnels.toml")).unwrap().config;
        assert_eq!(
            config.summary(),
            "ok: 2 services (1 IPv4, 1 IPv6), 6 backends + 2 fallback, modes ipip gue"
        );
        let https = &config.services[0];
        assert_eq!((https.mode, https.fallback_mode), (ForwardMode::Ipip, Some(ForwardMode::Ipip)));
        assert!(https.backends.iter().any(|b| b.address.is_ipv6()));
        assert_eq!(
            https.backends[0].check.as_ref().map(|c| &c.kind),
            Some(&CheckKind::Http { path: "/healthz".into(), expect_status: 200, expect_body: None })
        );
        let game = &config.services[1];
        assert_eq!((game.port, game.hash_src_port, game.fragments), (None, false, FragmentPolicy::Drop));
        assert!(matches!(game.backends[1].check.as_ref().map(|c| &c.kind), Some(CheckKind::Exec { .. })));
        assert_eq!(game.backends[2].weight, 0);
        let bgp = config.bgp.as_ref().unwrap();
        assert_eq!(bgp.prefixes[0].min_healthy, 2);
    }

    #[test]
    fn defaults_are_filled_in() {
        let text = "[[services]]\nvip = \"198.18.100.1\"\nprotocol = \"tcp\"\nport = 80\nmode = \"l2\"\n\
                    check = { type = \"http\" }\n\
                    [[services.backends]]\naddress = \"198.18.2.11\"\nport = 8080\n";
        let loaded = parse_config(text, "defaults.toml").unwrap();
        let config = loaded.config;
        let service = config.services[0].clone();
        assert_eq!(Config { services: Vec::new(), ..config }, Config::default());
        let defaults = Config::default();
        assert_eq!(defaults.maglev_table_size, 65537);
        assert_eq!(
            (defaults.mtu, defaults.gue_port, defaults.answer_echo, defaults.icmp_rate_per_sec),
            (1500, 6080, true, 1000)
        );
        assert_eq!(defaults.xdp_mode, XdpMode::Auto);
        assert_eq!(defaults.conntrack.capacity_per_core, 1_000_000);
        assert_eq!(defaults.conntrack.tcp_established_timeout, Duration::from_secs(900));
        assert_eq!(defaults.conntrack.tcp_closing_timeout, Duration::from_secs(10));
        assert_eq!(defaults.conntrack.udp_timeout, Duration::from_secs(60));
        assert_eq!(defaults.stats.interval, Duration::from_secs(1));
        assert_eq!(defaults.admin.socket, PathBuf::from("/run/fwd/admin.sock"));
        assert_eq!(
            (defaults.admin.metrics_listen, defaults.bgp, defaults.nic, defaults.cores),
            (Some("127.0.0.1:9779".parse().unwrap()), None, None, None)
        );

        assert_eq!(service.name, "198.18.100.1:80/tcp");
        assert!(service.hash_src_port);
        assert_eq!((service.fragments, service.fallback_mode), (FragmentPolicy::Hash3Tuple, None));
        let backend = &service.backends[0];
        assert_eq!((backend.weight, backend.mac), (1, None));
        assert_eq!(
            backend.check,
            Some(CheckSpec {
                kind: CheckKind::Http { path: "/".into(), expect_status: 200, expect_body: None },
                port: 8080,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
            })
        );
    }

    #[test]
    fn a_backend_without_any_check_has_none() {
        let loaded = load_config(&examples_dir().join("minimal.toml")).unwrap();
        assert_eq!(loaded.config.services[0].backends[0].check, None);
        assert_eq!(loaded.config.summary(), "ok: 1 service (1 IPv4, 0 IPv6), 1 backend, modes l2");
    }

    #[test]
    fn backend_check_replaces_the_service_check() {
        let text = "[[services]]\nvip = \"198.18.100.1\"\nprotocol = \"udp\"\nport = 53\nmode = \"l2\"\n\
                    check = { type = \"udp\", port = 53, payload = \"q\" }\n\
                    [[services.backends]]\naddress = \"198.18.2.11\"\n\
                    [[services.backends]]\naddress = \"198.18.2.12\"\n\
                    check = { type = \"tcp\", port = 53, rise = 1 }\n";
        let service = &parse_config(text, "t").unwrap().config.services[0];
        let checks: Vec<&CheckSpec> = service.backends.iter().map(|b| b.check.as_ref().unwrap()).collect();
        assert_eq!(checks[0].kind, CheckKind::Udp { payload: Some("q".into()), expect: None });
        assert_eq!((checks[1].kind.clone(), checks[1].rise, checks[1].fall), (CheckKind::Tcp, 1, 3));
    }

    #[test]
    fn summary_of_an_empty_config() {
        assert_eq!(Config::default().summary(), "ok: 0 services, 0 backends");
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let e = load_config(Path::new("/nonexistent/fwd.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().starts_with("/nonexistent/fwd.toml: cannot read"), "{e}");
    }

    /// Every accepted configuration keeps the promises the types document.
    fn assert_invariants(config: &Config) {
        assert!(fwd_dataplane::maglev::is_prime(config.maglev_table_size));
        assert!((MIN_MTU..=MAX_MTU).contains(&config.mtu) && config.gue_port != 0);
        for s in &config.services {
            assert!(!s.backends.is_empty() && s.port != Some(0));
            assert_eq!(s.fallback_mode.is_some(), !s.fallback.is_empty());
            assert_ne!(s.fallback_mode, Some(ForwardMode::L2));
            for b in s.backends.iter().chain(&s.fallback) {
                assert!(b.weight <= MAX_WEIGHT && b.port != Some(0));
                if let Some(c) = &b.check {
                    assert!(c.timeout < c.interval && c.interval >= MIN_CHECK_INTERVAL && c.port != 0);
                    assert!((1..=MAX_RISE_FALL).contains(&c.rise) && (1..=MAX_RISE_FALL).contains(&c.fall));
                }
            }
            if s.mode == ForwardMode::L2 {
                assert!(s.backends.iter().all(|b| b.address.is_ipv4() == s.vip.is_ipv4()));
            } else {
                assert!(s.backends.iter().all(|b| b.mac.is_none()));
            }
        }
        let _ = config.summary();
    }

    /// Applies one edit to `text` at a position chosen by `at` (a fraction of its length).
    fn mutate(text: &str, at: f64, edit: u8, insert: &str) -> String {
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        let i = boundaries[((boundaries.len() - 1) as f64 * at) as usize];
        let j =
            boundaries[(boundaries.len() - 1).min(boundaries.partition_point(|&b| b <= i) + insert.len())];
        match edit % 4 {
            0 => format!("{}{insert}{}", &text[..i], &text[i..]),
            1 => format!("{}{}", &text[..i], &text[j..]),
            2 => format!("{}{insert}{}", &text[..i], &text[j..]),
            // Lines swapped or duplicated: table structure changes, values stay well-formed.
            _ => {
                let mut lines: Vec<&str> = text.lines().collect();
                let a = (lines.len() as f64 * at) as usize % lines.len().max(1);
                let b = (a + insert.len() + 1) % lines.len().max(1);
                if edit % 8 < 4 {
                    lines.swap(a, b);
                } else {
                    let line = lines[a];
                    lines.insert(b, line);
                }
                lines.join("\n")
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            if let Ok(loaded) = parse_config(&text, "fuzz.toml") {
                assert_invariants(&loaded.config);
            }
        }

        #[test]
        fn toml_shaped_text_never_panics(
            text in concat!(
                "(\\[\\[?(services|bgp|conntrack|services\\.backends)\\]\\]?\n",
                "|[a-z_]{1,12} = (\"[0-9a-f.:/]{0,12}\"|-?[0-9]{1,6}|true|\\{ *\\})\n){0,12}",
            )
        ) {
            if let Ok(loaded) = parse_config(&text, "fuzz.toml") {
                assert_invariants(&loaded.config);
            }
        }

        #[test]
        fn mutated_examples_never_panic_and_stay_consistent(
            example in 0usize..3,
            at in 0.0f64..1.0,
            edit in any::<u8>(),
            insert in prop::sample::select(vec![
                "0", "-1", "65536", "\"\"", "\"all\"", "\"l2\"", "\"gue\"", "\"fd00::1\"", "\"198.18.2.11\"",
                "[[services]]\n", "[[services.backends]]\n", "[[services.fallback]]\n", "[bgp]\n",
                "x", "=", "\n",
                "\"0s\"", "\"99999999999h\"", "1e3", "{ type = \"tcp\" }", "[", "}", "4294967296", "9216",
            ]),
        ) {
            let examples = example_texts();
            let (path, text) = &examples[example % examples.len()];
            let mutated = mutate(text, at, edit, insert);
            match parse_config(&mutated, &path.display().to_string()) {
                Ok(loaded) => assert_invariants(&loaded.config),
                Err(e) => prop_assert!(e.to_string().starts_with(&path.display().to_string())),
            }
        }
    }
}
