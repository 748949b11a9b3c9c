//! A worker thread: pinned to its core, it busy-polls one AF_XDP port, runs the pipeline on each
//! batch against the snapshot it loads for that batch, and publishes what control reads (counters,
//! per-backend figures, batch-time percentiles, live flows, a heartbeat) through atomics only.

use crate::forwarder::control::BatchTimesShared;
use arc_swap::ArcSwap;
use fwd_afxdp::{CpuPrefetch, IdleWait, KernelStats, Port};
use fwd_control::admin::{SocketStats, UmemOccupancy};
use fwd_dataplane::counters::{SharedBackendCounters, SharedCounters};
use fwd_dataplane::io::{PacketIo, MAX_BATCH};
use fwd_dataplane::pipeline::{Worker, WorkerConfig};
use fwd_dataplane::snapshot::Snapshot;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one worker publishes; control reads it (and replaces `backends` when a snapshot outgrows it).
#[derive(Debug)]
pub struct WorkerShared {
    pub core: usize,
    pub queue: u32,
    pub counters: SharedCounters,
    pub backends: ArcSwap<SharedBackendCounters>,
    pub batch_times: BatchTimesShared,
    /// Live flows in the connection table at the last census.
    pub active_flows: AtomicU64,
    /// Milliseconds since `epoch` when the worker last went round its loop.
    pub heartbeat_ms: AtomicU64,
    /// The kernel's counters for the worker's socket, as last read.
    pub socket: SharedSocketStats,
    /// Where the socket's UMEM frames were, as sampled by its port (totals since start).
    pub umem: SharedUmemOccupancy,
}

/// [`UmemOccupancy`] as atomics, from the port's samples
/// ([`fwd_afxdp::PortStats::occupancy_samples`]): the worker stores, control loads.
#[derive(Debug, Default)]
pub struct SharedUmemOccupancy([AtomicU64; 4]);

impl SharedUmemOccupancy {
    fn publish(&self, s: &fwd_afxdp::PortStats) {
        let values = [s.occupancy_samples, s.fill_level_sum, s.rx_backlog_sum, s.tx_in_flight_sum];
        for (slot, value) in self.0.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> UmemOccupancy {
        let [samples, fill_ring, rx_ring, transmit] = self.0.each_ref().map(|a| a.load(Ordering::Relaxed));
        UmemOccupancy { samples, fill_ring, rx_ring, transmit }
    }
}

/// [`SocketStats`] as atomics: the worker stores, control loads.
#[derive(Debug, Default)]
pub struct SharedSocketStats([AtomicU64; 6]);

impl SharedSocketStats {
    fn publish(&self, k: &KernelStats) {
        let stats = SocketStats {
            rx_dropped: k.rx_dropped,
            rx_ring_full: k.rx_ring_full,
            rx_fill_ring_empty: k.rx_fill_ring_empty_descs,
            rx_invalid_descs: k.rx_invalid_descs,
            tx_invalid_descs: k.tx_invalid_descs,
            tx_ring_empty: k.tx_ring_empty_descs,
        };
        for (slot, (_, value)) in self.0.iter().zip(stats.named()) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// The atomics hold the counters in [`SocketStats::named`]'s order.
    pub fn read(&self) -> SocketStats {
        let [rx_dropped, rx_ring_full, rx_fill_ring_empty, rx_invalid_descs, tx_invalid_descs, tx_ring_empty] =
            self.0.each_ref().map(|a| a.load(Ordering::Relaxed));
        SocketStats {
            rx_dropped,
            rx_ring_full,
            rx_fill_ring_empty,
            rx_invalid_descs,
            tx_invalid_descs,
            tx_ring_empty,
        }
    }
}

impl WorkerShared {
    /// The port's figures for control: the socket's kernel counters (one getsockopt) and where
    /// its UMEM frames were.
    fn publish_port(&self, port: &Port) {
        if let Ok(k) = port.kernel_stats() {
            self.socket.publish(&k);
        }
        self.umem.publish(&port.stats());
    }

    pub fn new(core: usize, queue: u32, backends: usize) -> Self {
        WorkerShared {
            core,
            queue,
            counters: SharedCounters::default(),
            backends: ArcSwap::from_pointee(SharedBackendCounters::with_capacity(backends)),
            batch_times: BatchTimesShared::default(),
            active_flows: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            socket: SharedSocketStats::default(),
            umem: SharedUmemOccupancy::default(),
        }
    }
}

/// What a worker thread returns when it stops.
#[derive(Debug)]
pub struct WorkerExit {
    pub core: usize,
    pub queue: u32,
    pub port_stats: fwd_afxdp::PortStats,
    /// The socket's kernel counters at the end (frames the kernel dropped before the pipeline).
    pub socket: SocketStats,
    /// Time in the pipeline proper (`process_batch`, without receive and transmit) per batch:
    /// the median over the run (robust to the preemptions that wall-clock time also counts), and
    /// the frames per batch, for a per-frame figure.
    pub pipeline_p50: Duration,
    pub pipeline_batches: u64,
}

/// Connection-table buckets counted per census step (8 entries each).
const CENSUS_BUCKETS: usize = 64;
/// What an idle worker gives up of its core.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdlePolicy {
    /// Nap this long after IDLE_POLLS empty polls in a row (zero: never). A policy that sleeps
    /// until frames arrive replaces it.
    pub sleep: Duration,
    /// After each empty poll: yield, or sleep until frames arrive (the ceiling, `bounce`, decides
    /// it with the same code).
    pub each_empty_poll: IdleWait,
}

/// Empty polls in a row after which the worker counts as idle: it takes a census step, and naps
/// if the idle policy says so.
const IDLE_POLLS: u64 = 1024;
/// Empty polls in a row between two looks at the clock (heartbeat, stop flag, housekeeping).
const CLOCK_EVERY: u32 = 64;
/// How often per-backend figures are published.
const PUBLISH_EVERY_MS: u64 = 100;
/// How often batch-time percentiles are published (and the histogram restarted).
const BATCH_TIMES_EVERY_MS: u64 = 1000;

#[allow(clippy::too_many_arguments)]
pub fn worker_loop(
    mut port: Port,
    config: WorkerConfig,
    snapshots: Arc<ArcSwap<Snapshot>>,
    shared: Arc<WorkerShared>,
    stop: Arc<AtomicBool>,
    idle: IdlePolicy,
    epoch: Instant,
) -> WorkerExit {
    let core = shared.core;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("fwd: could not pin the worker to core {core}; it runs unpinned");
    }
    // Allocated here, after pinning, so its pages are this core's node's; fwd's global allocator
    // (fwd_afxdp::HugePageAlloc) puts the connection table in huge pages. Connection-table lines
    // are prefetched with the CPU's instruction (fwd_afxdp::CpuPrefetch).
    let mut worker = Worker::<CpuPrefetch>::with_prefetch(config);
    // Nanoseconds, 1 ns to 10 ms at 2 significant digits: a few KiB, allocated once; recording
    // never allocates (saturating_record clamps outliers instead of resizing).
    let mut batch_ns = Histogram::<u64>::new_with_bounds(1, 10_000_000, 2).ok();
    let start = Instant::now();
    // u64: a worker idle for years at millions of polls a second does not wrap it.
    let mut empty_streak = 0u64;
    let mut polls_since_clock = 0u32;
    let mut last_publish_ms = 0u64;
    let mut last_census_ms = u64::MAX;
    let mut last_times_ms = 0u64;
    let mut pipeline_ns = Histogram::<u64>::new_with_bounds(1, 10_000_000, 2).ok();
    loop {
        // An empty poll costs what the port's own poll costs and nothing more (the AF_XDP
        // ceiling's loop is the yardstick): the clock, the snapshot and the housekeeping below are
        // paid per batch, or once per CLOCK_EVERY empty polls. Under load empty polls come
        // between batches whenever the interface's receive side (often on this same core) has not
        // caught up; anything they pay keeps the core from that receive side.
        let mut batch_start = None;
        port.poll_ahead(MAX_BATCH, &mut |batch, verdicts, ahead| {
            let t = Instant::now();
            let now_ms = t.duration_since(start).as_millis() as u64;
            worker.process_batch_ahead(&snapshots.load(), batch, verdicts, ahead, now_ms);
            if let Some(h) = pipeline_ns.as_mut() {
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
            batch_start = Some(t);
        });
        let mut batch_end = None;
        if let Some(t) = batch_start {
            let now = Instant::now();
            if let Some(h) = batch_ns.as_mut() {
                h.saturating_record(now.duration_since(t).as_nanos() as u64);
            }
            batch_end = Some(now);
            empty_streak = 0;
        } else {
            worker.note_empty_poll();
            empty_streak += 1;
            polls_since_clock += 1;
            if idle.each_empty_poll.after_empty_poll(&mut port, empty_streak) {
                // A whole timeout of idleness: look at the clock (stop flag, heartbeat) now
                // rather than after CLOCK_EVERY more of them.
                polls_since_clock = CLOCK_EVERY;
            }
        }
        let idle_point = batch_end.is_none() && empty_streak.is_multiple_of(IDLE_POLLS);
        if batch_end.is_none() && !idle_point && polls_since_clock < CLOCK_EVERY {
            continue;
        }
        polls_since_clock = 0;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = batch_end.unwrap_or_else(Instant::now);
        let now_ms = now.duration_since(start).as_millis() as u64;
        shared.heartbeat_ms.store(now.duration_since(epoch).as_millis() as u64, Ordering::Relaxed);
        // The census walks the connection table a slice at a time: once a millisecond, and once
        // per IDLE_POLLS empty polls in a row (where the worker would nap). Never more often: a
        // step touches CENSUS_BUCKETS cold buckets (tens of KiB of cache misses, microseconds).
        if idle_point || now_ms != last_census_ms {
            last_census_ms = now_ms;
            // Counters go out with it: at most once a millisecond, and at every idle point.
            shared.counters.publish(worker.counters());
            if worker.census_step(&snapshots.load(), CENSUS_BUCKETS, now_ms) {
                shared.active_flows.store(worker.active_flows().iter().sum(), Ordering::Relaxed);
            }
        }
        if now_ms.wrapping_sub(last_publish_ms) >= PUBLISH_EVERY_MS {
            last_publish_ms = now_ms;
            shared.backends.load().publish(worker.backend_counters(), worker.active_flows());
            // One getsockopt per publish, never per batch.
            shared.publish_port(&port);
        }
        if now_ms.wrapping_sub(last_times_ms) >= BATCH_TIMES_EVERY_MS {
            last_times_ms = now_ms;
            if let Some(h) = batch_ns.as_mut() {
                shared.batch_times.publish(h);
                h.reset();
            }
        }
        if idle_point && !idle.sleep.is_zero() && !idle.each_empty_poll.sleeps() {
            std::thread::sleep(idle.sleep);
        }
    }
    shared.counters.publish(worker.counters());
    shared.backends.load().publish(worker.backend_counters(), worker.active_flows());
    shared.publish_port(&port);
    let (pipeline_p50, pipeline_batches) =
        pipeline_ns.map_or((0, 0), |h| (if h.is_empty() { 0 } else { h.value_at_quantile(0.5) }, h.len()));
    WorkerExit {
        core,
        queue: port.queue(),
        port_stats: port.stats(),
        socket: shared.socket.read(),
        pipeline_p50: Duration::from_nanos(pipeline_p50),
        pipeline_batches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The six counters travel through positional atomics: each must come out under its name.
    #[test]
    fn socket_counters_keep_their_names() {
        let shared = SharedSocketStats::default();
        shared.publish(&KernelStats {
            rx_dropped: 1,
            rx_ring_full: 2,
            rx_fill_ring_empty_descs: 3,
            rx_invalid_descs: 4,
            tx_invalid_descs: 5,
            tx_ring_empty_descs: 6,
        });
        let read = shared.read();
        assert_eq!(
            read,
            SocketStats {
                rx_dropped: 1,
                rx_ring_full: 2,
                rx_fill_ring_empty: 3,
                rx_invalid_descs: 4,
                tx_invalid_descs: 5,
                tx_ring_empty: 6,
            }
        );
    }
}
