//! The forwarding snapshot: everything a worker needs to place a packet, immutable once built.
//!
//! Control builds a new [`Snapshot`] for every change (health, drain, reload, next-hop MACs) and
//! publishes it through an `ArcSwap`; a worker loads it once per batch, so a batch never sees
//! half of a change, and workers never lock.
//!
//! Backends are global to the snapshot and addressed by [`BackendIdx`]. Control keeps a backend's
//! index stable across snapshots while the backend exists, and gives every backend a `tag` derived
//! from its identity (service and address), so a connection-table entry that remembers
//! `(index, tag)` can tell in O(1) whether its backend is still the same one.

use crate::flow::{ip_to_16, L4Proto};
use crate::maglev::MaglevTable;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Index of a backend in [`Snapshot::backends`].
pub type BackendIdx = u32;

/// How packets reach a backend: always direct server return, replies bypass fwd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// Rewrite only the MAC addresses (LVS-DR); backend on the same L2 segment.
    L2,
    /// IP-in-IP: IPv4-in-IPv4, IPv6-in-IPv6, or mixed (4-in-6, 6-in-4) by the backend's family.
    Ipip,
    /// IP in UDP (GUE variant 1: the UDP payload is the inner IP packet), to `gue_port`.
    Gue,
}

impl ForwardMode {
    pub const fn name(self) -> &'static str {
        match self {
            ForwardMode::L2 => "l2",
            ForwardMode::Ipip => "ipip",
            ForwardMode::Gue => "gue",
        }
    }
}

/// What to do with IP fragments addressed to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FragmentPolicy {
    /// Hash every fragment of a datagram (first or not) on the 3-tuple (source, destination,
    /// protocol) so that they all reach one backend, as Maglev does. Unfragmented packets of the
    /// same flow use the service's normal key and may reach another backend.
    #[default]
    Hash3Tuple,
    /// Drop fragments (counted as `fragment_policy`).
    Drop,
}

/// Service identity: a VIP, a protocol and a port (`None`: every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub proto: L4Proto,
    pub port: Option<u16>,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.vip, self.port) {
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}/{}", self.proto.name()),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}/{}", self.proto.name()),
            (IpAddr::V4(a), None) => write!(f, "{a}:*/{}", self.proto.name()),
            (IpAddr::V6(a), None) => write!(f, "[{a}]:*/{}", self.proto.name()),
        }
    }
}

/// Whether a backend takes flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Healthy with a weight: in the Maglev table, takes new and existing flows.
    Up,
    /// Healthy but weight 0 or drained by the operator: keeps its tracked flows, takes no new ones.
    Drained,
    /// Failed its health check: out of the table; its tracked flows re-hash.
    Down,
}

/// A backend of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    /// Part of the identity for hashing and health checks; DSR never rewrites ports.
    pub port: Option<u16>,
    /// Index of its service in [`Snapshot::services`].
    pub service: u32,
    /// Identity of (service, backend address, port); see the module docs.
    pub tag: u32,
    pub state: BackendState,
    /// For `l2`: the backend's MAC. For tunnels: the MAC of the gateway towards the backend.
    /// `None` until resolved: packets to it are dropped as `next_hop_unresolved`.
    pub next_hop_mac: Option<[u8; 6]>,
}

/// A service and its Maglev table.
#[derive(Clone, Debug)]
pub struct Service {
    pub key: ServiceKey,
    pub mode: ForwardMode,
    /// `false`: hash without the source port (all of a client's connections to one backend).
    pub hash_src_port: bool,
    pub fragments: FragmentPolicy,
    /// Backends in canonical (key) order; the Maglev table's entries index this list.
    pub members: Vec<BackendIdx>,
    pub table: MaglevTable,
    /// Used when `table` is empty (no backend up): backends at another site, tunnelled.
    pub fallback: Option<Fallback>,
}

/// Where a service sends new flows when none of its own backends can serve.
#[derive(Clone, Debug)]
pub struct Fallback {
    pub mode: ForwardMode,
    pub members: Vec<BackendIdx>,
    pub table: MaglevTable,
}

/// A range of tunnel source addresses: flow `h` uses `base + (h mod count)`, so backends'
/// receive-side hashing (RSS on the outer header) spreads the flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRange<A> {
    pub base: A,
    pub count: u32,
}

/// Facts about this box that rewriting needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInfo {
    /// Our interface's MAC: the source of every frame we send.
    pub mac: [u8; 6],
    /// Layer-3 MTU of the interface: encapsulated packets must fit.
    pub mtu: u16,
    /// UDP destination port of GUE packets.
    pub gue_port: u16,
    pub tunnel_src_v4: Option<SourceRange<Ipv4Addr>>,
    pub tunnel_src_v6: Option<SourceRange<Ipv6Addr>>,
    /// Answer ICMP echo requests to VIPs ourselves.
    pub answer_echo: bool,
    /// Per-worker budget of generated ICMP errors per second.
    pub icmp_rate_per_sec: u32,
}

impl Default for LocalInfo {
    fn default() -> Self {
        LocalInfo {
            mac: [0; 6],
            mtu: 1500,
            gue_port: 6080,
            tunnel_src_v4: None,
            tunnel_src_v6: None,
            answer_echo: true,
            icmp_rate_per_sec: 1000,
        }
    }
}

/// The result of looking up a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipMatch {
    /// A service: its index in [`Snapshot::services`].
    Service(u32),
    /// The address is a VIP, but no service has this protocol and port.
    VipOnly,
    /// Not a VIP: the kernel's.
    NotVip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ExactKey {
    addr: [u8; 16],
    proto: u8,
    port: u16,
}

/// Everything a worker reads, built by control. Immutable once built.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every publish; workers log it, tests use it.
    pub generation: u64,
    pub local: LocalInfo,
    pub services: Vec<Service>,
    pub backends: Vec<Backend>,
    /// (vip, proto, port) -> service. An all-ports service is stored under port 0, which TCP and
    /// UDP never carry as a destination, and looked up second.
    exact: FxHashMap<ExactKey, u32>,
    /// Every VIP address, with a count of its services.
    vips: FxHashMap<[u8; 16], u32>,
}

impl Snapshot {
    /// Builds the lookup index over `services`. Later services with the same key are ignored;
    /// control rejects duplicates before building.
    pub fn new(generation: u64, local: LocalInfo, services: Vec<Service>, backends: Vec<Backend>) -> Self {
        let mut exact = FxHashMap::default();
        let mut vips = FxHashMap::default();
        for (i, s) in services.iter().enumerate() {
            let addr = ip_to_16(s.key.vip);
            exact.entry(ExactKey { addr, proto: s.key.proto.number(), port: s.key.port.unwrap_or(0) })
                .or_insert(i as u32);
            *vips.entry(addr).or_insert(0) += 1;
        }
        Snapshot { generation, local, services, backends, exact, vips }
    }

    /// Finds the service for a destination address (16-byte form), protocol number and port.
    #[inline]
    pub fn lookup(&self, dst: &[u8; 16], proto: u8, port: u16) -> VipMatch {
        if let Some(&i) = self.exact.get(&ExactKey { addr: *dst, proto, port }) {
            if port != 0 {
                return VipMatch::Service(i);
            }
        }
        if let Some(&i) = self.exact.get(&ExactKey { addr: *dst, proto, port: 0 }) {
            return VipMatch::Service(i);
        }
        if self.vips.contains_key(dst) {
            VipMatch::VipOnly
        } else {
            VipMatch::NotVip
        }
    }

    /// Is this (16-byte form) address a VIP?
    #[inline]
    pub fn is_vip(&self, addr: &[u8; 16]) -> bool {
        self.vips.contains_key(addr)
    }

    /// Every VIP address: what the XDP program's map must hold.
    pub fn vip_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.vips.keys().map(|a| crate::flow::ip_from_16(*a)).collect();
        v.sort_unstable();
        v
    }

    /// The backend `idx` if it still is the one tagged `tag` and may keep existing flows.
    #[inline]
    pub fn tracked_backend(&self, idx: BackendIdx, tag: u32) -> Option<&Backend> {
        self.backends.get(idx as usize).filter(|b| b.tag == tag && b.state != BackendState::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::{BackendKey, MaglevMember};

    fn service(vip: &str, proto: L4Proto, port: Option<u16>) -> Service {
        let table = MaglevTable::build(
            &[MaglevMember { key: BackendKey::new("198.18.1.1".parse().unwrap(), None), weight: 1 }],
            251,
        )
        .unwrap();
        Service {
            key: ServiceKey { vip: vip.parse().unwrap(), proto, port },
            mode: ForwardMode::L2,
            hash_src_port: true,
            fragments: FragmentPolicy::Hash3Tuple,
            members: vec![0],
            table,
            fallback: None,
        }
    }

    #[test]
    fn lookup_prefers_exact_port_then_all_ports() {
        let s = Snapshot::new(
            1,
            LocalInfo::default(),
            vec![
                service("198.18.100.1", L4Proto::Tcp, Some(80)),
                service("198.18.100.1", L4Proto::Tcp, None),
                service("fd00:18:100::1", L4Proto::Udp, Some(53)),
            ],
            vec![],
        );
        let v4 = ip_to_16("198.18.100.1".parse().unwrap());
        let v6 = ip_to_16("fd00:18:100::1".parse().unwrap());
        assert_eq!(s.lookup(&v4, 6, 80), VipMatch::Service(0));
        assert_eq!(s.lookup(&v4, 6, 443), VipMatch::Service(1));
        assert_eq!(s.lookup(&v4, 17, 80), VipMatch::VipOnly);
        assert_eq!(s.lookup(&v6, 17, 53), VipMatch::Service(2));
        assert_eq!(s.lookup(&v6, 17, 54), VipMatch::VipOnly);
        assert_eq!(s.lookup(&ip_to_16("198.18.0.9".parse().unwrap()), 6, 80), VipMatch::NotVip);
        assert_eq!(s.vip_addresses().len(), 2);
        assert_eq!(s.services[1].key.to_string(), "198.18.100.1:*/tcp");
        assert_eq!(s.services[2].key.to_string(), "[fd00:18:100::1]:53/udp");
    }
}
