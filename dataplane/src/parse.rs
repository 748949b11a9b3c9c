//! Frame classification: the first step of the per-packet pipeline.
//!
//! [`parse`] reads a received Ethernet frame once, front to back, and returns what the pipeline
//! needs to decide: where the IP header is, the addresses, TTL, fragmentation, the final upper-layer
//! protocol and its ports or ICMP kind. It allocates nothing, never panics, and reads only headers:
//! no checksum is verified (the backend does that) and no pass is made over any payload.
//!
//! The headers are read with etherparse's individual header slices (`Ethernet2HeaderSlice`,
//! `SingleVlanHeaderSlice`, `Ipv4HeaderSlice`, `Ipv6HeaderSlice`, the IPv6 extension header slices,
//! `TcpHeaderSlice`, `UdpHeaderSlice`, `Icmpv4Slice`, `Icmpv6Slice`) in sequence, not with
//! `SlicedPacket::from_ethernet`. Producing this module's answer through the whole-packet API
//! measured about twice the cost (IPv4 TCP: 29 ns against 16 ns per frame, release build), and it
//! would still be wrong for us in places: its IPv6 extension walk has no length bound, carries on
//! reading a non-first fragment's data as extension headers, and it does not look inside ICMP
//! errors. `LaxSlicedPacket` measured slower again, and the owned `IpHeaders` copies every
//! extension header into a 2 KiB buffer.

use etherparse::{
    Ethernet2HeaderSlice, Icmpv4Slice, Icmpv6Slice, IpAuthHeaderSlice, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};

use crate::counters::DropReason;
use crate::flow::{v4_mapped, FlowKey};

const ETHERNET_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const IPV6_HEADER_LEN: usize = 40;

const PROTO_HOP_BY_HOP: u8 = 0;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ROUTING: u8 = 43;
const PROTO_FRAGMENT: u8 = 44;
const PROTO_AUTH: u8 = 51;
const PROTO_ICMPV6: u8 = 58;
const PROTO_DEST_OPTIONS: u8 = 60;

/// Longest IPv6 extension header chain we walk. Real traffic carries one or two; a longer chain is
/// more likely an attempt to push the L4 header out of reach (RFC 7112) than a real packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The most bytes [`parse_common_into`] reads of a frame: Ethernet, one VLAN tag, the IPv6
/// header and a TCP header without options (the pipeline prefetches up to here).
pub const COMMON_HEADERS_SPAN: usize = ETHERNET_HEADER_LEN + VLAN_TAG_LEN + IPV6_HEADER_LEN + 20;

const ICMP_HEADER_LEN: usize = 8;
const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// A frame carrying IPv4 or IPv6, as far as the pipeline needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    /// Offset of the (outer-most) IP header in the frame.
    pub l3_offset: usize,
    /// 0, 1 (802.1Q) or 2 (QinQ).
    pub vlan_tags: u8,
    pub ip: IpMeta,
    pub l4: L4Meta,
}

/// The IP layer. Addresses are 16 bytes; IPv4 ones are IPv4-mapped, as in [`FlowKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpMeta {
    pub is_v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4: IHL * 4. IPv6: 40 plus every extension header before the L4 header.
    pub header_len: usize,
    /// IPv4 total length; IPv6 40 + payload length. Ethernet padding after it is not counted.
    pub packet_len: usize,
    /// The IPv4 DF bit; always true for IPv6, which routers never fragment.
    pub dont_fragment: bool,
    /// Some if the packet is a fragment. An IPv6 atomic fragment (offset 0, M=0) is not one.
    pub fragment: Option<Fragment>,
    /// The upper-layer protocol number, after any IPv6 extension headers.
    pub proto: u8,
    /// `l3_offset + header_len`.
    pub l4_offset: usize,
}

/// A fragment of an IP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Fragment offset 0: the fragment that carries the L4 header.
    pub first: bool,
}

/// What follows the IP header(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Meta {
    /// `flags` is the TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMPv4 type 8 or ICMPv6 type 128.
    IcmpEchoRequest,
    /// ICMPv4 types 3, 11, 12 or ICMPv6 types 1..=4 quoting a TCP or UDP packet: its flow as
    /// quoted (the quoted packet's own source and destination, not reversed).
    IcmpError {
        quoted: FlowKey,
    },
    /// Any other ICMP or ICMPv6 message, including errors whose quote gives no ports.
    IcmpOther,
    /// A non-first fragment: there is no L4 header in this packet.
    Fragment,
    /// Another upper-layer protocol (GRE, ESP, ...).
    Other,
}

impl ParsedFrame {
    /// The 5-tuple of a TCP or UDP packet (a first fragment included); None for anything else.
    #[inline]
    pub fn flow_key(&self) -> Option<FlowKey> {
        let (src_port, dst_port) = match self.l4 {
            L4Meta::Tcp { src_port, dst_port, .. } | L4Meta::Udp { src_port, dst_port } => {
                (src_port, dst_port)
            }
            _ => return None,
        };
        Some(FlowKey { src: self.ip.src, dst: self.ip.dst, src_port, dst_port, proto: self.ip.proto })
    }
}

/// Classifies a received Ethernet frame.
///
/// `Ok(None)`: not IPv4 or IPv6 (ARP, LLDP, ...), for the kernel. `Err`: drop, with the reason:
/// [`DropReason::Truncated`] for a header cut short, [`DropReason::BadIpHeader`] for an IPv4 IHL
/// below 5 or a total length outside [header length, bytes present], or an IPv6 payload length
/// beyond the bytes present, [`DropReason::Malformed`] for other inconsistencies (IP version not
/// matching the ethertype, TCP data offset below 5, an IPv6 extension chain cut short or longer
/// than [`MAX_IPV6_EXT_HEADERS`]).
#[inline]
pub fn parse(frame: &[u8]) -> Result<Option<ParsedFrame>, DropReason> {
    let ethernet = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| DropReason::Truncated)?;
    let mut ether_type = ethernet.ether_type().0;
    let mut l3_offset = ETHERNET_HEADER_LEN;
    let mut vlan_tags = 0u8;

    if ether_type == ETHERTYPE_VLAN || ether_type == ETHERTYPE_QINQ {
        let outer =
            SingleVlanHeaderSlice::from_slice(rest(frame, l3_offset)).map_err(|_| DropReason::Truncated)?;
        ether_type = outer.ether_type().0;
        l3_offset += VLAN_TAG_LEN;
        vlan_tags = 1;
        if ether_type == ETHERTYPE_VLAN {
            let inner = SingleVlanHeaderSlice::from_slice(rest(frame, l3_offset))
                .map_err(|_| DropReason::Truncated)?;
            ether_type = inner.ether_type().0;
            l3_offset += VLAN_TAG_LEN;
            vlan_tags = 2;
        }
    }

    // A third tag, like any other non-IP ethertype, is left to the kernel.
    match ether_type {
        ETHERTYPE_IPV4 => parse_ipv4(rest(frame, l3_offset), l3_offset, vlan_tags),
        ETHERTYPE_IPV6 => parse_ipv6(rest(frame, l3_offset), l3_offset, vlan_tags),
        _ => Ok(None),
    }
}

/// A plain TCP or UDP packet: what [`parse_common`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonFrame {
    pub facts: CommonFacts,
    /// The 5-tuple, as [`ParsedFrame::flow_key`] gives it.
    pub key: FlowKey,
}

/// A plain TCP or UDP packet's offsets and flags: what [`parse_common_into`] returns beside the
/// key it writes. Small enough to come back in two registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonFacts {
    pub l3_offset: u32,
    pub l4_offset: u32,
    /// IPv4 total length or IPv6 40 + payload length, as in [`IpMeta::packet_len`].
    pub packet_len: u32,
    pub is_v6: bool,
    /// The IPv4 DF bit; true for IPv6.
    pub dont_fragment: bool,
    /// The TCP flags byte; `None` for UDP.
    pub tcp_flags: Option<u8>,
}

/// The shape nearly every packet to a VIP has, read straight from the bytes: Ethernet (untagged
/// or one 802.1Q tag), IPv4 without options or IPv6 without extension headers, not a fragment, TTL
/// above zero, and a whole TCP or UDP header within the IP packet. `None` for anything else, which
/// [`parse`] then reads with etherparse.
///
/// Why by hand: this is the pipeline's first step for every packet, and going through the header
/// slices, the `ParsedFrame` they fill (about 130 bytes, copied out of a `Result<Option<_>>`)
/// and the pipeline's match on it cost about 60 ns per packet of the 180 the whole pipeline took;
/// reading the dozen fields that matter here takes a few. Where it answers, it answers exactly as
/// `parse` does (a property test holds the two equal on arbitrary and mutated frames), so the
/// checks are `parse`'s: version and header length, a total (payload) length within the bytes
/// present and not below the header, a TCP data offset of at least 5 with the whole TCP header
/// present, 8 bytes of UDP header.
#[inline]
pub fn parse_common(frame: &[u8]) -> Option<CommonFrame> {
    let mut key = FlowKey::v6([0; 16], [0; 16], 0, 0, 0);
    let facts = parse_common_into(frame, &mut key)?;
    Some(CommonFrame { facts, key })
}

/// [`parse_common`] writing the flow key into `key` (where the pipeline keeps it for the rest of
/// the batch) instead of returning it: returning the 60-byte answer in an `Option` cost a copy
/// through the stack per packet. On `None`, `key` may hold part of a key.
#[inline(always)]
pub fn parse_common_into(frame: &[u8], key: &mut FlowKey) -> Option<CommonFacts> {
    let (ether_type, l3_offset) = match frame.get(12..14)? {
        [0x81, 0x00] => (frame.get(16..18)?, ETHERNET_HEADER_LEN + VLAN_TAG_LEN),
        ether_type => (ether_type, ETHERNET_HEADER_LEN),
    };
    let l3 = frame.get(l3_offset..)?;
    match ether_type {
        [0x08, 0x00] => common_ipv4(l3, l3_offset, key),
        [0x86, 0xdd] => common_ipv6(l3, l3_offset, key),
        _ => None,
    }
}

#[inline(always)]
fn common_ipv4(l3: &[u8], l3_offset: usize, key: &mut FlowKey) -> Option<CommonFacts> {
    const HEADER_LEN: usize = 20;
    let header = l3.first_chunk::<HEADER_LEN>()?;
    // Version 4 and an IHL of 5: no options.
    if header[0] != 0x45 || header[8] == 0 {
        return None;
    }
    let flags_and_offset = u16::from_be_bytes([header[6], header[7]]);
    // More-fragments or an offset: a fragment.
    if flags_and_offset & 0x3fff != 0 {
        return None;
    }
    let packet_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let l4 = l3.get(HEADER_LEN..packet_len)?;
    let proto = header[9];
    let (src_port, dst_port, tcp_flags) = common_l4(proto, l4)?;
    *key = FlowKey {
        src: v4_mapped(address(header, 12)),
        dst: v4_mapped(address(header, 16)),
        src_port,
        dst_port,
        proto,
    };
    Some(CommonFacts {
        l3_offset: l3_offset as u32,
        l4_offset: (l3_offset + HEADER_LEN) as u32,
        packet_len: packet_len as u32,
        is_v6: false,
        dont_fragment: flags_and_offset & 0x4000 != 0,
        tcp_flags,
    })
}

#[inline(always)]
fn common_ipv6(l3: &[u8], l3_offset: usize, key: &mut FlowKey) -> Option<CommonFacts> {
    let header = l3.first_chunk::<IPV6_HEADER_LEN>()?;
    if header[0] >> 4 != 6 || header[7] == 0 {
        return None;
    }
    let packet_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([header[4], header[5]]));
    let l4 = l3.get(IPV6_HEADER_LEN..packet_len)?;
    // Any extension header, the fragment header included, is not TCP or UDP here.
    let proto = header[6];
    let (src_port, dst_port, tcp_flags) = common_l4(proto, l4)?;
    *key = FlowKey { src: address(header, 8), dst: address(header, 24), src_port, dst_port, proto };
    Some(CommonFacts {
        l3_offset: l3_offset as u32,
        l4_offset: (l3_offset + IPV6_HEADER_LEN) as u32,
        packet_len: packet_len as u32,
        is_v6: true,
        dont_fragment: true,
        tcp_flags,
    })
}

/// Ports and TCP flags of a whole TCP or UDP header at the start of `l4`.
#[inline(always)]
fn common_l4(proto: u8, l4: &[u8]) -> Option<(u16, u16, Option<u8>)> {
    let ports = |h: &[u8]| (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]));
    match proto {
        PROTO_TCP => {
            let header = l4.first_chunk::<20>()?;
            let header_len = usize::from(header[12] >> 4) * 4;
            if header_len < 20 || l4.len() < header_len {
                return None;
            }
            let (src, dst) = ports(header);
            Some((src, dst, Some(header[13])))
        }
        PROTO_UDP => {
            let header = l4.first_chunk::<8>()?;
            let (src, dst) = ports(header);
            Some((src, dst, None))
        }
        _ => None,
    }
}

/// The bytes from `offset` on; empty past the end, so that the next header reports it is cut short.
#[inline(always)]
fn rest(bytes: &[u8], offset: usize) -> &[u8] {
    bytes.get(offset..).unwrap_or_default()
}

/// The `N`-byte address at `offset` in a validated IP header. etherparse's `source()` and
/// `destination()` assemble the array byte by byte, which the compiler kept as 32 single-byte
/// loads, spills and stores for IPv6; a slice copy is one 16-byte move. The header slice is long
/// enough by construction, so the zero fallback is never taken.
#[inline(always)]
fn address<const N: usize>(header: &[u8], offset: usize) -> [u8; N] {
    header.get(offset..offset + N).and_then(|bytes| bytes.try_into().ok()).unwrap_or([0; N])
}

#[inline(always)]
fn parse_ipv4(l3: &[u8], l3_offset: usize, vlan_tags: u8) -> Result<Option<ParsedFrame>, DropReason> {
    use etherparse::err::ipv4::{HeaderError, HeaderSliceError};

    let header = Ipv4HeaderSlice::from_slice(l3).map_err(|error| match error {
        HeaderSliceError::Len(_) => DropReason::Truncated,
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => DropReason::Malformed,
        HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
            DropReason::BadIpHeader
        }
    })?;
    let header_len = header.slice().len();
    let packet_len = usize::from(header.total_len());
    // None both for a total length below the header length and for one past the bytes present.
    // Bounding by the total length drops any Ethernet padding after the packet.
    let payload = l3.get(header_len..packet_len).ok_or(DropReason::BadIpHeader)?;

    let offset = header.fragments_offset().value();
    let fragment = (offset != 0 || header.more_fragments()).then_some(Fragment { first: offset == 0 });
    let proto = header.protocol().0;
    let ip = IpMeta {
        is_v6: false,
        src: v4_mapped(address(header.slice(), 12)),
        dst: v4_mapped(address(header.slice(), 16)),
        ttl: header.ttl(),
        header_len,
        packet_len,
        dont_fragment: header.dont_fragment(),
        fragment,
        proto,
        l4_offset: l3_offset + header_len,
    };
    with_l4(l3_offset, vlan_tags, ip, payload)
}

#[inline(always)]
fn parse_ipv6(l3: &[u8], l3_offset: usize, vlan_tags: u8) -> Result<Option<ParsedFrame>, DropReason> {
    use etherparse::err::ipv6::HeaderSliceError;

    let header = Ipv6HeaderSlice::from_slice(l3).map_err(|error| match error {
        HeaderSliceError::Len(_) => DropReason::Truncated,
        HeaderSliceError::Content(_) => DropReason::Malformed,
    })?;
    let packet_len = IPV6_HEADER_LEN + usize::from(header.payload_length());
    let payload = l3.get(IPV6_HEADER_LEN..packet_len).ok_or(DropReason::BadIpHeader)?;
    let mut chain = Ipv6ExtensionChain::new(header.next_header().0);
    if !chain.skip(payload) {
        return Err(DropReason::Malformed);
    }

    let header_len = IPV6_HEADER_LEN + chain.len;
    let ip = IpMeta {
        is_v6: true,
        src: address(header.slice(), 8),
        dst: address(header.slice(), 24),
        ttl: header.hop_limit(),
        header_len,
        packet_len,
        dont_fragment: true,
        fragment: chain.fragment,
        proto: chain.proto,
        l4_offset: l3_offset + header_len,
    };
    with_l4(l3_offset, vlan_tags, ip, rest(payload, chain.len))
}

/// The IPv6 extension headers in front of the upper-layer header.
struct Ipv6ExtensionChain {
    /// The upper-layer protocol: the first next-header value that is not an extension we skip.
    proto: u8,
    /// Bytes of extension headers.
    len: usize,
    fragment: Option<Fragment>,
}

impl Ipv6ExtensionChain {
    /// A chain not walked yet: `next_header` is the IPv6 header's.
    #[inline(always)]
    fn new(next_header: u8) -> Self {
        Ipv6ExtensionChain { proto: next_header, len: 0, fragment: None }
    }

    /// Skips the extension headers at the start of `bytes` (an IPv6 payload, or the part of one an
    /// ICMPv6 error quotes). False if a header is cut short by the end of `bytes`, an
    /// authentication header has a zero length, or there are more than [`MAX_IPV6_EXT_HEADERS`].
    ///
    /// It updates the chain in place and returns a bool rather than an `Option<Self>`: the option
    /// made the compiler pass the chain through the stack with overlapping narrow and wide accesses
    /// (store-forwarding stalls) that cost a third of the IPv6 parse time.
    #[inline(always)]
    fn skip(&mut self, bytes: &[u8]) -> bool {
        // One round more than the limit: the extra round either finds the upper-layer protocol or
        // parses one extension header too many.
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            let header = rest(bytes, self.len);
            match self.proto {
                PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_DEST_OPTIONS => {
                    let Ok(ext) = Ipv6RawExtHeaderSlice::from_slice(header) else { return false };
                    self.len += ext.slice().len();
                    self.proto = ext.next_header().0;
                }
                PROTO_AUTH => {
                    let Ok(auth) = IpAuthHeaderSlice::from_slice(header) else { return false };
                    self.len += auth.slice().len();
                    self.proto = auth.next_header().0;
                }
                PROTO_FRAGMENT => {
                    let Ok(frag) = Ipv6FragmentHeaderSlice::from_slice(header) else { return false };
                    self.len += frag.slice().len();
                    self.proto = frag.next_header().0;
                    if frag.is_fragmenting_payload() {
                        let first = frag.fragment_offset().value() == 0;
                        self.fragment = Some(Fragment { first });
                        if !first {
                            // What follows is the middle of the datagram, not more headers.
                            return true;
                        }
                    }
                }
                _ => return true,
            }
        }
        false
    }
}

/// Completes the frame with its upper layer. `l4` is the rest of the IP packet after the IP header(s).
///
/// Each arm builds the whole `ParsedFrame` in place: returning an `L4Meta` from one function and
/// placing it into the frame in another made the compiler assemble the enum on the stack and copy
/// it with wide loads over the narrow stores just made, a store-forwarding stall that cost a third
/// of the parse time.
#[inline(always)]
fn with_l4(
    l3_offset: usize,
    vlan_tags: u8,
    ip: IpMeta,
    l4: &[u8],
) -> Result<Option<ParsedFrame>, DropReason> {
    let frame = |l4| Ok(Some(ParsedFrame { l3_offset, vlan_tags, ip, l4 }));
    if ip.fragment == Some(Fragment { first: false }) {
        return frame(L4Meta::Fragment);
    }
    match ip.proto {
        PROTO_TCP => {
            use etherparse::err::tcp::HeaderSliceError;
            let tcp = TcpHeaderSlice::from_slice(l4).map_err(|error| match error {
                HeaderSliceError::Len(_) => DropReason::Truncated,
                HeaderSliceError::Content(_) => DropReason::Malformed,
            })?;
            // TcpHeaderSlice only offers the flags one bool at a time; the pipeline wants the byte.
            let flags = tcp.slice().get(13).copied().unwrap_or_default();
            frame(L4Meta::Tcp { src_port: tcp.source_port(), dst_port: tcp.destination_port(), flags })
        }
        PROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(l4).map_err(|_| DropReason::Truncated)?;
            frame(L4Meta::Udp { src_port: udp.source_port(), dst_port: udp.destination_port() })
        }
        PROTO_ICMP if !ip.is_v6 => frame(parse_icmpv4(l4)?),
        PROTO_ICMPV6 if ip.is_v6 => frame(parse_icmpv6(l4)?),
        _ => frame(L4Meta::Other),
    }
}

// The ICMP functions are inlined for the same reason as `with_l4`: out of line, the `IcmpError`
// flow key came back through the stack and the copy stalled; inlined, an ICMP error parses in
// about half the time.
#[inline(always)]
fn parse_icmpv4(l4: &[u8]) -> Result<L4Meta, DropReason> {
    let icmp = match Icmpv4Slice::from_slice(l4) {
        Ok(icmp) => icmp,
        // Past 8 bytes the only refusal is a timestamp message of the wrong size: not ours to judge.
        Err(_) if l4.len() >= ICMP_HEADER_LEN => return Ok(L4Meta::IcmpOther),
        Err(_) => return Err(DropReason::Truncated),
    };
    Ok(match icmp.type_u8() {
        ICMPV4_ECHO_REQUEST => L4Meta::IcmpEchoRequest,
        // Destination unreachable, time exceeded, parameter problem.
        3 | 11 | 12 => {
            quoted_ipv4_flow(icmp.payload()).map_or(L4Meta::IcmpOther, |quoted| L4Meta::IcmpError { quoted })
        }
        _ => L4Meta::IcmpOther,
    })
}

#[inline(always)]
fn parse_icmpv6(l4: &[u8]) -> Result<L4Meta, DropReason> {
    let icmp = Icmpv6Slice::from_slice(l4).map_err(|_| DropReason::Truncated)?;
    Ok(match icmp.type_u8() {
        ICMPV6_ECHO_REQUEST => L4Meta::IcmpEchoRequest,
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        1..=4 => {
            quoted_ipv6_flow(icmp.payload()).map_or(L4Meta::IcmpOther, |quoted| L4Meta::IcmpError { quoted })
        }
        _ => L4Meta::IcmpOther,
    })
}

/// The flow of the IPv4 packet an ICMPv4 error quotes. The quote is cut short by design, so its
/// total length is not checked; None if it holds no TCP/UDP ports.
#[inline(always)]
fn quoted_ipv4_flow(quote: &[u8]) -> Option<FlowKey> {
    let header = Ipv4HeaderSlice::from_slice(quote).ok()?;
    if header.fragments_offset().value() != 0 {
        return None;
    }
    let proto = header.protocol().0;
    let ports = quote.get(header.slice().len()..)?;
    let (src, dst) = (address(header.slice(), 12), address(header.slice(), 16));
    quoted_flow(v4_mapped(src), v4_mapped(dst), proto, ports)
}

/// The flow of the IPv6 packet an ICMPv6 error quotes, skipping its extension headers.
#[inline(always)]
fn quoted_ipv6_flow(quote: &[u8]) -> Option<FlowKey> {
    let header = Ipv6HeaderSlice::from_slice(quote).ok()?;
    let after_header = rest(quote, IPV6_HEADER_LEN);
    let mut chain = Ipv6ExtensionChain::new(header.next_header().0);
    if !chain.skip(after_header) {
        return None;
    }
    if chain.fragment == Some(Fragment { first: false }) {
        return None;
    }
    let (src, dst) = (address(header.slice(), 8), address(header.slice(), 24));
    quoted_flow(src, dst, chain.proto, rest(after_header, chain.len))
}

#[inline(always)]
fn quoted_flow(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Option<FlowKey> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // TCP and UDP both start with the two ports, so 4 bytes are all an ICMP error needs to quote.
    let ports: [u8; 4] = l4.get(..4)?.try_into().ok()?;
    Some(FlowKey {
        src,
        dst,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        icmpv4, icmpv6, ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, Icmpv4Type,
        Icmpv6Type, IpAuthHeader, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions,
        Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, NetSlice, PacketBuilder,
        PacketBuilderStep, SlicedPacket, TransportSlice, VlanId,
    };
    use proptest::prelude::*;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const CLIENT4: [u8; 4] = [198, 18, 0, 1];
    const VIP4: [u8; 4] = [198, 19, 0, 10];
    const ROUTER4: [u8; 4] = [198, 18, 255, 254];
    const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
    const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    const ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];

    const TCP_SYN: u8 = 0x02;
    const TCP_PSH_ACK: u8 = 0x18;

    /// Serializes a finished PacketBuilder chain followed by `payload`.
    macro_rules! built {
        ($builder:expr, $payload:expr) => {{
            let mut frame = Vec::new();
            $builder.write(&mut frame, $payload).expect("builder writes");
            frame
        }};
        ($builder:expr, $next_header:expr, $payload:expr) => {{
            let mut frame = Vec::new();
            $builder.write(&mut frame, $next_header, $payload).expect("builder writes");
            frame
        }};
    }

    fn eth() -> PacketBuilderStep<Ethernet2Header> {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
    }

    fn ipv4_header(protocol: IpNumber) -> Ipv4Header {
        Ipv4Header::new(0, 64, protocol, CLIENT4, VIP4).expect("valid IPv4 header")
    }

    fn ipv6_header() -> Ipv6Header {
        Ipv6Header { hop_limit: 64, source: CLIENT6, destination: VIP6, ..Default::default() }
    }

    fn raw_ext(payload_len: usize) -> Ipv6RawExtHeader {
        // A PadN option filling the header; next_header is set by the builder.
        let mut payload = vec![0u8; payload_len];
        payload[0] = 1;
        payload[1] = (payload_len - 2) as u8;
        Ipv6RawExtHeader::new_raw(IpNumber(0), &payload).expect("valid extension header")
    }

    fn fragment_header(offset_units: u16, more_fragments: bool) -> Ipv6FragmentHeader {
        let offset = IpFragOffset::try_new(offset_units).expect("13-bit offset");
        Ipv6FragmentHeader::new(IpNumber(0), offset, more_fragments, 0x1234_5678)
    }

    fn ipv6_with_exts(exts: Ipv6Extensions) -> PacketBuilderStep<IpHeaders> {
        eth().ip(IpHeaders::Ipv6(ipv6_header(), exts))
    }

    /// Ethernet + IPv6 from PacketBuilder with hand-assembled bytes after the IPv6 header:
    /// PacketBuilder refuses to write a next header it has no extension header struct for.
    fn ipv6_raw(next_header: u8, after_header: &[u8]) -> Vec<u8> {
        let mut frame = built!(ipv6_with_exts(Default::default()), IpNumber::UDP, after_header);
        frame[14 + 6] = next_header;
        frame
    }

    /// A hand-assembled destination options header (8 bytes, PadN) pointing at `next_header`.
    fn raw_dest_options(next_header: u8) -> [u8; 8] {
        [next_header, 0, 1, 4, 0, 0, 0, 0]
    }

    fn udp_header_bytes(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src_port.to_be_bytes());
        bytes.extend_from_slice(&dst_port.to_be_bytes());
        bytes.extend_from_slice(&[0, 8, 0, 0]);
        bytes
    }

    // ---- the frames the tests, the proptests and the fuzz seed corpus start from ----

    fn ipv4_tcp_syn() -> Vec<u8> {
        built!(eth().ipv4(CLIENT4, VIP4, 64).tcp(40000, 443, 1, 64240).syn(), &[])
    }

    fn ipv4_udp() -> Vec<u8> {
        built!(eth().ipv4(CLIENT4, VIP4, 64).udp(40001, 53), &[0xab; 12])
    }

    fn ipv6_tcp_psh_ack() -> Vec<u8> {
        built!(eth().ipv6(CLIENT6, VIP6, 63).tcp(40002, 80, 7, 1000).ack(1).psh(), &[0xcd; 10])
    }

    fn ipv6_udp() -> Vec<u8> {
        built!(eth().ipv6(CLIENT6, VIP6, 64).udp(40003, 443), &[1, 2, 3, 4])
    }

    fn dot1q_ipv4_tcp() -> Vec<u8> {
        let vlan = VlanId::try_new(100).expect("vlan id");
        built!(eth().single_vlan(vlan).ipv4(CLIENT4, VIP4, 64).tcp(40004, 443, 1, 64240).syn(), &[])
    }

    /// 802.1ad outer tag (0x88a8), 802.1Q inner tag: what PacketBuilder's double_vlan writes.
    fn qinq_ipv6_udp() -> Vec<u8> {
        let (outer, inner) = (VlanId::try_new(200).expect("vlan id"), VlanId::try_new(100).expect("vlan id"));
        built!(eth().double_vlan(outer, inner).ipv6(CLIENT6, VIP6, 64).udp(40005, 443), &[7; 8])
    }

    /// Two 802.1Q tags (0x8100 then 0x8100), the older QinQ form.
    fn double_dot1q_ipv4_udp() -> Vec<u8> {
        let (outer, inner) = (VlanId::try_new(200).expect("vlan id"), VlanId::try_new(100).expect("vlan id"));
        let mut frame =
            built!(eth().double_vlan(outer, inner).ipv4(CLIENT4, VIP4, 64).udp(40006, 53), &[7; 8]);
        frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        frame
    }

    fn ipv4_options_udp(ihl: u8) -> Vec<u8> {
        let mut header = ipv4_header(IpNumber::UDP);
        let options = vec![1u8; (usize::from(ihl) - 5) * 4]; // NOPs
        header.options = Ipv4Options::try_from(&options[..]).expect("options fit");
        built!(eth().ip(IpHeaders::Ipv4(header, Default::default())).udp(40007, 53), &[9; 4])
    }

    fn ipv6_hop_by_hop_tcp() -> Vec<u8> {
        let exts = Ipv6Extensions { hop_by_hop_options: Some(raw_ext(6)), ..Default::default() };
        built!(ipv6_with_exts(exts).tcp(40008, 443, 1, 1000).syn(), &[])
    }

    /// Destination options (8 bytes) then routing (16 bytes) then UDP.
    fn ipv6_dest_options_routing_udp() -> Vec<u8> {
        let routing = Ipv6RoutingExtensions { routing: raw_ext(14), final_destination_options: None };
        let exts = Ipv6Extensions {
            destination_options: Some(raw_ext(6)),
            routing: Some(routing),
            ..Default::default()
        };
        built!(ipv6_with_exts(exts).udp(40009, 443), &[5; 6])
    }

    /// Hop-by-hop (8), destination options (8), routing (8), fragment (8, atomic), authentication
    /// (12 + 4 bytes ICV = 16), final destination options (24), then TCP: 72 bytes of extensions.
    fn ipv6_every_extension_tcp() -> Vec<u8> {
        let routing =
            Ipv6RoutingExtensions { routing: raw_ext(6), final_destination_options: Some(raw_ext(22)) };
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(raw_ext(6)),
            destination_options: Some(raw_ext(6)),
            routing: Some(routing),
            fragment: Some(fragment_header(0, false)),
            auth: Some(IpAuthHeader::new(IpNumber(0), 0x100, 1, &[0xee; 4]).expect("valid auth header")),
        };
        built!(ipv6_with_exts(exts).tcp(40010, 443, 1, 1000).ack(1).psh(), &[1; 3])
    }

    fn ipv6_atomic_fragment_udp() -> Vec<u8> {
        let exts = Ipv6Extensions { fragment: Some(fragment_header(0, false)), ..Default::default() };
        built!(ipv6_with_exts(exts).udp(40011, 53), &[3; 8])
    }

    fn ipv6_first_fragment_tcp() -> Vec<u8> {
        let exts = Ipv6Extensions { fragment: Some(fragment_header(0, true)), ..Default::default() };
        built!(ipv6_with_exts(exts).tcp(40012, 443, 1, 1000).ack(1), &[4; 32])
    }

    /// Offset 100 * 8 bytes, the last fragment.
    fn ipv6_later_fragment_udp() -> Vec<u8> {
        let exts = Ipv6Extensions { fragment: Some(fragment_header(100, false)), ..Default::default() };
        built!(ipv6_with_exts(exts), IpNumber::UDP, &[0; 24])
    }

    /// A later fragment of a datagram whose fragmentable part starts with a destination options
    /// header: the fragment header names it, but this fragment's data is from the middle of the
    /// datagram and would not parse as one (its length byte runs past the packet).
    fn ipv6_later_fragment_after_dest_options() -> Vec<u8> {
        let exts = Ipv6Extensions { fragment: Some(fragment_header(100, true)), ..Default::default() };
        let mut data = [0u8; 24];
        data[1] = 200;
        built!(ipv6_with_exts(exts), IpNumber(PROTO_DEST_OPTIONS), &data)
    }

    fn ipv6_hop_by_hop_later_fragment() -> Vec<u8> {
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(raw_ext(6)),
            fragment: Some(fragment_header(3, true)),
            ..Default::default()
        };
        built!(ipv6_with_exts(exts), IpNumber::TCP, &[0u8; 16])
    }

    fn ipv4_first_fragment_udp() -> Vec<u8> {
        let mut header = ipv4_header(IpNumber::UDP);
        header.dont_fragment = false;
        header.more_fragments = true;
        header.identification = 0x4242;
        built!(eth().ip(IpHeaders::Ipv4(header, Default::default())).udp(40013, 53), &[6; 16])
    }

    fn ipv4_later_fragment(more_fragments: bool) -> Vec<u8> {
        let mut header = ipv4_header(IpNumber::UDP);
        header.dont_fragment = false;
        header.more_fragments = more_fragments;
        header.identification = 0x4242;
        header.fragment_offset = IpFragOffset::try_new(185).expect("13-bit offset");
        built!(eth().ip(IpHeaders::Ipv4(header, Default::default())), IpNumber::UDP, &[6; 20])
    }

    fn ipv4_echo_request() -> Vec<u8> {
        built!(eth().ipv4(CLIENT4, VIP4, 64).icmpv4_echo_request(7, 1), &[0x55; 8])
    }

    fn ipv6_echo_request() -> Vec<u8> {
        built!(eth().ipv6(CLIENT6, VIP6, 64).icmpv6_echo_request(7, 1), &[0x55; 8])
    }

    /// The first 28 bytes (IP header + 8) of a packet the VIP sent to the client.
    fn quoted_ipv4(l4: &str) -> Vec<u8> {
        let mut packet = Vec::new();
        let ip = PacketBuilder::ipv4(VIP4, CLIENT4, 64);
        match l4 {
            "tcp" => ip.tcp(443, 40020, 99, 1000).ack(5).write(&mut packet, &[0; 100]),
            "udp" => ip.udp(53, 40021).write(&mut packet, &[0; 100]),
            _ => ip.icmpv4_echo_reply(1, 1).write(&mut packet, &[0; 100]),
        }
        .expect("builder writes");
        packet.truncate(28);
        packet
    }

    /// The first 48 bytes (or 56 with a destination options header) of a VIP-to-client packet.
    fn quoted_ipv6(l4: &str, with_dest_options: bool) -> Vec<u8> {
        let exts = Ipv6Extensions {
            destination_options: with_dest_options.then(|| raw_ext(6)),
            ..Default::default()
        };
        let header = Ipv6Header { hop_limit: 64, source: VIP6, destination: CLIENT6, ..Default::default() };
        let ip = PacketBuilder::ip(IpHeaders::Ipv6(header, exts));
        let mut packet = Vec::new();
        match l4 {
            "tcp" => ip.tcp(443, 40022, 99, 1000).ack(5).write(&mut packet, &[0; 1300]),
            _ => ip.udp(53, 40023).write(&mut packet, &[0; 1300]),
        }
        .expect("builder writes");
        packet.truncate(48 + if with_dest_options { 8 } else { 0 });
        packet
    }

    fn icmpv4_error(icmp_type: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
        built!(eth().ipv4(ROUTER4, VIP4, 255).icmpv4(icmp_type), quote)
    }

    fn icmpv6_error(icmp_type: Icmpv6Type, quote: &[u8]) -> Vec<u8> {
        built!(eth().ipv6(ROUTER6, VIP6, 255).icmpv6(icmp_type), quote)
    }

    fn frag_needed() -> Icmpv4Type {
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        })
    }

    fn ttl_exceeded() -> Icmpv4Type {
        Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
    }

    fn icmpv4_frag_needed_tcp() -> Vec<u8> {
        icmpv4_error(frag_needed(), &quoted_ipv4("tcp"))
    }

    fn icmpv4_time_exceeded_udp() -> Vec<u8> {
        icmpv4_error(ttl_exceeded(), &quoted_ipv4("udp"))
    }

    fn icmpv6_too_big_tcp() -> Vec<u8> {
        icmpv6_error(Icmpv6Type::PacketTooBig { mtu: 1280 }, &quoted_ipv6("tcp", false))
    }

    fn icmpv6_time_exceeded_udp_with_ext() -> Vec<u8> {
        let code = icmpv6::TimeExceededCode::HopLimitExceeded;
        icmpv6_error(Icmpv6Type::TimeExceeded(code), &quoted_ipv6("udp", true))
    }

    fn arp_request() -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &CLIENT_MAC,
            &CLIENT4,
            &[0; 6],
            &VIP4,
        )
        .expect("valid ARP packet");
        let mut frame = Vec::new();
        eth().arp(arp).write(&mut frame).expect("builder writes");
        frame
    }

    /// Named valid frames: the proptests mutate them and they are the fuzz seed corpus.
    fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("ipv4_tcp_syn", ipv4_tcp_syn()),
            ("ipv4_udp", ipv4_udp()),
            ("ipv6_tcp_psh_ack", ipv6_tcp_psh_ack()),
            ("ipv6_udp", ipv6_udp()),
            ("dot1q_ipv4_tcp", dot1q_ipv4_tcp()),
            ("qinq_ipv6_udp", qinq_ipv6_udp()),
            ("double_dot1q_ipv4_udp", double_dot1q_ipv4_udp()),
            ("ipv4_options_ihl15_udp", ipv4_options_udp(15)),
            ("ipv6_hop_by_hop_tcp", ipv6_hop_by_hop_tcp()),
            ("ipv6_dest_options_routing_udp", ipv6_dest_options_routing_udp()),
            ("ipv6_every_extension_tcp", ipv6_every_extension_tcp()),
            ("ipv6_first_fragment_tcp", ipv6_first_fragment_tcp()),
            ("ipv6_later_fragment_udp", ipv6_later_fragment_udp()),
            ("ipv4_first_fragment_udp", ipv4_first_fragment_udp()),
            ("ipv4_later_fragment", ipv4_later_fragment(true)),
            ("ipv4_echo_request", ipv4_echo_request()),
            ("ipv6_echo_request", ipv6_echo_request()),
            ("icmpv4_frag_needed_tcp", icmpv4_frag_needed_tcp()),
            ("icmpv4_time_exceeded_udp", icmpv4_time_exceeded_udp()),
            ("icmpv6_too_big_tcp", icmpv6_too_big_tcp()),
            ("icmpv6_time_exceeded_udp_with_ext", icmpv6_time_exceeded_udp_with_ext()),
        ]
    }

    // ---- expected values ----

    fn v4_ip(header_len: usize, packet_len: usize, proto: u8) -> IpMeta {
        IpMeta {
            is_v6: false,
            src: v4_mapped(CLIENT4),
            dst: v4_mapped(VIP4),
            ttl: 64,
            header_len,
            packet_len,
            dont_fragment: true,
            fragment: None,
            proto,
            l4_offset: 0, // set by `frame_of`
        }
    }

    fn v6_ip(header_len: usize, packet_len: usize, proto: u8) -> IpMeta {
        IpMeta {
            is_v6: true,
            src: CLIENT6,
            dst: VIP6,
            ttl: 64,
            header_len,
            packet_len,
            dont_fragment: true,
            fragment: None,
            proto,
            l4_offset: 0,
        }
    }

    fn fragment(first: bool, ip: IpMeta) -> IpMeta {
        IpMeta { fragment: Some(Fragment { first }), dont_fragment: ip.is_v6, ..ip }
    }

    fn from_router(ip: IpMeta) -> IpMeta {
        if ip.is_v6 {
            IpMeta { src: ROUTER6, ttl: 255, ..ip }
        } else {
            IpMeta { src: v4_mapped(ROUTER4), ttl: 255, ..ip }
        }
    }

    fn frame_of(
        l3_offset: usize,
        vlan_tags: u8,
        ip: IpMeta,
        l4: L4Meta,
    ) -> Result<Option<ParsedFrame>, DropReason> {
        Ok(Some(ParsedFrame {
            l3_offset,
            vlan_tags,
            ip: IpMeta { l4_offset: l3_offset + ip.header_len, ..ip },
            l4,
        }))
    }

    fn tcp(src_port: u16, dst_port: u16, flags: u8) -> L4Meta {
        L4Meta::Tcp { src_port, dst_port, flags }
    }

    fn udp(src_port: u16, dst_port: u16) -> L4Meta {
        L4Meta::Udp { src_port, dst_port }
    }

    // ---- frame surgery for the error cases ----

    fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
        frame.truncate(len);
        frame
    }

    fn with_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
        frame[at] = value;
        frame
    }

    fn with_u16(mut frame: Vec<u8>, at: usize, value: u16) -> Vec<u8> {
        frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
        frame
    }

    struct Golden {
        description: String,
        frame: Vec<u8>,
        expected: Result<Option<ParsedFrame>, DropReason>,
    }

    fn golden(
        description: &str,
        frame: Vec<u8>,
        expected: Result<Option<ParsedFrame>, DropReason>,
    ) -> Golden {
        Golden { description: description.to_string(), frame, expected }
    }

    fn valid_cases() -> Vec<Golden> {
        use L4Meta::*;
        let mut cases = vec![
            golden(
                "IPv4 TCP SYN",
                ipv4_tcp_syn(),
                frame_of(14, 0, v4_ip(20, 40, 6), tcp(40000, 443, TCP_SYN)),
            ),
            golden("IPv4 UDP", ipv4_udp(), frame_of(14, 0, v4_ip(20, 40, 17), udp(40001, 53))),
            golden(
                "IPv6 TCP PSH+ACK, hop limit 63",
                ipv6_tcp_psh_ack(),
                frame_of(14, 0, IpMeta { ttl: 63, ..v6_ip(40, 70, 6) }, tcp(40002, 80, TCP_PSH_ACK)),
            ),
            golden("IPv6 UDP", ipv6_udp(), frame_of(14, 0, v6_ip(40, 52, 17), udp(40003, 443))),
            golden(
                "802.1Q IPv4 TCP",
                dot1q_ipv4_tcp(),
                frame_of(18, 1, v4_ip(20, 40, 6), tcp(40004, 443, TCP_SYN)),
            ),
            golden(
                "QinQ 0x88a8 + 0x8100, IPv6 UDP",
                qinq_ipv6_udp(),
                frame_of(22, 2, v6_ip(40, 56, 17), udp(40005, 443)),
            ),
            golden(
                "QinQ 0x8100 + 0x8100, IPv4 UDP",
                double_dot1q_ipv4_udp(),
                frame_of(22, 2, v4_ip(20, 36, 17), udp(40006, 53)),
            ),
            golden(
                "a single 802.1ad tag counts as one tag",
                with_u16(dot1q_ipv4_tcp(), 12, 0x88a8),
                frame_of(18, 1, v4_ip(20, 40, 6), tcp(40004, 443, TCP_SYN)),
            ),
            golden(
                "IPv6 hop-by-hop, TCP",
                ipv6_hop_by_hop_tcp(),
                frame_of(14, 0, v6_ip(48, 68, 6), tcp(40008, 443, TCP_SYN)),
            ),
            golden(
                "IPv6 destination options + routing, UDP",
                ipv6_dest_options_routing_udp(),
                frame_of(14, 0, v6_ip(64, 78, 17), udp(40009, 443)),
            ),
            golden(
                "IPv6 hop-by-hop, dest options, routing, atomic fragment, AH, dest options, TCP",
                ipv6_every_extension_tcp(),
                frame_of(14, 0, v6_ip(40 + 72, 40 + 72 + 23, 6), tcp(40010, 443, TCP_PSH_ACK)),
            ),
            golden(
                "IPv6 atomic fragment (offset 0, M=0) is not a fragment",
                ipv6_atomic_fragment_udp(),
                frame_of(14, 0, v6_ip(48, 64, 17), udp(40011, 53)),
            ),
            golden(
                "IPv6 first fragment keeps its TCP ports",
                ipv6_first_fragment_tcp(),
                frame_of(14, 0, fragment(true, v6_ip(48, 100, 6)), tcp(40012, 443, 0x10)),
            ),
            golden(
                "IPv6 later fragment: no L4 header",
                ipv6_later_fragment_udp(),
                frame_of(14, 0, fragment(false, v6_ip(48, 72, 17)), Fragment),
            ),
            golden(
                "IPv6 later fragment naming an extension header: its data is not parsed as one",
                ipv6_later_fragment_after_dest_options(),
                frame_of(14, 0, fragment(false, v6_ip(48, 72, PROTO_DEST_OPTIONS)), Fragment),
            ),
            golden(
                "IPv6 hop-by-hop then a later fragment",
                ipv6_hop_by_hop_later_fragment(),
                frame_of(14, 0, fragment(false, v6_ip(56, 72, 6)), Fragment),
            ),
            golden(
                "IPv4 first fragment (MF) keeps its UDP ports",
                ipv4_first_fragment_udp(),
                frame_of(14, 0, fragment(true, v4_ip(20, 44, 17)), udp(40013, 53)),
            ),
            golden(
                "IPv4 middle fragment (MF, offset 185)",
                ipv4_later_fragment(true),
                frame_of(14, 0, fragment(false, v4_ip(20, 40, 17)), Fragment),
            ),
            golden(
                "IPv4 last fragment (offset 185)",
                ipv4_later_fragment(false),
                frame_of(14, 0, fragment(false, v4_ip(20, 40, 17)), Fragment),
            ),
            golden(
                "ICMPv4 echo request",
                ipv4_echo_request(),
                frame_of(14, 0, v4_ip(20, 36, 1), IcmpEchoRequest),
            ),
            golden(
                "ICMPv6 echo request",
                ipv6_echo_request(),
                frame_of(14, 0, v6_ip(40, 56, 58), IcmpEchoRequest),
            ),
            golden(
                "ICMPv4 echo reply",
                built!(eth().ipv4(CLIENT4, VIP4, 64).icmpv4_echo_reply(7, 1), &[]),
                frame_of(14, 0, v4_ip(20, 28, 1), IcmpOther),
            ),
            golden(
                "ICMPv6 neighbor solicitation",
                built!(eth().ipv6(CLIENT6, VIP6, 64).icmpv6(Icmpv6Type::NeighborSolicitation), &[0; 20]),
                frame_of(14, 0, v6_ip(40, 68, 58), IcmpOther),
            ),
            golden(
                "ICMPv4 timestamp request of the wrong size is just another ICMP message",
                built!(
                    eth().ipv4(CLIENT4, VIP4, 64).icmpv4(Icmpv4Type::Unknown {
                        type_u8: 13,
                        code_u8: 0,
                        bytes5to8: [0; 4]
                    }),
                    &[0; 4]
                ),
                frame_of(14, 0, v4_ip(20, 32, 1), IcmpOther),
            ),
            golden(
                "ICMPv4 fragmentation needed quoting TCP",
                icmpv4_frag_needed_tcp(),
                frame_of(
                    14,
                    0,
                    from_router(v4_ip(20, 56, 1)),
                    IcmpError { quoted: FlowKey::v4(VIP4, CLIENT4, 6, 443, 40020) },
                ),
            ),
            golden(
                "ICMPv4 time exceeded quoting UDP",
                icmpv4_time_exceeded_udp(),
                frame_of(
                    14,
                    0,
                    from_router(v4_ip(20, 56, 1)),
                    IcmpError { quoted: FlowKey::v4(VIP4, CLIENT4, 17, 53, 40021) },
                ),
            ),
            golden(
                "ICMPv4 parameter problem quoting TCP",
                icmpv4_error(
                    Icmpv4Type::ParameterProblem(icmpv4::ParameterProblemHeader::PointerIndicatesError(1)),
                    &quoted_ipv4("tcp"),
                ),
                frame_of(
                    14,
                    0,
                    from_router(v4_ip(20, 56, 1)),
                    IcmpError { quoted: FlowKey::v4(VIP4, CLIENT4, 6, 443, 40020) },
                ),
            ),
            golden(
                "ICMPv6 packet too big quoting TCP",
                icmpv6_too_big_tcp(),
                frame_of(
                    14,
                    0,
                    from_router(v6_ip(40, 96, 58)),
                    IcmpError { quoted: FlowKey::v6(VIP6, CLIENT6, 6, 443, 40022) },
                ),
            ),
            golden(
                "ICMPv6 time exceeded quoting UDP behind a destination options header",
                icmpv6_time_exceeded_udp_with_ext(),
                frame_of(
                    14,
                    0,
                    from_router(v6_ip(40, 104, 58)),
                    IcmpError { quoted: FlowKey::v6(VIP6, CLIENT6, 17, 53, 40023) },
                ),
            ),
            golden(
                "ICMPv6 destination unreachable quoting TCP",
                icmpv6_error(
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address),
                    &quoted_ipv6("tcp", false),
                ),
                frame_of(
                    14,
                    0,
                    from_router(v6_ip(40, 96, 58)),
                    IcmpError { quoted: FlowKey::v6(VIP6, CLIENT6, 6, 443, 40022) },
                ),
            ),
            golden(
                "ICMPv4 error quoting ICMP has no flow",
                icmpv4_error(frag_needed(), &quoted_ipv4("icmp")),
                frame_of(14, 0, from_router(v4_ip(20, 56, 1)), IcmpOther),
            ),
            golden(
                "ICMPv4 error whose quote is too short for ports",
                icmpv4_error(ttl_exceeded(), &quoted_ipv4("tcp")[..22]),
                frame_of(14, 0, from_router(v4_ip(20, 50, 1)), IcmpOther),
            ),
            golden(
                "ICMPv6 error quoting only an IPv6 header",
                icmpv6_error(Icmpv6Type::PacketTooBig { mtu: 1280 }, &quoted_ipv6("tcp", false)[..40]),
                frame_of(14, 0, from_router(v6_ip(40, 88, 58)), IcmpOther),
            ),
            golden(
                "ICMPv6 error whose quoted extension header is cut short",
                icmpv6_error(Icmpv6Type::PacketTooBig { mtu: 1280 }, &quoted_ipv6("udp", true)[..44]),
                frame_of(14, 0, from_router(v6_ip(40, 92, 58)), IcmpOther),
            ),
            golden(
                "ICMPv4 error quoting a non-first fragment",
                icmpv4_error(ttl_exceeded(), &ipv4_later_fragment(false)[14..42]),
                frame_of(14, 0, from_router(v4_ip(20, 56, 1)), IcmpOther),
            ),
            golden(
                "IPv4 GRE",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber(47)), Default::default())),
                    IpNumber(47),
                    &[0; 8]
                ),
                frame_of(14, 0, v4_ip(20, 28, 47), Other),
            ),
            golden("IPv6 ESP", ipv6_raw(50, &[0; 16]), frame_of(14, 0, v6_ip(40, 56, 50), Other)),
            golden(
                "ICMPv6 number inside IPv4 is not ICMP",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber(58)), Default::default())),
                    IpNumber(58),
                    &[128, 0, 0, 0, 0, 0, 0, 0]
                ),
                frame_of(14, 0, v4_ip(20, 28, 58), Other),
            ),
            golden(
                "ICMPv4 number inside IPv6 is not ICMP",
                ipv6_raw(1, &[8, 0, 0, 0, 0, 0, 0, 0]),
                frame_of(14, 0, v6_ip(40, 48, 1), Other),
            ),
            golden("IPv6 no next header", ipv6_raw(59, &[]), frame_of(14, 0, v6_ip(40, 40, 59), Other)),
            golden("ARP goes to the kernel", arp_request(), Ok(None)),
            golden(
                "LLDP goes to the kernel",
                [
                    &Ethernet2Header {
                        source: CLIENT_MAC,
                        destination: LB_MAC,
                        ether_type: EtherType(0x88cc),
                    }
                    .to_bytes()[..],
                    &[0; 46],
                ]
                .concat(),
                Ok(None),
            ),
            golden(
                "a third VLAN tag goes to the kernel",
                {
                    let mut frame = double_dot1q_ipv4_udp();
                    frame[20..22].copy_from_slice(&0x8100u16.to_be_bytes());
                    frame
                },
                Ok(None),
            ),
            golden(
                "Ethernet padding after a short IPv4 packet is ignored",
                {
                    let mut frame = built!(eth().ipv4(CLIENT4, VIP4, 64).udp(40014, 53), &[1, 2]);
                    frame.resize(60, 0);
                    frame
                },
                frame_of(14, 0, v4_ip(20, 30, 17), udp(40014, 53)),
            ),
            golden(
                "IPv6 with the maximum of 8 extension headers",
                {
                    let mut chain: Vec<u8> =
                        (0..7).flat_map(|_| raw_dest_options(PROTO_DEST_OPTIONS)).collect();
                    chain.extend_from_slice(&raw_dest_options(PROTO_UDP));
                    chain.extend(udp_header_bytes(40015, 53));
                    ipv6_raw(PROTO_DEST_OPTIONS, &chain)
                },
                frame_of(14, 0, v6_ip(40 + 64, 40 + 72, 17), udp(40015, 53)),
            ),
        ];
        for ihl in 6u8..=15 {
            let header_len = usize::from(ihl) * 4;
            cases.push(Golden {
                description: format!("IPv4 with options, IHL {ihl}"),
                frame: ipv4_options_udp(ihl),
                expected: frame_of(14, 0, v4_ip(header_len, header_len + 12, 17), udp(40007, 53)),
            });
        }
        cases
    }

    fn error_cases() -> Vec<Golden> {
        use DropReason::*;
        vec![
            golden("empty frame", Vec::new(), Err(Truncated)),
            golden("Ethernet header cut short", truncated(ipv4_udp(), 13), Err(Truncated)),
            golden("802.1Q tag cut short", truncated(dot1q_ipv4_tcp(), 17), Err(Truncated)),
            golden("QinQ inner tag cut short", truncated(qinq_ipv6_udp(), 21), Err(Truncated)),
            golden("IPv4 header cut short", truncated(ipv4_tcp_syn(), 14 + 19), Err(Truncated)),
            golden("IPv4 options cut short", truncated(ipv4_options_udp(15), 14 + 59), Err(Truncated)),
            golden("IPv4 behind a VLAN tag cut short", truncated(dot1q_ipv4_tcp(), 18 + 10), Err(Truncated)),
            golden("IPv6 header cut short", truncated(ipv6_udp(), 14 + 39), Err(Truncated)),
            golden(
                "IPv6 extension header longer than the payload",
                // Hop-by-hop claiming 16 bytes in an 8-byte payload.
                ipv6_raw(PROTO_HOP_BY_HOP, &[PROTO_UDP, 1, 1, 4, 0, 0, 0, 0]),
                Err(Malformed),
            ),
            golden(
                "IPv6 extension header shorter than 8 bytes",
                ipv6_raw(PROTO_DEST_OPTIONS, &[PROTO_UDP, 0, 1, 2]),
                Err(Malformed),
            ),
            golden(
                "IPv6 fragment header cut short",
                ipv6_raw(PROTO_FRAGMENT, &[PROTO_UDP, 0, 0, 1]),
                Err(Malformed),
            ),
            golden(
                "IPv6 authentication header with zero length",
                ipv6_raw(PROTO_AUTH, &[PROTO_UDP, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
                Err(Malformed),
            ),
            golden(
                "IPv6 with 9 extension headers",
                {
                    let mut chain: Vec<u8> =
                        (0..8).flat_map(|_| raw_dest_options(PROTO_DEST_OPTIONS)).collect();
                    chain.extend_from_slice(&raw_dest_options(PROTO_UDP));
                    chain.extend(udp_header_bytes(40016, 53));
                    ipv6_raw(PROTO_DEST_OPTIONS, &chain)
                },
                Err(Malformed),
            ),
            golden(
                "frame cut inside an IPv6 extension header: the payload length is what is wrong",
                truncated(ipv6_hop_by_hop_tcp(), 14 + 44),
                Err(BadIpHeader),
            ),
            golden(
                "IPv4 TCP header cut short by the total length",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber::TCP), Default::default())),
                    IpNumber::TCP,
                    &[0; 10]
                ),
                Err(Truncated),
            ),
            golden(
                "IPv6 TCP header cut short by the payload length",
                ipv6_raw(IpNumber::TCP.0, &[0x50; 19]),
                Err(Truncated),
            ),
            golden(
                "TCP options cut short (data offset 8, 24 bytes present)",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber::TCP), Default::default())),
                    IpNumber::TCP,
                    &[0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x02, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
                ),
                Err(Truncated),
            ),
            golden(
                "IPv4 first fragment too short for its TCP header",
                {
                    let mut header = ipv4_header(IpNumber::TCP);
                    header.dont_fragment = false;
                    header.more_fragments = true;
                    built!(eth().ip(IpHeaders::Ipv4(header, Default::default())), IpNumber::TCP, &[0; 8])
                },
                Err(Truncated),
            ),
            golden(
                "IPv4 UDP header cut short",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber::UDP), Default::default())),
                    IpNumber::UDP,
                    &[0; 4]
                ),
                Err(Truncated),
            ),
            golden("IPv6 UDP header cut short", ipv6_raw(IpNumber::UDP.0, &[0; 7]), Err(Truncated)),
            golden(
                "UDP header cut short after IPv6 extension headers",
                ipv6_raw(PROTO_DEST_OPTIONS, &[PROTO_UDP, 0, 1, 4, 0, 0, 0, 0, 1, 2]),
                Err(Truncated),
            ),
            golden(
                "ICMPv4 header cut short",
                built!(
                    eth().ip(IpHeaders::Ipv4(ipv4_header(IpNumber::ICMP), Default::default())),
                    IpNumber::ICMP,
                    &[8, 0, 0, 0]
                ),
                Err(Truncated),
            ),
            golden(
                "ICMPv6 header cut short",
                ipv6_raw(IpNumber::IPV6_ICMP.0, &[128, 0, 0, 0, 0, 0, 0]),
                Err(Truncated),
            ),
            golden("IPv4 IHL 4", with_byte(ipv4_tcp_syn(), 14, 0x44), Err(BadIpHeader)),
            golden("IPv4 IHL 0", with_byte(ipv4_tcp_syn(), 14, 0x40), Err(BadIpHeader)),
            golden(
                "IPv4 total length one past the frame",
                with_u16(ipv4_tcp_syn(), 16, 41),
                Err(BadIpHeader),
            ),
            golden(
                "IPv4 total length shorter than the header",
                with_u16(ipv4_tcp_syn(), 16, 19),
                Err(BadIpHeader),
            ),
            golden(
                "IPv4 total length shorter than IHL 15's 60 bytes",
                with_u16(ipv4_options_udp(15), 16, 40),
                Err(BadIpHeader),
            ),
            golden("IPv6 payload length one past the frame", with_u16(ipv6_udp(), 18, 13), Err(BadIpHeader)),
            golden(
                "version 6 behind the IPv4 ethertype",
                with_byte(ipv4_tcp_syn(), 14, 0x65),
                Err(Malformed),
            ),
            golden("version 4 behind the IPv6 ethertype", with_byte(ipv6_udp(), 14, 0x45), Err(Malformed)),
            golden("TCP data offset 4", with_byte(ipv4_tcp_syn(), 14 + 20 + 12, 0x40), Err(Malformed)),
        ]
    }

    #[test]
    fn golden_valid_frames() {
        for case in valid_cases() {
            assert_eq!(parse(&case.frame), case.expected, "{}", case.description);
        }
    }

    #[test]
    fn golden_errors() {
        for case in error_cases() {
            assert_eq!(parse(&case.frame), case.expected, "{}", case.description);
        }
    }

    /// The offsets are checked against the frame bytes themselves: the ports sit at l4_offset and
    /// the IP version nibble at l3_offset.
    #[test]
    fn offsets_point_at_the_headers() {
        for case in valid_cases() {
            let Ok(Some(parsed)) = parse(&case.frame) else { continue };
            let version = case.frame[parsed.l3_offset] >> 4;
            assert_eq!(version, if parsed.ip.is_v6 { 6 } else { 4 }, "{}", case.description);
            if let Some(key) = parsed.flow_key() {
                let at = parsed.ip.l4_offset;
                assert_eq!(&case.frame[at..at + 2], &key.src_port.to_be_bytes(), "{}", case.description);
                assert_eq!(&case.frame[at + 2..at + 4], &key.dst_port.to_be_bytes(), "{}", case.description);
            }
        }
    }

    #[test]
    fn flow_key_is_the_five_tuple_of_tcp_and_udp_only() {
        let parsed = |frame: Vec<u8>| parse(&frame).expect("parses").expect("is IP");
        assert_eq!(parsed(ipv4_tcp_syn()).flow_key(), Some(FlowKey::v4(CLIENT4, VIP4, 6, 40000, 443)));
        assert_eq!(parsed(ipv6_udp()).flow_key(), Some(FlowKey::v6(CLIENT6, VIP6, 17, 40003, 443)));
        assert_eq!(
            parsed(ipv4_first_fragment_udp()).flow_key(),
            Some(FlowKey::v4(CLIENT4, VIP4, 17, 40013, 53))
        );
        assert_eq!(parsed(ipv4_later_fragment(false)).flow_key(), None);
        assert_eq!(parsed(ipv4_echo_request()).flow_key(), None);
        assert_eq!(parsed(icmpv4_frag_needed_tcp()).flow_key(), None);
    }

    /// The fuzz seed corpus is this module's valid frames. `FWD_WRITE_FUZZ_CORPUS=1` rewrites it
    /// from `seed_frames()`; either way every seed (`*.bin`; inputs a fuzz run added are named by
    /// hash and are not seeds) must be a frame that parses.
    #[test]
    fn fuzz_seed_corpus_holds_valid_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_frame");
        if std::env::var_os("FWD_WRITE_FUZZ_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).expect("create corpus dir");
            for (name, frame) in seed_frames() {
                std::fs::write(dir.join(format!("{name}.bin")), frame).expect("write seed");
            }
        }
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus dir exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|extension| extension != "bin") {
                continue;
            }
            let frame = std::fs::read(&path).expect("read seed");
            assert!(matches!(parse(&frame), Ok(Some(_))), "{} does not parse", path.display());
            seeds += 1;
        }
        assert!(seeds >= seed_frames().len(), "corpus has {seeds} seeds");
    }

    /// Whatever the input, a successful parse only points inside the frame.
    fn assert_within_frame(frame: &[u8], result: Result<Option<ParsedFrame>, DropReason>) {
        if let Ok(Some(parsed)) = result {
            assert!(parsed.ip.l4_offset <= frame.len());
            assert!(parsed.l3_offset + parsed.ip.packet_len <= frame.len());
            assert_eq!(parsed.ip.l4_offset, parsed.l3_offset + parsed.ip.header_len);
            assert!(parsed.ip.header_len <= parsed.ip.packet_len);
        }
    }

    /// `frame` with bytes overwritten at `(offset mod length, value)`, then cut to a length `keep`
    /// picks in `0..=length`.
    fn mutated(mut frame: Vec<u8>, mutations: &[(usize, u8)], keep: proptest::sample::Index) -> Vec<u8> {
        for &(at, value) in mutations {
            let at = at % frame.len();
            frame[at] = value;
        }
        frame.truncate(keep.index(frame.len() + 1));
        frame
    }

    /// If `parse_common` answers for `frame`, `parse` reads the same plain TCP/UDP packet.
    fn assert_common_agrees(frame: &[u8]) -> Result<(), TestCaseError> {
        let Some(common) = parse_common(frame) else { return Ok(()) };
        let parsed = parse(frame);
        let Ok(Some(p)) = parsed else {
            return Err(TestCaseError::fail(format!("common {common:?} but parse {parsed:?}")));
        };
        prop_assert_eq!(common.facts.l3_offset as usize, p.l3_offset);
        prop_assert_eq!(common.facts.l4_offset as usize, p.ip.l4_offset);
        prop_assert_eq!(common.facts.packet_len as usize, p.ip.packet_len);
        prop_assert_eq!(common.facts.is_v6, p.ip.is_v6);
        prop_assert_eq!(common.facts.dont_fragment, p.ip.dont_fragment);
        prop_assert!(p.ip.fragment.is_none());
        prop_assert!(p.ip.ttl != 0);
        prop_assert_eq!(Some(common.key), p.flow_key());
        let flags = match p.l4 {
            L4Meta::Tcp { flags, .. } => Some(flags),
            _ => None,
        };
        prop_assert_eq!(common.facts.tcp_flags, flags);
        Ok(())
    }

    fn seed_frame() -> impl Strategy<Value = Vec<u8>> {
        let seeds: Vec<Vec<u8>> = seed_frames().into_iter().map(|(_, frame)| frame).collect();
        proptest::sample::select(seeds)
    }

    /// A valid TCP or UDP frame from PacketBuilder, with what the parse must report.
    #[derive(Clone, Debug)]
    struct BuiltFrame {
        frame: Vec<u8>,
        vlan_tags: u8,
    }

    fn built_frame() -> impl Strategy<Value = BuiltFrame> {
        (
            any::<bool>(),
            0u8..=2,
            any::<bool>(),
            (any::<u16>(), any::<u16>(), any::<u8>(), any::<u8>()),
            (any::<[u8; 2]>(), any::<[u8; 2]>()),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |(is_v6, vlan_tags, is_tcp, (src_port, dst_port, ttl, flags), (a, b), payload)| {
                    let step = eth();
                    let vlan = |id| VlanId::try_new(id).expect("vlan id");
                    let mut frame = Vec::new();
                    let (src4, dst4) = ([198, 18, a[0], a[1]], [198, 19, b[0], b[1]]);
                    let mut src6 = CLIENT6;
                    let mut dst6 = VIP6;
                    src6[14..].copy_from_slice(&a);
                    dst6[14..].copy_from_slice(&b);
                    macro_rules! finish {
                        ($ip_step:expr) => {
                            if is_tcp {
                                let mut tcp = $ip_step.tcp(src_port, dst_port, 1, 1000);
                                if flags & 0x01 != 0 {
                                    tcp = tcp.fin();
                                }
                                if flags & 0x02 != 0 {
                                    tcp = tcp.syn();
                                }
                                if flags & 0x04 != 0 {
                                    tcp = tcp.rst();
                                }
                                if flags & 0x08 != 0 {
                                    tcp = tcp.psh();
                                }
                                if flags & 0x10 != 0 {
                                    tcp = tcp.ack(5);
                                }
                                tcp.write(&mut frame, &payload)
                            } else {
                                $ip_step.udp(src_port, dst_port).write(&mut frame, &payload)
                            }
                        };
                    }
                    macro_rules! with_ip {
                        ($link_step:expr) => {
                            if is_v6 {
                                finish!($link_step.ipv6(src6, dst6, ttl))
                            } else {
                                finish!($link_step.ipv4(src4, dst4, ttl))
                            }
                        };
                    }
                    match vlan_tags {
                        0 => with_ip!(step),
                        1 => with_ip!(step.single_vlan(vlan(10))),
                        _ => with_ip!(step.double_vlan(vlan(20), vlan(10))),
                    }
                    .expect("builder writes");
                    BuiltFrame { frame, vlan_tags }
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            assert_within_frame(&frame, parse(&frame));
        }

        #[test]
        fn arbitrary_bytes_behind_an_ip_ethertype_never_panic(
            ether_type in proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8]),
            rest in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let frame = [&[0u8; 12][..], &ether_type.to_be_bytes(), &rest].concat();
            assert_within_frame(&frame, parse(&frame));
        }

        #[test]
        fn mutated_and_truncated_frames_never_panic(
            frame in seed_frame(),
            mutations in proptest::collection::vec((0usize..120, any::<u8>()), 1..4),
            keep in any::<proptest::sample::Index>(),
        ) {
            let frame = mutated(frame, &mutations, keep);
            assert_within_frame(&frame, parse(&frame));
        }

        /// Where the common-case reader answers, `parse` gives the same answer.
        #[test]
        fn common_reader_agrees_with_parse_on_mutated_frames(
            frame in seed_frame(),
            mutations in proptest::collection::vec((0usize..120, any::<u8>()), 0..4),
            keep in any::<proptest::sample::Index>(),
        ) {
            let frame = mutated(frame, &mutations, keep);
            assert_common_agrees(&frame)?;
        }

        #[test]
        fn common_reader_agrees_with_parse_on_arbitrary_bytes(
            ether_type in proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100]),
            version in proptest::sample::select(vec![0x45u8, 0x46, 0x60, 0x44]),
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let frame = [&[0u8; 12][..], &ether_type.to_be_bytes(), &[version], &rest].concat();
            assert_common_agrees(&frame)?;
        }

        /// The common reader takes every plain TCP/UDP frame with TTL left (so the pipeline's
        /// fast lane is the one these frames take) and leaves QinQ to `parse`.
        #[test]
        fn common_reader_takes_plain_built_frames(built in built_frame()) {
            let parsed = parse(&built.frame).expect("parses").expect("is IP");
            let common = parse_common(&built.frame);
            prop_assert_eq!(common.is_some(), built.vlan_tags < 2 && parsed.ip.ttl != 0);
            assert_common_agrees(&built.frame)?;
        }

        /// etherparse's SlicedPacket is the independent parser: on any well-formed TCP/UDP frame
        /// both must agree on every field they share.
        #[test]
        fn agrees_with_etherparse_on_built_frames(built in built_frame()) {
            let parsed = parse(&built.frame).expect("parses").expect("is IP");
            let reference = SlicedPacket::from_ethernet(&built.frame).expect("etherparse parses");
            prop_assert_eq!(parsed.vlan_tags, built.vlan_tags);
            prop_assert_eq!(parsed.l3_offset, 14 + 4 * usize::from(built.vlan_tags));
            match reference.net.expect("IP") {
                NetSlice::Ipv4(ip) => {
                    let header = ip.header();
                    prop_assert!(!parsed.ip.is_v6);
                    prop_assert_eq!(parsed.ip.src, v4_mapped(header.source()));
                    prop_assert_eq!(parsed.ip.dst, v4_mapped(header.destination()));
                    prop_assert_eq!(parsed.ip.ttl, header.ttl());
                    prop_assert_eq!(parsed.ip.packet_len, usize::from(header.total_len()));
                    prop_assert_eq!(parsed.ip.proto, header.protocol().0);
                }
                NetSlice::Ipv6(ip) => {
                    let header = ip.header();
                    prop_assert!(parsed.ip.is_v6);
                    prop_assert_eq!(parsed.ip.src, header.source());
                    prop_assert_eq!(parsed.ip.dst, header.destination());
                    prop_assert_eq!(parsed.ip.ttl, header.hop_limit());
                    prop_assert_eq!(parsed.ip.packet_len, 40 + usize::from(header.payload_length()));
                    prop_assert_eq!(parsed.ip.proto, header.next_header().0);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            match (reference.transport.expect("transport"), parsed.l4) {
                (TransportSlice::Tcp(tcp), L4Meta::Tcp { src_port, dst_port, flags }) => {
                    prop_assert_eq!(src_port, tcp.source_port());
                    prop_assert_eq!(dst_port, tcp.destination_port());
                    prop_assert_eq!(flags & 0x01 != 0, tcp.fin());
                    prop_assert_eq!(flags & 0x02 != 0, tcp.syn());
                    prop_assert_eq!(flags & 0x04 != 0, tcp.rst());
                    prop_assert_eq!(flags & 0x08 != 0, tcp.psh());
                    prop_assert_eq!(flags & 0x10 != 0, tcp.ack());
                }
                (TransportSlice::Udp(udp), L4Meta::Udp { src_port, dst_port }) => {
                    prop_assert_eq!(src_port, udp.source_port());
                    prop_assert_eq!(dst_port, udp.destination_port());
                }
                (reference, ours) => prop_assert!(false, "etherparse {:?}, we {:?}", reference, ours),
            }
            assert_within_frame(&built.frame, Ok(Some(parsed)));
        }
    }
}
