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
        V4([u8; 4], [u8; 4]),
        V6([u8; 16], [u8; 16]),
    }
    let addrs = if is_v6 {
        check_ipv6(original, 0)?;
        let header = original.first_chunk::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
        Addrs::V6(sub_array(header, 24), sub_array(header, 8))
    } else {
        check_ipv4(original)?;
        let header = original.first_chunk::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
        Addrs::V4(sub_array(header, 16), sub_array(header, 12))
    };
    if frame.headroom() < new_headers_len {
        return Err(DropReason::NoHeadroom);
    }

    frame.truncate(l3_offset + quote_len);
    let data = open_gap(frame, l3_offset, new_headers_len)?;
    swap_macs(data)?;
    let headers = data.get_mut(l3_offset..).ok_or(DropReason::Malformed)?;
    let (ip_header, message) = headers.split_at_mut_checked(ip_header_len).ok_or(DropReason::Malformed)?;
    let icmp = message.first_chunk_mut::<ICMP_HEADER_LEN>().ok_or(DropReason::Malformed)?;
    let initial_sum = match addrs {
        Addrs::V4(src, dst) => {
            let header = ip_header.first_chunk_mut::<IPV4_OVERHEAD>().ok_or(DropReason::Malformed)?;
            let total_len = (IPV4_OVERHEAD + icmp_len) as u16; // at most 576
            write_ipv4_header(header, 0, total_len, IPV4_DONT_FRAGMENT, IPPROTO_ICMP, src, dst);
            let [mtu_high, mtu_low] = mtu.to_be_bytes();
            *icmp = [ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, 0, 0, 0, 0, mtu_high, mtu_low];
            0
        }
        Addrs::V6(src, dst) => {
            let header = ip_header.first_chunk_mut::<IPV6_OVERHEAD>().ok_or(DropReason::Malformed)?;
            let payload_len = icmp_len as u16; // at most 1240
            write_ipv6_header(header, 6 << 28, payload_len, IPPROTO_ICMPV6, src, dst);
            let [m0, m1, m2, m3] = u32::from(mtu).to_be_bytes();
            *icmp = [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3];
            ipv6_pseudo_header_sum(&src, &dst, icmp_len as u32, IPPROTO_ICMPV6)
        }
    };
    let checksum = fold(ones_complement_sum(message, initial_sum));
    message.get_mut(2..4).ok_or(DropReason::Malformed)?.copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

/// Checks an IPv4 packet of `ip.len()` bytes: version, header length, total length. Returns the
/// header length.
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

fn swap_macs(data: &mut [u8]) -> Result<(), DropReason> {
    let ethernet = data.first_chunk_mut::<12>().ok_or(DropReason::Truncated)?;
    swap_ranges::<6>(ethernet, 0, 6);
    Ok(())
}

/// Swaps `bytes[a..a + N]` and `bytes[b..b + N]` (non-overlapping, in bounds: fixed offsets into
/// fixed-size arrays).
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

fn sub_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes.get(at..).and_then(|rest| rest.first_chunk::<N>()).copied().unwrap_or([0; N])
}

/// Applies the change of one 16-bit word from `old` to `new` to the checksum at `bytes[at..at + 2]`.
fn update_checksum_field(bytes: &mut [u8], at: usize, old: u16, new: u16) {
    if let Some(field) = bytes.get_mut(at..at + 2) {
        let checksum = incremental_update16(u16::from_be_bytes([field[0], field[1]]), old, new);
        field.copy_from_slice(&checksum.to_be_bytes());
    }
}
