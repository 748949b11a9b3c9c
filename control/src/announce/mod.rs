//! fwd's anycast announcer: FRR announces a VIP prefix (`network P` in bgpd) while the VIP can
//! serve, and withdraws it (`no network P`) otherwise. fwd does not speak BGP itself.
//!
//! The pieces, each testable alone:
//! - [`plan_prefixes`]: from the configuration and the health of each service, which prefixes
//!   there are and whether each can serve.
//! - [`PrefixPolicy`]: hold-down and flap damping, a pure function of time and input.
//! - [`Vtysh`]: runs FRR's vtysh with a deadline; [`parse_running_config`] reads its answer.
//! - [`Announcer`]: a thread that owns the policies and reconciles FRR with them.
//!
//! Reconciling, not fire-and-forget: bgpd forgets runtime `network` statements when it restarts,
//! so the announcer reads bgpd's running configuration every `reconcile_interval` (and confirms
//! after every change) and re-sends whatever differs. vtysh calls take 50-200 ms and may hang
//! until `vtysh_timeout`; they happen only on the announcer's thread, and callers only ever take a
//! mutex the thread never holds across a call. When FRR cannot be reached, attempts back off from
//! 250 ms up to `reconcile_interval`, and the status says why.
//!
//! Only prefixes fwd has been told about are ever touched; a prefix dropped from the plan is
//! withdrawn, confirmed, then forgotten.

mod frr_config;
mod plan;
mod policy;
mod vtysh;

#[cfg(test)]
mod frr_lab;
#[cfg(test)]
mod lab_tests;

pub use frr_config::{parse_running_config, FrrBgpState, RunningConfigError};
pub use plan::{host_prefix, plan_prefixes, ServiceServing};
pub use policy::{Damping, PrefixPolicy};
pub use vtysh::{Change, RunOutput, Vtysh, VtyshError, NOT_CONFIGURED};

use crate::config::{format_duration, BgpConfig, IpPrefix};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// First retry after a failed vtysh run; doubles per failure up to `reconcile_interval`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Why an announcer call failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The announcer's thread could not be created.
    #[error("cannot start the BGP announcer thread: {0}")]
    Spawn(std::io::Error),
    /// FRR did not confirm in time that every prefix is withdrawn.
    #[error(
        "FRR did not confirm the withdrawal of {pending} within {}{}",
        format_duration(*.deadline),
        .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NotConfirmed { deadline: Duration, pending: String, last_error: Option<String> },
    /// The announcer's thread is gone (it panicked).
    #[error("the BGP announcer thread has stopped")]
    Stopped,
}

/// The announcer's state for `fwd status --json` and metrics.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AnnouncerStatus {
    pub dataplane_running: bool,
    /// Set by [`Announcer::fail_closed`]: everything stays withdrawn.
    pub fail_closed: Option<String>,
    /// Set by [`Announcer::withdraw_all_and_wait`]: everything stays withdrawn.
    pub shutting_down: bool,
    pub frr: FrrStatus,
    /// Sorted by prefix.
    pub prefixes: Vec<PrefixStatus>,
}

/// How talking to FRR goes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FrrStatus {
    /// Whether the last vtysh run got an answer from bgpd; `None` before the first run.
    pub reachable: Option<bool>,
    /// The last run's error, cleared by a successful one.
    pub last_error: Option<String>,
    /// Since the last successful read of bgpd's running configuration.
    pub last_reconcile_secs_ago: Option<f64>,
    pub consecutive_failures: u32,
    /// When the next attempt after a failure is due.
    pub next_retry_in_secs: Option<f64>,
}

/// One prefix.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PrefixStatus {
    #[serde(serialize_with = "as_text")]
    pub prefix: IpPrefix,
    /// Its services can serve (from the last `set_desired`).
    pub can_serve: bool,
    /// It should be announced: it can serve, the data plane runs, no fail-closed, no shutdown.
    pub desired: bool,
    /// Announced after hold-down and damping: what fwd asks FRR for.
    pub effective: bool,
    /// Whether FRR has it, from the last run; `None` when unknown (FRR unreachable).
    pub in_frr: Option<bool>,
    pub last_change_secs_ago: Option<f64>,
    /// The flap-damping figure of merit now.
    pub penalty: f64,
    pub suppressed: bool,
    /// How long a desired prefix still waits for its hold-down.
    pub hold_down_remaining_secs: Option<f64>,
    /// `false`: no longer in the plan; withdrawn, then forgotten once FRR confirms.
    pub planned: bool,
}

fn as_text<S: serde::Serializer>(prefix: &IpPrefix, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(prefix)
}

/// Announces and withdraws VIP prefixes through FRR, on its own thread.
///
/// Dropping it stops the thread after a last attempt to withdraw whatever FRR may still have from
/// it: it waits for the pass in progress and one more vtysh run, each bounded by `vtysh_timeout`.
/// Call [`Announcer::withdraw_all_and_wait`] first for a confirmed withdrawal.
#[derive(Debug)]
pub struct Announcer {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the worker; `State::dirty` says it has something to look at.
    wake: Condvar,
    /// Wakes `withdraw_all_and_wait` after each pass.
    progress: Condvar,
}

impl Shared {
    fn new(config: BgpConfig) -> Shared {
        Shared {
            state: Mutex::new(State {
                config,
                config_seq: 0,
                entries: BTreeMap::new(),
                dataplane_running: false,
                fail_closed: None,
                shutting_down: false,
                stop: false,
                urgent: false,
                dirty: true,
                frr: FrrHealth {
                    reachable: None,
                    last_error: None,
                    last_reconcile: None,
                    failures: 0,
                    retry_at: None,
                },
                passes_started: 0,
                passes_completed: 0,
                worker_alive: true,
            }),
            wake: Condvar::new(),
            progress: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters more than stopping announcements would.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self, state: &mut State) {
        state.dirty = true;
        self.wake.notify_all();
    }
}

#[derive(Debug)]
struct Entry {
    policy: PrefixPolicy,
    can_serve: bool,
    planned: bool,
    desired: bool,
    in_frr: Option<bool>,
}

#[derive(Debug)]
struct FrrHealth {
    reachable: Option<bool>,
    last_error: Option<String>,
    last_reconcile: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct State {
    config: BgpConfig,
    config_seq: u64,
    entries: BTreeMap<IpPrefix, Entry>,
    dataplane_running: bool,
    fail_closed: Option<String>,
    shutting_down: bool,
    stop: bool,
    /// Run a pass now, whatever the backoff (withdraw everything).
    urgent: bool,
    /// Inputs changed since the worker last looked.
    dirty: bool,
    frr: FrrHealth,
    passes_started: u64,
    passes_completed: u64,
    worker_alive: bool,
}

impl State {
    fn all_withdrawn_and_confirmed(&self) -> bool {
        self.entries.values().all(|e| !e.policy.effective() && e.in_frr == Some(false))
    }

    fn unconfirmed(&self) -> String {
        let list: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.policy.effective() || e.in_frr != Some(false))
            .map(|(p, _)| p.to_string())
            .collect();
        list.join(", ")
    }

    fn withdraw_reason(&self, entry: &Entry) -> String {
        if self.shutting_down {
            "shutting down".into()
        } else if let Some(reason) = &self.fail_closed {
            format!("fail closed: {reason}")
        } else if !self.dataplane_running {
            "data plane not running".into()
        } else if !entry.planned {
            "no longer in the plan".into()
        } else {
            "cannot serve: too few healthy backends and no fallback".into()
        }
    }
}

impl Announcer {
    /// Starts the announcer's thread. Nothing is announced before the first
    /// [`Announcer::set_desired`], but FRR is read at once, so the status soon shows whether it
    /// can be reached.
    pub fn spawn(config: BgpConfig) -> Result<Announcer, AnnounceError> {
        let shared = Arc::new(Shared::new(config));
        let for_worker = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("fwd-bgp".into())
            .spawn(move || Worker::new(for_worker).run())
            .map_err(AnnounceError::Spawn)?;
        Ok(Announcer { shared, worker: Some(worker) })
    }

    /// Sets what should be announced: every prefix of the plan (from [`plan_prefixes`]) with
    /// whether it can serve, and whether the data plane runs (nothing is announced while it does
    /// not). A prefix missing from the list is withdrawn and then forgotten. Never blocks on FRR.
    pub fn set_desired(&self, prefixes: Vec<(IpPrefix, bool)>, dataplane_running: bool) {
        let mut st = self.shared.lock();
        let mut listed: BTreeMap<IpPrefix, bool> = BTreeMap::new();
        for (prefix, can_serve) in prefixes {
            // Listed twice: it can serve only if both say so.
            *listed.entry(prefix).or_insert(true) &= can_serve;
        }
        for entry in st.entries.values_mut() {
            entry.planned = false;
            entry.can_serve = false;
        }
        let (hold_down, damping) = (st.config.hold_down, st.config.damping.clone());
        for (prefix, can_serve) in listed {
            let entry = st.entries.entry(prefix).or_insert_with(|| Entry {
                policy: PrefixPolicy::new(hold_down, damping.clone()),
                can_serve,
                planned: true,
                desired: false,
                in_frr: None,
            });
            entry.planned = true;
            entry.can_serve = can_serve;
        }
        st.dataplane_running = dataplane_running;
        // Decided here, not on the thread, so the status answers for the inputs at once.
        let logs = evaluate(&mut st, Instant::now());
        self.shared.poke(&mut st);
        drop(st);
        print(&logs);
    }

    /// A snapshot of the announcer's state.
    pub fn status(&self) -> AnnouncerStatus {
        let st = self.shared.lock();
        let now = Instant::now();
        let ago = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        AnnouncerStatus {
            dataplane_running: st.dataplane_running,
            fail_closed: st.fail_closed.clone(),
            shutting_down: st.shutting_down,
            frr: FrrStatus {
                reachable: st.frr.reachable,
                last_error: st.frr.last_error.clone(),
                last_reconcile_secs_ago: st.frr.last_reconcile.map(ago),
                consecutive_failures: st.frr.failures,
                next_retry_in_secs: st.frr.retry_at.map(|t| t.saturating_duration_since(now).as_secs_f64()),
            },
            prefixes: st
                .entries
                .iter()
                .map(|(prefix, e)| PrefixStatus {
                    prefix: *prefix,
                    can_serve: e.can_serve,
                    desired: e.desired,
                    effective: e.policy.effective(),
                    in_frr: e.in_frr,
                    last_change_secs_ago: e.policy.last_change().map(ago),
                    penalty: e.policy.penalty(now),
                    suppressed: e.policy.suppressed(),
                    hold_down_remaining_secs: e.policy.hold_down_remaining(now).map(|d| d.as_secs_f64()),
                    planned: e.planned,
                })
                .collect(),
        }
    }

    /// Shutdown: withdraws every prefix, keeps them withdrawn from now on, and waits until a read
    /// of bgpd's configuration confirms it or `deadline` passes.
    pub fn withdraw_all_and_wait(&self, deadline: Duration) -> Result<(), AnnounceError> {
        let end = Instant::now() + deadline;
        let mut st = self.shared.lock();
        if !st.worker_alive {
            return Err(AnnounceError::Stopped);
        }
        let first = !st.shutting_down;
        st.shutting_down = true;
        st.urgent = true;
        let logs = evaluate(&mut st, Instant::now());
        self.shared.poke(&mut st);
        let pass_before = st.passes_started;
        drop(st);
        if first {
            eprintln!("fwd: bgp: shutting down: withdrawing every prefix");
        }
        print(&logs);
        let mut st = self.shared.lock();
        if st.entries.is_empty() {
            return Ok(());
        }
        loop {
            if st.passes_completed > pass_before && st.all_withdrawn_and_confirmed() {
                return Ok(());
            }
            if !st.worker_alive {
                return Err(AnnounceError::Stopped);
            }
            let now = Instant::now();
            if now >= end {
                return Err(AnnounceError::NotConfirmed {
                    deadline,
                    pending: st.unconfirmed(),
                    last_error: st.frr.last_error.clone(),
                });
            }
            st = self.shared.progress.wait_timeout(st, end - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Fail closed (the watchdog saw a stuck worker): withdraws every prefix as soon as the
    /// announcer's thread can, and keeps them withdrawn for the rest of the process. Returns at
    /// once.
    pub fn fail_closed(&self, reason: &str) {
        let mut st = self.shared.lock();
        let first = st.fail_closed.is_none();
        if first {
            st.fail_closed = Some(reason.to_string());
        }
        st.urgent = true;
        let logs = evaluate(&mut st, Instant::now());
        self.shared.poke(&mut st);
        drop(st);
        if first {
            eprintln!("fwd: bgp: fail closed ({reason}): withdrawing every prefix");
        }
        print(&logs);
    }

    /// Takes a reloaded `[bgp]`: vtysh settings, timers and damping thresholds apply at once
    /// (penalties and hold-downs in progress are kept). The prefixes come with the next
    /// [`Announcer::set_desired`].
    pub fn reload(&self, config: BgpConfig) {
        let mut st = self.shared.lock();
        st.config = config;
        st.config_seq += 1;
        self.shared.poke(&mut st);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.poke(&mut st);
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// One reconcile pass to run outside the lock.
#[derive(Debug)]
struct Job {
    /// Every prefix with its effective state and what FRR was last seen to have.
    items: Vec<(IpPrefix, bool, Option<bool>)>,
    /// Read FRR's state first, even where it is believed known.
    full_read: bool,
}

/// What a pass learnt: what FRR has, and whether it read FRR's state.
#[derive(Debug)]
struct PassResult {
    in_frr: BTreeMap<IpPrefix, bool>,
    read: bool,
}

/// The announcer's thread.
struct Worker {
    shared: Arc<Shared>,
    vtysh: Vtysh,
    config_seq: u64,
    next_reconcile: Instant,
}

/// Marks the worker gone however it ends, so waiters do not wait for it.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.worker_alive = false;
        self.0.progress.notify_all();
    }
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        let vtysh = Vtysh::new(&shared.lock().config);
        Worker { shared, vtysh, config_seq: 0, next_reconcile: Instant::now() }
    }

    fn run(mut self) {
        let _alive = AliveGuard(Arc::clone(&self.shared));
        let mut sleep_until: Option<Instant> = None;
        let shared = Arc::clone(&self.shared);
        loop {
            let mut st = shared.lock();
            if let Some(until) = sleep_until {
                while !st.dirty {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    st = shared.wake.wait_timeout(st, until - now).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
            st.dirty = false;
            let now = Instant::now();
            self.take_config(&mut st, now);
            let logs = evaluate(&mut st, now);
            if st.stop {
                let leftovers: Vec<Change> = st
                    .entries
                    .iter()
                    .filter(|(_, e)| e.in_frr != Some(false))
                    .map(|(p, _)| Change::Withdraw(*p))
                    .collect();
                let logged = st.shutting_down || st.fail_closed.is_some();
                drop(st);
                print(&logs);
                if !leftovers.is_empty() {
                    for c in leftovers.iter().filter(|_| !logged) {
                        eprintln!("fwd: bgp: withdraw {} (announcer stopped)", c.prefix());
                    }
                    if let Err(e) = self.vtysh.apply(&leftovers) {
                        eprintln!("fwd: bgp: could not withdraw on stop: {e}");
                    }
                }
                return;
            }
            match self.schedule(&mut st, now) {
                Ok(job) => {
                    st.passes_started += 1;
                    drop(st);
                    print(&logs);
                    let result = self.execute(&job);
                    self.record(&job, result);
                    sleep_until = None;
                }
                Err(wake_at) => {
                    drop(st);
                    print(&logs);
                    sleep_until = Some(wake_at);
                }
            }
        }
    }

    fn take_config(&mut self, st: &mut State, now: Instant) {
        if st.config_seq == self.config_seq {
            return;
        }
        self.config_seq = st.config_seq;
        self.vtysh = Vtysh::new(&st.config);
        let (hold_down, damping) = (st.config.hold_down, st.config.damping.clone());
        for entry in st.entries.values_mut() {
            entry.policy.set_config(hold_down, damping.clone(), now);
        }
        self.next_reconcile = now;
    }

    /// A pass to run now, or when to look again.
    fn schedule(&self, st: &mut State, now: Instant) -> Result<Job, Instant> {
        let differs = st.entries.values().any(|e| e.in_frr != Some(e.policy.effective()));
        // A pass is wanted now when FRR may differ from the decisions, else at the next reconcile;
        // after a failure, not before the backoff ends unless everything must go.
        let wanted_at = if st.urgent || differs { now } else { self.next_reconcile };
        let allowed_at = match st.frr.retry_at {
            Some(retry) if !st.urgent => retry,
            _ => now,
        };
        let run_at = wanted_at.max(allowed_at);
        if run_at <= now {
            let items: Vec<(IpPrefix, bool, Option<bool>)> =
                st.entries.iter().map(|(p, e)| (*p, e.policy.effective(), e.in_frr)).collect();
            let full_read = st.urgent || now >= self.next_reconcile;
            st.urgent = false;
            return Ok(Job { items, full_read });
        }
        // Policies act at the end of a hold-down or suppression; `evaluate` just ran, so those
        // times lie ahead. The floor only keeps a rounding slip from turning into a busy loop.
        let policy_events = st.entries.values().filter_map(|e| e.policy.next_event());
        let wake = policy_events.fold(run_at, Instant::min);
        Err(wake.max(now + Duration::from_millis(1)))
    }

    /// Reads FRR's state if needed, sends what differs in one vtysh run, and reads back.
    fn execute(&self, job: &Job) -> Result<PassResult, VtyshError> {
        let mut read = false;
        let mut known: BTreeMap<IpPrefix, Option<bool>> =
            job.items.iter().map(|&(p, _, frr)| (p, frr)).collect();
        // `network P` is idempotent, so an unknown prefix that should be announced is simply
        // announced (and confirmed by the read-back); an unknown one to withdraw needs a read
        // first, since each `no network` FRR refuses costs another vtysh run.
        let unknown_withdraw = job.items.iter().any(|&(_, effective, frr)| frr.is_none() && !effective);
        if job.full_read || unknown_withdraw {
            let state = self.vtysh.read_state()?;
            read = true;
            for (prefix, has) in known.iter_mut() {
                *has = Some(state.networks.contains(prefix));
            }
        }
        let mut changes = Vec::new();
        for &(prefix, effective, believed) in &job.items {
            let has = known.get(&prefix).copied().flatten();
            if has == Some(effective) {
                continue;
            }
            if believed == Some(effective) {
                // The decision did not change, FRR did: bgpd restarted, or someone edited it.
                let what =
                    if effective { "lost it; announcing it again" } else { "has it; withdrawing it again" };
                eprintln!("fwd: bgp: {prefix}: FRR {what}");
            }
            changes.push(if effective { Change::Announce(prefix) } else { Change::Withdraw(prefix) });
        }
        if changes.is_empty() {
            return Ok(PassResult { in_frr: flatten(known), read });
        }
        self.vtysh.apply(&changes)?;
        let state = self.vtysh.read_state()?;
        let in_frr: BTreeMap<IpPrefix, bool> =
            job.items.iter().map(|&(p, _, _)| (p, state.networks.contains(&p))).collect();
        let stuck: Vec<String> = job
            .items
            .iter()
            .filter(|&&(p, effective, _)| in_frr.get(&p) != Some(&effective))
            .map(|(p, _, _)| p.to_string())
            .collect();
        if !stuck.is_empty() {
            return Err(VtyshError::Unexpected {
                program: self.vtysh.program(),
                what: "accepted the changes".into(),
                output: format!("but bgpd's running-config still differs for {}", stuck.join(", ")),
            });
        }
        Ok(PassResult { in_frr, read: true })
    }

    fn record(&mut self, job: &Job, result: Result<PassResult, VtyshError>) {
        let now = Instant::now();
        let mut logs = Vec::new();
        let mut st = self.shared.lock();
        st.passes_completed += 1;
        match result {
            Ok(pass) => {
                for (prefix, has) in &pass.in_frr {
                    if let Some(entry) = st.entries.get_mut(prefix) {
                        entry.in_frr = Some(*has);
                    }
                }
                st.entries.retain(|_, e| e.planned || e.policy.effective() || e.in_frr != Some(false));
                if st.frr.reachable == Some(false) || st.frr.last_error.is_some() {
                    logs.push("fwd: bgp: FRR answers again".to_string());
                }
                st.frr = FrrHealth {
                    reachable: Some(true),
                    last_error: None,
                    last_reconcile: if pass.read { Some(now) } else { st.frr.last_reconcile },
                    failures: 0,
                    retry_at: None,
                };
                if pass.read {
                    self.next_reconcile = now + st.config.reconcile_interval;
                }
            }
            Err(error) => {
                for (prefix, _, _) in &job.items {
                    if let Some(entry) = st.entries.get_mut(prefix) {
                        entry.in_frr = None;
                    }
                }
                st.frr.failures = st.frr.failures.saturating_add(1);
                let doublings = st.frr.failures.saturating_sub(1).min(16);
                let backoff = (FIRST_RETRY * 2u32.pow(doublings)).min(st.config.reconcile_interval);
                let message = error.to_string();
                if st.frr.last_error.as_ref() != Some(&message) {
                    logs.push(format!(
                        "fwd: bgp: {message}; retrying every {} at most",
                        format_duration(backoff)
                    ));
                }
                st.frr.reachable = Some(error.reached_frr());
                st.frr.last_error = Some(message);
                st.frr.retry_at = Some(now + backoff);
                self.next_reconcile = now + backoff;
            }
        }
        self.shared.progress.notify_all();
        drop(st);
        print(&logs);
    }
}

/// Feeds every prefix's wanted state to its policy; returns what to log.
fn evaluate(st: &mut State, now: Instant) -> Vec<String> {
    let mut logs = Vec::new();
    let serving = st.dataplane_running && st.fail_closed.is_none() && !st.shutting_down;
    let reasons: BTreeMap<IpPrefix, String> = st
        .entries
        .iter()
        .filter(|(_, e)| e.policy.effective())
        .map(|(p, e)| (*p, st.withdraw_reason(e)))
        .collect();
    for (prefix, entry) in st.entries.iter_mut() {
        let desired = serving && entry.planned && entry.can_serve;
        let was = entry.policy.effective();
        let was_suppressed = entry.policy.suppressed();
        let effective = entry.policy.update(now, desired);
        match (was, effective) {
            (false, true) => logs.push(format!("fwd: bgp: announce {prefix}")),
            (true, false) => {
                let reason = reasons.get(prefix).map_or("", String::as_str);
                logs.push(format!("fwd: bgp: withdraw {prefix} ({reason})"));
            }
            _ => {}
        }
        if entry.policy.suppressed() && !was_suppressed {
            logs.push(format!(
                "fwd: bgp: {prefix} suppressed by flap damping (penalty {:.0} above {}); withdrawn until it \
                 decays below {}",
                entry.policy.penalty(now),
                st.config.damping.suppress,
                st.config.damping.reuse
            ));
        } else if was_suppressed && !entry.policy.suppressed() {
            logs.push(format!("fwd: bgp: {prefix} no longer suppressed by flap damping"));
        }
        if desired && !entry.desired && !effective {
            if let Some(wait) = entry.policy.hold_down_remaining(now) {
                logs.push(format!(
                    "fwd: bgp: {prefix} can serve again; announcing after the hold-down ({} left)",
                    format_duration(Duration::from_millis(wait.as_millis() as u64))
                ));
            }
        }
        entry.desired = desired;
    }
    logs
}

fn flatten(known: BTreeMap<IpPrefix, Option<bool>>) -> BTreeMap<IpPrefix, bool> {
    known.into_iter().filter_map(|(p, has)| has.map(|h| (p, h))).collect()
}

fn print(logs: &[String]) {
    for line in logs {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    pub(crate) fn bgp_config(vtysh: PathBuf) -> BgpConfig {
        BgpConfig {
            vtysh,
            vty_socket: None,
            namespace: None,
            extra_args: Vec::new(),
            reconcile_interval: Duration::from_secs(1),
            hold_down: Duration::from_secs(1),
            vtysh_timeout: Duration::from_secs(2),
            drain_time: Duration::from_secs(1),
            min_healthy: 1,
            damping: crate::config::DampingConfig::default(),
            prefixes: Vec::new(),
        }
    }

    /// A vtysh that keeps `network` statements in a file, enough for the announcer's loop:
    /// `show running-config` prints them; `network` / `no network` edit them.
    fn file_backed_vtysh(dir: &std::path::Path) -> PathBuf {
        let script = dir.join("vtysh");
        let state = dir.join("networks");
        std::fs::write(&state, "").unwrap();
        let body = format!(
            r#"#!/bin/bash
S={state}
echo x >> {dir}/attempts
[ -e {dir}/down ] && {{ echo 'Exiting: failed to connect to any daemons.' >&2; exit 1; }}
echo "$*" >> {dir}/calls
while [ $# -gt 0 ]; do
  if [ "$1" = -c ]; then
    case "$2" in
      "show running-config")
        echo 'router bgp 65001'; echo ' address-family ipv4 unicast'
        grep -v : "$S" | sed 's/^/  network /'; echo ' exit-address-family'
        echo ' address-family ipv6 unicast'; grep : "$S" | sed 's/^/  network /'
        echo ' exit-address-family'; echo 'exit'; echo 'end';;
      "no network "*) echo "vm# $2"; p=${{2#no network }}
        grep -qxF "$p" "$S" || {{ echo "% Can't find static route specified"; exit 1; }}
        grep -vxF "$p" "$S" > "$S.new"; mv "$S.new" "$S";;
      "network "*) echo "vm# $2"; p=${{2#network }}; grep -qxF "$p" "$S" || echo "$p" >> "$S";;
      *) echo "vm# $2";;
    esac
    shift
  fi
  shift
done"#,
            state = state.display(),
            dir = dir.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// A fresh directory, removed on drop (also when the test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("fwdtest-announce-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl std::ops::Deref for TempDir {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn wait_for(
        announcer: &Announcer,
        timeout: Duration,
        what: &str,
        done: impl Fn(&AnnouncerStatus) -> bool,
    ) -> AnnouncerStatus {
        let end = Instant::now() + timeout;
        loop {
            let status = announcer.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}: {status:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    fn networks(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("networks")).unwrap().lines().map(String::from).collect()
    }

    #[test]
    fn schedule_waits_out_the_backoff_unless_urgent() {
        let shared = Arc::new(Shared::new(bgp_config(PathBuf::from("/nonexistent/vtysh"))));
        let mut worker = Worker::new(Arc::clone(&shared));
        let now = Instant::now();
        let mut st = shared.lock();
        // A reload made a reconcile due while FRR is failing: wait for the retry time.
        st.frr.retry_at = Some(now + Duration::from_millis(500));
        worker.next_reconcile = now;
        assert_eq!(worker.schedule(&mut st, now).unwrap_err(), now + Duration::from_millis(500));
        st.urgent = true;
        let job = worker.schedule(&mut st, now).unwrap();
        assert!(job.full_read && job.items.is_empty() && !st.urgent);
        // Healthy and in line: the next periodic reconcile, or a policy event before it.
        st.frr.retry_at = None;
        worker.next_reconcile = now + Duration::from_secs(1);
        assert_eq!(worker.schedule(&mut st, now).unwrap_err(), now + Duration::from_secs(1));
        let mut policy =
            PrefixPolicy::new(Duration::from_millis(300), crate::config::DampingConfig::default());
        policy.update(now - Duration::from_secs(10), true);
        policy.update(now, false);
        policy.update(now, true);
        let entry = Entry { policy, can_serve: true, planned: true, desired: true, in_frr: Some(false) };
        st.entries.insert(prefix("198.18.100.1/32"), entry);
        assert_eq!(worker.schedule(&mut st, now).unwrap_err(), now + Duration::from_millis(300));
        // A decision FRR does not reflect yet: run now, reading only what is unknown.
        st.entries.values_mut().for_each(|e| e.in_frr = Some(true));
        let job = worker.schedule(&mut st, now).unwrap();
        assert!(!job.full_read);
    }

    #[test]
    fn announces_withdraws_and_repairs_through_a_fake_vtysh() {
        let dir = TempDir::new("fake");
        let announcer = Announcer::spawn(bgp_config(file_backed_vtysh(&dir))).unwrap();
        let (a, b) = (prefix("198.18.100.1/32"), prefix("fd00:18:100::1/128"));
        announcer.set_desired(vec![(a, true), (b, true)], true);
        wait_for(&announcer, Duration::from_secs(5), "both in FRR", |s| {
            s.prefixes.iter().all(|p| p.in_frr == Some(true)) && s.prefixes.len() == 2
        });
        assert_eq!(networks(&dir), ["198.18.100.1/32", "fd00:18:100::1/128"]);
        // Nothing running: everything goes.
        announcer.set_desired(vec![(a, true), (b, true)], false);
        let status = wait_for(&announcer, Duration::from_secs(5), "withdrawn", |s| {
            s.prefixes.iter().all(|p| p.in_frr == Some(false))
        });
        assert!(status.prefixes.iter().all(|p| !p.desired && !p.effective && p.can_serve));
        assert!(networks(&dir).is_empty());
        // Someone adds one behind fwd's back: the next reconcile removes it.
        std::fs::write(dir.join("networks"), "198.18.100.1/32\n").unwrap();
        let start = Instant::now();
        while !networks(&dir).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(3), "not repaired");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(announcer);
    }

    #[test]
    fn unreachable_frr_is_reported_retried_and_never_blocks_callers() {
        let dir = TempDir::new("down");
        std::fs::write(dir.join("down"), "").unwrap();
        let announcer = Announcer::spawn(bgp_config(file_backed_vtysh(&dir))).unwrap();
        let a = prefix("198.18.100.1/32");
        let start = Instant::now();
        announcer.set_desired(vec![(a, true)], true);
        announcer.fail_closed("test watchdog");
        announcer.reload(bgp_config(dir.join("vtysh")));
        assert!(start.elapsed() < Duration::from_millis(50), "callers waited {:?}", start.elapsed());
        let status =
            wait_for(&announcer, Duration::from_secs(5), "two failures", |s| s.frr.consecutive_failures >= 2);
        assert_eq!(status.frr.reachable, Some(false));
        assert!(status.frr.last_error.as_deref().unwrap().contains("bgpd is not reachable"), "{status:?}");
        assert_eq!(status.prefixes[0].in_frr, None);
        assert_eq!(status.fail_closed.as_deref(), Some("test watchdog"));
        // Backing off: 250 ms, 500 ms, then every 1 s (the reconcile interval), not a busy loop.
        let attempts = || std::fs::read_to_string(dir.join("attempts")).unwrap_or_default().lines().count();
        let before = attempts();
        std::thread::sleep(Duration::from_millis(2100));
        let during = attempts() - before;
        assert!((1..=4).contains(&during), "{during} attempts in 2.1 s");
        let err = announcer.withdraw_all_and_wait(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, AnnounceError::NotConfirmed { .. }), "{err}");
        assert!(
            err.to_string().contains("198.18.100.1/32") && err.to_string().contains("not reachable"),
            "{err}"
        );
        // FRR comes back: confirmed, and still withdrawn (fail closed).
        std::fs::remove_file(dir.join("down")).unwrap();
        announcer.withdraw_all_and_wait(Duration::from_secs(5)).unwrap();
        let status = announcer.status();
        assert_eq!((status.frr.reachable, status.frr.last_error.clone()), (Some(true), None));
        assert!(status.prefixes.iter().all(|p| !p.effective && p.in_frr == Some(false)), "{status:?}");
        drop(announcer);
    }

    #[test]
    fn hold_down_and_retirement_show_in_status() {
        let dir = TempDir::new("hold");
        let announcer = Announcer::spawn(bgp_config(file_backed_vtysh(&dir))).unwrap();
        let (a, b) = (prefix("198.18.100.1/32"), prefix("198.18.100.2/32"));
        announcer.set_desired(vec![(a, true), (b, true)], true);
        wait_for(&announcer, Duration::from_secs(5), "announced", |s| {
            s.prefixes.iter().all(|p| p.in_frr == Some(true))
        });
        announcer.set_desired(vec![(a, false), (b, true)], true);
        wait_for(&announcer, Duration::from_secs(5), "a withdrawn", |s| s.prefixes[0].in_frr == Some(false));
        let back = Instant::now();
        announcer.set_desired(vec![(a, true), (b, true)], true);
        let status = announcer.status();
        let remaining = status.prefixes[0].hold_down_remaining_secs;
        assert!(remaining.is_some_and(|r| r > 0.5 && r <= 1.0), "{status:?}");
        assert!(status.prefixes[0].penalty > 900.0, "{status:?}");
        wait_for(&announcer, Duration::from_secs(5), "a back", |s| s.prefixes[0].in_frr == Some(true));
        assert!(back.elapsed() >= Duration::from_millis(900), "hold-down ignored: {:?}", back.elapsed());
        // b leaves the plan: withdrawn, confirmed, forgotten.
        announcer.set_desired(vec![(a, true)], true);
        wait_for(&announcer, Duration::from_secs(5), "b forgotten", |s| s.prefixes.len() == 1);
        assert_eq!(networks(&dir), ["198.18.100.1/32"]);
        let json = serde_json::to_value(announcer.status()).unwrap();
        assert_eq!(json["prefixes"][0]["prefix"], "198.18.100.1/32");
        assert_eq!(json["frr"]["reachable"], true);
        // Dropped without a shutdown: it still withdraws on the way out.
        drop(announcer);
        assert!(networks(&dir).is_empty());
    }
}
