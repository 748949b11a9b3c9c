//! The per-worker connection table: which backend each flow was given.
//!
//! Maglev alone keeps most flows on their backend when the backend set changes, but not all; the
//! connection table pins every flow a worker has seen to the backend it was first given, so that
//! established connections survive backend changes. Each worker owns one table (no sharing, no
//! locks); it is allocated once at start and never grows.
//!
//! # Layout
//!
//! The table is set-associative, like a CPU cache, and a bucket is one cache line: a flow can
//! live only in the 4 slots of the bucket picked by the high 32 bits of its flow hash (the low
//! 32 bits pick the Maglev slot, see [`crate::hash::reduce`], so the two stay independent). Per
//! slot the line holds 16 bytes: a 32-bit word (a 30-bit signature taken from the low hash bits
//! plus a 2-bit state, 0 = empty), the 32-bit last-seen time, the backend and the tag. A lookup
//! compares the 4 signatures at once; a hit, the refresh of its time and state, and an insert's
//! choice of victim (empty, then expired, then least recently used) never leave this line.
//!
//! # A flow is its hash
//!
//! The table stores no keys: a flow is known by its bucket and its signature, 30 + log2(buckets)
//! bits of its 64-bit flow hash (50 bits in fwd's default table for a million flows: 2^20 buckets).
//!
//! Why: the table used to keep the full key beside the value, a line per entry behind a header
//! line of signatures (72 bytes per entry). A hit then read two lines, one found through the
//! other, so each waited for memory twice in a row; at a million flows the table was larger
//! than ever (75 MiB) and, 8 slots per bucket at 95% of its slots in use, left 12% of the flows
//! without a slot (evicted and placed again, packet after packet). One line per bucket halves
//! what a hit reads and what a flow occupies in the caches, and makes room for more slots in
//! less memory; measurements in the README (stop 28, under "Connection table" and "The whole
//! pipeline in memory").
//!
//! What it costs: a flow the table does not hold, whose signature equals that of a live entry in
//! its bucket, is taken for that flow: at most 4 chances in 2^30 (one in 268 million) per flow
//! placed. Such a flow still goes to a valid backend of its service (the pipeline checks every
//! hit against the current backend set, and picks afresh for a SYN to a draining backend), only
//! not the one Maglev names, which matters only if its packets later reach another fwd (an ECMP
//! change) while it lasts. A backend change moves far more flows than that.
//!
//! # Size
//!
//! [`ConnTable::new`] makes 4 slots per flow asked for (one cache line per flow, rounded up to a
//! power of two): a table holding as many flows as asked then has a quarter of its slots in use,
//! and by the Poisson law 0.4% of its flows find their bucket full (3.3% with 2 slots per flow,
//! 12% in the old 8-slot buckets at 95%). A full bucket evicts its least recently used entry,
//! whose flow is placed again by Maglev, on the same backend unless the set changed.
//!
//! # Time
//!
//! Times are milliseconds since the worker started, stored truncated to `u32` and compared with
//! wrapping subtraction, so an age is exact up to 2^32 ms (49.7 days). An entry idle longer than
//! that would look young again; to prevent it, every insert also sweeps one bucket (round robin)
//! and frees its expired entries, so an expired entry is reclaimed once the table has seen as many
//! inserts as it has buckets (1 048 576 for a million flows). Only a worker that sees fewer new
//! flows than that in 49 days can revive a flow idle that long, and even then the flow only gets
//! back the backend it had, which the pipeline validates against the current backend set on every
//! hit anyway.

use crate::prefetch::Prefetch;

/// What the table remembers about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnValue {
    /// The backend the flow was given (an index into the service's backend list).
    pub backend: u32,
    /// Caller-defined check value, e.g. the backend set's generation, to validate a hit.
    pub tag: u32,
}

/// Idle timeouts: an entry not seen for longer than its timeout is expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP flows that have not shown a FIN or RST.
    pub tcp_established_ms: u32,
    /// TCP flows after a FIN or RST was seen in either a lookup or an insert.
    pub tcp_closing_ms: u32,
    /// UDP, and any protocol other than TCP.
    pub udp_ms: u32,
}

/// Cumulative counters; [`ConnTable::clear`] does not reset them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Lookups that returned a live entry.
    pub hits: u64,
    /// Lookups that returned `None` (absent, expired, or reset by a SYN).
    pub misses: u64,
    /// Calls to [`ConnTable::insert`] (new entries and overwrites).
    pub inserts: u64,
    /// Expired entries reclaimed by inserts: as eviction victims or by the round-robin sweep.
    pub evicted_expired: u64,
    /// Live entries evicted because their bucket was full (the least recently used one).
    pub evicted_lru: u64,
    /// Lookups that found a closing TCP entry and a new SYN (port reuse) and removed it.
    pub reset_by_syn: u64,
}

const TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Slots per bucket: as many as fit one cache line at 16 bytes each.
const WAYS: usize = 4;
/// Slots made per flow asked for (see "Size" in the module documentation).
const SLOTS_PER_FLOW: usize = 4;
/// Above this size the table is taken to live in memory rather than the caches (an L3 share of
/// a few MiB per core on the servers fwd targets).
const CACHE_RESIDENT_BYTES: usize = 8 << 20;

/// What one flow's lookup touches in a sparse table: its bucket's line.
const LINE_PER_FLOW_BYTES: usize = std::mem::size_of::<Bucket>();

/// The state lives in the low 2 bits of a slot's word; the other 30 are the signature.
const STATE_MASK: u32 = 0b11;
/// Empty slot: the whole word is zero (a signature is never zero).
const STATE_EMPTY: u32 = 0;
const STATE_TCP_ESTABLISHED: u32 = 1;
const STATE_TCP_CLOSING: u32 = 2;
const STATE_OTHER: u32 = 3;

/// One bucket: its slots' signatures, states, last-seen times and values, exactly one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Bucket {
    /// `signature | state` per slot; 0 when the slot is empty.
    words: [u32; WAYS],
    /// Last time the slot's flow was seen, in ms truncated to u32.
    last_seen: [u32; WAYS],
    /// The slot's [`ConnValue::backend`].
    backend: [u32; WAYS],
    /// The slot's [`ConnValue::tag`].
    tag: [u32; WAYS],
}

impl Bucket {
    /// Whether `slot` holds an entry idle longer than its state's timeout (`timeouts` indexed
    /// by state). The one place an age is judged, for lookups, inserts, the sweep and the counts.
    #[inline(always)]
    fn expired(&self, slot: usize, now: u32, timeouts: &[u32; 4]) -> bool {
        let slot = slot % WAYS;
        let state = self.words[slot] & STATE_MASK;
        now.wrapping_sub(self.last_seen[slot]) > timeouts[state as usize]
    }

    /// Whether `slot` holds an entry not yet expired.
    #[inline(always)]
    fn live(&self, slot: usize, now: u32, timeouts: &[u32; 4]) -> bool {
        self.words[slot % WAYS] != STATE_EMPTY && !self.expired(slot, now, timeouts)
    }
}

/// A fixed-capacity, set-associative connection table owned by one worker.
#[derive(Debug)]
pub struct ConnTable {
    buckets: Box<[Bucket]>,
    /// Bucket count - 1 (the bucket count is a power of two).
    bucket_mask: usize,
    /// Idle timeout per state, indexed by the 2-bit state.
    timeout_by_state: [u32; 4],
    /// Next bucket the insert-time sweep visits.
    sweep_cursor: usize,
    /// Slots holding an entry, live or expired but not yet reclaimed: what a batch's lookups can
    /// touch (see [`ConnTable::outgrows_cache`]).
    occupied: usize,
    stats: ConnStats,
}

/// The bucket count for `capacity` flows: a power of two, [`SLOTS_PER_FLOW`] slots per flow.
/// Capped at 2^32 buckets, since the bucket index comes from 32 hash bits.
fn bucket_count_for(capacity: usize) -> usize {
    let wanted = capacity.max(1).saturating_mul(SLOTS_PER_FLOW).div_ceil(WAYS);
    let cap = 1usize << 32.min(usize::BITS - 1);
    wanted.checked_next_power_of_two().unwrap_or(cap).min(cap)
}

/// The 30-bit signature (in the high 30 bits of a word; never zero) of a flow hash.
#[inline(always)]
fn signature(hash: u64) -> u32 {
    let sig = (hash as u32) & !STATE_MASK;
    if sig == 0 {
        1 << 2
    } else {
        sig
    }
}

/// Empties `slot` of a bucket and counts it out of `occupied` (see [`ConnTable::occupied`]):
/// every place that frees a slot goes through here, so the count cannot drift.
#[inline(always)]
fn vacate(bucket: &mut Bucket, slot: usize, occupied: &mut usize) {
    bucket.words[slot] = STATE_EMPTY;
    *occupied = occupied.saturating_sub(1);
}

/// The slot holding the signature `sig` (in any non-empty state), if any. An insert never
/// stores a signature twice in a bucket, so there is at most one.
#[inline(always)]
fn find(bucket: &Bucket, sig: u32) -> Option<usize> {
    let mut found = 0u32;
    for (i, word) in bucket.words.iter().enumerate() {
        found |= u32::from(word & !STATE_MASK == sig) << i;
    }
    (found != 0).then(|| found.trailing_zeros() as usize % WAYS)
}

#[inline(always)]
fn has_flag(tcp_flags: Option<u8>, flag: u8) -> bool {
    matches!(tcp_flags, Some(f) if f & flag != 0)
}

/// A SYN without ACK: a client opening a connection (possibly reusing a closed one's ports).
#[inline(always)]
pub(crate) fn is_new_syn(tcp_flags: Option<u8>) -> bool {
    matches!(tcp_flags, Some(f) if f & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

impl ConnTable {
    /// A table for at least `capacity` flows (0 is taken as 1): [`SLOTS_PER_FLOW`] slots per flow,
    /// rounded up to a power-of-two number of 4-slot buckets, see [`ConnTable::capacity`]. All
    /// memory is allocated here: 16 bytes per slot, 64 per flow asked for (up to 128 with the
    /// rounding).
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let buckets = bucket_count_for(capacity);
        ConnTable {
            buckets: vec![Bucket::default(); buckets].into_boxed_slice(),
            bucket_mask: buckets - 1,
            timeout_by_state: [0, timeouts.tcp_established_ms, timeouts.tcp_closing_ms, timeouts.udp_ms],
            sweep_cursor: 0,
            occupied: 0,
            stats: ConnStats::default(),
        }
    }

    /// The number of entries the table holds when every bucket is full.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// The table's memory, in bytes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[Bucket]>(&self.buckets)
    }

    #[inline(always)]
    fn bucket_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.bucket_mask
    }

    /// The live entry for the flow whose flow hash is `hash`, if any; see the module
    /// documentation for the rules.
    ///
    /// A hit refreshes the entry's last-seen time. For TCP entries, `tcp_flags` (the flags byte of
    /// the packet) moves the entry to the closing state on FIN or RST, and a SYN without ACK on a
    /// closing entry (a new connection reusing the ports) removes it and returns `None`. Expired
    /// entries found here are removed and miss.
    #[inline(always)]
    pub fn lookup(&mut self, hash: u64, now_ms: u64, tcp_flags: Option<u8>) -> Option<ConnValue> {
        let now = now_ms as u32;
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        let Some(bucket) = self.buckets.get_mut(b) else {
            self.stats.misses += 1;
            return None;
        };
        let Some(slot) = find(bucket, sig) else {
            self.stats.misses += 1;
            return None;
        };
        if bucket.expired(slot, now, &self.timeout_by_state) {
            vacate(bucket, slot, &mut self.occupied);
            self.stats.misses += 1;
            return None;
        }
        let mut state = bucket.words[slot] & STATE_MASK;
        if state != STATE_OTHER {
            if state == STATE_TCP_CLOSING && is_new_syn(tcp_flags) {
                vacate(bucket, slot, &mut self.occupied);
                self.stats.reset_by_syn += 1;
                self.stats.misses += 1;
                return None;
            }
            if has_flag(tcp_flags, TCP_FIN | TCP_RST) {
                state = STATE_TCP_CLOSING;
            }
        }
        bucket.words[slot] = sig | state;
        bucket.last_seen[slot] = now;
        self.stats.hits += 1;
        Some(ConnValue { backend: bucket.backend[slot], tag: bucket.tag[slot] })
    }

    /// Records (or overwrites) the backend of the flow whose flow hash is `hash` and whose IP
    /// protocol is `proto`, evicting if the bucket is full: an expired entry if the bucket has
    /// one, else its least recently used entry.
    ///
    /// A TCP entry starts in the closing state if `tcp_flags` has FIN or RST; overwriting a live
    /// closing entry keeps it closing unless the packet is a new SYN.
    #[inline]
    pub fn insert(&mut self, hash: u64, proto: u8, value: ConnValue, now_ms: u64, tcp_flags: Option<u8>) {
        let now = now_ms as u32;
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        self.stats.inserts += 1;
        let timeouts = self.timeout_by_state;
        if let Some(bucket) = self.buckets.get_mut(b) {
            let existing = find(bucket, sig);
            let mut state = STATE_OTHER;
            if proto == TCP {
                let was_closing = existing.is_some_and(|slot| {
                    bucket.words[slot] & STATE_MASK == STATE_TCP_CLOSING
                        && !bucket.expired(slot, now, &timeouts)
                });
                state = if has_flag(tcp_flags, TCP_FIN | TCP_RST) || (was_closing && !is_new_syn(tcp_flags)) {
                    STATE_TCP_CLOSING
                } else {
                    STATE_TCP_ESTABLISHED
                };
            }
            let slot = match existing {
                Some(slot) => slot,
                None => Self::pick_victim(bucket, now, &timeouts, &mut self.stats),
            } % WAYS;
            if bucket.words[slot] == STATE_EMPTY {
                self.occupied += 1;
            }
            bucket.words[slot] = sig | state;
            bucket.last_seen[slot] = now;
            bucket.backend[slot] = value.backend;
            bucket.tag[slot] = value.tag;
        }
        self.sweep_one_bucket(now);
    }

    /// The slot a new entry goes to: an empty one, else an expired one, else the least recently
    /// used one. Counts evictions.
    #[inline(always)]
    fn pick_victim(bucket: &Bucket, now: u32, timeouts: &[u32; 4], stats: &mut ConnStats) -> usize {
        let mut oldest = 0;
        let mut oldest_idle = 0;
        let mut expired = None;
        for slot in 0..WAYS {
            let word = bucket.words[slot];
            if word == STATE_EMPTY {
                return slot;
            }
            if bucket.expired(slot, now, timeouts) {
                expired = expired.or(Some(slot));
            }
            let idle = now.wrapping_sub(bucket.last_seen[slot]);
            if idle >= oldest_idle {
                oldest_idle = idle;
                oldest = slot;
            }
        }
        match expired {
            Some(slot) => {
                stats.evicted_expired += 1;
                slot
            }
            None => {
                stats.evicted_lru += 1;
                oldest
            }
        }
    }

    /// Frees the expired entries of the next bucket in round-robin order, so that no entry stays
    /// idle long enough (2^32 ms) for its wrapped age to look young.
    #[inline(always)]
    fn sweep_one_bucket(&mut self, now: u32) {
        let b = self.sweep_cursor & self.bucket_mask;
        self.sweep_cursor = b.wrapping_add(1);
        let timeouts = self.timeout_by_state;
        if let Some(bucket) = self.buckets.get_mut(b) {
            for slot in 0..WAYS {
                if bucket.words[slot] != STATE_EMPTY && bucket.expired(slot, now, &timeouts) {
                    vacate(bucket, slot, &mut self.occupied);
                    self.stats.evicted_expired += 1;
                }
            }
        }
    }

    /// Removes the entry of the flow whose flow hash is `hash`. True if there was one (possibly
    /// expired but not yet reclaimed).
    pub fn remove(&mut self, hash: u64) -> bool {
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        let Some(bucket) = self.buckets.get_mut(b) else {
            return false;
        };
        match find(bucket, sig) {
            Some(slot) => {
                vacate(bucket, slot, &mut self.occupied);
                true
            }
            None => false,
        }
    }

    /// Entries not expired as of `now_ms`. Walks the whole table: for stats, not per packet.
    pub fn count_live(&self, now_ms: u64) -> usize {
        let now = now_ms as u32;
        self.buckets
            .iter()
            .map(|b| (0..WAYS).filter(|&slot| b.live(slot, now, &self.timeout_by_state)).count())
            .sum()
    }

    /// Tallies the live entries of `buckets` buckets starting at bucket `start`, adding one to
    /// `counts[value.backend]` for each live entry whose value `accept` admits (entries naming
    /// an index beyond `counts` are skipped). Returns the bucket to start from next time (0 after
    /// the last bucket), so that a worker can census its flows a slice at a time between batches
    /// instead of stopping for a whole-table walk.
    pub fn tally_live(
        &self,
        start: usize,
        buckets: usize,
        now_ms: u64,
        counts: &mut [u64],
        accept: impl Fn(ConnValue) -> bool,
    ) -> usize {
        let now = now_ms as u32;
        let end = start.saturating_add(buckets).min(self.buckets.len());
        for bucket in self.buckets.get(start..end).unwrap_or(&[]) {
            for slot in 0..WAYS {
                if !bucket.live(slot, now, &self.timeout_by_state) {
                    continue;
                }
                let value = ConnValue { backend: bucket.backend[slot], tag: bucket.tag[slot] };
                if !accept(value) {
                    continue;
                }
                if let Some(c) = counts.get_mut(value.backend as usize) {
                    *c += 1;
                }
            }
        }
        if end >= self.buckets.len() {
            0
        } else {
            end
        }
    }

    /// Number of buckets (for [`ConnTable::tally_live`]'s cursor).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Starts loading the flow's bucket line into the cache, so that its lookup a few packets
    /// later does not wait for memory. Call it for a whole batch of hashes before looking them
    /// up.
    ///
    /// Measured with batches of 32 (`benches/conntrack.rs`), with [`LoadPrefetch`] (an ordinary
    /// load): at 1 000 000 entries 20-25% less time per packet than without it (stop 10, with
    /// the two-line design); at 10 000 entries (cache-resident) it changes little.
    ///
    /// [`LoadPrefetch`]: crate::prefetch::LoadPrefetch
    #[inline]
    pub fn prefetch<P: Prefetch>(&self, hash: u64) {
        if let Some(bucket) = self.buckets.get(self.bucket_index(hash)) {
            P::prefetch(&bucket.words[0]);
        }
    }

    /// The second step of [`ConnTable::prefetch`], for a flow the table lacks: once its bucket
    /// line has loaded, tells whether the flow's lookup will miss (no slot has its signature),
    /// and if so starts loading the bucket its insert will sweep, so that the insert does not
    /// wait for that line; the caller may then start loading what its placement reads (the
    /// Maglev slot). A flow the table holds needs nothing more: its bucket line holds its value.
    #[inline]
    pub fn prefetch_insert<P: Prefetch>(&self, hash: u64) -> bool {
        let Some(bucket) = self.buckets.get(self.bucket_index(hash)) else { return false };
        if find(bucket, signature(hash)).is_some() {
            return false;
        }
        if let Some(next) = self.buckets.get(self.sweep_cursor & self.bucket_mask) {
            P::prefetch(&next.words[0]);
        }
        true
    }

    /// Slots holding an entry, live or expired but not yet reclaimed.
    pub fn occupied(&self) -> usize {
        self.occupied
    }

    /// Whether what a batch's lookups can touch is larger than a core's share of the caches, so
    /// that they wait for memory even in a loop that does nothing else (the in-memory
    /// benchmark): then the pipeline's classifying ahead pays for itself there too.
    /// A worker under load waits for memory at any size, since the kernel's work between its
    /// batches evicts the table (see `pipeline::ClassifyAhead`).
    ///
    /// The working set is the occupied entries' bucket lines (in a sparse table each flow has a
    /// bucket of its own), never more than the table: a table sized for a million flows that
    /// holds ten thousand fits.
    #[inline]
    pub fn outgrows_cache(&self) -> bool {
        let touched = self.occupied.saturating_mul(LINE_PER_FLOW_BYTES);
        touched.min(self.memory_bytes()) > CACHE_RESIDENT_BYTES
    }

    /// Removes every entry. Statistics are kept.
    pub fn clear(&mut self) {
        for bucket in self.buckets.iter_mut() {
            *bucket = Bucket::default();
        }
        self.sweep_cursor = 0;
        self.occupied = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowKey;
    use crate::hash::flow_hash;
    use crate::prefetch::LoadPrefetch;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const TIMEOUTS: Timeouts = Timeouts { tcp_established_ms: 10_000, tcp_closing_ms: 1_000, udp_ms: 3_000 };
    const FIN_ACK: u8 = TCP_FIN | TCP_ACK;
    const UDP: u8 = 17;

    fn tcp(port: u16) -> FlowKey {
        FlowKey::v4([198, 18, 0, 1], [198, 19, 0, 1], 6, port, 80)
    }

    fn udp(port: u16) -> FlowKey {
        FlowKey::v6(
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "fd00::53".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            17,
            port,
            53,
        )
    }

    fn value(backend: u32) -> ConnValue {
        ConnValue { backend, tag: 7 }
    }

    /// A hash that sends `key` to `bucket`, keeping the key's real signature bits.
    fn hash_in_bucket(key: &FlowKey, bucket: u64) -> u64 {
        (bucket << 32) | (flow_hash(key) & 0xffff_ffff)
    }

    /// A hash in `bucket` with the signature `sig` (nonzero, below 2^30).
    fn hash_of(bucket: u64, sig: u32) -> u64 {
        (bucket << 32) | u64::from(sig << 2)
    }

    /// Flow helpers: the table knows a flow by its hash, and its protocol on insert.
    fn insert(t: &mut ConnTable, key: &FlowKey, v: ConnValue, now: u64, flags: Option<u8>) {
        t.insert(flow_hash(key), key.proto, v, now, flags);
    }

    fn lookup(t: &mut ConnTable, key: &FlowKey, now: u64, flags: Option<u8>) -> Option<ConnValue> {
        t.lookup(flow_hash(key), now, flags)
    }

    fn table() -> ConnTable {
        ConnTable::new(1024, TIMEOUTS)
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
        let t = table();
        assert_eq!(t.memory_bytes(), t.bucket_count() * 64);
        assert_eq!(t.capacity(), 4096);
    }

    #[test]
    fn prefetching_changes_nothing() {
        let mut t = table();
        let a = tcp(40_000);
        insert(&mut t, &a, value(1), 0, None);
        t.prefetch::<LoadPrefetch>(flow_hash(&a));
        assert!(!t.prefetch_insert::<LoadPrefetch>(flow_hash(&a)), "a held flow needs no insert");
        assert!(t.prefetch_insert::<LoadPrefetch>(flow_hash(&tcp(40_001))), "a new flow does");
        assert_eq!(lookup(&mut t, &a, 1, None), Some(value(1)));
        assert_eq!(t.stats().hits, 1);
    }

    #[test]
    fn inserted_flow_hits_and_others_miss() {
        let mut t = table();
        let (a, b) = (tcp(40_000), tcp(40_001));
        insert(&mut t, &a, value(3), 0, Some(TCP_SYN));
        assert_eq!(lookup(&mut t, &a, 1, Some(TCP_ACK)), Some(value(3)));
        assert_eq!(lookup(&mut t, &b, 1, Some(TCP_ACK)), None);
        // The same bucket with another signature is another flow.
        let h = flow_hash(&a);
        assert_eq!(t.lookup(h ^ 0x4, 1, None), None);
        assert_eq!(t.stats(), ConnStats { hits: 1, misses: 2, inserts: 1, ..ConnStats::default() });
        assert_eq!(t.count_live(1), 1);
    }

    /// The documented trade-off (module documentation, "A flow is its hash"): flows are told
    /// apart by bucket and signature only, so equal bits are the same flow. Bits the table does
    /// not use (the hash's high bits beyond the bucket index, the low two) do not count.
    #[test]
    fn a_flow_is_known_by_its_bucket_and_signature() {
        let mut t = table();
        let h = hash_of(3, 12_345);
        t.insert(h, TCP, value(4), 0, Some(TCP_SYN));
        assert_eq!(t.lookup(h | 0b11, 1, None), Some(value(4)));
        assert_eq!(t.lookup(h | (1u64 << 63), 1, None), Some(value(4)));
        assert_eq!(t.lookup(hash_of(3, 12_346), 1, None), None);
        assert_eq!(t.lookup(hash_of(4, 12_345), 1, None), None);
        // A hash whose signature bits are all zero still has a (nonzero) signature of its own.
        let zero = hash_of(5, 0);
        t.insert(zero, UDP, value(2), 0, None);
        assert_eq!(t.lookup(zero, 1, None), Some(value(2)));
        assert_eq!(t.count_live(1), 2);
    }

    #[test]
    fn tally_live_counts_per_backend_in_slices_and_skips_expired_and_rejected() {
        let mut t = table();
        for port in 0..300u16 {
            insert(&mut t, &udp(port), value(u32::from(port % 3)), 0, None);
        }
        // Expired: 3 s UDP timeout; and a tag the caller rejects.
        insert(&mut t, &udp(5000), value(0), 0, None);
        insert(&mut t, &udp(5001), ConnValue { backend: 1, tag: 99 }, 2_500, None);
        for port in 0..300u16 {
            assert!(lookup(&mut t, &udp(port), 2_000, None).is_some());
        }
        let mut counts = [0u64; 2];
        let mut cursor = 0;
        let mut slices = 0;
        loop {
            cursor = t.tally_live(cursor, 7, 4_000, &mut counts, |v| v.tag == 7);
            slices += 1;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(slices, t.bucket_count().div_ceil(7));
        // Backend 2's entries are beyond `counts` and skipped; the expired and the rejected ones too.
        assert_eq!(counts, [100, 100]);
        // Out of range start: nothing counted, cursor back to 0.
        assert_eq!(t.tally_live(usize::MAX, 7, 4_000, &mut counts, |_| true), 0);
        assert_eq!(counts, [100, 100]);
    }

    #[test]
    fn tcp_established_entry_lives_for_the_established_timeout() {
        let mut t = table();
        let k = tcp(1);
        let h = flow_hash(&k);
        insert(&mut t, &k, value(1), 0, Some(TCP_SYN));
        // Longer than the closing and UDP timeouts, exactly the established one: still live.
        assert_eq!(t.lookup(h, 10_000, Some(TCP_ACK)), Some(value(1)));
        assert_eq!(t.count_live(20_000), 1);
        assert_eq!(t.count_live(20_001), 0);
        assert_eq!(t.lookup(h, 20_001, Some(TCP_ACK)), None);
        // The expired entry was removed, not just hidden.
        assert_eq!(t.lookup(h, 20_001, Some(TCP_ACK)), None);
        assert!(!t.remove(h));
    }

    #[test]
    fn fin_moves_entry_to_the_closing_timeout_and_keeps_its_backend_until_then() {
        let mut t = table();
        let k = tcp(2);
        let h = flow_hash(&k);
        insert(&mut t, &k, value(5), 0, Some(TCP_SYN));
        assert_eq!(t.lookup(h, 100, Some(FIN_ACK)), Some(value(5)));
        // Packets after the FIN (the last ACKs) still reach the same backend.
        assert_eq!(t.lookup(h, 1_100, Some(TCP_ACK)), Some(value(5)));
        // A plain ACK does not bring the entry back to established.
        assert_eq!(t.count_live(2_100), 1);
        assert_eq!(t.lookup(h, 2_101, Some(TCP_ACK)), None);
    }

    #[test]
    fn rst_moves_entry_to_the_closing_timeout() {
        let mut t = table();
        let k = tcp(3);
        let h = flow_hash(&k);
        insert(&mut t, &k, value(5), 0, Some(TCP_SYN));
        assert_eq!(t.lookup(h, 0, Some(TCP_RST)), Some(value(5)));
        assert_eq!(t.lookup(h, 1_001, Some(TCP_ACK)), None);
    }

    #[test]
    fn insert_with_fin_starts_closing() {
        let mut t = table();
        insert(&mut t, &tcp(4), value(5), 0, Some(FIN_ACK));
        assert_eq!(t.count_live(1_000), 1);
        assert_eq!(t.count_live(1_001), 0);
    }

    #[test]
    fn udp_and_other_protocols_use_the_udp_timeout_and_ignore_tcp_flags() {
        let mut t = table();
        let u = udp(5353);
        let sctp = FlowKey { proto: 132, ..tcp(9) };
        insert(&mut t, &u, value(1), 0, None);
        // Flags on a non-TCP flow (a caller bug) change nothing.
        insert(&mut t, &sctp, value(2), 0, Some(TCP_FIN));
        assert_eq!(lookup(&mut t, &u, 2_000, Some(TCP_RST)), Some(value(1)));
        assert_eq!(lookup(&mut t, &sctp, 2_000, Some(TCP_SYN)), Some(value(2)));
        assert_eq!(t.count_live(5_000), 2);
        assert_eq!(lookup(&mut t, &u, 5_001, None), None);
        assert_eq!(lookup(&mut t, &sctp, 5_001, None), None);
    }

    #[test]
    fn syn_after_close_resets_the_entry() {
        let mut t = table();
        let k = tcp(6);
        let h = flow_hash(&k);
        insert(&mut t, &k, value(1), 0, Some(TCP_SYN));
        // A retransmitted SYN on an established flow keeps it.
        assert_eq!(t.lookup(h, 5, Some(TCP_SYN)), Some(value(1)));
        assert_eq!(t.lookup(h, 10, Some(FIN_ACK)), Some(value(1)));
        // A SYN-ACK is the server's side of a handshake, not a new connection.
        assert_eq!(t.lookup(h, 15, Some(TCP_SYN | TCP_ACK)), Some(value(1)));
        assert_eq!(t.lookup(h, 20, Some(TCP_SYN)), None);
        assert_eq!(t.stats().reset_by_syn, 1);
        assert_eq!(t.lookup(h, 21, Some(TCP_ACK)), None);
        assert_eq!(t.count_live(21), 0);
    }

    #[test]
    fn eviction_prefers_an_expired_entry_then_the_least_recently_used() {
        let mut t = table();
        let bucket = 100;
        let keys: Vec<FlowKey> = (0..6).map(tcp).collect();
        let hash = |i: usize| hash_in_bucket(&keys[i], bucket);
        for (i, key) in keys.iter().enumerate().take(WAYS) {
            let flags = if i == 2 { FIN_ACK } else { TCP_SYN };
            t.insert(hash(i), key.proto, value(i as u32), 10 * i as u64, Some(flags));
        }
        assert_eq!(t.count_live(30), 4);
        // At 2000, key 2 (closing since 20) has expired; key 1, seen last at 10, is the oldest
        // live one once the others are refreshed.
        for i in [0, 3] {
            assert_eq!(t.lookup(hash(i), 2_000 + i as u64, None), Some(value(i as u32)));
        }
        t.insert(hash(4), TCP, value(4), 2_100, Some(TCP_SYN));
        assert_eq!((t.stats().evicted_expired, t.stats().evicted_lru), (1, 0));
        assert_eq!(t.count_live(2_100), 4);
        t.insert(hash(5), TCP, value(5), 2_200, Some(TCP_SYN));
        assert_eq!((t.stats().evicted_expired, t.stats().evicted_lru), (1, 1));
        assert_eq!(t.lookup(hash(1), 2_300, None), None, "LRU entry should be gone");
        assert_eq!(t.lookup(hash(2), 2_300, None), None, "expired entry should be gone");
        for i in [0, 3, 4, 5] {
            assert_eq!(t.lookup(hash(i), 2_300, None), Some(value(i as u32)), "key {i}");
        }
    }

    #[test]
    fn a_full_bucket_does_not_disturb_its_neighbours() {
        let mut t = table();
        let keys: Vec<FlowKey> = (0..20).map(tcp).collect();
        let neighbour = udp(1);
        t.insert(hash_in_bucket(&neighbour, 6), UDP, value(99), 0, None);
        for (i, k) in keys.iter().enumerate() {
            t.insert(hash_in_bucket(k, 5), UDP, value(i as u32), i as u64, None);
        }
        assert_eq!(t.stats().evicted_lru, 16);
        assert_eq!(t.lookup(hash_in_bucket(&neighbour, 6), 100, None), Some(value(99)));
        // The 4 most recent survive.
        for (i, k) in keys.iter().enumerate() {
            let found = t.lookup(hash_in_bucket(k, 5), 100, None);
            assert_eq!(found, (i >= 16).then(|| value(i as u32)), "key {i}");
        }
    }

    #[test]
    fn capacity_is_four_slots_per_flow_rounded_up_to_a_power_of_two_buckets() {
        for (asked, got) in [
            (0, 4),
            (1, 4),
            (2, 8),
            (3, 16),
            (100, 512),
            (1_000, 4_096),
            (10_000, 65_536),
            (1_000_000, 4_194_304),
        ] {
            assert_eq!(ConnTable::new(asked, TIMEOUTS).capacity(), got, "capacity {asked}");
        }
        assert_eq!(ConnTable::new(1_000_000, TIMEOUTS).memory_bytes(), 64 << 20);
        assert_eq!(bucket_count_for(usize::MAX), 1 << 32);
    }

    #[test]
    fn insert_overwrites_an_existing_flow() {
        let mut t = table();
        let k = tcp(7);
        insert(&mut t, &k, value(1), 0, Some(TCP_SYN));
        insert(&mut t, &k, value(2), 10, Some(TCP_ACK));
        assert_eq!(t.count_live(10), 1);
        assert_eq!(t.occupied(), 1);
        assert_eq!(lookup(&mut t, &k, 20, None), Some(value(2)));
        assert_eq!(t.stats().inserts, 2);
    }

    #[test]
    fn overwriting_a_closing_flow_keeps_it_closing_unless_it_is_a_new_syn() {
        let mut t = table();
        let (a, b) = (tcp(8), tcp(9));
        for k in [&a, &b] {
            insert(&mut t, k, value(1), 0, Some(TCP_SYN));
            assert_eq!(lookup(&mut t, k, 10, Some(FIN_ACK)), Some(value(1)));
        }
        insert(&mut t, &a, value(2), 20, Some(TCP_ACK));
        insert(&mut t, &b, value(2), 20, Some(TCP_SYN));
        assert_eq!(t.count_live(1_020), 2);
        assert_eq!(lookup(&mut t, &a, 1_021, None), None);
        assert_eq!(lookup(&mut t, &b, 1_021, None), Some(value(2)));
    }

    #[test]
    fn remove_deletes_only_that_flow() {
        let mut t = table();
        let (a, b) = (hash_in_bucket(&tcp(10), 1), hash_in_bucket(&tcp(11), 1));
        t.insert(a, TCP, value(1), 0, None);
        t.insert(b, TCP, value(2), 0, None);
        assert!(t.remove(a));
        assert!(!t.remove(a));
        assert!(!t.remove(flow_hash(&udp(1))));
        assert_eq!(t.lookup(a, 1, None), None);
        assert_eq!(t.lookup(b, 1, None), Some(value(2)));
    }

    #[test]
    fn clear_empties_the_table_and_keeps_the_stats() {
        let mut t = table();
        for port in 0..100 {
            insert(&mut t, &tcp(port), value(1), 0, None);
        }
        assert_eq!(t.count_live(0), 100);
        t.clear();
        assert_eq!(t.count_live(0), 0);
        assert_eq!(lookup(&mut t, &tcp(5), 0, None), None);
        assert_eq!(t.stats().inserts, 100);
    }

    /// The choice to classify ahead in memory follows the entries a table holds, not its size:
    /// fwd's default table is made for a million flows, and at 10 000 it is cache-resident. The
    /// threshold is a bucket line per occupied slot against CACHE_RESIDENT_BYTES (8 MiB):
    /// 131 072 entries.
    #[test]
    fn a_large_table_outgrows_the_caches_only_once_it_holds_enough_flows() {
        let mut t = ConnTable::new(1 << 20, TIMEOUTS);
        let threshold = CACHE_RESIDENT_BYTES / LINE_PER_FLOW_BYTES;
        assert_eq!(threshold, 131_072);
        let hash = |i: usize| {
            flow_hash(&FlowKey::v4(
                [198, 18, (i >> 16) as u8, (i >> 8) as u8],
                [198, 19, 0, 1],
                17,
                i as u16,
                53,
            ))
        };
        let mut i = 0;
        while t.occupied() < threshold {
            t.insert(hash(i), UDP, value(1), 0, None);
            i += 1;
            assert!(!t.outgrows_cache(), "outgrew the caches at {} entries", t.occupied());
        }
        assert_eq!(t.stats().evicted_lru, 0);
        t.insert(hash(i), UDP, value(1), 0, None);
        assert_eq!(t.occupied(), threshold + 1);
        assert!(t.outgrows_cache());
        // Flows that end bring it back: removed, expired on lookup, or swept by inserts.
        assert!(t.remove(hash(i)));
        assert!(!t.outgrows_cache());
        assert_eq!(t.lookup(hash(0), u64::from(TIMEOUTS.udp_ms) + 1, None), None);
        assert_eq!(t.occupied(), threshold - 1);
        t.clear();
        assert_eq!(t.occupied(), 0);
        // A table no larger than the caches never outgrows them, however full.
        let mut small = ConnTable::new(4096, TIMEOUTS);
        for i in 0..100_000 {
            small.insert(hash(i), UDP, value(1), 0, None);
        }
        assert_eq!(small.occupied(), small.capacity());
        assert!(!small.outgrows_cache());
    }

    #[test]
    fn clock_wraps_around_u32_milliseconds() {
        let mut t = table();
        let wrap = 1u64 << 32;
        let (k, u) = (tcp(12), udp(12));
        insert(&mut t, &k, value(1), wrap - 500, None);
        insert(&mut t, &u, value(2), wrap - 100, None);
        assert_eq!(lookup(&mut t, &k, wrap + 500, None), Some(value(1)));
        assert_eq!(lookup(&mut t, &u, wrap + 2_900, None), Some(value(2)));
        assert_eq!(lookup(&mut t, &u, wrap + 5_901, None), None);
        assert_eq!(t.count_live(wrap + 10_500), 1);
        assert_eq!(t.count_live(wrap + 10_501), 0);
    }

    #[test]
    fn sweep_reclaims_expired_entries_before_their_age_can_wrap() {
        // Two buckets: each insert sweeps the next one, so two inserts visit both.
        let mut t = ConnTable::new(2, TIMEOUTS);
        assert_eq!(t.bucket_count(), 2);
        let (idle, b, c) = (hash_of(0, 1), hash_of(1, 2), hash_of(1, 3));
        t.insert(idle, UDP, value(1), 0, None);
        t.insert(b, UDP, value(2), 10_000, None);
        t.insert(c, UDP, value(3), 10_000, None);
        assert_eq!(t.stats().evicted_expired, 1);
        // 2^32 + 5 ms later the truncated age would be 5 ms: the entry must be gone, not revived.
        assert_eq!(t.lookup(idle, (1 << 32) + 5, None), None);
    }

    #[test]
    fn any_hash_value_is_safe() {
        let mut t = ConnTable::new(1, TIMEOUTS);
        for h in [0, 1, 3, u64::MAX, 0xffff_ffff, 0xffff_ffff_0000_0000, 0x8000_0000_0000_0003] {
            t.prefetch::<LoadPrefetch>(h);
            t.prefetch_insert::<LoadPrefetch>(h);
            t.insert(h, TCP, value(1), 0, Some(0xff));
            assert_eq!(t.lookup(h, 0, None), Some(value(1)));
            assert!(t.remove(h));
        }
    }

    // ---- property tests ----

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum ModelState {
        Established,
        Closing,
        Other,
    }

    #[derive(Clone, Copy, Debug)]
    struct ModelEntry {
        value: ConnValue,
        state: ModelState,
        last_seen: u64,
    }

    /// The table's rules, written plainly over a HashMap with full 64-bit times, keyed by flow.
    #[derive(Default)]
    struct Model {
        entries: HashMap<FlowKey, ModelEntry>,
        stats: ConnStats,
    }

    impl Model {
        fn timeout(state: ModelState) -> u64 {
            u64::from(match state {
                ModelState::Established => TIMEOUTS.tcp_established_ms,
                ModelState::Closing => TIMEOUTS.tcp_closing_ms,
                ModelState::Other => TIMEOUTS.udp_ms,
            })
        }

        fn live(&self, key: &FlowKey, now: u64) -> Option<&ModelEntry> {
            self.entries.get(key).filter(|e| now - e.last_seen <= Self::timeout(e.state))
        }

        fn lookup(&mut self, key: &FlowKey, now: u64, flags: Option<u8>) -> Option<ConnValue> {
            let Some(entry) = self.live(key, now).copied() else {
                self.entries.remove(key);
                self.stats.misses += 1;
                return None;
            };
            let fin_or_rst = flags.is_some_and(|f| f & (TCP_FIN | TCP_RST) != 0);
            let new_syn = flags.is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
            let state = match entry.state {
                ModelState::Closing if new_syn => {
                    self.entries.remove(key);
                    self.stats.reset_by_syn += 1;
                    self.stats.misses += 1;
                    return None;
                }
                ModelState::Established if fin_or_rst => ModelState::Closing,
                state => state,
            };
            self.entries.insert(*key, ModelEntry { state, last_seen: now, ..entry });
            self.stats.hits += 1;
            Some(entry.value)
        }

        fn insert(&mut self, key: &FlowKey, value: ConnValue, now: u64, flags: Option<u8>) {
            let fin_or_rst = flags.is_some_and(|f| f & (TCP_FIN | TCP_RST) != 0);
            let new_syn = flags.is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
            let was_closing = self.live(key, now).is_some_and(|e| e.state == ModelState::Closing);
            let state = if key.proto != TCP {
                ModelState::Other
            } else if fin_or_rst || (was_closing && !new_syn) {
                ModelState::Closing
            } else {
                ModelState::Established
            };
            self.entries.insert(*key, ModelEntry { value, state, last_seen: now });
            self.stats.inserts += 1;
        }

        fn count_live(&self, now: u64) -> usize {
            self.entries.keys().filter(|k| self.live(k, now).is_some()).count()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Lookup { key: usize, flags: Option<u8> },
        Insert { key: usize, backend: u32, flags: Option<u8> },
        Remove { key: usize },
        CountLive,
        Advance { ms: u64 },
    }

    fn flags() -> impl Strategy<Value = Option<u8>> {
        prop_oneof![
            Just(None),
            Just(Some(TCP_ACK)),
            Just(Some(TCP_SYN)),
            Just(Some(TCP_SYN | TCP_ACK)),
            Just(Some(FIN_ACK)),
            Just(Some(TCP_RST)),
            any::<u8>().prop_map(Some),
        ]
    }

    fn op(keys: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..keys, flags()).prop_map(|(key, flags)| Op::Lookup { key, flags }),
            3 => (0..keys, 0..4u32, flags()).prop_map(|(key, backend, flags)| Op::Insert { key, backend, flags }),
            1 => (0..keys).prop_map(|key| Op::Remove { key }),
            1 => Just(Op::CountLive),
            3 => prop_oneof![0..50u64, 0..4_000u64, Just(1_000u64), Just(1_001u64)].prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// Keys alternate TCP and UDP, v4 and v6.
    fn model_key(i: usize) -> FlowKey {
        let port = 1000 + i as u16;
        if i.is_multiple_of(2) {
            tcp(port)
        } else {
            udp(port)
        }
    }

    /// No bucket holds a signature twice: every flow has one slot at most.
    fn assert_no_duplicate_signatures(t: &ConnTable) {
        for (b, bucket) in t.buckets.iter().enumerate() {
            let mut seen = HashSet::new();
            for word in bucket.words.iter().filter(|&&w| w != STATE_EMPTY) {
                assert!(seen.insert(word & !STATE_MASK), "signature {word:#x} twice in bucket {b}");
            }
        }
    }

    /// Slots holding an entry, counted the slow way.
    fn occupied_slots(t: &ConnTable) -> usize {
        t.buckets.iter().flat_map(|b| b.words.iter()).filter(|&&w| w != STATE_EMPTY).count()
    }

    const MODEL_KEYS: usize = 32;

    proptest! {
        /// On a table that never has to evict (32 flows, 4 in each of 8 buckets, signatures
        /// shared across buckets on purpose), every answer matches the model exactly, across the
        /// u32 clock wrap too.
        #[test]
        fn table_matches_a_hashmap_model(
            start in prop_oneof![Just(0u64), Just((1u64 << 32) - 5_000), any::<u32>().prop_map(u64::from)],
            ops in proptest::collection::vec(op(MODEL_KEYS), 1..300),
        ) {
            let mut t = ConnTable::new(MODEL_KEYS, TIMEOUTS);
            let mut model = Model::default();
            let keys: Vec<FlowKey> = (0..MODEL_KEYS).map(model_key).collect();
            // Bucket i / 4, signature i % 4 + 1: the same four signatures in every bucket.
            let hashes: Vec<u64> = (0..MODEL_KEYS).map(|i| hash_of(i as u64 / 4, i as u32 % 4 + 1)).collect();
            let mut now = start;
            for op in ops {
                match op {
                    Op::Lookup { key, flags } => {
                        let got = t.lookup(hashes[key], now, flags);
                        prop_assert_eq!(got, model.lookup(&keys[key], now, flags), "lookup {} at {}", key, now);
                    }
                    Op::Insert { key, backend, flags } => {
                        t.insert(hashes[key], keys[key].proto, value(backend), now, flags);
                        model.insert(&keys[key], value(backend), now, flags);
                    }
                    Op::Remove { key } => {
                        let removed = t.remove(hashes[key]);
                        // An expired entry may or may not have been swept already.
                        if model.live(&keys[key], now).is_some() {
                            prop_assert!(removed, "live key {} not removed", key);
                        } else if !model.entries.contains_key(&keys[key]) {
                            prop_assert!(!removed, "absent key {} removed", key);
                        }
                        model.entries.remove(&keys[key]);
                    }
                    Op::CountLive => prop_assert_eq!(t.count_live(now), model.count_live(now)),
                    Op::Advance { ms } => now += ms,
                }
                let stats = t.stats();
                prop_assert_eq!(
                    (stats.hits, stats.misses, stats.inserts, stats.reset_by_syn, stats.evicted_lru),
                    (model.stats.hits, model.stats.misses, model.stats.inserts, model.stats.reset_by_syn, 0)
                );
                prop_assert_eq!(t.occupied(), occupied_slots(&t));
            }
            prop_assert_eq!(t.count_live(now), model.count_live(now));
            assert_no_duplicate_signatures(&t);
        }

        /// On a tiny table that evicts all the time: never more live entries than the capacity,
        /// a just-inserted flow is found, no flow is stored twice, every lookup is counted.
        #[test]
        fn tiny_table_keeps_its_invariants(
            capacity in 1usize..=16,
            start in prop_oneof![Just(0u64), Just((1u64 << 32) - 2_000)],
            ops in proptest::collection::vec(op(64), 1..400),
        ) {
            let mut t = ConnTable::new(capacity, TIMEOUTS);
            let keys: Vec<FlowKey> = (0..64).map(model_key).collect();
            let mut now = start;
            let mut lookups = 0;
            for op in ops {
                match op {
                    Op::Lookup { key, flags } => {
                        lookup(&mut t, &keys[key], now, flags);
                        lookups += 1;
                    }
                    Op::Insert { key, backend, flags } => {
                        let k = &keys[key];
                        insert(&mut t, k, value(backend), now, flags);
                        prop_assert_eq!(lookup(&mut t, k, now, None), Some(value(backend)));
                        lookups += 1;
                    }
                    Op::Remove { key } => {
                        let h = flow_hash(&keys[key]);
                        t.remove(h);
                        prop_assert_eq!(t.lookup(h, now, None), None);
                        lookups += 1;
                    }
                    Op::CountLive => {}
                    Op::Advance { ms } => now += ms,
                }
                prop_assert!(t.count_live(now) <= t.capacity());
                let stats = t.stats();
                prop_assert_eq!(stats.hits + stats.misses, lookups);
                prop_assert_eq!(t.occupied(), occupied_slots(&t));
            }
            assert_no_duplicate_signatures(&t);
        }
    }
}
