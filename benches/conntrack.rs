//! Connection table cost per packet: lookups that hit (with and without prefetching a batch) and
//! inserts into a full table, at a cache-resident size (10 000 entries) and a size far beyond the
//! caches (1 000 000), against `std::collections::HashMap` with the same keys as the peer.
//!
//! Every figure is for a batch of 32 packets (the worker's batch) and counts each packet's hashing:
//! XXH3 `flow_hash` for the table (the pipeline computes it anyway for Maglev; the `flow_hash`
//! row gives its share), SipHash inside the HashMap. Keys are visited in a random order.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the build
//! machines are shared, and a thread that waits for a core would otherwise be charged for other
//! people's work (cache pollution by others still shows).
//!
//! Run: `cargo bench --bench conntrack -- --measurement-time 3 --warm-up-time 1`.

mod common;
use common::iter_cpu;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fwd_afxdp::CpuPrefetch;
use fwd_dataplane::conntrack::{ConnTable, ConnValue, Timeouts};
use fwd_dataplane::flow::FlowKey;
use fwd_dataplane::hash::flow_hash;
use fwd_dataplane::prefetch::LoadPrefetch;
use std::collections::HashMap;
use std::hint::black_box;

const BATCH: usize = 32;

const TIMEOUTS: Timeouts = Timeouts { tcp_established_ms: 3_600_000, tcp_closing_ms: 10_000, udp_ms: 60_000 };

/// SplitMix64: a small deterministic generator, so every run sees the same keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// `count` distinct flows from clients in 198.18.0.0/16 to 16 VIPs in 198.19.0.0/24, the key
/// numbered `first + i` being unique, in random order.
fn make_keys(first: usize, count: usize, rng: &mut SplitMix) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = (first..first + count)
        .map(|n| {
            let r = rng.next();
            let client = (n & 0xffff) as u16;
            let src_port = 1024 + (n >> 16) as u16;
            let vip = 1 + (r & 15) as u8;
            let dst_port = if r & 16 == 0 { 80 } else { 443 };
            FlowKey::v4(
                [198, 18, (client >> 8) as u8, client as u8],
                [198, 19, 0, vip],
                if r & 32 == 0 { 6 } else { 17 },
                src_port,
                dst_port,
            )
        })
        .collect();
    rng.shuffle(&mut keys);
    keys
}

fn value_of(i: usize) -> ConnValue {
    ConnValue { backend: i as u32 % 64, tag: 1 }
}

/// Cycles through `len` items a batch at a time.
struct Cursor {
    pos: usize,
    len: usize,
}

impl Cursor {
    fn next_batch(&mut self) -> std::ops::Range<usize> {
        if self.pos + BATCH > self.len {
            self.pos = 0;
        }
        let start = self.pos;
        self.pos += BATCH;
        start..start + BATCH
    }
}

fn lookup_hits(c: &mut Criterion, entries: usize) {
    let mut rng = SplitMix(entries as u64);
    let keys = make_keys(0, entries, &mut rng);
    let mut table = ConnTable::new(entries, TIMEOUTS);
    for (i, k) in keys.iter().enumerate() {
        table.insert(flow_hash(k), k.proto, value_of(i), 0, Some(0x02));
    }
    // Buckets that drew more than 4 keys evicted some; time only keys that hit.
    let hit_keys: Vec<FlowKey> =
        keys.iter().copied().filter(|k| table.lookup(flow_hash(k), 1, None).is_some()).collect();
    let map: HashMap<FlowKey, ConnValue> =
        hit_keys.iter().enumerate().map(|(i, k)| (*k, value_of(i))).collect();
    eprintln!(
        "conntrack {entries}: capacity {}, {} of {} keys resident ({:.1}% of capacity)",
        table.capacity(),
        hit_keys.len(),
        keys.len(),
        100.0 * hit_keys.len() as f64 / table.capacity() as f64
    );

    let mut group = c.benchmark_group(format!("lookup_hit/{entries}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let now = 2;

    let mut cursor = Cursor { pos: 0, len: hit_keys.len() };
    group.bench_function("flow_hash only", |b| {
        iter_cpu(b, || {
            for k in &hit_keys[cursor.next_batch()] {
                black_box(flow_hash(black_box(k)));
            }
        })
    });

    // The batch loop of a worker: hash the batch, optionally prefetch it, then look it up. The
    // prefetch is either an ordinary load (the dataplane crate's portable `LoadPrefetch`) or the
    // CPU's prefetch instruction (`CpuPrefetch`, what fwd's workers use).
    for (name, prefetch) in [
        ("ConnTable", None::<fn(&ConnTable, u64)>),
        ("ConnTable prefetch", Some(ConnTable::prefetch::<LoadPrefetch> as fn(&ConnTable, u64))),
        ("ConnTable cpu prefetch", Some(ConnTable::prefetch::<CpuPrefetch> as fn(&ConnTable, u64))),
    ] {
        let mut cursor = Cursor { pos: 0, len: hit_keys.len() };
        group.bench_function(name, |b| {
            iter_cpu(b, || {
                let batch = &hit_keys[cursor.next_batch()];
                let mut hashes = [0u64; BATCH];
                for (h, k) in hashes.iter_mut().zip(batch) {
                    *h = flow_hash(k);
                }
                if let Some(prefetch) = prefetch {
                    for h in &hashes {
                        prefetch(&table, *h);
                    }
                }
                for h in &hashes {
                    black_box(table.lookup(*h, now, Some(0x10)));
                }
            })
        });
    }

    let mut cursor = Cursor { pos: 0, len: hit_keys.len() };
    group.bench_function("std HashMap", |b| {
        iter_cpu(b, || {
            for k in &hit_keys[cursor.next_batch()] {
                black_box(map.get(k));
            }
        })
    });
    group.finish();
}

/// A table for `entries` with every bucket full (twice its capacity inserted at time 0).
fn full_table(entries: usize, timeouts: Timeouts, keys: &[FlowKey]) -> ConnTable {
    let mut table = ConnTable::new(entries, timeouts);
    for (i, k) in keys.iter().enumerate().take(2 * table.capacity()) {
        table.insert(flow_hash(k), k.proto, value_of(i), 0, None);
    }
    table
}

/// Inserts of new flows into a table whose buckets are all full, so every insert evicts: the
/// least recently used entry when all are live, an expired one when every entry inserted before
/// the current batch has expired. The HashMap peer keeps its size by removing the key inserted
/// `entries` inserts before.
fn insert_full(c: &mut Criterion, entries: usize) {
    let mut rng = SplitMix(!(entries as u64));
    let capacity = ConnTable::new(entries, TIMEOUTS).capacity();
    // Four times the capacity: a key comes back only long after it was evicted.
    let keys = make_keys(0, 4 * capacity, &mut rng);

    let mut group = c.benchmark_group(format!("insert_full/{entries}"));
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut table = full_table(entries, TIMEOUTS, &keys);
    eprintln!("conntrack {entries}: {} live entries after filling", table.count_live(0));
    let mut cursor = Cursor { pos: 0, len: keys.len() };
    let mut now = 1u64;
    group.bench_function("ConnTable evict LRU", |b| {
        iter_cpu(b, || {
            for i in cursor.next_batch() {
                let k = &keys[i];
                table.insert(flow_hash(k), k.proto, value_of(i), now, None);
            }
            now += 1;
        })
    });
    let lru = table.stats();
    drop(table);

    // Timeouts of 1 ms and 2 ms per batch: everything inserted before the batch has expired.
    let short = Timeouts { tcp_established_ms: 1, tcp_closing_ms: 1, udp_ms: 1 };
    let mut table = full_table(entries, short, &keys);
    let mut cursor = Cursor { pos: 0, len: keys.len() };
    let mut now = 2u64;
    group.bench_function("ConnTable evict expired", |b| {
        iter_cpu(b, || {
            for i in cursor.next_batch() {
                let k = &keys[i];
                table.insert(flow_hash(k), k.proto, value_of(i), now, None);
            }
            now += 2;
        })
    });
    eprintln!("conntrack {entries}: LRU run {lru:?}; expired run {:?}", table.stats());
    drop(table);

    let mut map: HashMap<FlowKey, ConnValue> = HashMap::with_capacity(entries);
    for (i, k) in keys.iter().enumerate().take(entries) {
        map.insert(*k, value_of(i));
    }
    // The map holds the `entries` keys before `next` (modulo the key count).
    let mut next = entries;
    group.bench_function("std HashMap insert+remove", |b| {
        iter_cpu(b, || {
            for _ in 0..BATCH {
                let new = next % keys.len();
                map.insert(keys[new], value_of(new));
                map.remove(&keys[(next - entries) % keys.len()]);
                next += 1;
            }
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    for entries in [10_000, 1_000_000] {
        lookup_hits(c, entries);
        insert_full(c, entries);
    }
}

criterion_group!(conntrack, benches);
criterion_main!(conntrack);
