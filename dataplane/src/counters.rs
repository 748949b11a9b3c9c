//! Why a packet was dropped, and the per-worker counters.
//!
//! Every drop has exactly one reason from [`DropReason`]; a worker counts them in plain integers
//! (it owns them) and publishes a copy once per batch, never per packet.

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// The reason a frame was dropped. `name()` is the metric label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = DropReason::ALL.len();

            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }

            pub const fn description(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $doc,)*
                }
            }
        }
    };
}

drop_reasons! {
    Malformed => "malformed", "Headers that do not parse: unknown IP version, inconsistent lengths.";
    Truncated => "truncated", "The frame ends inside a header it claims to have.";
    BadIpHeader => "bad_ip_header", "IPv4 header length or total length out of range.";
    TtlExceeded => "ttl_exceeded", "TTL or hop limit too low to forward (tunnelled modes decrement it).";
    NoService => "no_service", "Addressed to a VIP, but no service matches the protocol and port.";
    UnsupportedProtocol => "unsupported_protocol", "Addressed to a VIP with a protocol fwd does not balance.";
    NoBackend => "no_backend", "The service has no backend that can take the flow.";
    NoTunnelSource => "no_tunnel_source", "No tunnel source address of the backend's family is configured or known.";
    NextHopUnresolved => "next_hop_unresolved", "The next hop's MAC address is not known yet.";
    TooBig => "too_big", "Too big to forward after encapsulation and not fragmentable.";
    IcmpRateLimited => "icmp_rate_limited", "A too-big reply was due but the per-worker ICMP budget was spent.";
    FragmentPolicy => "fragment_policy", "A fragment for a service whose policy drops fragments.";
    IcmpUnmatched => "icmp_unmatched", "An ICMP error to a VIP quoting a flow fwd cannot place.";
    NoHeadroom => "no_headroom", "The buffer has too little headroom for the encapsulation.";
    TxRingFull => "tx_ring_full", "The transmit ring had no room for the frame.";
}

/// Plain per-worker counters; owned by one worker, copied out once per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames handed to the kernel: not for a VIP.
    pub pass: u64,
    /// ICMP replies fwd generated itself (echo replies, too-big errors).
    pub icmp_generated: u64,
    pub drops: [u64; DropReason::COUNT],
    pub batches: u64,
    /// Batches that received nothing: with `batches`, the busy ratio of a polling worker.
    pub empty_polls: u64,
    /// Frames classified while the batch before theirs waited for memory (see
    /// `Worker::process_batch_ahead`); the other received frames were classified in their own.
    pub classified_ahead: u64,
}

impl WorkerCounters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters into this one (for totals).
    pub fn add(&mut self, other: &WorkerCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.pass += other.pass;
        self.icmp_generated += other.icmp_generated;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
        self.batches += other.batches;
        self.empty_polls += other.empty_polls;
        self.classified_ahead += other.classified_ahead;
    }
}

/// What one worker sent to one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this worker assigned to the backend (new connection-table entries).
    pub new_flows: u64,
}

/// One backend's published figures: the counters plus the live flows of the last census.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFigures {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub active_flows: u64,
}

impl BackendFigures {
    pub fn add(&mut self, other: &BackendFigures) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        self.active_flows += other.active_flows;
    }
}

const BACKEND_FIELDS: usize = 4;

/// Where a worker publishes its per-backend figures: a fixed number of backend indices, each a
/// group of atomics written only by the owning worker. Control allocates it (a larger one when a
/// snapshot outgrows it), so the worker never does.
#[derive(Debug)]
pub struct SharedBackendCounters {
    values: Box<[AtomicU64]>,
}

impl SharedBackendCounters {
    pub fn with_capacity(backends: usize) -> Self {
        SharedBackendCounters { values: (0..backends * BACKEND_FIELDS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Backend indices it holds.
    pub fn capacity(&self) -> usize {
        self.values.len() / BACKEND_FIELDS
    }

    /// Called by the owning worker only; indices beyond the capacity are left out.
    pub fn publish(&self, counters: &[BackendCounters], active_flows: &[u64]) {
        for (i, group) in self.values.chunks_exact(BACKEND_FIELDS).enumerate() {
            let c = counters.get(i).copied().unwrap_or_default();
            let active = active_flows.get(i).copied().unwrap_or(0);
            for (slot, v) in group.iter().zip([c.packets, c.bytes, c.new_flows, active]) {
                slot.store(v, Ordering::Relaxed);
            }
        }
    }

    /// Per backend index, the last published figures.
    pub fn read(&self) -> Vec<BackendFigures> {
        self.values
            .chunks_exact(BACKEND_FIELDS)
            .map(|g| BackendFigures {
                packets: g[0].load(Ordering::Relaxed),
                bytes: g[1].load(Ordering::Relaxed),
                new_flows: g[2].load(Ordering::Relaxed),
                active_flows: g[3].load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Where a worker publishes its counters for control to read: one atomic per counter, written
/// only by the owning worker (relaxed stores, once per batch), read by anyone. No locks.
#[derive(Debug)]
pub struct SharedCounters {
    values: [AtomicU64; SHARED_FIELDS],
}

use std::sync::atomic::{AtomicU64, Ordering};

const FIXED_FIELDS: usize = 8;
const SHARED_FIELDS: usize = FIXED_FIELDS + DropReason::COUNT;

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl SharedCounters {
    /// Called by the owning worker only.
    pub fn publish(&self, c: &WorkerCounters) {
        let fixed = [
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            c.pass,
            c.icmp_generated,
            c.batches,
            c.empty_polls,
        ];
        for (slot, v) in self.values.iter().zip(fixed.iter().chain(c.drops.iter())) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// A copy of the last published counters (fields may be from consecutive batches).
    pub fn read(&self) -> WorkerCounters {
        let v = |i: usize| self.values[i].load(Ordering::Relaxed);
        let mut c = WorkerCounters {
            rx_packets: v(0),
            rx_bytes: v(1),
            tx_packets: v(2),
            tx_bytes: v(3),
            pass: v(4),
            icmp_generated: v(5),
            batches: v(6),
            empty_polls: v(7),
            ..WorkerCounters::default()
        };
        for (i, d) in c.drops.iter_mut().enumerate() {
            *d = v(FIXED_FIELDS + i);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_counters_round_trip() {
        let mut c = WorkerCounters {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            pass: 5,
            ..Default::default()
        };
        c.icmp_generated = 6;
        c.batches = 7;
        c.empty_polls = 8;
        for (i, r) in DropReason::ALL.iter().enumerate() {
            c.drops[*r as usize] = 100 + i as u64;
        }
        let shared = SharedCounters::default();
        shared.publish(&c);
        assert_eq!(shared.read(), c);
    }

    #[test]
    fn shared_backend_counters_round_trip_and_clip_to_capacity() {
        let shared = SharedBackendCounters::with_capacity(2);
        assert_eq!(shared.capacity(), 2);
        let counters = [
            BackendCounters { packets: 1, bytes: 2, new_flows: 3 },
            BackendCounters { packets: 4, bytes: 5, new_flows: 6 },
            BackendCounters { packets: 7, bytes: 8, new_flows: 9 },
        ];
        shared.publish(&counters, &[10]);
        assert_eq!(
            shared.read(),
            vec![
                BackendFigures { packets: 1, bytes: 2, new_flows: 3, active_flows: 10 },
                BackendFigures { packets: 4, bytes: 5, new_flows: 6, active_flows: 0 },
            ]
        );
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
