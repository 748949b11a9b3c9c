//! The sink's accounting: what arrived, from which stream, how late, through which backend.
//!
//! # Loss and reordering
//! Each generator stream numbers its packets 0, 1, 2, ... with no gap. Per stream the sink keeps
//! the highest number seen and a window of the last [`WINDOW`] numbers. A packet above the highest
//! moves the window; one inside the window is either a duplicate (already seen) or late (a gap
//! being filled: reordering); one below the window is counted late, unchecked for duplication.
//! At the end, `expected = highest + 1` and `lost = expected - unique received`: a packet that
//! arrives late is not lost. Tail loss (the last packets of a stream) is invisible to sequence
//! numbers; compare with the generator's sent count for that.
//!
//! # Backends
//! Per inner destination (VIP, port, protocol), packets are counted per backend: the outer
//! destination address for tunnelled frames, the destination MAC for plain ones (an L2 DSR
//! balancer changes only the MAC).

use crate::decode::{addr_text, decode, Addr, Encap};
use crate::frames::Payload;
use crate::spec::mac_text;
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

/// Sequence numbers remembered per stream for duplicate and reorder detection.
pub const WINDOW: u64 = 4096;
/// Distinct sources counted one by one; more are summed in `other_sources`.
const MAX_SOURCES: usize = 65_536;
/// Latency range the histogram covers: 1 ns to an hour, 3 significant digits.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Highest flow id tracked for the distinct-flow count (the generator's own limit).
const MAX_FLOW_ID: u32 = 1 << 24;

#[derive(Clone, Debug)]
struct Stream {
    highest: u64,
    /// Packets counted once (duplicates excluded).
    unique: u64,
    late: u64,
    duplicates: u64,
    /// Bit `seq % WINDOW` for `seq` in `highest - WINDOW + 1 ..= highest`.
    window: Box<[u64; (WINDOW / 64) as usize]>,
    /// Bit per flow id seen.
    flows: Vec<u64>,
}

impl Stream {
    fn new(seq: u64) -> Stream {
        let mut stream = Stream {
            highest: seq,
            unique: 1,
            late: 0,
            duplicates: 0,
            window: Box::new([0; (WINDOW / 64) as usize]),
            flows: Vec::new(),
        };
        stream.mark(seq);
        stream
    }

    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    fn mark(&mut self, seq: u64) {
        let (word, bit) = Stream::bit(seq);
        self.window[word] |= bit;
    }

    fn seen(&self, seq: u64) -> bool {
        let (word, bit) = Stream::bit(seq);
        self.window[word] & bit != 0
    }

    fn record(&mut self, seq: u64) {
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.window.fill(0);
            } else {
                for skipped in self.highest + 1..seq {
                    let (word, bit) = Stream::bit(skipped);
                    self.window[word] &= !bit;
                }
            }
            self.highest = seq;
            self.mark(seq);
            self.unique += 1;
        } else if self.highest - seq < WINDOW {
            if self.seen(seq) {
                self.duplicates += 1;
            } else {
                self.mark(seq);
                self.late += 1;
                self.unique += 1;
            }
        } else {
            self.late += 1;
            self.unique += 1;
        }
    }

    fn note_flow(&mut self, flow: u32) {
        if flow >= MAX_FLOW_ID {
            return;
        }
        let word = (flow / 64) as usize;
        if word >= self.flows.len() {
            // Grows to the largest flow id seen: at most 2 MiB, a handful of times per run.
            self.flows.resize((word + 1).next_power_of_two(), 0);
        }
        self.flows[word] |= 1u64 << (flow % 64);
    }

    fn expected(&self) -> u64 {
        self.highest + 1
    }

    fn merge(&mut self, other: &Stream) {
        // Streams split over sink threads (several queues): the sums and the highest number are
        // exact; duplicates across threads are not detected.
        self.highest = self.highest.max(other.highest);
        self.unique += other.unique;
        self.late += other.late;
        self.duplicates += other.duplicates;
        if other.flows.len() > self.flows.len() {
            self.flows.resize(other.flows.len(), 0);
        }
        for (mine, theirs) in self.flows.iter_mut().zip(&other.flows) {
            *mine |= theirs;
        }
    }
}

/// Which backend a frame went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Backend {
    Address(Addr),
    Mac([u8; 6]),
}

impl Backend {
    fn text(&self) -> String {
        match self {
            Backend::Address(a) => addr_text(a),
            Backend::Mac(m) => format!("mac {}", mac_text(m)),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Destination {
    packets: u64,
    backends: FxHashMap<Backend, u64>,
}

/// Everything one sink thread counted.
#[derive(Debug)]
pub struct Accounting {
    gue_port: u16,
    pub frames: u64,
    pub bytes: u64,
    /// Frames carrying a generator payload.
    pub ours: u64,
    /// IP frames without one.
    pub foreign: u64,
    pub not_ip: u64,
    encaps: [u64; Encap::ALL.len()],
    streams: FxHashMap<u32, Stream>,
    destinations: FxHashMap<(Addr, u16, u8), Destination>,
    sources: FxHashMap<Addr, u64>,
    other_sources: u64,
    latency: Histogram<u64>,
    /// Payloads stamped later than they arrived (clocks of different hosts).
    pub latency_invalid: u64,
}

impl Accounting {
    pub fn new(gue_port: u16) -> Accounting {
        Accounting {
            gue_port,
            frames: 0,
            bytes: 0,
            ours: 0,
            foreign: 0,
            not_ip: 0,
            encaps: [0; Encap::ALL.len()],
            streams: FxHashMap::default(),
            destinations: FxHashMap::default(),
            sources: FxHashMap::default(),
            other_sources: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .unwrap_or_else(|e| panic!("latency histogram bounds: {e}")),
            latency_invalid: 0,
        }
    }

    /// Counts one received frame, received at `now_ns` (CLOCK_MONOTONIC).
    #[inline]
    pub fn record(&mut self, frame: &[u8], now_ns: u64) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        let Some(d) = decode(frame, self.gue_port) else {
            self.not_ip += 1;
            return;
        };
        let Some(payload) = Payload::read(d.payload) else {
            self.foreign += 1;
            return;
        };
        self.ours += 1;
        self.encaps[d.encap.index()] += 1;
        let stream = self
            .streams
            .entry(payload.stream)
            .and_modify(|s| s.record(payload.seq))
            .or_insert_with(|| Stream::new(payload.seq));
        stream.note_flow(payload.flow);
        if payload.sent_ns <= now_ns {
            self.latency.saturating_record((now_ns - payload.sent_ns).max(1));
        } else {
            self.latency_invalid += 1;
        }
        let backend = match d.encap {
            Encap::Plain4 | Encap::Plain6 => Backend::Mac(d.dst_mac),
            _ => Backend::Address(d.outer_dst),
        };
        let destination = self.destinations.entry((d.dst, d.dst_port, d.protocol)).or_default();
        destination.packets += 1;
        *destination.backends.entry(backend).or_insert(0) += 1;
        if let Some(count) = self.sources.get_mut(&d.src) {
            *count += 1;
        } else if self.sources.len() < MAX_SOURCES {
            self.sources.insert(d.src, 1);
        } else {
            self.other_sources += 1;
        }
    }

    /// Packets the streams seen so far should have delivered, and how many arrived (once).
    pub fn expected_and_unique(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(e, u), s| (e + s.expected(), u + s.unique))
    }

    /// Adds another thread's counts to these.
    pub fn merge(&mut self, other: &Accounting) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.ours += other.ours;
        self.foreign += other.foreign;
        self.not_ip += other.not_ip;
        for (mine, theirs) in self.encaps.iter_mut().zip(&other.encaps) {
            *mine += theirs;
        }
        for (id, stream) in &other.streams {
            match self.streams.get_mut(id) {
                Some(mine) => mine.merge(stream),
                None => {
                    self.streams.insert(*id, stream.clone());
                }
            }
        }
        for (key, theirs) in &other.destinations {
            let mine = self.destinations.entry(*key).or_default();
            mine.packets += theirs.packets;
            for (backend, count) in &theirs.backends {
                *mine.backends.entry(*backend).or_insert(0) += count;
            }
        }
        for (source, count) in &other.sources {
            *self.sources.entry(*source).or_insert(0) += count;
        }
        self.other_sources += other.other_sources;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.latency_invalid += other.latency_invalid;
    }

    pub fn report(&self) -> SinkReport {
        let mut streams: Vec<StreamReport> = self
            .streams
            .iter()
            .map(|(&id, s)| StreamReport {
                stream: format!("{id:08x}"),
                expected: s.expected(),
                received: s.unique,
                lost: s.expected().saturating_sub(s.unique),
                late: s.late,
                duplicates: s.duplicates,
                flows_seen: s.flows.iter().map(|w| u64::from(w.count_ones())).sum(),
            })
            .collect();
        streams.sort_by(|a, b| a.stream.cmp(&b.stream));
        let expected: u64 = streams.iter().map(|s| s.expected).sum();
        let lost: u64 = streams.iter().map(|s| s.lost).sum();
        let received: u64 = streams.iter().map(|s| s.received).sum();
        let late: u64 = streams.iter().map(|s| s.late).sum();
        let mut destinations: Vec<DestinationReport> = self
            .destinations
            .iter()
            .map(|(&(addr, port, protocol), d)| {
                let mut backends: Vec<(Backend, u64)> = d.backends.iter().map(|(b, c)| (*b, *c)).collect();
                backends.sort();
                let counts: Vec<u64> = backends.iter().map(|(_, c)| *c).collect();
                let mean = d.packets as f64 / counts.len().max(1) as f64;
                DestinationReport {
                    destination: format!("{}:{port}", bracketed(&addr)),
                    protocol: match protocol {
                        6 => "tcp".to_string(),
                        17 => "udp".to_string(),
                        p => p.to_string(),
                    },
                    packets: d.packets,
                    backends: backends
                        .iter()
                        .map(|(b, c)| BackendReport { backend: b.text(), packets: *c })
                        .collect(),
                    spread: Spread {
                        backends: counts.len(),
                        min: counts.iter().copied().min().unwrap_or(0),
                        max: counts.iter().copied().max().unwrap_or(0),
                        max_over_mean: if mean > 0.0 {
                            counts.iter().copied().max().unwrap_or(0) as f64 / mean
                        } else {
                            0.0
                        },
                    },
                }
            })
            .collect();
        destinations.sort_by(|a, b| a.destination.cmp(&b.destination));
        let mut top: Vec<(Addr, u64)> = self.sources.iter().map(|(a, c)| (*a, *c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        SinkReport {
            frames: self.frames,
            bytes: self.bytes,
            ours: self.ours,
            foreign: self.foreign,
            not_ip: self.not_ip,
            encapsulation: Encap::ALL
                .iter()
                .filter(|e| self.encaps[e.index()] > 0)
                .map(|e| (e.name().to_string(), self.encaps[e.index()]))
                .collect(),
            expected,
            received,
            lost,
            loss_ratio: if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
            late,
            late_ratio: if received > 0 { late as f64 / received as f64 } else { 0.0 },
            duplicates: streams.iter().map(|s| s.duplicates).sum(),
            flows_seen: streams.iter().map(|s| s.flows_seen).sum(),
            streams,
            latency_ns: LatencyReport::of(&self.latency),
            latency_invalid: self.latency_invalid,
            destinations,
            sources: SourcesReport {
                distinct: self.sources.len(),
                beyond_limit: self.other_sources,
                top: top.iter().take(10).map(|(a, c)| (addr_text(a), *c)).collect(),
            },
        }
    }
}

fn bracketed(addr: &Addr) -> String {
    let text = addr_text(addr);
    if text.contains(':') {
        format!("[{text}]")
    } else {
        text
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SinkReport {
    /// Every frame received, and their bytes (no FCS).
    pub frames: u64,
    pub bytes: u64,
    pub ours: u64,
    pub foreign: u64,
    pub not_ip: u64,
    pub encapsulation: Vec<(String, u64)>,
    /// Over all streams: `highest + 1`, received once, lost, late (reordered).
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub late: u64,
    pub late_ratio: f64,
    pub duplicates: u64,
    pub flows_seen: u64,
    pub streams: Vec<StreamReport>,
    pub latency_ns: LatencyReport,
    pub latency_invalid: u64,
    pub destinations: Vec<DestinationReport>,
    pub sources: SourcesReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamReport {
    pub stream: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub flows_seen: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DestinationReport {
    pub destination: String,
    pub protocol: String,
    pub packets: u64,
    pub backends: Vec<BackendReport>,
    pub spread: Spread,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub packets: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Spread {
    pub backends: usize,
    pub min: u64,
    pub max: u64,
    /// The busiest backend's share over an even share: 1.0 is a perfect spread.
    pub max_over_mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourcesReport {
    pub distinct: usize,
    pub beyond_limit: u64,
    pub top: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// (quantile, ns) pairs for a CDF plot.
    pub cdf: Vec<(f64, u64)>,
}

impl LatencyReport {
    fn of(h: &Histogram<u64>) -> LatencyReport {
        if h.is_empty() {
            return LatencyReport::default();
        }
        let quantiles = (0..100)
            .map(|i| i as f64 / 100.0)
            .chain([0.995, 0.999, 0.9995, 0.9999, 1.0])
            .map(|q| (q, h.value_at_quantile(q)))
            .collect();
        LatencyReport {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            cdf: quantiles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{FrameSource, Link};
    use crate::spec::RawSpec;
    use etherparse::{IpNumber, PacketBuilder};

    const GUE_PORT: u16 = 6080;

    fn source(flows: u64, stream: u32) -> FrameSource {
        let spec = toml::from_str::<RawSpec>(&format!(
            "destinations = [\"198.18.100.1:80\", \"198.18.100.2:80\"]\nflows = {flows}\n"
        ))
        .unwrap()
        .validate()
        .unwrap();
        let link = Link { src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0xfb, 0, 0, 0, 1] };
        FrameSource::new(&spec, link, stream, 0, 1)
    }

    fn frame(source: &FrameSource, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let len = source.write(seq, sent_ns, &mut buf);
        buf.truncate(len);
        buf
    }

    #[test]
    fn loss_reordering_duplicates_and_latency_on_a_known_sequence() {
        let a = source(10, 1);
        let b = source(10, 2);
        let mut account = Accounting::new(GUE_PORT);
        // Stream 1: 0..100 with 10..20 lost, 50 and 51 swapped, 60 twice.
        // Latencies: seq * 1000 ns + 1000.
        let mut order: Vec<u64> = (0..100).filter(|s| !(10..20).contains(s)).collect();
        let at50 = order.iter().position(|&s| s == 50).unwrap();
        order.swap(at50, at50 + 1);
        let at60 = order.iter().position(|&s| s == 60).unwrap();
        order.insert(at60, 60);
        for seq in order {
            let sent = 1_000_000 + seq;
            account.record(&frame(&a, seq, sent), sent + 1000 * (seq + 1));
        }
        // Stream 2: 0..50, every one, 500 ns each.
        for seq in 0..50 {
            account.record(&frame(&b, seq, 5_000), 5_500);
        }
        // Not ours: no magic, and not IP.
        let mut foreign = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 1, 1], [198, 18, 100, 1], 64)
            .udp(1, 2)
            .write(&mut foreign, b"hello")
            .unwrap();
        account.record(&foreign, 0);
        account.record(&[0u8; 20], 0);

        let report = account.report();
        assert_eq!((report.frames, report.ours, report.foreign, report.not_ip), (143, 141, 1, 1));
        let s1 = &report.streams[0];
        assert_eq!(
            (s1.expected, s1.received, s1.lost, s1.late, s1.duplicates),
            (100, 90, 10, 1, 1),
            "{s1:?}"
        );
        assert_eq!(s1.flows_seen, 10);
        let s2 = &report.streams[1];
        assert_eq!((s2.expected, s2.received, s2.lost, s2.late, s2.duplicates), (50, 50, 0, 0, 0), "{s2:?}");
        assert_eq!((report.lost, report.expected), (10, 150));
        assert!((report.loss_ratio - 10.0 / 150.0).abs() < 1e-12);
        // 50 samples of 500 ns, then 91 of 1000 * (seq + 1) ns for the seqs received.
        assert_eq!(report.latency_ns.count, 141);
        assert_eq!(report.latency_ns.min, 500);
        // The 71st of 141 samples: the 21st of the 1000 * (seq + 1) ones, seq 30. Values are
        // exact to 3 significant digits (hdrhistogram reports the top of the bucket).
        let p50 = report.latency_ns.p50;
        assert!((31_000..31_040).contains(&p50), "{:?}", report.latency_ns);
        let max = report.latency_ns.max;
        assert!((100_000..=100_100).contains(&max), "3 significant digits: {max}");
        assert_eq!(report.encapsulation, vec![("plain-v4".to_string(), 141)]);
        // Two destinations, one backend (the MAC) each.
        assert_eq!(report.destinations.len(), 2);
        assert_eq!(report.destinations[0].destination, "198.18.100.1:80");
        assert_eq!(report.destinations[0].backends[0].backend, "mac 02:fb:00:00:00:01");
    }

    #[test]
    fn a_gap_later_filled_is_late_not_lost_and_far_jumps_reset_the_window() {
        let a = source(4, 7);
        let mut account = Accounting::new(GUE_PORT);
        for seq in [0, 1, 5, 2, 3, 4, 6, 10_000, 6] {
            account.record(&frame(&a, seq, 0), 1);
        }
        let s = &account.report().streams[0];
        // 6 arrives twice, the second time far below the window: counted late, not duplicate.
        assert_eq!((s.expected, s.received, s.lost, s.late, s.duplicates), (10_001, 9, 9_992, 4, 0), "{s:?}");
    }

    #[test]
    fn backends_are_told_apart_by_outer_destination_under_tunnels() {
        let a = source(1, 3);
        let inner = frame(&a, 0, 0);
        let mut account = Accounting::new(GUE_PORT);
        for (seq, backend) in [(0u64, [198, 18, 2, 11]), (1, [198, 18, 2, 12]), (2, [198, 18, 2, 12])] {
            let inner = frame(&a, seq, 0);
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 3])
                .ipv4([198, 18, 2, 10], backend, 64)
                .write(&mut out, IpNumber::IPV4, &inner[14..])
                .unwrap();
            account.record(&out, 10);
        }
        let report = account.report();
        assert_eq!(report.encapsulation, vec![("ipip-4in4".to_string(), 3)]);
        let backends: Vec<(String, u64)> =
            report.destinations[0].backends.iter().map(|b| (b.backend.clone(), b.packets)).collect();
        assert_eq!(backends, vec![("198.18.2.11".to_string(), 1), ("198.18.2.12".to_string(), 2)]);
        assert_eq!((report.destinations[0].spread.min, report.destinations[0].spread.max), (1, 2));
        assert!(inner.len() > 14);
    }

    #[test]
    fn merging_threads_adds_up() {
        let a = source(2, 1);
        let (mut first, mut second) = (Accounting::new(GUE_PORT), Accounting::new(GUE_PORT));
        for seq in 0..10 {
            let target = if seq % 2 == 0 { &mut first } else { &mut second };
            target.record(&frame(&a, seq, 0), 100);
        }
        first.merge(&second);
        let s = &first.report().streams[0];
        assert_eq!((s.expected, s.received, s.lost, s.flows_seen), (10, 10, 0, 2));
    }
}
