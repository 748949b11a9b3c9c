//! Parsers for the configuration's small text values: durations ("500ms", "2s", "1m30s"), core
//! lists ("2-7", "0,2,4"), IP prefixes ("198.18.0.0/28") and MAC addresses.
//!
//! Each error names the rejected text and the accepted forms, because operators read these
//! messages on their own, often long after writing the file.

use fwd_dataplane::snapshot::SourceRange;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// Highest core number `parse_cores` accepts. Linux builds for at most 8192 CPUs; refusing larger
/// numbers keeps a typo such as "0-4000000000" from allocating a huge list.
pub const MAX_CORE: usize = 8191;

/// A value that could not be parsed. The Display names the text and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "invalid duration {0:?}: expected whole numbers each followed by a unit ms, s, m or h, \
         e.g. \"500ms\", \"2s\", \"1m30s\""
    )]
    Duration(String),
    #[error(
        "invalid core list {text:?}: {reason}; expected core numbers 0..={MAX_CORE} and ranges \
         separated by commas, e.g. \"2-7\" or \"0,2,4\""
    )]
    Cores { text: String, reason: String },
    #[error(
        "invalid IPv4 prefix {text:?}: {reason}; expected ADDRESS/LENGTH with a length 0..=32 and \
         no bits set after the length, e.g. \"198.18.0.0/28\""
    )]
    Ipv4Prefix { text: String, reason: String },
    #[error(
        "invalid IPv6 prefix {text:?}: {reason}; expected ADDRESS/LENGTH with a length 0..=128 and \
         no bits set after the length, e.g. \"fd00:18::/124\""
    )]
    Ipv6Prefix { text: String, reason: String },
    #[error(
        "invalid IP prefix {text:?}: {reason}; expected an IPv4 or IPv6 ADDRESS/LENGTH with no bits \
         set after the length, e.g. \"198.18.100.0/24\" or \"fd00:18:100::/64\""
    )]
    IpPrefix { text: String, reason: String },
    #[error("invalid IP address {0:?}: expected IPv4 like \"198.18.0.1\" or IPv6 like \"fd00::1\"")]
    IpAddr(String),
    #[error(
        "invalid socket address {0:?}: expected ADDRESS:PORT like \"127.0.0.1:9779\" or \
         \"[::1]:9779\""
    )]
    SocketAddr(String),
    #[error(
        "invalid MAC address {text:?}: {reason}; expected a unicast MAC as six two-digit hex bytes \
         separated by colons, e.g. \"02:00:00:00:01:0a\""
    )]
    Mac { text: String, reason: String },
}

/// Parses a duration: one or more whole numbers, each with a unit `ms`, `s`, `m` or `h`
/// ("500ms", "2s", "1m", "1m30s"). Surrounding whitespace is not accepted.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration(text.to_string());
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = after;
    }
    Ok(total)
}

/// Formats a duration the way the configuration writes them ("1m30s", "500ms", "0s").
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let mut out = String::new();
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    let ms = d.subsec_millis();
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    if out.is_empty() {
        // Below a millisecond: only reachable from code, never from a parsed file.
        out = format!("{d:?}");
    }
    out
}

/// Parses a core list: numbers and inclusive ranges separated by commas ("2-7", "0,2,4",
/// "0-1,4-5"). Returns the cores in the order written; a core listed twice is an error.
pub fn parse_cores(text: &str) -> Result<Vec<usize>, ValueError> {
    let bad = |reason: String| ValueError::Cores { text: text.to_string(), reason };
    let number = |s: &str| -> Result<usize, ValueError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{s:?} is not a core number")));
        }
        match s.parse::<usize>() {
            Ok(n) if n <= MAX_CORE => Ok(n),
            _ => Err(bad(format!("core {s} is above {MAX_CORE}"))),
        }
    };
    if text.trim().is_empty() {
        return Err(bad("no cores given".to_string()));
    }
    let mut cores = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad(format!("range {}-{} runs backwards", first, last)));
        }
        for core in first..=last {
            if !seen.insert(core) {
                return Err(bad(format!("core {core} is listed twice")));
            }
            cores.push(core);
        }
    }
    Ok(cores)
}

/// An IPv4 prefix with no bits set after its length, e.g. `198.18.0.0/28`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

/// An IPv6 prefix with no bits set after its length, e.g. `fd00:18::/124`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

/// A prefix of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpPrefix {
    V4(Ipv4Prefix),
    V6(Ipv6Prefix),
}

/// Splits "ADDRESS/LENGTH" and checks the length and the host bits; `bits` is the family's width.
fn split_prefix<A: FromStr>(text: &str, bits: u8, to_u128: impl Fn(&A) -> u128) -> Result<(A, u8), String> {
    let (addr, len) = text.split_once('/').ok_or("no /LENGTH")?;
    let addr: A = addr.parse().map_err(|_| format!("{addr:?} is not an address of this family"))?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("length {len:?} is not a number"));
    }
    let len: u8 = len.parse().ok().filter(|&l| l <= bits).ok_or(format!("length {len} is above {bits}"))?;
    let host_bits = u32::from(bits - len);
    let host_mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    if to_u128(&addr) & host_mask != 0 {
        return Err(format!("bits are set after /{len}"));
    }
    Ok((addr, len))
}

impl FromStr for Ipv4Prefix {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        split_prefix(text, 32, |a: &Ipv4Addr| u128::from(u32::from(*a)))
            .map(|(addr, len)| Ipv4Prefix { addr, len })
            .map_err(|reason| ValueError::Ipv4Prefix { text: text.to_string(), reason })
    }
}

impl FromStr for Ipv6Prefix {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        split_prefix(text, 128, |a: &Ipv6Addr| u128::from(*a))
            .map(|(addr, len)| Ipv6Prefix { addr, len })
            .map_err(|reason| ValueError::Ipv6Prefix { text: text.to_string(), reason })
    }
}

impl FromStr for IpPrefix {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        let reason = match (text.parse::<Ipv4Prefix>(), text.parse::<Ipv6Prefix>()) {
            (Ok(p), _) => return Ok(IpPrefix::V4(p)),
            (_, Ok(p)) => return Ok(IpPrefix::V6(p)),
            (Err(ValueError::Ipv4Prefix { reason, .. }), _)
                if text.split('/').next().is_some_and(|a| a.contains('.')) =>
            {
                reason
            }
            (_, Err(ValueError::Ipv6Prefix { reason, .. })) => reason,
            (Err(e), _) => e.to_string(),
        };
        Err(ValueError::IpPrefix { text: text.to_string(), reason })
    }
}

impl Ipv4Prefix {
    /// Number of addresses, saturating at `u32::MAX` (only /0 saturates).
    pub fn address_count(&self) -> u32 {
        1u64.checked_shl(32 - u32::from(self.len)).map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.addr)
    }

    /// The data plane's form: flows pick `addr + (hash mod count)`.
    pub fn source_range(&self) -> SourceRange<Ipv4Addr> {
        SourceRange { base: self.addr, count: self.address_count() }
    }
}

impl Ipv6Prefix {
    /// Number of addresses, saturating at `u32::MAX`: a data-plane source range spreads over at
    /// most that many, which is far more than receive-side hashing needs.
    pub fn address_count(&self) -> u32 {
        1u128
            .checked_shl(128 - u32::from(self.len))
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
        u128::from(addr) & mask == u128::from(self.addr)
    }

    /// The data plane's form: flows pick `addr + (hash mod count)`.
    pub fn source_range(&self) -> SourceRange<Ipv6Addr> {
        SourceRange { base: self.addr, count: self.address_count() }
    }
}

impl IpPrefix {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (IpPrefix::V4(p), IpAddr::V4(a)) => p.contains(a),
            (IpPrefix::V6(p), IpAddr::V6(a)) => p.contains(a),
            _ => false,
        }
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpPrefix::V4(p) => p.fmt(f),
            IpPrefix::V6(p) => p.fmt(f),
        }
    }
}

/// Parses a unicast MAC address written as six colon-separated two-digit hex bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], ValueError> {
    let bad = |reason: &str| ValueError::Mac { text: text.to_string(), reason: reason.to_string() };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(|| bad("fewer than six bytes"))?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("each byte is two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("each byte is two hex digits"))?;
    }
    if parts.next().is_some() {
        return Err(bad("more than six bytes"));
    }
    if mac[0] & 1 != 0 {
        return Err(bad("a multicast address cannot be a backend"));
    }
    if mac == [0; 6] {
        return Err(bad("the all-zero address cannot be a backend"));
    }
    Ok(mac)
}

/// Formats a MAC the way the configuration writes it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, g] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
}

/// An address with an optional port as operators write it: `198.18.2.11:80`, `[fd00::1]:80`, or
/// the bare address when there is no port.
pub fn host_port(addr: std::net::IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (std::net::IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, None) => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_with_units_and_compounds() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1s250ms", Duration::from_millis(1250)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_reject_missing_units_and_garbage() {
        for text in
            ["", "2", "s", "2x", "2 s", " 2s", "2s ", "-1s", "1.5s", "2S", "ms", "99999999999999999999s"]
        {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err, ValueError::Duration(text.to_string()));
            let msg = err.to_string();
            assert!(msg.contains(&format!("{text:?}")) && msg.contains("ms, s, m or h"), "{msg}");
        }
        assert!(parse_duration(&format!("{}h", u64::MAX / 60)).is_err());
    }

    #[test]
    fn durations_format_back_to_config_syntax() {
        for text in ["500ms", "2s", "1m", "1h", "1m30s", "1h1m1s1ms", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn cores_parse_lists_and_ranges() {
        assert_eq!(parse_cores("2-7").unwrap(), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(parse_cores("0,2,4").unwrap(), vec![0, 2, 4]);
        assert_eq!(parse_cores("0-1,4-5").unwrap(), vec![0, 1, 4, 5]);
        assert_eq!(parse_cores("3").unwrap(), vec![3]);
        assert_eq!(parse_cores("5, 1").unwrap(), vec![5, 1]);
        assert_eq!(parse_cores("4-4").unwrap(), vec![4]);
    }

    #[test]
    fn cores_reject_bad_lists() {
        let cases = [
            ("", "no cores"),
            ("7-2", "runs backwards"),
            ("1,1", "listed twice"),
            ("0-3,2", "listed twice"),
            ("a", "not a core number"),
            ("1,", "not a core number"),
            ("-1", "not a core number"),
            ("1-2-3", "not a core number"),
            ("0-4000000000", "above 8191"),
            ("99999999999999999999999", "above 8191"),
        ];
        for (text, reason) in cases {
            let msg = parse_cores(text).unwrap_err().to_string();
            assert!(msg.contains(reason), "{text:?}: {msg}");
            assert!(msg.contains(&format!("{text:?}")) && msg.contains("\"2-7\""), "{msg}");
        }
    }

    #[test]
    fn prefixes_parse_and_reject_host_bits() {
        let p: Ipv4Prefix = "198.18.0.0/28".parse().unwrap();
        assert_eq!((p.addr, p.len, p.address_count()), (Ipv4Addr::new(198, 18, 0, 0), 28, 16));
        assert!(p.contains(Ipv4Addr::new(198, 18, 0, 15)) && !p.contains(Ipv4Addr::new(198, 18, 0, 16)));
        let p: Ipv6Prefix = "fd00:18::/124".parse().unwrap();
        assert_eq!((p.len, p.address_count()), (124, 16));
        assert_eq!(p.to_string(), "fd00:18::/124");
        assert_eq!("fd00::/64".parse::<Ipv6Prefix>().unwrap().address_count(), u32::MAX);
        assert_eq!("0.0.0.0/0".parse::<Ipv4Prefix>().unwrap().address_count(), u32::MAX);
        assert_eq!("198.18.0.1/32".parse::<Ipv4Prefix>().unwrap().address_count(), 1);
        assert!("::/0".parse::<Ipv6Prefix>().unwrap().contains("fd00::1".parse().unwrap()));

        for (text, reason) in [
            ("198.18.0.1/28", "bits are set after /28"),
            ("198.18.0.0", "no /LENGTH"),
            ("198.18.0.0/33", "above 32"),
            ("198.18.0.0/", "not a number"),
            ("198.18.0/24", "not an address"),
            ("fd00::/64", "not an address"),
        ] {
            let msg = text.parse::<Ipv4Prefix>().unwrap_err().to_string();
            assert!(msg.contains(reason) && msg.contains(&format!("{text:?}")), "{msg}");
        }
        let msg = "fd00:18::1/124".parse::<Ipv6Prefix>().unwrap_err().to_string();
        assert!(msg.contains("bits are set after /124") && msg.contains("\"fd00:18::/124\""), "{msg}");

        assert!(matches!("198.18.100.0/24".parse::<IpPrefix>(), Ok(IpPrefix::V4(_))));
        assert!(matches!("fd00:18:100::/64".parse::<IpPrefix>(), Ok(IpPrefix::V6(_))));
        let msg = "198.18.100.1/24".parse::<IpPrefix>().unwrap_err().to_string();
        assert!(msg.contains("bits are set after /24"), "{msg}");
        let msg = "fd00::1/64".parse::<IpPrefix>().unwrap_err().to_string();
        assert!(msg.contains("bits are set after /64"), "{msg}");
    }

    #[test]
    fn macs_parse_unicast_only() {
        assert_eq!(parse_mac("02:00:00:00:01:0a").unwrap(), [2, 0, 0, 0, 1, 0x0a]);
        assert_eq!(format_mac(&[2, 0, 0, 0, 1, 0x0a]), "02:00:00:00:01:0a");
        for (text, reason) in [
            ("02:00:00:00:01", "fewer than six"),
            ("02:00:00:00:01:0a:0b", "more than six"),
            ("02-00-00-00-01-0a", "two hex digits"),
            ("2:0:0:0:1:a", "two hex digits"),
            ("01:00:5e:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "all-zero"),
        ] {
            let msg = parse_mac(text).unwrap_err().to_string();
            assert!(msg.contains(reason) && msg.contains(&format!("{text:?}")), "{msg}");
        }
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(text in ".{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn durations_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn core_parser_never_panics(text in "[0-9,\\- ]{0,24}") {
            if let Ok(cores) = parse_cores(&text) {
                prop_assert!(cores.iter().all(|&c| c <= MAX_CORE));
            }
        }

        #[test]
        fn prefix_parsers_never_panic(text in "[0-9a-f:./]{0,48}") {
            let _ = text.parse::<IpPrefix>();
        }
    }
}
