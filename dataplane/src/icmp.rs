//! ICMP replies fwd builds itself, in place: echo replies for pings to a VIP, and "fragmentation
//! needed" / "packet too big" errors for packets that would not fit after encapsulation.
//!
//! Written by hand rather than with etherparse's builders (which allocate and serialise a whole
//! packet): an echo reply only swaps addresses and patches a few words, with incremental checksum
//! updates (RFC 1624); a too-big error writes its new headers into the headroom in front of the
//! original IP header, which becomes the quote, and cuts the tail. The only per-payload work is
//! the error's ICMP checksum over the quote.
//!
//! Whether a reply is due at all (rate limits; no errors about ICMP errors, non-initial fragments
//! or multicast sources, RFC 1812 4.3.2.7 / RFC 4443 2.4) is the caller's decision. As in
//! [`crate::rewrite`], every input gives `Ok` or `Err(DropReason)`, and on `Err` the frame is
//! unchanged.

use crate::checksum::{fold, incremental_update16, ones_complement_sum};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::rewrite::{
    check_l2, ipv6_pseudo_header_sum, open_gap, write_ipv4_header, write_ipv6_header, IPV4_OVERHEAD,
    IPV6_OVERHEAD, OUTER_TTL,
};

/// ICMP and ICMPv6 headers of the messages built here (type, code, checksum, 4 bytes).
pub const ICMP_HEADER_LEN: usize = 8;
/// Largest IPv4 packet carrying an ICMP error (RFC 1812 section 4.3.2.3).
pub const ICMPV4_ERROR_MAX_LEN: usize = 576;
/// Largest IPv6 packet carrying an ICMPv6 error: the minimum MTU (RFC 4443 section 2.4 (c)).
pub const ICMPV6_ERROR_MAX_LEN: usize = 1280;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const IPV4_DONT_FRAGMENT: u8 = 0x40;
/// More-fragments flag and fragment offset in the IPv4 flags/offset word.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

/// Turns an ICMP/ICMPv6 echo request (IP header at `l3_offset`, ICMP header at `l4_offset`, IP
/// packet `ip_len` bytes) into the echo reply in place: MACs swapped, IP addresses swapped, type
/// 0 / 129, TTL/hop limit [`OUTER_TTL`], IPv4 header checksum and ICMP checksum updated
/// incrementally (the ICMPv6 pseudo-header sum does not change when the addresses swap; the type
/// change does). VLAN tags kept, Ethernet padding cut.
///
/// Errors: `Truncated` if the frame ends before `l3_offset + ip_len`; `Malformed` for a bad
/// `l3_offset`, an `ip_len` that disagrees with the IP header, an ICMP header that is not at
/// `l4_offset` right after the IP header (IPv4 options are fine, IPv6 extension headers are not),
/// a fragment, or a message that is not an echo request.
pub fn echo_reply(
    frame: &mut Frame<'_>,
    l3_offset: usize,
    l4_offset: usize,
    ip_len: usize,
    is_v6: bool,
) -> Result<(), DropReason> {
    check_l2(frame, l3_offset)?;
    let ip_end = l3_offset.checked_add(ip_len).ok_or(DropReason::Truncated)?;
    let ip = frame.data().get(l3_offset..ip_end).ok_or(DropReason::Truncated)?;
    let ip_header_len = if is_v6 { check_ipv6(ip, IPPROTO_ICMPV6)? } else { check_ipv4_echo(ip)? };
    if l4_offset != l3_offset + ip_header_len || ip_len < ip_header_len + ICMP_HEADER_LEN {
        return Err(DropReason::Malformed);
    }
    let (request, reply) =
        if is_v6 { (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) } else { (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) };
    if ip.get(ip_header_len) != Some(&request) {
        return Err(DropReason::Malformed);
    }

    frame.truncate(ip_end);
    let data = frame.data_mut();
    swap_macs(data)?;
    let packet = data.get_mut(l3_offset..).ok_or(DropReason::Malformed)?;
    let (ip_header, icmp) = packet.split_at_mut_checked(ip_header_len).ok_or(DropReason::Malformed)?;
    if is_v6 {
        let header = ip_header.first_chunk_mut::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
        swap_ranges::<16>(header, 8, 24);
        header[7] = OUTER_TTL;
    } else {
        let header = ip_header.first_chunk_mut::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
        swap_ranges::<4>(header, 12, 16);
        let old_ttl_protocol = u16::from_be_bytes([header[8], header[9]]);
        header[8] = OUTER_TTL;
        let new_ttl_protocol = u16::from_be_bytes([header[8], header[9]]);
        update_checksum_field(header, 10, old_ttl_protocol, new_ttl_protocol);
    }
    let icmp = icmp.first_chunk_mut::<ICMP_HEADER_LEN>().ok_or(DropReason::Malformed)?;
    let old_type_code = u16::from_be_bytes([icmp[0], icmp[1]]);
    icmp[0] = reply;
    let new_type_code = u16::from_be_bytes([icmp[0], icmp[1]]);
    update_checksum_field(icmp, 2, old_type_code, new_type_code);
    Ok(())
}

/// Replaces the frame with an ICMP "fragmentation needed" (IPv4 type 3 code 4, next-hop MTU
/// `mtu`) or ICMPv6 "packet too big" (type 2, MTU `mtu`) back to the packet's source, from its
/// original destination (the VIP): Ethernet addresses swapped (the reply goes back the way the
/// packet came), VLAN tags kept, TTL/hop limit [`OUTER_TTL`], IPv4 DF set and id 0, DSCP 0. The
/// quote is the original IP packet from its header on, cut so that the whole ICMP IP packet is at
/// most [`ICMPV4_ERROR_MAX_LEN`] / [`ICMPV6_ERROR_MAX_LEN`] bytes. All checksums are computed.
///
/// Built in place: the new IP and ICMP headers (28 / 48 bytes) go into headroom in front of the
/// original IP header, the Ethernet/VLAN header moves to the new front, the tail is cut.
///
/// Errors: `NoHeadroom` if the headroom is under 28 / 48 bytes; `Truncated` if the frame ends
/// before `l3_offset + ip_len`; `Malformed` for a bad `l3_offset` or an `ip_len` that disagrees
/// with the IP header's version or length.
pub fn too_big(
    frame: &mut Frame<'_>,
    l3_offset: usize,
    ip_len: usize,
    is_v6: bool,
    mtu: u16,
) -> Result<(), DropReason> {
    check_l2(frame, l3_offset)?;
    let ip_end = l3_offset.checked_add(ip_len).ok_or(DropReason::Truncated)?;
    let original = frame.data().get(l3_offset..ip_end).ok_or(DropReason::Truncated)?;
    let (ip_header_len, max_len) =
        if is_v6 { (IPV6_OVERHEAD, ICMPV6_ERROR_MAX_LEN) } else { (IPV4_OVERHEAD, ICMPV4_ERROR_MAX_LEN) };
    let new_headers_len = ip_header_len + ICMP_HEADER_LEN;
    let quote_len = ip_len.min(max_len - new_headers_len);
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    // The original's source and destination become the reply's destination and source.
    enum Addrs {
        V4(u32, u32),
        V6(u128, u128),
    }
    let addrs = if is_v6 {
        check_ipv6(original, 0)?;
        let header = original.first_chunk::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
        Addrs::V6(u128::from_be_bytes(sub_array(header, 24)), u128::from_be_bytes(sub_array(header, 8)))
    } else {
        check_ipv4(original)?;
        let header = original.first_chunk::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
        Addrs::V4(u32::from_be_bytes(sub_array(header, 16)), u32::from_be_bytes(sub_array(header, 12)))
    };
    if frame.headroom() < new_headers_len {
        return Err(DropReason::NoHeadroom);
    }

    frame.truncate(l3_offset + quote_len);
    let data = open_gap(frame, l3_offset, new_headers_len)?;
    swap_macs(data)?;
    let headers = data.get_mut(l3_offset..).ok_or(DropReason::Malformed)?;
    let (ip_header, message) = headers.split_at_mut_checked(ip_header_len).ok_or(DropReason::Malformed)?;
    let (icmp, quote) = message.split_at_mut_checked(ICMP_HEADER_LEN).ok_or(DropReason::Malformed)?;
    let icmp = icmp.first_chunk_mut::<ICMP_HEADER_LEN>().ok_or(DropReason::Malformed)?;
    // The ICMP header's words are summed from their values, then one pass over the quote.
    let (header_bytes, header_sum) = match addrs {
        Addrs::V4(src, dst) => {
            let header = ip_header.first_chunk_mut::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
            let total_len = (IPV4_OVERHEAD + icmp_len) as u16; // at most 576
            write_ipv4_header(header, 0, total_len, IPV4_DONT_FRAGMENT, IPPROTO_ICMP, src, dst);
            let [mtu_high, mtu_low] = mtu.to_be_bytes();
            let bytes = [ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, 0, 0, 0, 0, mtu_high, mtu_low];
            (
                bytes,
                (u32::from(ICMP_DEST_UNREACHABLE) << 8 | u32::from(ICMP_FRAGMENTATION_NEEDED))
                    + u32::from(mtu),
            )
        }
        Addrs::V6(src, dst) => {
            let header = ip_header.first_chunk_mut::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
            let payload_len = icmp_len as u16; // at most 1240
            write_ipv6_header(header, 6 << 28, payload_len, IPPROTO_ICMPV6, src, dst);
            let [m0, m1, m2, m3] = u32::from(mtu).to_be_bytes();
            let bytes = [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3];
            let pseudo = ipv6_pseudo_header_sum(src, dst, icmp_len as u32, IPPROTO_ICMPV6);
            (bytes, pseudo + (u32::from(ICMPV6_PACKET_TOO_BIG) << 8) + u32::from(mtu))
        }
    };
    let [sum_high, sum_low] = fold(ones_complement_sum(quote, header_sum)).to_be_bytes();
    *icmp = header_bytes;
    icmp[2] = sum_high;
    icmp[3] = sum_low;
    Ok(())
}

/// Checks an IPv4 packet of `ip.len()` bytes: version, header length, total length. Returns the
/// header length.
#[inline(always)]
fn check_ipv4(ip: &[u8]) -> Result<usize, DropReason> {
    let header = ip.first_chunk::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4 || header_len < IPV4_OVERHEAD || header_len > ip.len() || total_len != ip.len() {
        return Err(DropReason::Malformed);
    }
    Ok(header_len)
}

/// As [`check_ipv4`], and the packet must be a whole (unfragmented) ICMP message.
#[inline(always)]
fn check_ipv4_echo(ip: &[u8]) -> Result<usize, DropReason> {
    let header_len = check_ipv4(ip)?;
    let fragment = ip.get(6..8).map(|word| u16::from_be_bytes([word[0], word[1]]) & IPV4_FRAGMENT_BITS);
    if ip.get(9) != Some(&IPPROTO_ICMP) || fragment != Some(0) {
        return Err(DropReason::Malformed);
    }
    Ok(header_len)
}

/// Checks an IPv6 packet of `ip.len()` bytes: version, payload length, and the next header if
/// `next_header` is not 0. Returns the header length.
#[inline(always)]
fn check_ipv6(ip: &[u8], next_header: u8) -> Result<usize, DropReason> {
    let header = ip.first_chunk::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if header[0] >> 4 != 6
        || IPV6_OVERHEAD + payload_len != ip.len()
        || (next_header != 0 && header[6] != next_header)
    {
        return Err(DropReason::Malformed);
    }
    Ok(IPV6_OVERHEAD)
}

#[inline(always)]
fn swap_macs(data: &mut [u8]) -> Result<(), DropReason> {
    let ethernet = data.first_chunk_mut::<12>().ok_or(DropReason::Truncated)?;
    swap_ranges::<6>(ethernet, 0, 6);
    Ok(())
}

/// Swaps `bytes[a..a + N]` and `bytes[b..b + N]` (non-overlapping, in bounds: fixed offsets into
/// fixed-size arrays).
#[inline(always)]
fn swap_ranges<const N: usize>(bytes: &mut [u8], a: usize, b: usize) {
    let first: [u8; N] = sub_array(bytes, a);
    let second: [u8; N] = sub_array(bytes, b);
    if let Some(slot) = bytes.get_mut(a..a + N) {
        slot.copy_from_slice(&second);
    }
    if let Some(slot) = bytes.get_mut(b..b + N) {
        slot.copy_from_slice(&first);
    }
}

#[inline(always)]
fn sub_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes.get(at..).and_then(|rest| rest.first_chunk::<N>()).copied().unwrap_or([0; N])
}

/// Applies the change of one 16-bit word from `old` to `new` to the checksum at `bytes[at..at + 2]`.
#[inline(always)]
fn update_checksum_field(bytes: &mut [u8], at: usize, old: u16, new: u16) {
    if let Some(field) = bytes.get_mut(at..at + 2) {
        let checksum = incremental_update16(u16::from_be_bytes([field[0], field[1]]), old, new);
        field.copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::HEADROOM;
    use crate::rewrite::test_packets::*;
    use etherparse::icmpv4::DestUnreachableHeader;
    use etherparse::{
        IcmpEchoHeader, Icmpv4Type, Icmpv6Type, NetHeaders, PacketHeaders, PayloadSlice, TransportHeader,
    };
    use proptest::prelude::*;

    const MTU: u16 = 1400;

    /// Link header checks shared by both replies: addresses swapped, tags and ethertype kept.
    fn check_link(description: &str, built: &Built, input: &Input, out: &[u8], headers: &PacketHeaders<'_>) {
        let ethernet = headers.link.clone().unwrap().ethernet2().unwrap();
        assert_eq!((ethernet.destination, ethernet.source), (ROUTER_MAC, FWD_MAC), "{description}: MACs");
        assert_eq!(vlan_ids(headers), input.vlan.ids(), "{description}: VLAN tags");
        assert_eq!(
            out[12..built.l3_offset],
            built.bytes[12..built.l3_offset],
            "{description}: tags, ethertype"
        );
        let ether_type = if input.v6 { 0x86dd } else { 0x0800 };
        assert_eq!(innermost_ether_type(headers), ether_type, "{description}: ethertype");
    }

    fn check_echo_reply(description: &str, input: &Input, built: &Built, out: &[u8]) {
        assert_eq!(out.len(), built.l3_offset + built.ip_len, "{description}: length (padding cut)");
        let request = PacketHeaders::from_ethernet_slice(&built.bytes).unwrap();
        let reply = PacketHeaders::from_ethernet_slice(out).unwrap_or_else(|e| panic!("{description}: {e}"));
        check_link(description, built, input, out, &reply);

        match (request.net.clone().unwrap(), reply.net.clone().unwrap()) {
            (NetHeaders::Ipv4(mut expected, expected_exts), NetHeaders::Ipv4(ip, exts)) => {
                std::mem::swap(&mut expected.source, &mut expected.destination);
                expected.time_to_live = OUTER_TTL;
                expected.header_checksum = ip.calc_header_checksum();
                assert_eq!(ip, expected, "{description}: IPv4 header");
                assert_eq!(exts, expected_exts, "{description}: IPv4 extensions");
            }
            (NetHeaders::Ipv6(mut expected, expected_exts), NetHeaders::Ipv6(ip, exts)) => {
                std::mem::swap(&mut expected.source, &mut expected.destination);
                expected.hop_limit = OUTER_TTL;
                assert_eq!(ip, expected, "{description}: IPv6 header");
                assert_eq!(exts, expected_exts, "{description}: IPv6 extensions");
            }
            (request, reply) => panic!("{description}: {request:?} became {reply:?}"),
        }

        let echo = IcmpEchoHeader { id: 0x77, seq: 9 };
        match (reply.transport.clone().unwrap(), &reply.payload, reply.net.clone().unwrap()) {
            (TransportHeader::Icmpv4(icmp), PayloadSlice::Icmpv4(payload), _) => {
                assert_eq!(icmp.icmp_type, Icmpv4Type::EchoReply(echo), "{description}: ICMP type");
                let mut recomputed = icmp.clone();
                recomputed.update_checksum(payload);
                assert_eq!(icmp.checksum, recomputed.checksum, "{description}: ICMP checksum");
            }
            (TransportHeader::Icmpv6(icmp), PayloadSlice::Icmpv6(payload), NetHeaders::Ipv6(ip, _)) => {
                assert_eq!(icmp.icmp_type, Icmpv6Type::EchoReply(echo), "{description}: ICMPv6 type");
                let mut recomputed = icmp.clone();
                recomputed.update_checksum(ip.source, ip.destination, payload).unwrap();
                assert_eq!(icmp.checksum, recomputed.checksum, "{description}: ICMPv6 checksum");
            }
            (transport, _, _) => panic!("{description}: {transport:?}"),
        }
        assert_eq!(reply.payload.slice(), request.payload.slice(), "{description}: echo data");
    }

    struct EchoCase {
        description: &'static str,
        input: Input,
    }

    #[test]
    fn echo_reply_golden_table() {
        let echo = |vlan, v6, ip_len| Input::new(vlan, v6, L4::EchoRequest, ip_len);
        let cases = [
            EchoCase {
                description: "IPv4 untagged, 64 bytes of data",
                input: echo(Vlan::Untagged, false, 92),
            },
            EchoCase {
                description: "IPv4, one VLAN tag, no data, padded",
                input: Input { pad_to: 60, ..echo(Vlan::Single, false, 28) },
            },
            EchoCase {
                description: "IPv4, two VLAN tags, odd-length data",
                input: echo(Vlan::Double, false, 28 + 33),
            },
            EchoCase {
                description: "IPv4 with options (IHL 6)",
                input: Input { ipv4_options: true, ..echo(Vlan::Untagged, false, 100) },
            },
            EchoCase {
                description: "IPv4 1500 bytes, TOS and DF kept",
                input: Input { traffic_class: 0x10, dont_fragment: false, ..echo(Vlan::Single, false, 1500) },
            },
            EchoCase { description: "IPv6 untagged", input: echo(Vlan::Untagged, true, 104) },
            EchoCase {
                description: "IPv6, one VLAN tag, padded",
                input: Input { pad_to: 70, ..echo(Vlan::Single, true, 48) },
            },
            EchoCase {
                description: "IPv6, two VLAN tags, odd data, traffic class kept",
                input: Input { traffic_class: 0xb8, ..echo(Vlan::Double, true, 48 + 1001) },
            },
        ];
        for case in &cases {
            let built = build(&case.input);
            let (result, out, headroom) = run_default(&built.bytes, |f| {
                echo_reply(f, built.l3_offset, built.l4_offset, built.ip_len, case.input.v6)
            });
            assert_eq!(result, Ok(()), "{}", case.description);
            assert_eq!(headroom, HEADROOM, "{}", case.description);
            check_echo_reply(case.description, &case.input, &built, &out);
        }
    }

    /// The arguments of a call, for error cases that bend one of them (or the frame).
    #[derive(Clone, Copy, Debug)]
    struct Call {
        headroom: usize,
        frame_len: usize,
        l3_offset: usize,
        l4_offset: usize,
        ip_len: usize,
        is_v6: bool,
    }

    struct ErrorCase {
        description: &'static str,
        input: Input,
        bend: fn(&mut Call, &mut Vec<u8>),
        expected: Result<(), DropReason>,
    }

    fn call_for(built: &Built, input: &Input) -> Call {
        Call {
            headroom: HEADROOM,
            frame_len: built.bytes.len(),
            l3_offset: built.l3_offset,
            l4_offset: built.l4_offset,
            ip_len: built.ip_len,
            is_v6: input.v6,
        }
    }

    #[test]
    fn echo_reply_errors() {
        use DropReason::*;
        let v4 = Input::new(Vlan::Single, false, L4::EchoRequest, 60);
        let v6 = Input::new(Vlan::Untagged, true, L4::EchoRequest, 80);
        let cases = [
            ErrorCase { description: "control: IPv4 request", input: v4, bend: |_, _| {}, expected: Ok(()) },
            ErrorCase { description: "control: IPv6 request", input: v6, bend: |_, _| {}, expected: Ok(()) },
            ErrorCase {
                description: "IPv4 UDP, not ICMP",
                input: Input::new(Vlan::Untagged, false, L4::Udp, 60),
                bend: |_, _| {},
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv4 echo reply, not a request",
                input: Input::new(Vlan::Untagged, false, L4::EchoReply, 60),
                bend: |_, _| {},
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv6 UDP, not ICMPv6",
                input: Input::new(Vlan::Untagged, true, L4::Udp, 60),
                bend: |_, _| {},
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv6 echo reply, not a request",
                input: Input::new(Vlan::Double, true, L4::EchoReply, 60),
                bend: |_, _| {},
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv4 first fragment (MF set)",
                input: v4,
                bend: |c, bytes| bytes[c.l3_offset + 6] |= 0x20,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv4 non-initial fragment",
                input: v4,
                bend: |c, bytes| bytes[c.l3_offset + 7] = 1,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv6 with a next header other than ICMPv6 (extension header)",
                input: v6,
                bend: |c, bytes| bytes[c.l3_offset + 6] = 0,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "ICMP header cut short: ip_len 27",
                input: Input::new(Vlan::Untagged, false, L4::EchoRequest, 28),
                bend: |c, bytes| {
                    c.ip_len = 27;
                    bytes[c.l3_offset + 3] = 27;
                },
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IHL 15: the ICMP header is no longer at l4_offset",
                input: v4,
                bend: |c, bytes| bytes[c.l3_offset] = 0x4f,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IHL below 5",
                input: v4,
                bend: |c, bytes| bytes[c.l3_offset] = 0x44,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l4_offset 4 too far",
                input: v4,
                bend: |c, _| c.l4_offset += 4,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l4_offset 0",
                input: v6,
                bend: |c, _| c.l4_offset = 0,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "ip_len beyond the frame",
                input: v4,
                bend: |c, _| c.ip_len += 1,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "ip_len usize::MAX",
                input: v6,
                bend: |c, _| c.ip_len = usize::MAX,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "ip_len one short",
                input: v4,
                bend: |c, _| c.ip_len -= 1,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "frame cut",
                input: v6,
                bend: |c, _| c.frame_len -= 1,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "frame of 13 bytes",
                input: v6,
                bend: |c, _| c.frame_len = 13,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "IPv4 passed as IPv6",
                input: v4,
                bend: |c, _| c.is_v6 = true,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv6 passed as IPv4",
                input: v6,
                bend: |c, _| c.is_v6 = false,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l3_offset 16",
                input: v4,
                bend: |c, _| c.l3_offset = 16,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l3_offset 10",
                input: v4,
                bend: |c, _| c.l3_offset = 10,
                expected: Err(Malformed),
            },
        ];
        for case in &cases {
            let mut built = build(&case.input);
            let mut call = call_for(&built, &case.input);
            (case.bend)(&mut call, &mut built.bytes);
            let (result, out, _) = run(&built.bytes[..call.frame_len], call.headroom, |f| {
                echo_reply(f, call.l3_offset, call.l4_offset, call.ip_len, call.is_v6)
            });
            assert_eq!(result, case.expected, "{}", case.description);
            if result.is_ok() {
                check_echo_reply(case.description, &case.input, &built, &out);
            }
        }
    }

    fn check_too_big(description: &str, input: &Input, built: &Built, mtu: u16, out: &[u8], ip_len: usize) {
        let headers_len = if input.v6 { 48 } else { 28 };
        assert_eq!(out.len(), built.l3_offset + ip_len, "{description}: length");
        let error = PacketHeaders::from_ethernet_slice(out).unwrap_or_else(|e| panic!("{description}: {e}"));
        check_link(description, built, input, out, &error);
        match (error.net.clone().unwrap(), error.transport.clone().unwrap(), &error.payload) {
            (NetHeaders::Ipv4(ip, exts), TransportHeader::Icmpv4(icmp), PayloadSlice::Icmpv4(quote)) => {
                assert!(ip.options.is_empty() && exts.is_empty(), "{description}: IHL 5");
                assert_eq!((ip.dscp.value(), ip.ecn.value()), (0, 0), "{description}: TOS");
                assert_eq!(usize::from(ip.total_len), ip_len, "{description}: total length");
                assert_eq!(ip.identification, 0, "{description}: id");
                assert!(ip.dont_fragment && !ip.more_fragments, "{description}: flags");
                assert_eq!(ip.fragment_offset.value(), 0, "{description}: fragment offset");
                assert_eq!(ip.time_to_live, 64, "{description}: TTL");
                assert_eq!(ip.protocol.0, 1, "{description}: protocol");
                assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{description}: IPv4 checksum");
                assert_eq!((ip.source, ip.destination), (VIP_V4, CLIENT_V4), "{description}: addresses");
                assert_eq!(
                    icmp.icmp_type,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu
                    }),
                    "{description}: ICMP type"
                );
                assert_eq!(
                    &out[built.l3_offset + 24..built.l3_offset + 26],
                    &[0, 0],
                    "{description}: unused"
                );
                let mut recomputed = icmp.clone();
                recomputed.update_checksum(quote);
                assert_eq!(icmp.checksum, recomputed.checksum, "{description}: ICMP checksum");
                assert_eq!(*quote, &built.ip_packet()[..ip_len - headers_len], "{description}: quote");
            }
            (NetHeaders::Ipv6(ip, exts), TransportHeader::Icmpv6(icmp), PayloadSlice::Icmpv6(quote)) => {
                assert!(exts.is_empty(), "{description}: extension headers");
                assert_eq!((ip.traffic_class, ip.flow_label.value()), (0, 0), "{description}: class, label");
                assert_eq!(usize::from(ip.payload_length) + 40, ip_len, "{description}: payload length");
                assert_eq!(ip.next_header.0, 58, "{description}: next header");
                assert_eq!(ip.hop_limit, 64, "{description}: hop limit");
                assert_eq!((ip.source, ip.destination), (vip_v6(), client_v6()), "{description}: addresses");
                assert_eq!(
                    icmp.icmp_type,
                    Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) },
                    "{description}: type"
                );
                let mut recomputed = icmp.clone();
                recomputed.update_checksum(ip.source, ip.destination, quote).unwrap();
                assert_eq!(icmp.checksum, recomputed.checksum, "{description}: ICMPv6 checksum");
                assert_eq!(*quote, &built.ip_packet()[..ip_len - headers_len], "{description}: quote");
            }
            other => panic!("{description}: {other:?}"),
        }
    }

    struct TooBigCase {
        description: &'static str,
        input: Input,
        mtu: u16,
        /// Length of the ICMP error's IP packet.
        expected_ip_len: usize,
    }

    #[test]
    fn too_big_golden_table() {
        let cases = [
            TooBigCase {
                description: "IPv4 1500-byte TCP gives a 576-byte error",
                input: Input::new(Vlan::Untagged, false, L4::Tcp, 1500),
                mtu: 1480,
                expected_ip_len: 576,
            },
            TooBigCase {
                description: "IPv4 1500-byte UDP, one VLAN tag",
                input: Input::new(Vlan::Single, false, L4::Udp, 1500),
                mtu: 1472,
                expected_ip_len: 576,
            },
            TooBigCase {
                description: "IPv4 9000-byte jumbo, two VLAN tags",
                input: Input::new(Vlan::Double, false, L4::Tcp, 9000),
                mtu: 8980,
                expected_ip_len: 576,
            },
            TooBigCase {
                description: "IPv4 packet of 548 bytes is quoted whole in exactly 576",
                input: Input::new(Vlan::Untagged, false, L4::Udp, 548),
                mtu: 500,
                expected_ip_len: 576,
            },
            TooBigCase {
                description: "IPv4 packet of 549 bytes loses its last byte",
                input: Input::new(Vlan::Untagged, false, L4::Udp, 549),
                mtu: 500,
                expected_ip_len: 576,
            },
            TooBigCase {
                description: "IPv4 small UDP with padding: quoted whole, padding cut",
                input: Input { pad_to: 60, ..Input::new(Vlan::Single, false, L4::Udp, 29) },
                mtu: 68,
                expected_ip_len: 28 + 29,
            },
            TooBigCase {
                description: "IPv4 with options quoted whole",
                input: Input { ipv4_options: true, ..Input::new(Vlan::Double, false, L4::Tcp, 300) },
                mtu: 0,
                expected_ip_len: 328,
            },
            TooBigCase {
                description: "IPv6 1500-byte TCP gives a 1280-byte error",
                input: Input::new(Vlan::Untagged, true, L4::Tcp, 1500),
                mtu: 1460,
                expected_ip_len: 1280,
            },
            TooBigCase {
                description: "IPv6 1500-byte UDP, two VLAN tags",
                input: Input::new(Vlan::Double, true, L4::Udp, 1500),
                mtu: 1280,
                expected_ip_len: 1280,
            },
            TooBigCase {
                description: "IPv6 of 1232 bytes is quoted whole in exactly 1280",
                input: Input::new(Vlan::Single, true, L4::Udp, 1232),
                mtu: 1280,
                expected_ip_len: 1280,
            },
            TooBigCase {
                description: "IPv6 small odd-length UDP, one VLAN tag, padded",
                input: Input { pad_to: 100, ..Input::new(Vlan::Single, true, L4::Udp, 51) },
                mtu: 65535,
                expected_ip_len: 48 + 51,
            },
        ];
        for case in &cases {
            let built = build(&case.input);
            let (result, out, headroom) = run_default(&built.bytes, |f| {
                too_big(f, built.l3_offset, built.ip_len, case.input.v6, case.mtu)
            });
            assert_eq!(result, Ok(()), "{}", case.description);
            let headers_len = if case.input.v6 { 48 } else { 28 };
            assert_eq!(headroom, HEADROOM - headers_len, "{}: headroom", case.description);
            check_too_big(case.description, &case.input, &built, case.mtu, &out, case.expected_ip_len);
        }
    }

    #[test]
    fn too_big_errors() {
        use DropReason::*;
        let v4 = Input::new(Vlan::Double, false, L4::Tcp, 1500);
        let v6 = Input::new(Vlan::Single, true, L4::Udp, 1500);
        let cases = [
            ErrorCase {
                description: "IPv4 headroom 28 fits",
                input: v4,
                bend: |c, _| c.headroom = 28,
                expected: Ok(()),
            },
            ErrorCase {
                description: "IPv4 headroom 27",
                input: v4,
                bend: |c, _| c.headroom = 27,
                expected: Err(NoHeadroom),
            },
            ErrorCase {
                description: "IPv6 headroom 48 fits",
                input: v6,
                bend: |c, _| c.headroom = 48,
                expected: Ok(()),
            },
            ErrorCase {
                description: "IPv6 headroom 47",
                input: v6,
                bend: |c, _| c.headroom = 47,
                expected: Err(NoHeadroom),
            },
            ErrorCase {
                description: "no headroom",
                input: v6,
                bend: |c, _| c.headroom = 0,
                expected: Err(NoHeadroom),
            },
            ErrorCase {
                description: "frame cut",
                input: v4,
                bend: |c, _| c.frame_len -= 1,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "frame of 13 bytes",
                input: v4,
                bend: |c, _| c.frame_len = 13,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "ip_len beyond the frame",
                input: v6,
                bend: |c, _| c.ip_len += 1,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "ip_len usize::MAX",
                input: v4,
                bend: |c, _| c.ip_len = usize::MAX,
                expected: Err(Truncated),
            },
            ErrorCase {
                description: "ip_len one short of the IPv4 total length",
                input: v4,
                bend: |c, _| c.ip_len -= 1,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "ip_len one short of the IPv6 length",
                input: v6,
                bend: |c, _| c.ip_len -= 1,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "ip_len below an IPv4 header",
                input: v4,
                bend: |c, _| c.ip_len = 19,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv4 passed as IPv6",
                input: v4,
                bend: |c, _| c.is_v6 = true,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "IPv6 passed as IPv4",
                input: v6,
                bend: |c, _| c.is_v6 = false,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l3_offset 20",
                input: v4,
                bend: |c, _| c.l3_offset = 20,
                expected: Err(Malformed),
            },
            ErrorCase {
                description: "l3_offset 30",
                input: v6,
                bend: |c, _| c.l3_offset = 30,
                expected: Err(Malformed),
            },
        ];
        for case in &cases {
            let mut built = build(&case.input);
            let mut call = call_for(&built, &case.input);
            (case.bend)(&mut call, &mut built.bytes);
            let (result, out, _) = run(&built.bytes[..call.frame_len], call.headroom, |f| {
                too_big(f, call.l3_offset, call.ip_len, call.is_v6, MTU)
            });
            assert_eq!(result, case.expected, "{}", case.description);
            if result.is_ok() {
                let expected_len = if case.input.v6 { 1280 } else { 576 };
                check_too_big(case.description, &case.input, &built, MTU, &out, expected_len);
            }
        }
    }

    fn any_vlan() -> impl Strategy<Value = Vlan> {
        prop_oneof![Just(Vlan::Untagged), Just(Vlan::Single), Just(Vlan::Double)]
    }

    proptest! {
        #[test]
        fn echo_reply_of_any_request(
            vlan in any_vlan(),
            v6 in any::<bool>(),
            data_len in 0usize..1500,
            traffic_class in any::<u8>(),
        ) {
            let headers_len = if v6 { 48 } else { 28 };
            let input = Input { traffic_class, pad_to: 60, ..Input::new(vlan, v6, L4::EchoRequest, headers_len + data_len) };
            let built = build(&input);
            let (result, out, _) =
                run_default(&built.bytes, |f| echo_reply(f, built.l3_offset, built.l4_offset, built.ip_len, v6));
            prop_assert_eq!(result, Ok(()));
            check_echo_reply("proptest", &input, &built, &out);
        }

        #[test]
        fn too_big_of_any_packet(
            vlan in any_vlan(),
            v6 in any::<bool>(),
            tcp in any::<bool>(),
            payload_len in 0usize..9000,
            mtu in any::<u16>(),
            headroom in 0usize..80,
        ) {
            let l4 = if tcp { L4::Tcp } else { L4::Udp };
            let ip_len = if v6 { 40 } else { 20 } + if tcp { 20 } else { 8 } + payload_len;
            let input = Input { pad_to: 60, ..Input::new(vlan, v6, l4, ip_len) };
            let built = build(&input);
            let (result, out, _) = run(&built.bytes, headroom, |f| too_big(f, built.l3_offset, built.ip_len, v6, mtu));
            let (headers_len, limit) = if v6 { (48, 1280) } else { (28, 576) };
            if headroom < headers_len {
                prop_assert_eq!(result, Err(DropReason::NoHeadroom));
            } else {
                prop_assert_eq!(result, Ok(()));
                check_too_big("proptest", &input, &built, mtu, &out, (headers_len + ip_len).min(limit));
            }
        }

        /// Any bytes and arguments: never a panic; Err leaves the frame alone (checked by run).
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            headroom in 0usize..80,
            l3_offset in prop_oneof![Just(14usize), Just(18), Just(22), 0usize..40],
            l4_extra in prop_oneof![Just(20usize), Just(24), Just(40), 0usize..80],
            ip_len in prop_oneof![0usize..220, Just(usize::MAX)],
            ip_len_to_end in any::<bool>(),
            is_v6 in any::<bool>(),
            fix_header in any::<bool>(),
            mtu in any::<u16>(),
        ) {
            let mut bytes = bytes;
            let ip_len = if ip_len_to_end { bytes.len().saturating_sub(l3_offset) } else { ip_len };
            // Make Ok reachable: version, IHL, length, protocol and echo request type in place.
            if fix_header && l3_offset + 48 <= bytes.len() && ip_len <= 0xffff {
                let ip = &mut bytes[l3_offset..];
                if is_v6 {
                    ip[0] = 0x60;
                    ip[4..6].copy_from_slice(&(ip_len.saturating_sub(40) as u16).to_be_bytes());
                    ip[6] = 58;
                    ip[40] = 128;
                } else {
                    ip[0] = 0x45;
                    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                    ip[6] &= 0xc0;
                    ip[7] = 0;
                    ip[9] = 1;
                    ip[20] = 8;
                }
            }
            let l4_offset = l3_offset + l4_extra;
            let (result, out, _) = run(&bytes, headroom, |f| echo_reply(f, l3_offset, l4_offset, ip_len, is_v6));
            if result.is_ok() {
                prop_assert_eq!(out.len(), l3_offset + ip_len);
            }
            let (result, out, headroom_after) = run(&bytes, headroom, |f| too_big(f, l3_offset, ip_len, is_v6, mtu));
            if result.is_ok() {
                let (headers_len, limit) = if is_v6 { (48, 1280) } else { (28, 576) };
                prop_assert_eq!(out.len(), l3_offset + (ip_len + headers_len).min(limit));
                prop_assert_eq!(headroom_after, headroom - headers_len);
            }
        }
    }
}
