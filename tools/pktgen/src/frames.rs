//! Generated frames: the payload every frame carries, per-flow templates, and the per-packet patch.
//!
//! # Payload
//! The first [`PAYLOAD_LEN`] bytes after the UDP/TCP header, big-endian:
//! `magic (4) | stream (4) | sequence (8) | flow id (4) | send time, CLOCK_MONOTONIC ns (8)`;
//! the rest of the frame is zeros. A stream is one sending thread of one run: its sequence numbers
//! count from 0 with no gap, which lets the sink find loss and reordering. CLOCK_MONOTONIC is one
//! clock for every network namespace of a host (time namespaces aside), so generator and sink on
//! one box measure latency with no clock sync.
//!
//! # Why templates
//! Every flow slot gets its frame built once, at start, by etherparse (addresses, ports, lengths
//! and both checksums computed by an independent implementation). Sending a packet then copies
//! the slot's template (about 100 bytes) and patches only what changes per packet: the sequence
//! number, the timestamp, the length fields when the size differs from the template's (IMIX), the
//! TCP flags for `mix`, and the checksums, adjusted incrementally (RFC 1624) for exactly the words
//! that changed. That costs a few nanoseconds where building a frame costs hundreds, so the
//! generator is limited by the I/O, not by itself. Templates are visited in order, so even
//! millions of them stream through the cache rather than thrash it.
//!
//! Bytes past a template are never written by the generator, so the zeros there (a fresh UMEM
//! chunk or buffer is zeroed) stay zeros: the checksums count on it, and the copy of a whole
//! `stride` wipes whatever a longer template of another family left in the same buffer.

use crate::spec::{Flow, Mac, Protocol, TcpFlags, TrafficSpec, FCS_LEN, PAYLOAD_LEN};
use etherparse::PacketBuilder;
use std::net::IpAddr;

pub const MAGIC: u32 = 0x4657_4450; // "FWDP"

/// Byte offsets inside the payload.
const STREAM_AT: usize = 4;
const SEQ_AT: usize = 8;
const FLOW_AT: usize = 16;
const TIME_AT: usize = 20;

/// What a generated payload says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub stream: u32,
    pub seq: u64,
    pub flow: u32,
    pub sent_ns: u64,
}

impl Payload {
    /// Reads a payload, `None` if it is too short or does not start with [`MAGIC`].
    #[inline]
    pub fn read(bytes: &[u8]) -> Option<Payload> {
        let b = bytes.get(..PAYLOAD_LEN)?;
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| (u64::from(u32_at(at)) << 32) | u64::from(u32_at(at + 4));
        if u32_at(0) != MAGIC {
            return None;
        }
        Some(Payload {
            stream: u32_at(STREAM_AT),
            seq: u64_at(SEQ_AT),
            flow: u32_at(FLOW_AT),
            sent_ns: u64_at(TIME_AT),
        })
    }

    /// The payload bytes (for tests and templates).
    pub fn bytes(&self) -> [u8; PAYLOAD_LEN] {
        let mut b = [0u8; PAYLOAD_LEN];
        b[..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[STREAM_AT..STREAM_AT + 4].copy_from_slice(&self.stream.to_be_bytes());
        b[SEQ_AT..SEQ_AT + 8].copy_from_slice(&self.seq.to_be_bytes());
        b[FLOW_AT..FLOW_AT + 4].copy_from_slice(&self.flow.to_be_bytes());
        b[TIME_AT..TIME_AT + 8].copy_from_slice(&self.sent_ns.to_be_bytes());
        b
    }
}

/// Where things are in the frames sent to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    pub tcp: bool,
    /// Offset of the UDP/TCP header.
    pub l4: usize,
    /// Offset of the payload.
    pub payload: usize,
    /// The length the templates are built at (no FCS).
    pub base_len: usize,
}

const ETHERNET_LEN: usize = 14;

impl Layout {
    pub fn new(v6: bool, protocol: Protocol, primary_size: usize) -> Layout {
        let tcp = protocol == Protocol::Tcp;
        let l4 = ETHERNET_LEN + if v6 { 40 } else { 20 };
        let payload = l4 + if tcp { 20 } else { 8 };
        let base_len = (primary_size - FCS_LEN).max(payload + PAYLOAD_LEN);
        Layout { v6, tcp, l4, payload, base_len }
    }

    /// The smallest frame of this layout (no FCS): headers and the fixed payload.
    pub fn min_len(&self) -> usize {
        self.payload + PAYLOAD_LEN
    }

    fn checksum_at(&self) -> usize {
        self.l4 + if self.tcp { 16 } else { 6 }
    }
}

/// Template stride: the longest template (IPv6 + TCP + payload = 102 bytes), rounded up.
pub const STRIDE: usize = 104;

/// TCP segments' fixed fields.
const TCP_WINDOW: u16 = 65535;
const TCP_ACK: u8 = 0x10;

/// One sending thread's frames: the templates of its flows and how to patch them.
#[derive(Debug)]
pub struct FrameSource {
    /// `STRIDE` bytes per slot: the template's first bytes, zero padded.
    templates: Vec<u8>,
    /// Per destination.
    layouts: Vec<Layout>,
    slots: u64,
    /// This thread's flows are `first_flow + slot * flow_step`.
    first_flow: u64,
    flow_step: u64,
    destinations: u64,
    sizes: crate::spec::FrameSizes,
    tcp_flags: TcpFlags,
    pub stream: u32,
}

/// The addresses a frame is sent between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

impl FrameSource {
    /// The templates of flows `first_flow, first_flow + flow_step, ...` (below `spec.flows`),
    /// carrying stream id `stream`.
    pub fn new(spec: &TrafficSpec, link: Link, stream: u32, first_flow: u64, flow_step: u64) -> FrameSource {
        let slots = spec.flows.saturating_sub(first_flow).div_ceil(flow_step);
        let layouts: Vec<Layout> = spec
            .destinations
            .iter()
            .map(|d| Layout::new(d.is_ipv6(), spec.protocol, spec.frame_sizes.primary()))
            .collect();
        let mut source = FrameSource {
            templates: vec![0u8; slots as usize * STRIDE],
            layouts,
            slots,
            first_flow,
            flow_step,
            destinations: spec.destinations.len() as u64,
            sizes: spec.frame_sizes.clone(),
            tcp_flags: spec.tcp_flags,
            stream,
        };
        let mut frame = Vec::with_capacity(2048);
        for slot in 0..slots {
            let flow_index = first_flow + slot * flow_step;
            let layout = source.layouts[(flow_index % source.destinations) as usize];
            frame.clear();
            build_frame(&mut frame, spec, link, &layout, flow_index, stream);
            let at = slot as usize * STRIDE;
            source.templates[at..at + layout.min_len()].copy_from_slice(&frame[..layout.min_len()]);
        }
        source
    }

    /// Flow slots (distinct flows) of this source.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The flow index of packet `seq` of this stream.
    pub fn flow_of(&self, seq: u64) -> u64 {
        self.first_flow + (seq % self.slots.max(1)) * self.flow_step
    }

    /// Length (no FCS) of packet `seq`.
    #[inline]
    pub fn len_of(&self, seq: u64) -> usize {
        let layout = self.layouts[(self.flow_of(seq) % self.destinations) as usize];
        (self.sizes.nth(seq) - FCS_LEN).max(layout.min_len())
    }

    /// Writes packet `seq` of this stream, sent at `now_ns`, at the start of `buf`, and returns
    /// its length (0 if `buf` is too short or there are no flows).
    #[inline]
    pub fn write(&self, seq: u64, now_ns: u64, buf: &mut [u8]) -> usize {
        if self.slots == 0 {
            return 0;
        }
        let slot = seq % self.slots;
        let flow_index = self.first_flow + slot * self.flow_step;
        let Some(&layout) = self.layouts.get((flow_index % self.destinations) as usize) else { return 0 };
        let len = (self.sizes.nth(seq) - FCS_LEN).max(layout.min_len());
        let at = slot as usize * STRIDE;
        let (Some(template), Some(frame)) =
            (self.templates.get(at..at + STRIDE), buf.get_mut(..len.max(STRIDE)))
        else {
            return 0;
        };
        frame[..STRIDE].copy_from_slice(template);
        let checksum_at = layout.checksum_at();
        let mut l4_sum = Sum::start(&frame[checksum_at..checksum_at + 2]);

        // Sequence number and timestamp: the template holds zeros there.
        let p = layout.payload;
        frame[p + SEQ_AT..p + SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
        frame[p + TIME_AT..p + TIME_AT + 8].copy_from_slice(&now_ns.to_be_bytes());
        l4_sum.add(&frame[p + SEQ_AT..p + SEQ_AT + 8]);
        l4_sum.add(&frame[p + TIME_AT..p + TIME_AT + 8]);

        if len != layout.base_len {
            let l4_len = |total: usize| ((total - layout.l4) as u16).to_be_bytes();
            let (old, new) = (l4_len(layout.base_len), l4_len(len));
            if layout.v6 {
                // Payload length; the pseudo-header's upper-layer length (high half 0) follows it.
                frame[ETHERNET_LEN + 4..ETHERNET_LEN + 6].copy_from_slice(&new);
            } else {
                let ip_len = |total: usize| ((total - ETHERNET_LEN) as u16).to_be_bytes();
                let (old_ip, new_ip) = (ip_len(layout.base_len), ip_len(len));
                frame[ETHERNET_LEN + 2..ETHERNET_LEN + 4].copy_from_slice(&new_ip);
                let mut ip_sum = Sum::start(&frame[ETHERNET_LEN + 10..ETHERNET_LEN + 12]);
                ip_sum.replace(&old_ip, &new_ip);
                frame[ETHERNET_LEN + 10..ETHERNET_LEN + 12].copy_from_slice(&ip_sum.finish(false));
            }
            // The pseudo-header's length changes; so does UDP's own length field.
            l4_sum.replace(&old, &new);
            if !layout.tcp {
                frame[layout.l4 + 4..layout.l4 + 6].copy_from_slice(&new);
                l4_sum.replace(&old, &new);
            }
        }

        if layout.tcp && self.tcp_flags == TcpFlags::Mix && seq >= self.slots {
            // After each flow's first segment (a SYN): ACKs, acknowledging 1.
            let flags_at = layout.l4 + 12;
            let old = [frame[flags_at], frame[flags_at + 1]];
            frame[flags_at + 1] = TCP_ACK;
            l4_sum.replace(&old, &[frame[flags_at], frame[flags_at + 1]]);
            let ack_at = layout.l4 + 8;
            frame[ack_at..ack_at + 4].copy_from_slice(&1u32.to_be_bytes());
            l4_sum.replace(&[0, 0], &[0, 1]);
        }
        frame[checksum_at..checksum_at + 2].copy_from_slice(&l4_sum.finish(!layout.tcp));
        len
    }
}

/// Builds flow `flow_index`'s frame (at the layout's base length, sequence number and time 0)
/// with etherparse.
pub fn build_frame(
    out: &mut Vec<u8>,
    spec: &TrafficSpec,
    link: Link,
    layout: &Layout,
    flow_index: u64,
    stream: u32,
) {
    let flow = spec.flow(flow_index);
    let payload_len = layout.base_len - layout.payload;
    let mut payload = vec![0u8; payload_len];
    payload[..PAYLOAD_LEN]
        .copy_from_slice(&Payload { stream, seq: 0, flow: flow_index as u32, sent_ns: 0 }.bytes());
    let ethernet = PacketBuilder::ethernet2(link.src_mac, link.dst_mac);
    let ip = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet.ipv4(s.octets(), d.octets(), spec.ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet.ipv6(s.octets(), d.octets(), spec.ttl),
        // The flow mapping takes sources of the destination's family.
        _ => unreachable_family(flow),
    };
    let written = if layout.tcp {
        let sequence = tcp_sequence(flow_index);
        let tcp = ip.tcp(flow.src_port, flow.dst_port, sequence, TCP_WINDOW);
        match spec.tcp_flags {
            TcpFlags::Syn | TcpFlags::Mix => tcp.syn().write(out, &payload),
            TcpFlags::Ack => tcp.ack(1).write(out, &payload),
        }
    } else {
        ip.udp(flow.src_port, flow.dst_port).write(out, &payload)
    };
    // Writing into a Vec only fails on sizes far beyond what validation allows.
    if let Err(e) = written {
        panic!("etherparse could not build flow {flow_index} ({flow:?}): {e}");
    }
}

#[cold]
fn unreachable_family(flow: Flow) -> ! {
    panic!("flow {flow:?} mixes address families: the flow mapping is broken")
}

/// A flow's initial TCP sequence number: distinct per flow, fixed per run.
fn tcp_sequence(flow_index: u64) -> u32 {
    (flow_index as u32).wrapping_mul(0x9e37_79b9)
}

/// A one's-complement checksum being adjusted (RFC 1624: `HC' = ~(~HC + ~m + m')`).
#[derive(Clone, Copy, Debug)]
struct Sum(u32);

impl Sum {
    /// Starts from the checksum field's current bytes.
    #[inline]
    fn start(field: &[u8]) -> Sum {
        Sum(u32::from(!u16::from_be_bytes([field[0], field[1]])))
    }

    /// The covered bytes `added` were zeros and now hold these values (even length).
    #[inline]
    fn add(&mut self, added: &[u8]) {
        for word in added.chunks_exact(2) {
            self.0 += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
    }

    /// The 16-bit word `old` became `new`.
    #[inline]
    fn replace(&mut self, old: &[u8; 2], new: &[u8; 2]) {
        self.0 += u32::from(!u16::from_be_bytes(*old)) + u32::from(u16::from_be_bytes(*new));
    }

    /// The new checksum field; `udp`: a computed 0 is sent as 0xffff (0 means "none").
    #[inline]
    fn finish(self, udp: bool) -> [u8; 2] {
        let mut sum = self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let checksum = !(sum as u16);
        if udp && checksum == 0 {
            return [0xff, 0xff];
        }
        checksum.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RawSpec;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;
    use std::collections::HashSet;

    const LINK: Link = Link { src_mac: [0x02, 0, 0, 0, 0, 0x0a], dst_mac: [0x02, 0, 0, 0, 0, 0x0b] };

    fn spec(destinations: &[&str], protocol: &str, size: &str, flows: u64, tcp_flags: &str) -> TrafficSpec {
        let text = format!(
            "destinations = {destinations:?}\nprotocol = \"{protocol}\"\nframe_size = \"{size}\"\nflows = {flows}\n\
             tcp_flags = \"{tcp_flags}\"\nsources_v4 = \"198.18.1.0/24\"\nsources_v6 = \"fd00:18:1::/112\"\n"
        );
        toml::from_str::<RawSpec>(&text).unwrap().validate().unwrap()
    }

    /// What an independent parser (etherparse) finds in a frame; panics on any checksum error.
    #[derive(Debug)]
    struct Parsed {
        src: IpAddr,
        dst: IpAddr,
        src_port: u16,
        dst_port: u16,
        syn: Option<bool>,
        payload: Payload,
        len: usize,
    }

    fn parse_and_verify(frame: &[u8]) -> Parsed {
        let packet = SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("etherparse: {e:?}"));
        let (src, dst) = match packet.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let header = ip.header().to_header();
                assert_eq!(header.calc_header_checksum(), header.header_checksum, "IPv4 header checksum");
                assert_eq!(usize::from(header.total_len), frame.len() - 14, "IPv4 total length");
                (IpAddr::V4(header.source.into()), IpAddr::V4(header.destination.into()))
            }
            NetSlice::Ipv6(ip) => {
                let header = ip.header();
                assert_eq!(usize::from(header.payload_length()), frame.len() - 54, "IPv6 payload length");
                (IpAddr::V6(header.source_addr()), IpAddr::V6(header.destination_addr()))
            }
            other => panic!("not IP: {other:?}"),
        };
        let (src_port, dst_port, syn, payload, expected, actual) = match packet.transport.as_ref().unwrap() {
            TransportSlice::Udp(udp) => {
                let header = udp.to_header();
                assert_eq!(usize::from(header.length), udp.slice().len(), "UDP length");
                let expected = match packet.net.as_ref().unwrap() {
                    NetSlice::Ipv4(ip) => header.calc_checksum_ipv4(&ip.header().to_header(), udp.payload()),
                    NetSlice::Ipv6(ip) => header.calc_checksum_ipv6(&ip.header().to_header(), udp.payload()),
                    _ => unreachable!(),
                }
                .unwrap();
                (header.source_port, header.destination_port, None, udp.payload(), expected, header.checksum)
            }
            TransportSlice::Tcp(tcp) => {
                let expected = match packet.net.as_ref().unwrap() {
                    NetSlice::Ipv4(ip) => {
                        tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                    }
                    NetSlice::Ipv6(ip) => {
                        tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                    }
                    _ => unreachable!(),
                }
                .unwrap();
                assert_eq!(tcp.syn(), !tcp.ack(), "a SYN or an ACK");
                let syn = Some(tcp.syn());
                (tcp.source_port(), tcp.destination_port(), syn, tcp.payload(), expected, tcp.checksum())
            }
            other => panic!("not UDP/TCP: {other:?}"),
        };
        assert_eq!(actual, expected, "L4 checksum of {frame:02x?}");
        assert!(payload[PAYLOAD_LEN..].iter().all(|&b| b == 0), "zero filler");
        Parsed {
            src,
            dst,
            src_port,
            dst_port,
            syn,
            payload: Payload::read(payload).unwrap(),
            len: frame.len(),
        }
    }

    fn write(source: &FrameSource, seq: u64, now: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let len = source.write(seq, now, &mut buf);
        assert!(len > 0);
        buf.truncate(len);
        buf
    }

    #[test]
    fn frames_parse_with_etherparse_and_carry_correct_checksums() {
        let cases = [
            ("UDP over IPv4, 64 bytes", spec(&["198.18.100.1:80"], "udp", "64", 7, "syn"), 70),
            ("UDP over IPv6, 64 raised to fit", spec(&["[fd00:18:100::1]:53"], "udp", "64", 7, "syn"), 90),
            ("TCP SYN over IPv4, 128 bytes", spec(&["198.18.100.1:443"], "tcp", "128", 7, "syn"), 124),
            ("TCP ACK over IPv6", spec(&["[fd00:18:100::1]:443"], "tcp", "64", 7, "ack"), 102),
            (
                "TCP mix, both families",
                spec(&["198.18.100.1:80", "[fd00:18:100::1]:80"], "tcp", "64", 8, "mix"),
                0,
            ),
            (
                "UDP IMIX, both families",
                spec(&["198.18.100.1:80", "[fd00:18:100::1]:80"], "udp", "imix", 5, "syn"),
                0,
            ),
            ("TCP IMIX over IPv4", spec(&["198.18.100.1:80"], "tcp", "imix", 3, "mix"), 0),
            ("UDP 1518 over IPv6", spec(&["[fd00:18:100::1]:53"], "udp", "1518", 2, "syn"), 1514),
        ];
        for (description, spec, fixed_len) in cases {
            let source = FrameSource::new(&spec, LINK, 0xabcd_0001, 0, 1);
            for seq in 0..40u64 {
                let now = 1_000_000_007 * seq + 0xffff_fff0;
                let frame = write(&source, seq, now);
                let parsed = parse_and_verify(&frame);
                let flow = spec.flow(seq % spec.flows);
                assert_eq!(
                    (parsed.src, parsed.dst, parsed.src_port, parsed.dst_port),
                    (flow.src, flow.dst, flow.src_port, flow.dst_port),
                    "{description}"
                );
                let expected =
                    Payload { stream: 0xabcd_0001, seq, flow: (seq % spec.flows) as u32, sent_ns: now };
                assert_eq!(parsed.payload, expected, "{description}");
                assert_eq!(&frame[..6], &LINK.dst_mac, "{description}");
                if fixed_len > 0 {
                    assert_eq!(parsed.len, fixed_len, "{description}");
                } else {
                    let layout = Layout::new(flow.dst.is_ipv6(), spec.protocol, spec.frame_sizes.primary());
                    let expected = (spec.frame_sizes.nth(seq) - FCS_LEN).max(layout.min_len());
                    assert_eq!(parsed.len, expected, "{description}");
                }
                if spec.tcp_flags == TcpFlags::Mix {
                    assert_eq!(parsed.syn, Some(seq < spec.flows), "{description}: SYN first, then ACKs");
                }
            }
        }
    }

    #[test]
    fn a_buffer_reused_across_families_and_sizes_stays_correct() {
        let spec = spec(&["[fd00:18:100::1]:80", "198.18.100.1:80"], "tcp", "imix", 4, "mix");
        let source = FrameSource::new(&spec, LINK, 1, 0, 1);
        let mut buf = vec![0u8; 2048];
        for seq in 0..100u64 {
            let len = source.write(seq, seq, &mut buf);
            parse_and_verify(&buf[..len]);
        }
    }

    #[test]
    fn threads_split_the_flows_between_them() {
        let spec =
            spec(&["198.18.100.1:80", "198.18.100.2:80", "[fd00:18:100::1]:80"], "udp", "64", 10_000, "syn");
        let mut all = HashSet::new();
        for thread in 0..3 {
            let source = FrameSource::new(&spec, LINK, thread, thread as u64, 3);
            for seq in 0..source.slots() {
                let parsed = parse_and_verify(&write(&source, seq, 0));
                assert!(
                    all.insert((parsed.src, parsed.dst, parsed.src_port, parsed.dst_port)),
                    "flow sent twice"
                );
                assert_eq!(u64::from(parsed.payload.flow) % 3, thread as u64);
            }
        }
        assert_eq!(all.len(), 10_000, "as many distinct flows as asked");
    }

    #[test]
    fn too_short_a_buffer_writes_nothing() {
        let source = FrameSource::new(&spec(&["198.18.100.1:80"], "udp", "1518", 1, "syn"), LINK, 0, 0, 1);
        assert_eq!(source.write(0, 0, &mut [0u8; 1000]), 0);
    }

    proptest! {
        #[test]
        fn any_sequence_and_time_keep_the_checksums_right(seq in any::<u64>(), now in any::<u64>(), v6 in any::<bool>(), tcp in any::<bool>()) {
            let destination = if v6 { "[fd00:18:100::1]:80" } else { "198.18.100.1:80" };
            let spec = spec(&[destination], if tcp { "tcp" } else { "udp" }, "imix", 3, "mix");
            let source = FrameSource::new(&spec, LINK, 9, 0, 1);
            let parsed = parse_and_verify(&write(&source, seq, now));
            prop_assert_eq!(parsed.payload.seq, seq);
            prop_assert_eq!(parsed.payload.sent_ns, now);
        }
    }
}
