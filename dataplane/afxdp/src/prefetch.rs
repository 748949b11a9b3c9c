//! The CPU's prefetch instruction for the pipeline ([`fwd_dataplane::prefetch::Prefetch`]).
//!
//! The dataplane crate forbids `unsafe`, and stable Rust's prefetch intrinsic needs it, so the
//! instruction lives here, with the workspace's other unsafe code. Unlike the dataplane's
//! portable [`fwd_dataplane::prefetch::LoadPrefetch`] (an ordinary load), a prefetch retires at
//! once: the core never waits for the line, so a batch's misses all overlap however much other
//! work surrounds them.

use fwd_dataplane::prefetch::Prefetch;

/// `prefetcht0` on x86_64; an ordinary load elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPrefetch;

impl Prefetch for CpuPrefetch {
    #[inline(always)]
    fn prefetch<T: Copy>(value: &T) {
        #[cfg(target_arch = "x86_64")]
        prefetch_line(std::ptr::from_ref(value).cast::<u8>());
        #[cfg(not(target_arch = "x86_64"))]
        fwd_dataplane::prefetch::LoadPrefetch::prefetch(value);
    }
}

/// `prefetcht0` of the line holding `addr`, for memory the crate reaches by raw pointer (a UMEM
/// frame the kernel owns until it is received); nothing on other architectures.
#[inline(always)]
pub(crate) fn prefetch_line(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in the target's
        // baseline features). A prefetch is only a hint: it never faults, reads nothing into the
        // program's state and writes nothing, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_dataplane::conntrack::{ConnTable, ConnValue, Timeouts};
    use fwd_dataplane::flow::FlowKey;
    use fwd_dataplane::hash::flow_hash;

    #[test]
    fn prefetching_a_table_changes_no_lookup() {
        let timeouts = Timeouts { tcp_established_ms: 10_000, tcp_closing_ms: 1_000, udp_ms: 3_000 };
        let mut table = ConnTable::new(1024, timeouts);
        let keys: Vec<FlowKey> =
            (0..512u16).map(|p| FlowKey::v4([198, 18, 0, 1], [198, 19, 0, 1], 6, 1024 + p, 80)).collect();
        for (i, k) in keys.iter().enumerate().step_by(2) {
            table.insert(flow_hash(k), k.proto, ConnValue { backend: i as u32, tag: 7 }, 0, Some(0x10));
        }
        for k in &keys {
            table.prefetch::<CpuPrefetch>(flow_hash(k));
            table.prefetch_insert::<CpuPrefetch>(flow_hash(k));
        }
        for (i, k) in keys.iter().enumerate() {
            let expected = (i % 2 == 0).then_some(ConnValue { backend: i as u32, tag: 7 });
            assert_eq!(table.lookup(flow_hash(k), 1, Some(0x10)), expected, "key {i}");
        }
    }
}
