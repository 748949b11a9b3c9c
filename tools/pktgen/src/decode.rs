//! The sink's frame decoder: finds the generator's payload under whatever a load balancer put in
//! front of it.
//!
//! Understood: Ethernet with up to two VLAN tags; IPv4 and IPv6; IP-in-IP in all four
//! combinations (4in4, 6in6, 4in6, 6in4: outer protocol 4 or 41); GUE on a configurable UDP port
//! (variant 1, "direct IP", as fwd sends it, and variant 0 with its 4-byte header); then UDP or TCP.
//! Written by hand over byte slices with checked access (`get`), because it runs for every frame
//! the sink receives and must never panic, whatever arrives; it is tested against frames built by
//! etherparse.

use std::fmt;

/// How a frame reached the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encap {
    Plain4,
    Plain6,
    Ipip4in4,
    Ipip6in6,
    Ipip4in6,
    Ipip6in4,
    Gue4in4,
    Gue6in6,
    Gue4in6,
    Gue6in4,
}

impl Encap {
    pub const ALL: [Encap; 10] = [
        Encap::Plain4,
        Encap::Plain6,
        Encap::Ipip4in4,
        Encap::Ipip6in6,
        Encap::Ipip4in6,
        Encap::Ipip6in4,
        Encap::Gue4in4,
        Encap::Gue6in6,
        Encap::Gue4in6,
        Encap::Gue6in4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Encap::Plain4 => "plain-v4",
            Encap::Plain6 => "plain-v6",
            Encap::Ipip4in4 => "ipip-4in4",
            Encap::Ipip6in6 => "ipip-6in6",
            Encap::Ipip4in6 => "ipip-4in6",
            Encap::Ipip6in4 => "ipip-6in4",
            Encap::Gue4in4 => "gue-4in4",
            Encap::Gue6in6 => "gue-6in6",
            Encap::Gue4in6 => "gue-4in6",
            Encap::Gue6in4 => "gue-6in4",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn tunnel(gue: bool, inner_v6: bool, outer_v6: bool) -> Encap {
        match (gue, inner_v6, outer_v6) {
            (false, false, false) => Encap::Ipip4in4,
            (false, true, true) => Encap::Ipip6in6,
            (false, false, true) => Encap::Ipip4in6,
            (false, true, false) => Encap::Ipip6in4,
            (true, false, false) => Encap::Gue4in4,
            (true, true, true) => Encap::Gue6in6,
            (true, false, true) => Encap::Gue4in6,
            (true, true, false) => Encap::Gue6in4,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address in 16 bytes: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

pub fn addr_text(addr: &Addr) -> String {
    std::net::Ipv6Addr::from(*addr).to_canonical().to_string()
}

/// What the decoder found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub encap: Encap,
    pub dst_mac: [u8; 6],
    /// The outermost IP destination (the backend for a tunnel; the VIP for plain frames).
    pub outer_dst: Addr,
    /// The innermost IP header's addresses, protocol and (UDP/TCP) ports.
    pub src: Addr,
    pub dst: Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// The UDP/TCP payload (empty for other protocols).
    pub payload: &'a [u8],
}

const PROTO_IPIP: u8 = 4;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_IPV6: u8 = 41;

struct Ip<'a> {
    v6: bool,
    src: Addr,
    dst: Addr,
    protocol: u8,
    payload: &'a [u8],
    /// A fragment other than a whole datagram: no transport header to read.
    fragment: bool,
}

fn v4_mapped(bytes: &[u8]) -> Option<Addr> {
    let b = bytes.get(..4)?;
    Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]])
}

fn addr16(bytes: &[u8]) -> Option<Addr> {
    bytes.get(..16)?.try_into().ok()
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// An IP header at the start of `bytes`, of the version its first nibble says.
fn parse_ip(bytes: &[u8]) -> Option<Ip<'_>> {
    match bytes.first()? >> 4 {
        4 => {
            let ihl = usize::from(bytes.first()? & 0x0f) * 4;
            let total = usize::from(be16(bytes, 2)?);
            if ihl < 20 || total < ihl {
                return None;
            }
            let flags_offset = be16(bytes, 6)?;
            Some(Ip {
                v6: false,
                src: v4_mapped(bytes.get(12..)?)?,
                dst: v4_mapped(bytes.get(16..)?)?,
                protocol: *bytes.get(9)?,
                payload: bytes.get(ihl..total.min(bytes.len()))?,
                fragment: flags_offset & 0x3fff != 0,
            })
        }
        6 => {
            let payload_len = usize::from(be16(bytes, 4)?);
            let end = (40 + payload_len).min(bytes.len());
            Some(Ip {
                v6: true,
                src: addr16(bytes.get(8..)?)?,
                dst: addr16(bytes.get(24..)?)?,
                protocol: *bytes.get(6)?,
                payload: bytes.get(40..end)?,
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Ports and payload of a UDP or TCP segment.
fn parse_l4(protocol: u8, bytes: &[u8]) -> Option<(u16, u16, &[u8])> {
    let (src, dst) = (be16(bytes, 0)?, be16(bytes, 2)?);
    match protocol {
        PROTO_UDP => Some((src, dst, bytes.get(8..)?)),
        PROTO_TCP => {
            let data_offset = usize::from(bytes.get(12)? >> 4) * 4;
            Some((src, dst, bytes.get(data_offset.max(20)..)?))
        }
        _ => None,
    }
}

/// The IP packet a GUE datagram carries: variant 1 is the packet itself; variant 0 has a 4-byte
/// header (plus `hlen` words of options) whose protocol field says 4 or 41.
fn gue_inner(udp_payload: &[u8]) -> Option<&[u8]> {
    let first = *udp_payload.first()?;
    match first >> 6 {
        1 => Some(udp_payload),
        0 => {
            let options = usize::from(first & 0x1f) * 4;
            let protocol = *udp_payload.get(1)?;
            if protocol != PROTO_IPIP && protocol != PROTO_IPV6 {
                return None;
            }
            udp_payload.get(4 + options..)
        }
        _ => None,
    }
}

/// Decodes a frame; `None` if it is not IP (or is cut short where it matters).
pub fn decode(frame: &[u8], gue_port: u16) -> Option<Decoded<'_>> {
    let dst_mac: [u8; 6] = frame.get(..6)?.try_into().ok()?;
    let mut at = 12;
    let mut ether_type = be16(frame, at)?;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        at += 4;
        ether_type = be16(frame, at)?;
    }
    if ether_type != 0x0800 && ether_type != 0x86dd {
        return None;
    }
    let outer = parse_ip(frame.get(at + 2..)?)?;
    if (ether_type == 0x86dd) != outer.v6 {
        return None;
    }

    let (encap, inner) = match outer.protocol {
        PROTO_IPIP | PROTO_IPV6 if !outer.fragment => {
            let inner = parse_ip(outer.payload)?;
            if inner.v6 != (outer.protocol == PROTO_IPV6) {
                return None;
            }
            (Encap::tunnel(false, inner.v6, outer.v6), inner)
        }
        PROTO_UDP if !outer.fragment && be16(outer.payload, 2) == Some(gue_port) => {
            let inner = parse_ip(gue_inner(outer.payload.get(8..)?)?)?;
            (Encap::tunnel(true, inner.v6, outer.v6), inner)
        }
        _ => {
            let encap = if outer.v6 { Encap::Plain6 } else { Encap::Plain4 };
            (encap, Ip { payload: outer.payload, ..outer })
        }
    };
    let (src_port, dst_port, payload) = if inner.fragment {
        (0, 0, &[][..])
    } else {
        parse_l4(inner.protocol, inner.payload).unwrap_or((0, 0, &[]))
    };
    Some(Decoded {
        encap,
        dst_mac,
        outer_dst: outer.dst,
        src: inner.src,
        dst: inner.dst,
        protocol: inner.protocol,
        src_port,
        dst_port,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, PacketBuilder};
    use proptest::prelude::*;

    const GUE_PORT: u16 = 6080;
    const BACKEND_MAC: [u8; 6] = [0x02, 0xfb, 0, 0, 0, 0x11];
    const V4_CLIENT: [u8; 4] = [198, 18, 1, 7];
    const V4_VIP: [u8; 4] = [198, 18, 100, 1];
    const V4_BACKEND: [u8; 4] = [198, 18, 2, 11];
    const V4_LB: [u8; 4] = [198, 18, 2, 10];
    const V6_CLIENT: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    const V6_VIP: [u8; 16] = [0xfd, 0, 0, 0x18, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_BACKEND: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
    const V6_LB: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

    /// An inner IP packet (no Ethernet header): UDP from the client to the VIP.
    fn inner(v6: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if v6 {
            PacketBuilder::ipv6(V6_CLIENT, V6_VIP, 64).udp(40000, 80).write(&mut out, b"payload").unwrap();
        } else {
            PacketBuilder::ipv4(V4_CLIENT, V4_VIP, 64).udp(40000, 80).write(&mut out, b"payload").unwrap();
        }
        out
    }

    fn plain(v6: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], BACKEND_MAC);
        if v6 {
            eth.ipv6(V6_CLIENT, V6_VIP, 64).udp(40000, 80).write(&mut out, b"payload").unwrap();
        } else {
            eth.ipv4(V4_CLIENT, V4_VIP, 64).udp(40000, 80).write(&mut out, b"payload").unwrap();
        }
        out
    }

    /// An outer Ethernet + IP header (of family `outer_v6`) with protocol `protocol` around `payload`.
    fn outer(outer_v6: bool, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], BACKEND_MAC);
        let step = if outer_v6 { eth.ipv6(V6_LB, V6_BACKEND, 64) } else { eth.ipv4(V4_LB, V4_BACKEND, 64) };
        step.write(&mut out, IpNumber(protocol), payload).unwrap();
        out
    }

    fn ipip(inner_v6: bool, outer_v6: bool) -> Vec<u8> {
        outer(outer_v6, if inner_v6 { 41 } else { 4 }, &inner(inner_v6))
    }

    fn gue(inner_v6: bool, outer_v6: bool, variant0: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], BACKEND_MAC);
        let mut udp_payload = Vec::new();
        if variant0 {
            udp_payload.extend_from_slice(&[0, if inner_v6 { 41 } else { 4 }, 0, 0]);
        }
        udp_payload.extend_from_slice(&inner(inner_v6));
        if outer_v6 {
            eth.ipv6(V6_LB, V6_BACKEND, 64).udp(50000, GUE_PORT).write(&mut out, &udp_payload).unwrap();
        } else {
            eth.ipv4(V4_LB, V4_BACKEND, 64).udp(50000, GUE_PORT).write(&mut out, &udp_payload).unwrap();
        }
        out
    }

    fn mapped(a: [u8; 4]) -> Addr {
        v4_mapped(&a).unwrap()
    }

    #[test]
    fn finds_the_inner_flow_under_every_encapsulation() {
        let cases = [
            ("plain IPv4", plain(false), Encap::Plain4),
            ("plain IPv6", plain(true), Encap::Plain6),
            ("ipip 4in4", ipip(false, false), Encap::Ipip4in4),
            ("ipip 6in6", ipip(true, true), Encap::Ipip6in6),
            ("ipip 4in6", ipip(false, true), Encap::Ipip4in6),
            ("ipip 6in4", ipip(true, false), Encap::Ipip6in4),
            ("gue 4in4 (variant 1)", gue(false, false, false), Encap::Gue4in4),
            ("gue 6in6 (variant 1)", gue(true, true, false), Encap::Gue6in6),
            ("gue 4in6 (variant 0)", gue(false, true, true), Encap::Gue4in6),
            ("gue 6in4 (variant 0)", gue(true, false, true), Encap::Gue6in4),
        ];
        for (description, frame, encap) in cases {
            let d = decode(&frame, GUE_PORT).unwrap_or_else(|| panic!("{description}: not decoded"));
            assert_eq!(d.encap, encap, "{description}");
            assert_eq!(d.dst_mac, BACKEND_MAC, "{description}");
            let inner_v6 = matches!(
                encap,
                Encap::Plain6 | Encap::Ipip6in6 | Encap::Ipip6in4 | Encap::Gue6in6 | Encap::Gue6in4
            );
            let (src, dst) = if inner_v6 { (V6_CLIENT, V6_VIP) } else { (mapped(V4_CLIENT), mapped(V4_VIP)) };
            assert_eq!(
                (d.src, d.dst, d.protocol, d.src_port, d.dst_port),
                (src, dst, 17, 40000, 80),
                "{description}"
            );
            assert_eq!(d.payload, b"payload", "{description}");
            let outer_dst = match encap {
                Encap::Plain4 | Encap::Plain6 => dst,
                Encap::Ipip4in4 | Encap::Ipip6in4 | Encap::Gue4in4 | Encap::Gue6in4 => mapped(V4_BACKEND),
                _ => V6_BACKEND,
            };
            assert_eq!(d.outer_dst, outer_dst, "{description}");
        }
    }

    #[test]
    fn gue_only_on_its_port_and_vlan_tags_are_skipped() {
        let frame = gue(false, false, false);
        assert_eq!(decode(&frame, 9999).unwrap().encap, Encap::Plain4, "another port is plain UDP");
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0, 100]);
        tagged.extend_from_slice(&frame[12..]);
        assert_eq!(decode(&tagged, GUE_PORT).unwrap().encap, Encap::Gue4in4);
    }

    #[test]
    fn not_ip_or_cut_short_is_refused() {
        let mut arp = plain(false);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(decode(&arp, GUE_PORT).is_none());
        let frame = ipip(true, false);
        assert!(decode(&frame[..14 + 20 + 10], GUE_PORT).is_none(), "inner header cut");
        assert!(decode(&frame[..10], GUE_PORT).is_none());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let _ = decode(&bytes, GUE_PORT);
            let frame = gue(true, true, true);
            let _ = decode(&frame[..cut.min(frame.len())], GUE_PORT);
        }
    }
}
