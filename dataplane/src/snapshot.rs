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

use crate::flow::{ip_to_16, FlowKey, L4Proto};
use crate::maglev::MaglevTable;
use crate::rewrite::Tunnel;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

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
    /// How packets reach it: the service's mode, or its fallback's.
    pub mode: ForwardMode,
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
    /// Shared between snapshots while its inputs do not change, so a publish rebuilds only the
    /// tables of services that changed.
    pub table: Arc<MaglevTable>,
    /// Used when `table` is empty (no backend up): backends at another site, tunnelled.
    pub fallback: Option<Fallback>,
}

/// Where a service sends new flows when none of its own backends can serve.
#[derive(Clone, Debug)]
pub struct Fallback {
    pub mode: ForwardMode,
    pub members: Vec<BackendIdx>,
    /// Shared between snapshots while its inputs do not change, so a publish rebuilds only the
    /// tables of services that changed.
    pub table: Arc<MaglevTable>,
}

/// A range of tunnel source addresses: the high half `h` of a flow's hash picks
/// `base + (h * count >> 32)`, so backends' receive-side hashing (RSS on the outer header) spreads
/// the flows.
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

impl LocalInfo {
    /// The tunnel source for a flow hash and an outer family: spread over the configured range by
    /// the high half of the hash (the low half picks the Maglev slot).
    pub fn tunnel_source(&self, v6: bool, hash: u64) -> Option<IpAddr> {
        if v6 {
            self.tunnel_source_v6(hash).map(|a| IpAddr::V6(Ipv6Addr::from(a)))
        } else {
            self.tunnel_source_v4(hash).map(|a| IpAddr::V4(Ipv4Addr::from(a)))
        }
    }

    /// The tunnel of a flow to `dst`: the source is [`LocalInfo::tunnel_source`] of `dst`'s
    /// family. Built straight as header bytes: the worker calls it per packet.
    #[inline(always)]
    pub fn tunnel_to(&self, dst: IpAddr, hash: u64) -> Option<Tunnel> {
        match dst {
            IpAddr::V4(dst) => Some(Tunnel::V4 { src: self.tunnel_source_v4(hash)?, dst: dst.into() }),
            IpAddr::V6(dst) => Some(Tunnel::V6 { src: self.tunnel_source_v6(hash)?, dst: dst.into() }),
        }
    }

    // Multiply-shift, not `%`: a 64-bit division per packet costs more than the whole rewrite.
    #[inline(always)]
    fn tunnel_source_v4(&self, hash: u64) -> Option<u32> {
        let r = self.tunnel_src_v4?;
        Some(u32::from(r.base).wrapping_add(crate::hash::reduce(hash >> 32, r.count)))
    }

    #[inline(always)]
    fn tunnel_source_v6(&self, hash: u64) -> Option<u128> {
        let r = self.tunnel_src_v6?;
        let pick = crate::hash::reduce(hash >> 32, r.count);
        Some(u128::from(r.base).wrapping_add(u128::from(pick)))
    }
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

/// The destinations a worker looks up per packet, in one open-addressing table: (VIP, protocol,
/// port) -> service, (VIP, protocol) -> the fragments' service, and VIP -> its service count.
///
/// Why not a `HashMap`: with its SipHash (or Fx) over a 20-byte key and the group probing, the
/// service lookup took 13 ns per packet; here the key is one `u128` and a `u32` selector, hashed
/// by one multiply, and the table (at most half full, a few hundred bytes for a typical box)
/// answers in the first slot nearly always.
#[derive(Clone, Debug, Default)]
struct DestinationIndex {
    /// A power of two long; empty when there are no services.
    slots: Box<[IndexSlot]>,
    /// Bits of the hash that pick the home slot.
    bits: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexSlot {
    addr: u128,
    /// What kind of key and its protocol and port; [`FREE_SLOT`] in a free slot.
    selector: u32,
    value: u32,
}

const FREE_SLOT: u32 = u32::MAX;

/// Selectors: a service's (protocol, port); the fragments' (protocol); the VIP itself.
fn service_selector(proto: u8, port: u16) -> u32 {
    u32::from(proto) << 16 | u32::from(port)
}
fn fragment_selector(proto: u8) -> u32 {
    1 << 24 | u32::from(proto) << 16
}
const VIP_SELECTOR: u32 = 2 << 24;

impl DestinationIndex {
    fn build(entries: &[(u128, u32, u32)]) -> Self {
        let bits = (entries.len() * 2).max(8).next_power_of_two().trailing_zeros();
        let free = IndexSlot { addr: 0, selector: FREE_SLOT, value: 0 };
        let mut index = DestinationIndex { slots: vec![free; 1 << bits].into_boxed_slice(), bits };
        let mask = index.slots.len() - 1;
        for &(addr, selector, value) in entries {
            let mut i = index.home(addr, selector);
            while index.slots[i].selector != FREE_SLOT
                && (index.slots[i].addr, index.slots[i].selector) != (addr, selector)
            {
                i = (i + 1) & mask;
            }
            index.slots[i] = IndexSlot { addr, selector, value };
        }
        index
    }

    #[inline(always)]
    fn home(&self, addr: u128, selector: u32) -> usize {
        let folded = (addr as u64) ^ ((addr >> 64) as u64).rotate_left(29) ^ u64::from(selector) << 40;
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize
    }

    #[inline(always)]
    fn get(&self, addr: u128, selector: u32) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr, selector);
        // At most half full: a free slot always ends the probe; the bound only keeps it obvious.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if slot.selector == selector && slot.addr == addr {
                return Some(slot.value);
            }
            if slot.selector == FREE_SLOT {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    fn vips(&self) -> impl Iterator<Item = u128> + '_ {
        self.slots.iter().filter(|s| s.selector == VIP_SELECTOR).map(|s| s.addr)
    }
}

/// Everything a worker reads, built by control. Immutable once built.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every publish; workers log it, tests use it.
    pub generation: u64,
    pub local: LocalInfo,
    pub services: Vec<Service>,
    pub backends: Vec<Backend>,
    /// (vip, proto, port) -> service; an all-ports service is stored under port 0, which TCP and
    /// UDP never carry as a destination, and looked up second. (vip, proto) -> the service
    /// fragments go to: fragments after the first carry no port, so all fragments of a (VIP,
    /// protocol) go to its one service; `AMBIGUOUS` if it has several. Every VIP.
    destinations: DestinationIndex,
}

const AMBIGUOUS: u32 = u32::MAX;

impl Snapshot {
    /// Builds the lookup index over `services`. Later services with the same key are ignored;
    /// control rejects duplicates before building.
    pub fn new(generation: u64, local: LocalInfo, services: Vec<Service>, backends: Vec<Backend>) -> Self {
        let mut exact: BTreeMap<(u128, u32), u32> = BTreeMap::new();
        let mut fragments: BTreeMap<(u128, u32), u32> = BTreeMap::new();
        let mut vips: BTreeMap<u128, u32> = BTreeMap::new();
        for (i, s) in services.iter().enumerate() {
            let addr = u128::from_le_bytes(ip_to_16(s.key.vip));
            let proto = s.key.proto.number();
            fragments
                .entry((addr, fragment_selector(proto)))
                .and_modify(|e| *e = AMBIGUOUS)
                .or_insert(i as u32);
            exact.entry((addr, service_selector(proto, s.key.port.unwrap_or(0)))).or_insert(i as u32);
            *vips.entry(addr).or_insert(0) += 1;
        }
        let entries: Vec<(u128, u32, u32)> = exact
            .into_iter()
            .chain(fragments)
            .map(|((addr, selector), value)| (addr, selector, value))
            .chain(vips.into_iter().map(|(addr, count)| (addr, VIP_SELECTOR, count)))
            .collect();
        let destinations = DestinationIndex::build(&entries);
        Snapshot { generation, local, services, backends, destinations }
    }

    /// Finds the service for a destination address (16-byte form), protocol number and port.
    /// Inlined: every packet calls it, and as a call it cost a third more than its probe.
    #[inline(always)]
    pub fn lookup(&self, dst: &[u8; 16], proto: u8, port: u16) -> VipMatch {
        let addr = u128::from_le_bytes(*dst);
        if port != 0 {
            if let Some(i) = self.destinations.get(addr, service_selector(proto, port)) {
                return VipMatch::Service(i);
            }
        }
        if let Some(i) = self.destinations.get(addr, service_selector(proto, 0)) {
            return VipMatch::Service(i);
        }
        if self.is_vip(dst) {
            VipMatch::VipOnly
        } else {
            VipMatch::NotVip
        }
    }

    /// The service that fragments to (VIP, protocol) belong to; `None` if there is none or several.
    #[inline]
    pub fn fragment_service(&self, dst: &[u8; 16], proto: u8) -> Option<u32> {
        self.destinations.get(u128::from_le_bytes(*dst), fragment_selector(proto)).filter(|&i| i != AMBIGUOUS)
    }

    /// Is this (16-byte form) address a VIP?
    #[inline]
    pub fn is_vip(&self, addr: &[u8; 16]) -> bool {
        self.destinations.get(u128::from_le_bytes(*addr), VIP_SELECTOR).is_some()
    }

    /// Every VIP address: what the XDP program's map must hold.
    pub fn vip_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> =
            self.destinations.vips().map(|a| crate::flow::ip_from_16(a.to_le_bytes())).collect();
        v.sort_unstable();
        v
    }

    /// The backend the service's Maglev table gives a flow hash, or, when none of its backends is
    /// up, its fallback's. The one place new flows are placed: the pipeline and `fwd which` both
    /// call it.
    #[inline]
    pub fn maglev_pick(&self, service: u32, hash: u64) -> Option<BackendIdx> {
        let (members, table) = self.placing_table(service)?;
        members.get(usize::from(table.lookup(hash)?)).copied()
    }

    /// The Maglev table slot [`Snapshot::maglev_pick`] reads for this flow (for prefetching).
    #[inline(always)]
    pub fn maglev_slot(&self, service: u32, hash: u64) -> Option<&u16> {
        self.placing_table(service)?.1.slot(hash)
    }

    /// The members and Maglev table that place the service's new flows: its own, or its
    /// fallback's when none of its backends is up (an empty table).
    #[inline(always)]
    fn placing_table(&self, service: u32) -> Option<(&[BackendIdx], &MaglevTable)> {
        let svc = self.services.get(service as usize)?;
        if !svc.table.is_empty() {
            Some((&svc.members, &svc.table))
        } else {
            let fallback = svc.fallback.as_ref()?;
            Some((&fallback.members, &fallback.table))
        }
    }

    /// Applies the service's flow-key policy to `key` in place (see [`Snapshot::service_flow_key`]).
    #[inline(always)]
    pub fn apply_flow_key_policy(&self, service: u32, key: &mut FlowKey) {
        if matches!(self.services.get(service as usize), Some(s) if !s.hash_src_port) {
            *key = key.without_src_port();
        }
    }

    /// The flow key a service hashes: without the source port if the service says so.
    #[inline]
    pub fn service_flow_key(&self, service: u32, mut key: FlowKey) -> FlowKey {
        self.apply_flow_key_policy(service, &mut key);
        key
    }

    /// The service and backend a new (untracked, unfragmented) flow goes to: what `fwd which`
    /// answers, computed exactly as the pipeline does.
    pub fn pick_for_new_flow(&self, key: &FlowKey) -> Option<(u32, BackendIdx)> {
        let VipMatch::Service(service) = self.lookup(&key.dst, key.proto, key.dst_port) else {
            return None;
        };
        let key = self.service_flow_key(service, *key);
        Some((service, self.maglev_pick(service, crate::hash::flow_hash(&key))?))
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

    #[test]
    fn tunnel_sources_spread_over_the_range() {
        let local = LocalInfo {
            tunnel_src_v4: Some(SourceRange { base: "198.18.0.16".parse().unwrap(), count: 16 }),
            tunnel_src_v6: Some(SourceRange { base: "fd00:18::10".parse().unwrap(), count: 1 }),
            ..LocalInfo::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        // The high half of the hash picks: 64 values spread over its range.
        for h in 0..64u64 {
            let a = local.tunnel_source(false, (h << 58) | 0x1234).unwrap();
            seen.insert(a);
        }
        assert_eq!(seen.len(), 16);
        assert_eq!(seen.first().unwrap().to_string(), "198.18.0.16");
        assert_eq!(seen.last().unwrap().to_string(), "198.18.0.31");
        assert_eq!(local.tunnel_source(true, 12345 << 32).unwrap().to_string(), "fd00:18::10");
        assert_eq!(LocalInfo::default().tunnel_source(true, 1), None);
    }
}

#[cfg(test)]
mod lookup_tests {
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
            table: Arc::new(table),
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
        assert_eq!(s.fragment_service(&v4, 6), None, "two tcp services on one VIP are ambiguous");
        assert_eq!(s.fragment_service(&v6, 17), Some(2));
        assert_eq!(s.fragment_service(&v6, 6), None);
        assert_eq!(s.services[1].key.to_string(), "198.18.100.1:*/tcp");
        assert_eq!(s.services[2].key.to_string(), "[fd00:18:100::1]:53/udp");
    }
}
