//! The per-packet pipeline: parse, classify, track, pick, rewrite, for one batch at a time.
//!
//! A [`Worker`] owns everything it writes (connection table, counters, ICMP budget) and reads one
//! [`Snapshot`] per batch. A batch runs in passes over all its frames, as DPDK's and VPP's loops
//! do: prefetch the frames' headers; classify (parse, find the service, compute the flow hash)
//! and touch every frame's connection-table bucket line, in two halves; for a flow the table
//! lacks, touch its Maglev slot; place every flow (tracked backend or Maglev pick); rewrite. The
//! frames' and the table's cache misses thus overlap across the batch instead of being waited for
//! one frame at a time: at a million flows the table's prefetch passes measured a third less time
//! per packet than touching the bucket and placing the flow inside the classify and rewrite loops
//! (`benches/pipeline.rs`). When the I/O shows the frames received behind the batch, those frames
//! are classified (and their buckets prefetched) while the batch's bucket lines load, and the next
//! batch starts from that work ([`Worker::process_batch_ahead`], as [`ClassifyAhead`] says). Each
//! frame's state between the passes lives in a per-worker [`Slot`] that every pass reads and
//! writes in place. Every frame ends with exactly one [`Verdict`]; every
//! drop is counted under its [`DropReason`].
//!
//! Placement rules, in order:
//! 1. Not IPv4/IPv6, or not addressed to a VIP: pass to the kernel.
//! 2. Echo requests to a VIP are answered here (if configured); other ICMP errors to a VIP quote a
//!    flow that one of our backends sent (a "too big" from a router on the way to the client):
//!    they go to the backend of that flow, found by reversing the quoted tuple.
//! 3. Fragments go to the one service of their (VIP, protocol), hashed on the 3-tuple, or are
//!    dropped, as the service's fragment policy says.
//! 4. TCP/UDP: the service of (VIP, protocol, port); a tracked flow keeps its backend while that
//!    backend is still in the service and not down (drained backends keep their flows, but a new
//!    SYN on a drained backend's tuple is a new connection and is not theirs); otherwise
//!    the Maglev table (or the fallback's, if no backend is up) picks one and the flow is tracked.

use std::marker::PhantomData;

use crate::conntrack::{is_new_syn, ConnTable, ConnValue, Timeouts};
use crate::counters::{DropReason, WorkerCounters};
use crate::flow::FlowKey;
use crate::frame::Frame;
use crate::hash::flow_hash;
use crate::icmp;
use crate::io::{Ahead, Batch, Verdict, MAX_BATCH};
use crate::parse::{parse, parse_common_into, CommonFacts, L4Meta, ParsedFrame, COMMON_HEADERS_SPAN};
use crate::prefetch::{LoadPrefetch, Prefetch};
use crate::rewrite::{encap_gue, encap_ipip, encap_overhead, rewrite_l2, Macs};
use crate::snapshot::{BackendIdx, BackendState, ForwardMode, FragmentPolicy, Snapshot, VipMatch};

/// Sizing of a worker's state, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub conn_capacity: usize,
    pub timeouts: Timeouts,
    pub classify_ahead: ClassifyAhead,
}

/// When [`Worker::process_batch_ahead`] classifies the frames behind its batch (and fetches what
/// a miss's placement reads in a pass of its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClassifyAhead {
    /// On every batch: fwd's workers. Under load the kernel's receive and transmit work runs
    /// between batches on the worker's core and evicts the connection table from its caches,
    /// however few flows it holds, so there is always a memory wait to fill. Measured in the
    /// harness at 10 000 flows (stop 26, A/B in one run): the pipeline took 41-63 ns per frame
    /// with it and 84-85 without (fwd / ceiling 0.91 against 0.78), with a table of a million
    /// entries; with a table of 32 768 entries, judged cache-resident by its size, 78-83.
    #[default]
    Always,
    /// While the table's occupied entries outgrow the caches ([`ConnTable::outgrows_cache`]):
    /// for a pipeline whose frames and table stay in the caches between batches, as in the
    /// in-memory benchmark, where at 10 000 flows classifying ahead costs 5%.
    WhenTableOutgrowsCache,
}

pub use crate::counters::BackendCounters;

/// The last complete count of live connection-table entries per backend, and the one in progress.
#[derive(Debug, Default)]
struct FlowCensus {
    cursor: usize,
    partial: Vec<u64>,
    complete: Vec<u64>,
    sweeps: u64,
}

/// A token bucket refilled from the batch clock: generated ICMP errors per worker and second.
/// It holds at most one second's worth and starts full.
#[derive(Debug)]
struct IcmpBudget {
    tokens: u32,
    last_refill_ms: u64,
    primed: bool,
}

impl IcmpBudget {
    fn take(&mut self, rate_per_sec: u32, now_ms: u64) -> bool {
        if !self.primed {
            self.primed = true;
            self.tokens = rate_per_sec;
            self.last_refill_ms = now_ms;
        }
        let elapsed = now_ms.saturating_sub(self.last_refill_ms);
        if elapsed > 0 {
            let add = (elapsed.saturating_mul(u64::from(rate_per_sec)) / 1000).min(u64::from(u32::MAX));
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add as u32).min(rate_per_sec);
                self.last_refill_ms = now_ms;
            }
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// What the later passes need to know of a parsed frame. A [`ParsedFrame`] is about 130 bytes;
/// carrying it whole through the passes costs copies of it per packet.
#[derive(Clone, Copy, Debug, Default)]
struct FrameFacts {
    l3_offset: u32,
    l4_offset: u32,
    /// IP packet length (IPv4 total length, IPv6 40 + payload length).
    packet_len: u32,
    is_v6: bool,
    dont_fragment: bool,
    /// The frame is itself an ICMP error (never answered with another).
    icmp_error: bool,
}

impl FrameFacts {
    #[inline]
    fn of(p: &ParsedFrame) -> Self {
        FrameFacts {
            l3_offset: p.l3_offset as u32,
            l4_offset: p.ip.l4_offset as u32,
            packet_len: p.ip.packet_len as u32,
            is_v6: p.ip.is_v6,
            dont_fragment: p.ip.dont_fragment,
            icmp_error: matches!(p.l4, L4Meta::IcmpError { .. }),
        }
    }

    #[inline(always)]
    fn of_common(c: &CommonFacts) -> Self {
        FrameFacts {
            l3_offset: c.l3_offset,
            l4_offset: c.l4_offset,
            packet_len: c.packet_len,
            is_v6: c.is_v6,
            dont_fragment: c.dont_fragment,
            icmp_error: false,
        }
    }
}

/// What a frame of the batch still needs after the first pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Todo {
    /// Its verdict is written.
    #[default]
    Done,
    /// An echo request to a VIP, to answer.
    Echo,
    /// Forward along the flow in the slot; track the flow if it is new.
    Forward,
    /// Forward along the flow in the slot if it is tracked or Maglev places it, but never track
    /// it (ICMP errors, which only follow flows, and hashed fragments).
    Follow,
}

/// One frame's state between the passes of a batch. The worker keeps [`MAX_BATCH`] of them and
/// each pass writes its fields in place: carrying per-frame values from pass to pass in
/// collections of enums (about 100 bytes each, moved in and out) cost a quarter of the pipeline.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    todo: Todo,
    facts: FrameFacts,
    /// The flow as the service hashes it (source port zeroed if the service ignores it).
    key: FlowKey,
    hash: u64,
    service: u32,
    tcp_flags: Option<u8>,
    /// Set by the placement pass.
    backend: BackendIdx,
}

/// One worker's pipeline and state. `P` is how it prefetches connection-table lines: the
/// portable [`LoadPrefetch`] unless the owner has the CPU's instruction (see [`crate::prefetch`]).
#[derive(Debug)]
pub struct Worker<P = LoadPrefetch> {
    conns: ConnTable,
    counters: WorkerCounters,
    backend_counters: Vec<BackendCounters>,
    census: FlowCensus,
    icmp_budget: IcmpBudget,
    /// The batch in flight, one slot per frame.
    slots: Box<[Slot; MAX_BATCH]>,
    /// The frames seen ahead of the last batch, classified; swapped with `slots` when the next
    /// batch starts with them.
    ahead: Box<ClassifiedAhead>,
    classify_ahead: ClassifyAhead,
    prefetch: PhantomData<P>,
}

/// Frames classified one batch early ([`Worker::process_batch_ahead`]), and what they were
/// classified against.
#[derive(Debug)]
struct ClassifiedAhead {
    slots: Box<[Slot; MAX_BATCH]>,
    /// The verdict of each frame whose slot is `Todo::Done`.
    verdicts: [Verdict; MAX_BATCH],
    /// Each frame's address and length: the identity the next batch's frames are checked by.
    frames: [(usize, usize); MAX_BATCH],
    len: usize,
    /// The snapshot's address and generation.
    snapshot: (usize, u64),
}

impl ClassifiedAhead {
    fn new() -> Self {
        ClassifiedAhead {
            slots: Box::new([Slot::default(); MAX_BATCH]),
            verdicts: [Verdict::Drop(DropReason::Malformed); MAX_BATCH],
            frames: [(0, 0); MAX_BATCH],
            len: 0,
            snapshot: (0, 0),
        }
    }
}

/// A snapshot's identity for [`ClassifiedAhead`]: a new snapshot published at the address of a
/// freed one still differs by its generation.
#[inline(always)]
fn snapshot_identity(snap: &Snapshot) -> (usize, u64) {
    (snap as *const Snapshot as usize, snap.generation)
}

/// A frame's identity for [`ClassifiedAhead`] (see [`crate::io::PacketIo::poll_ahead`]).
#[inline(always)]
fn frame_identity(data: &[u8]) -> (usize, usize) {
    (data.as_ptr() as usize, data.len())
}

impl Worker {
    /// A worker that prefetches with ordinary loads ([`LoadPrefetch`]).
    pub fn new(config: WorkerConfig) -> Self {
        Worker::with_prefetch(config)
    }
}

impl<P: Prefetch> Worker<P> {
    /// Allocates the connection table and counters: everything the worker will ever need.
    pub fn with_prefetch(config: WorkerConfig) -> Self {
        Worker {
            conns: ConnTable::new(config.conn_capacity.max(1), config.timeouts),
            counters: WorkerCounters::default(),
            backend_counters: Vec::new(),
            census: FlowCensus::default(),
            icmp_budget: IcmpBudget { tokens: 0, last_refill_ms: 0, primed: false },
            slots: Box::new([Slot::default(); MAX_BATCH]),
            ahead: Box::new(ClassifiedAhead::new()),
            classify_ahead: config.classify_ahead,
            prefetch: PhantomData,
        }
    }

    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// Per-backend counters, indexed like [`Snapshot::backends`].
    pub fn backend_counters(&self) -> &[BackendCounters] {
        &self.backend_counters
    }

    pub fn conns(&self) -> &ConnTable {
        &self.conns
    }

    /// Counts the live flows of the next `buckets` connection-table buckets per backend; after
    /// the last bucket, the counts become [`Worker::active_flows`] and a new census starts.
    /// Call it between batches (and when idle): a whole-table walk at once would stall the
    /// worker for milliseconds at millions of entries. Flows whose backend is gone or down in
    /// `snap` are not counted. Returns true when this step completed a census.
    pub fn census_step(&mut self, snap: &Snapshot, buckets: usize, now_ms: u64) -> bool {
        let census = &mut self.census;
        if census.cursor == 0 {
            // A new census: sized for this snapshot (grows only when a publish added backends).
            census.partial.clear();
            census.partial.resize(snap.backends.len(), 0);
        }
        census.cursor = self.conns.tally_live(census.cursor, buckets, now_ms, &mut census.partial, |v| {
            snap.tracked_backend(v.backend, v.tag).is_some()
        });
        if census.cursor != 0 {
            return false;
        }
        std::mem::swap(&mut census.partial, &mut census.complete);
        census.sweeps += 1;
        true
    }

    /// Live flows per backend index, from the last complete census (empty before the first).
    pub fn active_flows(&self) -> &[u64] {
        &self.census.complete
    }

    /// Completed censuses.
    pub fn census_sweeps(&self) -> u64 {
        self.census.sweeps
    }

    /// Counts a poll that received nothing (for the busy ratio).
    pub fn note_empty_poll(&mut self) {
        self.counters.empty_polls += 1;
    }

    /// Decides every frame of `batch`, rewriting in place; `verdicts[i]` is frame `i`'s fate.
    /// `now_ms` is the batch clock (milliseconds since the worker started).
    pub fn process_batch(
        &mut self,
        snap: &Snapshot,
        batch: &mut Batch<'_>,
        verdicts: &mut [Verdict],
        now_ms: u64,
    ) {
        self.process_batch_ahead(snap, batch, verdicts, &Ahead::new(), now_ms);
    }

    /// [`Worker::process_batch`], also classifying the frames `ahead` of the batch (see
    /// [`crate::io::PacketIo::poll_ahead`]) while the batch's connection-table lines load, and
    /// prefetching their buckets; the next batch then starts with them classified and their
    /// buckets in the cache, if it holds them (checked frame by frame, by address and length)
    /// and runs against the same snapshot (address and generation).
    ///
    /// Why: within one batch, a flow's bucket line must arrive before the flow is placed, so at a
    /// million flows each batch waited for memory with nothing left to do meanwhile. Classifying
    /// the next batch fills that wait with useful work, and the next batch's bucket wait moves
    /// under this batch's placement and rewrite. Measured with the two-line table of stops 20-27
    /// (a header line, then an entry line found through it): 1.65-1.70 -> 1.47-1.53 µs per batch
    /// of 32 at a million flows (alternated runs, Zen 5 VM); at 10 000 flows under load, a third
    /// to a half of the pipeline's time (see [`ClassifyAhead`]). In memory at 10 000 flows, where
    /// nothing waits, it cost 5%.
    pub fn process_batch_ahead(
        &mut self,
        snap: &Snapshot,
        batch: &mut Batch<'_>,
        verdicts: &mut [Verdict],
        ahead: &Ahead<'_>,
        now_ms: u64,
    ) {
        if self.backend_counters.len() < snap.backends.len() {
            // Only when a publish added backends: per snapshot, never per packet.
            self.backend_counters.resize(snap.backends.len(), BackendCounters::default());
        }
        self.counters.batches += 1;
        let n = batch.len().min(verdicts.len()).min(MAX_BATCH);
        let verdicts = &mut verdicts[..n];
        let frames = batch.get(..n).unwrap_or_default();
        // See ClassifyAhead: under load, always.
        let overlap_memory_waits = match self.classify_ahead {
            ClassifyAhead::WhenTableOutgrowsCache => self.conns.outgrows_cache(),
            ClassifyAhead::Always => true,
        };
        let ahead = if overlap_memory_waits { ahead.as_slice() } else { &[] };
        let classified = self.take_classified_ahead(snap, frames, verdicts);
        self.counters.classified_ahead += classified as u64;
        for frame in frames {
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += frame.len() as u64;
        }
        // The headers of the whole batch first (and of the frames ahead). A received frame was
        // written into its buffer by the kernel (or the NIC) up to a ring's length of frames ago
        // and has usually left the caches since; the classify loop below does a few hundred
        // instructions per frame, so its first load of each frame would wait for memory alone,
        // one frame after another: under load that wait was half of the worker's time (fwd's
        // exit line: ~330 ns per frame in situ against ~100 in memory). Prefetched together, the
        // batch's misses overlap.
        for frame in frames.get(classified..).unwrap_or_default() {
            prefetch_headers::<P>(frame.data());
        }
        for data in ahead.iter() {
            prefetch_headers::<P>(data);
        }
        // Classify in two halves, each followed by the prefetch of its connection-table bucket
        // headers, so that the first half's headers load while the second half is classified:
        // 3-4% less time per batch of 32 at a million flows than one pass. A finer pipeline
        // (groups of 8 frames, each stage a group behind the one before) measured slower there:
        // 1.62-1.67 µs per batch against 1.54-1.57.
        let fresh = n - classified;
        let half = fresh.div_ceil(2).max(1);
        let slots = &mut self.slots[classified..n];
        let fresh_frames = frames.get(classified..).unwrap_or_default();
        let fresh_verdicts = verdicts.get_mut(classified..).unwrap_or_default();
        for ((frames, slots), verdicts) in
            fresh_frames.chunks(half).zip(slots.chunks_mut(half)).zip(fresh_verdicts.chunks_mut(half))
        {
            classify_frames(snap, frames.iter().map(|f| f.data()), slots, verdicts);
            // In a loop of its own. In the classify loop, a load (`LoadPrefetch`: safe code has
            // no prefetch instruction) waits for its miss with the reorder buffer full of that
            // loop's work (at a million flows that doubled the time per packet), and even the
            // CPU's prefetch instruction measured slower there (2.0-2.5 µs per batch against 1.6).
            prefetch_buckets::<P>(&self.conns, slots);
        }
        // Then what a flow the table lacks will read, found through the bucket line just loaded
        // (a hit reads nothing more): its Maglev slot, and the bucket its insert sweeps (at a
        // million flows, the 1% of packets that missed spent 4% of the time waiting for the
        // Maglev table).
        if overlap_memory_waits {
            for slot in self.slots[..n].iter() {
                if matches!(slot.todo, Todo::Forward | Todo::Follow)
                    && self.conns.prefetch_insert::<P>(slot.hash)
                {
                    if let Some(maglev_slot) = snap.maglev_slot(slot.service, slot.hash) {
                        P::prefetch(maglev_slot);
                    }
                }
            }
            // While those lines load: the frames ahead.
            self.classify_ahead(snap, ahead);
        }
        let slots = &mut self.slots[..n];
        // Placement of every flow before any rewrite: short lookups in a row keep several
        // connection-table entries in flight at once.
        for ((slot, verdict), frame) in slots.iter_mut().zip(verdicts.iter_mut()).zip(frames) {
            if matches!(slot.todo, Todo::Forward | Todo::Follow) {
                match pick_backend(&mut self.conns, &mut self.backend_counters, snap, slot, now_ms) {
                    Ok(backend) => {
                        slot.backend = backend;
                        // An encapsulation writes its outer headers into the headroom line in
                        // front of the frame, which nothing has touched since the buffer last
                        // went out: its stores waited for that line in the rewrite pass (6-8% of
                        // the worker's samples, perf in the harness at 10 000 flows). Loaded
                        // here, it arrives while the rest of the batch is placed: 42-47 -> 35-37
                        // ns per frame in situ, with the change to `prefetch_headers` (stop 23).
                        if snap.backends.get(backend as usize).is_some_and(|b| b.mode != ForwardMode::L2) {
                            if let Some(line) = frame.last_headroom_byte() {
                                P::prefetch(line);
                            }
                        }
                    }
                    Err(reason) => {
                        slot.todo = Todo::Done;
                        *verdict = Verdict::Drop(reason);
                    }
                }
            }
        }
        let slots = &self.slots[..n];
        for ((frame, slot), verdict) in batch.iter_mut().zip(slots.iter()).zip(verdicts.iter_mut()) {
            match slot.todo {
                Todo::Done => {}
                Todo::Echo => {
                    *verdict = answer_echo(
                        &mut self.icmp_budget,
                        &mut self.counters,
                        snap,
                        frame,
                        &slot.facts,
                        now_ms,
                    )
                }
                Todo::Forward | Todo::Follow => {
                    *verdict = match forward(
                        &mut self.icmp_budget,
                        &mut self.counters,
                        &mut self.backend_counters,
                        snap,
                        frame,
                        slot,
                        now_ms,
                    ) {
                        Ok(()) => Verdict::Tx,
                        Err(reason) => Verdict::Drop(reason),
                    }
                }
            }
            match *verdict {
                Verdict::Tx => {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += frame.len() as u64;
                }
                Verdict::Pass => self.counters.pass += 1,
                Verdict::Drop(reason) => self.counters.drop(reason),
            }
        }
    }
}

impl<P: Prefetch> Worker<P> {
    /// Moves the frames classified ahead of the last batch into this batch's slots (and their
    /// verdicts into `verdicts`) as far as the batch starts with them, unchanged, under the same
    /// snapshot. Returns how many frames that is; the rest must be classified.
    #[inline(always)]
    fn take_classified_ahead(
        &mut self,
        snap: &Snapshot,
        frames: &[Frame<'_>],
        verdicts: &mut [Verdict],
    ) -> usize {
        let ahead = &mut *self.ahead;
        let len = std::mem::take(&mut ahead.len);
        if len == 0 || ahead.snapshot != snapshot_identity(snap) {
            return 0;
        }
        let same = frames
            .iter()
            .zip(&ahead.frames[..len.min(MAX_BATCH)])
            .take_while(|(frame, &id)| frame_identity(frame.data()) == id)
            .count();
        if same > 0 {
            std::mem::swap(&mut self.slots, &mut ahead.slots);
            for (verdict, &v) in verdicts.iter_mut().zip(&ahead.verdicts[..same]) {
                *verdict = v;
            }
        }
        same
    }

    /// Classifies the frames `ahead` of the batch into the spare slots and prefetches their
    /// connection-table buckets, for [`Worker::take_classified_ahead`].
    #[inline(always)]
    fn classify_ahead(&mut self, snap: &Snapshot, ahead: &[&[u8]]) {
        let len = ahead.len().min(MAX_BATCH);
        if len == 0 {
            return;
        }
        let store = &mut *self.ahead;
        let slots = &mut store.slots[..len];
        classify_frames(snap, ahead.iter().copied(), slots, &mut store.verdicts[..len]);
        prefetch_buckets::<P>(&self.conns, slots);
        for (id, data) in store.frames.iter_mut().zip(ahead.iter()) {
            *id = frame_identity(data);
        }
        store.len = len;
        store.snapshot = snapshot_identity(snap);
    }
}

/// Starts loading the lines of a frame the classify pass reads.
#[inline(always)]
fn prefetch_headers<P: Prefetch>(data: &[u8]) {
    if let Some(first) = data.first() {
        P::prefetch(first);
    }
    // The last byte the classify pass may read of a plain TCP/UDP frame: the second line for
    // IPv6 or a VLAN tag. Only if it is another line: a batch's prefetches outnumber the core's
    // miss buffers, and a prefetch waits for a free one even when its line is already on the way.
    let last = data.get(data.len().min(COMMON_HEADERS_SPAN).saturating_sub(1));
    if let (Some(first), Some(last)) = (data.first(), last) {
        if !same_cache_line(first, last) {
            P::prefetch(last);
        }
    }
}

/// Whether two bytes lie in the same 64-byte cache line.
#[inline(always)]
fn same_cache_line(a: &u8, b: &u8) -> bool {
    (std::ptr::from_ref(a) as usize) >> 6 == (std::ptr::from_ref(b) as usize) >> 6
}

/// The first pass: parses each frame, finds its service and hashes its flow into its slot, or
/// writes its verdict (then the slot says `Todo::Done`).
#[inline(always)]
fn classify_frames<'d>(
    snap: &Snapshot,
    frames: impl Iterator<Item = &'d [u8]>,
    slots: &mut [Slot],
    verdicts: &mut [Verdict],
) {
    for ((data, slot), verdict) in frames.zip(slots.iter_mut()).zip(verdicts.iter_mut()) {
        // Plain TCP/UDP (nearly all traffic to a VIP) in a few loads; everything else, and the
        // rules for it, in `classify_other`.
        let common = parse_common_into(data, &mut slot.key);
        let done = match common {
            Some(c) => classify_flow(snap, slot, FrameFacts::of_common(&c), c.tcp_flags, true),
            None => classify_other(snap, data, slot),
        };
        if let Some(v) = done {
            slot.todo = Todo::Done;
            *verdict = v;
        }
    }
}

/// Starts loading the connection-table bucket header of every flow in `slots`.
#[inline(always)]
fn prefetch_buckets<P: Prefetch>(conns: &ConnTable, slots: &[Slot]) {
    for slot in slots {
        if matches!(slot.todo, Todo::Forward | Todo::Follow) {
            conns.prefetch::<P>(slot.hash);
        }
    }
}

/// The first pass for a TCP/UDP flow (or an ICMP error following one) whose key is already in
/// `slot.key`: finds the service and hashes the flow. `Some` is the frame's verdict if it has one.
#[inline(always)]
fn classify_flow(
    snap: &Snapshot,
    slot: &mut Slot,
    facts: FrameFacts,
    tcp_flags: Option<u8>,
    track: bool,
) -> Option<Verdict> {
    let service = match snap.lookup(&slot.key.dst, slot.key.proto, slot.key.dst_port) {
        VipMatch::Service(i) => i,
        VipMatch::VipOnly => return Some(Verdict::Drop(DropReason::NoService)),
        VipMatch::NotVip => return Some(Verdict::Pass),
    };
    snap.apply_flow_key_policy(service, &mut slot.key);
    aim(slot, if track { Todo::Forward } else { Todo::Follow }, facts, service, tcp_flags);
    None
}

/// Points the slot at `service` along the flow in `slot.key` (final, policy applied).
#[inline(always)]
fn aim(slot: &mut Slot, todo: Todo, facts: FrameFacts, service: u32, tcp_flags: Option<u8>) {
    slot.todo = todo;
    slot.facts = facts;
    slot.service = service;
    slot.tcp_flags = tcp_flags;
    slot.hash = flow_hash(&slot.key);
}

/// The first pass for what is not plain TCP/UDP: VLAN stacks, IPv4 options, IPv6
/// extension headers, fragments, ICMP, TTL 0, malformed frames. Fills `slot` like
/// [`classify_flow`]; `Some` is the frame's verdict if it has one.
#[inline(never)]
fn classify_other(snap: &Snapshot, data: &[u8], slot: &mut Slot) -> Option<Verdict> {
    let parsed = match parse(data) {
        Ok(Some(p)) => p,
        Ok(None) => return Some(Verdict::Pass),
        Err(reason) => return Some(Verdict::Drop(reason)),
    };
    let ip = &parsed.ip;
    let facts = FrameFacts::of(&parsed);
    // Unfragmented TCP or UDP with TTL left needs one lookup: the service lookup tells a VIP from
    // other addresses too, so the VIP probe below is skipped.
    if ip.ttl != 0 && ip.fragment.is_none() {
        let transport = match parsed.l4 {
            L4Meta::Tcp { src_port, dst_port, flags } => Some((src_port, dst_port, Some(flags))),
            L4Meta::Udp { src_port, dst_port } => Some((src_port, dst_port, None)),
            _ => None,
        };
        if let Some((src_port, dst_port, tcp_flags)) = transport {
            slot.key = FlowKey::v6(ip.src, ip.dst, ip.proto, src_port, dst_port);
            return classify_flow(snap, slot, facts, tcp_flags, true);
        }
    }
    if !snap.is_vip(&ip.dst) {
        return Some(Verdict::Pass);
    }
    if ip.ttl == 0 {
        return Some(Verdict::Drop(DropReason::TtlExceeded));
    }
    if ip.fragment.is_some() {
        return classify_fragment(snap, &parsed, facts, slot);
    }
    match parsed.l4 {
        // Answered in the last pass, where the ICMP budget and the frame are at hand.
        L4Meta::IcmpEchoRequest if snap.local.answer_echo => {
            slot.todo = Todo::Echo;
            slot.facts = facts;
            None
        }
        L4Meta::IcmpEchoRequest => Some(Verdict::Pass),
        L4Meta::IcmpError { quoted } => {
            // The quoted packet went from the VIP to the client: the flow is its reverse.
            if quoted.src != ip.dst {
                return Some(Verdict::Drop(DropReason::IcmpUnmatched));
            }
            slot.key = FlowKey {
                src: quoted.dst,
                dst: quoted.src,
                src_port: quoted.dst_port,
                dst_port: quoted.src_port,
                proto: quoted.proto,
            };
            match classify_flow(snap, slot, facts, None, false) {
                Some(Verdict::Drop(DropReason::NoService)) => Some(Verdict::Drop(DropReason::IcmpUnmatched)),
                verdict => verdict,
            }
        }
        // TCP and UDP (unfragmented, TTL left) were placed above.
        L4Meta::Tcp { .. } | L4Meta::Udp { .. } | L4Meta::IcmpOther | L4Meta::Other | L4Meta::Fragment => {
            Some(Verdict::Drop(DropReason::UnsupportedProtocol))
        }
    }
}

/// The backend for a flow: its tracked one if still valid, else the Maglev pick (tracked unless
/// the slot only follows flows).
#[inline(always)]
fn pick_backend(
    conns: &mut ConnTable,
    backend_counters: &mut [BackendCounters],
    snap: &Snapshot,
    slot: &Slot,
    now_ms: u64,
) -> Result<BackendIdx, DropReason> {
    if let Some(v) = conns.lookup(slot.hash, now_ms, slot.tcp_flags) {
        if let Some(b) = snap.tracked_backend(v.backend, v.tag).filter(|b| b.service == slot.service) {
            // A SYN without ACK opens a new connection on the tuple (the client reused the ports
            // of one whose close we did not see, e.g. reset by its backend): a drained backend
            // takes no new connections, so it is picked afresh, as IPVS does for weight 0.
            if b.state == BackendState::Up || !is_new_syn(slot.tcp_flags) {
                return Ok(v.backend);
            }
        }
    }
    let idx = snap.maglev_pick(slot.service, slot.hash).ok_or(DropReason::NoBackend)?;
    let backend = snap.backends.get(idx as usize).ok_or(DropReason::NoBackend)?;
    if slot.todo == Todo::Forward {
        conns.insert(
            slot.hash,
            slot.key.proto,
            ConnValue { backend: idx, tag: backend.tag },
            now_ms,
            slot.tcp_flags,
        );
        if let Some(c) = backend_counters.get_mut(idx as usize) {
            c.new_flows += 1;
        }
    }
    Ok(idx)
}

/// Answers an echo request to a VIP in place, within the ICMP budget.
fn answer_echo(
    budget: &mut IcmpBudget,
    counters: &mut WorkerCounters,
    snap: &Snapshot,
    frame: &mut Frame<'_>,
    facts: &FrameFacts,
    now_ms: u64,
) -> Verdict {
    if !budget.take(snap.local.icmp_rate_per_sec, now_ms) {
        return Verdict::Drop(DropReason::IcmpRateLimited);
    }
    let (l3, l4, len) = (facts.l3_offset as usize, facts.l4_offset as usize, facts.packet_len as usize);
    match icmp::echo_reply(frame, l3, l4, len, facts.is_v6) {
        Ok(()) => {
            counters.icmp_generated += 1;
            Verdict::Tx
        }
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Last pass: rewrites the frame towards the slot's backend.
#[inline(always)]
fn forward(
    budget: &mut IcmpBudget,
    counters: &mut WorkerCounters,
    backend_counters: &mut [BackendCounters],
    snap: &Snapshot,
    frame: &mut Frame<'_>,
    slot: &Slot,
    now_ms: u64,
) -> Result<(), DropReason> {
    let backend = snap.backends.get(slot.backend as usize).ok_or(DropReason::NoBackend)?;
    let facts = &slot.facts;
    let next_hop = backend.next_hop_mac.as_ref().ok_or(DropReason::NextHopUnresolved)?;
    let macs = Macs { dst: next_hop, src: &snap.local.mac };
    let (l3_offset, packet_len) = (facts.l3_offset as usize, facts.packet_len as usize);
    match backend.mode {
        ForwardMode::L2 => rewrite_l2(frame, macs)?,
        mode => {
            let gue = mode == ForwardMode::Gue;
            let outer_v6 = backend.addr.is_ipv6();
            let overhead = encap_overhead(gue, outer_v6);
            if packet_len + overhead > usize::from(snap.local.mtu) {
                return too_big(budget, counters, snap, frame, facts, overhead, now_ms);
            }
            let tunnel = snap.local.tunnel_to(backend.addr, slot.hash).ok_or(DropReason::NoTunnelSource)?;
            if gue {
                encap_gue(
                    frame,
                    l3_offset,
                    packet_len,
                    facts.is_v6,
                    tunnel,
                    slot.hash,
                    snap.local.gue_port,
                    macs,
                )?
            } else {
                encap_ipip(frame, l3_offset, packet_len, facts.is_v6, tunnel, slot.hash, macs)?
            }
        }
    }
    if let Some(c) = backend_counters.get_mut(slot.backend as usize) {
        c.packets += 1;
        c.bytes += frame.len() as u64;
    }
    Ok(())
}

/// The packet cannot be forwarded whole: tell the client (IPv4 with DF, and IPv6) or drop.
#[inline(never)]
fn too_big(
    budget: &mut IcmpBudget,
    counters: &mut WorkerCounters,
    snap: &Snapshot,
    frame: &mut Frame<'_>,
    facts: &FrameFacts,
    overhead: usize,
    now_ms: u64,
) -> Result<(), DropReason> {
    // fwd never fragments: an IPv4 packet without DF is dropped, as a router without
    // fragmentation support would.
    if !facts.dont_fragment {
        return Err(DropReason::TooBig);
    }
    // Never answer an ICMP error with an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4).
    if facts.icmp_error {
        return Err(DropReason::TooBig);
    }
    if !budget.take(snap.local.icmp_rate_per_sec, now_ms) {
        return Err(DropReason::IcmpRateLimited);
    }
    let mtu = usize::from(snap.local.mtu).saturating_sub(overhead);
    icmp::too_big(frame, facts.l3_offset as usize, facts.packet_len as usize, facts.is_v6, mtu as u16)?;
    counters.icmp_generated += 1;
    Ok(())
}

/// A fragment to a VIP: the one service of its (VIP, protocol), hashed on the 3-tuple, or
/// dropped, as the service's fragment policy says.
fn classify_fragment(
    snap: &Snapshot,
    parsed: &ParsedFrame,
    facts: FrameFacts,
    slot: &mut Slot,
) -> Option<Verdict> {
    let ip = &parsed.ip;
    let Some(service) = snap.fragment_service(&ip.dst, ip.proto) else {
        return Some(Verdict::Drop(match crate::flow::L4Proto::from_number(ip.proto) {
            Some(_) => DropReason::FragmentPolicy,
            None => DropReason::UnsupportedProtocol,
        }));
    };
    match snap.services.get(service as usize) {
        Some(svc) if svc.fragments == FragmentPolicy::Hash3Tuple => {
            slot.key = FlowKey::v6(ip.src, ip.dst, ip.proto, 0, 0);
            // Fragments are not tracked: the 3-tuple hash already sends them all to one backend,
            // and tracking them would fill the table with one entry per datagram source.
            aim(slot, Todo::Follow, facts, service, None);
            None
        }
        _ => Some(Verdict::Drop(DropReason::FragmentPolicy)),
    }
}

#[cfg(test)]
mod tests;
