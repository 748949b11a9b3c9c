//! What the kernel knows about our interface and next hops, read on the control thread.
//!
//! Interface facts come from sysfs; addresses, routes and neighbours from iproute2's JSON output
//! (`ip -j`), which is stable, documented and already on every box that runs FRR. This is the slow
//! path: it runs at startup and once per refresh interval, never per packet.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;

/// The interface fwd forwards on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub ipv4: Option<Ipv4Addr>,
    /// A global (not link-local) IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// Receive queues (channels): one worker binds each.
    pub rx_queues: usize,
}

fn read_sys(name: &str, file: &str) -> Result<String> {
    let path = Path::new("/sys/class/net").join(name).join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct LinkAddrs {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("ip").arg("-j").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip -j {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

/// Reads the interface's facts; a clear error if it does not exist.
pub fn interface(name: &str) -> Result<Interface> {
    if !Path::new("/sys/class/net").join(name).exists() {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        bail!("interface {name:?} does not exist (interfaces here: {})", names.join(", "));
    }
    let mac_text = read_sys(name, "address")?;
    let mac = parse_mac(&mac_text).with_context(|| format!("interface {name}: bad MAC {mac_text:?}"))?;
    let ifindex = read_sys(name, "ifindex")?.parse().context("ifindex")?;
    let mtu = read_sys(name, "mtu")?.parse::<u32>().context("mtu")?.min(u32::from(u16::MAX)) as u16;
    let rx_queues = std::fs::read_dir(Path::new("/sys/class/net").join(name).join("queues"))
        .map(|d| {
            d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count()
        })
        .unwrap_or(1)
        .max(1);
    let links: Vec<LinkAddrs> = serde_json::from_value(ip_json(&["addr", "show", "dev", name])?)?;
    let mut ipv4 = None;
    let mut ipv6 = None;
    for a in links.iter().flat_map(|l| &l.addr_info) {
        match (a.family.as_str(), a.local.parse::<IpAddr>()) {
            ("inet", Ok(IpAddr::V4(v4))) if ipv4.is_none() => ipv4 = Some(v4),
            ("inet6", Ok(IpAddr::V6(v6))) if ipv6.is_none() && a.scope != "link" => ipv6 = Some(v6),
            _ => {}
        }
    }
    Ok(Interface { name: name.to_string(), ifindex, mac, mtu, ipv4, ipv6, rx_queues })
}

#[derive(Deserialize)]
struct Neighbour {
    dst: String,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Usable neighbour entries on `dev`: address -> MAC (not FAILED or INCOMPLETE).
pub fn neighbours(dev: &str) -> Result<HashMap<IpAddr, [u8; 6]>> {
    let list: Vec<Neighbour> = serde_json::from_value(ip_json(&["neigh", "show", "dev", dev])?)?;
    Ok(list
        .into_iter()
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .filter_map(|n| Some((n.dst.parse().ok()?, parse_mac(n.lladdr.as_deref()?)?)))
        .collect())
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    gateway: Option<String>,
}

/// The next hop towards `addr`: the route's gateway, or `addr` itself when it is on-link.
pub fn next_hop(addr: IpAddr) -> Result<IpAddr> {
    let routes: Vec<Route> = serde_json::from_value(ip_json(&["route", "get", &addr.to_string()])?)?;
    Ok(routes.into_iter().find_map(|r| r.gateway.and_then(|g| g.parse().ok())).unwrap_or(addr))
}

/// Makes the kernel resolve `addr`'s MAC (ARP or ND) by sending it one UDP datagram to the
/// discard port; the reply does not matter, the resolution does.
pub fn solicit(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(b"fwd", SocketAddr::new(addr, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:00:00:01:0a"), Some([2, 0, 0, 0, 1, 0x0a]));
        assert_eq!(parse_mac("02:00:00:00:01"), None);
        assert_eq!(parse_mac("02:00:00:00:01:0a:0b"), None);
        assert_eq!(parse_mac("zz:00:00:00:01:0a"), None);
    }

    #[test]
    fn loopback_is_readable_and_missing_interfaces_are_named() {
        let lo = interface("lo").unwrap();
        assert_eq!(lo.name, "lo");
        assert_eq!(lo.ipv4, Some(Ipv4Addr::LOCALHOST));
        let err = interface("fwd-no-such-if").unwrap_err().to_string();
        assert!(
            err.contains("fwd-no-such-if") && err.contains("does not exist") && err.contains("lo"),
            "{err}"
        );
    }
}
