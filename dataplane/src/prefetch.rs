//! How the worker asks the CPU to start loading memory it will read a few packets later.
//!
//! The connection table at a million flows lives in memory, not in the caches: a batch's lookups
//! go fast only if their loads are in flight together. A prefetch instruction does that best: it
//! retires at once and the core moves on. Stable Rust has no safe one (`_mm_prefetch` takes a raw
//! pointer and is `unsafe`; `core::hint::prefetch_read` is unstable), and this crate forbids
//! `unsafe`. So [`Prefetch`] is the seam: this crate's [`LoadPrefetch`] issues an ordinary load,
//! and fwd's binary plugs in `fwd_afxdp::CpuPrefetch`, the prefetch instruction, from the one
//! crate that holds unsafe code.

use std::hint::black_box;

/// Starts loading a cache line without changing anything a program can observe.
pub trait Prefetch {
    /// Starts loading the cache line that holds `value`.
    fn prefetch<T: Copy>(value: &T);
}

/// An ordinary load whose value is discarded: the portable fallback. The out-of-order core goes on
/// with the following independent work while the line arrives, until its reorder buffer fills
/// behind the load (a few dozen instructions), so a loop of these overlaps a batch's misses only
/// when the loop does little else.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadPrefetch;

impl Prefetch for LoadPrefetch {
    #[inline(always)]
    fn prefetch<T: Copy>(value: &T) {
        black_box(*value);
    }
}
