//! Nanoseconds per call of the in-place DSR rewriters and ICMP builders.
//!
//! Every iteration first restores the frame by copying a template into the buffer (the rewriters
//! change it in place); the `copy_only` entries measure that copy alone, so a rewriter's own cost
//! is its figure minus the `copy_only` figure of the same frame size. Frames: 64 bytes (Ethernet +
//! IPv4 + UDP + 22 bytes) and 1514 bytes (Ethernet + a 1500-byte IPv4 TCP packet). GUE over IPv6
//! is 4-in-6, with the UDP checksum computed (`compute`, the default) and zero (`zero_csum`).
//! Each case runs twice: plain criterion iterations, and `min_chunk` (see [`min_chunk_time`]).
//!
//! Run: `cargo bench --bench rewrite -- --measurement-time 2 --warm-up-time 1`.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use etherparse::PacketBuilder;
use fwd_dataplane::checksum::ones_complement_sum;
use fwd_dataplane::counters::DropReason;
use fwd_dataplane::frame::{Frame, HEADROOM};
use fwd_dataplane::icmp::{echo_reply, too_big};
use fwd_dataplane::rewrite::{
    encap_gue, encap_gue_with_checksum, encap_ipip, rewrite_l2, Ipv6UdpChecksum, Macs, Tunnel,
};
use std::hint::black_box;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

const L3_OFFSET: usize = 14;
const FLOW_HASH: u64 = 0x9e37_79b9_7f4a_7c15;
const GUE_PORT: u16 = 6080;
const MACS: Macs<'static> = Macs { dst: &[2, 0, 0, 0, 0, 3], src: &[2, 0, 0, 0, 0, 2] };

fn template(frame_len: usize) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        [198, 18, 0, 1],
        [198, 19, 0, 10],
        57,
    );
    let mut bytes = Vec::new();
    if frame_len < 100 {
        let payload = vec![0x42; frame_len - 14 - 20 - 8];
        builder.udp(40000, 53).write(&mut bytes, &payload).unwrap();
    } else {
        let payload = vec![0x42; frame_len - 14 - 20 - 20];
        builder.tcp(40000, 80, 1, 65535).write(&mut bytes, &payload).unwrap();
    }
    assert_eq!(bytes.len(), frame_len);
    bytes
}

fn echo_template() -> Vec<u8> {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 1], [198, 19, 0, 10], 57)
        .icmpv4_echo_request(7, 1)
        .write(&mut bytes, &[0x42; 56])
        .unwrap();
    bytes
}

const TUNNEL_V4: Tunnel =
    Tunnel::V4 { src: u32::from_be_bytes([198, 18, 255, 1]), dst: u32::from_be_bytes([198, 18, 10, 2]) };
const TUNNEL_V6: Tunnel = Tunnel::V6 {
    src: Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1).to_bits(),
    dst: Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 2).to_bits(),
};

type Rewriter = fn(&mut Frame<'_>, usize) -> Result<(), DropReason>;

/// Copies `template` into the buffer after the headroom and runs `rewrite` on it.
fn restore_and_run(buf: &mut [u8], template: &[u8], rewrite: Rewriter) -> Result<(), DropReason> {
    buf[HEADROOM..HEADROOM + template.len()].copy_from_slice(template);
    let mut frame = Frame::new(buf, HEADROOM, template.len()).expect("buffer fits the template");
    let ip_len = template.len() - L3_OFFSET;
    let result = rewrite(&mut frame, black_box(ip_len));
    black_box(frame.data().first());
    result
}

/// Registers `name` twice: plain wall-clock iterations, and `name/min_chunk`, the fastest chunk.
fn bench_both(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut routine: impl FnMut()) {
    group.bench_function(name, |b| b.iter(&mut routine));
    group.bench_function(format!("{name}/min_chunk"), |b| {
        b.iter_custom(|iters| min_chunk_time(iters, &mut routine))
    });
}

/// Time for `iters` calls at the rate of the fastest chunk of [`CHUNK`] calls. This box's two
/// cores are shared, and a preempted chunk only makes that chunk slower: the minimum is the cost
/// of the code itself (with warm caches), which the plain figure overstates under load.
fn min_chunk_time(iters: u64, routine: &mut impl FnMut()) -> Duration {
    const CHUNK: u64 = 256;
    let mut best_secs_per_call = f64::INFINITY;
    let mut remaining = iters;
    while remaining > 0 {
        let calls = remaining.min(CHUNK);
        let start = Instant::now();
        for _ in 0..calls {
            routine();
        }
        best_secs_per_call = best_secs_per_call.min(start.elapsed().as_secs_f64() / calls as f64);
        remaining -= calls;
    }
    Duration::from_secs_f64(best_secs_per_call * iters as f64)
}

fn bench_rewriters(c: &mut Criterion) {
    let rewriters: [(&str, Rewriter); 6] = [
        ("copy_only", |_, _| Ok(())),
        ("rewrite_l2", |f, _| rewrite_l2(f, MACS)),
        ("encap_ipip_v4", |f, len| encap_ipip(f, L3_OFFSET, len, false, TUNNEL_V4, FLOW_HASH, MACS)),
        ("encap_gue_v4", |f, len| encap_gue(f, L3_OFFSET, len, false, TUNNEL_V4, FLOW_HASH, GUE_PORT, MACS)),
        ("encap_gue_v6_compute", |f, len| {
            encap_gue(f, L3_OFFSET, len, false, TUNNEL_V6, FLOW_HASH, GUE_PORT, MACS)
        }),
        ("encap_gue_v6_zero_csum", |f, len| {
            let zero = Ipv6UdpChecksum::Zero;
            encap_gue_with_checksum(f, L3_OFFSET, len, false, TUNNEL_V6, FLOW_HASH, GUE_PORT, MACS, zero)
        }),
    ];
    let mut buf = vec![0u8; HEADROOM + 2048];
    for frame_len in [64, 1514] {
        let template = template(frame_len);
        let mut group = c.benchmark_group(format!("frame_{frame_len}"));
        for (name, rewrite) in rewriters {
            assert_eq!(restore_and_run(&mut buf, &template, rewrite), Ok(()), "{name}");
            bench_both(&mut group, name, || {
                let _ = black_box(restore_and_run(&mut buf, &template, rewrite));
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("icmp");
    let (echo, big) = (echo_template(), template(1514));
    let icmp: [(&str, &[u8], Rewriter); 4] = [
        ("copy_only_98", &echo, |_, _| Ok(())),
        ("echo_reply_v4_98", &echo, |f, len| echo_reply(f, L3_OFFSET, L3_OFFSET + 20, len, false)),
        ("copy_only_1514", &big, |_, _| Ok(())),
        ("too_big_v4_1514", &big, |f, len| too_big(f, L3_OFFSET, len, false, 1480)),
    ];
    for (name, frame, rewrite) in icmp {
        assert_eq!(restore_and_run(&mut buf, frame, rewrite), Ok(()), "{name}");
        bench_both(&mut group, name, || {
            let _ = black_box(restore_and_run(&mut buf, frame, rewrite));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("checksum");
    let data = vec![0x5au8; 1500];
    bench_both(&mut group, "ones_complement_sum_1500", || {
        black_box(ones_complement_sum(black_box(&data), 0));
    });
    group.finish();
}

criterion_group!(benches, bench_rewriters);
criterion_main!(benches);
