//! The hash functions that every fwd box must agree on.
//!
//! All of fwd's consistent behaviour across a cluster rests on these: two boxes with the same
//! config must send a flow to the same backend. They are therefore fixed forever: XXH3-64 (a
//! specified, platform-independent algorithm) with the seeds below. Changing a seed or the byte
//! encoding of the inputs is a breaking change for mixed-version clusters; the golden tests in
//! `maglev.rs` and here pin them.

use crate::flow::FlowKey;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the per-packet flow hash.
pub const FLOW_SEED: u64 = 0x6677_645f_666c_6f77; // "fwd_flow"
/// Seed of the Maglev permutation offset (the paper's h1).
pub const MAGLEV_OFFSET_SEED: u64 = 0x6677_645f_6f66_6673; // "fwd_offs"
/// Seed of the Maglev permutation skip (the paper's h2).
pub const MAGLEV_SKIP_SEED: u64 = 0x6677_645f_736b_6970; // "fwd_skip"

/// The flow hash: picks the Maglev slot, the tunnel source address and the GUE source port.
#[inline]
pub fn flow_hash(key: &FlowKey) -> u64 {
    xxh3_64_with_seed(&key.to_bytes(), FLOW_SEED)
}

/// Maps a hash onto `0..n` without a division (Lemire's multiply-shift range reduction), using the
/// low 32 bits. `n` must be at most `u32::MAX`.
#[inline]
pub fn reduce(hash: u64, n: u32) -> u32 {
    (((hash & 0xffff_ffff) * u64::from(n)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the flow hash: if this changes, boxes of different versions disagree on backends.
    #[test]
    fn flow_hash_is_pinned() {
        let k = FlowKey::v4([198, 18, 0, 1], [198, 18, 100, 1], 6, 40000, 80);
        let k6 = FlowKey::v6(
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "fd00:18:100::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            17,
            5353,
            53,
        );
        assert_eq!(flow_hash(&k), PINNED_V4, "flow hash of {k:?} changed: {:#x}", flow_hash(&k));
        assert_eq!(flow_hash(&k6), PINNED_V6, "flow hash of {k6:?} changed: {:#x}", flow_hash(&k6));
    }
    const PINNED_V4: u64 = 0xee35_1000_e09c_83ec;
    const PINNED_V6: u64 = 0x735c_57fc_3314_77a7;

    #[test]
    fn reduce_stays_in_range() {
        for h in [0u64, 1, u64::MAX, 0xffff_ffff, 0x1234_5678_9abc_def0] {
            for n in [1u32, 2, 65537, 655373, u32::MAX] {
                assert!(reduce(h, n) < n);
            }
        }
    }
}
