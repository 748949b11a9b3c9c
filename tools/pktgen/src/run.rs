//! The sending and receiving threads, the pacing, and the live progress line.
//!
//! Each thread owns one [`Endpoint`] and, when sending, one [`FrameSource`] (its share of the
//! flows, its own stream of sequence numbers). It publishes its counters to a cache-line-sized
//! block of relaxed atomics once per batch; the main thread reads them a few times a second for
//! the progress line and the stop conditions, so the line costs the senders nothing but a few
//! uncontended stores.

use crate::account::Accounting;
use crate::frames::FrameSource;
use crate::io::Endpoint;
use rustix::time::{clock_gettime, ClockId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub const BATCH: usize = 64;
/// A paced sender sends the packets of this many nanoseconds together (see `Pacer::burst`).
pub const BURST_NS: u64 = 20_000;

/// CLOCK_MONOTONIC in nanoseconds: the clock in every payload.
#[inline]
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

/// Sends at `rate` packets per second from `start_ns` on (`None`: as fast as possible).
///
/// A thread that fell behind (its core taken for a while) sends one batch at once and lets the
/// rest of its backlog go: a backlog of hundreds of frames sent back to back would overflow the
/// next hop's receive ring (a veth ring holds 256) and be blamed on the device under test. The
/// packets let go are never sent (sequence numbers stay consecutive, so they are not loss) and are
/// reported as `behind_schedule`; the rate achieved is what the report's `pps` says.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    pub per_second: Option<f64>,
    pub start_ns: u64,
    /// Packets that go together: the rate's packets of `BURST_NS` (1 at low rates, at most
    /// `BATCH`). One packet per transmit call at 800 kpps costs a system call each: the paced
    /// generator topped out near 800 kpps where flat out, in batches of 64, it sends 1.3 Mpps.
    pub burst: u64,
    /// Packets the schedule let go because the thread was more than a batch behind.
    pub behind_schedule: u64,
}

impl Pacer {
    pub fn new(per_second: Option<f64>, start_ns: u64) -> Pacer {
        let burst = per_second.map_or(1, |r| ((r * BURST_NS as f64 / 1e9) as u64).clamp(1, BATCH as u64));
        Pacer { per_second, start_ns, behind_schedule: 0, burst }
    }

    /// How many packets may go now, given `sent` so far (at most `BATCH`; none until a burst
    /// is due). Packet `n` is due at `start + n / rate`, counting the packets let go as if sent.
    #[inline]
    pub fn allowed(&mut self, now_ns: u64, sent: u64) -> usize {
        match self.per_second {
            None => BATCH,
            Some(rate) => {
                let due = (now_ns.saturating_sub(self.start_ns) as f64 * rate / 1e9) as u64 + 1;
                let backlog = due.saturating_sub(sent + self.behind_schedule);
                if backlog > BATCH as u64 {
                    self.behind_schedule += backlog - BATCH as u64;
                }
                if backlog < self.burst {
                    return 0;
                }
                backlog.min(BATCH as u64) as usize
            }
        }
    }

    /// How long until the burst starting at packet `sent` is due.
    pub fn wait(&self, now_ns: u64, sent: u64) -> Duration {
        match self.per_second {
            None => Duration::ZERO,
            Some(rate) => {
                let last = sent + self.behind_schedule + self.burst - 1;
                let due_ns = self.start_ns + (last as f64 * 1e9 / rate) as u64;
                Duration::from_nanos(due_ns.saturating_sub(now_ns))
            }
        }
    }
}

/// One thread's live counters.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Progress {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Sink side: packets the streams seen should have delivered, and delivered once.
    pub expected: AtomicU64,
    pub unique: AtomicU64,
    pub done: AtomicBool,
}

/// What a thread is told to do.
#[derive(Debug)]
pub struct Job {
    pub endpoint: Endpoint,
    pub source: Option<FrameSource>,
    pub pacer: Pacer,
    /// Packets this thread sends at most.
    pub count: Option<u64>,
    /// Stop sending at this CLOCK_MONOTONIC time.
    pub deadline_ns: Option<u64>,
    /// Receiving: keep going this long after sending stopped (in-flight frames).
    pub drain: Duration,
    /// Receiving: after 1024 idle loops in a row, sleep this long (0: spin).
    pub idle_sleep: Duration,
    pub accounting: Option<Accounting>,
    pub core: Option<usize>,
}

/// What a thread did.
#[derive(Debug)]
pub struct Outcome {
    pub stream: Option<u32>,
    pub sent: u64,
    /// Packets the pacer let go while the thread was behind (see [`Pacer`]).
    pub behind_schedule: u64,
    pub sent_bytes: u64,
    pub flows: u64,
    pub send_started_ns: u64,
    pub send_ended_ns: u64,
    pub accounting: Option<Accounting>,
    pub endpoint: serde_json::Value,
    pub pinned: Option<usize>,
}

pub fn run_thread(mut job: Job, stop: &AtomicBool, progress: &Progress) -> Outcome {
    let pinned = job.core.filter(|&id| core_affinity::set_for_current(core_affinity::CoreId { id }));
    if let (Some(core), None) = (job.core, pinned) {
        eprintln!("fwd-pktgen: could not pin a thread to core {core}; it runs unpinned");
    }
    let started = monotonic_ns();
    let mut pacer = Pacer { start_ns: started, ..job.pacer };
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut rx_bytes = 0u64;
    let receiving = job.accounting.is_some();
    let sending = job.source.is_some();
    let mut send_ended = started;
    let mut drain_until: Option<u64> = if sending { None } else { Some(u64::MAX) };
    let mut idle_loops = 0u32;

    loop {
        let now = monotonic_ns();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut sent_now = 0;
        if let (Some(source), None) = (&job.source, drain_until) {
            let limit_reached =
                job.count.is_some_and(|c| seq >= c) || job.deadline_ns.is_some_and(|d| now >= d);
            if limit_reached {
                send_ended = now;
                drain_until = Some(now + job.drain.as_nanos() as u64);
            } else {
                let mut allowed = pacer.allowed(now, seq);
                if let Some(count) = job.count {
                    allowed = allowed.min((count - seq) as usize);
                }
                if allowed > 0 {
                    let base = seq;
                    sent_now =
                        job.endpoint.transmit(allowed, |i, buf| source.write(base + i as u64, now, buf));
                    for i in 0..sent_now as u64 {
                        bytes += source.len_of(base + i) as u64;
                    }
                    seq += sent_now as u64;
                    progress.tx_packets.store(seq, Ordering::Relaxed);
                    progress.tx_bytes.store(bytes, Ordering::Relaxed);
                }
            }
        }
        let mut received = 0;
        if let Some(accounting) = job.accounting.as_mut() {
            // Receive before sending more: a sink that falls behind its own generator would drop
            // frames (an empty fill ring) and blame the device under test. Up to 8 batches.
            for _ in 0..8 {
                let mut at = 0u64;
                let got = job.endpoint.receive_each(BATCH, |frame| {
                    if at == 0 {
                        // After the frames reached the ring: never before they were sent.
                        at = monotonic_ns();
                    }
                    rx_bytes += frame.len() as u64;
                    accounting.record(frame, at);
                });
                received += got;
                if got < BATCH {
                    break;
                }
            }
            if received > 0 {
                let (expected, unique) = accounting.expected_and_unique();
                progress.rx_frames.store(accounting.frames, Ordering::Relaxed);
                progress.rx_bytes.store(rx_bytes, Ordering::Relaxed);
                progress.expected.store(expected, Ordering::Relaxed);
                progress.unique.store(unique, Ordering::Relaxed);
            }
        }
        if sent_now == 0 && received == 0 {
            idle_loops += 1;
            // A sink shares its core with the NAPI thread that fills its ring: let it run.
            if receiving && idle_loops.is_multiple_of(1024) && !job.idle_sleep.is_zero() {
                std::thread::sleep(job.idle_sleep);
            }
        } else {
            idle_loops = 0;
        }
        match drain_until {
            Some(until) if now >= until => break,
            Some(_) if !receiving => {
                // Sending done: wait for the kernel to complete what it holds, briefly.
                if job.endpoint.tx_outstanding() == 0 {
                    break;
                }
                job.endpoint.transmit(0, |_, _| 0);
                std::thread::yield_now();
            }
            Some(_) => {}
            None => {
                if sent_now == 0 && received == 0 {
                    let wait = pacer.wait(monotonic_ns(), seq);
                    if wait > Duration::from_micros(200) && !receiving {
                        std::thread::sleep(wait - Duration::from_micros(100));
                    } else if receiving {
                        // The interface's NAPI thread shares this core and fills our ring. While
                        // we spin, the scheduler lets it run only when its wakeup preemption
                        // wins, which can take milliseconds: the interface's 256-frame veth ring
                        // overflowed (3% loss at 190 kpps paced, measured in tools/bench); with a
                        // yield here, 0.3%. A yield with nothing else runnable costs a system call.
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
    if sending && send_ended == started {
        send_ended = monotonic_ns();
    }
    progress.done.store(true, Ordering::Relaxed);
    Outcome {
        stream: job.source.as_ref().map(|s| s.stream),
        sent: seq,
        behind_schedule: pacer.behind_schedule,
        sent_bytes: bytes,
        flows: job.source.as_ref().map(|s| s.slots()).unwrap_or(0),
        send_started_ns: started,
        send_ended_ns: send_ended,
        accounting: job.accounting.take(),
        endpoint: job.endpoint.stats_json(),
        pinned,
    }
}

/// Sums of every thread's live counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub expected: u64,
    pub unique: u64,
}

impl Totals {
    pub fn of(progress: &[Progress]) -> Totals {
        let mut t = Totals::default();
        for p in progress {
            t.tx_packets += p.tx_packets.load(Ordering::Relaxed);
            t.tx_bytes += p.tx_bytes.load(Ordering::Relaxed);
            t.rx_frames += p.rx_frames.load(Ordering::Relaxed);
            t.rx_bytes += p.rx_bytes.load(Ordering::Relaxed);
            t.expected += p.expected.load(Ordering::Relaxed);
            t.unique += p.unique.load(Ordering::Relaxed);
        }
        t
    }
}

/// The live line: `elapsed | tx pps Gbit/s | rx pps Gbit/s | loss`.
pub fn progress_line(
    elapsed: f64,
    now: &Totals,
    before: &Totals,
    interval: f64,
    sending: bool,
    receiving: bool,
) -> String {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / interval.max(1e-3);
    let mut line = format!("{elapsed:6.1}s");
    if sending {
        line += &format!(
            " | tx {:>9.0} pps {:6.3} Gbit/s",
            rate(now.tx_packets, before.tx_packets),
            rate(now.tx_bytes, before.tx_bytes) * 8.0 / 1e9
        );
    }
    if receiving {
        line += &format!(
            " | rx {:>9.0} pps {:6.3} Gbit/s | loss {:.3}%",
            rate(now.rx_frames, before.rx_frames),
            rate(now.rx_bytes, before.rx_bytes) * 8.0 / 1e9,
            if now.expected > 0 {
                100.0 * now.expected.saturating_sub(now.unique) as f64 / now.expected as f64
            } else {
                0.0
            }
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_releases_packets_on_schedule() {
        let mut pacer = Pacer::new(Some(1000.0), 1_000_000_000);
        assert_eq!(pacer.allowed(1_000_000_000, 0), 1, "the first packet goes at once");
        assert_eq!(pacer.allowed(1_000_000_000, 1), 0);
        assert_eq!(pacer.allowed(1_010_000_000, 1), 10, "10 ms later: packets 1..=10 are due");
        assert_eq!(pacer.wait(1_000_000_000, 1), Duration::from_millis(1));
        assert_eq!(pacer.behind_schedule, 0);
        let mut unlimited = Pacer::new(None, 0);
        assert_eq!(unlimited.allowed(0, u64::MAX - 1), BATCH);
    }

    #[test]
    fn a_pacer_behind_sends_one_batch_and_lets_the_rest_go() {
        let mut pacer = Pacer::new(Some(1000.0), 1_000_000_000);
        // One second in with 100 sent: packets 100..=1000 are due, 901 of them.
        assert_eq!(pacer.allowed(2_000_000_000, 100), BATCH);
        assert_eq!(pacer.behind_schedule, 901 - BATCH as u64);
        // After that batch nothing more is due now; the next packet keeps the old schedule.
        let sent = 100 + BATCH as u64;
        assert_eq!(pacer.allowed(2_000_000_000, sent), 0);
        assert_eq!(pacer.wait(2_000_000_000, sent), Duration::from_millis(1));
        assert_eq!(pacer.allowed(2_001_000_000, sent), 1);
        // Back on schedule: nothing more is let go.
        assert_eq!(pacer.allowed(2_010_000_000, sent + 1), 9, "packets due at 2.002 .. 2.010 s");
        assert_eq!(pacer.behind_schedule, 901 - BATCH as u64);
    }

    #[test]
    fn a_fast_pacer_sends_bursts_of_twenty_microseconds() {
        // 1 Mpps: packet n is due at n us; 20 go together.
        let mut pacer = Pacer::new(Some(1e6), 0);
        assert_eq!(pacer.burst, 20);
        assert_eq!(pacer.allowed(18_000, 0), 0, "19 due: not a burst yet");
        assert_eq!(pacer.wait(18_000, 0), Duration::from_micros(1), "packet 19 is due at 19 us");
        assert_eq!(pacer.allowed(19_000, 0), 20);
        assert_eq!(pacer.allowed(39_500, 20), 20, "packets 20..=39 by 39.5 us");
        assert_eq!(pacer.behind_schedule, 0);
        assert_eq!(Pacer::new(Some(1e9), 0).burst, BATCH as u64, "at most a batch");
        assert_eq!(Pacer::new(Some(10_000.0), 0).burst, 1, "one at a time below 50 kpps");
    }
}
