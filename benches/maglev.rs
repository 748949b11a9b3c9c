//! Maglev table build and lookup: fwd's weighted Maglev against the `maglev` crate (0.2).
//!
//! Both build from the same backend identities (198.18.x.y:80, as fwd's [`BackendKey`]) and the
//! same table size. The crate hashes each node with `std`'s `DefaultHasher` (SipHash-1-3) seeded by
//! a prefix word, rounds the capacity up to the next prime with a sieve (part of its build, as
//! here: 65537 and 655373 are prime, so both tables have the same size), precomputes every
//! member's whole permutation (`members x M` words) and has no weights. Its lookup hashes the key
//! itself and reduces with `%`; fwd's lookup takes the flow hash the worker already has.
//!
//! Build times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), as in the other
//! benches: the build machines are shared. `fwd_with_fingerprint` adds the table fingerprint,
//! which the build leaves to its first use.
//!
//! Run: `cargo bench --bench maglev -- --measurement-time 3 --warm-up-time 1`.

mod common;
use common::iter_cpu;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use fwd_dataplane::flow::FlowKey;
use fwd_dataplane::hash::flow_hash;
use fwd_dataplane::maglev::{BackendKey, MaglevMember, MaglevTable};
use maglev::{ConsistentHasher, Maglev};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const SIZES: [u32; 2] = [65537, 655373];
const BACKEND_COUNTS: [usize; 3] = [10, 100, 1000];
/// Lookups per iteration: enough to hide the loop, few enough to stay in L1.
const LOOKUP_BATCH: usize = 1024;

fn backend_keys(count: usize) -> Vec<BackendKey> {
    (0..count as u32)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 1 + i);
            BackendKey::new(IpAddr::V4(addr), Some(80))
        })
        .collect()
}

fn equal_members(keys: &[BackendKey]) -> Vec<MaglevMember> {
    keys.iter().map(|&key| MaglevMember { key, weight: 1 }).collect()
}

/// xorshift64*: reproducible pseudo-random inputs without another dependency.
fn pseudo_random(count: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        })
        .collect()
}

fn flow_keys(count: usize) -> Vec<FlowKey> {
    pseudo_random(count)
        .into_iter()
        .map(|r| {
            let src = [198, 18, (r >> 8) as u8, r as u8];
            FlowKey::v4(src, [198, 19, 0, 1], 6, (r >> 16) as u16, 443)
        })
        .collect()
}

fn build(c: &mut Criterion) {
    for size in SIZES {
        let mut group = c.benchmark_group(format!("maglev_build/M={size}"));
        if size > 100_000 {
            // The crate's build allocates members x M words (5 GB at 1000 x 655373) and takes
            // seconds: a few flat samples are all this machine can afford.
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
        } else {
            group.sample_size(20);
        }
        for count in BACKEND_COUNTS {
            let keys = backend_keys(count);
            let members = equal_members(&keys);
            // Each iteration allocates, builds and frees its table, in the thread's CPU time.
            group.bench_with_input(BenchmarkId::new("fwd", count), &members, |b, members| {
                iter_cpu(b, || {
                    black_box(MaglevTable::build(black_box(members), size).expect("valid table"));
                })
            });
            // The fingerprint is computed on first use, off the path that publishes a table to
            // the workers; this row is the build plus that first use (an operator's report).
            group.bench_with_input(
                BenchmarkId::new("fwd_with_fingerprint", count),
                &members,
                |b, members| {
                    iter_cpu(b, || {
                        let table = MaglevTable::build(black_box(members), size).expect("valid table");
                        black_box(table.fingerprint());
                    })
                },
            );
            group.bench_with_input(BenchmarkId::new("maglev_crate", count), &keys, |b, keys| {
                iter_cpu(b, || {
                    black_box(Maglev::with_capacity(black_box(keys).iter().copied(), size as usize));
                })
            });
        }
        group.finish();
    }
}

fn lookup(c: &mut Criterion) {
    let keys = backend_keys(100);
    let members = equal_members(&keys);
    let hashes = pseudo_random(LOOKUP_BATCH);
    let flows = flow_keys(LOOKUP_BATCH);
    for size in SIZES {
        let ours = MaglevTable::build(&members, size).expect("valid table");
        let theirs = Maglev::with_capacity(keys.iter().copied(), size as usize);
        assert_eq!(theirs.capacity(), size as usize);

        let mut group = c.benchmark_group(format!("maglev_lookup/M={size}"));
        group.throughput(Throughput::Elements(LOOKUP_BATCH as u64));
        // A 64-bit hash in, a backend out. fwd takes the hash as is; the crate hashes it first
        // (it has no lookup by hash).
        group.bench_function("fwd/by_hash", |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for &h in black_box(&hashes) {
                    acc = acc.wrapping_add(u32::from(ours.lookup(h).unwrap_or(0)));
                }
                acc
            })
        });
        group.bench_function("maglev_crate/by_hash", |b| {
            b.iter(|| {
                let mut acc = 0u8;
                for h in black_box(&hashes) {
                    acc = acc.wrapping_add(theirs.get(h).map_or(0, |k| k.0[15]));
                }
                acc
            })
        });
        // A flow's 5-tuple in, a backend out: both hash it (fwd: XXH3 of 37 bytes; the crate:
        // SipHash of the derived `Hash`).
        group.bench_function("fwd/by_flow_key", |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for k in black_box(&flows) {
                    acc = acc.wrapping_add(u32::from(ours.lookup(flow_hash(k)).unwrap_or(0)));
                }
                acc
            })
        });
        group.bench_function("maglev_crate/by_flow_key", |b| {
            b.iter(|| {
                let mut acc = 0u8;
                for k in black_box(&flows) {
                    acc = acc.wrapping_add(theirs.get(k).map_or(0, |k| k.0[15]));
                }
                acc
            })
        });
        group.finish();
    }
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
