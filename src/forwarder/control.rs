//! The control loop's state and work: everything the forwarder decides off the data path.
//!
//! [`Control`] owns the running config, the live state (health, drains, next hops), the snapshot
//! builder and the XDP program. It rebuilds and publishes a snapshot whenever an input changed
//! (one atomic swap; workers pick it up at their next batch), answers the admin socket and the
//! metrics endpoint from the same state, and applies reloads as a difference. It is the only
//! writer of everything here, so nothing is locked.

use crate::forwarder::worker::WorkerShared;
use crate::netinfo::{self, Interface};
use arc_swap::ArcSwap;
use fwd_afxdp::XdpProgram;
use fwd_control::admin::{
    AdminCall, BackendStatus, BatchTimes, ReloadReport, Request, Response, ServiceStatus, SocketStats,
    StatsReport, StatusReport, WorkerStats,
};
use fwd_control::announce::{plan_prefixes, Announcer, ServiceServing};
use fwd_control::config::{format_mac, host_port, load_config, BackendConfig, Config, ServiceConfig};
use fwd_control::health::{CheckTarget, Health, HealthChecker};
use fwd_control::metrics::{Exposition, Kind};
use fwd_control::tables::{
    backends_of, cluster_fingerprint, BackendId, InterfaceFacts, LiveState, SnapshotBuilder,
};
use fwd_dataplane::counters::{BackendFigures, DropReason, SharedBackendCounters, WorkerCounters};
use fwd_dataplane::maglev::MaglevTable;
use fwd_dataplane::snapshot::{BackendIdx, BackendState, ForwardMode, Snapshot};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Batch-time percentiles published by a worker once a second (nanoseconds).
#[derive(Debug, Default)]
pub struct BatchTimesShared {
    samples_total: AtomicU64,
    /// Sum of every timed batch, in nanoseconds (the histogram's mean times its count per window).
    sum_ns_total: AtomicU64,
    window_samples: AtomicU64,
    p50: AtomicU64,
    p90: AtomicU64,
    p99: AtomicU64,
    p999: AtomicU64,
    max: AtomicU64,
}

impl BatchTimesShared {
    /// Called by the owning worker with the histogram of the window that just ended.
    pub fn publish(&self, h: &Histogram<u64>) {
        let n = h.len();
        self.samples_total.fetch_add(n, Ordering::Relaxed);
        self.sum_ns_total.fetch_add((h.mean() * n as f64) as u64, Ordering::Relaxed);
        self.window_samples.store(n, Ordering::Relaxed);
        let q = |q: f64| if n == 0 { 0 } else { h.value_at_quantile(q) };
        self.p50.store(q(0.5), Ordering::Relaxed);
        self.p90.store(q(0.9), Ordering::Relaxed);
        self.p99.store(q(0.99), Ordering::Relaxed);
        self.p999.store(q(0.999), Ordering::Relaxed);
        self.max.store(if n == 0 { 0 } else { h.max() }, Ordering::Relaxed);
    }

    pub fn read(&self) -> BatchTimes {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BatchTimes {
            samples: l(&self.window_samples),
            p50: l(&self.p50),
            p90: l(&self.p90),
            p99: l(&self.p99),
            p999: l(&self.p999),
            max: l(&self.max),
        }
    }

    pub fn samples_total(&self) -> u64 {
        self.samples_total.load(Ordering::Relaxed)
    }

    pub fn sum_seconds_total(&self) -> f64 {
        self.sum_ns_total.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Settings read once at start; a reload that changes them says they need a restart.
#[derive(Clone, Debug, PartialEq)]
struct StartupSettings {
    nic: Option<String>,
    cores: Option<String>,
    xdp_mode: String,
    conntrack: String,
    admin_socket: PathBuf,
    metrics_listen: Option<SocketAddr>,
}

impl StartupSettings {
    fn of(c: &Config) -> Self {
        StartupSettings {
            nic: c.nic.clone(),
            cores: c.cores.clone(),
            xdp_mode: c.xdp_mode.name().to_string(),
            conntrack: format!("{:?}", c.conntrack),
            admin_socket: c.admin.socket.clone(),
            metrics_listen: c.admin.metrics_listen,
        }
    }

    fn differences(&self, other: &StartupSettings) -> Vec<String> {
        let mut out = Vec::new();
        if self.nic != other.nic {
            out.push("nic".to_string());
        }
        if self.cores != other.cores {
            out.push("cores".to_string());
        }
        if self.xdp_mode != other.xdp_mode {
            out.push("xdp_mode".to_string());
        }
        if self.conntrack != other.conntrack {
            out.push("conntrack".to_string());
        }
        if self.admin_socket != other.admin_socket {
            out.push("admin.socket".to_string());
        }
        if self.metrics_listen != other.metrics_listen {
            out.push("admin.metrics_listen".to_string());
        }
        out
    }
}

/// The forwarder's control state.
pub struct Control {
    pub config: Config,
    config_path: PathBuf,
    iface: Interface,
    facts: InterfaceFacts,
    builder: SnapshotBuilder,
    live: LiveState,
    resolver: NextHopResolver,
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    program: XdpProgram,
    health: HealthChecker,
    /// Present with a `[bgp]` section: tells FRR which VIP prefixes to announce.
    announcer: Option<Announcer>,
    /// Set by the watchdog or at shutdown: nothing is announced any more.
    announcing_stopped: bool,
    /// Which backends each check target decides for (a target shared by services runs once).
    checked: HashMap<CheckTarget, Vec<BackendId>>,
    pub workers: Vec<Arc<WorkerShared>>,
    epoch: Instant,
    startup: StartupSettings,
    last_reload: Option<ReloadReport>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// Set when an input of the snapshot changed since the last publish.
    dirty: bool,
    publishes: u64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

impl Control {
    /// Builds the first snapshot (fails fast if the tables cannot be built).
    pub fn new(
        config: Config,
        config_path: PathBuf,
        iface: Interface,
        program: XdpProgram,
        epoch: Instant,
    ) -> anyhow::Result<Control> {
        let facts = InterfaceFacts { mac: iface.mac, ipv4: iface.ipv4, ipv6: iface.ipv6 };
        let mut resolver = NextHopResolver::default();
        let live = LiveState { next_hops: resolver.resolve(&iface, &config), ..LiveState::default() };
        let mut builder = SnapshotBuilder::new();
        let (snap, _) = builder.build(&config, &facts, &live)?;
        let startup = StartupSettings::of(&config);
        let health = HealthChecker::start()?;
        let checked = check_targets(&config);
        health.set_targets(checked.keys().cloned());
        let announcer = match &config.bgp {
            Some(bgp) => Some(Announcer::spawn(bgp.clone())?),
            None => None,
        };
        Ok(Control {
            config,
            config_path,
            iface,
            facts,
            builder,
            live,
            resolver,
            snapshots: Arc::new(ArcSwap::from_pointee(snap)),
            program,
            health,
            announcer,
            announcing_stopped: false,
            checked,
            workers: Vec::new(),
            epoch,
            startup,
            last_reload: None,
            reloads_ok: 0,
            reloads_failed: 0,
            dirty: false,
            publishes: 0,
        })
    }

    pub fn program(&mut self) -> &mut XdpProgram {
        &mut self.program
    }

    /// Backend indices a worker's shared per-backend counters must hold for the current snapshot.
    pub fn backend_capacity(&self) -> usize {
        (self.snapshots.load().backends.len() * 2).max(64)
    }

    /// Every health target has answered at least once (the announcer waits for it).
    pub fn health_answered(&self) -> bool {
        self.health.all_answered()
    }

    /// Folds the checker's verdicts into `live.down`: a backend is down while its check says so.
    /// Recomputed from the checker's table rather than from its events, so nothing can be missed.
    fn apply_health(&mut self) {
        // The checker logged each transition once; here only what it does to the tables.
        let _ = self.health.try_events();
        let mut down = HashSet::new();
        for (target, ids) in &self.checked {
            if self.health.health(target) == Health::Down {
                down.extend(ids.iter().copied());
            }
        }
        if down != self.live.down {
            self.live.down = down;
            self.dirty = true;
        }
    }

    /// One round of periodic work: health, next hops, then a publish if anything changed.
    pub fn tick(&mut self) {
        self.apply_health();
        let next_hops = self.resolver.resolve(&self.iface, &self.config);
        if next_hops != self.live.next_hops {
            self.live.next_hops = next_hops;
            self.dirty = true;
        }
        if self.dirty {
            self.publish();
        }
        self.update_announcements();
    }

    /// Tells the announcer which prefixes can serve now. Nothing is announced before every health
    /// check has answered once (a box that has not looked yet must not draw traffic) or while no
    /// worker runs.
    fn update_announcements(&self) {
        let Some(announcer) = &self.announcer else { return };
        if self.announcing_stopped {
            return;
        }
        let snap = self.snapshots.load();
        let serving: HashMap<_, ServiceServing> = snap
            .services
            .iter()
            .map(|s| {
                let up = s
                    .members
                    .iter()
                    .filter(|&&i| snap.backends.get(i as usize).is_some_and(|b| b.state == BackendState::Up))
                    .count() as u32;
                // An up member with weight 0 owns no slot: count only members that own slots.
                let healthy = if s.table.is_empty() { 0 } else { up };
                let fallback = s.fallback.as_ref().is_some_and(|f| !f.table.is_empty());
                (s.key, ServiceServing { healthy_backends: healthy, fallback_can_serve: fallback })
            })
            .collect();
        let prefixes = plan_prefixes(&self.config, &|key| serving.get(&key).copied().unwrap_or_default());
        let running = !self.workers.is_empty() && self.health.all_answered();
        announcer.set_desired(prefixes, running);
    }

    /// The watchdog's verdict: a worker whose heartbeat is older than `limit`, if any.
    pub fn stalled_worker(&self, limit: Duration) -> Option<(usize, Duration)> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.workers.iter().find_map(|w| {
            let age = Duration::from_millis(now_ms.saturating_sub(w.heartbeat_ms.load(Ordering::Relaxed)));
            (age > limit).then_some((w.core, age))
        })
    }

    /// Withdraws everything and announces nothing from now on: the other boxes take the traffic.
    pub fn fail_closed(&mut self, reason: &str) {
        self.announcing_stopped = true;
        if let Some(a) = &self.announcer {
            a.fail_closed(reason);
        }
    }

    /// At shutdown: withdraws every prefix and waits (bounded) until FRR confirms; returns how
    /// long the forwarder should keep forwarding so that routers converge (`bgp.drain_time`).
    pub fn withdraw_for_shutdown(&mut self) -> Duration {
        self.announcing_stopped = true;
        let (Some(a), Some(bgp)) = (&self.announcer, &self.config.bgp) else {
            return Duration::ZERO;
        };
        let deadline = (bgp.vtysh_timeout * 3).max(Duration::from_secs(2));
        match a.withdraw_all_and_wait(deadline) {
            Ok(()) => eprintln!(
                "fwd: every prefix withdrawn; forwarding for {} more while routers converge",
                fwd_control::config::format_duration(bgp.drain_time)
            ),
            Err(e) => eprintln!("fwd: withdrawing at shutdown: {e}; draining anyway"),
        }
        bgp.drain_time
    }

    /// Rebuilds the snapshot from the config and live state and swaps it in.
    fn publish(&mut self) {
        match self.builder.build(&self.config, &self.facts, &self.live) {
            Ok((snap, changes)) => {
                for c in changes {
                    eprintln!(
                        "fwd: service {}: table rebuilt, {} of {} slots moved",
                        c.service, c.moved_slots, c.size
                    );
                }
                let vips = snap.vip_addresses();
                let needed = snap.backends.len();
                // Workers publish per-backend figures into arrays control sizes: grow them first.
                for w in &self.workers {
                    if w.backends.load().capacity() < needed {
                        w.backends.store(Arc::new(SharedBackendCounters::with_capacity(needed * 2)));
                    }
                }
                self.snapshots.store(Arc::new(snap));
                self.publishes += 1;
                if let Err(e) = self.program.sync_vips(&vips) {
                    eprintln!("fwd: updating the XDP VIP map failed: {e}");
                }
                self.dirty = false;
            }
            Err(e) => eprintln!("fwd: rebuilding the tables failed, keeping the previous ones: {e}"),
        }
    }

    /// Answers a call from the admin socket or the metrics endpoint (a caller gone meanwhile is
    /// no error).
    pub fn answer(&mut self, call: AdminCall) {
        let response = self.handle(call.request);
        let _ = call.reply.send(response);
    }

    /// Answers one admin (or metrics) request.
    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(self.status()),
            Request::Stats => Response::ok(self.stats()),
            Request::Metrics => Response::ok(self.metrics()),
            Request::Reload => {
                let report = self.reload();
                if report.ok {
                    Response::ok(report)
                } else {
                    Response { ok: false, error: report.error.clone(), result: serde_json::json!(report) }
                }
            }
            Request::Drain { backend, service } => self.set_drained(&backend, service.as_deref(), true),
            Request::Undrain { backend, service } => self.set_drained(&backend, service.as_deref(), false),
        }
    }

    /// Re-reads the config file; on any error keeps the running config and says why.
    pub fn reload(&mut self) -> ReloadReport {
        let at_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let report = match load_config(&self.config_path) {
            Err(e) => {
                ReloadReport { ok: false, at_unix, error: Some(e.to_string()), ..ReloadReport::default() }
            }
            Ok(loaded) => {
                let new = loaded.config;
                let needs_restart = self.startup.differences(&StartupSettings::of(&new));
                if needs_restart.iter().any(|s| s == "nic") {
                    ReloadReport {
                        ok: false,
                        at_unix,
                        error: Some(format!(
                            "{}: nic changed from {:?} to {:?}; moving to another interface needs a restart",
                            self.config_path.display(),
                            self.startup.nic.as_deref().unwrap_or("(flag)"),
                            new.nic.as_deref().unwrap_or("(none)")
                        )),
                        ..ReloadReport::default()
                    }
                } else {
                    let mut report = diff_services(&self.config, &new);
                    report.ok = true;
                    report.at_unix = at_unix;
                    report.needs_restart = needs_restart;
                    self.config = new;
                    // Drains of backends that no longer exist are forgotten.
                    let ids: HashSet<BackendId> = backends_of(&self.config).map(|(id, _)| id).collect();
                    self.live.drained.retain(|id| ids.contains(id));
                    self.live.down.retain(|id| ids.contains(id));
                    match (&self.announcer, &self.config.bgp) {
                        (Some(a), Some(bgp)) => a.reload(bgp.clone()),
                        (Some(a), None) => {
                            // `[bgp]` removed: withdraw what this fwd announced, then stop announcing.
                            let _ = a.withdraw_all_and_wait(Duration::from_secs(5));
                            self.announcer = None;
                        }
                        (None, Some(bgp)) => match Announcer::spawn(bgp.clone()) {
                            Ok(a) => self.announcer = Some(a),
                            Err(e) => eprintln!("fwd: reload: cannot start the BGP announcer: {e}"),
                        },
                        (None, None) => {}
                    }
                    // Unchanged checks keep their state and schedule; new ones start Unknown.
                    self.checked = check_targets(&self.config);
                    self.health.set_targets(self.checked.keys().cloned());
                    self.apply_health();
                    self.dirty = true;
                    self.publish();
                    report
                }
            }
        };
        if report.ok {
            self.reloads_ok += 1;
            eprintln!(
                "fwd: reloaded {}: {} (added {:?}, removed {:?}, changed {:?}{})",
                self.config_path.display(),
                self.config.summary(),
                report.services_added,
                report.services_removed,
                report.services_changed,
                if report.needs_restart.is_empty() {
                    String::new()
                } else {
                    format!("; needs a restart to take effect: {}", report.needs_restart.join(", "))
                }
            );
        } else {
            self.reloads_failed += 1;
            eprintln!(
                "fwd: reload failed, keeping the running config: {}",
                report.error.as_deref().unwrap_or("unknown error")
            );
        }
        self.last_reload = Some(report.clone());
        report
    }

    /// `fwd drain` / `fwd undrain`.
    fn set_drained(&mut self, backend: &str, service: Option<&str>, drained: bool) -> Response {
        let (addr, port) = match parse_backend(backend) {
            Ok(v) => v,
            Err(e) => return Response::error(e),
        };
        if let Some(name) = service {
            if !self.config.services.iter().any(|s| service_matches(s, name)) {
                let names: Vec<&str> = self.config.services.iter().map(|s| s.name.as_str()).collect();
                return Response::error(format!("no service {name:?}; services are: {}", names.join(", ")));
            }
        }
        let in_scope = |id: &BackendId| {
            service.is_none_or(|name| {
                self.config.services.iter().any(|s| s.key() == id.service && service_matches(s, name))
            })
        };
        let matched: Vec<BackendId> = backends_of(&self.config)
            .map(|(id, _)| id)
            .filter(|id| id.addr == addr && (port.is_none() || port == id.port) && in_scope(id))
            .collect();
        if matched.is_empty() {
            return Response::error(format!(
                "no backend {backend}{} in the running config",
                service.map(|s| format!(" in service {s:?}")).unwrap_or_default()
            ));
        }
        let mut changed = Vec::new();
        for id in &matched {
            let did = if drained { self.live.drained.insert(*id) } else { self.live.drained.remove(id) };
            if did {
                changed.push(id.to_string());
            }
        }
        if !changed.is_empty() {
            eprintln!("fwd: {} {}", if drained { "drained" } else { "undrained" }, changed.join(", "));
            self.dirty = true;
            self.publish();
        }
        Response::ok(serde_json::json!({
            "matched": matched.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
            "changed": changed,
        }))
    }

    /// Per backend index: the figures summed over every worker.
    fn backend_figures(&self) -> Vec<BackendFigures> {
        let mut total: Vec<BackendFigures> = Vec::new();
        for w in &self.workers {
            let figures = w.backends.load().read();
            if total.len() < figures.len() {
                total.resize(figures.len(), BackendFigures::default());
            }
            for (t, f) in total.iter_mut().zip(&figures) {
                t.add(f);
            }
        }
        total
    }

    /// `fwd status`.
    pub fn status(&self) -> StatusReport {
        let snap = self.snapshots.load();
        let figures = self.backend_figures();
        let figure = |idx: BackendIdx| figures.get(idx as usize).copied().unwrap_or_default();
        let mut services = Vec::new();
        for (s, cfg) in snap.services.iter().zip(&self.config.services) {
            let mut backends = Vec::new();
            let mut add =
                |members: &[BackendIdx], table: &MaglevTable, list: &[BackendConfig], fallback: bool| {
                    let counts = table.slot_counts();
                    for (pos, &idx) in members.iter().enumerate() {
                        let Some(b) = snap.backends.get(idx as usize) else { continue };
                        let Some(bc) = list.iter().find(|c| c.address == b.addr && c.port == b.port) else {
                            continue;
                        };
                        let id = BackendId { service: s.key, addr: b.addr, port: b.port, fallback };
                        let slots = counts.get(pos).copied().unwrap_or(0);
                        let f = figure(idx);
                        let (health, reason, since, since_unix) = self.health_of(bc);
                        backends.push(BackendStatus {
                            address: host_port(b.addr, b.port),
                            fallback,
                            weight: bc.weight,
                            health,
                            health_reason: reason,
                            health_since_seconds: since,
                            health_since_unix: since_unix,
                            drained: self.live.drained.contains(&id),
                            table_state: state_name(b.state).to_string(),
                            slots,
                            share_percent: 100.0 * f64::from(slots) / f64::from(table.size().max(1)),
                            packets: f.packets,
                            bytes: f.bytes,
                            active_flows: f.active_flows,
                            new_flows: f.new_flows,
                            next_hop_mac: b.next_hop_mac.map(|m| format_mac(&m)),
                        });
                    }
                };
            add(&s.members, &s.table, &cfg.backends, false);
            if let Some(fb) = &s.fallback {
                add(&fb.members, &fb.table, &cfg.fallback, true);
            }
            let sum = |f: fn(&BackendStatus) -> u64| backends.iter().map(f).sum::<u64>();
            services.push(ServiceStatus {
                name: cfg.name.clone(),
                key: s.key.to_string(),
                mode: s.mode.name().to_string(),
                state: service_state(&snap, s).to_string(),
                table_size: s.table.size(),
                fingerprint: s.table.fingerprint_hex(),
                packets: sum(|b| b.packets),
                bytes: sum(|b| b.bytes),
                active_flows: sum(|b| b.active_flows),
                new_flows: sum(|b| b.new_flows),
                backends,
            });
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            nic: self.iface.name.clone(),
            config_path: self.config_path.display().to_string(),
            uptime_seconds: self.epoch.elapsed().as_secs_f64(),
            cluster_fingerprint: cluster_fingerprint(&snap),
            last_reload: self.last_reload.clone(),
            services,
            bgp: self.announcer.as_ref().and_then(|a| serde_json::to_value(a.status()).ok()),
        }
    }

    /// Health of one backend for reports: (state, reason of the last change, seconds since it,
    /// when it happened in Unix seconds).
    fn health_of(&self, b: &BackendConfig) -> (String, String, Option<f64>, Option<f64>) {
        let Some(spec) = &b.check else {
            return ("unchecked".into(), String::new(), None, None);
        };
        let target = CheckTarget { addr: b.address, spec: spec.clone() };
        match self.health.target_status(&target) {
            Some(t) => (
                t.health.to_string(),
                t.reason,
                SystemTime::now().duration_since(t.since).ok().map(|d| d.as_secs_f64()),
                t.since.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64()),
            ),
            None => ("unknown".into(), "not probed yet".into(), None, None),
        }
    }

    /// `fwd stats`.
    pub fn stats(&self) -> StatsReport {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        StatsReport {
            workers: self
                .workers
                .iter()
                .map(|w| {
                    let c = w.counters.read();
                    WorkerStats {
                        core: w.core,
                        queue: w.queue,
                        rx_packets: c.rx_packets,
                        rx_bytes: c.rx_bytes,
                        tx_packets: c.tx_packets,
                        tx_bytes: c.tx_bytes,
                        pass: c.pass,
                        icmp_generated: c.icmp_generated,
                        drops: DropReason::ALL
                            .iter()
                            .map(|r| (r.name().to_string(), c.drops_of(*r)))
                            .collect(),
                        batches: c.batches,
                        empty_polls: c.empty_polls,
                        classified_ahead: c.classified_ahead,
                        batch_fill: if c.batches == 0 { 0.0 } else { c.rx_packets as f64 / c.batches as f64 },
                        busy_ratio: busy_ratio(&c),
                        batch_time_ns: w.batch_times.read(),
                        active_flows: w.active_flows.load(Ordering::Relaxed),
                        heartbeat_age_ms: now_ms.saturating_sub(w.heartbeat_ms.load(Ordering::Relaxed)),
                        socket: w.socket.read(),
                        umem: w.umem.read(),
                    }
                })
                .collect(),
        }
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::new();
        let version = env!("CARGO_PKG_VERSION");
        e.gauge("fwd_build_info", "fwd's version; always 1.", &[("version", version)], 1.0);
        let status = self.status();
        e.gauge(
            "fwd_cluster_fingerprint_info",
            "Digest of every Maglev table: boxes with the same value pick the same backends; always 1.",
            &[("fingerprint", &status.cluster_fingerprint)],
            1.0,
        );
        e.gauge("fwd_uptime_seconds", "Seconds since fwd started.", &[], status.uptime_seconds);
        e.counter("fwd_snapshot_publishes_total", "Snapshots published to the workers.", &[], self.publishes);
        for s in &status.services {
            let l = [("service", s.name.as_str())];
            e.gauge(
                "fwd_service_can_serve",
                "1 when the service has a backend (or a fallback) for new flows.",
                &l,
                f64::from(u8::from(s.state != "down")),
            );
            e.gauge(
                "fwd_service_fallback_active",
                "1 when every backend is down and the fallback takes new flows.",
                &l,
                f64::from(u8::from(s.state == "fallback")),
            );
            e.gauge(
                "fwd_service_table_info",
                "The service's Maglev table; always 1.",
                &[("service", &s.name), ("fingerprint", &s.fingerprint), ("size", &s.table_size.to_string())],
                1.0,
            );
            e.counter("fwd_service_packets_total", "Packets forwarded for the service.", &l, s.packets);
            e.counter(
                "fwd_service_bytes_total",
                "Bytes forwarded for the service (frames as sent).",
                &l,
                s.bytes,
            );
            e.counter(
                "fwd_service_flows_total",
                "New flows assigned to the service's backends.",
                &l,
                s.new_flows,
            );
            e.gauge(
                "fwd_service_flows_active",
                "Live tracked flows of the service.",
                &l,
                s.active_flows as f64,
            );
            for b in &s.backends {
                let kind = if b.fallback { "fallback" } else { "primary" };
                let l = [("service", s.name.as_str()), ("backend", b.address.as_str()), ("role", kind)];
                e.counter("fwd_backend_packets_total", "Packets forwarded to the backend.", &l, b.packets);
                e.counter("fwd_backend_bytes_total", "Bytes forwarded to the backend.", &l, b.bytes);
                e.counter("fwd_backend_flows_total", "New flows assigned to the backend.", &l, b.new_flows);
                e.gauge(
                    "fwd_backend_flows_active",
                    "Live tracked flows of the backend.",
                    &l,
                    b.active_flows as f64,
                );
                e.gauge(
                    "fwd_backend_healthy",
                    "1 when the health check says up (or there is none), 0 when down.",
                    &l,
                    f64::from(u8::from(b.health != "down")),
                );
                e.gauge(
                    "fwd_backend_drained",
                    "1 when drained by the operator.",
                    &l,
                    f64::from(u8::from(b.drained)),
                );
                e.gauge("fwd_backend_weight", "Configured weight.", &l, f64::from(b.weight));
                e.gauge("fwd_backend_slots", "Maglev table slots owned.", &l, f64::from(b.slots));
            }
        }
        for w in &self.workers {
            let c = w.counters.read();
            let core = w.core.to_string();
            let l = [("core", core.as_str())];
            e.counter("fwd_worker_rx_packets_total", "Frames received by the worker.", &l, c.rx_packets);
            e.counter("fwd_worker_rx_bytes_total", "Bytes received by the worker.", &l, c.rx_bytes);
            e.counter("fwd_worker_tx_packets_total", "Frames transmitted by the worker.", &l, c.tx_packets);
            e.counter("fwd_worker_tx_bytes_total", "Bytes transmitted by the worker.", &l, c.tx_bytes);
            e.counter("fwd_worker_pass_total", "Frames handed to the kernel.", &l, c.pass);
            e.counter("fwd_worker_icmp_generated_total", "ICMP replies generated.", &l, c.icmp_generated);
            e.counter("fwd_worker_batches_total", "Non-empty batches processed.", &l, c.batches);
            e.counter("fwd_worker_empty_polls_total", "Polls that found nothing.", &l, c.empty_polls);
            e.counter(
                "fwd_worker_classified_ahead_total",
                "Frames classified while the batch before theirs waited for memory.",
                &l,
                c.classified_ahead,
            );
            for r in DropReason::ALL {
                e.counter(
                    "fwd_worker_drops_total",
                    "Frames dropped, by reason.",
                    &[("core", core.as_str()), ("reason", r.name())],
                    c.drops_of(*r),
                );
            }
            for (event, value) in w.socket.read().named() {
                e.counter(
                    "fwd_worker_socket_events_total",
                    "The kernel's counters for the worker's AF_XDP socket (XDP_STATISTICS): frames \
                     dropped before fwd saw them (rx_dropped, rx_ring_full), empty rings, bad descriptors.",
                    &[("core", core.as_str()), ("event", event)],
                    value,
                );
            }
            let umem = w.umem.read();
            e.counter(
                "fwd_worker_umem_samples_total",
                "Samples of where the worker's UMEM frames are (one per 16 batches).",
                &l,
                umem.samples,
            );
            for (place, frames) in umem.named() {
                e.counter(
                    "fwd_worker_umem_frames_sampled_total",
                    "UMEM frames found in each place, summed over the samples: on the fill ring (free \
                     to receive into), on the RX ring (received, not yet polled: the worker is behind), \
                     in transmit (the next hop is slow to take them). Divide its rate by the samples' rate \
                     for the mean.",
                    &[("core", core.as_str()), ("place", place)],
                    frames,
                );
            }
            let t = w.batch_times.read();
            let help =
                "Processing time of one batch: quantiles over the last second, sum and count since start.";
            for (q, v) in [("0.5", t.p50), ("0.9", t.p90), ("0.99", t.p99), ("0.999", t.p999), ("1", t.max)] {
                e.sample(
                    "fwd_worker_batch_duration_seconds",
                    Kind::Summary,
                    help,
                    &[("core", core.as_str()), ("quantile", q)],
                    v as f64 / 1e9,
                );
            }
            e.sample_in(
                "fwd_worker_batch_duration_seconds",
                Kind::Summary,
                help,
                "fwd_worker_batch_duration_seconds_sum",
                &l,
                w.batch_times.sum_seconds_total(),
            );
            e.sample_in(
                "fwd_worker_batch_duration_seconds",
                Kind::Summary,
                help,
                "fwd_worker_batch_duration_seconds_count",
                &l,
                w.batch_times.samples_total() as f64,
            );
            e.gauge(
                "fwd_worker_flows_active",
                "Live flows in the worker's connection table.",
                &l,
                w.active_flows.load(Ordering::Relaxed) as f64,
            );
            let age = (self.epoch.elapsed().as_millis() as u64)
                .saturating_sub(w.heartbeat_ms.load(Ordering::Relaxed));
            e.gauge(
                "fwd_worker_heartbeat_age_seconds",
                "Time since the worker last went round its loop.",
                &l,
                age as f64 / 1e3,
            );
        }
        for sample in self.health.latency_samples() {
            let target = sample.target.to_string();
            let l = [("target", target.as_str())];
            e.gauge(
                "fwd_health_check_duration_seconds",
                "Duration of the last probe of each distinct check target.",
                &l,
                sample.latency.as_secs_f64(),
            );
            e.gauge(
                "fwd_health_check_last_ok",
                "1 when the last probe of the target passed, 0 when it failed.",
                &l,
                f64::from(u8::from(sample.ok)),
            );
        }
        for (target, t) in self.health.status() {
            let target = target.to_string();
            let l = [("target", target.as_str())];
            e.counter("fwd_health_checks_total", "Probes run per distinct check target.", &l, t.probes);
            e.gauge(
                "fwd_health_check_up",
                "1 up, 0 down, -1 not answered yet, per distinct check target.",
                &l,
                match t.health {
                    Health::Up => 1.0,
                    Health::Down => 0.0,
                    Health::Unknown => -1.0,
                },
            );
        }
        if let Some(a) = &self.announcer {
            let st = a.status();
            e.gauge(
                "fwd_bgp_frr_reachable",
                "1 when the last vtysh run reached bgpd, 0 when it failed, -1 before the first.",
                &[],
                match st.frr.reachable {
                    Some(true) => 1.0,
                    Some(false) => 0.0,
                    None => -1.0,
                },
            );
            e.counter(
                "fwd_bgp_frr_consecutive_failures",
                "vtysh runs that failed in a row.",
                &[],
                u64::from(st.frr.consecutive_failures),
            );
            e.gauge(
                "fwd_bgp_fail_closed",
                "1 when the watchdog withdrew everything.",
                &[],
                f64::from(u8::from(st.fail_closed.is_some())),
            );
            for p in &st.prefixes {
                let prefix = p.prefix.to_string();
                let l = [("prefix", prefix.as_str())];
                let flag = |b: bool| f64::from(u8::from(b));
                e.gauge(
                    "fwd_bgp_prefix_can_serve",
                    "1 when the prefix's services can serve.",
                    &l,
                    flag(p.can_serve),
                );
                e.gauge(
                    "fwd_bgp_prefix_desired",
                    "1 when the prefix should be announced.",
                    &l,
                    flag(p.desired),
                );
                e.gauge(
                    "fwd_bgp_prefix_announced",
                    "1 when fwd asks FRR to announce the prefix (after hold-down and damping).",
                    &l,
                    flag(p.effective),
                );
                e.gauge(
                    "fwd_bgp_prefix_in_frr",
                    "1 when FRR has the prefix, 0 when not, -1 unknown.",
                    &l,
                    p.in_frr.map_or(-1.0, flag),
                );
                e.gauge("fwd_bgp_prefix_penalty", "Flap-damping penalty now.", &l, p.penalty);
                e.gauge(
                    "fwd_bgp_prefix_suppressed",
                    "1 while damping suppresses the prefix.",
                    &l,
                    flag(p.suppressed),
                );
            }
        }
        if let Ok(x) = self.program.counters() {
            e.counter(
                "fwd_xdp_redirected_total",
                "VIP frames the XDP program sent to AF_XDP sockets.",
                &[],
                x.redirected,
            );
            e.counter("fwd_xdp_passed_total", "Frames the XDP program left to the kernel.", &[], x.passed);
            e.counter(
                "fwd_xdp_vip_without_socket_total",
                "VIP frames on a queue without a socket (went to the kernel).",
                &[],
                x.vip_without_socket,
            );
        }
        e.counter(
            "fwd_config_reloads_total",
            "Configuration reloads, by result.",
            &[("result", "success")],
            self.reloads_ok,
        );
        e.counter(
            "fwd_config_reloads_total",
            "Configuration reloads, by result.",
            &[("result", "failure")],
            self.reloads_failed,
        );
        if let Some(r) = &self.last_reload {
            e.gauge(
                "fwd_config_last_reload_successful",
                "1 if the last reload was applied, 0 if it was rejected.",
                &[],
                f64::from(u8::from(r.ok)),
            );
            e.gauge(
                "fwd_config_last_reload_timestamp_seconds",
                "When the last reload was tried.",
                &[],
                r.at_unix,
            );
        }
        e.render()
    }

    /// The summed counters of every worker.
    pub fn totals(&self) -> WorkerCounters {
        let mut total = WorkerCounters::default();
        for w in &self.workers {
            total.add(&w.counters.read());
        }
        total
    }

    /// The workers' socket counters, summed.
    pub fn socket_totals(&self) -> SocketStats {
        let mut total = SocketStats::default();
        for w in &self.workers {
            total.add(&w.socket.read());
        }
        total
    }
}

pub fn busy_ratio(c: &WorkerCounters) -> f64 {
    let polls = c.batches + c.empty_polls;
    if polls == 0 {
        0.0
    } else {
        c.batches as f64 / polls as f64
    }
}

fn state_name(s: BackendState) -> &'static str {
    match s {
        BackendState::Up => "up",
        BackendState::Drained => "drained",
        BackendState::Down => "down",
    }
}

fn service_state(_snap: &Snapshot, s: &fwd_dataplane::snapshot::Service) -> &'static str {
    if !s.table.is_empty() {
        "serving"
    } else if s.fallback.as_ref().is_some_and(|f| !f.table.is_empty()) {
        "fallback"
    } else {
        "down"
    }
}

fn service_matches(s: &ServiceConfig, name: &str) -> bool {
    s.name == name || s.key().to_string() == name
}

/// Every distinct check target of the config, with the backends it decides for.
fn check_targets(config: &Config) -> HashMap<CheckTarget, Vec<BackendId>> {
    let mut out: HashMap<CheckTarget, Vec<BackendId>> = HashMap::new();
    for (id, b) in backends_of(config) {
        if let Some(spec) = &b.check {
            out.entry(CheckTarget { addr: b.address, spec: spec.clone() }).or_default().push(id);
        }
    }
    out
}

/// `ADDRESS`, `ADDRESS:PORT` or `[IPV6]:PORT`.
fn parse_backend(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = text.parse::<IpAddr>() {
        return Ok((a, None));
    }
    if let Ok(s) = text.parse::<SocketAddr>() {
        return Ok((s.ip(), Some(s.port())));
    }
    Err(format!(
        "invalid backend {text:?}: expected ADDRESS, ADDRESS:PORT or [IPV6]:PORT, like 198.18.2.11:80 or [fd00::11]:80"
    ))
}

/// Which services a reload adds, removes and changes (by key).
fn diff_services(old: &Config, new: &Config) -> ReloadReport {
    let old_by_key: BTreeMap<String, &ServiceConfig> =
        old.services.iter().map(|s| (s.key().to_string(), s)).collect();
    let new_by_key: BTreeMap<String, &ServiceConfig> =
        new.services.iter().map(|s| (s.key().to_string(), s)).collect();
    let mut report = ReloadReport::default();
    for (k, s) in &new_by_key {
        match old_by_key.get(k) {
            None => report.services_added.push(s.name.clone()),
            Some(o) if *o != *s => report.services_changed.push(s.name.clone()),
            Some(_) => {}
        }
    }
    for (k, s) in &old_by_key {
        if !new_by_key.contains_key(k) {
            report.services_removed.push(s.name.clone());
        }
    }
    let global_changed =
        Config { services: Vec::new(), ..old.clone() } != Config { services: Vec::new(), ..new.clone() };
    if global_changed && report.services_changed.is_empty() {
        report.services_changed.push("(global settings)".to_string());
    }
    report
}

/// Finds the next-hop MAC of every backend: its own neighbour entry for `l2`, the neighbour entry
/// of the route's gateway for tunnels. Routes are cached (they rarely change); neighbours are read
/// every time; unknown neighbours are solicited so the next refresh finds them.
#[derive(Debug, Default)]
struct NextHopResolver {
    routes: HashMap<IpAddr, (IpAddr, Instant)>,
}

const ROUTE_CACHE: Duration = Duration::from_secs(30);

impl NextHopResolver {
    fn resolve(&mut self, iface: &Interface, config: &Config) -> HashMap<IpAddr, [u8; 6]> {
        let neighbours = netinfo::neighbours(iface.ifindex).unwrap_or_default();
        let mut out = HashMap::new();
        for s in &config.services {
            let fallback_mode = s.fallback_mode.unwrap_or(ForwardMode::Ipip);
            let all =
                s.backends.iter().map(|b| (b, s.mode)).chain(s.fallback.iter().map(|b| (b, fallback_mode)));
            for (b, mode) in all {
                if b.mac.is_some() || out.contains_key(&b.address) {
                    continue;
                }
                let hop = match mode {
                    ForwardMode::L2 => b.address,
                    _ => self.next_hop(b.address),
                };
                match neighbours.get(&hop) {
                    Some(mac) => {
                        out.insert(b.address, *mac);
                    }
                    None => netinfo::solicit(hop),
                }
            }
        }
        out
    }

    fn next_hop(&mut self, addr: IpAddr) -> IpAddr {
        if let Some((hop, at)) = self.routes.get(&addr) {
            if at.elapsed() < ROUTE_CACHE {
                return *hop;
            }
        }
        let hop = netinfo::next_hop(addr).unwrap_or(addr);
        self.routes.insert(addr, (hop, Instant::now()));
        hop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_control::config::parse_config;

    const BASE: &str = r#"
[[services]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
port = 80
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"
  port = 80
  [[services.backends]]
  address = "198.18.2.12"
  port = 80

[[services]]
vip = "198.18.100.1"
protocol = "udp"
port = 53
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"
"#;

    #[test]
    fn reload_diff_names_added_removed_and_changed_services() {
        let old = parse_config(BASE, "old.toml").unwrap().config;
        let mut text = BASE.replace("address = \"198.18.2.12\"", "address = \"198.18.2.13\"");
        text = text.replace("port = 53", "port = 54");
        let new = parse_config(&text, "new.toml").unwrap().config;
        let r = diff_services(&old, &new);
        assert_eq!(r.services_changed, vec!["web"]);
        assert_eq!(r.services_added, vec!["198.18.100.1:54/udp"]);
        assert_eq!(r.services_removed, vec!["198.18.100.1:53/udp"]);
        assert!(diff_services(&old, &old).services_changed.is_empty());
        let global = parse_config(&format!("mtu = 1400\n{BASE}"), "g.toml").unwrap().config;
        assert_eq!(diff_services(&old, &global).services_changed, vec!["(global settings)"]);
    }

    #[test]
    fn identical_checks_of_several_services_are_one_target() {
        let text = BASE.replace(
            "mode = \"l2\"",
            "mode = \"l2\"\ncheck = { type = \"tcp\", port = 80, interval = \"1s\", timeout = \"500ms\" }",
        );
        let config = parse_config(&text, "t.toml").unwrap().config;
        let targets = check_targets(&config);
        // 198.18.2.11:80 tcp serves both services, 198.18.2.12:80 tcp one.
        assert_eq!(targets.len(), 2);
        let shared = targets.iter().find(|(t, _)| t.addr.to_string() == "198.18.2.11").unwrap().1;
        assert_eq!(shared.len(), 2);
        assert_ne!(shared[0].service, shared[1].service);
    }

    #[test]
    fn backend_arguments_parse_or_say_what_is_expected() {
        assert_eq!(parse_backend("198.18.2.11"), Ok(("198.18.2.11".parse().unwrap(), None)));
        assert_eq!(parse_backend("198.18.2.11:80"), Ok(("198.18.2.11".parse().unwrap(), Some(80))));
        assert_eq!(parse_backend("[fd00::11]:80"), Ok(("fd00::11".parse().unwrap(), Some(80))));
        assert_eq!(parse_backend("fd00::11"), Ok(("fd00::11".parse().unwrap(), None)));
        let e = parse_backend("web1").unwrap_err();
        assert!(e.contains("\"web1\"") && e.contains("ADDRESS:PORT"), "{e}");
    }

    #[test]
    fn restart_only_settings_are_listed() {
        let old = parse_config(BASE, "old.toml").unwrap().config;
        let new =
            parse_config(&format!("cores = \"1\"\n[conntrack]\nudp_timeout = \"5s\"\n{BASE}"), "n.toml")
                .unwrap()
                .config;
        assert_eq!(
            StartupSettings::of(&old).differences(&StartupSettings::of(&new)),
            vec!["cores", "conntrack"]
        );
    }
}
