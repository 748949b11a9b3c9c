//! The file as written: serde structures that mirror the TOML, with every key optional so that
//! validation can tell "absent" from "given" and fill in defaults.
//!
//! Numbers are read as `i64` (TOML's integer) and range-checked during validation, so a value
//! out of range gets a message with the allowed range instead of serde's "expected u16". Text
//! values with a syntax of their own (durations, addresses, prefixes, MACs) are parsed here, so
//! `serde_path_to_error` names the field of a malformed one.

use super::values::{parse_duration, parse_mac, IpPrefix, Ipv4Prefix, Ipv6Prefix, ValueError};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub nic: Option<String>,
    pub cores: Option<String>,
    pub xdp_mode: Option<RawXdpMode>,
    pub maglev_table_size: Option<i64>,
    pub mtu: Option<i64>,
    pub gue_port: Option<i64>,
    pub answer_echo: Option<bool>,
    pub icmp_rate_per_sec: Option<i64>,
    pub tunnel_source_v4: Option<Text<Ipv4Prefix>>,
    pub tunnel_source_v6: Option<Text<Ipv6Prefix>>,
    pub conntrack: Option<RawConntrack>,
    pub stats: Option<RawStats>,
    pub admin: Option<RawAdmin>,
    pub bgp: Option<RawBgp>,
    #[serde(default)]
    pub services: Vec<RawService>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawXdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConntrack {
    pub capacity_per_core: Option<i64>,
    pub tcp_established_timeout: Option<Text<Duration>>,
    pub tcp_closing_timeout: Option<Text<Duration>>,
    pub udp_timeout: Option<Text<Duration>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    pub interval: Option<Text<Duration>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub socket: Option<String>,
    pub metrics_listen: Option<Text<MetricsListen>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub vtysh: Option<String>,
    pub vty_socket: Option<String>,
    pub namespace: Option<String>,
    pub extra_args: Option<Vec<String>>,
    pub reconcile_interval: Option<Text<Duration>>,
    pub hold_down: Option<Text<Duration>>,
    pub vtysh_timeout: Option<Text<Duration>>,
    pub drain_time: Option<Text<Duration>>,
    pub min_healthy: Option<i64>,
    pub damping: Option<RawDamping>,
    #[serde(default)]
    pub prefixes: Vec<RawBgpPrefix>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDamping {
    pub half_life: Option<Text<Duration>>,
    pub suppress: Option<i64>,
    pub reuse: Option<i64>,
    pub penalty: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgpPrefix {
    pub prefix: Text<IpPrefix>,
    pub min_healthy: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Option<String>,
    pub vip: Text<IpAddr>,
    pub protocol: RawProtocol,
    pub port: PortSpec,
    pub mode: RawMode,
    pub hash_src_port: Option<bool>,
    pub fragments: Option<RawFragments>,
    pub check: Option<RawCheck>,
    pub fallback_mode: Option<RawMode>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub fallback: Vec<RawBackend>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawProtocol {
    Tcp,
    Udp,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawMode {
    L2,
    Ipip,
    Gue,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawFragments {
    Hash,
    Drop,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Text<IpAddr>,
    pub port: Option<i64>,
    pub weight: Option<i64>,
    pub mac: Option<Text<Mac>>,
    pub check: Option<RawCheck>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(rename = "type")]
    pub kind: RawCheckType,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub expect_status: Option<i64>,
    pub expect_body: Option<String>,
    pub payload: Option<String>,
    pub expect: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Option<Text<Duration>>,
    pub timeout: Option<Text<Duration>>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawCheckType {
    Tcp,
    Http,
    Udp,
    Exec,
}

/// A service port: a number (range-checked in validation) or the string "all".
#[derive(Debug, Clone, Copy)]
pub(super) enum PortSpec {
    Number(i64),
    All,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port 1..=65535 or the string \"all\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                if v == "all" {
                    Ok(PortSpec::All)
                } else {
                    Err(E::custom(format!(
                        "invalid port {v:?}: expected a port 1..=65535 or the string \"all\""
                    )))
                }
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// A MAC address as written in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mac(pub [u8; 6]);

/// A value written as a string with a syntax of its own.
pub(super) trait TextValue: Sized {
    /// What the string should look like, for serde's "invalid type" messages.
    const EXPECTED: &'static str;
    fn parse_text(text: &str) -> Result<Self, ValueError>;
}

impl TextValue for Duration {
    const EXPECTED: &'static str = "a duration string such as \"500ms\", \"2s\" or \"1m\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        parse_duration(text)
    }
}

impl TextValue for IpAddr {
    const EXPECTED: &'static str = "an IP address string such as \"198.18.0.1\" or \"fd00::1\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        text.parse().map_err(|_| ValueError::IpAddr(text.to_string()))
    }
}

impl TextValue for SocketAddr {
    const EXPECTED: &'static str = "a socket address string such as \"127.0.0.1:9779\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        text.parse().map_err(|_| ValueError::SocketAddr(text.to_string()))
    }
}

/// `admin.metrics_listen`: an address, or "off" for no metrics endpoint.
#[derive(Debug)]
pub(super) struct MetricsListen(pub Option<SocketAddr>);

impl TextValue for MetricsListen {
    const EXPECTED: &'static str = "a socket address string such as \"127.0.0.1:9779\", or \"off\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        if text == "off" {
            return Ok(MetricsListen(None));
        }
        SocketAddr::parse_text(text).map(|a| MetricsListen(Some(a)))
    }
}

impl TextValue for Ipv4Prefix {
    const EXPECTED: &'static str = "an IPv4 prefix string such as \"198.18.0.0/28\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl TextValue for Ipv6Prefix {
    const EXPECTED: &'static str = "an IPv6 prefix string such as \"fd00:18::/124\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl TextValue for IpPrefix {
    const EXPECTED: &'static str = "a prefix string such as \"198.18.100.0/24\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl TextValue for Mac {
    const EXPECTED: &'static str = "a MAC address string such as \"02:00:00:00:01:0a\"";
    fn parse_text(text: &str) -> Result<Self, ValueError> {
        parse_mac(text).map(Mac)
    }
}

/// A [`TextValue`] read from a TOML string.
#[derive(Debug, Clone, Copy)]
pub(super) struct Text<T>(pub T);

impl<'de, T: TextValue> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);
        impl<T: TextValue> Visitor<'_> for TextVisitor<T> {
            type Value = Text<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<T>, E> {
                T::parse_text(v).map(Text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}
