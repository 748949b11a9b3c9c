//! Direct server return rewriters: L2 (LVS-DR style MAC rewrite), IP-in-IP and GUE encapsulation,
//! all done in place on a [`Frame`].
//!
//! Written by hand rather than with etherparse's builders: those allocate and serialise a whole
//! packet, while per packet fwd only patches a few header bytes. An encapsulation here is one
//! header write into the frame's headroom plus moving the Ethernet/VLAN header (at most
//! [`MAX_L2_HEADER_LEN`] bytes) to the new front; the inner packet is never touched or copied. The
//! only per-payload work is the UDP checksum of GUE over IPv6 (see [`Ipv6UdpChecksum`]).
//!
//! The caller (the pipeline) has parsed the frame already and passes plain offsets; everything
//! is re-checked here with checked slicing, so any input gives `Ok` or `Err(DropReason)`, never a
//! panic. Every function checks all its inputs before it writes anything: on `Err` the frame is
//! unchanged.

use crate::checksum::{fold, ones_complement_sum};
use crate::counters::DropReason;
use crate::frame::Frame;
use std::net::IpAddr;

/// The Ethernet addresses a rewritten frame is sent with, borrowed from where they live (the
/// snapshot). By value, the pipeline copied a 6-byte MAC out of the backend's `Option<[u8; 6]>`
/// (at an odd offset: 1 + 4 + 1 byte stores) and the header write read it back as 4 + 2 bytes,
/// loads that cannot be forwarded from those stores: each waited for them to reach the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macs<'a> {
    pub dst: &'a [u8; 6],
    pub src: &'a [u8; 6],
}

/// Outer addresses of a tunnel, as numbers (`u32::from(Ipv4Addr)`, `u128::from(Ipv6Addr)`). One
/// family by construction: a mixed pair cannot be written down, so nothing per packet checks for
/// one.
///
/// Numbers, not byte arrays: the pipeline builds a tunnel per packet (its source depends on the
/// flow hash) and the header write reads it back. As `[u8; 4]` behind the enum's one-byte tag,
/// the compiler stored the source as 1 + 2 + 1 bytes, and the write's 4-byte load of it could not
/// be forwarded from those stores (perf: a tenth of the pipeline's time, at that one load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    V4 { src: u32, dst: u32 },
    V6 { src: u128, dst: u128 },
}

impl Tunnel {
    /// The tunnel from `src` to `dst`; `None` if their families differ.
    pub fn new(src: IpAddr, dst: IpAddr) -> Option<Tunnel> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Tunnel::V4 { src: src.into(), dst: dst.into() }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(Tunnel::V6 { src: src.into(), dst: dst.into() }),
            _ => None,
        }
    }

    #[inline(always)]
    fn header_len(self) -> usize {
        match self {
            Tunnel::V4 { .. } => IPV4_OVERHEAD,
            Tunnel::V6 { .. } => IPV6_OVERHEAD,
        }
    }
}

/// TTL / hop limit of every header fwd writes.
pub const OUTER_TTL: u8 = 64;
pub const IPV4_OVERHEAD: usize = 20;
pub const IPV6_OVERHEAD: usize = 40;
pub const UDP_OVERHEAD: usize = 8;

/// Ethernet II header without tags.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Ethernet with two VLAN tags (QinQ): the longest link header fwd handles.
pub const MAX_L2_HEADER_LEN: usize = ETHERNET_HEADER_LEN + 2 * VLAN_TAG_LEN;
/// GUE source ports are drawn from the ephemeral range 49152..=65535 (RFC 8086 section 3.1 asks
/// for flow entropy in the source port, RFC 6335 names the range).
pub const GUE_SOURCE_PORT_BASE: u16 = 49152;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_UDP: u8 = 17;
const IPV4_DONT_FRAGMENT: u8 = 0x40;

/// Whether GUE over IPv6 carries a real UDP checksum.
///
/// A zero UDP checksum over IPv6 is only allowed for tunnels (RFC 6935, RFC 6936) and Linux FOU
/// accepts it only on a socket configured with `udp6zerocsumrx`; the default is to compute it,
/// which costs one pass over the inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6UdpChecksum {
    /// Checksum over pseudo-header, UDP header and the whole inner packet.
    Compute,
    /// Zero: no per-payload work; backends must set `udp6zerocsumrx` on their FOU port.
    Zero,
}

/// Bytes a mode adds: ipip 20/40, gue 28/48 (outer IPv4/IPv6 + UDP; GUE variant 1 has no GUE
/// header: the UDP payload is the inner IP packet, first nibble 4 or 6, as Katran does; backends
/// decapsulate with Linux FOU `ip fou add port 6080 ipproto 4` / `ipproto 41`).
#[inline]
pub const fn encap_overhead(gue: bool, outer_v6: bool) -> usize {
    let ip = if outer_v6 { IPV6_OVERHEAD } else { IPV4_OVERHEAD };
    if gue {
        ip + UDP_OVERHEAD
    } else {
        ip
    }
}

/// The GUE source port of a flow: bits 48..62 of the flow hash on top of 49152, so every flow
/// keeps one port and flows spread over 49152..=65535 for ECMP/RSS on the way to the backend.
/// (Maglev uses the low 32 bits, the IPv6 flow label bits 32..52.)
#[inline]
pub const fn gue_source_port(flow_hash: u64) -> u16 {
    GUE_SOURCE_PORT_BASE | ((flow_hash >> 48) as u16 & 0x3fff)
}

/// The outer IPv6 flow label of a flow: bits 32..52 of the flow hash.
#[inline]
pub const fn ipv6_flow_label(flow_hash: u64) -> u32 {
    ((flow_hash >> 32) as u32) & 0xf_ffff
}

/// l2 (LVS-DR): destination MAC := macs.dst, source MAC := macs.src, nothing else changes.
/// Err(Truncated) if < 14 bytes.
#[inline(always)]
pub fn rewrite_l2(frame: &mut Frame<'_>, macs: Macs<'_>) -> Result<(), DropReason> {
    let ethernet = frame.data_mut().first_chunk_mut::<ETHERNET_HEADER_LEN>().ok_or(DropReason::Truncated)?;
    write_macs(ethernet, macs);
    Ok(())
}

/// IP-in-IP: prepends an outer IPv4 header (protocol 4 for an IPv4 inner packet, 41 for IPv6) or
/// IPv6 header (next header 4 or 41) between the Ethernet(+VLAN) header and the inner IP packet
/// at `l3_offset`, which is `inner_len` bytes long (from its IP header's length field; Ethernet
/// padding after it is cut off). The innermost ethertype becomes the outer family's.
///
/// Outer IPv4: IHL 5, DSCP/ECN copied from the inner packet (RFC 2983 uniform model, RFC 6040
/// normal mode), DF copied from an IPv4 inner packet and set for IPv6, id 0, TTL [`OUTER_TTL`].
/// Outer IPv6: traffic class copied, flow label [`ipv6_flow_label`], hop limit [`OUTER_TTL`].
/// MACs as in [`rewrite_l2`].
///
/// Errors: `Truncated` if the frame is shorter than 14 bytes or than `l3_offset + inner_len`;
/// `Malformed` if `l3_offset` is not 14, 18 or 22, `inner_len` disagrees with the inner header's
/// length field or version; `TooBig` if the outer length field would overflow; `NoHeadroom` if
/// `frame.headroom()` is below the overhead.
#[inline(always)]
pub fn encap_ipip(
    frame: &mut Frame<'_>,
    l3_offset: usize,
    inner_len: usize,
    inner_is_v6: bool,
    tunnel: Tunnel,
    flow_hash: u64,
    macs: Macs<'_>,
) -> Result<(), DropReason> {
    let plan = EncapPlan::check(frame, l3_offset, inner_len, inner_is_v6, tunnel, false)?;
    let data = plan.open(frame, macs)?;
    let inner_protocol = if inner_is_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    plan.write_outer_ip(data, inner_protocol, flow_hash)
}

/// GUE variant 1 (draft-ietf-intarea-gue, "direct encapsulation of IP"): outer IP (protocol 17)
/// + UDP header + the inner IP packet, everything else as in [`encap_ipip`].
///
/// UDP: source port [`gue_source_port`]`(flow_hash)`, destination port `gue_port`, checksum 0
/// over IPv4 (allowed by RFC 768), computed over IPv6 ([`Ipv6UdpChecksum::Compute`]; see
/// [`encap_gue_with_checksum`] to send zero).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the pipeline's fixed API: plain values, no per-packet struct
pub fn encap_gue(
    frame: &mut Frame<'_>,
    l3_offset: usize,
    inner_len: usize,
    inner_is_v6: bool,
    tunnel: Tunnel,
    flow_hash: u64,
    gue_port: u16,
    macs: Macs<'_>,
) -> Result<(), DropReason> {
    encap_gue_with_checksum(
        frame,
        l3_offset,
        inner_len,
        inner_is_v6,
        tunnel,
        flow_hash,
        gue_port,
        macs,
        Ipv6UdpChecksum::Compute,
    )
}

/// [`encap_gue`] with a choice of UDP checksum for an IPv6 outer header (ignored for IPv4, whose
/// GUE UDP checksum is always zero).
#[inline]
#[allow(clippy::too_many_arguments)] // as encap_gue, plus the checksum choice
pub fn encap_gue_with_checksum(
    frame: &mut Frame<'_>,
    l3_offset: usize,
    inner_len: usize,
    inner_is_v6: bool,
    tunnel: Tunnel,
    flow_hash: u64,
    gue_port: u16,
    macs: Macs<'_>,
    ipv6_checksum: Ipv6UdpChecksum,
) -> Result<(), DropReason> {
    let plan = EncapPlan::check(frame, l3_offset, inner_len, inner_is_v6, tunnel, true)?;
    let data = plan.open(frame, macs)?;
    plan.write_outer_ip(data, IPPROTO_UDP, flow_hash)?;

    let udp_offset = l3_offset + plan.outer.header_len();
    let udp_len = (UDP_OVERHEAD + inner_len) as u16; // fits: EncapPlan::check bounds it
    let source_port = gue_source_port(flow_hash);
    let checksum = match (plan.outer, ipv6_checksum) {
        (Tunnel::V6 { src, dst }, Ipv6UdpChecksum::Compute) => {
            // Pseudo-header and UDP header from their values, then one pass over the inner packet.
            let headers = ipv6_pseudo_header_sum(src, dst, u32::from(udp_len), IPPROTO_UDP)
                + u32::from(source_port)
                + u32::from(gue_port)
                + u32::from(udp_len);
            let inner = data.get(udp_offset + UDP_OVERHEAD..).ok_or(DropReason::Malformed)?;
            match fold(ones_complement_sum(inner, headers)) {
                0 => 0xffff, // RFC 768: a computed zero is sent as all ones; zero means "none"
                sum => sum,
            }
        }
        _ => 0,
    };
    let udp = data
        .get_mut(udp_offset..)
        .and_then(|rest| rest.first_chunk_mut::<UDP_OVERHEAD>())
        .ok_or(DropReason::Malformed)?;
    let ([sport_high, sport_low], [dport_high, dport_low]) =
        (source_port.to_be_bytes(), gue_port.to_be_bytes());
    let ([len_high, len_low], [sum_high, sum_low]) = (udp_len.to_be_bytes(), checksum.to_be_bytes());
    *udp = [sport_high, sport_low, dport_high, dport_low, len_high, len_low, sum_high, sum_low];
    Ok(())
}

/// The partial one's complement sum of an IPv6 pseudo-header (RFC 8200 section 8.1), from the
/// values (summing bytes just stored into a scratch buffer would stall store forwarding).
#[inline(always)]
pub(crate) fn ipv6_pseudo_header_sum(src: u128, dst: u128, upper_len: u32, next_header: u8) -> u32 {
    // A 32-bit word is congruent to the sum of its 16-bit halves (mod 0xffff).
    let words = |value: u128| {
        [value >> 96, value >> 64, value >> 32, value].map(|word| u64::from(word as u32)).iter().sum::<u64>()
    };
    let mut sum = words(src) + words(dst) + u64::from(upper_len) + u64::from(next_header);
    for _ in 0..3 {
        sum = (sum & 0xffff) + (sum >> 16); // below 2^36, so three rounds leave at most 0x1ffff
    }
    sum as u32
}

/// Everything an encapsulation needs, checked before the frame is touched.
#[derive(Clone, Copy, Debug)]
struct EncapPlan {
    l3_offset: usize,
    inner_len: usize,
    overhead: usize,
    outer: Tunnel,
    /// DSCP + ECN of the inner packet.
    traffic_class: u8,
    dont_fragment: bool,
}

impl EncapPlan {
    #[inline(always)]
    fn check(
        frame: &Frame<'_>,
        l3_offset: usize,
        inner_len: usize,
        inner_is_v6: bool,
        tunnel: Tunnel,
        gue: bool,
    ) -> Result<Self, DropReason> {
        check_l2(frame, l3_offset)?;
        let inner = l3_offset
            .checked_add(inner_len)
            .and_then(|end| frame.data().get(l3_offset..end))
            .ok_or(DropReason::Truncated)?;
        let (traffic_class, dont_fragment) =
            if inner_is_v6 { inspect_ipv6(inner)? } else { inspect_ipv4(inner)? };
        let outer_v6 = matches!(tunnel, Tunnel::V6 { .. });
        let overhead = encap_overhead(gue, outer_v6);
        // The outer length field: IPv4 total length, or IPv6 payload length.
        let length_field = inner_len + overhead - if outer_v6 { IPV6_OVERHEAD } else { 0 };
        if length_field > usize::from(u16::MAX) {
            return Err(DropReason::TooBig);
        }
        if frame.headroom() < overhead {
            return Err(DropReason::NoHeadroom);
        }
        Ok(EncapPlan { l3_offset, inner_len, overhead, outer: tunnel, traffic_class, dont_fragment })
    }

    /// Cuts padding, grows the frame by the overhead, moves the link header to the new front and
    /// sets MACs and the innermost ethertype. Returns the whole frame.
    #[inline(always)]
    fn open<'f>(&self, frame: &'f mut Frame<'_>, macs: Macs<'_>) -> Result<&'f mut [u8], DropReason> {
        frame.truncate(self.l3_offset + self.inner_len);
        let data = open_gap(frame, self.l3_offset, self.overhead)?;
        let ethertype = match self.outer {
            Tunnel::V4 { .. } => ETHERTYPE_IPV4,
            Tunnel::V6 { .. } => ETHERTYPE_IPV6,
        };
        let ethernet = data.first_chunk_mut::<ETHERNET_HEADER_LEN>().ok_or(DropReason::Malformed)?;
        write_macs(ethernet, macs);
        data.get_mut(self.l3_offset - 2..self.l3_offset)
            .ok_or(DropReason::Malformed)?
            .copy_from_slice(&ethertype.to_be_bytes());
        Ok(data)
    }

    #[inline(always)]
    fn write_outer_ip(&self, data: &mut [u8], protocol: u8, flow_hash: u64) -> Result<(), DropReason> {
        let outer = data.get_mut(self.l3_offset..).ok_or(DropReason::Malformed)?;
        match self.outer {
            Tunnel::V4 { src, dst } => {
                let header = outer.first_chunk_mut::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
                let total_len = (self.overhead + self.inner_len) as u16; // bounded by check()
                let flags = if self.dont_fragment { IPV4_DONT_FRAGMENT } else { 0 };
                write_ipv4_header(header, self.traffic_class, total_len, flags, protocol, src, dst);
            }
            Tunnel::V6 { src, dst } => {
                let header = outer.first_chunk_mut::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
                let payload_len = (self.overhead - IPV6_OVERHEAD + self.inner_len) as u16; // bounded
                let first_word = 6 << 28 | u32::from(self.traffic_class) << 20 | ipv6_flow_label(flow_hash);
                write_ipv6_header(header, first_word, payload_len, protocol, src, dst);
            }
        }
        Ok(())
    }
}

/// A 20-byte IPv4 header with id 0, TTL [`OUTER_TTL`] and its checksum.
#[inline(always)]
pub(crate) fn write_ipv4_header(
    header: &mut [u8; IPV4_OVERHEAD],
    tos: u8,
    total_len: u16,
    flags: u8,
    protocol: u8,
    src_word: u32,
    dst_word: u32,
) {
    // The checksum comes from the field values, not from re-reading the bytes just stored (a
    // 16-bit load over two byte stores stalls store forwarding).
    let sum = (0x4500 | u32::from(tos))
        + u32::from(total_len)
        + (u32::from(flags) << 8)
        + (u32::from(OUTER_TTL) << 8 | u32::from(protocol))
        + (src_word >> 16)
        + (src_word & 0xffff)
        + (dst_word >> 16)
        + (dst_word & 0xffff);
    // Written as five big-endian words: a 20-element byte array literal compiled to a store
    // per byte.
    let words = [
        0x4500_0000 | u32::from(tos) << 16 | u32::from(total_len),
        u32::from(flags) << 8,
        u32::from(OUTER_TTL) << 24 | u32::from(protocol) << 16 | u32::from(fold(sum)),
        src_word,
        dst_word,
    ];
    for (chunk, word) in header.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

/// A 40-byte IPv6 header with hop limit [`OUTER_TTL`]; `first_word` is version, traffic class
/// and flow label.
#[inline(always)]
pub(crate) fn write_ipv6_header(
    header: &mut [u8; IPV6_OVERHEAD],
    first_word: u32,
    payload_len: u16,
    next_header: u8,
    src: u128,
    dst: u128,
) {
    header[0..4].copy_from_slice(&first_word.to_be_bytes());
    header[4..6].copy_from_slice(&payload_len.to_be_bytes());
    header[6] = next_header;
    header[7] = OUTER_TTL;
    header[8..24].copy_from_slice(&src.to_be_bytes());
    header[24..40].copy_from_slice(&dst.to_be_bytes());
}

/// Traffic class and DF of an inner IPv4 packet whose length is `inner.len()`.
#[inline(always)]
fn inspect_ipv4(inner: &[u8]) -> Result<(u8, bool), DropReason> {
    let header = inner.first_chunk::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4 || total_len != inner.len() {
        return Err(DropReason::Malformed);
    }
    Ok((header[1], header[6] & IPV4_DONT_FRAGMENT != 0))
}

/// Traffic class of an inner IPv6 packet whose length is `inner.len()`; IPv6 never fragments on
/// the way, so the outer header gets DF.
#[inline(always)]
fn inspect_ipv6(inner: &[u8]) -> Result<(u8, bool), DropReason> {
    let header = inner.first_chunk::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if header[0] >> 4 != 6 || IPV6_OVERHEAD + payload_len != inner.len() {
        return Err(DropReason::Malformed);
    }
    Ok((header[0] << 4 | header[1] >> 4, true))
}

/// Checks that `l3_offset` is the end of an Ethernet header with zero, one or two VLAN tags
/// inside the frame.
#[inline(always)]
pub(crate) fn check_l2(frame: &Frame<'_>, l3_offset: usize) -> Result<(), DropReason> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if !(ETHERNET_HEADER_LEN..=MAX_L2_HEADER_LEN).contains(&l3_offset)
        || !(l3_offset - ETHERNET_HEADER_LEN).is_multiple_of(VLAN_TAG_LEN)
    {
        return Err(DropReason::Malformed);
    }
    if l3_offset > frame.len() {
        return Err(DropReason::Truncated);
    }
    Ok(())
}

/// Grows the frame by `gap` bytes at the front and moves the link header (`l3_offset` bytes)
/// there, leaving `gap` bytes at `l3_offset` for new headers. Returns the whole frame.
#[inline(always)]
pub(crate) fn open_gap<'f>(
    frame: &'f mut Frame<'_>,
    l3_offset: usize,
    gap: usize,
) -> Result<&'f mut [u8], DropReason> {
    if frame.len() < l3_offset {
        return Err(DropReason::Truncated);
    }
    let data = frame.push_front(gap).ok_or(DropReason::NoHeadroom)?;
    // Fixed sizes compile to a few moves instead of a memmove call.
    match l3_offset {
        ETHERNET_HEADER_LEN => move_front::<ETHERNET_HEADER_LEN>(data, gap),
        18 => move_front::<18>(data, gap),
        MAX_L2_HEADER_LEN => move_front::<MAX_L2_HEADER_LEN>(data, gap),
        _ => data.copy_within(gap..gap + l3_offset, 0),
    }
    Ok(data)
}

/// Copies `data[from..from + N]` to `data[..N]` (the ranges may overlap).
#[inline(always)]
fn move_front<const N: usize>(data: &mut [u8], from: usize) {
    let moved = data.get(from..).and_then(|rest| rest.first_chunk::<N>()).copied();
    if let (Some(moved), Some(front)) = (moved, data.first_chunk_mut::<N>()) {
        *front = moved;
    }
}

#[inline(always)]
pub(crate) fn write_macs(ethernet: &mut [u8; ETHERNET_HEADER_LEN], macs: Macs<'_>) {
    ethernet[0..6].copy_from_slice(macs.dst);
    ethernet[6..12].copy_from_slice(macs.src);
}

/// Input frames for the rewriter tests, built with etherparse's `PacketBuilder`.
#[cfg(test)]
pub(crate) mod test_packets {
    use crate::frame::{Frame, HEADROOM};
    use etherparse::{
        IpDscp, IpEcn, IpHeaders, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, LinkExtHeader,
        PacketBuilder, PacketHeaders, VlanId,
    };
    use std::net::Ipv6Addr;

    pub(crate) const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    pub(crate) const FWD_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
    pub(crate) const BACKEND_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x03];
    pub(crate) const CLIENT_V4: [u8; 4] = [198, 18, 0, 1];
    pub(crate) const VIP_V4: [u8; 4] = [198, 19, 0, 10];
    pub(crate) const OUTER_SRC_V4: [u8; 4] = [198, 18, 255, 1];
    pub(crate) const BACKEND_V4: [u8; 4] = [198, 18, 10, 2];
    pub(crate) const VLAN_OUTER: u16 = 100;
    pub(crate) const VLAN_INNER: u16 = 200;
    /// Bytes appended after the IP packet to stand for Ethernet padding.
    pub(crate) const PADDING_BYTE: u8 = 0xee;

    pub(crate) fn v6(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().unwrap().octets()
    }
    pub(crate) fn client_v6() -> [u8; 16] {
        v6("fd00:18::1")
    }
    pub(crate) fn vip_v6() -> [u8; 16] {
        v6("fd00:19::10")
    }
    pub(crate) fn outer_src_v6() -> [u8; 16] {
        v6("fd00:ff::1")
    }
    pub(crate) fn backend_v6() -> [u8; 16] {
        v6("fd00:10::2")
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Vlan {
        Untagged,
        Single,
        Double,
    }

    impl Vlan {
        pub(crate) const ALL: [Vlan; 3] = [Vlan::Untagged, Vlan::Single, Vlan::Double];

        pub(crate) fn ids(self) -> Vec<u16> {
            match self {
                Vlan::Untagged => vec![],
                Vlan::Single => vec![VLAN_OUTER],
                Vlan::Double => vec![VLAN_OUTER, VLAN_INNER],
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum L4 {
        Tcp,
        Udp,
        EchoRequest,
        EchoReply,
    }

    /// What to build: a frame from the router to fwd, client -> VIP.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Input {
        pub(crate) vlan: Vlan,
        pub(crate) v6: bool,
        pub(crate) l4: L4,
        /// Length of the IP packet (header included); the payload is sized to match.
        pub(crate) ip_len: usize,
        /// IPv4 DF; ignored for IPv6.
        pub(crate) dont_fragment: bool,
        /// IPv4 TOS / IPv6 traffic class (DSCP << 2 | ECN).
        pub(crate) traffic_class: u8,
        /// Pad the frame with [`PADDING_BYTE`] up to this length (Ethernet minimum: 60).
        pub(crate) pad_to: usize,
        /// Four bytes of IPv4 options (NOPs), making the header 24 bytes.
        pub(crate) ipv4_options: bool,
    }

    impl Input {
        pub(crate) const fn new(vlan: Vlan, v6: bool, l4: L4, ip_len: usize) -> Input {
            Input {
                vlan,
                v6,
                l4,
                ip_len,
                dont_fragment: true,
                traffic_class: 0,
                pad_to: 0,
                ipv4_options: false,
            }
        }
    }

    #[derive(Clone, Debug)]
    pub(crate) struct Built {
        pub(crate) bytes: Vec<u8>,
        pub(crate) l3_offset: usize,
        pub(crate) l4_offset: usize,
        pub(crate) ip_len: usize,
    }

    impl Built {
        pub(crate) fn ip_packet(&self) -> &[u8] {
            &self.bytes[self.l3_offset..self.l3_offset + self.ip_len]
        }
    }

    pub(crate) fn build(input: &Input) -> Built {
        let ip_header_len = match (input.v6, input.ipv4_options) {
            (true, _) => 40,
            (false, false) => 20,
            (false, true) => 24,
        };
        let l4_header_len = match input.l4 {
            L4::Tcp => 20,
            L4::Udp | L4::EchoRequest | L4::EchoReply => 8,
        };
        let payload_len = input
            .ip_len
            .checked_sub(ip_header_len + l4_header_len)
            .unwrap_or_else(|| panic!("{input:?}: ip_len too small"));
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
        let ip = if input.v6 {
            IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: input.traffic_class,
                    flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
                    hop_limit: 57,
                    source: client_v6(),
                    destination: vip_v6(),
                    ..Default::default()
                },
                Default::default(),
            )
        } else {
            let options: &[u8] = if input.ipv4_options { &[1, 1, 1, 1] } else { &[] };
            IpHeaders::Ipv4(
                Ipv4Header {
                    dscp: IpDscp::try_new(input.traffic_class >> 2).unwrap(),
                    ecn: IpEcn::try_new(input.traffic_class & 3).unwrap(),
                    identification: 0x4242,
                    dont_fragment: input.dont_fragment,
                    time_to_live: 57,
                    source: CLIENT_V4,
                    destination: VIP_V4,
                    options: Ipv4Options::try_from(options).unwrap(),
                    ..Default::default()
                },
                Default::default(),
            )
        };
        let ethernet = PacketBuilder::ethernet2(ROUTER_MAC, FWD_MAC);
        let ip_step = match input.vlan {
            Vlan::Untagged => ethernet.ip(ip),
            Vlan::Single => ethernet.single_vlan(VlanId::try_new(VLAN_OUTER).unwrap()).ip(ip),
            Vlan::Double => ethernet
                .double_vlan(VlanId::try_new(VLAN_OUTER).unwrap(), VlanId::try_new(VLAN_INNER).unwrap())
                .ip(ip),
        };
        let mut bytes = Vec::new();
        match (input.l4, input.v6) {
            (L4::Tcp, _) => ip_step.tcp(40000, 80, 0x1000_0000, 0xffff).write(&mut bytes, &payload),
            (L4::Udp, _) => ip_step.udp(40001, 53).write(&mut bytes, &payload),
            (L4::EchoRequest, false) => ip_step.icmpv4_echo_request(0x77, 9).write(&mut bytes, &payload),
            (L4::EchoRequest, true) => ip_step.icmpv6_echo_request(0x77, 9).write(&mut bytes, &payload),
            (L4::EchoReply, false) => ip_step.icmpv4_echo_reply(0x77, 9).write(&mut bytes, &payload),
            (L4::EchoReply, true) => ip_step.icmpv6_echo_reply(0x77, 9).write(&mut bytes, &payload),
        }
        .unwrap();
        let l3_offset = 14 + 4 * input.vlan.ids().len();
        assert_eq!(bytes.len(), l3_offset + input.ip_len, "{input:?}");
        if bytes.len() < input.pad_to {
            bytes.resize(input.pad_to, PADDING_BYTE);
        }
        Built { bytes, l3_offset, l4_offset: l3_offset + ip_header_len, ip_len: input.ip_len }
    }

    /// A buffer holding `bytes` after `headroom` bytes, with some tailroom.
    pub(crate) fn buffer(bytes: &[u8], headroom: usize) -> Vec<u8> {
        let mut buf = vec![0x5a; headroom];
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(&[0xa5; 64]);
        buf
    }

    /// Runs `rewrite` on `bytes` placed after `headroom` bytes. Returns the result, the frame
    /// afterwards and its headroom; on `Err`, asserts that nothing changed.
    pub(crate) fn run<R>(
        bytes: &[u8],
        headroom: usize,
        rewrite: impl FnOnce(&mut Frame<'_>) -> Result<(), R>,
    ) -> (Result<(), R>, Vec<u8>, usize) {
        let mut buf = buffer(bytes, headroom);
        let before = buf.clone();
        let mut frame = Frame::new(&mut buf, headroom, bytes.len()).unwrap();
        let result = rewrite(&mut frame);
        let (out, headroom_after) = (frame.data().to_vec(), frame.headroom());
        if result.is_err() {
            assert_eq!((frame.start(), frame.len()), (headroom, bytes.len()), "failed call moved the frame");
            assert!(buf == before, "failed call changed the buffer");
        }
        (result, out, headroom_after)
    }

    pub(crate) fn run_default<R>(
        bytes: &[u8],
        rewrite: impl FnOnce(&mut Frame<'_>) -> Result<(), R>,
    ) -> (Result<(), R>, Vec<u8>, usize) {
        run(bytes, HEADROOM, rewrite)
    }

    pub(crate) fn vlan_ids(headers: &PacketHeaders<'_>) -> Vec<u16> {
        headers.vlan_ids().iter().map(|id| id.value()).collect()
    }

    /// The ethertype in front of the network header: the innermost VLAN tag's or Ethernet's.
    pub(crate) fn innermost_ether_type(headers: &PacketHeaders<'_>) -> u16 {
        match headers.link_exts.last() {
            Some(LinkExtHeader::Vlan(tag)) => tag.ether_type.0,
            Some(other) => panic!("unexpected link extension {other:?}"),
            None => headers.link.clone().unwrap().ethernet2().unwrap().ether_type.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::*;
    use super::*;
    use crate::frame::HEADROOM;
    use etherparse::{ip_number, NetHeaders, PacketHeaders, PayloadSlice, TransportHeader};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const FLOW_HASH: u64 = 0x9e37_79b9_7f4a_7c15;
    const GUE_PORT: u16 = 6080;
    const TO_BACKEND: Macs<'static> = Macs { dst: &BACKEND_MAC, src: &FWD_MAC };

    fn tunnel(outer_v6: bool) -> Tunnel {
        if outer_v6 {
            Tunnel::V6 { src: u128::from_be_bytes(outer_src_v6()), dst: u128::from_be_bytes(backend_v6()) }
        } else {
            Tunnel::V4 { src: u32::from_be_bytes(OUTER_SRC_V4), dst: u32::from_be_bytes(BACKEND_V4) }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        Ipip,
        Gue,
        /// GUE with a zero UDP checksum over IPv6.
        GueZeroChecksum,
    }

    impl Mode {
        const ALL: [Mode; 3] = [Mode::Ipip, Mode::Gue, Mode::GueZeroChecksum];
    }

    fn encap(
        frame: &mut Frame<'_>,
        built: &Built,
        input: &Input,
        mode: Mode,
        tunnel: Tunnel,
    ) -> Result<(), DropReason> {
        encap_call(frame, built.l3_offset, built.ip_len, input.v6, mode, tunnel, FLOW_HASH)
    }

    fn encap_call(
        frame: &mut Frame<'_>,
        l3_offset: usize,
        inner_len: usize,
        inner_is_v6: bool,
        mode: Mode,
        tunnel: Tunnel,
        flow_hash: u64,
    ) -> Result<(), DropReason> {
        match mode {
            Mode::Ipip => encap_ipip(frame, l3_offset, inner_len, inner_is_v6, tunnel, flow_hash, TO_BACKEND),
            Mode::Gue => {
                encap_gue(frame, l3_offset, inner_len, inner_is_v6, tunnel, flow_hash, GUE_PORT, TO_BACKEND)
            }
            Mode::GueZeroChecksum => encap_gue_with_checksum(
                frame,
                l3_offset,
                inner_len,
                inner_is_v6,
                tunnel,
                flow_hash,
                GUE_PORT,
                TO_BACKEND,
                Ipv6UdpChecksum::Zero,
            ),
        }
    }

    /// What an encapsulated frame must look like, spelled out per case.
    #[derive(Clone, Copy, Debug)]
    struct Outer {
        ether_type: u16,
        protocol: u8,
        /// Outer IPv4 DF (IPv6 outer: not applicable, `true`).
        dont_fragment: bool,
        overhead: usize,
    }

    /// Parses an encapsulated frame with etherparse and checks every outer field, the UDP header
    /// and checksum, and that the inner packet is byte for byte the input's.
    #[allow(clippy::too_many_arguments)] // a test checker: the case's fields, spelled out
    fn check_encapsulated(
        description: &str,
        input: &Input,
        built: &Built,
        mode: Mode,
        outer_v6: bool,
        flow_hash: u64,
        outer: Outer,
        out: &[u8],
    ) {
        let gue = mode != Mode::Ipip;
        assert_eq!(out.len(), built.l3_offset + outer.overhead + built.ip_len, "{description}: length");
        let headers =
            PacketHeaders::from_ethernet_slice(out).unwrap_or_else(|e| panic!("{description}: {e}"));
        let ethernet = headers.link.clone().unwrap().ethernet2().unwrap();
        assert_eq!((ethernet.destination, ethernet.source), (BACKEND_MAC, FWD_MAC), "{description}: MACs");
        assert_eq!(vlan_ids(&headers), input.vlan.ids(), "{description}: VLAN tags");
        // VLAN tags keep their priority and DEI bits too: bytes between MACs and innermost
        // ethertype are the input's.
        assert_eq!(out[12..built.l3_offset - 2], built.bytes[12..built.l3_offset - 2], "{description}: tags");
        assert_eq!(innermost_ether_type(&headers), outer.ether_type, "{description}: ethertype");

        let outer_len = outer.overhead + built.ip_len;
        let inner = &out[built.l3_offset + outer.overhead..];
        match headers.net.clone().unwrap() {
            NetHeaders::Ipv4(ip, extensions) => {
                assert!(!outer_v6, "{description}: outer IPv4 instead of IPv6");
                assert!(ip.options.is_empty() && extensions.is_empty(), "{description}: IHL 5");
                assert_eq!(ip.dscp.value() << 2 | ip.ecn.value(), input.traffic_class, "{description}: TOS");
                assert_eq!(usize::from(ip.total_len), outer_len, "{description}: total length");
                assert_eq!(ip.identification, 0, "{description}: id");
                assert_eq!(ip.dont_fragment, outer.dont_fragment, "{description}: DF");
                assert!(!ip.more_fragments && ip.fragment_offset.value() == 0, "{description}: fragment");
                assert_eq!(ip.time_to_live, OUTER_TTL, "{description}: TTL");
                assert_eq!(ip.protocol.0, outer.protocol, "{description}: protocol");
                assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{description}: IPv4 checksum");
                assert_eq!(
                    (ip.source, ip.destination),
                    (OUTER_SRC_V4, BACKEND_V4),
                    "{description}: addresses"
                );
            }
            NetHeaders::Ipv6(ip, extensions) => {
                assert!(outer_v6, "{description}: outer IPv6 instead of IPv4");
                assert!(extensions.is_empty(), "{description}: extension headers");
                assert_eq!(ip.traffic_class, input.traffic_class, "{description}: traffic class");
                assert_eq!(
                    ip.flow_label.value(),
                    ((flow_hash >> 32) & 0xf_ffff) as u32,
                    "{description}: label"
                );
                assert_eq!(usize::from(ip.payload_length) + 40, outer_len, "{description}: payload length");
                assert_eq!(ip.next_header.0, outer.protocol, "{description}: next header");
                assert_eq!(ip.hop_limit, OUTER_TTL, "{description}: hop limit");
                assert_eq!(
                    (ip.source, ip.destination),
                    (outer_src_v6(), backend_v6()),
                    "{description}: addresses"
                );
            }
            NetHeaders::Arp(_) => panic!("{description}: ARP"),
        }

        match (gue, headers.transport.clone(), &headers.payload) {
            (false, None, PayloadSlice::Ip(payload)) => {
                assert_eq!(payload.payload, inner, "{description}: IP payload");
            }
            (true, Some(TransportHeader::Udp(udp)), PayloadSlice::Udp(payload)) => {
                assert_eq!(*payload, inner, "{description}: UDP payload");
                let expected_port = 0xc000 | ((flow_hash >> 48) & 0x3fff) as u16;
                assert_eq!(udp.source_port, expected_port, "{description}: source port");
                assert!(udp.source_port >= 49152, "{description}: ephemeral source port");
                assert_eq!(udp.destination_port, GUE_PORT, "{description}: destination port");
                assert_eq!(usize::from(udp.length), 8 + built.ip_len, "{description}: UDP length");
                match headers.net.clone().unwrap() {
                    NetHeaders::Ipv6(ip, _) if mode == Mode::Gue => {
                        let expected = udp.calc_checksum_ipv6(&ip, inner).unwrap();
                        assert_eq!(udp.checksum, expected, "{description}: UDP checksum");
                        assert_ne!(udp.checksum, 0, "{description}: IPv6 UDP checksum present");
                    }
                    _ => assert_eq!(udp.checksum, 0, "{description}: zero UDP checksum"),
                }
            }
            (_, transport, payload) => panic!("{description}: unexpected {transport:?} / {payload:?}"),
        }

        assert_eq!(inner, built.ip_packet(), "{description}: inner packet changed");
        let inner_headers = PacketHeaders::from_ip_slice(inner).unwrap();
        let input_headers = PacketHeaders::from_ethernet_slice(&built.bytes).unwrap();
        assert_eq!(inner_headers.net, input_headers.net, "{description}: inner IP header");
        assert_eq!(inner_headers.transport, input_headers.transport, "{description}: inner L4 header");
    }

    const V4_TCP: Input = Input::new(Vlan::Untagged, false, L4::Tcp, 1500);

    struct EncapCase {
        description: &'static str,
        input: Input,
        mode: Mode,
        outer_v6: bool,
        expected: Outer,
    }

    const fn outer(ether_type: u16, protocol: u8, dont_fragment: bool, overhead: usize) -> Outer {
        Outer { ether_type, protocol, dont_fragment, overhead }
    }

    #[test]
    fn encapsulation_golden_table() {
        let with = |input: Input, f: fn(&mut Input)| {
            let mut input = input;
            f(&mut input);
            input
        };
        let cases = [
            EncapCase {
                description: "ipip 4-in-4, TCP, untagged, 1500 bytes",
                input: V4_TCP,
                mode: Mode::Ipip,
                outer_v6: false,
                expected: outer(0x0800, 4, true, 20),
            },
            EncapCase {
                description: "ipip 4-in-4, UDP, one VLAN tag, DF clear is copied, TOS copied",
                input: with(Input::new(Vlan::Single, false, L4::Udp, 200), |i| {
                    i.dont_fragment = false;
                    i.traffic_class = 0xb9;
                }),
                mode: Mode::Ipip,
                outer_v6: false,
                expected: outer(0x0800, 4, false, 20),
            },
            EncapCase {
                description: "ipip 4-in-4, short UDP with Ethernet padding: padding cut",
                input: with(Input::new(Vlan::Untagged, false, L4::Udp, 30), |i| i.pad_to = 60),
                mode: Mode::Ipip,
                outer_v6: false,
                expected: outer(0x0800, 4, true, 20),
            },
            EncapCase {
                description: "ipip 6-in-6, TCP, untagged",
                input: Input::new(Vlan::Untagged, true, L4::Tcp, 1500),
                mode: Mode::Ipip,
                outer_v6: true,
                expected: outer(0x86dd, 41, true, 40),
            },
            EncapCase {
                description: "ipip 6-in-6, UDP, two VLAN tags, traffic class copied",
                input: with(Input::new(Vlan::Double, true, L4::Udp, 300), |i| i.traffic_class = 0x2e),
                mode: Mode::Ipip,
                outer_v6: true,
                expected: outer(0x86dd, 41, true, 40),
            },
            EncapCase {
                description: "ipip 4-in-6, TCP, one VLAN tag: ethertype becomes IPv6",
                input: Input::new(Vlan::Single, false, L4::Tcp, 600),
                mode: Mode::Ipip,
                outer_v6: true,
                expected: outer(0x86dd, 4, true, 40),
            },
            EncapCase {
                description: "ipip 6-in-4, UDP, two VLAN tags: ethertype becomes IPv4, DF set",
                input: Input::new(Vlan::Double, true, L4::Udp, 600),
                mode: Mode::Ipip,
                outer_v6: false,
                expected: outer(0x0800, 41, true, 20),
            },
            EncapCase {
                description: "gue 4-in-4, TCP, untagged, zero UDP checksum",
                input: V4_TCP,
                mode: Mode::Gue,
                outer_v6: false,
                expected: outer(0x0800, 17, true, 28),
            },
            EncapCase {
                description: "gue 4-in-4, UDP, two VLAN tags, DF clear, padded",
                input: with(Input::new(Vlan::Double, false, L4::Udp, 29), |i| {
                    i.dont_fragment = false;
                    i.pad_to = 60;
                }),
                mode: Mode::Gue,
                outer_v6: false,
                expected: outer(0x0800, 17, false, 28),
            },
            EncapCase {
                description: "gue 6-in-6, TCP, one VLAN tag, UDP checksum over the inner packet",
                input: Input::new(Vlan::Single, true, L4::Tcp, 1500),
                mode: Mode::Gue,
                outer_v6: true,
                expected: outer(0x86dd, 17, true, 48),
            },
            EncapCase {
                description: "gue 6-in-6, UDP, untagged, zero checksum mode",
                input: Input::new(Vlan::Untagged, true, L4::Udp, 100),
                mode: Mode::GueZeroChecksum,
                outer_v6: true,
                expected: outer(0x86dd, 17, true, 48),
            },
            EncapCase {
                description: "gue 4-in-6, UDP, two VLAN tags, odd-length inner packet",
                input: Input::new(Vlan::Double, false, L4::Udp, 333),
                mode: Mode::Gue,
                outer_v6: true,
                expected: outer(0x86dd, 17, true, 48),
            },
            EncapCase {
                description: "gue 6-in-4, TCP, untagged",
                input: Input::new(Vlan::Untagged, true, L4::Tcp, 1400),
                mode: Mode::Gue,
                outer_v6: false,
                expected: outer(0x0800, 17, true, 28),
            },
            EncapCase {
                description: "ipip 4-in-4 with IPv4 options in the inner header",
                input: with(Input::new(Vlan::Untagged, false, L4::Tcp, 100), |i| i.ipv4_options = true),
                mode: Mode::Ipip,
                outer_v6: false,
                expected: outer(0x0800, 4, true, 20),
            },
        ];
        for case in &cases {
            let built = build(&case.input);
            let (result, out, headroom) = run_default(&built.bytes, |f| {
                encap(f, &built, &case.input, case.mode, tunnel(case.outer_v6))
            });
            assert_eq!(result, Ok(()), "{}", case.description);
            assert_eq!(headroom, HEADROOM - case.expected.overhead, "{}: headroom used", case.description);
            check_encapsulated(
                case.description,
                &case.input,
                &built,
                case.mode,
                case.outer_v6,
                FLOW_HASH,
                case.expected,
                &out,
            );
        }
    }

    /// Every combination of link header, inner and outer family, L4 protocol and mode.
    #[test]
    fn encapsulation_every_combination() {
        for vlan in Vlan::ALL {
            for inner_v6 in [false, true] {
                for outer_v6 in [false, true] {
                    for l4 in [L4::Tcp, L4::Udp] {
                        for mode in Mode::ALL {
                            let description =
                                format!("{mode:?} inner v6 {inner_v6} outer v6 {outer_v6} {vlan:?} {l4:?}");
                            let input = Input::new(vlan, inner_v6, l4, 700);
                            let built = build(&input);
                            let (result, out, _) = run_default(&built.bytes, |f| {
                                encap(f, &built, &input, mode, tunnel(outer_v6))
                            });
                            assert_eq!(result, Ok(()), "{description}");
                            let expected = Outer {
                                ether_type: if outer_v6 { 0x86dd } else { 0x0800 },
                                protocol: match (mode, inner_v6) {
                                    (Mode::Ipip, false) => 4,
                                    (Mode::Ipip, true) => 41,
                                    _ => 17,
                                },
                                dont_fragment: true,
                                overhead: encap_overhead(mode != Mode::Ipip, outer_v6),
                            };
                            check_encapsulated(
                                &description,
                                &input,
                                &built,
                                mode,
                                outer_v6,
                                FLOW_HASH,
                                expected,
                                &out,
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn overheads() {
        assert_eq!(
            [
                encap_overhead(false, false),
                encap_overhead(false, true),
                encap_overhead(true, false),
                encap_overhead(true, true)
            ],
            [20, 40, 28, 48]
        );
    }

    /// A call with its arguments, for error cases that bend one of them.
    #[derive(Clone, Copy, Debug)]
    struct Call {
        headroom: usize,
        /// Bytes of the built frame handed over (cut to test truncation).
        frame_len: usize,
        l3_offset: usize,
        ip_len: usize,
        is_v6: bool,
        tunnel: Tunnel,
    }

    struct EncapErrorCase {
        description: &'static str,
        input: Input,
        outer_v6: bool,
        bend: fn(&mut Call),
        /// Expected results of ipip and gue.
        expected: [Result<(), DropReason>; 2],
    }

    #[test]
    fn encapsulation_errors() {
        use DropReason::*;
        let v4_udp = Input::new(Vlan::Untagged, false, L4::Udp, 100);
        let v6_udp = Input::new(Vlan::Single, true, L4::Udp, 100);
        let padded = Input { pad_to: 60, ..Input::new(Vlan::Untagged, false, L4::Udp, 30) };
        let cases = [
            EncapErrorCase {
                description: "headroom one short of outer IPv4 (19): both fail",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.headroom = 19,
                expected: [Err(NoHeadroom), Err(NoHeadroom)],
            },
            EncapErrorCase {
                description: "headroom exactly 20: ipip fits, gue does not",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.headroom = 20,
                expected: [Ok(()), Err(NoHeadroom)],
            },
            EncapErrorCase {
                description: "headroom exactly 28: both fit",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.headroom = 28,
                expected: [Ok(()), Ok(())],
            },
            EncapErrorCase {
                description: "headroom 47 for outer IPv6",
                input: v6_udp,
                outer_v6: true,
                bend: |c| c.headroom = 47,
                expected: [Ok(()), Err(NoHeadroom)],
            },
            EncapErrorCase {
                description: "headroom 39 for outer IPv6",
                input: v6_udp,
                outer_v6: true,
                bend: |c| c.headroom = 39,
                expected: [Err(NoHeadroom), Err(NoHeadroom)],
            },
            EncapErrorCase {
                description: "no headroom at all",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.headroom = 0,
                expected: [Err(NoHeadroom), Err(NoHeadroom)],
            },
            EncapErrorCase {
                description: "frame ends one byte before the inner packet does",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.frame_len -= 1,
                expected: [Err(Truncated), Err(Truncated)],
            },
            EncapErrorCase {
                description: "frame of 13 bytes",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.frame_len = 13,
                expected: [Err(Truncated), Err(Truncated)],
            },
            EncapErrorCase {
                description: "empty frame",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.frame_len = 0,
                expected: [Err(Truncated), Err(Truncated)],
            },
            EncapErrorCase {
                description: "l3_offset 13, inside the Ethernet header",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.l3_offset = 13,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "l3_offset 16, not a whole VLAN tag",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.l3_offset = 16,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "l3_offset 26, three tags",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.l3_offset = 26,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "l3_offset 0",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.l3_offset = 0,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "inner length beyond the frame",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.ip_len += 1,
                expected: [Err(Truncated), Err(Truncated)],
            },
            EncapErrorCase {
                description: "inner length usize::MAX",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.ip_len = usize::MAX,
                expected: [Err(Truncated), Err(Truncated)],
            },
            EncapErrorCase {
                description: "inner length disagrees with the IPv4 total length (into the padding)",
                input: padded,
                outer_v6: false,
                bend: |c| c.ip_len += 2,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "inner length shorter than an IPv4 header",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.ip_len = 19,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "inner length disagrees with the IPv6 payload length",
                input: v6_udp,
                outer_v6: true,
                bend: |c| c.ip_len -= 1,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "IPv4 packet passed as IPv6",
                input: v4_udp,
                outer_v6: false,
                bend: |c| c.is_v6 = true,
                expected: [Err(Malformed), Err(Malformed)],
            },
            EncapErrorCase {
                description: "IPv6 packet passed as IPv4",
                input: v6_udp,
                outer_v6: true,
                bend: |c| c.is_v6 = false,
                expected: [Err(Malformed), Err(Malformed)],
            },
        ];
        for case in &cases {
            let built = build(&case.input);
            let mut call = Call {
                headroom: HEADROOM,
                frame_len: built.bytes.len(),
                l3_offset: built.l3_offset,
                ip_len: built.ip_len,
                is_v6: case.input.v6,
                tunnel: tunnel(case.outer_v6),
            };
            (case.bend)(&mut call);
            for (mode, expected) in [Mode::Ipip, Mode::Gue].into_iter().zip(case.expected) {
                let (result, _, _) = run(&built.bytes[..call.frame_len], call.headroom, |f| {
                    encap_call(f, call.l3_offset, call.ip_len, call.is_v6, mode, call.tunnel, FLOW_HASH)
                });
                assert_eq!(result, expected, "{} ({mode:?})", case.description);
            }
        }
    }

    /// A tunnel is one family: a mixed pair has no `Tunnel`, so no encapsulation can mix them.
    #[test]
    fn tunnel_of_mixed_families_is_refused() {
        let (v4, v6) = (IpAddr::V4(Ipv4Addr::from(OUTER_SRC_V4)), IpAddr::V6(Ipv6Addr::from(backend_v6())));
        assert_eq!(Tunnel::new(v4, v6), None);
        assert_eq!(Tunnel::new(v6, v4), None);
        assert_eq!(Tunnel::new(v4, IpAddr::V4(Ipv4Addr::from(BACKEND_V4))), Some(tunnel(false)));
        assert_eq!(Tunnel::new(IpAddr::V6(Ipv6Addr::from(outer_src_v6())), v6), Some(tunnel(true)));
    }

    /// Outer length fields cannot hold the result: TooBig, not a wrapped length.
    #[test]
    fn encapsulation_of_maximum_size_packets_is_too_big() {
        for (input, outer_v6, mode) in [
            (Input::new(Vlan::Untagged, false, L4::Udp, 65535), false, Mode::Ipip),
            (Input::new(Vlan::Untagged, false, L4::Udp, 65535 - 20), false, Mode::Gue),
            (Input::new(Vlan::Untagged, true, L4::Udp, 65535 + 40), true, Mode::Ipip),
            (Input::new(Vlan::Untagged, true, L4::Udp, 65535 + 40 - 48 + 1), true, Mode::Gue),
        ] {
            let built = build(&input);
            let (result, _, _) =
                run_default(&built.bytes, |f| encap(f, &built, &input, mode, tunnel(outer_v6)));
            assert_eq!(result, Err(DropReason::TooBig), "{input:?} {mode:?} outer v6 {outer_v6}");
        }
        // The largest that fit: 4-in-4 ipip of 65515 bytes, 6-in-6 ipip of 65535 bytes (the outer
        // payload length counts the inner packet only), 6-in-6 gue of 65527 bytes.
        for (input, outer_v6, mode) in [
            (Input::new(Vlan::Untagged, false, L4::Udp, 65515), false, Mode::Ipip),
            (Input::new(Vlan::Untagged, true, L4::Udp, 65535), true, Mode::Ipip),
            (Input::new(Vlan::Untagged, true, L4::Udp, 65535 + 40 - 48), true, Mode::Gue),
        ] {
            let built = build(&input);
            let (result, out, _) =
                run_default(&built.bytes, |f| encap(f, &built, &input, mode, tunnel(outer_v6)));
            assert_eq!(result, Ok(()), "{input:?} {mode:?}");
            let expected = Outer {
                ether_type: if outer_v6 { 0x86dd } else { 0x0800 },
                protocol: match (mode, input.v6) {
                    (Mode::Ipip, false) => 4,
                    (Mode::Ipip, true) => 41,
                    _ => 17,
                },
                dont_fragment: true,
                overhead: encap_overhead(mode != Mode::Ipip, outer_v6),
            };
            check_encapsulated("largest", &input, &built, mode, outer_v6, FLOW_HASH, expected, &out);
        }
    }

    struct L2Case {
        description: &'static str,
        frame: Vec<u8>,
        expected: Result<(), DropReason>,
    }

    #[test]
    fn rewrite_l2_golden_table() {
        let padded = build(&Input { pad_to: 60, ..Input::new(Vlan::Untagged, false, L4::Udp, 30) });
        let cases = [
            L2Case {
                description: "IPv4 TCP untagged",
                frame: build(&Input::new(Vlan::Untagged, false, L4::Tcp, 1500)).bytes,
                expected: Ok(()),
            },
            L2Case {
                description: "IPv6 UDP, one VLAN tag",
                frame: build(&Input::new(Vlan::Single, true, L4::Udp, 100)).bytes,
                expected: Ok(()),
            },
            L2Case {
                description: "IPv4 UDP, two VLAN tags",
                frame: build(&Input::new(Vlan::Double, false, L4::Udp, 100)).bytes,
                expected: Ok(()),
            },
            L2Case {
                description: "IPv6 TCP, two VLAN tags",
                frame: build(&Input::new(Vlan::Double, true, L4::Tcp, 1500)).bytes,
                expected: Ok(()),
            },
            L2Case { description: "padded frame: padding kept", frame: padded.bytes, expected: Ok(()) },
            L2Case { description: "bare 14-byte Ethernet header", frame: vec![0x11; 14], expected: Ok(()) },
            L2Case { description: "13 bytes", frame: vec![0x11; 13], expected: Err(DropReason::Truncated) },
            L2Case { description: "empty", frame: vec![], expected: Err(DropReason::Truncated) },
        ];
        for case in &cases {
            let (result, out, headroom) = run_default(&case.frame, |f| rewrite_l2(f, TO_BACKEND));
            assert_eq!(result, case.expected, "{}", case.description);
            if result.is_err() {
                continue;
            }
            assert_eq!(headroom, HEADROOM, "{}", case.description);
            assert_eq!(out.len(), case.frame.len(), "{}", case.description);
            assert_eq!(out[..6], BACKEND_MAC, "{}", case.description);
            assert_eq!(out[6..12], FWD_MAC, "{}", case.description);
            assert_eq!(out[12..], case.frame[12..], "{}: only MACs change", case.description);
            if case.frame.len() > 14 {
                let headers = PacketHeaders::from_ethernet_slice(&out).unwrap();
                let ethernet = headers.link.clone().unwrap().ethernet2().unwrap();
                assert_eq!((ethernet.destination, ethernet.source), (BACKEND_MAC, FWD_MAC));
                let input = PacketHeaders::from_ethernet_slice(&case.frame).unwrap();
                assert_eq!(
                    (headers.link_exts, headers.net, headers.transport),
                    (input.link_exts, input.net, input.transport)
                );
            }
        }
    }

    #[test]
    fn flow_entropy_fields() {
        assert_eq!(gue_source_port(0), 49152);
        assert_eq!(gue_source_port(u64::MAX), 65535);
        assert_eq!(ipv6_flow_label(u64::MAX), 0xf_ffff);
        assert_eq!(ipv6_flow_label(0xfff0_abcd_0000_0000), 0xabcd);
        assert_eq!(gue_source_port(0x8123_0000_0000_0000), 0xc123);
        assert_eq!(ip_number::UDP.0, IPPROTO_UDP);
    }

    fn any_vlan() -> impl Strategy<Value = Vlan> {
        prop_oneof![Just(Vlan::Untagged), Just(Vlan::Single), Just(Vlan::Double)]
    }

    fn any_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Ipip), Just(Mode::Gue), Just(Mode::GueZeroChecksum)]
    }

    proptest! {
        /// Valid packets of any size and flow hash: the output always checks out, or the headroom
        /// was too small.
        #[test]
        fn encapsulation_of_valid_packets(
            vlan in any_vlan(),
            inner_v6 in any::<bool>(),
            outer_v6 in any::<bool>(),
            udp in any::<bool>(),
            mode in any_mode(),
            payload_len in 0usize..2000,
            traffic_class in any::<u8>(),
            dont_fragment in any::<bool>(),
            flow_hash in any::<u64>(),
            headroom in 0usize..64,
        ) {
            let l4 = if udp { L4::Udp } else { L4::Tcp };
            let headers_len = if inner_v6 { 40 } else { 20 } + if udp { 8 } else { 20 };
            let input = Input {
                traffic_class,
                dont_fragment,
                pad_to: 60,
                ..Input::new(vlan, inner_v6, l4, headers_len + payload_len)
            };
            let built = build(&input);
            let (result, out, _) = run(&built.bytes, headroom, |f| {
                encap_call(f, built.l3_offset, built.ip_len, inner_v6, mode, tunnel(outer_v6), flow_hash)
            });
            let overhead = encap_overhead(mode != Mode::Ipip, outer_v6);
            if headroom < overhead {
                prop_assert_eq!(result, Err(DropReason::NoHeadroom));
            } else {
                prop_assert_eq!(result, Ok(()));
                let expected = Outer {
                    ether_type: if outer_v6 { 0x86dd } else { 0x0800 },
                    protocol: match (mode, inner_v6) {
                        (Mode::Ipip, false) => 4,
                        (Mode::Ipip, true) => 41,
                        _ => 17,
                    },
                    dont_fragment: dont_fragment || inner_v6,
                    overhead,
                };
                check_encapsulated("proptest", &input, &built, mode, outer_v6, flow_hash, expected, &out);
            }
        }

        /// Any bytes and any arguments: never a panic; Err leaves the frame alone (checked by run).
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            headroom in 0usize..80,
            l3_offset in prop_oneof![Just(14usize), Just(18), Just(22), 0usize..40],
            inner_len in prop_oneof![0usize..220, Just(usize::MAX), Just(usize::MAX - 10)],
            inner_len_to_end in any::<bool>(),
            inner_is_v6 in any::<bool>(),
            outer_v6 in any::<bool>(),
            mode in any_mode(),
            flow_hash in any::<u64>(),
            fix_version_and_length in any::<bool>(),
        ) {
            let mut bytes = bytes;
            let inner_len = if inner_len_to_end { bytes.len().saturating_sub(l3_offset) } else { inner_len };
            // Make Ok reachable often: a matching version nibble and length field.
            if fix_version_and_length && l3_offset + 40 <= bytes.len() && inner_len <= 0xffff {
                bytes[l3_offset] = if inner_is_v6 { 0x60 } else { 0x45 };
                let length = if inner_is_v6 { inner_len.saturating_sub(40) } else { inner_len };
                let at = l3_offset + if inner_is_v6 { 4 } else { 2 };
                bytes[at..at + 2].copy_from_slice(&(length as u16).to_be_bytes());
            }
            let tunnel = tunnel(outer_v6);
            let (result, out, headroom_after) =
                run(&bytes, headroom, |f| encap_call(f, l3_offset, inner_len, inner_is_v6, mode, tunnel, flow_hash));
            if result.is_ok() {
                let overhead = encap_overhead(mode != Mode::Ipip, outer_v6);
                prop_assert_eq!(out.len(), l3_offset + inner_len + overhead);
                prop_assert_eq!(headroom_after, headroom - overhead);
                prop_assert_eq!(&out[l3_offset + overhead..], &bytes[l3_offset..l3_offset + inner_len]);
            }
            let (result, out, _) = run(&bytes, headroom, |f| rewrite_l2(f, TO_BACKEND));
            prop_assert_eq!(result.is_ok(), bytes.len() >= 14);
            if result.is_ok() {
                prop_assert_eq!(&out[12..], &bytes[12..]);
            }
        }
    }
}
