//! Health checks: every backend's check runs on its own schedule, and each target's health moves
//! through Unknown, Up and Down with the spec's `rise` and `fall`.
//!
//! The checker owns one thread running a current-thread tokio runtime. A check is I/O bound (a
//! connect, a request, a child process), so one thread drives hundreds of them; each target is
//! one task that sleeps until its next start and then probes, bounded by the spec's timeout, so a
//! hung target costs only its own timeout and never delays another target. Starts follow a fixed
//! grid (`first start + n * interval`), so they do not drift with the probes' durations, and the
//! first starts are spread over a short, deterministic phase so that 500 targets do not all fire
//! in the same millisecond.
//!
//! The control loop talks to the checker through a mutex-guarded table that the tasks update
//! after each probe: [`HealthChecker::set_targets`] adds and removes targets (unchanged ones keep
//! their state and schedule), [`HealthChecker::try_events`] drains the transitions, and
//! [`HealthChecker::status`] copies the table. The mutex is held for a few field updates, never
//! across a probe or a log write.

mod http;
mod probe;
#[cfg(test)]
mod testnet;

pub use probe::ProbeOutcome;

use crate::config::{host_port, CheckKind, CheckSpec};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Transitions kept for [`HealthChecker::try_events`] when nobody drains them; older ones are
/// dropped first (and counted), since the current state is always in [`HealthChecker::status`].
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// Widest spread of the targets' first starts (a quarter of the interval when that is shorter).
pub const MAX_PHASE_SPREAD: Duration = Duration::from_millis(250);
/// Intervals kept per target for [`IntervalStats::recent_p99`].
const RECENT_INTERVALS: usize = 128;

/// One check to run: the backend address and the complete spec. Equal targets run once: callers
/// derive targets from every backend of every service and pass duplicates freely.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckTarget {
    pub addr: IpAddr,
    pub spec: CheckSpec,
}

impl fmt::Display for CheckTarget {
    /// "198.18.2.11:80 tcp", "198.18.2.11:80 http /healthz", "198.18.2.11:80 exec /usr/bin/check":
    /// the way logs name a target (the path or program tells apart two checks of one backend).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", host_port(self.addr, Some(self.spec.port)), self.spec.kind.name())?;
        match &self.spec.kind {
            CheckKind::Http { path, .. } => write!(f, " {path}"),
            CheckKind::Exec { command } => write!(f, " {}", command.first().map_or("", String::as_str)),
            CheckKind::Tcp | CheckKind::Udp { .. } => Ok(()),
        }
    }
}

/// A target's health. Unknown lasts until its first probe has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// The achieved time between consecutive probe starts of one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalStats {
    /// Intervals measured (probes - 1).
    pub count: u64,
    pub mean: Duration,
    pub min: Duration,
    pub max: Duration,
    /// 99th percentile (nearest rank) of the last 128 intervals.
    pub recent_p99: Duration,
}

/// One target's state, as [`HealthChecker::status`] copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub health: Health,
    /// The outcome that caused the last transition ("not probed yet" before the first probe).
    pub reason: String,
    /// The last transition, or when the target was added.
    pub since: SystemTime,
    pub last_probe: Option<SystemTime>,
    pub last_outcome: Option<String>,
    /// From the probe's start to its outcome.
    pub last_latency: Option<Duration>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub probes: u64,
    pub interval_stats: IntervalStats,
}

/// A change of health, queued for [`HealthChecker::try_events`] and logged once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub target: CheckTarget,
    pub from: Health,
    pub to: Health,
    /// The outcome of the probe that completed the transition.
    pub reason: String,
    /// How many probes in a row had that result (`fall` or `rise`; 1 from Unknown).
    pub streak: u32,
    pub at: SystemTime,
}

impl fmt::Display for HealthEvent {
    /// "198.18.2.11:80 tcp: up -> down (connection refused, 3 in a row)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {} ({}", self.target, self.from, self.to, self.reason)?;
        if self.from == Health::Unknown {
            f.write_str(", first probe)")
        } else {
            write!(f, ", {} in a row)", self.streak)
        }
    }
}

/// A target's last probe latency, for the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySample {
    pub target: CheckTarget,
    pub health: Health,
    pub latency: Duration,
    pub ok: bool,
}

/// Why the checker could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The tokio runtime could not be built (no epoll, timer or signal descriptors left).
    #[error("health checker: cannot build the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("health checker: cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Runs the health checks on a thread of its own; dropping it stops the thread and every probe
/// (exec checks' processes are killed).
pub struct HealthChecker {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("HealthChecker")
            .field("targets", &state.targets.len())
            .field("queued_events", &state.events.len())
            .field("dropped_events", &state.dropped_events)
            .finish()
    }
}

impl HealthChecker {
    /// Starts the checker's thread and runtime, with no targets. Sockets are opened from that
    /// thread, so they belong to the caller's network namespace.
    pub fn start() -> Result<HealthChecker, HealthError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HealthError::Runtime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fwd-health".into())
            .spawn(move || {
                // Returns when the checker is dropped (the sender goes away); dropping the
                // runtime then drops every target's task, and with it any running child.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                drop(runtime);
            })
            .map_err(HealthError::Thread)?;
        Ok(HealthChecker {
            shared: Arc::new(Shared::default()),
            runtime: handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Makes `targets` the set of checks: new targets start (Unknown), removed ones stop (a
    /// running probe is abandoned, an exec check's processes killed), and unchanged ones keep
    /// their state and schedule. Duplicates are run once. A removal queues no event; events the
    /// removed target queued earlier stay queued.
    pub fn set_targets(&self, targets: impl IntoIterator<Item = CheckTarget>) {
        let wanted: HashSet<CheckTarget> = targets.into_iter().collect();
        let mut state = self.shared.lock();
        state.targets.retain(|target, entry| {
            let keep = wanted.contains(target);
            if !keep {
                entry.task.abort();
            }
            keep
        });
        let now = Instant::now();
        for target in wanted {
            if state.targets.contains_key(&target) {
                continue;
            }
            state.next_generation += 1;
            let generation = state.next_generation;
            let first_start = now + phase(&target);
            let task = self
                .runtime
                .spawn(run_target(Arc::clone(&self.shared), target.clone(), generation, first_start))
                .abort_handle();
            state.targets.insert(target, Entry::new(generation, task));
        }
    }

    /// The transitions since the last call, oldest first.
    pub fn try_events(&self) -> Vec<HealthEvent> {
        self.shared.lock().events.drain(..).collect()
    }

    /// Transitions dropped because the queue was full (more than [`MAX_QUEUED_EVENTS`] undrained).
    pub fn dropped_events(&self) -> u64 {
        self.shared.lock().dropped_events
    }

    /// A copy of every current target's state.
    pub fn status(&self) -> HashMap<CheckTarget, TargetStatus> {
        let state = self.shared.lock();
        state.targets.iter().map(|(target, entry)| (target.clone(), entry.snapshot())).collect()
    }

    /// One target's state; `None` when it is not a current target.
    pub fn target_status(&self, target: &CheckTarget) -> Option<TargetStatus> {
        self.shared.lock().targets.get(target).map(Entry::snapshot)
    }

    /// A target's health; Unknown when it is not a current target.
    pub fn health(&self, target: &CheckTarget) -> Health {
        self.shared.lock().targets.get(target).map_or(Health::Unknown, |entry| entry.status.health)
    }

    /// Whether every current target has answered at least one probe (true with no targets).
    pub fn all_answered(&self) -> bool {
        self.shared.lock().targets.values().all(|entry| entry.status.health != Health::Unknown)
    }

    /// The last probe's latency of every target probed at least once.
    pub fn latency_samples(&self) -> Vec<LatencySample> {
        let state = self.shared.lock();
        state
            .targets
            .iter()
            .filter_map(|(target, entry)| {
                Some(LatencySample {
                    target: target.clone(),
                    health: entry.status.health,
                    latency: entry.status.last_latency?,
                    ok: entry.status.consecutive_ok > 0,
                })
            })
            .collect()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the checker's thread has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}

/// When a new target first probes, after it was added: a deterministic function of the target,
/// so that a restart spreads the same targets the same way.
fn phase(target: &CheckTarget) -> Duration {
    let spread = (target.spec.interval / 4).min(MAX_PHASE_SPREAD);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    target.hash(&mut hasher);
    let fraction = hasher.finish() % 1024;
    spread.mul_f64(fraction as f64 / 1024.0)
}

/// The health after a probe, given the streak counts including that probe.
fn next_health(
    health: Health,
    ok: bool,
    consecutive_ok: u32,
    consecutive_fail: u32,
    spec: &CheckSpec,
) -> Health {
    match (health, ok) {
        (Health::Unknown, true) => Health::Up,
        (Health::Unknown, false) => Health::Down,
        (Health::Up, false) if consecutive_fail >= spec.fall => Health::Down,
        (Health::Down, true) if consecutive_ok >= spec.rise => Health::Up,
        (unchanged, _) => unchanged,
    }
}

/// One target's task: probe on the grid `first_start + n * interval` until aborted.
async fn run_target(shared: Arc<Shared>, target: CheckTarget, generation: u64, first_start: Instant) {
    let interval = target.spec.interval;
    let mut next = first_start;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let outcome = probe::run(&target, started + target.spec.timeout).await;
        let latency = started.elapsed();
        let event = shared.record(&target, generation, started, started_wall, latency, &outcome);
        if let Some(event) = event {
            eprintln!("fwd: health: {event}");
        }
        next += interval;
        let now = Instant::now();
        if next <= now {
            // The thread was starved (or an exec kill overran): skip the missed starts instead of
            // firing them in a burst; the interval statistics show the gap.
            let behind = now.duration_since(next).as_nanos();
            let missed = behind / interval.as_nanos().max(1) + 1;
            next += interval * u32::try_from(missed).unwrap_or(u32::MAX);
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    targets: HashMap<CheckTarget, Entry>,
    events: VecDeque<HealthEvent>,
    dropped_events: u64,
    next_generation: u64,
}

impl Shared {
    /// A task panicking while holding the lock cannot leave a half-updated entry that matters
    /// more than losing the checker, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one probe's result; returns the transition it caused, if any.
    fn record(
        &self,
        target: &CheckTarget,
        generation: u64,
        started: Instant,
        started_wall: SystemTime,
        latency: Duration,
        outcome: &ProbeOutcome,
    ) -> Option<HealthEvent> {
        let mut state = self.lock();
        // The target was removed (and maybe added again, with a new task) while this probe ran.
        let entry = state.targets.get_mut(target).filter(|entry| entry.generation == generation)?;
        let ok = outcome.is_ok();
        let text = outcome.to_string();
        entry.intervals.record(started);
        let status = &mut entry.status;
        status.probes += 1;
        status.last_probe = Some(started_wall);
        status.last_latency = Some(latency);
        if ok {
            status.consecutive_ok = status.consecutive_ok.saturating_add(1);
            status.consecutive_fail = 0;
        } else {
            status.consecutive_fail = status.consecutive_fail.saturating_add(1);
            status.consecutive_ok = 0;
        }
        let from = status.health;
        let to = next_health(from, ok, status.consecutive_ok, status.consecutive_fail, &target.spec);
        let event = (to != from).then(|| {
            let at = SystemTime::now();
            status.health = to;
            status.reason.clone_from(&text);
            status.since = at;
            HealthEvent {
                target: target.clone(),
                from,
                to,
                reason: text.clone(),
                streak: status.consecutive_ok.max(status.consecutive_fail),
                at,
            }
        });
        status.last_outcome = Some(text);
        if let Some(event) = &event {
            if state.events.len() >= MAX_QUEUED_EVENTS {
                state.events.pop_front();
                state.dropped_events += 1;
            }
            state.events.push_back(event.clone());
        }
        event
    }
}

/// A target in the table: its state and the task that probes it.
#[derive(Debug)]
struct Entry {
    /// Distinguishes this task from an earlier one of an equal target that was removed.
    generation: u64,
    status: TargetStatus,
    intervals: IntervalRecorder,
    task: tokio::task::AbortHandle,
}

impl Entry {
    fn new(generation: u64, task: tokio::task::AbortHandle) -> Entry {
        Entry {
            generation,
            status: TargetStatus {
                health: Health::Unknown,
                reason: "not probed yet".into(),
                since: SystemTime::now(),
                last_probe: None,
                last_outcome: None,
                last_latency: None,
                consecutive_ok: 0,
                consecutive_fail: 0,
                probes: 0,
                interval_stats: IntervalStats::default(),
            },
            intervals: IntervalRecorder::default(),
            task,
        }
    }

    fn snapshot(&self) -> TargetStatus {
        TargetStatus { interval_stats: self.intervals.stats(), ..self.status.clone() }
    }
}

/// Intervals between probe starts: running totals plus the last [`RECENT_INTERVALS`], in
/// microseconds (enough for a percentile, 512 bytes per target).
#[derive(Debug, Default)]
struct IntervalRecorder {
    previous_start: Option<Instant>,
    count: u64,
    total: Duration,
    min: Duration,
    max: Duration,
    recent: VecDeque<u32>,
}

impl IntervalRecorder {
    fn record(&mut self, start: Instant) {
        if let Some(previous) = self.previous_start.replace(start) {
            let interval = start.duration_since(previous);
            self.min = if self.count == 0 { interval } else { self.min.min(interval) };
            self.count += 1;
            self.total += interval;
            self.max = self.max.max(interval);
            if self.recent.len() == RECENT_INTERVALS {
                self.recent.pop_front();
            }
            self.recent.push_back(u32::try_from(interval.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn stats(&self) -> IntervalStats {
        let mut recent: Vec<u32> = self.recent.iter().copied().collect();
        recent.sort_unstable();
        // Nearest rank: the smallest value with at least 99% of the samples at or below it.
        let rank = (recent.len() * 99).div_ceil(100);
        let p99 = rank.checked_sub(1).and_then(|i| recent.get(i)).copied().unwrap_or(0);
        IntervalStats {
            count: self.count,
            mean: Duration::from_nanos(
                u64::try_from(self.total.as_nanos().checked_div(u128::from(self.count)).unwrap_or(0))
                    .unwrap_or(u64::MAX),
            ),
            min: self.min,
            max: self.max,
            recent_p99: Duration::from_micros(u64::from(p99)),
        }
    }
}

#[cfg(test)]
mod tests;
