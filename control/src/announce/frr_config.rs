//! Reads bgpd's `show running-config`: which prefixes the default BGP instance has `network`
//! statements for, in `address-family ipv4 unicast` and `ipv6 unicast`.
//!
//! Only the default instance counts (`router bgp ASN`, not `... vrf NAME` or `... view NAME`),
//! because `router bgp` without a number, which fwd sends, selects it. Prefixes are compared as
//! typed values, so FRR's spelling of an address never matters.

use crate::config::IpPrefix;
use std::collections::BTreeSet;

/// What bgpd's running configuration says about announcements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrrBgpState {
    /// A default-instance `router bgp ASN` exists.
    pub has_instance: bool,
    /// Prefixes with a `network` statement in that instance, both families.
    pub networks: BTreeSet<IpPrefix>,
}

/// The text does not look like a complete `show running-config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunningConfigError {
    /// No final `end` line: cut short, or not a running-config at all.
    #[error("no final `end` line (cut short?); first line {first_line:?}")]
    Incomplete { first_line: String },
}

/// Parses `show running-config` as printed by `vtysh -d bgpd`.
pub fn parse_running_config(text: &str) -> Result<FrrBgpState, RunningConfigError> {
    if text.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim) != Some("end") {
        return Err(RunningConfigError::Incomplete {
            first_line: text.lines().next().unwrap_or("").chars().take(80).collect(),
        });
    }
    let mut state = FrrBgpState::default();
    let mut in_default_instance = false;
    // Some(true) in ipv4 unicast, Some(false) in ipv6 unicast, None elsewhere.
    let mut family_v4: Option<bool> = None;
    for line in text.lines() {
        let top_level = !line.starts_with(char::is_whitespace);
        let words: Vec<&str> = line.split_whitespace().collect();
        if top_level {
            family_v4 = None;
            in_default_instance =
                matches!(words.as_slice(), ["router", "bgp", asn] if asn.parse::<u32>().is_ok());
            state.has_instance |= in_default_instance;
            continue;
        }
        if !in_default_instance {
            continue;
        }
        match words.as_slice() {
            ["address-family", "ipv4", "unicast"] => family_v4 = Some(true),
            ["address-family", "ipv6", "unicast"] => family_v4 = Some(false),
            ["address-family", ..] | ["exit-address-family"] => family_v4 = None,
            ["network", prefix, ..] => {
                // Other forms (FRR normalises `mask` to a length) cannot be fwd's.
                let Ok(prefix) = prefix.parse::<IpPrefix>() else { continue };
                if family_v4 == Some(matches!(prefix, IpPrefix::V4(_))) {
                    state.networks.insert(prefix);
                }
            }
            _ => {}
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from FRR 8.4.4 (`vtysh --vty_socket D -d bgpd -c 'show running-config'`) with
    /// networks in both families, a route-map on one, a neighbour, and a VRF instance whose
    /// networks must not count.
    const CAPTURED: &str = include_str!("testdata/frr-8.4.4-running-config.txt");

    fn prefixes(list: &[&str]) -> BTreeSet<IpPrefix> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn reads_the_default_instance_networks_of_a_real_running_config() {
        let state = parse_running_config(CAPTURED).unwrap();
        assert!(state.has_instance);
        assert_eq!(
            state.networks,
            prefixes(&[
                "198.18.100.0/24",
                "198.18.100.1/32",
                "198.18.101.7/32",
                "fd00:18:100::/64",
                "fd00:18:100::1/128"
            ])
        );
        assert!(CAPTURED.contains("network 198.18.200.1/32"), "the fixture has a VRF network");
    }

    #[test]
    fn no_instance_no_networks() {
        let text = "Building configuration...\n\nCurrent configuration:\n!\nfrr version 8.4.4\n\
                    frr defaults traditional\nhostname vm\n!\nend\n";
        assert_eq!(parse_running_config(text).unwrap(), FrrBgpState::default());
        let vrf_only =
            "router bgp 65009 vrf blue\n address-family ipv4 unicast\n  network 198.18.200.1/32\n \
                        exit-address-family\nexit\n!\nend\n";
        assert_eq!(parse_running_config(vrf_only).unwrap(), FrrBgpState::default());
    }

    #[test]
    fn networks_outside_unicast_families_or_in_the_wrong_family_do_not_count() {
        let text = "router bgp 65001\n address-family ipv4 multicast\n  network 198.18.1.0/24\n \
                    exit-address-family\n !\n address-family ipv6 unicast\n  network 198.18.2.0/24\n  \
                    network fd00:18::/64 route-map X\n exit-address-family\n !\n address-family ipv4 unicast\n  \
                    network 198.18.3.0 mask 255.255.255.0\n  network 198.18.4.0/24\n exit-address-family\nexit\n!\nend";
        let state = parse_running_config(text).unwrap();
        assert_eq!(state.networks, prefixes(&["fd00:18::/64", "198.18.4.0/24"]));
    }

    #[test]
    fn a_cut_short_output_is_an_error() {
        let cut = &CAPTURED[..CAPTURED.find("exit-address-family").unwrap()];
        let err = parse_running_config(cut).unwrap_err();
        assert!(err.to_string().contains("Building configuration"), "{err}");
        assert!(parse_running_config("").is_err());
    }
}
