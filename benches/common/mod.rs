//! What the benches share.

use criterion::Bencher;
use rustix::time::{clock_gettime, ClockId};
use std::time::Duration;

/// Measures `routine` in the calling thread's CPU time (criterion's `iter_custom`).
///
/// Thread CPU time, not wall time: the build machines are shared, and a thread that waits for a
/// core (or a hypervisor that runs another guest) would otherwise be charged for other people's
/// work. Cache pollution by others still shows.
pub fn iter_cpu(bencher: &mut Bencher<'_>, mut routine: impl FnMut()) {
    bencher.iter_custom(|iters| {
        let start = clock_gettime(ClockId::ThreadCPUTime);
        for _ in 0..iters {
            routine();
        }
        let end = clock_gettime(ClockId::ThreadCPUTime);
        let ns = (end.tv_sec - start.tv_sec) * 1_000_000_000 + (end.tv_nsec - start.tv_nsec);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
    });
}
