//! Golden tests of the whole pipeline: frames built with etherparse go in through `MemIo`, and
//! what comes out is checked with etherparse (an independent parser), never with our own code.

use super::*;
use crate::conntrack::Timeouts;
use crate::counters::DropReason;
use crate::flow::L4Proto;
use crate::io::{MemIo, PacketIo, Verdict};
use crate::maglev::{BackendKey, MaglevMember, MaglevTable};
use crate::snapshot::{
    Backend, BackendState, Fallback, ForwardMode, FragmentPolicy, LocalInfo, Service, ServiceKey, Snapshot,
    SourceRange,
};
use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const CLIENT4: [u8; 4] = [198, 18, 0, 10];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const VIP4: [u8; 4] = [198, 18, 100, 1];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x18, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
const VIP4_TUNNEL: [u8; 4] = [198, 18, 100, 2];
const VIP6_TUNNEL: [u8; 16] = [0xfd, 0, 0, 0x18, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];
const VIP4_GUE: [u8; 4] = [198, 18, 100, 3];

fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i as u8]
}

/// Describes one service of a test snapshot.
struct Spec {
    key: ServiceKey,
    mode: ForwardMode,
    backends: Vec<(IpAddr, u32, BackendState)>,
    fallback: Vec<IpAddr>,
    hash_src_port: bool,
    fragments: FragmentPolicy,
}

fn spec(vip: IpAddr, proto: L4Proto, port: Option<u16>, mode: ForwardMode, backends: &[&str]) -> Spec {
    Spec {
        key: ServiceKey { vip, proto, port },
        mode,
        backends: backends.iter().map(|a| (a.parse().unwrap(), 1, BackendState::Up)).collect(),
        fallback: vec![],
        hash_src_port: true,
        fragments: FragmentPolicy::Hash3Tuple,
    }
}

/// Builds a snapshot the way control does: members in key order, tables from weights of up
/// backends. Backend `i` (global order) has MAC `backend_mac(i)` for l2, the gateway's otherwise.
fn build(specs: Vec<Spec>, local: LocalInfo) -> Snapshot {
    let mut services = Vec::new();
    let mut backends: Vec<Backend> = Vec::new();
    for (si, s) in specs.into_iter().enumerate() {
        let mut add = |list: &[(IpAddr, u32, BackendState)], mode: ForwardMode, fallback: bool| {
            let mut sorted = list.to_vec();
            sorted.sort_by_key(|(a, _, _)| BackendKey::new(*a, None));
            let mut members = Vec::new();
            let mut maglev = Vec::new();
            for (addr, weight, state) in sorted {
                let idx = backends.len();
                backends.push(Backend {
                    addr,
                    port: None,
                    service: si as u32,
                    tag: 1000 + idx as u32 + if fallback { 500 } else { 0 },
                    state,
                    mode,
                    next_hop_mac: Some(if mode == ForwardMode::L2 { backend_mac(idx) } else { GATEWAY_MAC }),
                });
                members.push(idx as u32);
                let w = if state == BackendState::Up { weight } else { 0 };
                maglev.push(MaglevMember { key: BackendKey::new(addr, None), weight: w });
            }
            (members, Arc::new(MaglevTable::build(&maglev, 251).unwrap()))
        };
        let (members, table) = add(&s.backends, s.mode, false);
        let fallback = (!s.fallback.is_empty()).then(|| {
            let list: Vec<_> = s.fallback.iter().map(|a| (*a, 1, BackendState::Up)).collect();
            let (members, table) = add(&list, ForwardMode::Ipip, true);
            Fallback { mode: ForwardMode::Ipip, members, table }
        });
        services.push(Service {
            key: s.key,
            mode: s.mode,
            hash_src_port: s.hash_src_port,
            fragments: s.fragments,
            members,
            table,
            fallback,
        });
    }
    Snapshot::new(1, local, services, backends)
}

fn local() -> LocalInfo {
    LocalInfo {
        mac: OUR_MAC,
        mtu: 1500,
        gue_port: 6080,
        tunnel_src_v4: Some(SourceRange { base: Ipv4Addr::new(198, 18, 0, 32), count: 8 }),
        tunnel_src_v6: Some(SourceRange { base: "fd00:18::20".parse().unwrap(), count: 8 }),
        answer_echo: true,
        icmp_rate_per_sec: 1000,
    }
}

const L2_V4: &[&str] = &["198.18.2.11", "198.18.2.12", "198.18.2.13"];
const L2_V6: &[&str] = &["fd00:18:2::11", "fd00:18:2::12", "fd00:18:2::13"];

/// The standard test snapshot: l2 v4 tcp/80 + udp/53, l2 v6 tcp/80, ipip v4 (4-in-4 and 4-in-6
/// by port), ipip v6 (6-in-6 and 6-in-4), gue v4 over v4 and over v6.
fn standard() -> Snapshot {
    let v4 = IpAddr::from(VIP4);
    let v6 = IpAddr::from(VIP6);
    let t4 = IpAddr::from(VIP4_TUNNEL);
    let t6 = IpAddr::from(VIP6_TUNNEL);
    let g4 = IpAddr::from(VIP4_GUE);
    build(
        vec![
            spec(v4, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4),
            spec(v4, L4Proto::Udp, Some(53), ForwardMode::L2, L2_V4),
            spec(v6, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V6),
            spec(t4, L4Proto::Tcp, Some(80), ForwardMode::Ipip, &["198.18.3.1", "198.18.3.2"]),
            spec(t4, L4Proto::Tcp, Some(81), ForwardMode::Ipip, &["fd00:18:3::1", "fd00:18:3::2"]),
            spec(t6, L4Proto::Tcp, Some(80), ForwardMode::Ipip, &["fd00:18:3::1", "fd00:18:3::2"]),
            spec(t6, L4Proto::Tcp, Some(81), ForwardMode::Ipip, &["198.18.3.1", "198.18.3.2"]),
            spec(g4, L4Proto::Udp, Some(443), ForwardMode::Gue, &["198.18.3.1", "198.18.3.2"]),
            spec(g4, L4Proto::Udp, Some(444), ForwardMode::Gue, &["fd00:18:3::1"]),
        ],
        local(),
    )
}

/// The test workers' idle timeouts.
const TIMEOUTS: Timeouts = Timeouts { tcp_established_ms: 900_000, tcp_closing_ms: 10_000, udp_ms: 60_000 };

fn worker() -> Worker {
    Worker::new(WorkerConfig {
        conn_capacity: 4096,
        timeouts: TIMEOUTS,
        classify_ahead: ClassifyAhead::default(),
    })
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    tcp4_flags(src, dst, sport, dport, payload, false, false)
}

fn tcp4_flags(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: usize,
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC).ipv4(src, dst, 63).tcp(sport, dport, 1, 1000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &vec![0xab; payload]).unwrap();
    out
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC).ipv4(src, dst, 63).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0xcd; payload]).unwrap();
    out
}

fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC).ipv6(src, dst, 63).tcp(sport, dport, 1, 1000);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0xab; payload]).unwrap();
    out
}

/// An ICMP echo request from the client to VIP4 (id 7, sequence 1, payload "ping").
fn echo4() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
        .ipv4(CLIENT4, VIP4, 63)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, b"ping")
        .unwrap();
    frame
}

/// Runs frames through one batch and returns (verdicts, MemIo).
fn run(w: &mut Worker, snap: &Snapshot, frames: &[Vec<u8>], now_ms: u64) -> (Vec<Verdict>, MemIo) {
    let mut io = MemIo::new();
    for f in frames {
        assert!(io.push_rx(f));
    }
    let mut out = Vec::new();
    while io.pending_rx() > 0 {
        io.poll(64, &mut |batch, verdicts| {
            w.process_batch(snap, batch, verdicts, now_ms);
            out.extend_from_slice(&verdicts[..batch.len()]);
        });
    }
    (out, io)
}

fn one(w: &mut Worker, snap: &Snapshot, frame: Vec<u8>) -> (Verdict, Option<Vec<u8>>) {
    let (v, io) = run(w, snap, &[frame], 0);
    let out = io.tx.into_iter().next();
    (v[0], out)
}

/// The backend index the frame went to, read from its destination MAC (l2 backends' MACs are unique).
fn l2_backend_of(frame: &[u8]) -> usize {
    usize::from(frame[5] - 0x10)
}

#[test]
fn l2_rewrites_only_the_macs() {
    let snap = standard();
    for (name, frame) in [
        ("ipv4 tcp", tcp4(CLIENT4, VIP4, 40000, 80, 100)),
        ("ipv4 udp", udp4(CLIENT4, VIP4, 40000, 53, 30)),
        ("ipv6 tcp", tcp6(CLIENT6, VIP6, 40000, 80, 100)),
    ] {
        let (v, out) = one(&mut worker(), &snap, frame.clone());
        assert_eq!(v, Verdict::Tx, "{name}");
        let out = out.unwrap();
        assert_eq!(out.len(), frame.len(), "{name}");
        assert_eq!(&out[6..12], &OUR_MAC, "{name}: source MAC");
        let b = l2_backend_of(&out);
        assert_eq!(&out[0..6], &backend_mac(b), "{name}");
        assert_eq!(&out[12..], &frame[12..], "{name}: nothing else changes");
        let key = crate::parse::parse(&frame).unwrap().unwrap().flow_key().unwrap();
        assert_eq!(snap.pick_for_new_flow(&key).map(|p| p.1), Some(b as u32), "{name}: the simulator agrees");
    }
}

#[test]
fn l2_keeps_vlan_tags() {
    let snap = standard();
    for double in [false, true] {
        let b = PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC);
        let b = if double {
            b.double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
        } else {
            b.single_vlan(VlanId::try_new(10).unwrap())
        };
        let mut frame = Vec::new();
        b.ipv4(CLIENT4, VIP4, 63).tcp(1234, 80, 1, 100).write(&mut frame, &[1, 2, 3]).unwrap();
        let (v, out) = one(&mut worker(), &snap, frame.clone());
        assert_eq!(v, Verdict::Tx);
        let out = out.unwrap();
        assert_eq!(&out[12..], &frame[12..], "tags and packet unchanged (double={double})");
    }
}

/// Parses an encapsulated frame: returns (outer net slice checks, inner packet bytes).
fn outer_and_inner(frame: &[u8]) -> (IpAddr, IpAddr, u8, Vec<u8>, Option<(u16, u16)>) {
    let p = SlicedPacket::from_ethernet(frame).expect("outer parses");
    assert_eq!(&frame[0..6], &GATEWAY_MAC, "tunnelled frames go to the gateway");
    assert_eq!(&frame[6..12], &OUR_MAC);
    let (src, dst, ttl, payload, proto) = match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            let mut hh = h.to_header();
            let sum = hh.header_checksum;
            hh.header_checksum = hh.calc_header_checksum();
            assert_eq!(sum, hh.header_checksum, "outer IPv4 checksum");
            assert_eq!(usize::from(h.total_len()), frame.len() - 14, "outer total length");
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.ttl(),
                v4.payload().payload.to_vec(),
                h.protocol(),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            assert_eq!(usize::from(h.payload_length()) + 40, frame.len() - 14, "outer payload length");
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.hop_limit(),
                v6.payload().payload.to_vec(),
                h.next_header(),
            )
        }
        NetSlice::Arp(_) => panic!("arp"),
    };
    assert_eq!(ttl, crate::rewrite::OUTER_TTL);
    let mut ports = None;
    let inner = if proto == IpNumber::UDP {
        let udp = match p.transport.unwrap() {
            TransportSlice::Udp(u) => u,
            _ => panic!("gue without udp"),
        };
        ports = Some((udp.source_port(), udp.destination_port()));
        udp.payload().to_vec()
    } else {
        payload
    };
    (src, dst, proto.0, inner, ports)
}

#[test]
fn ipip_all_family_combinations() {
    let snap = standard();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("4-in-4", tcp4(CLIENT4, VIP4_TUNNEL, 40000, 80, 200), false),
        ("4-in-6", tcp4(CLIENT4, VIP4_TUNNEL, 40000, 81, 200), true),
        ("6-in-6", tcp6(CLIENT6, VIP6_TUNNEL, 40000, 80, 200), true),
        ("6-in-4", tcp6(CLIENT6, VIP6_TUNNEL, 40000, 81, 200), false),
    ];
    for (name, frame, outer_v6) in cases {
        let (v, out) = one(&mut worker(), &snap, frame.clone());
        assert_eq!(v, Verdict::Tx, "{name}");
        let out = out.unwrap();
        let (src, dst, proto, inner, _) = outer_and_inner(&out);
        assert_eq!(src.is_ipv6(), outer_v6, "{name}");
        assert_eq!(dst.is_ipv6(), outer_v6, "{name}");
        let inner_is_v6 = frame[12..14] == [0x86, 0xdd];
        assert_eq!(proto, if inner_is_v6 { 41 } else { 4 }, "{name}: outer protocol");
        assert_eq!(&inner[..], &frame[14..], "{name}: inner packet unchanged");
        let expected_src = snap.local.tunnel_source(outer_v6, 0).unwrap();
        assert!(matches!(
            (src, expected_src),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        ));
        assert!(
            ["198.18.3.1", "198.18.3.2", "fd00:18:3::1", "fd00:18:3::2"].contains(&dst.to_string().as_str())
        );
    }
}

#[test]
fn gue_over_v4_and_v6() {
    let snap = standard();
    for (port, outer_v6) in [(443, false), (444, true)] {
        let frame = udp4(CLIENT4, VIP4_GUE, 5555, port, 64);
        let (v, out) = one(&mut worker(), &snap, frame.clone());
        assert_eq!(v, Verdict::Tx);
        let out = out.unwrap();
        let (src, _, proto, inner, ports) = outer_and_inner(&out);
        assert_eq!(src.is_ipv6(), outer_v6);
        assert_eq!(proto, 17);
        let (sport, dport) = ports.unwrap();
        assert_eq!(dport, 6080);
        assert_ne!(sport, 0);
        assert_eq!(&inner[..], &frame[14..]);
    }
}

#[test]
fn tunnel_sources_spread_by_flow() {
    let snap = standard();
    let mut w = worker();
    let mut sources = std::collections::BTreeSet::new();
    for sport in 0..200u16 {
        let (_, out) = one(&mut w, &snap, tcp4(CLIENT4, VIP4_TUNNEL, 1000 + sport, 80, 10));
        let (src, ..) = outer_and_inner(&out.unwrap());
        sources.insert(src);
    }
    assert_eq!(sources.len(), 8, "all 8 tunnel sources used: {sources:?}");
}

/// A frame's slot keeps state from the batch before; a frame decided in the first pass (no
/// service, not a VIP) must not be placed or rewritten on that stale state.
#[test]
fn a_slot_forgets_the_frame_it_held_in_the_batch_before() {
    let snap = standard();
    let mut w = worker();
    let forwarded = tcp4(CLIENT4, VIP4, 40_000, 80, 10);
    let (verdicts, _) = run(&mut w, &snap, &[forwarded.clone(), forwarded.clone()], 1);
    assert_eq!(verdicts, [Verdict::Tx, Verdict::Tx]);
    let not_a_vip = tcp4(CLIENT4, [198, 18, 77, 77], 40_000, 80, 10);
    let no_service = tcp4(CLIENT4, VIP4, 40_000, 8080, 10);
    let (verdicts, io) = run(&mut w, &snap, &[not_a_vip.clone(), no_service], 2);
    assert_eq!(verdicts, [Verdict::Pass, Verdict::Drop(DropReason::NoService)]);
    assert_eq!(io.passed, [not_a_vip], "passed to the kernel unchanged");
    assert!(io.tx.is_empty());
}

#[test]
fn drop_and_pass_reasons() {
    let snap = standard();
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    };
    let gre = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
            .ipv4(CLIENT4, VIP4, 63)
            .write(&mut f, IpNumber(47), &[0u8; 20])
            .unwrap();
        f
    };
    let ttl0 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
            .ipv4(CLIENT4, VIP4, 0)
            .tcp(1, 80, 1, 1)
            .write(&mut f, &[])
            .unwrap();
        f
    };
    // The IP header says 30 bytes (20 + 10 of TCP) and the frame has them: the TCP header is cut.
    let mut truncated = tcp4(CLIENT4, VIP4, 1, 80, 0);
    truncated.truncate(14 + 20 + 10);
    truncated[16..18].copy_from_slice(&30u16.to_be_bytes());
    let sum = crate::checksum::ipv4_header_checksum(&truncated[14..34]);
    truncated[24..26].copy_from_slice(&sum.to_be_bytes());
    let mut short_ip = tcp4(CLIENT4, VIP4, 1, 80, 0);
    short_ip.truncate(14 + 20 + 10);
    let cases: Vec<(&str, Vec<u8>, Verdict)> = vec![
        ("not a VIP", tcp4(CLIENT4, [198, 18, 9, 9], 1, 80, 0), Verdict::Pass),
        ("arp", arp, Verdict::Pass),
        ("VIP, wrong port", tcp4(CLIENT4, VIP4, 1, 8080, 0), Verdict::Drop(DropReason::NoService)),
        ("VIP, gre", gre, Verdict::Drop(DropReason::UnsupportedProtocol)),
        ("ttl 0", ttl0, Verdict::Drop(DropReason::TtlExceeded)),
        ("truncated tcp", truncated, Verdict::Drop(DropReason::Truncated)),
        ("ip length beyond the frame", short_ip, Verdict::Drop(DropReason::BadIpHeader)),
        ("runt", vec![0u8; 10], Verdict::Drop(DropReason::Truncated)),
    ];
    for (name, frame, expected) in cases {
        let mut w = worker();
        let (v, _) = one(&mut w, &snap, frame);
        assert_eq!(v, expected, "{name}");
        if let Verdict::Drop(r) = expected {
            assert_eq!(w.counters().drops_of(r), 1, "{name} counted");
        } else {
            assert_eq!(w.counters().pass, 1, "{name} counted");
        }
    }
}

#[test]
fn unresolved_next_hop_and_missing_tunnel_source() {
    let mut snap = standard();
    for b in snap.backends.iter_mut() {
        b.next_hop_mac = None;
    }
    let (v, _) = one(&mut worker(), &snap, tcp4(CLIENT4, VIP4, 1, 80, 0));
    assert_eq!(v, Verdict::Drop(DropReason::NextHopUnresolved));

    let mut l = local();
    l.tunnel_src_v4 = None;
    let snap = build(
        vec![spec(IpAddr::from(VIP4_TUNNEL), L4Proto::Tcp, Some(80), ForwardMode::Ipip, &["198.18.3.1"])],
        l,
    );
    let (v, _) = one(&mut worker(), &snap, tcp4(CLIENT4, VIP4_TUNNEL, 1, 80, 0));
    assert_eq!(v, Verdict::Drop(DropReason::NoTunnelSource));
}

#[test]
fn no_backend_then_fallback() {
    let vip = IpAddr::from(VIP4);
    let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
    for b in s.backends.iter_mut() {
        b.2 = BackendState::Down;
    }
    let snap = build(vec![s], local());
    let (v, _) = one(&mut worker(), &snap, tcp4(CLIENT4, VIP4, 1, 80, 0));
    assert_eq!(v, Verdict::Drop(DropReason::NoBackend));

    let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
    for b in s.backends.iter_mut() {
        b.2 = BackendState::Down;
    }
    s.fallback = vec!["fd00:18:9::1".parse().unwrap()];
    let snap = build(vec![s], local());
    let (v, out) = one(&mut worker(), &snap, tcp4(CLIENT4, VIP4, 1, 80, 0));
    assert_eq!(v, Verdict::Tx);
    let (_, dst, proto, ..) = outer_and_inner(&out.unwrap());
    assert_eq!((dst.to_string().as_str(), proto), ("fd00:18:9::1", 4), "4-in-6 to the fallback site");
}

#[test]
fn too_big_answers_with_icmp_or_drops() {
    let snap = standard();
    // 1500-byte IPv4 packet with DF (etherparse sets DF by default) into ipip: frag needed.
    let frame = tcp4(CLIENT4, VIP4_TUNNEL, 40000, 80, 1500 - 40);
    let (v, out) = one(&mut worker(), &snap, frame);
    assert_eq!(v, Verdict::Tx);
    let out = out.unwrap();
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    assert_eq!(&out[0..6], &ROUTER_MAC, "back the way it came");
    match (p.net.unwrap(), p.transport.unwrap()) {
        (NetSlice::Ipv4(ip), TransportSlice::Icmpv4(icmp)) => {
            assert_eq!(ip.header().source(), VIP4_TUNNEL);
            assert_eq!(ip.header().destination(), CLIENT4);
            assert!(ip.header().total_len() <= 576);
            match icmp.icmp_type() {
                Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
                ) => assert_eq!(next_hop_mtu, 1500 - 20),
                t => panic!("unexpected icmp {t:?}"),
            }
        }
        _ => panic!("not icmpv4"),
    }

    // Without DF: dropped (fwd does not fragment).
    let mut frame = tcp4(CLIENT4, VIP4_TUNNEL, 40000, 80, 1500 - 40);
    frame[14 + 6] &= !0x40;
    let sum = crate::checksum::ipv4_header_checksum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    let (v, _) = one(&mut worker(), &snap, frame);
    assert_eq!(v, Verdict::Drop(DropReason::TooBig));

    // IPv6 into 6-in-6: packet too big with MTU 1460.
    let frame = tcp6(CLIENT6, VIP6_TUNNEL, 40000, 80, 1500 - 60);
    let (v, out) = one(&mut worker(), &snap, frame);
    assert_eq!(v, Verdict::Tx);
    let out = out.unwrap();
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    match p.transport.unwrap() {
        TransportSlice::Icmpv6(icmp) => assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1460 }),
        _ => panic!("not icmpv6"),
    }
}

#[test]
fn icmp_replies_are_rate_limited_per_worker() {
    let mut l = local();
    l.icmp_rate_per_sec = 5;
    let snap = build(
        vec![spec(IpAddr::from(VIP4_TUNNEL), L4Proto::Tcp, Some(80), ForwardMode::Ipip, &["198.18.3.1"])],
        l,
    );
    let mut w = worker();
    let frames: Vec<Vec<u8>> = (0..20).map(|i| tcp4(CLIENT4, VIP4_TUNNEL, 1000 + i, 80, 1460)).collect();
    // The budget starts full (one second's worth) and refills with time.
    let (v, _) = run(&mut w, &snap, &frames, 1000);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Tx).count(), 5);
    assert_eq!(w.counters().drops_of(DropReason::IcmpRateLimited), 15);
    let (v, _) = run(&mut w, &snap, &frames, 1400);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Tx).count(), 2, "0.4 s refills 2 tokens");
    let (v, _) = run(&mut w, &snap, &frames, 60_000);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Tx).count(), 5, "never more than one second's worth");
}

#[test]
fn echo_requests_to_vips_are_answered() {
    let snap = standard();
    let f4 = echo4();
    let mut f6 = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
        .ipv6(CLIENT6, VIP6, 63)
        .icmpv6_echo_request(7, 1)
        .write(&mut f6, b"ping")
        .unwrap();
    let (v, io) = run(&mut worker(), &snap, &[f4.clone(), f6.clone()], 1000);
    assert_eq!(v, vec![Verdict::Tx, Verdict::Tx]);
    let r4 = SlicedPacket::from_ethernet(&io.tx[0]).unwrap();
    match r4.transport.unwrap() {
        TransportSlice::Icmpv4(i) => assert!(matches!(i.icmp_type(), Icmpv4Type::EchoReply(_))),
        _ => panic!(),
    }
    let r6 = SlicedPacket::from_ethernet(&io.tx[1]).unwrap();
    match r6.transport.unwrap() {
        TransportSlice::Icmpv6(i) => assert!(matches!(i.icmp_type(), Icmpv6Type::EchoReply(_))),
        _ => panic!(),
    }
    let mut quiet = standard();
    quiet.local.answer_echo = false;
    let (v, _) = run(&mut worker(), &quiet, &[f4], 1000);
    assert_eq!(v, vec![Verdict::Pass]);
}

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let snap = standard();
    let mut w = worker();
    // The client's flow first (so it is tracked), then a "frag needed" from a router on the way to
    // the client, quoting a packet the backend sent from the VIP to the client.
    let flow = tcp4(CLIENT4, VIP4, 40000, 80, 10);
    let (_, out) = one(&mut w, &snap, flow);
    let flow_backend = l2_backend_of(&out.unwrap());

    let quoted = {
        let mut q = Vec::new();
        PacketBuilder::ipv4(VIP4, CLIENT4, 60).tcp(80, 40000, 1, 100).write(&mut q, &[0u8; 8]).unwrap();
        q
    };
    let mut err = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
        .ipv4([198, 18, 0, 1], VIP4, 63)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut err, &quoted)
        .unwrap();
    let (v, out) = one(&mut w, &snap, err.clone());
    assert_eq!(v, Verdict::Tx);
    let out = out.unwrap();
    assert_eq!(l2_backend_of(&out), flow_backend);
    assert_eq!(&out[12..], &err[12..]);

    // Quoting a flow no service has: unmatched.
    let quoted = {
        let mut q = Vec::new();
        PacketBuilder::ipv4(VIP4, CLIENT4, 60).tcp(9999, 40000, 1, 100).write(&mut q, &[]).unwrap();
        q
    };
    let mut err = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
        .ipv4([198, 18, 0, 1], VIP4, 63)
        .icmpv4(Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit))
        .write(&mut err, &quoted)
        .unwrap();
    let (v, _) = one(&mut w, &snap, err);
    assert_eq!(v, Verdict::Drop(DropReason::IcmpUnmatched));
}

/// IPv4 fragments of one datagram, built by hand (the builder does not fragment).
fn fragment4(dst: [u8; 4], id: u16, offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header::new(payload.len() as u16, 63, IpNumber::UDP, CLIENT4, dst).unwrap();
    h.identification = id;
    h.dont_fragment = false;
    h.more_fragments = more;
    h.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut f = Vec::new();
    etherparse::Ethernet2Header {
        source: ROUTER_MAC,
        destination: OUR_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut f)
    .unwrap();
    h.write(&mut f).unwrap();
    f.extend_from_slice(payload);
    f
}

#[test]
fn fragments_meet_on_one_backend_or_are_dropped() {
    let snap = standard();
    // VIP4 has one UDP service (53): fragments go there.
    let mut first_payload = vec![0u8; 16];
    first_payload[0..2].copy_from_slice(&5353u16.to_be_bytes());
    first_payload[2..4].copy_from_slice(&53u16.to_be_bytes());
    let frames = vec![
        fragment4(VIP4, 7, 0, true, &first_payload),
        fragment4(VIP4, 7, 2, true, &[1u8; 16]),
        fragment4(VIP4, 7, 4, false, &[2u8; 8]),
    ];
    let (v, io) = run(&mut worker(), &snap, &frames, 0);
    assert_eq!(v, vec![Verdict::Tx; 3]);
    let backends: Vec<usize> = io.tx.iter().map(|f| l2_backend_of(f)).collect();
    assert!(backends.iter().all(|b| *b == backends[0]), "{backends:?}");

    let mut s = spec(IpAddr::from(VIP4), L4Proto::Udp, Some(53), ForwardMode::L2, L2_V4);
    s.fragments = FragmentPolicy::Drop;
    let snap = build(vec![s], local());
    let (v, _) = run(&mut worker(), &snap, &frames, 0);
    assert_eq!(v, vec![Verdict::Drop(DropReason::FragmentPolicy); 3]);
}

#[test]
fn tracked_flows_survive_table_changes_and_drains() {
    let vip = IpAddr::from(VIP4);
    let before = build(vec![spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4)], local());
    let mut w = worker();
    let flows: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, VIP4, 10000 + i, 80, 0)).collect();
    let (_, io) = run(&mut w, &before, &flows, 0);
    let first: Vec<usize> = io.tx.iter().map(|f| l2_backend_of(f)).collect();

    // Drain backend 0 (weight 0): its flows stay; nothing new goes there.
    let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
    s.backends[0].2 = BackendState::Drained;
    let drained = build(vec![s], local());
    let (_, io) = run(&mut w, &drained, &flows, 10);
    let again: Vec<usize> = io.tx.iter().map(|f| l2_backend_of(f)).collect();
    assert_eq!(first, again, "drained backend keeps its flows");
    let fresh: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, VIP4, 20000 + i, 80, 0)).collect();
    let (_, io) = run(&mut w, &drained, &fresh, 10);
    assert!(io.tx.iter().all(|f| l2_backend_of(f) != 0), "no new flow to the drained backend");
    // A SYN on a tuple tracked to the drained backend is a new connection (the client reused the
    // ports, its old connection having been reset without us seeing it): it goes elsewhere and
    // is tracked there. Segments of the old connection stay (checked above), as does a SYN+ACK,
    // and a SYN on a tuple whose backend is still up keeps that backend.
    // The backend each of the 300 tracked tuples reaches with one segment of these flags.
    let backends_for = |w: &mut Worker, syn: bool, ack: bool, now_ms: u64| -> Vec<usize> {
        let frames: Vec<Vec<u8>> =
            (0..300).map(|i| tcp4_flags(CLIENT4, VIP4, 10000 + i, 80, 0, syn, ack)).collect();
        let (_, io) = run(w, &drained, &frames, now_ms);
        io.tx.iter().map(|f| l2_backend_of(f)).collect()
    };
    let kept = backends_for(&mut w, true, true, 14);
    assert_eq!(first, kept, "a SYN with ACK is not a new connection");
    let reopened = backends_for(&mut w, true, false, 15);
    assert!(first.contains(&0), "the drained backend had flows");
    for (a, b) in first.iter().zip(&reopened) {
        if *a == 0 {
            assert_ne!(*b, 0, "a new SYN does not reach the drained backend");
        } else {
            assert_eq!(a, b, "a SYN on a tuple of a backend still up keeps it");
        }
    }
    let followed = backends_for(&mut w, false, true, 16);
    assert_eq!(reopened, followed, "the reopened connections stay where their SYN went");

    // Backend 0 goes down: its flows move, the others' do not.
    let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
    s.backends[0].2 = BackendState::Down;
    let down = build(vec![s], local());
    let (_, io) = run(&mut w, &down, &flows, 20);
    let after: Vec<usize> = io.tx.iter().map(|f| l2_backend_of(f)).collect();
    for (a, b) in first.iter().zip(&after) {
        if *a == 0 {
            assert_ne!(*b, 0);
        } else {
            assert_eq!(a, b, "a flow whose backend is still up keeps it");
        }
    }
}

#[test]
fn backend_counters_and_flow_census_follow_the_traffic() {
    let vip = IpAddr::from(VIP4);
    let snap = build(vec![spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4)], local());
    let mut w = worker();
    let flows: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, VIP4, 10000 + i, 80, 10)).collect();
    let (_, io) = run(&mut w, &snap, &flows, 0);
    // Second packet of every flow: counted, but not a new flow.
    run(&mut w, &snap, &flows, 1);
    let mut per_backend = [0u64; 3];
    for f in &io.tx {
        per_backend[l2_backend_of(f)] += 1;
    }
    let counters = w.backend_counters();
    for (i, &n) in per_backend.iter().enumerate() {
        assert_eq!(counters[i].new_flows, n);
        assert_eq!(counters[i].packets, 2 * n);
        assert_eq!(counters[i].bytes, 2 * n * io.tx[0].len() as u64);
    }
    assert!(w.active_flows().is_empty(), "no census has completed yet");
    let buckets = w.conns().bucket_count();
    let mut steps = 0;
    while !w.census_step(&snap, 100, 2) {
        steps += 1;
    }
    assert_eq!(steps + 1, buckets.div_ceil(100));
    assert_eq!(w.active_flows(), &per_backend[..]);

    // Backend 0 down: its entries are no longer counted; after the timeout, none are.
    let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
    s.backends[0].2 = BackendState::Down;
    let down = build(vec![s], local());
    while !w.census_step(&down, 1000, 3) {}
    assert_eq!(w.active_flows(), &[0, per_backend[1], per_backend[2]][..]);
    while !w.census_step(&down, 1000, 2_000_000) {}
    assert_eq!(w.active_flows(), &[0, 0, 0][..]);
    assert_eq!(w.census_sweeps(), 3);
}

/// Issue 5: a pipeline run with continuous publishes (a new snapshot before every batch, half of
/// them with one backend drained and back) loses no packet, and every tracked flow keeps its
/// backend, since that backend stays in the service.
#[test]
fn continuous_publishes_lose_nothing_and_move_no_tracked_flow() {
    let vip = IpAddr::from(VIP4);
    let mut w = worker();
    // Well within the table (made for 4096 flows), so that no flow is evicted for room: an evicted flow
    // would be re-picked, which is the table's business, not the publish's.
    let flows: Vec<Vec<u8>> = (0..1000).map(|i| tcp4(CLIENT4, VIP4, 10000 + i, 80, 0)).collect();
    let mut owner: Vec<Option<usize>> = vec![None; flows.len()];
    for round in 0..20u64 {
        for (chunk_index, chunk) in flows.chunks(64).enumerate() {
            let mut s = spec(vip, L4Proto::Tcp, Some(80), ForwardMode::L2, L2_V4);
            if (round as usize + chunk_index) % 2 == 1 {
                s.backends[1].2 = BackendState::Drained;
            }
            // A fresh snapshot per batch, as if control published between every two batches.
            let snap = build(vec![s], local());
            let (verdicts, io) = run(&mut w, &snap, chunk, round);
            assert!(verdicts.iter().all(|v| *v == Verdict::Tx), "round {round}: {verdicts:?}");
            for (k, frame) in io.tx.iter().enumerate() {
                let i = chunk_index * 64 + k;
                let b = l2_backend_of(frame);
                match owner[i] {
                    None => owner[i] = Some(b),
                    Some(first) => assert_eq!(first, b, "flow {i} moved in round {round}"),
                }
            }
        }
    }
    assert_eq!(w.conns().stats().evicted_lru, 0);
    assert_eq!(w.counters().total_drops(), 0);
    assert_eq!(w.counters().tx_packets, 20 * flows.len() as u64);
}

#[test]
fn simulator_and_pipeline_agree_on_thousands_of_flows() {
    let snap = standard();
    let mut w = worker();
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..3000 {
        let r = next();
        let src = [198, 18, (r >> 8) as u8 & 0x7f, r as u8];
        let frame = tcp4(src, VIP4, (r >> 16) as u16 | 1, 80, 0);
        let key = crate::parse::parse(&frame).unwrap().unwrap().flow_key().unwrap();
        let (_, out) = one(&mut w, &snap, frame);
        assert_eq!(Some(l2_backend_of(&out.unwrap()) as u32), snap.pick_for_new_flow(&key).map(|p| p.1));
    }
}

/// A worker that classifies frames ahead whatever its table holds, as fwd's workers do.
fn big_worker() -> Worker {
    Worker::new(WorkerConfig {
        conn_capacity: 1 << 18,
        timeouts: TIMEOUTS,
        classify_ahead: ClassifyAhead::Always,
    })
}

/// Runs frames through `poll_ahead` and `process_batch_ahead` in batches of the sizes given (in
/// turn); returns (verdicts, MemIo).
fn run_ahead(
    w: &mut Worker,
    snap: &Snapshot,
    frames: &[Vec<u8>],
    now_ms: u64,
    sizes: &[usize],
) -> (Vec<Verdict>, MemIo) {
    let mut io = MemIo::new();
    for f in frames {
        assert!(io.push_rx(f));
    }
    let mut out = Vec::new();
    for &size in sizes.iter().cycle() {
        if io.pending_rx() == 0 {
            break;
        }
        io.poll_ahead(size, &mut |batch, verdicts, ahead| {
            w.process_batch_ahead(snap, batch, verdicts, ahead, now_ms);
            out.extend_from_slice(&verdicts[..batch.len()]);
        });
    }
    (out, io)
}

/// Every kind of frame the golden tests use, to VIPs and not, in one list.
fn mixed_frames(count: u16) -> Vec<Vec<u8>> {
    let echo = echo4();
    let mut vlan = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv4(CLIENT4, VIP4, 63)
        .tcp(5, 80, 1, 1000)
        .write(&mut vlan, b"v")
        .unwrap();
    let kinds = |i: u16| -> Vec<u8> {
        match i % 14 {
            0 => tcp4(CLIENT4, VIP4, 1000 + i, 80, 10),
            1 => udp4(CLIENT4, VIP4, 1000 + i, 53, 10),
            2 => tcp6(CLIENT6, VIP6, 1000 + i, 80, 10),
            3 => tcp4(CLIENT4, VIP4_TUNNEL, 1000 + i, 80, 10),
            4 => tcp4(CLIENT4, VIP4_TUNNEL, 1000 + i, 81, 10),
            5 => tcp6(CLIENT6, VIP6_TUNNEL, 1000 + i, 80, 10),
            6 => udp4(CLIENT4, VIP4_GUE, 1000 + i, 443, 10),
            7 => tcp4(CLIENT4, VIP4, 1000 + i, 8080, 10),
            8 => tcp4(CLIENT4, [198, 18, 9, 9], 1000 + i, 80, 10),
            9 => tcp4(CLIENT4, VIP4_TUNNEL, 1000 + i, 80, 1500),
            10 => fragment4(VIP4, i, 0, true, &[0x11; 16]),
            11 => echo.clone(),
            12 => vlan.clone(),
            _ => vec![0xff; usize::from(i % 60)],
        }
    };
    (0..count).map(kinds).collect()
}

/// Classifying a batch's frames during the batch before changes nothing a worker does: the same
/// frames, through a worker that classifies ahead and one that does not, in batches of changing
/// sizes (so that some batches start with frames shown ahead and some do not), come out the
/// same, with the same counters.
#[test]
fn classifying_ahead_changes_no_verdict_and_no_byte() {
    let snap = standard();
    let frames = mixed_frames(700);
    let sizes = [64, 7, 7, 32, 1, 1, 64, 16, 64, 64, 33];
    let (mut plain, mut ahead) = (big_worker(), big_worker());
    for now_ms in [0, 5] {
        let (v1, io1) = run(&mut plain, &snap, &frames, now_ms);
        let (v2, io2) = run_ahead(&mut ahead, &snap, &frames, now_ms, &sizes);
        assert_eq!(v1, v2);
        assert_eq!((io1.tx, io1.passed, io1.dropped), (io2.tx, io2.passed, io2.dropped));
    }
    // Each batch starts with as many frames classified ahead as the batch before showed it
    // (as many as it held, of those left) and it takes.
    let (mut expected, mut left, mut shown) = (0, frames.len(), 0);
    for &size in sizes.iter().cycle() {
        if left == 0 {
            break;
        }
        let taken = size.min(left);
        expected += shown.min(taken);
        left -= taken;
        shown = taken.min(left);
    }
    assert_eq!(ahead.counters().classified_ahead, 2 * expected as u64);
    let mut counters = ahead.counters().clone();
    counters.classified_ahead = 0;
    counters.batches = plain.counters().batches; // batches of other sizes
    assert_eq!(&counters, plain.counters());
    assert_eq!(plain.conns().stats(), ahead.conns().stats());
    assert_eq!(plain.backend_counters(), ahead.backend_counters());
}

/// `ClassifyAhead::WhenTableOutgrowsCache` classifies ahead only while the table's occupied
/// entries outgrow the caches: a table sized for a million flows that holds a few thousand
/// fits, one that holds more than 131 072 (a bucket line each: 8 MiB) does not. fwd's workers (the default, `Always`)
/// classify ahead at any flow count.
#[test]
fn a_worker_classifies_ahead_only_once_its_table_holds_enough_flows() {
    let snap = standard();
    let mut w = Worker::new(WorkerConfig {
        conn_capacity: 1 << 20,
        timeouts: TIMEOUTS,
        classify_ahead: ClassifyAhead::WhenTableOutgrowsCache,
    });
    let flow = |i: u32| {
        let src = [198, 18 | (i >> 16) as u8 & 1, (i >> 8) as u8, i as u8];
        tcp4(src, VIP4, 40_000 + (i >> 17) as u16, 80, 0)
    };
    let few: Vec<Vec<u8>> = (0..2_000).map(flow).collect();
    let (verdicts, _) = run_ahead(&mut w, &snap, &few, 0, &[32]);
    assert!(verdicts.iter().all(|v| *v == Verdict::Tx));
    assert_eq!(w.counters().classified_ahead, 0, "2 000 flows in a table of a million");
    assert!(!w.conns().outgrows_cache());
    let many: Vec<Vec<u8>> = (2_000..140_000).map(flow).collect();
    run_ahead(&mut w, &snap, &many, 0, &[64]);
    assert!(w.conns().occupied() > 131_072);
    assert!(w.conns().outgrows_cache());
    assert!(w.counters().classified_ahead > 0, "140 000 flows: classified ahead");
    assert_eq!(w.counters().total_drops(), 0);
}

/// Frames classified ahead against one snapshot are classified again under the next one, also
/// when the next one lies where the old one was (told apart by its generation).
#[test]
fn a_new_snapshot_reclassifies_the_frames_classified_ahead() {
    let frames: Vec<Vec<u8>> = (0..128).map(|i| tcp4(CLIENT4, VIP4, 2000 + i, 80, 0)).collect();
    let only_dns = || {
        let mut snap =
            build(vec![spec(IpAddr::from(VIP4), L4Proto::Udp, Some(53), ForwardMode::L2, L2_V4)], local());
        snap.generation = 2;
        snap
    };
    for in_place in [false, true] {
        let mut w = big_worker();
        let mut io = MemIo::new();
        for f in &frames {
            assert!(io.push_rx(f));
        }
        let mut snap = standard();
        let mut verdicts = Vec::new();
        io.poll_ahead(64, &mut |batch, v, ahead| {
            w.process_batch_ahead(&snap, batch, v, ahead, 0);
            verdicts.extend_from_slice(&v[..batch.len()]);
        });
        assert_eq!(verdicts, vec![Verdict::Tx; 64]);
        let other = only_dns();
        let next = if in_place {
            snap = other;
            &snap
        } else {
            &other
        };
        verdicts.clear();
        io.poll_ahead(64, &mut |batch, v, ahead| {
            w.process_batch_ahead(next, batch, v, ahead, 0);
            verdicts.extend_from_slice(&v[..batch.len()]);
        });
        assert_eq!(verdicts, vec![Verdict::Drop(DropReason::NoService); 64], "in place: {in_place}");
        assert_eq!(w.counters().classified_ahead, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_exactly_one_verdict(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..64)) {
        let snap = standard();
        let mut w = worker();
        let (v, io) = run(&mut w, &snap, &frames, 0);
        prop_assert_eq!(v.len(), frames.len());
        prop_assert_eq!(io.tx.len() + io.passed.len() + io.dropped.len(), frames.len());
        let c = w.counters();
        prop_assert_eq!(c.tx_packets + c.pass + c.total_drops(), frames.len() as u64);
    }

    #[test]
    fn mutated_valid_frames_never_panic(seed in 0usize..9, pos in 0usize..200, byte in any::<u8>(), cut in 0usize..300) {
        let snap = standard();
        let mut frames = vec![
            tcp4(CLIENT4, VIP4, 1, 80, 40), udp4(CLIENT4, VIP4, 1, 53, 40), tcp6(CLIENT6, VIP6, 1, 80, 40),
            tcp4(CLIENT4, VIP4_TUNNEL, 1, 80, 40), tcp4(CLIENT4, VIP4_TUNNEL, 1, 81, 40),
            tcp6(CLIENT6, VIP6_TUNNEL, 1, 80, 40), tcp6(CLIENT6, VIP6_TUNNEL, 1, 81, 40),
            udp4(CLIENT4, VIP4_GUE, 1, 443, 40), udp4(CLIENT4, VIP4_GUE, 1, 444, 40),
        ];
        let f = &mut frames[seed];
        if pos < f.len() { f[pos] = byte; }
        f.truncate(cut);
        let (v, _) = run(&mut worker(), &snap, &frames, 0);
        prop_assert_eq!(v.len(), frames.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Classifying ahead changes nothing, on mutated frames and batches of any size either.
    #[test]
    fn classifying_ahead_changes_nothing_on_mutated_frames(
        mutations in proptest::collection::vec((0usize..300, 0usize..120, any::<u8>()), 0..40),
        sizes in proptest::collection::vec(1usize..=64, 1..8),
    ) {
        let snap = standard();
        let mut frames = mixed_frames(300);
        for (frame, pos, byte) in mutations {
            let f = &mut frames[frame];
            if pos < f.len() {
                f[pos] = byte;
            } else {
                f.truncate(pos % 70);
            }
        }
        let (mut plain, mut ahead) = (big_worker(), big_worker());
        let (v1, io1) = run(&mut plain, &snap, &frames, 0);
        let (v2, io2) = run_ahead(&mut ahead, &snap, &frames, 0, &sizes);
        prop_assert_eq!(v1, v2);
        prop_assert_eq!((io1.tx, io1.passed, io1.dropped), (io2.tx, io2.passed, io2.dropped));
    }
}

thread_local! {
    static PREFETCHED: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A prefetch that records the address it was asked for.
struct RecordingPrefetch;

impl Prefetch for RecordingPrefetch {
    fn prefetch<T: Copy>(value: &T) {
        PREFETCHED.with(|p| p.borrow_mut().push(std::ptr::from_ref(value) as usize));
    }
}

#[test]
fn an_encapsulated_frame_has_its_headroom_line_prefetched_and_a_mac_rewritten_one_not() {
    let snap = standard();
    let mut w: Worker<RecordingPrefetch> = Worker::with_prefetch(WorkerConfig {
        conn_capacity: 4096,
        timeouts: TIMEOUTS,
        classify_ahead: ClassifyAhead::default(),
    });
    let mut io = MemIo::new();
    assert!(io.push_rx(&tcp4(CLIENT4, VIP4, 40000, 80, 10)));
    assert!(io.push_rx(&tcp4(CLIENT4, VIP4_TUNNEL, 40001, 80, 10)));
    let mut last_headroom_bytes = Vec::new();
    PREFETCHED.with(|p| p.borrow_mut().clear());
    io.poll(64, &mut |batch, verdicts| {
        last_headroom_bytes = batch.iter().map(|f| f.data().as_ptr() as usize - 1).collect();
        w.process_batch(&snap, batch, verdicts, 0);
        assert_eq!(verdicts[..2], [Verdict::Tx, Verdict::Tx]);
    });
    let prefetched = PREFETCHED.with(|p| p.borrow().clone());
    assert!(!prefetched.contains(&last_headroom_bytes[0]), "l2: {prefetched:x?}");
    assert!(prefetched.contains(&last_headroom_bytes[1]), "ipip: {prefetched:x?}");
}

#[test]
fn a_frame_whose_headers_fit_one_line_is_prefetched_once() {
    #[repr(align(64))]
    struct Lines([u8; 192]);
    let lines = Lines([0; 192]);
    let base = lines.0.as_ptr() as usize;
    for (start, len, expected) in [
        (0, 64, vec![base]),
        (0, 192, vec![base, base + COMMON_HEADERS_SPAN - 1]),
        (40, 64, vec![base + 40, base + 103]),
        (64, 1, vec![base + 64]),
        (64, 0, vec![]),
    ] {
        PREFETCHED.with(|p| p.borrow_mut().clear());
        prefetch_headers::<RecordingPrefetch>(&lines.0[start..start + len]);
        assert_eq!(PREFETCHED.with(|p| p.borrow().clone()), expected, "start {start} len {len}");
    }
}
