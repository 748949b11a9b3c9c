//! Builds the workers' [`Snapshot`] from the config and the live state (health, drains, next-hop
//! MACs, the interface's addresses).
//!
//! The [`SnapshotBuilder`] lives as long as the process: it keeps every backend at the same index
//! across snapshots while the backend exists (so connection-table entries stay valid), reuses a
//! Maglev table while its inputs are unchanged (so a health change rebuilds only its service's
//! table), and reports how many slots moved per service.

use crate::config::{BackendConfig, Config, ServiceConfig};
use fwd_dataplane::flow::ip_to_16;
use fwd_dataplane::maglev::{BackendKey, MaglevError, MaglevMember, MaglevTable};
use fwd_dataplane::snapshot::{
    Backend, BackendIdx, BackendState, Fallback, ForwardMode, LocalInfo, Service, ServiceKey, Snapshot,
    SourceRange,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// Identifies one backend of one service (or of its fallback) across reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub service: ServiceKey,
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub fallback: bool,
}

impl BackendId {
    fn key(&self) -> BackendKey {
        BackendKey::new(self.addr, self.port)
    }

    /// The tag a connection-table entry checks: a digest of the identity.
    fn tag(&self) -> u32 {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&ip_to_16(self.service.vip));
        bytes.push(self.service.proto.number());
        bytes.extend_from_slice(&self.service.port.unwrap_or(0).to_be_bytes());
        bytes.extend_from_slice(&self.key().0);
        bytes.push(u8::from(self.fallback));
        // Never 0, so a zeroed entry can never match.
        (xxh3_64(&bytes) as u32).max(1)
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.fallback { "fallback " } else { "" };
        write!(f, "{} {kind}{}", self.service, crate::config::host_port(self.addr, self.port))
    }
}

/// Facts about the interface fwd runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What changes while fwd runs: health, operator drains, resolved next hops.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    /// Backends whose health check says down. Absent: up (or never checked).
    pub down: HashSet<BackendId>,
    /// Backends drained by the operator (`fwd drain`): no new flows.
    pub drained: HashSet<BackendId>,
    /// Next-hop MAC per backend address: the backend's own (l2) or its gateway's (tunnels).
    pub next_hops: HashMap<IpAddr, [u8; 6]>,
}

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("service {service}: {source}")]
    Maglev { service: ServiceKey, source: MaglevError },
}

/// How one service's table changed in a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChange {
    pub service: ServiceKey,
    /// Slots whose backend changed.
    pub moved_slots: u32,
    pub size: u32,
}

/// The inputs a Maglev table is a function of; equal inputs reuse the table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TableInputs {
    size: u32,
    members: Vec<(BackendKey, u32)>,
}

/// The last table built for a service (or its fallback): its inputs and the table.
#[derive(Debug)]
struct BuiltTable {
    inputs: TableInputs,
    table: Arc<MaglevTable>,
}

/// Builds snapshots, keeping backend indices stable and reusing unchanged tables.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    indices: HashMap<BackendId, BackendIdx>,
    free: Vec<BackendIdx>,
    next_index: BackendIdx,
    generation: u64,
    /// Per service (and fallback): the inputs and table of the last build.
    tables: HashMap<(ServiceKey, bool), BuiltTable>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        SnapshotBuilder::default()
    }

    /// Builds the next snapshot. Returns it and the per-service table changes (services whose
    /// table was reused are not listed).
    pub fn build(
        &mut self,
        config: &Config,
        iface: &InterfaceFacts,
        live: &LiveState,
    ) -> Result<(Snapshot, Vec<TableChange>), TablesError> {
        self.generation += 1;
        let wanted: HashSet<BackendId> = backends_of(config).map(|(id, _)| id).collect();
        // Free the indices of backends that are gone, then give new ones the lowest free index.
        let gone: Vec<BackendId> = self.indices.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            if let Some(i) = self.indices.remove(&id) {
                self.free.push(i);
            }
        }
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        let mut new_ids: Vec<&BackendId> =
            wanted.iter().filter(|id| !self.indices.contains_key(id)).collect();
        new_ids.sort_unstable();
        for id in new_ids {
            let i = self.free.pop().unwrap_or_else(|| {
                self.next_index += 1;
                self.next_index - 1
            });
            self.indices.insert(*id, i);
        }
        let mut backends: Vec<Option<Backend>> = vec![None; self.next_index as usize];

        let mut services = Vec::with_capacity(config.services.len());
        let mut changes = Vec::new();
        let mut live_tables = HashSet::new();
        for (si, s) in config.services.iter().enumerate() {
            let key = s.key();
            let (members, table) =
                self.members_and_table(config, s, false, si as u32, live, &mut backends, &mut changes)?;
            live_tables.insert((key, false));
            let fallback = if s.fallback.is_empty() {
                None
            } else {
                live_tables.insert((key, true));
                let (members, table) =
                    self.members_and_table(config, s, true, si as u32, live, &mut backends, &mut changes)?;
                Some(Fallback { mode: s.fallback_mode.unwrap_or(ForwardMode::Ipip), members, table })
            };
            services.push(Service {
                key,
                mode: s.mode,
                hash_src_port: s.hash_src_port,
                fragments: s.fragments,
                members,
                table,
                fallback,
            });
        }
        self.tables.retain(|k, _| live_tables.contains(k));

        // Holes (freed indices not reused) stay as down placeholders that no table names.
        let backends = backends
            .into_iter()
            .map(|b| {
                b.unwrap_or(Backend {
                    addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    port: None,
                    service: u32::MAX,
                    tag: 0,
                    state: BackendState::Down,
                    mode: ForwardMode::L2,
                    next_hop_mac: None,
                })
            })
            .collect();
        let local = LocalInfo {
            mac: iface.mac,
            mtu: config.mtu,
            gue_port: config.gue_port,
            tunnel_src_v4: config
                .tunnel_source_v4
                .map(|p| p.source_range())
                .or(iface.ipv4.map(|a| SourceRange { base: a, count: 1 })),
            tunnel_src_v6: config
                .tunnel_source_v6
                .map(|p| p.source_range())
                .or(iface.ipv6.map(|a| SourceRange { base: a, count: 1 })),
            answer_echo: config.answer_echo,
            icmp_rate_per_sec: config.icmp_rate_per_sec,
        };
        Ok((Snapshot::new(self.generation, local, services, backends), changes))
    }

    /// The index of a backend in the last snapshot built.
    pub fn index_of(&self, id: &BackendId) -> Option<BackendIdx> {
        self.indices.get(id).copied()
    }

    #[allow(clippy::too_many_arguments)]
    fn members_and_table(
        &mut self,
        config: &Config,
        s: &ServiceConfig,
        fallback: bool,
        service_index: u32,
        live: &LiveState,
        backends: &mut [Option<Backend>],
        changes: &mut Vec<TableChange>,
    ) -> Result<(Vec<BackendIdx>, Arc<MaglevTable>), TablesError> {
        let service = s.key();
        let list = if fallback { &s.fallback } else { &s.backends };
        let mode = if fallback { s.fallback_mode.unwrap_or(ForwardMode::Ipip) } else { s.mode };
        // Canonical order: by key, whatever the config's order.
        let mut sorted: Vec<(BackendId, &BackendConfig)> =
            list.iter().map(|b| (backend_id(service, b, fallback), b)).collect();
        sorted.sort_unstable_by_key(|(id, _)| id.key());
        let mut members = Vec::with_capacity(sorted.len());
        let mut inputs =
            TableInputs { size: config.maglev_table_size, members: Vec::with_capacity(sorted.len()) };
        for (id, b) in &sorted {
            let idx = self.indices[id];
            let state = if live.down.contains(id) {
                BackendState::Down
            } else if b.weight == 0 || live.drained.contains(id) {
                BackendState::Drained
            } else {
                BackendState::Up
            };
            let weight = if state == BackendState::Up { b.weight } else { 0 };
            inputs.members.push((id.key(), weight));
            members.push(idx);
            backends[idx as usize] = Some(Backend {
                addr: b.address,
                port: b.port,
                service: service_index,
                tag: id.tag(),
                state,
                mode,
                next_hop_mac: b.mac.or_else(|| live.next_hops.get(&b.address).copied()),
            });
        }
        let slot = (service, fallback);
        if let Some(built) = self.tables.get(&slot) {
            if built.inputs == inputs {
                return Ok((members, built.table.clone()));
            }
        }
        let maglev_members: Vec<MaglevMember> =
            inputs.members.iter().map(|&(key, weight)| MaglevMember { key, weight }).collect();
        let table = MaglevTable::build(&maglev_members, inputs.size)
            .map_err(|source| TablesError::Maglev { service, source })?;
        let moved_slots = match self.tables.get(&slot) {
            Some(old) if old.inputs.size == inputs.size => moved(&old.table, &table),
            _ => table.slots().len() as u32,
        };
        if !fallback {
            changes.push(TableChange { service, moved_slots, size: table.size() });
        }
        let table = Arc::new(table);
        self.tables.insert(slot, BuiltTable { inputs, table: table.clone() });
        Ok((members, table))
    }
}

/// Every backend of every service (fallbacks included), with its identity, in config order.
pub fn backends_of(config: &Config) -> impl Iterator<Item = (BackendId, &BackendConfig)> + '_ {
    config.services.iter().flat_map(|s| {
        let key = s.key();
        s.backends
            .iter()
            .map(move |b| (backend_id(key, b, false), b))
            .chain(s.fallback.iter().map(move |b| (backend_id(key, b, true), b)))
    })
}

fn backend_id(service: ServiceKey, b: &BackendConfig, fallback: bool) -> BackendId {
    BackendId { service, addr: b.address, port: b.port, fallback }
}

/// Slots whose owner (by key) differs between two tables of the same size.
fn moved(old: &MaglevTable, new: &MaglevTable) -> u32 {
    if old.is_empty() || new.is_empty() {
        return new.slots().len().max(old.slots().len()) as u32;
    }
    old.slots()
        .iter()
        .zip(new.slots())
        .filter(|(&a, &b)| old.keys().get(usize::from(a)) != new.keys().get(usize::from(b)))
        .count() as u32
}

/// Per service: each backend with its weight, state, slot count and share; for `fwd table`,
/// `fwd status` and the metrics.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TableReport {
    pub service: String,
    pub mode: &'static str,
    pub size: u32,
    pub fingerprint: String,
    pub backends: Vec<BackendReport>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackendReport {
    pub address: IpAddr,
    pub port: Option<u16>,
    pub fallback: bool,
    pub weight: u32,
    pub state: &'static str,
    pub slots: u32,
    /// Share of new flows, in percent of the table.
    pub share_percent: f64,
}

/// The report for every service of a snapshot, in config order.
pub fn table_reports(config: &Config, snap: &Snapshot) -> Vec<TableReport> {
    let mut out = Vec::with_capacity(snap.services.len());
    for (s, cfg) in snap.services.iter().zip(&config.services) {
        let weights: BTreeMap<(IpAddr, Option<u16>, bool), u32> = cfg
            .backends
            .iter()
            .map(|b| ((b.address, b.port, false), b.weight))
            .chain(cfg.fallback.iter().map(|b| ((b.address, b.port, true), b.weight)))
            .collect();
        let mut backends = Vec::new();
        let mut add = |members: &[BackendIdx], table: &MaglevTable, fallback: bool| {
            let counts = table.slot_counts();
            for (pos, &idx) in members.iter().enumerate() {
                let Some(b) = snap.backends.get(idx as usize) else { continue };
                let slots = counts.get(pos).copied().unwrap_or(0);
                backends.push(BackendReport {
                    address: b.addr,
                    port: b.port,
                    fallback,
                    weight: weights.get(&(b.addr, b.port, fallback)).copied().unwrap_or(0),
                    state: match b.state {
                        BackendState::Up => "up",
                        BackendState::Drained => "drained",
                        BackendState::Down => "down",
                    },
                    slots,
                    share_percent: 100.0 * f64::from(slots) / f64::from(table.size()),
                });
            }
        };
        add(&s.members, &s.table, false);
        if let Some(fb) = &s.fallback {
            add(&fb.members, &fb.table, true);
        }
        out.push(TableReport {
            service: if cfg.name.is_empty() {
                s.key.to_string()
            } else {
                format!("{} ({})", cfg.name, s.key)
            },
            mode: s.mode.name(),
            size: s.table.size(),
            fingerprint: s.table.fingerprint_hex(),
            backends,
        });
    }
    out
}

/// One fingerprint over every service's table, for comparing whole boxes.
pub fn cluster_fingerprint(snap: &Snapshot) -> String {
    let mut bytes = Vec::with_capacity(snap.services.len() * 32);
    let mut services: Vec<&Service> = snap.services.iter().collect();
    services.sort_unstable_by_key(|s| s.key);
    for s in services {
        bytes.extend_from_slice(s.key.to_string().as_bytes());
        bytes.extend_from_slice(&s.table.fingerprint().to_be_bytes());
        if let Some(fb) = &s.fallback {
            bytes.extend_from_slice(&fb.table.fingerprint().to_be_bytes());
        }
    }
    format!("{:016x}", xxh3_64(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    const CONFIG: &str = r#"
maglev_table_size = 4099
[[services]]
vip = "198.18.100.1"
protocol = "tcp"
port = 80
mode = "l2"
  [[services.backends]]
  address = "198.18.2.11"
  [[services.backends]]
  address = "198.18.2.12"
  mac = "02:00:00:00:02:12"
  [[services.backends]]
  address = "198.18.2.13"
  weight = 2
[[services]]
vip = "fd00:18:100::1"
protocol = "udp"
port = 53
mode = "ipip"
  [[services.backends]]
  address = "198.18.2.11"
  [[services.backends]]
  address = "fd00:18:2::12"
"#;

    fn config(text: &str) -> Config {
        parse_config(text, "test.toml").unwrap().config
    }

    fn id(cfg: &Config, service: usize, addr: &str) -> BackendId {
        BackendId {
            service: cfg.services[service].key(),
            addr: addr.parse().unwrap(),
            port: None,
            fallback: false,
        }
    }

    #[test]
    fn states_macs_and_tags_come_from_config_and_live_state() {
        let cfg = config(CONFIG);
        let mut b = SnapshotBuilder::new();
        let mut live = LiveState::default();
        live.next_hops.insert("198.18.2.11".parse().unwrap(), [2, 0, 0, 0, 2, 0x11]);
        live.next_hops.insert("198.18.2.12".parse().unwrap(), [9; 6]);
        live.down.insert(id(&cfg, 0, "198.18.2.13"));
        let (snap, changes) = b.build(&cfg, &InterfaceFacts::default(), &live).unwrap();
        assert_eq!(changes.len(), 2);
        let get = |svc: usize, addr: &str| &snap.backends[b.index_of(&id(&cfg, svc, addr)).unwrap() as usize];
        assert_eq!(get(0, "198.18.2.11").next_hop_mac, Some([2, 0, 0, 0, 2, 0x11]));
        assert_eq!(get(0, "198.18.2.12").next_hop_mac, Some([2, 0, 0, 0, 2, 0x12]), "config MAC wins");
        assert_eq!(get(0, "198.18.2.13").state, BackendState::Down);
        assert_eq!(get(0, "198.18.2.13").next_hop_mac, None);
        assert_ne!(get(0, "198.18.2.11").tag, get(1, "198.18.2.11").tag, "tags are per service");
        assert_eq!(get(1, "198.18.2.11").mode, ForwardMode::Ipip);
        let counts = snap.services[0].table.slot_counts();
        let down_pos = snap.services[0]
            .members
            .iter()
            .position(|&i| snap.backends[i as usize].state == BackendState::Down);
        assert_eq!(counts[down_pos.unwrap()], 0, "a down backend has no slot");
    }

    #[test]
    fn indices_stay_stable_and_unchanged_tables_are_reused() {
        let cfg = config(CONFIG);
        let mut b = SnapshotBuilder::new();
        let live = LiveState::default();
        let (first, _) = b.build(&cfg, &InterfaceFacts::default(), &live).unwrap();
        let before: Vec<_> = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]
            .iter()
            .map(|a| b.index_of(&id(&cfg, 0, a)).unwrap())
            .collect();

        // Drain one backend of the first service: only its table is rebuilt.
        let mut drained = live.clone();
        drained.drained.insert(id(&cfg, 0, "198.18.2.12"));
        let (second, changes) = b.build(&cfg, &InterfaceFacts::default(), &drained).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].service, cfg.services[0].key());
        assert!(changes[0].moved_slots > 0 && changes[0].moved_slots < 4099 / 2, "{changes:?}");
        assert!(Arc::ptr_eq(&first.services[1].table, &second.services[1].table));
        assert!(!Arc::ptr_eq(&first.services[0].table, &second.services[0].table));
        assert_eq!(second.backends[before[1] as usize].state, BackendState::Drained);

        // Remove a backend and add another: the others keep their indices.
        let text = CONFIG.replace(
            "198.18.2.11\"\n  [[services.backends]]\n  address = \"198.18.2.12\"",
            "198.18.2.14\"\n  [[services.backends]]\n  address = \"198.18.2.12\"",
        );
        let cfg2 = config(&text);
        let (third, _) = b.build(&cfg2, &InterfaceFacts::default(), &live).unwrap();
        assert_eq!(b.index_of(&id(&cfg2, 0, "198.18.2.12")), Some(before[1]));
        assert_eq!(b.index_of(&id(&cfg2, 0, "198.18.2.13")), Some(before[2]));
        assert_eq!(b.index_of(&id(&cfg2, 0, "198.18.2.11")), None);
        assert_eq!(b.index_of(&id(&cfg2, 0, "198.18.2.14")), Some(before[0]), "the freed index is reused");
        assert!(third.generation > second.generation);
    }

    #[test]
    fn boxes_with_the_same_config_agree_whatever_the_backend_order() {
        let cfg = config(CONFIG);
        let reordered = config(&CONFIG.replace(
            "  [[services.backends]]\n  address = \"198.18.2.11\"\n  [[services.backends]]\n  address = \"198.18.2.12\"\n  mac = \"02:00:00:00:02:12\"",
            "  [[services.backends]]\n  address = \"198.18.2.12\"\n  mac = \"02:00:00:00:02:12\"\n  [[services.backends]]\n  address = \"198.18.2.11\"",
        ));
        assert_ne!(cfg, reordered);
        let (a, _) =
            SnapshotBuilder::new().build(&cfg, &InterfaceFacts::default(), &LiveState::default()).unwrap();
        let (b, _) = SnapshotBuilder::new()
            .build(&reordered, &InterfaceFacts::default(), &LiveState::default())
            .unwrap();
        assert_eq!(cluster_fingerprint(&a), cluster_fingerprint(&b));
        let reports = table_reports(&cfg, &a);
        assert_eq!(reports[0].fingerprint, table_reports(&reordered, &b)[0].fingerprint);
        let share: f64 = reports[0].backends.iter().map(|r| r.share_percent).sum();
        assert!((share - 100.0).abs() < 1e-9);
        let heavy = reports[0].backends.iter().find(|r| r.address.to_string() == "198.18.2.13").unwrap();
        assert!((heavy.share_percent - 50.0).abs() < 1.0, "weight 2 of 4: {heavy:?}");
    }

    #[test]
    fn tunnel_sources_default_to_the_interface_addresses() {
        let cfg = config(CONFIG);
        let iface = InterfaceFacts { mac: [2; 6], ipv4: Some("198.18.2.10".parse().unwrap()), ipv6: None };
        let (snap, _) = SnapshotBuilder::new().build(&cfg, &iface, &LiveState::default()).unwrap();
        assert_eq!(snap.local.tunnel_source(false, 77).unwrap().to_string(), "198.18.2.10");
        assert_eq!(snap.local.tunnel_source(true, 77), None);
        assert_eq!(snap.local.mac, [2; 6]);
    }
}
