//! The hash functions that every fwd box must agree on.
//!
//! All of fwd's consistent behaviour across a cluster rests on these: two boxes with the same
//! config must send a flow to the same backend. They are therefore fixed forever: XXH3-64 (a
//! specified, platform-independent algorithm) with the seeds below. Changing a seed or the byte
//! encoding of the inputs is a breaking change for mixed-version clusters; the golden tests in
//! `maglev.rs` and here pin them.

use crate::flow::{FlowKey, FLOW_KEY_BYTES};

/// Seed of the per-packet flow hash.
pub const FLOW_SEED: u64 = 0x6677_645f_666c_6f77; // "fwd_flow"
/// Seed of the Maglev permutation offset (the paper's h1).
pub const MAGLEV_OFFSET_SEED: u64 = 0x6677_645f_6f66_6673; // "fwd_offs"
/// Seed of the Maglev permutation skip (the paper's h2).
pub const MAGLEV_SKIP_SEED: u64 = 0x6677_645f_736b_6970; // "fwd_skip"

/// The flow hash: picks the Maglev slot, the tunnel source address and the GUE source port.
///
/// It is XXH3-64 with [`FLOW_SEED`] over [`FlowKey::to_bytes`], exactly what
/// `xxh3_64_with_seed(&key.to_bytes(), FLOW_SEED)` returns (a property test holds the two equal),
/// but computed from the key's fields in registers. Through the crate the key is first written out
/// as 37 bytes and then read back as 64-bit words at offsets 5, 13, 21 and 29, which straddle the
/// stores just made: store-forwarding stalls that made the hash cost 22 ns per packet where the
/// arithmetic takes about 5. This is XXH3's 17-to-128-byte path unrolled for 37 bytes: four
/// `mix16` steps over the input words at 0, 16, 5 (len - 32) and 21 (len - 16), then the avalanche.
#[inline]
pub fn flow_hash(key: &FlowKey) -> u64 {
    let src = u128::from_le_bytes(key.src);
    let dst = u128::from_le_bytes(key.dst);
    // Bytes 32..37 of the encoding: ports big endian, then the protocol.
    let tail = u64::from(key.src_port.swap_bytes())
        | u64::from(key.dst_port.swap_bytes()) << 16
        | u64::from(key.proto) << 32;
    let word = |bits: u128| bits as u64;
    let at_0 = (word(src), word(src >> 64));
    let at_16 = (word(dst), word(dst >> 64));
    let at_5 = (word(src >> 40), word(src >> 104 | dst << 24));
    let at_21 = (word(dst >> 40), word(dst >> 104) | tail << 24);

    let mut acc = (FLOW_KEY_BYTES as u64).wrapping_mul(XXH_PRIME64_1);
    acc = acc.wrapping_add(mix16(at_16, FLOW_SECRET[2]));
    acc = acc.wrapping_add(mix16(at_5, FLOW_SECRET[3]));
    acc = acc.wrapping_add(mix16(at_0, FLOW_SECRET[0]));
    acc = acc.wrapping_add(mix16(at_21, FLOW_SECRET[1]));
    xxh3_avalanche(acc)
}

const XXH_PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;

/// The first 64 bytes of XXH3's default secret as little-endian words, in pairs, with the seed
/// folded in as XXH3 does for seeded short inputs (`+ seed` on the first word, `- seed` on the
/// second).
const FLOW_SECRET: [(u64, u64); 4] = {
    const SECRET: [u64; 8] = [
        0xbe4b_a423_396c_feb8,
        0x1cad_21f7_2c81_017c,
        0xdb97_9083_e96d_d4de,
        0x1f67_b3b7_a4a4_4072,
        0x78e5_c0cc_4ee6_79cb,
        0x2172_ffcc_7dd0_5a82,
        0x8e24_43f7_7446_08b8,
        0x4c26_3a81_e690_35e0,
    ];
    let mut pairs = [(0u64, 0u64); 4];
    let mut i = 0;
    while i < 4 {
        pairs[i] = (SECRET[2 * i].wrapping_add(FLOW_SEED), SECRET[2 * i + 1].wrapping_sub(FLOW_SEED));
        i += 1;
    }
    pairs
};

#[inline(always)]
fn mix16(input: (u64, u64), secret: (u64, u64)) -> u64 {
    let product = u128::from(input.0 ^ secret.0) * u128::from(input.1 ^ secret.1);
    product as u64 ^ (product >> 64) as u64
}

#[inline(always)]
fn xxh3_avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ h >> 32
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

    proptest::proptest! {
        /// The register version is XXH3 itself, for every key.
        #[test]
        fn flow_hash_is_xxh3_of_the_canonical_bytes(
            src: [u8; 16], dst: [u8; 16], src_port: u16, dst_port: u16, proto: u8,
        ) {
            let key = FlowKey { src, dst, src_port, dst_port, proto };
            let reference = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_bytes(), FLOW_SEED);
            proptest::prop_assert_eq!(flow_hash(&key), reference);
        }
    }

    #[test]
    fn reduce_stays_in_range() {
        for h in [0u64, 1, u64::MAX, 0xffff_ffff, 0x1234_5678_9abc_def0] {
            for n in [1u32, 2, 65537, 655373, u32::MAX] {
                assert!(reduce(h, n) < n);
            }
        }
    }
}
