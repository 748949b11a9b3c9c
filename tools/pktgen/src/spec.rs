//! The traffic specification: what to send, to where, how many flows, how fast, for how long.
//!
//! It comes from command-line flags and, optionally, a TOML or JSON file with the same keys
//! (`--spec FILE`); a flag given on the command line wins over the file. [`RawSpec`] holds the
//! text as given, [`RawSpec::validate`] turns it into a [`TrafficSpec`] or says which key is
//! wrong, with the value and what is allowed.
//!
//! # Flows
//! Flow `i` (0 <= i < flows) goes to destination `i % D` (D destinations, in the order given);
//! with `k = i / D`, its source address is the `(k % A)`-th of the destination's family's source
//! range (A addresses) and its source port the `(k / A)`-th of the port range. So flows are
//! distinct 5-tuples as long as `ceil(flows / D) <= A * P`, which validation checks.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The fixed part of every payload, in bytes (see `frames::Payload`).
pub const PAYLOAD_LEN: usize = 28;
/// Ethernet frame check sequence: counted in the asked frame sizes (as in RFC 2544), never sent
/// by software.
pub const FCS_LEN: usize = 4;
/// Defaults that keep an unqualified run bounded.
pub const DEFAULT_DURATION_S: f64 = 10.0;
pub const DEFAULT_COUNT: u64 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

/// Which TCP segments to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcpFlags {
    /// Every segment a SYN: every packet looks like a new connection.
    Syn,
    /// Every segment an ACK: established-looking traffic.
    Ack,
    /// The first segment of each flow a SYN, the rest ACKs.
    Mix,
}

/// Frame sizes, including the 4-byte FCS (64 is the smallest Ethernet frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameSizes {
    Fixed(usize),
    /// The simple IMIX: 7 frames of 64 bytes, 4 of 594 and 1 of 1518, in every 12.
    Imix,
}

impl FrameSizes {
    /// The size of the `n`-th packet (FCS included).
    #[inline]
    pub fn nth(&self, n: u64) -> usize {
        match self {
            FrameSizes::Fixed(size) => *size,
            FrameSizes::Imix => IMIX_PATTERN[(n % IMIX_PATTERN.len() as u64) as usize],
        }
    }

    /// The size most packets have: templates are built at it so that they need no length patch.
    pub fn primary(&self) -> usize {
        match self {
            FrameSizes::Fixed(size) => *size,
            FrameSizes::Imix => 64,
        }
    }
}

impl fmt::Display for FrameSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameSizes::Fixed(size) => write!(f, "{size}"),
            FrameSizes::Imix => f.write_str("imix"),
        }
    }
}

/// 7:4:1 of 64, 594 and 1518 bytes, spread over the cycle rather than in runs.
const IMIX_PATTERN: [usize; 12] = [64, 594, 64, 64, 594, 64, 1518, 64, 594, 64, 594, 64];

/// A contiguous range of addresses of one family: `first` and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    pub first: IpAddr,
    pub count: u64,
}

impl AddrRange {
    /// The `index`-th address (`index < count`).
    pub fn nth(&self, index: u64) -> IpAddr {
        match self.first {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(index as u32))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(index)))),
        }
    }

    /// `a.b.c.d`, `a.b.c.d/len` (every address of the prefix) or `first-last`.
    pub fn parse(text: &str) -> Result<AddrRange, String> {
        let text = text.trim();
        if let Some((first, last)) = text.split_once('-') {
            let first: IpAddr = first.trim().parse().map_err(|_| format!("`{first}` is not an address"))?;
            let last: IpAddr = last.trim().parse().map_err(|_| format!("`{last}` is not an address"))?;
            let count = match (first, last) {
                (IpAddr::V4(a), IpAddr::V4(b)) if u32::from(b) >= u32::from(a) => {
                    u64::from(u32::from(b) - u32::from(a)) + 1
                }
                (IpAddr::V6(a), IpAddr::V6(b)) if u128::from(b) >= u128::from(a) => {
                    u64::try_from(u128::from(b) - u128::from(a)).unwrap_or(u64::MAX - 1) + 1
                }
                _ => return Err(format!("`{text}`: the range must go up, within one address family")),
            };
            return Ok(AddrRange { first, count });
        }
        if let Some((address, len)) = text.split_once('/') {
            let address: IpAddr = address.parse().map_err(|_| format!("`{address}` is not an address"))?;
            let bits = if address.is_ipv4() { 32 } else { 128 };
            let len: u32 = len
                .parse()
                .ok()
                .filter(|&l| l <= bits)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0 to {bits}"))?;
            let host_bits = bits - len;
            let count = if host_bits >= 63 { 1u64 << 63 } else { 1u64 << host_bits };
            let first = match address {
                IpAddr::V4(a) => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(host_bits).unwrap_or(0)))
                }
                IpAddr::V6(a) => {
                    IpAddr::V6(Ipv6Addr::from(u128::from(a) & u128::MAX.checked_shl(host_bits).unwrap_or(0)))
                }
            };
            return Ok(AddrRange { first, count });
        }
        let first: IpAddr =
            text.parse().map_err(|_| format!("`{text}` is not an address, prefix or range"))?;
        Ok(AddrRange { first, count: 1 })
    }
}

/// A range of ports `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn count(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    pub fn parse(text: &str) -> Result<PortRange, String> {
        let port = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("`{t}` is not a port (0-65535)"));
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(text)?, port(text)?),
        };
        if last < first {
            return Err(format!("`{text}`: the range must go up"));
        }
        Ok(PortRange { first, last })
    }
}

pub type Mac = [u8; 6];

pub fn parse_mac(text: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("`{text}` is not a MAC address (like 02:00:00:00:00:01)"));
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("`{text}` is not a MAC address (like 02:00:00:00:00:01)"))?;
    }
    Ok(mac)
}

pub fn mac_text(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The specification as given: every key optional, all text. Also the schema of `--spec FILE`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// `198.18.100.1:80`, `[fd00:18:100::1]:443`.
    pub destinations: Option<Vec<String>>,
    pub sources_v4: Option<String>,
    pub sources_v6: Option<String>,
    pub source_ports: Option<String>,
    pub flows: Option<u64>,
    pub protocol: Option<Protocol>,
    pub tcp_flags: Option<TcpFlags>,
    /// A number (FCS included) or "imix".
    pub frame_size: Option<String>,
    /// Packets per second over all queues; 0 or absent: as fast as possible.
    pub rate: Option<u64>,
    /// Seconds; 0: no time limit (then `count` must be set).
    pub duration: Option<f64>,
    /// Packets over all queues; 0: no count limit (then `duration` must be set).
    pub count: Option<u64>,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    pub ttl: Option<u8>,
}

/// A validated traffic specification.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficSpec {
    pub destinations: Vec<SocketAddr>,
    pub sources_v4: AddrRange,
    pub sources_v6: AddrRange,
    pub source_ports: PortRange,
    pub flows: u64,
    pub protocol: Protocol,
    pub tcp_flags: TcpFlags,
    pub frame_sizes: FrameSizes,
    /// `None`: unlimited.
    pub rate_pps: Option<u64>,
    /// `None`: no time limit.
    pub duration_s: Option<f64>,
    /// `None`: no count limit.
    pub count: Option<u64>,
    /// `None`: the interface's own.
    pub src_mac: Option<Mac>,
    /// `None`: resolved from the neighbour table.
    pub dst_mac: Option<Mac>,
    pub ttl: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{key} = {value:?}: {allowed}")]
    Invalid { key: &'static str, value: String, allowed: String },
    #[error("cannot read the spec file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("spec file {path}: {message}")]
    Parse { path: String, message: String },
}

fn invalid(key: &'static str, value: impl fmt::Display, allowed: impl Into<String>) -> SpecError {
    SpecError::Invalid { key, value: value.to_string(), allowed: allowed.into() }
}

impl RawSpec {
    /// Reads a TOML file, or JSON if the name ends in `.json`.
    pub fn from_file(path: &Path) -> Result<RawSpec, SpecError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Read { path: shown.clone(), source })?;
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| SpecError::Parse { path: shown, message: e.to_string() })
        } else {
            toml::from_str(&text).map_err(|e| SpecError::Parse { path: shown, message: e.to_string() })
        }
    }

    /// `self`, with every key `over` sets replaced by `over`'s value.
    pub fn overridden_by(self, over: RawSpec) -> RawSpec {
        RawSpec {
            destinations: over.destinations.or(self.destinations),
            sources_v4: over.sources_v4.or(self.sources_v4),
            sources_v6: over.sources_v6.or(self.sources_v6),
            source_ports: over.source_ports.or(self.source_ports),
            flows: over.flows.or(self.flows),
            protocol: over.protocol.or(self.protocol),
            tcp_flags: over.tcp_flags.or(self.tcp_flags),
            frame_size: over.frame_size.or(self.frame_size),
            rate: over.rate.or(self.rate),
            duration: over.duration.or(self.duration),
            count: over.count.or(self.count),
            src_mac: over.src_mac.or(self.src_mac),
            dst_mac: over.dst_mac.or(self.dst_mac),
            ttl: over.ttl.or(self.ttl),
        }
    }

    pub fn validate(&self) -> Result<TrafficSpec, SpecError> {
        let destinations: Vec<SocketAddr> = match &self.destinations {
            Some(list) if !list.is_empty() => list
                .iter()
                .map(|d| {
                    d.trim().parse::<SocketAddr>().map_err(|_| {
                        invalid("destinations", d, "an address and port: 198.18.100.1:80 or [fd00::1]:80")
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(invalid(
                "destinations",
                "(none)",
                "give at least one VIP and port (--dst 198.18.100.1:80): the generator sends only where told",
            )),
        };
        let range = |key: &'static str, text: &Option<String>, default: &str, v4: bool| {
            let text = text.as_deref().unwrap_or(default);
            let range = AddrRange::parse(text).map_err(|e| invalid(key, text, e))?;
            if range.first.is_ipv4() != v4 {
                return Err(invalid(
                    key,
                    text,
                    format!("an IPv{} address, prefix or range", if v4 { 4 } else { 6 }),
                ));
            }
            Ok(range)
        };
        let sources_v4 = range("sources_v4", &self.sources_v4, "198.18.1.0/24", true)?;
        let sources_v6 = range("sources_v6", &self.sources_v6, "fd00:18:1::/112", false)?;
        let ports_text = self.source_ports.as_deref().unwrap_or("1024-65535");
        let source_ports =
            PortRange::parse(ports_text).map_err(|e| invalid("source_ports", ports_text, e))?;
        let flows = self.flows.unwrap_or(1);
        if flows == 0 {
            return Err(invalid("flows", flows, "at least 1"));
        }
        const MAX_FLOWS: u64 = 1 << 24;
        if flows > MAX_FLOWS {
            return Err(invalid(
                "flows",
                flows,
                format!("at most {MAX_FLOWS} (one frame template per flow)"),
            ));
        }
        let per_destination = flows.div_ceil(destinations.len() as u64);
        for (family, sources, used) in [
            ("IPv4", &sources_v4, destinations.iter().any(|d| d.is_ipv4())),
            ("IPv6", &sources_v6, destinations.iter().any(|d| d.is_ipv6())),
        ] {
            let available = sources.count.saturating_mul(source_ports.count());
            if used && per_destination > available {
                return Err(invalid(
                    "flows",
                    flows,
                    format!(
                        "at most {} with {} destination(s): the {family} sources give {} addresses x {} ports = \
                         {available} per destination; widen sources_v4/sources_v6 or source_ports",
                        available.saturating_mul(destinations.len() as u64),
                        destinations.len(),
                        sources.count,
                        source_ports.count()
                    ),
                ));
            }
        }
        let size_text = self.frame_size.as_deref().unwrap_or("64");
        let frame_sizes = if size_text.eq_ignore_ascii_case("imix") {
            FrameSizes::Imix
        } else {
            let size: usize = size_text
                .trim()
                .parse()
                .ok()
                .filter(|s| (64..=2048 - 256 + FCS_LEN).contains(s))
                .ok_or_else(|| {
                    invalid("frame_size", size_text, "64 to 1796 bytes (FCS included), or imix")
                })?;
            FrameSizes::Fixed(size)
        };
        let duration_s = match self.duration {
            None => Some(DEFAULT_DURATION_S),
            Some(0.0) => None,
            Some(d) if d.is_finite() && d > 0.0 => Some(d),
            Some(d) => return Err(invalid("duration", d, "seconds, > 0 (0: no time limit)")),
        };
        let count = match self.count {
            None => Some(DEFAULT_COUNT),
            Some(0) => None,
            Some(c) => Some(c),
        };
        if duration_s.is_none() && count.is_none() {
            return Err(invalid("duration", 0, "a duration or a packet count is needed: both cannot be 0"));
        }
        let mac = |key: &'static str, text: &Option<String>| {
            text.as_deref().map(|t| parse_mac(t).map_err(|e| invalid(key, t, e))).transpose()
        };
        let ttl = self.ttl.unwrap_or(64);
        if ttl == 0 {
            return Err(invalid("ttl", ttl, "1 to 255"));
        }
        Ok(TrafficSpec {
            destinations,
            sources_v4,
            sources_v6,
            source_ports,
            flows,
            protocol: self.protocol.unwrap_or(Protocol::Udp),
            tcp_flags: self.tcp_flags.unwrap_or(TcpFlags::Syn),
            frame_sizes,
            rate_pps: self.rate.filter(|&r| r > 0),
            duration_s,
            count,
            src_mac: mac("src_mac", &self.src_mac)?,
            dst_mac: mac("dst_mac", &self.dst_mac)?,
            ttl,
        })
    }
}

/// One flow's addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl TrafficSpec {
    /// Flow `index` (see the module documentation for the mapping).
    pub fn flow(&self, index: u64) -> Flow {
        let destinations = self.destinations.len() as u64;
        let destination = self.destinations[(index % destinations) as usize];
        let k = index / destinations;
        let sources = if destination.is_ipv4() { &self.sources_v4 } else { &self.sources_v6 };
        let src = sources.nth(k % sources.count);
        let port_index = (k / sources.count) % self.source_ports.count();
        Flow {
            src,
            dst: destination.ip(),
            src_port: self.source_ports.first + port_index as u16,
            dst_port: destination.port(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn raw(destinations: &[&str]) -> RawSpec {
        RawSpec {
            destinations: Some(destinations.iter().map(|s| s.to_string()).collect()),
            ..RawSpec::default()
        }
    }

    #[test]
    fn ranges_parse_prefixes_spans_and_single_addresses() {
        let cases = [
            ("198.18.1.0/24", "198.18.1.0", 256),
            ("198.18.1.77/24", "198.18.1.0", 256),
            ("198.18.1.1-198.18.1.20", "198.18.1.1", 20),
            ("198.18.1.9", "198.18.1.9", 1),
            ("fd00:18:1::/112", "fd00:18:1::", 65536),
            ("fd00::1-fd00::3", "fd00::1", 3),
        ];
        for (text, first, count) in cases {
            let range = AddrRange::parse(text).unwrap();
            assert_eq!((range.first, range.count), (first.parse().unwrap(), count), "{text}");
        }
        for bad in ["198.18.1.0/33", "198.18.1.9-198.18.1.1", "198.18.1.1-fd00::1", "nope"] {
            assert!(AddrRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flows_are_distinct_five_tuples_as_many_as_asked() {
        let mut spec = raw(&["198.18.100.1:80", "[fd00:18:100::1]:80", "198.18.100.2:53"]);
        spec.flows = Some(100_000);
        spec.sources_v4 = Some("198.18.1.0/28".into());
        spec.sources_v6 = Some("fd00:18:1::/124".into());
        spec.source_ports = Some("10000-19999".into());
        let spec = spec.validate().unwrap();
        let flows: HashSet<Flow> = (0..spec.flows).map(|i| spec.flow(i)).collect();
        assert_eq!(flows.len(), 100_000);
        for f in &flows {
            assert_eq!(f.src.is_ipv4(), f.dst.is_ipv4(), "{f:?}");
            assert!(spec.destinations.contains(&SocketAddr::new(f.dst, f.dst_port)));
            assert!((10000..=19999).contains(&f.src_port));
        }
    }

    #[test]
    fn too_many_flows_for_the_ranges_is_refused_with_the_arithmetic() {
        let mut spec = raw(&["198.18.100.1:80"]);
        spec.sources_v4 = Some("198.18.1.0/30".into());
        spec.source_ports = Some("1000-1009".into());
        spec.flows = Some(41);
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("at most 40"), "{err}");
        assert!(err.contains("4 addresses x 10 ports"), "{err}");
        spec.flows = Some(40);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn defaults_are_bounded_and_required_keys_are_named() {
        let spec = raw(&["198.18.100.1:80"]).validate().unwrap();
        assert_eq!((spec.duration_s, spec.count), (Some(DEFAULT_DURATION_S), Some(DEFAULT_COUNT)));
        assert_eq!((spec.flows, spec.protocol, spec.rate_pps), (1, Protocol::Udp, None));
        let err = RawSpec::default().validate().unwrap_err().to_string();
        assert!(err.starts_with("destinations"), "{err}");
        let mut unbounded = raw(&["198.18.100.1:80"]);
        unbounded.duration = Some(0.0);
        unbounded.count = Some(0);
        assert!(unbounded.validate().is_err());
        let mut size = raw(&["198.18.100.1:80"]);
        size.frame_size = Some("9000".into());
        assert_eq!(
            size.validate().unwrap_err().to_string(),
            "frame_size = \"9000\": 64 to 1796 bytes (FCS included), or imix"
        );
    }

    #[test]
    fn a_file_is_overridden_by_flags() {
        let file: RawSpec = toml::from_str(
            "destinations = [\"198.18.100.1:80\"]\nflows = 10\nrate = 1000\nframe_size = \"imix\"\n",
        )
        .unwrap();
        let flags = RawSpec { flows: Some(20), ..RawSpec::default() };
        let spec = file.overridden_by(flags).validate().unwrap();
        assert_eq!((spec.flows, spec.rate_pps, spec.frame_sizes), (20, Some(1000), FrameSizes::Imix));
        let json: RawSpec =
            serde_json::from_str(r#"{"destinations": ["[fd00::1]:53"], "protocol": "tcp"}"#).unwrap();
        assert_eq!(json.validate().unwrap().protocol, Protocol::Tcp);
        assert!(toml::from_str::<RawSpec>("flowz = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn imix_is_seven_four_one() {
        let sizes: Vec<usize> = (0..12).map(|n| FrameSizes::Imix.nth(n)).collect();
        assert_eq!(sizes.iter().filter(|&&s| s == 64).count(), 7);
        assert_eq!(sizes.iter().filter(|&&s| s == 594).count(), 4);
        assert_eq!(sizes.iter().filter(|&&s| s == 1518).count(), 1);
    }
}
