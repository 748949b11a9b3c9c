//! Which prefixes fwd announces, and whether each can serve right now.
//!
//! Every configured `bgp.prefixes` entry covers the services whose VIPs it contains; a VIP that
//! no configured prefix contains gets its own /32 or /128. A prefix can serve when every service
//! on it can: at least the prefix's `min_healthy` healthy backends, or a fallback that can serve.
//! "Every" because a box that announces a prefix draws all of its traffic: a service it cannot
//! serve there would be blackholed while other boxes could serve it.

use crate::config::{Config, IpPrefix, Ipv4Prefix, Ipv6Prefix};
use fwd_dataplane::snapshot::ServiceKey;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What the health checks say about one service, for announcing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceServing {
    /// Backends currently up (healthy, weight above 0, not drained).
    pub healthy_backends: u32,
    /// The service has a fallback with at least one backend up.
    pub fallback_can_serve: bool,
}

/// The host prefix of one address: /32 or /128.
pub fn host_prefix(addr: IpAddr) -> IpPrefix {
    match addr {
        IpAddr::V4(addr) => IpPrefix::V4(Ipv4Prefix { addr, len: 32 }),
        IpAddr::V6(addr) => IpPrefix::V6(Ipv6Prefix { addr, len: 128 }),
    }
}

/// Every prefix fwd announces under `config`, sorted, with whether it can serve. A configured
/// prefix that covers no service is listed as unable to serve, so it is withdrawn if present.
/// Without `[bgp]` the list is empty.
pub fn plan_prefixes(
    config: &Config,
    healthy: &dyn Fn(ServiceKey) -> ServiceServing,
) -> Vec<(IpPrefix, bool)> {
    let Some(bgp) = &config.bgp else { return Vec::new() };
    // Per prefix: Some(min_healthy) for configured ones, None for host prefixes (bgp.min_healthy),
    // and whether every service seen so far can serve (None: no service yet).
    let mut plan: BTreeMap<IpPrefix, (u32, Option<bool>)> = BTreeMap::new();
    for configured in &bgp.prefixes {
        plan.insert(configured.prefix, (configured.min_healthy, None));
    }
    for service in &config.services {
        let serving = healthy(service.key());
        let mut covering: Vec<IpPrefix> =
            bgp.prefixes.iter().map(|p| p.prefix).filter(|p| p.contains(service.vip)).collect();
        if covering.is_empty() {
            covering.push(host_prefix(service.vip));
        }
        for prefix in covering {
            let (min_healthy, all_serve) = plan.entry(prefix).or_insert((bgp.min_healthy, None));
            let can = serving.healthy_backends >= *min_healthy || serving.fallback_can_serve;
            *all_serve = Some(all_serve.unwrap_or(true) && can);
        }
    }
    plan.into_iter().map(|(prefix, (_, all_serve))| (prefix, all_serve.unwrap_or(false))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    const CONFIG: &str = r#"
[bgp]
min_healthy = 2
  [[bgp.prefixes]]
  prefix = "198.18.100.0/24"
  min_healthy = 1
  [[bgp.prefixes]]
  prefix = "198.18.200.0/24"

[[services]]
vip = "198.18.100.1"
protocol = "tcp"
port = 80
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"
  [[services.backends]]
  address = "198.18.2.12"

[[services]]
vip = "198.18.100.2"
protocol = "tcp"
port = 80
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"

[[services]]
vip = "198.18.101.1"
protocol = "tcp"
port = 80
mode = "ipip"
  [[services.backends]]
  address = "198.18.2.11"
  [[services.backends]]
  address = "198.18.2.12"
  [[services.fallback]]
  address = "198.18.3.11"

[[services]]
vip = "198.18.101.1"
protocol = "udp"
port = 53
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"
  [[services.backends]]
  address = "198.18.2.12"

[[services]]
vip = "fd00:18:100::1"
protocol = "tcp"
port = 443
mode = "l2"
  [[services.backends]]
  address = "fd00:18:2::11"
  [[services.backends]]
  address = "fd00:18:2::12"
"#;

    fn plan(healthy: &dyn Fn(ServiceKey) -> ServiceServing) -> Vec<(String, bool)> {
        let config = parse_config(CONFIG, "plan.toml").unwrap().config;
        plan_prefixes(&config, healthy).into_iter().map(|(p, can)| (p.to_string(), can)).collect()
    }

    fn serving(n: u32) -> ServiceServing {
        ServiceServing { healthy_backends: n, fallback_can_serve: false }
    }

    #[test]
    fn vips_share_covering_prefixes_or_get_host_prefixes() {
        let all_up = plan(&|_| serving(2));
        assert_eq!(
            all_up,
            [
                ("198.18.100.0/24".to_string(), true),
                ("198.18.101.1/32".to_string(), true),
                ("198.18.200.0/24".to_string(), false),
                ("fd00:18:100::1/128".to_string(), true),
            ]
        );
    }

    #[test]
    fn min_healthy_is_per_prefix_and_every_service_must_serve() {
        // One healthy backend each: enough for the /24 (min 1), not for host prefixes (min 2).
        let one = plan(&|_| serving(1));
        assert_eq!(one[0], ("198.18.100.0/24".to_string(), true));
        assert_eq!(one[1], ("198.18.101.1/32".to_string(), false));
        assert_eq!(one[3], ("fd00:18:100::1/128".to_string(), false));
        // 198.18.100.2 down takes the shared /24 down.
        let one_down = plan(&|k| serving(if k.vip.to_string() == "198.18.100.2" { 0 } else { 2 }));
        assert_eq!(one_down[0], ("198.18.100.0/24".to_string(), false));
        assert_eq!(one_down[1], ("198.18.101.1/32".to_string(), true));
    }

    #[test]
    fn a_fallback_that_can_serve_keeps_the_prefix() {
        let tcp_on_fallback = |k: ServiceKey| {
            if k.port == Some(80) && k.vip.to_string() == "198.18.101.1" {
                ServiceServing { healthy_backends: 0, fallback_can_serve: true }
            } else {
                serving(2)
            }
        };
        assert_eq!(plan(&tcp_on_fallback)[1], ("198.18.101.1/32".to_string(), true));
        let udp_down = |k: ServiceKey| serving(if k.port == Some(53) { 0 } else { 2 });
        assert_eq!(plan(&udp_down)[1], ("198.18.101.1/32".to_string(), false));
    }

    #[test]
    fn no_bgp_section_no_prefixes() {
        let mut config = parse_config(CONFIG, "t").unwrap().config;
        config.bgp = None;
        assert!(plan_prefixes(&config, &|_| serving(9)).is_empty());
    }
}
