//! The per-worker connection table: which backend each flow was given.
//!
//! Maglev alone keeps most flows on their backend when the backend set changes, but not all; the
//! connection table pins every flow a worker has seen to the backend it was first given, so that
//! established connections survive backend changes. Each worker owns one table (no sharing, no
//! locks); it is allocated once at start and never grows.
//!
//! # Layout
//!
//! The table is set-associative, like a CPU cache: a flow can live only in the 8 slots of the
//! bucket picked by the high 32 bits of its flow hash (the low 32 bits pick the Maglev slot, see
//! [`crate::hash::reduce`], so the two stay independent). Each bucket is split in two parts kept in
//! separate arrays:
//!
//! * a 64-byte *header* (one cache line): per slot a 32-bit word holding a 30-bit signature taken
//!   from the low hash bits plus a 2-bit state (0 = empty), and the 32-bit last-seen time. A lookup
//!   compares the 8 signatures at once and an insert picks its victim (empty, then expired, then
//!   least recently used) without leaving this line;
//! * 8 entries of 48 bytes (key and value), read only for the slot whose signature matched.
//!
//! Keeping the headers in their own contiguous array means a miss (a new flow, or a SYN flood)
//! costs one cache line, the headers of a large table (an eighth of its memory) stay warmer in the
//! caches than the entries, and the expiry sweep below walks memory sequentially.
//!
//! # Time
//!
//! Times are milliseconds since the worker started, stored truncated to `u32` and compared with
//! wrapping subtraction, so an age is exact up to 2^32 ms (49.7 days). An entry idle longer than
//! that would look young again; to prevent it, every insert also sweeps one bucket (round robin)
//! and frees its expired entries, so an expired entry is reclaimed once the table has seen as many
//! inserts as it has buckets (131 072 for a million entries). Only a worker that sees fewer new
//! flows than that in 49 days can revive a flow idle that long, and even then the flow only gets
//! back the backend it had, which the pipeline validates against the current backend set on every
//! hit anyway.

use crate::flow::FlowKey;
use std::hint::black_box;

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

/// Slots per bucket.
const WAYS: usize = 8;

/// The state lives in the low 2 bits of a slot's header word; the other 30 are the signature.
const STATE_MASK: u32 = 0b11;
/// Empty slot: the whole word is zero (a signature is never zero).
const STATE_EMPTY: u32 = 0;
const STATE_TCP_ESTABLISHED: u32 = 1;
const STATE_TCP_CLOSING: u32 = 2;
const STATE_OTHER: u32 = 3;

/// One bucket's signatures, states and last-seen times: exactly one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct BucketHeader {
    /// `signature | state` per slot; 0 when the slot is empty.
    words: [u32; WAYS],
    /// Last time the slot's flow was seen, in ms truncated to u32.
    last_seen: [u32; WAYS],
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FlowKey,
    value: ConnValue,
}

const EMPTY_ENTRY: Entry = Entry {
    key: FlowKey { src: [0; 16], dst: [0; 16], src_port: 0, dst_port: 0, proto: 0 },
    value: ConnValue { backend: 0, tag: 0 },
};

/// One bucket's keys and values, aligned so a bucket starts on a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct EntryBucket([Entry; WAYS]);

/// A fixed-capacity, set-associative connection table owned by one worker.
#[derive(Debug)]
pub struct ConnTable {
    headers: Box<[BucketHeader]>,
    entries: Box<[EntryBucket]>,
    /// Bucket count - 1 (the bucket count is a power of two).
    bucket_mask: usize,
    /// Idle timeout per state, indexed by the 2-bit state.
    timeout_by_state: [u32; 4],
    /// Next bucket the insert-time sweep visits.
    sweep_cursor: usize,
    stats: ConnStats,
}

/// The bucket count for a requested capacity: a power of two holding at least `capacity` entries.
/// Capped at 2^32 buckets, since the bucket index comes from 32 hash bits.
fn bucket_count_for(capacity: usize) -> usize {
    let wanted = capacity.max(1).div_ceil(WAYS);
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

/// Bit `i` set when slot `i` holds the signature `sig` (in any non-empty state).
#[inline(always)]
fn signature_matches(header: &BucketHeader, sig: u32) -> u32 {
    let mut found = 0u32;
    for (i, word) in header.words.iter().enumerate() {
        found |= u32::from(word & !STATE_MASK == sig) << i;
    }
    found
}

#[inline(always)]
fn has_flag(tcp_flags: Option<u8>, flag: u8) -> bool {
    matches!(tcp_flags, Some(f) if f & flag != 0)
}

/// A SYN without ACK: a client opening a connection (possibly reusing a closed one's ports).
#[inline(always)]
fn is_new_syn(tcp_flags: Option<u8>) -> bool {
    matches!(tcp_flags, Some(f) if f & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

impl ConnTable {
    /// A table holding at least `capacity` entries (0 is taken as 1): the capacity is rounded up
    /// to a power-of-two number of 8-entry buckets, see [`ConnTable::capacity`]. All memory is
    /// allocated here: about 56 bytes per entry.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let buckets = bucket_count_for(capacity);
        ConnTable {
            headers: vec![BucketHeader::default(); buckets].into_boxed_slice(),
            entries: vec![EntryBucket([EMPTY_ENTRY; WAYS]); buckets].into_boxed_slice(),
            bucket_mask: buckets - 1,
            timeout_by_state: [0, timeouts.tcp_established_ms, timeouts.tcp_closing_ms, timeouts.udp_ms],
            sweep_cursor: 0,
            stats: ConnStats::default(),
        }
    }

    /// The number of entries the table holds when every bucket is full.
    pub fn capacity(&self) -> usize {
        self.headers.len() * WAYS
    }

    #[inline(always)]
    fn bucket_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.bucket_mask
    }

    #[inline(always)]
    fn is_expired(&self, word: u32, last_seen: u32, now: u32) -> bool {
        now.wrapping_sub(last_seen) > self.timeout_by_state[(word & STATE_MASK) as usize]
    }

    /// The live entry for the flow, if any; see the module documentation for the rules.
    ///
    /// A hit refreshes the entry's last-seen time. For TCP entries, `tcp_flags` (the flags byte of
    /// the packet) moves the entry to the closing state on FIN or RST, and a SYN without ACK on a
    /// closing entry (a new connection reusing the ports) removes it and returns `None`. Expired
    /// entries found here are removed and miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u64, now_ms: u64, tcp_flags: Option<u8>) -> Option<ConnValue> {
        let now = now_ms as u32;
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        let (Some(header), Some(bucket)) = (self.headers.get_mut(b), self.entries.get(b)) else {
            self.stats.misses += 1;
            return None;
        };
        let mut candidates = signature_matches(header, sig);
        while candidates != 0 {
            let slot = candidates.trailing_zeros() as usize % WAYS;
            candidates &= candidates - 1;
            let Some(entry) = bucket.0.get(slot) else { break };
            if entry.key != *key {
                continue;
            }
            let word = header.words[slot];
            let mut state = word & STATE_MASK;
            let idle = now.wrapping_sub(header.last_seen[slot]);
            if idle > self.timeout_by_state[state as usize] {
                header.words[slot] = 0;
                self.stats.misses += 1;
                return None;
            }
            if state != STATE_OTHER {
                if state == STATE_TCP_CLOSING && is_new_syn(tcp_flags) {
                    header.words[slot] = 0;
                    self.stats.reset_by_syn += 1;
                    self.stats.misses += 1;
                    return None;
                }
                if has_flag(tcp_flags, TCP_FIN | TCP_RST) {
                    state = STATE_TCP_CLOSING;
                }
            }
            header.words[slot] = sig | state;
            header.last_seen[slot] = now;
            self.stats.hits += 1;
            return Some(entry.value);
        }
        self.stats.misses += 1;
        None
    }

    /// Records (or overwrites) the flow's backend, evicting if the bucket is full: an expired
    /// entry if the bucket has one, else its least recently used entry.
    ///
    /// A TCP entry starts in the closing state if `tcp_flags` has FIN or RST; overwriting a live
    /// closing entry keeps it closing unless the packet is a new SYN.
    #[inline]
    pub fn insert(&mut self, key: &FlowKey, hash: u64, value: ConnValue, now_ms: u64, tcp_flags: Option<u8>) {
        let now = now_ms as u32;
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        self.stats.inserts += 1;
        let timeouts = self.timeout_by_state;
        if let (Some(header), Some(bucket)) = (self.headers.get_mut(b), self.entries.get_mut(b)) {
            let mut existing = None;
            let mut candidates = signature_matches(header, sig);
            while candidates != 0 {
                let slot = candidates.trailing_zeros() as usize % WAYS;
                candidates &= candidates - 1;
                if bucket.0.get(slot).is_some_and(|e| e.key == *key) {
                    existing = Some(slot);
                    break;
                }
            }
            let mut state = STATE_OTHER;
            if key.proto == TCP {
                let was_closing = existing.is_some_and(|slot| {
                    header.words[slot % WAYS] & STATE_MASK == STATE_TCP_CLOSING
                        && now.wrapping_sub(header.last_seen[slot % WAYS])
                            <= timeouts[STATE_TCP_CLOSING as usize]
                });
                state = if has_flag(tcp_flags, TCP_FIN | TCP_RST) || (was_closing && !is_new_syn(tcp_flags)) {
                    STATE_TCP_CLOSING
                } else {
                    STATE_TCP_ESTABLISHED
                };
            }
            let slot = match existing {
                Some(slot) => slot,
                None => Self::pick_victim(header, now, &timeouts, &mut self.stats),
            } % WAYS;
            header.words[slot] = sig | state;
            header.last_seen[slot] = now;
            if let Some(entry) = bucket.0.get_mut(slot) {
                *entry = Entry { key: *key, value };
            }
        }
        self.sweep_one_bucket(now);
    }

    /// The slot a new entry goes to: an empty one, else an expired one, else the least recently
    /// used one. Counts evictions.
    #[inline(always)]
    fn pick_victim(header: &BucketHeader, now: u32, timeouts: &[u32; 4], stats: &mut ConnStats) -> usize {
        let mut oldest = 0;
        let mut oldest_idle = 0;
        let mut expired = None;
        for slot in 0..WAYS {
            let word = header.words[slot];
            if word == STATE_EMPTY {
                return slot;
            }
            let idle = now.wrapping_sub(header.last_seen[slot]);
            if idle > timeouts[(word & STATE_MASK) as usize] {
                expired = expired.or(Some(slot));
            }
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
        if let Some(header) = self.headers.get_mut(b) {
            for slot in 0..WAYS {
                let word = header.words[slot];
                let idle = now.wrapping_sub(header.last_seen[slot]);
                if word != STATE_EMPTY && idle > timeouts[(word & STATE_MASK) as usize] {
                    header.words[slot] = STATE_EMPTY;
                    self.stats.evicted_expired += 1;
                }
            }
        }
    }

    /// Removes the flow's entry. True if there was one (possibly expired but not yet reclaimed).
    pub fn remove(&mut self, key: &FlowKey, hash: u64) -> bool {
        let b = self.bucket_index(hash);
        let sig = signature(hash);
        let (Some(header), Some(bucket)) = (self.headers.get_mut(b), self.entries.get(b)) else {
            return false;
        };
        let mut candidates = signature_matches(header, sig);
        while candidates != 0 {
            let slot = candidates.trailing_zeros() as usize % WAYS;
            candidates &= candidates - 1;
            if bucket.0.get(slot).is_some_and(|e| e.key == *key) {
                header.words[slot] = STATE_EMPTY;
                return true;
            }
        }
        false
    }

    /// Entries not expired as of `now_ms`. Walks the whole table: for stats, not per packet.
    pub fn count_live(&self, now_ms: u64) -> usize {
        let now = now_ms as u32;
        self.headers
            .iter()
            .flat_map(|h| h.words.iter().zip(h.last_seen.iter()))
            .filter(|&(&word, &last_seen)| word != STATE_EMPTY && !self.is_expired(word, last_seen, now))
            .count()
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Starts loading the flow's bucket header into the cache, so that a lookup a few packets
    /// later does not wait for memory. Call it for a batch of packets before looking them up.
    ///
    /// Stable Rust has no safe prefetch instruction (`_mm_prefetch` needs `unsafe` outside a
    /// `#[target_feature]` function and `core::hint::prefetch_read` is unstable), so this issues an
    /// ordinary load whose value is discarded: the out-of-order core keeps going while the line
    /// arrives, which overlaps the misses of a batch like a prefetch would.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(header) = self.headers.get(self.bucket_index(hash)) {
            black_box(header.words[0]);
        }
    }

    /// Removes every entry. Statistics are kept.
    pub fn clear(&mut self) {
        self.headers.fill(BucketHeader::default());
        self.sweep_cursor = 0;
    }
}
