//! From the file as written ([`super::raw`]) to a [`Config`]: defaults, ranges, and the rules that
//! span several fields. The first broken rule is returned; warnings are collected.

use super::raw::{
    PortSpec, RawBackend, RawBgp, RawCheck, RawCheckType, RawConfig, RawFragments, RawMode, RawProtocol,
    RawService, RawXdpMode, Text,
};
use super::values::{format_duration, format_mac, parse_cores};
use super::*;
use fwd_dataplane::maglev::{is_prime, MAX_MEMBERS, MAX_TABLE_SIZE, MIN_TABLE_SIZE};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) fn validate(raw: RawConfig, text: &str, origin: &str) -> Result<Loaded> {
    let mut v = Validator { text, origin, warnings: Vec::new() };
    let config = v.config(raw)?;
    Ok(Loaded { config, warnings: v.warnings })
}

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
    warnings: Vec<String>,
}

/// A check as written at the service or backend level: complete except, possibly, its port.
struct CheckTemplate {
    kind: CheckKind,
    port: Option<u16>,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn mode_of(raw: RawMode) -> ForwardMode {
    match raw {
        RawMode::L2 => ForwardMode::L2,
        RawMode::Ipip => ForwardMode::Ipip,
        RawMode::Gue => ForwardMode::Gue,
    }
}

/// The smallest prime at or above `n`, if one is within the accepted table sizes.
fn next_table_size(n: u32) -> Option<u32> {
    (n.max(MIN_TABLE_SIZE)..=MAX_TABLE_SIZE).find(|&c| is_prime(c))
}

/// Why an address cannot be a VIP or a backend, if it cannot.
fn unusable_address(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        // The data plane stores IPv4 as IPv4-mapped IPv6, so the mapped form would alias it.
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address itself)")
        }
        _ => None,
    }
}

impl Validator<'_> {
    fn error(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            location: locate(self.text, &path),
            path,
            message: message.into(),
        }
    }

    fn warn(&mut self, path: &str, message: String) {
        let location = fmt_location(&locate(self.text, path));
        self.warnings.push(format!("{}{location}: {path}: {message}", self.origin));
    }

    /// Range-checks an integer; `note` follows the allowed range in the message.
    fn int<T: TryFrom<i64>>(&self, path: &str, value: i64, min: i64, max: i64, note: &str) -> Result<T> {
        if (min..=max).contains(&value) {
            if let Ok(v) = T::try_from(value) {
                return Ok(v);
            }
        }
        Err(self.error(path, format!("{value} is out of range; allowed {min}..={max}{note}")))
    }

    fn opt_int<T: TryFrom<i64>>(
        &self,
        path: &str,
        value: Option<i64>,
        default: T,
        min: i64,
        max: i64,
        note: &str,
    ) -> Result<T> {
        value.map_or(Ok(default), |v| self.int(path, v, min, max, note))
    }

    /// A duration of at least `min`, or `default` if absent.
    fn duration(
        &self,
        path: &str,
        value: Option<Text<Duration>>,
        default: Duration,
        min: Duration,
    ) -> Result<Duration> {
        let Some(Text(d)) = value else { return Ok(default) };
        if d < min {
            return Err(self.error(
                path,
                format!(
                    "\"{}\" is too short; allowed at least \"{}\"",
                    format_duration(d),
                    format_duration(min)
                ),
            ));
        }
        Ok(d)
    }

    fn non_empty(&self, path: &str, value: &str, what: &str) -> Result<()> {
        if value.is_empty() {
            return Err(self.error(path, format!("\"\" is empty; allowed {what}")));
        }
        Ok(())
    }

    fn config(&mut self, raw: RawConfig) -> Result<Config> {
        let defaults = Config::default();
        if let Some(nic) = &raw.nic {
            let ok = (1..=15).contains(&nic.len())
                && !nic.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
            if !ok {
                return Err(self.error(
                    "nic",
                    format!(
                        "{nic:?} is not an interface name; allowed 1 to 15 bytes without '/', ':' or spaces"
                    ),
                ));
            }
        }
        if let Some(cores) = &raw.cores {
            parse_cores(cores).map_err(|e| self.error("cores", e.to_string()))?;
        }
        let xdp_mode = match raw.xdp_mode {
            None | Some(RawXdpMode::Auto) => XdpMode::Auto,
            Some(RawXdpMode::Native) => XdpMode::Native,
            Some(RawXdpMode::Generic) => XdpMode::Generic,
        };
        let maglev_table_size = match raw.maglev_table_size {
            None => defaults.maglev_table_size,
            Some(n) => {
                let size = u32::try_from(n).ok().filter(|&s| (MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&s));
                match size {
                    Some(s) if is_prime(s) => s,
                    _ => {
                        let hint = size
                            .and_then(next_table_size)
                            .map(|p| format!("; the next prime is {p}"))
                            .unwrap_or_default();
                        return Err(self.error(
                            "maglev_table_size",
                            format!(
                                "{n} is not a prime in range; allowed a prime in \
                                 {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}, e.g. 65537{hint}"
                            ),
                        ));
                    }
                }
            }
        };
        let mtu = self.opt_int("mtu", raw.mtu, defaults.mtu, MIN_MTU.into(), MAX_MTU.into(), "")?;
        let gue_port = self.opt_int("gue_port", raw.gue_port, defaults.gue_port, 1, 65535, "")?;
        let icmp_rate_per_sec = self.opt_int(
            "icmp_rate_per_sec",
            raw.icmp_rate_per_sec,
            defaults.icmp_rate_per_sec,
            0,
            u32::MAX.into(),
            " (0 sends no ICMP errors)",
        )?;

        let conntrack = self.conntrack(raw.conntrack.unwrap_or_default())?;
        let stats = StatsConfig {
            interval: self.duration(
                "stats.interval",
                raw.stats.unwrap_or_default().interval,
                defaults.stats.interval,
                Duration::from_millis(100),
            )?,
        };
        let admin_raw = raw.admin.unwrap_or_default();
        let admin = AdminConfig {
            socket: match admin_raw.socket {
                Some(s) => {
                    self.non_empty("admin.socket", &s, "a path for the admin socket")?;
                    PathBuf::from(s)
                }
                None => defaults.admin.socket,
            },
            metrics_listen: match admin_raw.metrics_listen {
                Some(Text(listen)) => listen.0,
                None => AdminConfig::default().metrics_listen,
            },
        };

        let mut services = Vec::with_capacity(raw.services.len());
        let mut keys: HashMap<ServiceKey, usize> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, raw_service) in raw.services.into_iter().enumerate() {
            let service = self.service(i, raw_service)?;
            if let Some(first) = keys.insert(service.key(), i) {
                return Err(self.error(
                    format!("services[{i}]"),
                    format!(
                        "{} is defined twice (first at services[{first}]); allowed one service per \
                         VIP, protocol and port",
                        service.key()
                    ),
                ));
            }
            if let Some(first) = names.insert(service.name.clone(), i) {
                return Err(self.error(
                    format!("services[{i}].name"),
                    format!(
                        "{:?} is already the name of services[{first}]; allowed a name no other \
                         service has",
                        service.name
                    ),
                ));
            }
            services.push(service);
        }

        self.check_mtu(mtu, &services)?;
        self.warn_table_size(maglev_table_size, &services);
        if services.is_empty() {
            self.warn("services", "no services are configured: fwd will forward nothing".to_string());
        }

        let bgp = raw.bgp.map(|b| self.bgp(b, &services)).transpose()?;

        Ok(Config {
            nic: raw.nic,
            cores: raw.cores,
            xdp_mode,
            maglev_table_size,
            mtu,
            gue_port,
            answer_echo: raw.answer_echo.unwrap_or(defaults.answer_echo),
            icmp_rate_per_sec,
            tunnel_source_v4: raw.tunnel_source_v4.map(|Text(p)| p),
            tunnel_source_v6: raw.tunnel_source_v6.map(|Text(p)| p),
            conntrack,
            stats,
            admin,
            bgp,
            services,
        })
    }

    fn conntrack(&self, raw: super::raw::RawConntrack) -> Result<ConntrackConfig> {
        let d = ConntrackConfig::default();
        let second = Duration::from_secs(1);
        Ok(ConntrackConfig {
            capacity_per_core: self.opt_int(
                "conntrack.capacity_per_core",
                raw.capacity_per_core,
                d.capacity_per_core,
                MIN_CONNTRACK_CAPACITY.into(),
                MAX_CONNTRACK_CAPACITY.into(),
                "",
            )?,
            tcp_established_timeout: self.duration(
                "conntrack.tcp_established_timeout",
                raw.tcp_established_timeout,
                d.tcp_established_timeout,
                second,
            )?,
            tcp_closing_timeout: self.duration(
                "conntrack.tcp_closing_timeout",
                raw.tcp_closing_timeout,
                d.tcp_closing_timeout,
                second,
            )?,
            udp_timeout: self.duration("conntrack.udp_timeout", raw.udp_timeout, d.udp_timeout, second)?,
        })
    }

    fn bgp(&mut self, raw: RawBgp, services: &[ServiceConfig]) -> Result<BgpConfig> {
        let second = Duration::from_secs(1);
        let vtysh = match raw.vtysh {
            Some(s) => {
                self.non_empty("bgp.vtysh", &s, "the path of FRR's vtysh")?;
                PathBuf::from(s)
            }
            None => PathBuf::from("/usr/bin/vtysh"),
        };
        let vty_socket = match raw.vty_socket {
            Some(s) => {
                self.non_empty("bgp.vty_socket", &s, "the directory of FRR's vty sockets")?;
                Some(PathBuf::from(s))
            }
            None => None,
        };
        let min_healthy = self.opt_int(
            "bgp.min_healthy",
            raw.min_healthy,
            1u32,
            0,
            MAX_MEMBERS as i64,
            " (0 always announces)",
        )?;

        let d = DampingConfig::default();
        let raw_damping = raw.damping.unwrap_or_default();
        let damping_range = (1, 20000, " (FRR's dampening range)");
        let damping = DampingConfig {
            half_life: self.duration("bgp.damping.half_life", raw_damping.half_life, d.half_life, second)?,
            suppress: self.opt_int(
                "bgp.damping.suppress",
                raw_damping.suppress,
                d.suppress,
                damping_range.0,
                damping_range.1,
                damping_range.2,
            )?,
            reuse: self.opt_int(
                "bgp.damping.reuse",
                raw_damping.reuse,
                d.reuse,
                damping_range.0,
                damping_range.1,
                damping_range.2,
            )?,
            penalty: self.opt_int(
                "bgp.damping.penalty",
                raw_damping.penalty,
                d.penalty,
                damping_range.0,
                damping_range.1,
                damping_range.2,
            )?,
        };
        if damping.reuse >= damping.suppress {
            return Err(self.error(
                "bgp.damping.reuse",
                format!(
                    "{} is not below suppress {}; allowed a reuse threshold less than suppress",
                    damping.reuse, damping.suppress
                ),
            ));
        }

        let mut prefixes: Vec<BgpPrefixConfig> = Vec::with_capacity(raw.prefixes.len());
        for (i, p) in raw.prefixes.into_iter().enumerate() {
            let path = format!("bgp.prefixes[{i}]");
            let Text(prefix) = p.prefix;
            if let Some(first) = prefixes.iter().position(|q| q.prefix == prefix) {
                return Err(self.error(
                    format!("{path}.prefix"),
                    format!("\"{prefix}\" is listed twice (first at bgp.prefixes[{first}]); allowed once"),
                ));
            }
            let min_healthy = self.opt_int(
                &format!("{path}.min_healthy"),
                p.min_healthy,
                min_healthy,
                0,
                MAX_MEMBERS as i64,
                " (0 always announces)",
            )?;
            if !services.iter().any(|s| prefix.contains(s.vip)) {
                self.warn(&format!("{path}.prefix"), format!("\"{prefix}\" covers no service's VIP"));
            }
            prefixes.push(BgpPrefixConfig { prefix, min_healthy });
        }

        Ok(BgpConfig {
            vtysh,
            vty_socket,
            namespace: raw.namespace.filter(|n| !n.is_empty()),
            extra_args: raw.extra_args.unwrap_or_default(),
            reconcile_interval: self.duration(
                "bgp.reconcile_interval",
                raw.reconcile_interval,
                Duration::from_secs(5),
                second,
            )?,
            hold_down: self.duration(
                "bgp.hold_down",
                raw.hold_down,
                Duration::from_secs(5),
                Duration::ZERO,
            )?,
            vtysh_timeout: self.duration(
                "bgp.vtysh_timeout",
                raw.vtysh_timeout,
                Duration::from_secs(5),
                Duration::from_millis(100),
            )?,
            drain_time: self.duration(
                "bgp.drain_time",
                raw.drain_time,
                Duration::from_secs(3),
                Duration::ZERO,
            )?,
            min_healthy,
            damping,
            prefixes,
        })
    }

    fn service(&mut self, i: usize, raw: RawService) -> Result<ServiceConfig> {
        let path = format!("services[{i}]");
        let Text(vip) = raw.vip;
        if let Some(why) = unusable_address(vip) {
            return Err(self.error(
                format!("{path}.vip"),
                format!("{vip} is {why}; allowed a unicast IPv4 or IPv6 address"),
            ));
        }
        let protocol = match raw.protocol {
            RawProtocol::Tcp => L4Proto::Tcp,
            RawProtocol::Udp => L4Proto::Udp,
        };
        let port = match raw.port {
            PortSpec::All => None,
            PortSpec::Number(n) => Some(self.int(&format!("{path}.port"), n, 1, 65535, " or \"all\"")?),
        };
        let mode = mode_of(raw.mode);
        let key = ServiceKey { vip, proto: protocol, port };
        let name = match raw.name {
            Some(name) => {
                self.non_empty(&format!("{path}.name"), &name, "a label, or no name for the default")?;
                name
            }
            None => key.to_string(),
        };
        let service_check =
            raw.check.as_ref().map(|c| self.check(&format!("{path}.check"), c)).transpose()?;

        if raw.backends.is_empty() {
            return Err(self.error(
                format!("{path}.backends"),
                format!("{name} has no backends; allowed one or more [[services.backends]]"),
            ));
        }
        let backends = self.backends(&path, "backends", &raw.backends, vip, mode, service_check.as_ref())?;

        let fallback_mode = match (raw.fallback.is_empty(), raw.fallback_mode) {
            (true, None) => None,
            (true, Some(m)) => {
                return Err(self.error(
                    format!("{path}.fallback_mode"),
                    format!(
                        "\"{}\" is set but the service has no fallback backends; allowed only with \
                         [[services.fallback]]",
                        mode_of(m).name()
                    ),
                ))
            }
            (false, Some(RawMode::L2)) => {
                return Err(self.error(
                    format!("{path}.fallback_mode"),
                    "\"l2\" cannot reach another site; allowed \"ipip\" or \"gue\"",
                ))
            }
            (false, Some(m)) => Some(mode_of(m)),
            (false, None) if mode != ForwardMode::L2 => Some(mode),
            (false, None) => {
                return Err(self.error(
                    format!("{path}.fallback_mode"),
                    "is missing: fallback backends are at another site and mode \"l2\" cannot reach \
                     them; allowed fallback_mode = \"ipip\" or \"gue\"",
                ))
            }
        };
        let fallback = match fallback_mode {
            Some(fallback_mode) => {
                let fallback = self.backends(
                    &path,
                    "fallback",
                    &raw.fallback,
                    vip,
                    fallback_mode,
                    service_check.as_ref(),
                )?;
                let identities: HashMap<(IpAddr, Option<u16>), usize> =
                    backends.iter().enumerate().map(|(k, b)| ((b.address, b.port), k)).collect();
                for (j, f) in fallback.iter().enumerate() {
                    if let Some(k) = identities.get(&(f.address, f.port)) {
                        return Err(self.error(
                            format!("{path}.fallback[{j}].address"),
                            format!(
                                "{} is also {path}.backends[{k}]; allowed a fallback backend that is \
                                 not among the service's backends",
                                host_port(f.address, f.port)
                            ),
                        ));
                    }
                }
                fallback
            }
            None => Vec::new(),
        };

        if backends.iter().all(|b| b.weight == 0) {
            self.warn(
                &format!("{path}.backends"),
                format!("every backend of {name} has weight 0: the service takes no new flows"),
            );
        }

        Ok(ServiceConfig {
            name,
            vip,
            protocol,
            port,
            mode,
            hash_src_port: raw.hash_src_port.unwrap_or(true),
            fragments: match raw.fragments {
                None | Some(RawFragments::Hash) => FragmentPolicy::Hash3Tuple,
                Some(RawFragments::Drop) => FragmentPolicy::Drop,
            },
            fallback_mode,
            backends,
            fallback,
        })
    }

    /// Validates one list (`backends` or `fallback`) of a service, reached with `mode`.
    fn backends(
        &self,
        service_path: &str,
        list: &str,
        raw: &[RawBackend],
        vip: IpAddr,
        mode: ForwardMode,
        service_check: Option<&CheckTemplate>,
    ) -> Result<Vec<BackendConfig>> {
        if raw.len() > MAX_MEMBERS {
            return Err(self.error(
                format!("{service_path}.{list}"),
                format!("{} backends are too many; allowed at most {MAX_MEMBERS}", raw.len()),
            ));
        }
        let mut out: Vec<BackendConfig> = Vec::with_capacity(raw.len());
        let mut identities: HashMap<(IpAddr, Option<u16>), usize> = HashMap::with_capacity(raw.len());
        for (j, b) in raw.iter().enumerate() {
            let path = format!("{service_path}.{list}[{j}]");
            let Text(address) = b.address;
            if let Some(why) = unusable_address(address) {
                return Err(self.error(
                    format!("{path}.address"),
                    format!("{address} is {why}; allowed a unicast IPv4 or IPv6 address"),
                ));
            }
            if mode == ForwardMode::L2 && address.is_ipv4() != vip.is_ipv4() {
                return Err(self.error(
                    format!("{path}.address"),
                    format!(
                        "{address} is {} but the VIP {vip} is {}; mode \"l2\" allows only backends of \
                         the VIP's family (\"ipip\" and \"gue\" carry either)",
                        family(address),
                        family(vip)
                    ),
                ));
            }
            let port = b.port.map(|p| self.int(&format!("{path}.port"), p, 1, 65535, "")).transpose()?;
            let weight =
                self.opt_int(&format!("{path}.weight"), b.weight, 1, 0, MAX_WEIGHT.into(), " (0 = drained)")?;
            let mac = match (b.mac, mode) {
                (None, _) => None,
                (Some(mac), ForwardMode::L2) => Some(mac.0 .0),
                (Some(mac), other) => {
                    return Err(self.error(
                        format!("{path}.mac"),
                        format!(
                            "\"{}\" is set but this list is reached with mode \"{}\"; allowed only with \
                             mode \"l2\" (tunnels use the gateway's MAC)",
                            format_mac(&mac.0 .0),
                            other.name()
                        ),
                    ))
                }
            };
            if let Some(k) = identities.insert((address, port), j) {
                return Err(self.error(
                    format!("{path}.address"),
                    format!(
                        "{} is also {service_path}.{list}[{k}]; allowed each address and port once \
                         per service",
                        host_port(address, port)
                    ),
                ));
            }
            let own_check = b.check.as_ref().map(|c| self.check(&format!("{path}.check"), c)).transpose()?;
            let check = match own_check.as_ref().or(service_check) {
                None => None,
                Some(template) => {
                    let Some(check_port) = template.port.or(port) else {
                        let source = if own_check.is_some() {
                            format!("{path}.check")
                        } else {
                            format!("{service_path}.check")
                        };
                        return Err(self.error(
                            format!("{path}.port"),
                            format!(
                                "is missing and the health check ({source}) has no port either; allowed \
                                 a port 1..=65535 on the backend or in the check"
                            ),
                        ));
                    };
                    Some(CheckSpec {
                        kind: template.kind.clone(),
                        port: check_port,
                        interval: template.interval,
                        timeout: template.timeout,
                        rise: template.rise,
                        fall: template.fall,
                    })
                }
            };
            out.push(BackendConfig { address, port, weight, mac, check });
        }
        Ok(out)
    }

    fn check(&self, path: &str, raw: &RawCheck) -> Result<CheckTemplate> {
        let kind_name = match raw.kind {
            RawCheckType::Tcp => "tcp",
            RawCheckType::Http => "http",
            RawCheckType::Udp => "udp",
            RawCheckType::Exec => "exec",
        };
        let fields: [(&str, bool, RawCheckType); 6] = [
            ("path", raw.path.is_some(), RawCheckType::Http),
            ("expect_status", raw.expect_status.is_some(), RawCheckType::Http),
            ("expect_body", raw.expect_body.is_some(), RawCheckType::Http),
            ("payload", raw.payload.is_some(), RawCheckType::Udp),
            ("expect", raw.expect.is_some(), RawCheckType::Udp),
            ("command", raw.command.is_some(), RawCheckType::Exec),
        ];
        for (field, present, owner) in fields {
            if present && owner != raw.kind {
                let owner = match owner {
                    RawCheckType::Http => "http",
                    RawCheckType::Udp => "udp",
                    _ => "exec",
                };
                return Err(self.error(
                    format!("{path}.{field}"),
                    format!(
                        "is set on a check of type \"{kind_name}\"; allowed only with type = \"{owner}\""
                    ),
                ));
            }
        }

        let kind = match raw.kind {
            RawCheckType::Tcp => CheckKind::Tcp,
            RawCheckType::Http => {
                let http_path = raw.path.clone().unwrap_or_else(|| "/".to_string());
                // The path goes into the request line verbatim.
                if !http_path.starts_with('/') || http_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(self.error(
                        format!("{path}.path"),
                        format!(
                            "{http_path:?} is not a request path; allowed a path starting with '/' \
                             without spaces or control characters"
                        ),
                    ));
                }
                CheckKind::Http {
                    path: http_path,
                    expect_status: self.opt_int(
                        &format!("{path}.expect_status"),
                        raw.expect_status,
                        200,
                        100,
                        599,
                        "",
                    )?,
                    expect_body: raw.expect_body.clone(),
                }
            }
            RawCheckType::Udp => CheckKind::Udp { payload: raw.payload.clone(), expect: raw.expect.clone() },
            RawCheckType::Exec => {
                let command = raw.command.clone().unwrap_or_default();
                if command.first().is_none_or(|program| program.is_empty()) {
                    return Err(self.error(
                        format!("{path}.command"),
                        format!(
                            "{command:?} names no program; allowed a list whose first string is the \
                             program, e.g. [\"/usr/local/bin/check\", \"--quick\"]"
                        ),
                    ));
                }
                CheckKind::Exec { command }
            }
        };
        let port = raw.port.map(|p| self.int(&format!("{path}.port"), p, 1, 65535, "")).transpose()?;
        let interval = self.duration(
            &format!("{path}.interval"),
            raw.interval,
            Duration::from_secs(2),
            MIN_CHECK_INTERVAL,
        )?;
        let timeout_given = raw.timeout.is_some();
        let timeout = self.duration(
            &format!("{path}.timeout"),
            raw.timeout,
            Duration::from_secs(1),
            Duration::from_millis(1),
        )?;
        if timeout >= interval {
            let default = if timeout_given { "" } else { " (the default)" };
            return Err(self.error(
                format!("{path}.timeout"),
                format!(
                    "\"{}\"{default} is not less than interval \"{}\"; allowed a timeout shorter than \
                     the interval",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            ));
        }
        let rise = self.opt_int(&format!("{path}.rise"), raw.rise, 2, 1, MAX_RISE_FALL.into(), "")?;
        let fall = self.opt_int(&format!("{path}.fall"), raw.fall, 3, 1, MAX_RISE_FALL.into(), "")?;
        Ok(CheckTemplate { kind, port, interval, timeout, rise, fall })
    }

    /// IPv6 needs a link MTU of at least 1280 (RFC 8200), for VIPs and for IPv6 tunnel outers.
    fn check_mtu(&self, mtu: u16, services: &[ServiceConfig]) -> Result<()> {
        if mtu >= MIN_MTU_IPV6 {
            return Ok(());
        }
        let carries_v6 = |s: &ServiceConfig| {
            s.vip.is_ipv6()
                || (s.mode != ForwardMode::L2 && s.backends.iter().any(|b| b.address.is_ipv6()))
                || s.fallback.iter().any(|b| b.address.is_ipv6())
        };
        if let Some((i, s)) = services.iter().enumerate().find(|(_, s)| carries_v6(s)) {
            return Err(self.error(
                "mtu",
                format!(
                    "{mtu} is below {MIN_MTU_IPV6}, the IPv6 minimum, and services[{i}] ({}) carries \
                     IPv6; allowed {MIN_MTU_IPV6}..={MAX_MTU} with IPv6 services",
                    s.name
                ),
            ));
        }
        Ok(())
    }

    /// Maglev keeps each backend within about 1% of its share only when the table has at least
    /// [`TABLE_SIZE_PER_BACKEND`] slots per backend; below that some backends get visibly more.
    fn warn_table_size(&mut self, size: u32, services: &[ServiceConfig]) {
        let largest = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.backends.len().max(s.fallback.len()), i, &s.name))
            .max_by_key(|&(n, i, _)| (n, std::cmp::Reverse(i)));
        let Some((count, i, name)) = largest else { return };
        let wanted = u64::try_from(count).unwrap_or(u64::MAX).saturating_mul(TABLE_SIZE_PER_BACKEND.into());
        if u64::from(size) >= wanted {
            return;
        }
        let hint = u32::try_from(wanted)
            .ok()
            .and_then(next_table_size)
            .map(|p| format!("; use {p} or more"))
            .unwrap_or_else(|| format!("; even {MAX_TABLE_SIZE}, the largest, is below that"));
        let message = format!(
            "{size} is less than {TABLE_SIZE_PER_BACKEND} x {count}, the backend count of services[{i}] \
             ({name}): Maglev keeps each backend's share within about 1% of its weight only with at least \
             {TABLE_SIZE_PER_BACKEND} slots per backend{hint}"
        );
        self.warn("maglev_table_size", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
[[services]]
vip = "198.18.100.1"
protocol = "tcp"
port = 80
mode = "l2"
"#;

    fn backend(address: &str) -> String {
        format!("[[services.backends]]\naddress = \"{address}\"\n")
    }

    /// A valid one-service file with `top` before the services and `service` inside the first one.
    fn web(top: &str, service: &str) -> String {
        format!("{top}\n{WEB}{service}\n{}", backend("198.18.2.11"))
    }

    fn reject(text: &str) -> ConfigError {
        match parse_config(text, "test.toml") {
            Ok(loaded) => panic!("accepted:\n{text}\n{loaded:?}"),
            Err(e) => e,
        }
    }

    fn accept(text: &str) -> Loaded {
        match parse_config(text, "test.toml") {
            Ok(loaded) => loaded,
            Err(e) => panic!("rejected:\n{text}\n{e}"),
        }
    }

    /// The error's path is `path` and its message names the file, the path and every one of `parts`.
    fn assert_rejects(text: &str, path: &str, parts: &[&str]) {
        let e = reject(text);
        let msg = e.to_string();
        assert_eq!(e.path(), Some(path), "{msg}");
        assert!(msg.starts_with("test.toml"), "{msg}");
        assert!(msg.contains(&format!(": {path}: ")), "{msg}");
        for part in parts {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path_and_the_known_keys() {
        assert_rejects("mtu = 1500\nbogus = 1\n", "bogus", &["unknown field `bogus`", "`mtu`", "`services`"]);
        assert_rejects(
            "[conntrack]\ncapacity = 5\n",
            "conntrack.capacity",
            &["`capacity`", "`capacity_per_core`"],
        );
        let text = format!("{WEB}{}wieght = 2\n", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].backends[0].wieght", &["`wieght`", "`weight`"]);
        assert_rejects(
            &web("", "check = { type = \"tcp\", port = 80, intervall = \"1s\" }"),
            "services[0].check.intervall",
            &["`intervall`", "`interval`"],
        );
        assert_rejects(
            "[bgp]\ndamping = { halflife = \"1s\" }\n",
            "bgp.damping.halflife",
            &["`halflife`", "`half_life`"],
        );
    }

    #[test]
    fn wrong_types_and_enum_values_name_the_field() {
        let text = format!("{WEB}{}weight = \"x\"\n", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].backends[0].weight", &["\"x\"", "expected an integer"]);
        assert_rejects(
            &WEB.replace("\"l2\"", "\"dsr\""),
            "services[0].mode",
            &["`dsr`", "`l2`", "`ipip`", "`gue`"],
        );
        assert_rejects(
            &WEB.replace("\"tcp\"", "\"sctp\""),
            "services[0].protocol",
            &["`sctp`", "`tcp`", "`udp`"],
        );
        assert_rejects(&web("xdp_mode = \"fast\"", ""), "xdp_mode", &["`fast`", "`native`", "`generic`"]);
        assert_rejects(
            &web("", "fragments = \"keep\""),
            "services[0].fragments",
            &["`keep`", "`hash`", "`drop`"],
        );
        assert_rejects(
            &web("", "check = { type = \"icmp\", port = 80 }"),
            "services[0].check.type",
            &["`icmp`"],
        );
        assert_rejects(&web("[stats]\ninterval = 5", ""), "stats.interval", &["integer", "\"2s\""]);
    }

    #[test]
    fn missing_required_fields_name_the_table() {
        let e = reject("[[services]]\nvip = \"198.18.100.1\"\nprotocol = \"tcp\"\nmode = \"l2\"\n");
        assert_eq!(e.path(), Some("services[0]"));
        assert!(e.to_string().contains("missing field `port`"), "{e}");
    }

    #[test]
    fn syntax_errors_give_a_line_and_column() {
        let e = reject("mtu = 1500\nmtu = = 3\n");
        assert!(matches!(e, ConfigError::Parse { path: None, .. }), "{e:?}");
        assert_eq!(e.location().map(|l| l.line), Some(2), "{e}");
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
    }

    #[test]
    fn duplicate_services_are_rejected() {
        let text = format!("{}\n{WEB}{}", web("", ""), backend("198.18.2.12"));
        assert_rejects(
            &text,
            "services[1]",
            &["198.18.100.1:80/tcp", "defined twice", "services[0]", "one service per"],
        );
        // Another port, protocol, or all ports next to a port are different services.
        let text = format!(
            "{}\n{}{}",
            web("", ""),
            WEB.replace("port = 80", "port = \"all\""),
            backend("198.18.2.12")
        );
        accept(&text);
        let text =
            format!("{}\n{}{}", web("", ""), WEB.replace("\"tcp\"", "\"udp\""), backend("198.18.2.12"));
        accept(&text);
    }

    #[test]
    fn duplicate_service_names_are_rejected() {
        let second = WEB.replace("port = 80", "port = 81");
        let text =
            format!("{}\n{second}name = \"web\"\n{}", web("", "name = \"web\""), backend("198.18.2.12"));
        assert_rejects(&text, "services[1].name", &["\"web\"", "services[0]"]);
    }

    #[test]
    fn duplicate_backends_in_a_service_are_rejected() {
        let text = format!("{}{}", web("", ""), backend("198.18.2.11"));
        assert_rejects(
            &text,
            "services[0].backends[1].address",
            &["198.18.2.11", "services[0].backends[0]", "once"],
        );
        let with_port = |a: &str, p: u16| format!("{}port = {p}\n", backend(a));
        let text = format!("{WEB}{}{}", with_port("198.18.2.11", 80), with_port("198.18.2.11", 80));
        assert_rejects(
            &text,
            "services[0].backends[1].address",
            &["198.18.2.11:80", "services[0].backends[0]"],
        );
        // The same address on another port is another backend.
        accept(&format!("{WEB}{}{}", with_port("198.18.2.11", 80), with_port("198.18.2.11", 8080)));
    }

    #[test]
    fn table_size_must_be_a_prime_in_range() {
        assert_rejects(
            &web("maglev_table_size = 65536", ""),
            "maglev_table_size",
            &["65536", "not a prime", "251..=1048573", "the next prime is 65537"],
        );
        assert_rejects(&web("maglev_table_size = 241", ""), "maglev_table_size", &["241", "251..=1048573"]);
        assert_rejects(
            &web("maglev_table_size = 1048583", ""),
            "maglev_table_size",
            &["1048583", "251..=1048573"],
        );
        assert_rejects(&web("maglev_table_size = -7", ""), "maglev_table_size", &["-7", "251..=1048573"]);
        assert_eq!(accept(&web("maglev_table_size = 1048573", "")).config.maglev_table_size, 1_048_573);
    }

    #[test]
    fn weights_must_be_in_range() {
        for bad in ["70000", "65536", "-1"] {
            let text = format!("{WEB}{}weight = {bad}\n", backend("198.18.2.11"));
            assert_rejects(&text, "services[0].backends[0].weight", &[bad, "0..=65535", "0 = drained"]);
        }
        let text = format!("{WEB}{}weight = 65535\n", backend("198.18.2.11"));
        assert_eq!(accept(&text).config.services[0].backends[0].weight, 65535);
    }

    #[test]
    fn a_service_needs_backends() {
        assert_rejects(
            WEB,
            "services[0].backends",
            &["198.18.100.1:80/tcp", "no backends", "[[services.backends]]"],
        );
        let text =
            format!("{WEB}fallback_mode = \"ipip\"\n[[services.fallback]]\naddress = \"198.19.2.11\"\n");
        assert_rejects(&text, "services[0].backends", &["no backends"]);
    }

    #[test]
    fn l2_backends_must_be_of_the_vip_family() {
        let text = format!("{WEB}{}", backend("fd00:18:2::11"));
        assert_rejects(
            &text,
            "services[0].backends[0].address",
            &["fd00:18:2::11", "is IPv6", "VIP 198.18.100.1 is IPv4", "\"l2\"", "\"ipip\" and \"gue\""],
        );
        let v6 = WEB.replace("198.18.100.1", "fd00:18:100::1");
        assert_rejects(
            &format!("{v6}{}", backend("198.18.2.11")),
            "services[0].backends[0].address",
            &["is IPv4"],
        );
    }

    #[test]
    fn tunnel_modes_carry_either_family() {
        for mode in ["ipip", "gue"] {
            let v4 = WEB.replace("\"l2\"", &format!("\"{mode}\""));
            let text = format!("{v4}{}{}", backend("198.18.2.11"), backend("fd00:18:2::11"));
            let loaded = accept(&text);
            assert_eq!(loaded.config.services[0].backends.len(), 2);
            let v6 = v4.replace("198.18.100.1", "fd00:18:100::1");
            accept(&format!("{v6}{}", backend("198.18.2.11")));
        }
    }

    #[test]
    fn mac_only_on_l2_services() {
        let text = format!(
            "{}{}mac = \"02:00:00:00:01:0a\"\n",
            WEB.replace("\"l2\"", "\"gue\""),
            backend("198.18.2.11")
        );
        assert_rejects(
            &text,
            "services[0].backends[0].mac",
            &["\"02:00:00:00:01:0a\"", "\"gue\"", "only with mode \"l2\""],
        );
        let text = format!("{WEB}{}mac = \"02:00:00:00:01:0a\"\n", backend("198.18.2.11"));
        assert_eq!(accept(&text).config.services[0].backends[0].mac, Some([2, 0, 0, 0, 1, 0x0a]));
        let text = format!("{WEB}{}mac = \"01:00:5e:00:00:01\"\n", backend("198.18.2.11"));
        assert_rejects(
            &text,
            "services[0].backends[0].mac",
            &["\"01:00:5e:00:00:01\"", "multicast", "unicast"],
        );
    }

    #[test]
    fn fallback_cannot_use_l2() {
        let fallback = "[[services.fallback]]\naddress = \"198.19.2.11\"\n";
        let text = format!("{}fallback_mode = \"l2\"\n{}{fallback}", WEB, backend("198.18.2.11"));
        assert_rejects(&text, "services[0].fallback_mode", &["\"l2\"", "\"ipip\" or \"gue\""]);
        let text = format!("{WEB}{}{fallback}", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].fallback_mode", &["missing", "\"l2\"", "\"ipip\" or \"gue\""]);
        let text = format!("{WEB}fallback_mode = \"gue\"\n{}", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].fallback_mode", &["\"gue\"", "no fallback backends"]);

        let text = format!("{WEB}fallback_mode = \"gue\"\n{}{fallback}", backend("198.18.2.11"));
        let service = &accept(&text).config.services[0];
        assert_eq!((service.fallback_mode, service.fallback.len()), (Some(ForwardMode::Gue), 1));
        // A tunnel service's fallback defaults to the service's own mode.
        let text = format!("{}{}{fallback}", WEB.replace("\"l2\"", "\"ipip\""), backend("198.18.2.11"));
        assert_eq!(accept(&text).config.services[0].fallback_mode, Some(ForwardMode::Ipip));
        // Fallback backends are tunnelled: any family, no MAC, not also a backend.
        let text = format!(
            "{WEB}fallback_mode = \"ipip\"\n{}{}",
            backend("198.18.2.11"),
            "[[services.fallback]]\naddress = \"fd00:19::1\"\n"
        );
        accept(&text);
        let text = format!(
            "{WEB}fallback_mode = \"ipip\"\n{}{fallback}mac = \"02:00:00:00:01:0a\"\n",
            backend("198.18.2.11")
        );
        assert_rejects(&text, "services[0].fallback[0].mac", &["\"ipip\"", "only with mode \"l2\""]);
        let text = format!(
            "{WEB}fallback_mode = \"ipip\"\n{}[[services.fallback]]\naddress = \"198.18.2.11\"\n",
            backend("198.18.2.11")
        );
        assert_rejects(&text, "services[0].fallback[0].address", &["198.18.2.11", "services[0].backends[0]"]);
    }

    #[test]
    fn ipv6_services_need_an_mtu_of_1280() {
        let v6 = WEB.replace("198.18.100.1", "fd00:18:100::1");
        let text = format!("mtu = 1000\n{v6}{}", backend("fd00:18:2::11"));
        assert_rejects(
            &text,
            "mtu",
            &["1000", "1280", "services[0]", "[fd00:18:100::1]:80/tcp", "1280..=9216"],
        );
        // An IPv4 VIP tunnelled to an IPv6 backend has IPv6 outer headers.
        let text = format!("mtu = 1000\n{}{}", WEB.replace("\"l2\"", "\"ipip\""), backend("fd00:18:2::11"));
        assert_rejects(&text, "mtu", &["1000", "1280"]);
        assert_eq!(accept(&web("mtu = 576", "")).config.mtu, 576);
        assert_rejects(&web("mtu = 575", ""), "mtu", &["575", "576..=9216"]);
        assert_rejects(&web("mtu = 9217", ""), "mtu", &["9217", "576..=9216"]);
    }

    #[test]
    fn check_timeout_must_be_below_interval() {
        let text = web("", "check = { type = \"tcp\", port = 80, interval = \"1s\", timeout = \"1s\" }");
        assert_rejects(
            &text,
            "services[0].check.timeout",
            &["\"1s\"", "interval \"1s\"", "shorter than the interval"],
        );
        let text = web("", "check = { type = \"tcp\", port = 80, interval = \"500ms\" }");
        assert_rejects(&text, "services[0].check.timeout", &["\"1s\" (the default)", "interval \"500ms\""]);
        let text = format!(
            "{WEB}{}check = {{ type = \"tcp\", port = 80, interval = \"1s\", timeout = \"2s\" }}\n",
            backend("198.18.2.11")
        );
        assert_rejects(&text, "services[0].backends[0].check.timeout", &["\"2s\"", "interval \"1s\""]);
    }

    #[test]
    fn check_fields_are_range_checked() {
        let check = |fields: &str| web("", &format!("check = {{ type = \"tcp\", port = 80, {fields} }}"));
        assert_rejects(
            &check("interval = \"50ms\""),
            "services[0].check.interval",
            &["\"50ms\"", "at least \"100ms\""],
        );
        assert_rejects(
            &check("timeout = \"0s\""),
            "services[0].check.timeout",
            &["\"0s\"", "at least \"1ms\""],
        );
        assert_rejects(&check("rise = 0"), "services[0].check.rise", &["0", "1..=100"]);
        assert_rejects(&check("fall = 101"), "services[0].check.fall", &["101", "1..=100"]);
        assert_rejects(
            &web("", "check = { type = \"tcp\", port = 0 }"),
            "services[0].check.port",
            &["0 is out of range", "1..=65535"],
        );
        assert_rejects(
            &web("", "check = { type = \"http\", port = 80, expect_status = 700 }"),
            "services[0].check.expect_status",
            &["700", "100..=599"],
        );
        assert_rejects(
            &web("", "check = { type = \"http\", port = 80, path = \"healthz\" }"),
            "services[0].check.path",
            &["\"healthz\"", "starting with '/'"],
        );
        assert_rejects(
            &web("", "check = { type = \"http\", port = 80, path = \"/a b\" }"),
            "services[0].check.path",
            &["\"/a b\""],
        );
    }

    #[test]
    fn check_fields_belong_to_their_type() {
        assert_rejects(
            &web("", "check = { type = \"tcp\", port = 80, path = \"/\" }"),
            "services[0].check.path",
            &["\"tcp\"", "only with type = \"http\""],
        );
        assert_rejects(
            &web("", "check = { type = \"http\", port = 80, payload = \"x\" }"),
            "services[0].check.payload",
            &["\"http\"", "only with type = \"udp\""],
        );
        assert_rejects(
            &web("", "check = { type = \"udp\", port = 80, command = [\"/bin/true\"] }"),
            "services[0].check.command",
            &["only with type = \"exec\""],
        );
        assert_rejects(
            &web("", "check = { type = \"exec\", port = 80 }"),
            "services[0].check.command",
            &["[]", "names no program"],
        );
        assert_rejects(
            &web("", "check = { type = \"exec\", port = 80, command = [\"\"] }"),
            "services[0].check.command",
            &["[\"\"]", "names no program"],
        );
    }

    #[test]
    fn a_check_needs_a_port_from_itself_or_the_backend() {
        let text = web("", "check = { type = \"tcp\" }");
        assert_rejects(&text, "services[0].backends[0].port", &["services[0].check", "no port", "1..=65535"]);
        let text = format!("{WEB}{}check = {{ type = \"tcp\" }}\n", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].backends[0].port", &["services[0].backends[0].check"]);
        let text = format!("{WEB}check = {{ type = \"tcp\" }}\n{}port = 8080\n", backend("198.18.2.11"));
        assert_eq!(accept(&text).config.services[0].backends[0].check.as_ref().map(|c| c.port), Some(8080));
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        assert_rejects(
            &web("tunnel_source_v4 = \"198.18.0.1/28\"", ""),
            "tunnel_source_v4",
            &["\"198.18.0.1/28\"", "bits are set after /28", "\"198.18.0.0/28\""],
        );
        assert_rejects(
            &web("tunnel_source_v4 = \"fd00:18::/124\"", ""),
            "tunnel_source_v4",
            &["\"fd00:18::/124\"", "IPv4 prefix"],
        );
        assert_rejects(
            &web("tunnel_source_v6 = \"fd00:18::/129\"", ""),
            "tunnel_source_v6",
            &["\"fd00:18::/129\"", "above 128"],
        );
        assert_rejects(
            &web("tunnel_source_v6 = \"fd00:18::\"", ""),
            "tunnel_source_v6",
            &["no /LENGTH", "ADDRESS/LENGTH"],
        );
        let text = web("[bgp]\n[[bgp.prefixes]]\nprefix = \"198.18.100.1/24\"", "");
        assert_rejects(&text, "bgp.prefixes[0].prefix", &["\"198.18.100.1/24\"", "bits are set after /24"]);
        let loaded =
            accept(&web("tunnel_source_v4 = \"198.18.0.0/28\"\ntunnel_source_v6 = \"fd00:18::/124\"", ""));
        let v4 = loaded.config.tunnel_source_v4.unwrap();
        assert_eq!((v4.to_string(), v4.source_range().count), ("198.18.0.0/28".to_string(), 16));
        assert_eq!(loaded.config.tunnel_source_v6.unwrap().len, 124);
    }

    #[test]
    fn gue_port_zero_is_rejected() {
        assert_rejects(&web("gue_port = 0", ""), "gue_port", &["0 is out of range", "1..=65535"]);
        assert_rejects(&web("gue_port = 65536", ""), "gue_port", &["65536", "1..=65535"]);
    }

    #[test]
    fn service_and_backend_ports_are_range_checked() {
        assert_rejects(
            &WEB.replace("port = 80", "port = 0"),
            "services[0].port",
            &["0 is out of range", "1..=65535 or \"all\""],
        );
        assert_rejects(
            &WEB.replace("port = 80", "port = \"any\""),
            "services[0].port",
            &["\"any\"", "\"all\""],
        );
        let text = format!("{WEB}{}port = 70000\n", backend("198.18.2.11"));
        assert_rejects(&text, "services[0].backends[0].port", &["70000", "1..=65535"]);
    }

    #[test]
    fn unusable_addresses_are_rejected() {
        for (vip, why) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
        ] {
            assert_rejects(&web("", "").replacen("198.18.100.1", vip, 1), "services[0].vip", &[vip, why]);
        }
        let text = format!("{}{}", WEB.replace("\"l2\"", "\"ipip\""), backend("::ffff:198.18.2.11"));
        assert_rejects(&text, "services[0].backends[0].address", &["::ffff:198.18.2.11", "IPv4-mapped"]);
        assert_rejects(
            &format!("{WEB}{}", backend("127.0.0.1")),
            "services[0].backends[0].address",
            &["loopback"],
        );
    }

    #[test]
    fn top_level_values_are_checked() {
        assert_rejects(&web("cores = \"7-2\"", ""), "cores", &["\"7-2\"", "runs backwards", "\"0,2,4\""]);
        assert_rejects(&web("nic = \"a/b\"", ""), "nic", &["\"a/b\"", "1 to 15 bytes"]);
        assert_rejects(&web("nic = \"sixteen-chars-xx\"", ""), "nic", &["\"sixteen-chars-xx\""]);
        assert_rejects(&web("icmp_rate_per_sec = -1", ""), "icmp_rate_per_sec", &["-1", "0..=4294967295"]);
        assert_rejects(
            &web("[conntrack]\ncapacity_per_core = 100", ""),
            "conntrack.capacity_per_core",
            &["100", "1024..=67108864"],
        );
        assert_rejects(
            &web("[conntrack]\nudp_timeout = \"500ms\"", ""),
            "conntrack.udp_timeout",
            &["\"500ms\"", "at least \"1s\""],
        );
        assert_rejects(
            &web("[stats]\ninterval = \"10ms\"", ""),
            "stats.interval",
            &["\"10ms\"", "\"100ms\""],
        );
        assert_rejects(&web("[admin]\nsocket = \"\"", ""), "admin.socket", &["empty"]);
        assert_rejects(
            &web("[admin]\nmetrics_listen = \"localhost\"", ""),
            "admin.metrics_listen",
            &["\"localhost\"", "ADDRESS:PORT"],
        );
        assert_rejects(&web("", "name = \"\""), "services[0].name", &["empty"]);
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_and_can_be_turned_off() {
        let on = parse_config(&web("", ""), "t.toml").unwrap().config;
        assert_eq!(on.admin.metrics_listen, Some("127.0.0.1:9779".parse().unwrap()));
        let off = parse_config(&web("[admin]\nmetrics_listen = \"off\"", ""), "t.toml").unwrap().config;
        assert_eq!(off.admin.metrics_listen, None);
        let v6 =
            parse_config(&web("[admin]\nmetrics_listen = \"[fd00::1]:9100\"", ""), "t.toml").unwrap().config;
        assert_eq!(v6.admin.metrics_listen, Some("[fd00::1]:9100".parse().unwrap()));
    }

    #[test]
    fn bgp_values_are_checked() {
        assert_rejects(
            &web("[bgp]\ndamping = { suppress = 700, reuse = 750 }", ""),
            "bgp.damping.reuse",
            &["750", "suppress 700", "less than suppress"],
        );
        assert_rejects(
            &web("[bgp]\ndamping = { penalty = 0 }", ""),
            "bgp.damping.penalty",
            &["0", "1..=20000"],
        );
        assert_rejects(
            &web("[bgp]\nreconcile_interval = \"0s\"", ""),
            "bgp.reconcile_interval",
            &["\"0s\"", "at least \"1s\""],
        );
        assert_rejects(&web("[bgp]\nmin_healthy = -1", ""), "bgp.min_healthy", &["-1", "0..=65535"]);
        let prefix = "[[bgp.prefixes]]\nprefix = \"198.18.100.0/24\"\n";
        let text = web(&format!("[bgp]\n{prefix}{prefix}"), "");
        assert_rejects(&text, "bgp.prefixes[1].prefix", &["\"198.18.100.0/24\"", "bgp.prefixes[0]"]);
    }

    #[test]
    fn bgp_defaults_and_prefix_min_healthy_inherit() {
        let text = web(
            "[bgp]\nmin_healthy = 2\nnamespace = \"\"\n[[bgp.prefixes]]\nprefix = \"198.18.100.0/24\"",
            "",
        );
        let bgp = accept(&text).config.bgp.unwrap();
        assert_eq!(bgp.vtysh, PathBuf::from("/usr/bin/vtysh"));
        assert_eq!((bgp.vty_socket, bgp.namespace), (None, None));
        assert_eq!(bgp.reconcile_interval, Duration::from_secs(5));
        assert_eq!(
            (bgp.hold_down, bgp.vtysh_timeout, bgp.drain_time),
            (Duration::from_secs(5), Duration::from_secs(5), Duration::from_secs(3))
        );
        assert_eq!(bgp.damping, DampingConfig::default());
        assert_eq!(
            bgp.prefixes,
            vec![BgpPrefixConfig { prefix: "198.18.100.0/24".parse().unwrap(), min_healthy: 2 }]
        );
        let bgp =
            accept(&web("[bgp]\nnamespace = \"edge\"\nvty_socket = \"/run/frr\"", "")).config.bgp.unwrap();
        assert_eq!(
            (bgp.namespace.as_deref(), bgp.vty_socket),
            (Some("edge"), Some(PathBuf::from("/run/frr")))
        );
        assert_eq!(accept(&web("", "")).config.bgp, None);
    }

    #[test]
    fn small_tables_warn_with_the_imbalance_bound() {
        let backends: String = (1..=3).map(|i| backend(&format!("198.18.2.{i}"))).collect();
        let loaded = accept(&format!("maglev_table_size = 251\n{WEB}{backends}"));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        let warning = &loaded.warnings[0];
        for part in
            ["test.toml:1:", "maglev_table_size", "251", "100 x 3", "services[0]", "1%", "use 307 or more"]
        {
            assert!(warning.contains(part), "{part:?} missing from: {warning}");
        }
        let backends: String = (1..=2).map(|i| backend(&format!("198.18.2.{i}"))).collect();
        assert_eq!(
            accept(&format!("maglev_table_size = 251\n{WEB}{backends}")).warnings,
            Vec::<String>::new()
        );
    }

    #[test]
    fn other_warnings() {
        let text = format!("{WEB}{}weight = 0\n", backend("198.18.2.11"));
        let warnings = accept(&text).warnings;
        assert!(warnings.len() == 1 && warnings[0].contains("weight 0"), "{warnings:?}");
        let warnings = accept(&web("[bgp]\n[[bgp.prefixes]]\nprefix = \"198.19.0.0/16\"", "")).warnings;
        assert!(
            warnings.len() == 1
                && warnings[0].contains("bgp.prefixes[0].prefix")
                && warnings[0].contains("covers no"),
            "{warnings:?}"
        );
        let warnings = accept("mtu = 1500\n").warnings;
        assert!(warnings.len() == 1 && warnings[0].contains("no services"), "{warnings:?}");
    }

    #[test]
    fn errors_point_at_the_line_of_the_field() {
        let text = format!("{WEB}{}{}weight = 70000\n", backend("198.18.2.11"), backend("198.18.2.12"));
        let e = reject(&text);
        let line = text.lines().position(|l| l.starts_with("weight")).unwrap() + 1;
        assert_eq!(e.location().map(|l| l.line), Some(line), "{e}");
        assert!(e.to_string().starts_with(&format!("test.toml:{line}:")), "{e}");
        // A default that breaks a rule points at the table it is missing from.
        let text = web("", "check = { type = \"tcp\", port = 80, interval = \"500ms\" }");
        let line = text.lines().position(|l| l.starts_with("check")).unwrap() + 1;
        assert_eq!(reject(&text).location().map(|l| l.line), Some(line));
    }
}
