//! What the kernel knows about our interface and next hops, read on the control thread.
//!
//! Interface facts come from sysfs; addresses and routes from iproute2's JSON output (`ip -j`),
//! which is stable, documented and already on every box that runs FRR; neighbours, read every
//! refresh interval, from an rtnetlink dump. This is the slow path: it runs at startup and once
//! per refresh interval, never per packet.

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

/// Usable neighbour entries on the interface with index `ifindex`: address -> MAC (what `ip neigh`
/// lists, less FAILED and INCOMPLETE), from one rtnetlink dump (`RTM_GETNEIGH`). Read every refresh interval, so it is a
/// netlink socket and not `ip neigh` (a fork and exec of iproute2 five times a second).
pub fn neighbours(ifindex: u32) -> Result<HashMap<IpAddr, [u8; 6]>> {
    use rustix::net::{netlink, recv, sendto, socket, AddressFamily, RecvFlags, SendFlags, SocketType};
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None).context("opening a netlink socket")?;
    // nlmsghdr (len, type, flags, seq, pid) + ndmsg (family AF_UNSPEC: both families, the rest 0).
    let mut request = Vec::with_capacity(NLMSG_HDR + NDMSG_LEN);
    request.extend_from_slice(&((NLMSG_HDR + NDMSG_LEN) as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[0u8; NDMSG_LEN]);
    sendto(&fd, &request, SendFlags::empty(), &netlink::SocketAddrNetlink::new(0, 0))
        .context("asking the kernel for its neighbours (netlink)")?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, _) = recv(&fd, &mut buf[..], RecvFlags::empty()).context("reading neighbours (netlink)")?;
        if len == 0 {
            bail!("netlink: the neighbour dump ended without NLMSG_DONE");
        }
        if parse_neighbour_dump(&buf[..len.min(buf.len())], ifindex, &mut out)? {
            return Ok(out);
        }
    }
}

const NLMSG_HDR: usize = 16;
const NDMSG_LEN: usize = 12;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Adds the usable entries of `ifindex` in one datagram of an `RTM_GETNEIGH` dump to `out`;
/// `Ok(true)` once the dump is done.
fn parse_neighbour_dump(mut msgs: &[u8], ifindex: u32, out: &mut HashMap<IpAddr, [u8; 6]>) -> Result<bool> {
    while msgs.len() >= NLMSG_HDR {
        let len = u32_at(msgs, 0).unwrap_or(0) as usize;
        let kind = u16_at(msgs, 4).unwrap_or(0);
        if len < NLMSG_HDR || len > msgs.len() {
            bail!("netlink: a truncated message in the neighbour dump");
        }
        let body = &msgs[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| -(e as i32));
                if errno != 0 {
                    bail!("netlink: the neighbour dump failed: {}", std::io::Error::from_raw_os_error(errno));
                }
            }
            RTM_NEWNEIGH if body.len() >= NDMSG_LEN => {
                let family = body[0];
                let index = u32_at(body, 4).unwrap_or(0);
                let state = u16_at(body, 8).unwrap_or(0);
                // What `ip neigh show` lists (any state but NONE and NOARP, which loopback and
                // point-to-point entries have), less FAILED and INCOMPLETE.
                let listed = state & 0xff & !NUD_NOARP != 0;
                if index == ifindex && listed && state & (NUD_INCOMPLETE | NUD_FAILED) == 0 {
                    let (mut dst, mut mac) = (None, None);
                    let mut attrs = &body[NDMSG_LEN..];
                    while attrs.len() >= 4 {
                        let alen = u16_at(attrs, 0).unwrap_or(0) as usize;
                        let atype = u16_at(attrs, 2).unwrap_or(0) & 0x3fff;
                        if alen < 4 || alen > attrs.len() {
                            break;
                        }
                        let data = &attrs[4..alen];
                        match (atype, family as i32, data.len()) {
                            (NDA_DST, libc_af::INET, 4) => {
                                dst = Some(IpAddr::from(<[u8; 4]>::try_from(data).unwrap_or_default()))
                            }
                            (NDA_DST, libc_af::INET6, 16) => {
                                dst = Some(IpAddr::from(<[u8; 16]>::try_from(data).unwrap_or_default()))
                            }
                            (NDA_LLADDR, _, 6) => mac = <[u8; 6]>::try_from(data).ok(),
                            _ => {}
                        }
                        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
                    }
                    if let (Some(dst), Some(mac)) = (dst, mac) {
                        out.insert(dst, mac);
                    }
                }
            }
            _ => {}
        }
        msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
    }
    Ok(false)
}

/// Address family numbers as netlink reports them.
mod libc_af {
    pub const INET: i32 = 2;
    pub const INET6: i32 = 10;
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
    fn neighbours_come_from_netlink_like_ip_neigh_shows_them() {
        // Whatever `ip neigh` lists as usable on some interface, the netlink dump lists too.
        let lo = interface("lo").unwrap();
        let all = neighbours(lo.ifindex).unwrap();
        assert!(all.is_empty(), "loopback has no neighbours: {all:?}");
        for link in std::fs::read_dir("/sys/class/net").unwrap().filter_map(|e| e.ok()) {
            let name = link.file_name().to_string_lossy().into_owned();
            let Ok(iface) = interface(&name) else { continue };
            let Ok(listed) = ip_json(&["neigh", "show", "dev", &name]) else { continue };
            let from_ip: Vec<(String, Option<String>, Vec<String>)> = listed
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let text = |k: &str| n.get(k).and_then(|v| v.as_str()).map(str::to_string);
                    let state = n
                        .get("state")
                        .and_then(|v| v.as_array())
                        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    (text("dst").unwrap_or_default(), text("lladdr"), state)
                })
                .collect();
            let from_netlink = neighbours(iface.ifindex).unwrap();
            for (dst, lladdr, state) in from_ip {
                let usable = !state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
                let (Ok(addr), Some(mac)) = (dst.parse::<IpAddr>(), lladdr.as_deref().and_then(parse_mac))
                else {
                    continue;
                };
                if usable && !state.iter().any(|s| s == "STALE" || s == "DELAY" || s == "PROBE") {
                    assert_eq!(from_netlink.get(&addr), Some(&mac), "{name}: {addr}");
                }
            }
        }
    }

    #[test]
    fn a_neighbour_dump_is_parsed_and_filtered_by_interface_and_state() {
        fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
            let mut a = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(data);
            a.resize((a.len() + 3) & !3, 0);
            a
        }
        fn neigh(family: u8, ifindex: u32, state: u16, dst: &[u8], mac: Option<[u8; 6]>) -> Vec<u8> {
            let mut body = vec![family, 0, 0, 0];
            body.extend_from_slice(&ifindex.to_ne_bytes());
            body.extend_from_slice(&state.to_ne_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend(attr(NDA_DST, dst));
            if let Some(mac) = mac {
                body.extend(attr(NDA_LLADDR, &mac));
            }
            message(RTM_NEWNEIGH, &body)
        }
        fn message(kind: u16, body: &[u8]) -> Vec<u8> {
            let mut m = ((NLMSG_HDR + body.len()) as u32).to_ne_bytes().to_vec();
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(body);
            m
        }
        let mac = [2, 0xfb, 0, 4, 0, 1];
        let mut dump = neigh(2, 7, 0x80, &[198, 18, 2, 100], Some(mac));
        dump.extend(neigh(2, 8, 0x80, &[198, 18, 2, 101], Some(mac)));
        dump.extend(neigh(2, 7, NUD_FAILED, &[198, 18, 2, 102], Some(mac)));
        dump.extend(neigh(2, 7, NUD_INCOMPLETE, &[198, 18, 2, 103], None));
        dump.extend(neigh(2, 7, NUD_NOARP, &[198, 18, 2, 104], Some([0; 6])));
        let v6: Ipv6Addr = "fd00:18:2::a00".parse().unwrap();
        dump.extend(neigh(10, 7, 0x02, &v6.octets(), Some(mac)));
        let mut out = HashMap::new();
        assert!(!parse_neighbour_dump(&dump, 7, &mut out).unwrap());
        let want: HashMap<IpAddr, [u8; 6]> =
            [("198.18.2.100".parse().unwrap(), mac), (IpAddr::V6(v6), mac)].into_iter().collect();
        assert_eq!(out, want);
        assert!(parse_neighbour_dump(&message(NLMSG_DONE, &[0; 4]), 7, &mut out).unwrap());
        assert!(parse_neighbour_dump(&dump[..10], 7, &mut out).is_ok());
        assert!(parse_neighbour_dump(&message(NLMSG_ERROR, &(-1i32).to_ne_bytes()), 7, &mut out).is_err());
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
