//! The whole per-packet pipeline on one core, in memory: nanoseconds per packet and packets per
//! second of `Worker::process_batch_ahead` (as fwd's workers run it) fed by a replaying I/O, which
//! copies template frames into its buffers one poll ahead, as a NIC would have written them.
//!
//! The matrix (frames of 64 bytes, IPv6 74; the connection table sized twice the flow count, so
//! after warm-up nearly every packet is a hit: the bench prints the miss rate; Maglev tables of
//! 65 537 slots):
//! * `tcp4-ipip` (the main case) at 1, 10 000 and 1 000 000 flows, batches of 1, 32 and 64;
//! * every mode and family (`tcp4`/`udp4` with `l2`, `ipip`, `gue`; `tcp6` with `l2`, `ipip`
//!   6-in-6) at 10 000 flows, batch 32;
//! * `svc100x100`: 100 services of 100 backends each (IPv4 TCP ipip), flows spread over all;
//! * `io-only`: the replaying I/O with a no-op pipeline (every frame transmitted untouched), so a
//!   case's pipeline cost net of I/O is its figure minus the `io-only` one of the same I/O, flow
//!   count and batch;
//! * `tcp4-ipip-loadprefetch` at 10 000 and 1 000 000 flows, batch 32: the main case with the
//!   dataplane crate's portable prefetch (ordinary loads) instead of the CPU's prefetch
//!   instruction that fwd's workers use (`fwd_afxdp::CpuPrefetch`, as every other case here);
//! * `tcp4-ipip-noahead` at 10 000 and 1 000 000 flows, batch 32: the main case without
//!   classifying ahead (`Worker::process_batch` instead of `process_batch_ahead`: each batch
//!   classified in its own poll);
//! * `tcp4-ipip-cap1m` at 10 000 flows, batch 32: the main case in a connection table of fwd's
//!   default size (1 000 000 flows per core), where each flow has a bucket line of its own
//!   instead of sharing one with others, as in fwd's workers;
//! * `naive-l2`, `naive-ipip`: the peer, the same placement done the obvious way in the same run:
//!   `etherparse::SlicedPacket::from_ethernet`, a std `HashMap` (SipHash) for the service and one
//!   for the flow, then a MAC rewrite (and for ipip an outer IPv4 header built with etherparse).
//!
//! Two I/Os: `replay` is the crate's `ReplayIo`, which keeps every template in its own 2.3 KiB
//! buffer, so a million templates would take 2.3 GB; `compact` (below) is the same loop with the
//! templates packed 80 bytes apart, used for the 1 000 000-flow cases and, so that flow counts
//! compare like with like, for the main case at every flow count.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), as in the `conntrack`
//! bench: the build machines are shared, and wall time would charge us for others' work.
//!
//! Run: `cargo bench --bench pipeline -- --measurement-time 2 --warm-up-time 1` (about 3 minutes).

mod common;
use common::iter_cpu;

use arrayvec::ArrayVec;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{IpNumber, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use fwd_afxdp::CpuPrefetch;
use fwd_dataplane::conntrack::Timeouts;
use fwd_dataplane::counters::DropReason;
use fwd_dataplane::flow::{FlowKey, L4Proto};
use fwd_dataplane::frame::{Frame, HEADROOM};
use fwd_dataplane::io::{
    Ahead as AheadFrames, Batch, PacketIo, ReplayIo, TwoSetRotation, Verdict, BUF_SIZE, MAX_BATCH,
};
use fwd_dataplane::maglev::{BackendKey, MaglevMember, MaglevTable, DEFAULT_TABLE_SIZE};
use fwd_dataplane::pipeline::{ClassifyAhead, Worker, WorkerConfig};
use fwd_dataplane::prefetch::{LoadPrefetch, Prefetch};
use fwd_dataplane::snapshot::{
    Backend, BackendState, ForwardMode, FragmentPolicy, LocalInfo, Service, ServiceKey, Snapshot, SourceRange,
};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// fwd's allocator (huge pages behind the connection table), so the bench measures what fwd's
/// workers run.
#[global_allocator]
static ALLOC: fwd_afxdp::HugePageAlloc = fwd_afxdp::HugePageAlloc;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// The batch clock: constant, every flow stays live.
const NOW_MS: u64 = 1_000;
const TIMEOUTS: Timeouts =
    Timeouts { tcp_established_ms: 3_600_000, tcp_closing_ms: 10_000, udp_ms: 3_600_000 };
const BACKENDS_PER_SERVICE: usize = 16;
const FLOW_COUNTS: [usize; 3] = [1, 10_000, 1_000_000];
const BATCHES: [usize; 3] = [1, 32, 64];
const MANY_SERVICES: usize = 100;
const MANY_BACKENDS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Traffic

/// Family and transport of a case's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Tcp4,
    Udp4,
    Tcp6,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Tcp4 => "tcp4",
            Traffic::Udp4 => "udp4",
            Traffic::Tcp6 => "tcp6",
        }
    }

    fn proto(self) -> L4Proto {
        match self {
            Traffic::Udp4 => L4Proto::Udp,
            Traffic::Tcp4 | Traffic::Tcp6 => L4Proto::Tcp,
        }
    }

    fn port(self) -> u16 {
        match self.proto() {
            L4Proto::Tcp => 80,
            L4Proto::Udp => 53,
        }
    }
}

/// Flow `i`'s client address and source port: distinct 5-tuples for `i` up to 2^20.
fn client(i: usize, v6: bool) -> (IpAddr, u16) {
    let port = 1024 + (i >> 16) as u16;
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::from(0xfd00_0018_0000_0000_0000_0000_0000_0000u128 | (i & 0xffff) as u128)),
            port,
        )
    } else {
        (IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)), port)
    }
}

/// A 64-byte frame (74 for IPv6 TCP, its minimum) of flow `i` to `vip`; TCP segments carry ACK.
fn frame(traffic: Traffic, vip: IpAddr, i: usize, out: &mut Vec<u8>) {
    out.clear();
    let (src, sport) = client(i, traffic == Traffic::Tcp6);
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, OUR_MAC);
    let written = match (traffic, src, vip) {
        (Traffic::Tcp4, IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.ipv4(s.octets(), d.octets(), 63).tcp(sport, 80, 1, 1000).ack(1).write(out, &[0x42; 64 - 54])
        }
        (Traffic::Udp4, IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.ipv4(s.octets(), d.octets(), 63).udp(sport, 53).write(out, &[0x42; 64 - 42])
        }
        (Traffic::Tcp6, IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.ipv6(s.octets(), d.octets(), 63).tcp(sport, 80, 1, 1000).ack(1).write(out, &[])
        }
        _ => panic!("{traffic:?} to {vip}: family mismatch"),
    };
    written.expect("frame fits");
}

/// Templates of `flows` flows, flow `i` to `vips[i % vips.len()]`.
fn templates(traffic: Traffic, vips: &[IpAddr], flows: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::with_capacity(128);
    (0..flows)
        .map(|i| {
            frame(traffic, vips[i % vips.len()], i, &mut buf);
            buf.clone()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// One service to build.
struct ServiceSpec {
    vip: IpAddr,
    proto: L4Proto,
    port: u16,
    mode: ForwardMode,
    backends: Vec<IpAddr>,
}

/// Builds a snapshot as control does: members in key order, Maglev tables of 65 537 slots.
fn build_snapshot(specs: &[ServiceSpec]) -> Snapshot {
    let mut services = Vec::new();
    let mut backends: Vec<Backend> = Vec::new();
    for (si, s) in specs.iter().enumerate() {
        let mut sorted = s.backends.clone();
        sorted.sort_by_key(|a| BackendKey::new(*a, None));
        let mut members = Vec::new();
        let mut maglev = Vec::new();
        for (bi, addr) in sorted.into_iter().enumerate() {
            let idx = backends.len();
            backends.push(Backend {
                addr,
                port: None,
                service: si as u32,
                tag: 1 + idx as u32,
                state: BackendState::Up,
                mode: s.mode,
                next_hop_mac: Some(if s.mode == ForwardMode::L2 {
                    [0x02, 0, 0, 0x02, si as u8, bi as u8]
                } else {
                    GATEWAY_MAC
                }),
            });
            members.push(idx as u32);
            maglev.push(MaglevMember { key: BackendKey::new(addr, None), weight: 1 });
        }
        services.push(Service {
            key: ServiceKey { vip: s.vip, proto: s.proto, port: Some(s.port) },
            mode: s.mode,
            hash_src_port: true,
            fragments: FragmentPolicy::Hash3Tuple,
            members,
            table: Arc::new(MaglevTable::build(&maglev, DEFAULT_TABLE_SIZE).expect("maglev table")),
            fallback: None,
        });
    }
    let local = LocalInfo {
        mac: OUR_MAC,
        mtu: 1500,
        gue_port: 6080,
        tunnel_src_v4: Some(SourceRange { base: Ipv4Addr::new(198, 19, 255, 0), count: 8 }),
        tunnel_src_v6: Some(SourceRange { base: "fd00:19:ff::".parse().expect("address"), count: 8 }),
        answer_echo: true,
        icmp_rate_per_sec: 1000,
    };
    Snapshot::new(1, local, services, backends)
}

/// The VIP of a (traffic, mode) case in the single-service snapshot.
fn vip_of(traffic: Traffic, mode: ForwardMode) -> IpAddr {
    let n = match mode {
        ForwardMode::L2 => 1,
        ForwardMode::Ipip => 2,
        ForwardMode::Gue => 3,
    };
    match traffic {
        Traffic::Tcp4 | Traffic::Udp4 => IpAddr::V4(Ipv4Addr::new(198, 19, 0, n)),
        Traffic::Tcp6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, u16::from(n))),
    }
}

/// Every case's service (16 backends each; same family as the clients, so ipip is 4-in-4/6-in-6).
fn modes_snapshot() -> Snapshot {
    let mut specs = Vec::new();
    let cases = [
        (Traffic::Tcp4, ForwardMode::L2),
        (Traffic::Tcp4, ForwardMode::Ipip),
        (Traffic::Tcp4, ForwardMode::Gue),
        (Traffic::Udp4, ForwardMode::L2),
        (Traffic::Udp4, ForwardMode::Ipip),
        (Traffic::Udp4, ForwardMode::Gue),
        (Traffic::Tcp6, ForwardMode::L2),
        (Traffic::Tcp6, ForwardMode::Ipip),
    ];
    for (si, (traffic, mode)) in cases.into_iter().enumerate() {
        let backends = (0..BACKENDS_PER_SERVICE)
            .map(|b| match traffic {
                Traffic::Tcp6 => {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 2 + si as u16, 0, 0, 0, 0, 1 + b as u16))
                }
                _ => IpAddr::V4(Ipv4Addr::new(198, 19, 2 + si as u8, 1 + b as u8)),
            })
            .collect();
        specs.push(ServiceSpec {
            vip: vip_of(traffic, mode),
            proto: traffic.proto(),
            port: traffic.port(),
            mode,
            backends,
        });
    }
    build_snapshot(&specs)
}

/// 100 IPv4 TCP ipip services of 100 backends each.
fn many_services() -> (Snapshot, Vec<IpAddr>) {
    let specs: Vec<ServiceSpec> = (0..MANY_SERVICES)
        .map(|s| ServiceSpec {
            vip: IpAddr::V4(Ipv4Addr::new(198, 19, 1, 1 + s as u8)),
            proto: L4Proto::Tcp,
            port: 80,
            mode: ForwardMode::Ipip,
            backends: (0..MANY_BACKENDS)
                .map(|b| IpAddr::V4(Ipv4Addr::new(198, 19, 100 + s as u8, 1 + b as u8)))
                .collect(),
        })
        .collect();
    let vips = specs.iter().map(|s| s.vip).collect();
    (build_snapshot(&specs), vips)
}

// ---------------------------------------------------------------------------------------------
// I/O

/// Stride of a template in [`CompactReplay`]: every frame here is at most 74 bytes.
const TEMPLATE_STRIDE: usize = 80;

/// `ReplayIo`'s loop with the templates packed [`TEMPLATE_STRIDE`] bytes apart: a million
/// templates take 80 MB instead of 2.3 GB. Like `ReplayIo`, it writes each batch one poll early
/// into one of two buffer sets and shows it as the frames ahead of the batch before; each poll
/// hands the batch to `process`, reads back where each frame now starts (as a transmit ring
/// would) and counts the verdicts.
struct CompactReplay {
    templates: Vec<u8>,
    lens: Vec<u8>,
    sets: [Vec<Box<[u8]>>; 2],
    /// The frame length in each buffer of each set.
    set_lens: [[usize; MAX_BATCH]; 2],
    rotation: TwoSetRotation,
    tx: u64,
    passed: u64,
    dropped: u64,
}

impl CompactReplay {
    fn new(frames: &[Vec<u8>]) -> Self {
        let mut templates = vec![0u8; frames.len() * TEMPLATE_STRIDE];
        let mut lens = Vec::with_capacity(frames.len());
        for (f, slot) in frames.iter().zip(templates.chunks_exact_mut(TEMPLATE_STRIDE)) {
            slot[..f.len()].copy_from_slice(f);
            lens.push(u8::try_from(f.len()).expect("template longer than 255 bytes"));
        }
        let set = || (0..MAX_BATCH).map(|_| vec![0u8; BUF_SIZE].into_boxed_slice()).collect();
        CompactReplay {
            rotation: TwoSetRotation::new(lens.len()).expect("at least one template"),
            templates,
            lens,
            sets: [set(), set()],
            set_lens: [[0; MAX_BATCH]; 2],
            tx: 0,
            passed: 0,
            dropped: 0,
        }
    }
}

impl PacketIo for CompactReplay {
    fn poll_ahead(
        &mut self,
        max: usize,
        process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &AheadFrames<'_>),
    ) -> usize {
        let n = max.clamp(1, MAX_BATCH);
        let (templates, lens, sets, set_lens) =
            (&self.templates, &self.lens, &mut self.sets, &mut self.set_lens);
        let batch_set = self.rotation.advance(n, |set, slot, t| {
            let len = usize::from(lens[t]);
            sets[set][slot][HEADROOM..HEADROOM + len]
                .copy_from_slice(&templates[t * TEMPLATE_STRIDE..t * TEMPLATE_STRIDE + len]);
            set_lens[set][slot] = len;
        });
        let (batch_lens, ahead_lens) = (&self.set_lens[batch_set], &self.set_lens[1 - batch_set]);
        let [first, second] = &mut self.sets;
        let (batch_bufs, ahead_bufs) = if batch_set == 0 { (first, &*second) } else { (second, &*first) };
        let mut batch: Batch<'_> = ArrayVec::new();
        for (buf, &len) in batch_bufs[..n].iter_mut().zip(batch_lens) {
            batch.push(Frame::new(buf, HEADROOM, len).expect("template fits a buffer"));
        }
        let ahead: AheadFrames<'_> = ahead_bufs[..n]
            .iter()
            .zip(ahead_lens)
            .map(|(buf, &len)| &buf[HEADROOM..HEADROOM + len])
            .collect();
        let mut verdicts = [Verdict::Drop(DropReason::Malformed); MAX_BATCH];
        process(&mut batch, &mut verdicts[..n], &ahead);
        let mut spans = 0usize;
        for f in &batch {
            spans = spans.wrapping_add(f.start() ^ f.len());
        }
        black_box(spans);
        for v in &verdicts[..n] {
            match v {
                Verdict::Tx => self.tx += 1,
                Verdict::Pass => self.passed += 1,
                Verdict::Drop(_) => self.dropped += 1,
            }
        }
        n
    }
}

/// What the benches need of either I/O besides polling.
trait Replay: PacketIo {
    fn name(&self) -> &'static str;
    /// (transmitted, passed, dropped) so far.
    fn totals(&self) -> (u64, u64, u64);
}

impl Replay for ReplayIo {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn totals(&self) -> (u64, u64, u64) {
        (self.tx, self.passed, self.dropped)
    }
}

impl Replay for CompactReplay {
    fn name(&self) -> &'static str {
        "compact"
    }

    fn totals(&self) -> (u64, u64, u64) {
        (self.tx, self.passed, self.dropped)
    }
}

/// The process step of the `io-only` cases: every frame out untouched.
fn transmit_all(_batch: &mut Batch<'_>, verdicts: &mut [Verdict]) {
    verdicts.fill(Verdict::Tx);
}

// ---------------------------------------------------------------------------------------------
// The naive peer

/// The obvious implementation: etherparse's whole-packet slicer, std `HashMap`s, MAC rewrite.
struct Naive {
    services: HashMap<([u8; 16], u8, u16), usize>,
    /// Per service: (address, next-hop MAC) of its backends.
    backends: Vec<Vec<(IpAddr, [u8; 6])>>,
    flows: HashMap<FlowKey, u32>,
    encap: bool,
}

impl Naive {
    fn new(snap: &Snapshot, flows: usize, encap: bool) -> Self {
        let mut services = HashMap::new();
        let mut backends = Vec::new();
        for (i, s) in snap.services.iter().enumerate() {
            let vip = fwd_dataplane::flow::ip_to_16(s.key.vip);
            services.insert((vip, s.key.proto.number(), s.key.port.unwrap_or(0)), i);
            backends.push(
                s.members
                    .iter()
                    .map(|&m| {
                        let b = &snap.backends[m as usize];
                        (b.addr, b.next_hop_mac.unwrap_or(GATEWAY_MAC))
                    })
                    .collect(),
            );
        }
        Naive { services, backends, flows: HashMap::with_capacity(flows), encap }
    }

    fn process(&mut self, batch: &mut Batch<'_>, verdicts: &mut [Verdict]) {
        for (frame, verdict) in batch.iter_mut().zip(verdicts.iter_mut()) {
            *verdict = self.one(frame);
        }
    }

    fn one(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let (src, dst, proto, ip_len, sport, dport) = match slice(frame.data()) {
            Ok(fields) => fields,
            Err(verdict) => return verdict,
        };
        let Some(&service) = self.services.get(&(dst, proto, dport)) else {
            return Verdict::Pass;
        };
        let backends = &self.backends[service];
        let key = FlowKey::v6(src, dst, proto, sport, dport);
        let next = self.flows.len() as u32;
        let backend = *self.flows.entry(key).or_insert(next % backends.len() as u32);
        let (addr, mac) = backends[backend as usize];
        if self.encap {
            let IpAddr::V4(outer_dst) = addr else {
                return Verdict::Drop(DropReason::UnsupportedProtocol);
            };
            let Ok(mut outer) =
                Ipv4Header::new(ip_len, 64, IpNumber::IPV4, [198, 19, 255, 0], outer_dst.octets())
            else {
                return Verdict::Drop(DropReason::TooBig);
            };
            outer.header_checksum = outer.calc_header_checksum();
            let Some(data) = frame.push_front(20) else {
                return Verdict::Drop(DropReason::TooBig);
            };
            data.copy_within(20..34, 0);
            data[14..34].copy_from_slice(&outer.to_bytes());
        }
        let data = frame.data_mut();
        data[0..6].copy_from_slice(&mac);
        data[6..12].copy_from_slice(&OUR_MAC);
        Verdict::Tx
    }
}

/// (source, destination, protocol, IP length, source port, destination port) of a TCP or UDP
/// packet, with etherparse's whole-packet slicer.
type Fields = ([u8; 16], [u8; 16], u8, u16, u16, u16);

fn slice(data: &[u8]) -> Result<Fields, Verdict> {
    let packet = SlicedPacket::from_ethernet(data).map_err(|_| Verdict::Drop(DropReason::Malformed))?;
    let (src, dst, proto, ip_len) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                Ipv4Addr::from(h.source()).to_ipv6_mapped().octets(),
                Ipv4Addr::from(h.destination()).to_ipv6_mapped().octets(),
                h.protocol().0,
                h.total_len(),
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (h.source(), h.destination(), h.next_header().0, 40 + h.payload_length())
        }
        _ => return Err(Verdict::Pass),
    };
    let (sport, dport) = match &packet.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => return Err(Verdict::Drop(DropReason::UnsupportedProtocol)),
    };
    Ok((src, dst, proto, ip_len, sport, dport))
}

// ---------------------------------------------------------------------------------------------
// Benches

/// Polls until every template has been through once, then checks that in a second round (almost)
/// every packet hit the connection table and every frame was transmitted.
fn warm_up<P: Prefetch>(
    io: &mut dyn Replay,
    worker: &mut Worker<P>,
    snap: &Snapshot,
    flows: usize,
    label: &str,
) {
    let rounds = flows.div_ceil(MAX_BATCH);
    let mut process = |b: &mut Batch<'_>, v: &mut [Verdict]| worker.process_batch(snap, b, v, NOW_MS);
    for _ in 0..rounds {
        io.poll(MAX_BATCH, &mut process);
    }
    let before = (worker.conns().stats(), io.totals());
    let mut process = |b: &mut Batch<'_>, v: &mut [Verdict]| worker.process_batch(snap, b, v, NOW_MS);
    for _ in 0..rounds {
        io.poll(MAX_BATCH, &mut process);
    }
    let (stats, totals) = (worker.conns().stats(), io.totals());
    let packets = (rounds * MAX_BATCH) as u64;
    let misses = stats.misses - before.0.misses;
    assert_eq!(stats.hits - before.0.hits + misses, packets, "{label}: one lookup per packet");
    // A 4-slot bucket that drew more than 4 of the flows keeps evicting them (LRU, cycled in
    // order): at 8 slots per flow that is a few per ten thousand, and their packets are
    // placed by Maglev and re-inserted, as a real worker's would be.
    eprintln!(
        "{label}: connection table capacity {}, {misses} misses in {packets} packets ({:.3}%)",
        worker.conns().capacity(),
        100.0 * misses as f64 / packets as f64
    );
    assert!(misses * 50 <= packets, "{label}: under 98% connection-table hits");
    assert_eq!(totals.0 - before.1 .0, packets, "{label}: every frame must be transmitted");
}

/// A warmed-up worker for `templates` (connection table twice the flow count; in huge pages
/// through the global allocator, as in fwd).
fn warm_worker<P: Prefetch>(snap: &Snapshot, frames: &[Vec<u8>], label: &str) -> Worker<P> {
    warm_worker_with_capacity(snap, frames, 2 * frames.len(), ClassifyAhead::default(), label)
}

/// [`warm_worker`] with a connection table made for `conn_capacity` flows.
fn warm_worker_with_capacity<P: Prefetch>(
    snap: &Snapshot,
    frames: &[Vec<u8>],
    conn_capacity: usize,
    classify_ahead: ClassifyAhead,
    label: &str,
) -> Worker<P> {
    let before = fwd_afxdp::memory::anon_huge_page_bytes().unwrap_or(0);
    let mut worker =
        Worker::with_prefetch(WorkerConfig { conn_capacity, timeouts: TIMEOUTS, classify_ahead });
    let after = fwd_afxdp::memory::anon_huge_page_bytes().unwrap_or(0);
    eprintln!(
        "{label}: connection table {} MiB, {} MiB of it in huge pages",
        worker.conns().memory_bytes() >> 20,
        after.saturating_sub(before) >> 20
    );
    let mut io = CompactReplay::new(frames);
    warm_up(&mut io, &mut worker, snap, frames.len(), label);
    worker
}

/// Whether the pipeline sees the frames the I/O shows ahead of each batch, as fwd's workers do.
#[derive(Clone, Copy)]
enum Ahead {
    Classify,
    Ignore,
}

/// Benches the pipeline at `batch` through `io`, checking afterwards that nothing was dropped.
fn bench_pipeline<P: Prefetch>(
    c: &mut Criterion,
    id: &str,
    io: &mut dyn Replay,
    worker: &mut Worker<P>,
    snap: &Snapshot,
    batch: usize,
    ahead: Ahead,
) {
    let id = format!("{id}/{}/b{batch}", io.name());
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(batch as u64));
    let mut process = |b: &mut Batch<'_>, v: &mut [Verdict], a: &AheadFrames<'_>| match ahead {
        Ahead::Classify => worker.process_batch_ahead(snap, b, v, a, NOW_MS),
        Ahead::Ignore => worker.process_batch(snap, b, v, NOW_MS),
    };
    group.bench_function(&id, |b| {
        iter_cpu(b, || {
            black_box(io.poll_ahead(batch, &mut process));
        })
    });
    group.finish();
    let (_, passed, dropped) = io.totals();
    assert_eq!((passed, dropped), (0, 0), "{id}: frames passed or dropped");
}

fn bench_io_only(c: &mut Criterion, id: &str, io: &mut dyn Replay, batch: usize) {
    let id = format!("{id}/{}/b{batch}", io.name());
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(&id, |b| {
        iter_cpu(b, || {
            black_box(io.poll(batch, &mut transmit_all));
        })
    });
    group.finish();
}

fn bench_naive(c: &mut Criterion, id: &str, io: &mut dyn Replay, naive: &mut Naive, batch: usize) {
    let rounds = naive.flows.capacity().div_ceil(MAX_BATCH) + 1;
    let mut process = |b: &mut Batch<'_>, v: &mut [Verdict]| naive.process(b, v);
    for _ in 0..rounds {
        io.poll(MAX_BATCH, &mut process);
    }
    let id = format!("{id}/{}/b{batch}", io.name());
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(&id, |b| {
        iter_cpu(b, || {
            black_box(io.poll(batch, &mut process));
        })
    });
    group.finish();
    let (_, passed, dropped) = io.totals();
    assert_eq!((passed, dropped), (0, 0), "{id}: frames passed or dropped");
}

/// fwd's default connection-table capacity per core (`capacity_per_core`).
const FWD_CONN_CAPACITY: usize = 1_000_000;

/// ReplayIo holds a 2.3 KiB buffer per template: use it up to this many flows.
const REPLAY_IO_MAX_FLOWS: usize = 10_000;

fn benches(c: &mut Criterion) {
    let snap = modes_snapshot();

    // The main case: IPv4 TCP ipip over every flow count and batch, through both I/Os, with the
    // I/O alone and the naive peer beside it.
    let main_vip = vip_of(Traffic::Tcp4, ForwardMode::Ipip);
    for flows in FLOW_COUNTS {
        let frames = templates(Traffic::Tcp4, &[main_vip], flows);
        let label = format!("tcp4-ipip/f{flows}");
        let mut worker = warm_worker::<CpuPrefetch>(&snap, &frames, &label);
        let mut compact = CompactReplay::new(&frames);
        let mut replay =
            (flows <= REPLAY_IO_MAX_FLOWS).then(|| ReplayIo::new(&frames).expect("templates fit"));
        for batch in BATCHES {
            bench_pipeline(c, &label, &mut compact, &mut worker, &snap, batch, Ahead::Classify);
            bench_io_only(c, &format!("io-only/f{flows}"), &mut compact, batch);
            if let Some(replay) = replay.as_mut() {
                bench_pipeline(c, &label, replay, &mut worker, &snap, batch, Ahead::Classify);
                bench_io_only(c, &format!("io-only/f{flows}"), replay, batch);
            }
        }
        if flows >= 10_000 {
            // The same worker with the dataplane crate's portable prefetch (ordinary loads).
            drop(worker);
            let label = format!("tcp4-ipip-loadprefetch/f{flows}");
            let mut loads = warm_worker::<LoadPrefetch>(&snap, &frames, &label);
            bench_pipeline(c, &label, &mut compact, &mut loads, &snap, 32, Ahead::Classify);
            drop(loads);
            // The main case's worker without classifying ahead: each batch alone, as before.
            let label = format!("tcp4-ipip-noahead/f{flows}");
            let mut alone = warm_worker::<CpuPrefetch>(&snap, &frames, &label);
            bench_pipeline(c, &label, &mut compact, &mut alone, &snap, 32, Ahead::Ignore);
            drop(alone);
            if flows < FWD_CONN_CAPACITY {
                // The flows in a table of fwd's default size, as fwd's workers hold them.
                let label = format!("tcp4-ipip-cap1m/f{flows}");
                let mut sparse = warm_worker_with_capacity::<CpuPrefetch>(
                    &snap,
                    &frames,
                    FWD_CONN_CAPACITY,
                    ClassifyAhead::default(),
                    &label,
                );
                bench_pipeline(c, &label, &mut compact, &mut sparse, &snap, 32, Ahead::Classify);
                drop(sparse);
                // Its peer: classifying ahead only while the table's occupied entries outgrow
                // the caches, the best choice in memory (where this table stays in the caches
                // between batches), not under load (see ClassifyAhead).
                let label = format!("tcp4-ipip-cap1m-ahead-if-outgrown/f{flows}");
                let mut cached = warm_worker_with_capacity::<CpuPrefetch>(
                    &snap,
                    &frames,
                    FWD_CONN_CAPACITY,
                    ClassifyAhead::WhenTableOutgrowsCache,
                    &label,
                );
                bench_pipeline(c, &label, &mut compact, &mut cached, &snap, 32, Ahead::Classify);
                drop(cached);
            }
            let mut naive = Naive::new(&snap, flows, true);
            bench_naive(c, &format!("naive-ipip/f{flows}"), &mut compact, &mut naive, 32);
            if let Some(replay) = replay.as_mut() {
                bench_naive(c, &format!("naive-ipip/f{flows}"), replay, &mut naive, 32);
            }
        }
    }

    // Every mode and family at 10 000 flows, batch 32, through ReplayIo.
    let flows = 10_000;
    for (traffic, mode) in [
        (Traffic::Tcp4, ForwardMode::L2),
        (Traffic::Tcp4, ForwardMode::Gue),
        (Traffic::Udp4, ForwardMode::L2),
        (Traffic::Udp4, ForwardMode::Ipip),
        (Traffic::Udp4, ForwardMode::Gue),
        (Traffic::Tcp6, ForwardMode::L2),
        (Traffic::Tcp6, ForwardMode::Ipip),
    ] {
        let frames = templates(traffic, &[vip_of(traffic, mode)], flows);
        let label = format!("{}-{}/f{flows}", traffic.name(), mode.name());
        let mut worker = warm_worker::<CpuPrefetch>(&snap, &frames, &label);
        let mut replay = ReplayIo::new(&frames).expect("templates fit");
        bench_pipeline(c, &label, &mut replay, &mut worker, &snap, 32, Ahead::Classify);
        if (traffic, mode) == (Traffic::Tcp4, ForwardMode::L2) {
            let mut naive = Naive::new(&snap, flows, false);
            bench_naive(c, &format!("naive-l2/f{flows}"), &mut replay, &mut naive, 32);
        }
    }
    drop(snap);

    // 100 services x 100 backends, flows spread over every service.
    let (many, vips) = many_services();
    for flows in [10_000, 1_000_000] {
        let frames = templates(Traffic::Tcp4, &vips, flows);
        let label = format!("svc100x100-tcp4-ipip/f{flows}");
        let mut worker = warm_worker::<CpuPrefetch>(&many, &frames, &label);
        if flows <= REPLAY_IO_MAX_FLOWS {
            let mut replay = ReplayIo::new(&frames).expect("templates fit");
            bench_pipeline(c, &label, &mut replay, &mut worker, &many, 32, Ahead::Classify);
        } else {
            let mut compact = CompactReplay::new(&frames);
            bench_pipeline(c, &label, &mut compact, &mut worker, &many, 32, Ahead::Classify);
        }
    }
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
