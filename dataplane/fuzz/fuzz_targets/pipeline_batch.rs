//! Fuzzes the whole batch path: the input is cut into up to 64 frames, which go through a worker
//! against a snapshot with every forwarding mode. Every frame must get exactly one verdict, and
//! nothing may panic.
#![no_main]
#![forbid(unsafe_code)]

use fwd_dataplane::conntrack::Timeouts;
use fwd_dataplane::flow::L4Proto;
use fwd_dataplane::io::{MemIo, PacketIo};
use fwd_dataplane::maglev::{BackendKey, MaglevMember, MaglevTable};
use fwd_dataplane::pipeline::{ClassifyAhead, Worker, WorkerConfig};
use fwd_dataplane::snapshot::{
    Backend, BackendState, ForwardMode, FragmentPolicy, LocalInfo, Service, ServiceKey, Snapshot, SourceRange,
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::Arc;

fn snapshot() -> Snapshot {
    let mut services = Vec::new();
    let mut backends = Vec::new();
    let specs: [(&str, L4Proto, Option<u16>, ForwardMode, &str); 6] = [
        ("198.18.100.1", L4Proto::Tcp, Some(80), ForwardMode::L2, "198.18.2.11"),
        ("198.18.100.1", L4Proto::Udp, None, ForwardMode::L2, "198.18.2.12"),
        ("fd00:18:100::1", L4Proto::Tcp, Some(80), ForwardMode::Ipip, "198.18.3.1"),
        ("fd00:18:100::1", L4Proto::Udp, Some(53), ForwardMode::Gue, "fd00:18:3::1"),
        ("198.18.100.2", L4Proto::Tcp, None, ForwardMode::Ipip, "fd00:18:3::2"),
        ("198.18.100.2", L4Proto::Udp, Some(443), ForwardMode::Gue, "198.18.3.2"),
    ];
    for (i, (vip, proto, port, mode, backend)) in specs.into_iter().enumerate() {
        let addr: IpAddr = backend.parse().unwrap();
        backends.push(Backend {
            addr,
            port: None,
            service: i as u32,
            tag: 1 + i as u32,
            state: BackendState::Up,
            mode,
            next_hop_mac: Some([2, 0, 0, 0, 0, i as u8]),
        });
        let table = MaglevTable::build(&[MaglevMember { key: BackendKey::new(addr, None), weight: 1 }], 251).unwrap();
        services.push(Service {
            key: ServiceKey { vip: vip.parse().unwrap(), proto, port },
            mode,
            hash_src_port: i % 2 == 0,
            fragments: if i == 1 { FragmentPolicy::Drop } else { FragmentPolicy::Hash3Tuple },
            members: vec![i as u32],
            table: Arc::new(table),
            fallback: None,
        });
    }
    let local = LocalInfo {
        mac: [2, 0, 0, 0, 0, 0xfd],
        mtu: 1400,
        tunnel_src_v4: Some(SourceRange { base: "198.18.0.32".parse().unwrap(), count: 4 }),
        tunnel_src_v6: Some(SourceRange { base: "fd00:18::20".parse().unwrap(), count: 4 }),
        ..LocalInfo::default()
    };
    Snapshot::new(1, local, services, backends)
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let mut worker = Worker::new(WorkerConfig {
        conn_capacity: 64,
        timeouts: Timeouts { tcp_established_ms: 1000, tcp_closing_ms: 100, udp_ms: 500 },
        // As fwd's workers: the frames behind each batch are classified ahead.
        classify_ahead: ClassifyAhead::Always,
    });
    let mut io = MemIo::new();
    // Frames are length-prefixed (one byte): a short input gives one frame with the rest.
    let mut rest = data;
    let mut frames = 0usize;
    while !rest.is_empty() && frames < 64 {
        let len = usize::from(rest[0]).min(rest.len() - 1);
        let (frame, tail) = rest[1..].split_at(if rest.len() > 1 { len } else { 0 });
        io.push_rx(frame);
        frames += 1;
        rest = tail;
    }
    let mut verdicts = 0usize;
    // Batches of 16 out of up to 64 frames, so that most batches have frames behind them to
    // classify ahead and start with frames classified ahead.
    while io.pending_rx() > 0 {
        io.poll_ahead(16, &mut |batch, v, ahead| {
            worker.process_batch_ahead(&snap, batch, v, ahead, 1000);
            verdicts += batch.len();
        });
    }
    assert_eq!(verdicts, frames);
    assert_eq!(io.tx.len() + io.passed.len() + io.dropped.len(), frames);
});
