//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624), for the rewriters.
//!
//! Hand-written rather than taken from etherparse: the rewriters patch a few header words in place
//! and need the raw pieces (a partial sum to chain pseudo-header, header and payload; an update
//! for one changed word), not a checksum of a whole header struct. The tests compare every
//! function here with etherparse's independent implementation.

/// The one's complement sum of `data` read as big-endian 16-bit words (an odd last byte is padded
/// with a zero byte on the right), added to `initial`. The result is folded to at most `0xffff`,
/// so it can be fed back as `initial` for the next piece; pieces must start on even offsets of the
/// summed message for the words to line up.
#[inline]
pub fn ones_complement_sum(data: &[u8], initial: u32) -> u32 {
    // Summed as native-endian 32-bit words widened into a u64, which the compiler vectorises (no
    // per-word byte swap, no carry chain). RFC 1071 section 2: the one's complement sum is the same
    // in any byte order up to a swap of the folded result, and 2^16 = 1 (mod 0xffff) makes a
    // 32-bit word worth the sum of its two 16-bit words. Blocks of 64 KiB keep the u64 from
    // overflowing (16384 words of < 2^32 each) whatever the input length.
    let mut native = 0u64;
    for block in data.chunks(SUM_BLOCK_LEN) {
        // 32 bytes a round into eight independent lanes: wide loads, no dependency between lanes.
        let (rounds, rest) = block.as_chunks::<32>();
        let mut lanes = [0u64; 8];
        for round in rounds {
            let (words, _) = round.as_chunks::<4>();
            for (lane, word) in lanes.iter_mut().zip(words) {
                *lane += u64::from(u32::from_ne_bytes(*word));
            }
        }
        let (words, tail) = rest.as_chunks::<4>();
        let mut block_sum: u64 = lanes.iter().sum::<u64>()
            + words.iter().map(|word| u64::from(u32::from_ne_bytes(*word))).sum::<u64>();
        let (pairs, odd) = tail.as_chunks::<2>();
        for pair in pairs {
            block_sum += u64::from(u16::from_ne_bytes(*pair));
        }
        if let Some(&last) = odd.first() {
            block_sum += u64::from(u16::from_ne_bytes([last, 0]));
        }
        native = add_end_around(native, block_sum);
    }
    let big_endian = u16::from_be(fold_to_16(native) as u16);
    fold_to_16(u64::from(initial) + u64::from(big_endian))
}

/// Bytes summed into one u64 before folding. Even, so that every block starts on a word.
const SUM_BLOCK_LEN: usize = 1 << 16;
const _: () = assert!(SUM_BLOCK_LEN.is_multiple_of(2));

/// Folds the carries of a partial sum into 16 bits and complements it: the value that goes into a
/// checksum field (before any "zero means none" substitution, which UDP does itself).
#[inline]
pub fn fold(sum: u32) -> u16 {
    !(fold_to_16(u64::from(sum)) as u16)
}

/// The IPv4 header checksum of `header` (the whole header, options included), computed with the
/// checksum field (bytes 10..12) taken as zero whatever it holds.
#[inline]
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let before = header.get(..10).unwrap_or(header);
    let after = header.get(12..).unwrap_or(&[]);
    fold(ones_complement_sum(after, ones_complement_sum(before, 0)))
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`, without
/// re-reading the data: RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which (unlike RFC 1141's
/// form) never produces 0xffff-for-0x0000 errors.
#[inline]
pub fn incremental_update16(old_checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!old_checksum) + u32::from(!old) + u32::from(new);
    fold(sum)
}

#[inline]
fn add_end_around(sum: u64, word: u64) -> u64 {
    let (total, carried) = sum.overflowing_add(word);
    // When it carried, `total` is at most 2^64 - 2, so adding the carry cannot overflow again.
    total + u64::from(carried)
}

#[inline]
fn fold_to_16(mut sum: u64) -> u32 {
    // Each round at least halves the width; four rounds take any u64 to 16 bits.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::checksum::Sum16BitWords;
    use etherparse::{IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options};
    use proptest::prelude::*;

    /// etherparse sums in native byte order; `to_be` turns its result into the field value.
    fn etherparse_checksum(data: &[u8]) -> u16 {
        Sum16BitWords::new().add_slice(data).ones_complement().to_be()
    }

    /// Golden values: RFC 1071's worked example and classic edge cases.
    #[test]
    fn known_sums() {
        struct Case {
            description: &'static str,
            data: &'static [u8],
            checksum: u16,
        }
        let cases = [
            Case {
                description: "RFC 1071 section 3 example (sum 0xddf2)",
                data: &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7],
                checksum: !0xddf2,
            },
            Case { description: "empty", data: &[], checksum: 0xffff },
            Case { description: "odd length pads on the right", data: &[0x12], checksum: !0x1200 },
            Case { description: "all ones sums to negative zero", data: &[0xff, 0xff], checksum: 0 },
            Case { description: "carries wrap around", data: &[0xff, 0xff, 0x00, 0x02], checksum: !0x0002 },
        ];
        for case in cases {
            assert_eq!(fold(ones_complement_sum(case.data, 0)), case.checksum, "{}", case.description);
            assert_eq!(etherparse_checksum(case.data), case.checksum, "{} (etherparse)", case.description);
        }
    }

    #[test]
    fn ipv4_header_checksum_ignores_the_checksum_field_and_short_input() {
        let header = Ipv4Header::new(100, 64, IpNumber::UDP, [198, 18, 0, 1], [198, 19, 0, 1]).unwrap();
        let mut bytes = header.to_bytes();
        let expected = header.calc_header_checksum();
        bytes[10] = 0xab;
        bytes[11] = 0xcd;
        assert_eq!(ipv4_header_checksum(&bytes), expected);
        for len in 0..bytes.len() {
            let _ = ipv4_header_checksum(&bytes[..len]);
        }
    }

    proptest! {
        #[test]
        fn sum_matches_etherparse(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(fold(ones_complement_sum(&data, 0)), etherparse_checksum(&data));
        }

        #[test]
        fn sums_chain_over_even_splits(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            split in 0usize..300,
            initial in any::<u32>(),
        ) {
            let split = (split * 2).min(data.len() & !1);
            let chained = ones_complement_sum(&data[split..], ones_complement_sum(&data[..split], initial));
            prop_assert!(chained <= 0xffff);
            let whole = ones_complement_sum(&data, initial);
            prop_assert_eq!(fold(chained), fold(whole));
            let initial_folded = Sum16BitWords::new()
                .add_2bytes(((initial >> 16) as u16).to_be_bytes())
                .add_2bytes((initial as u16).to_be_bytes())
                .add_slice(&data)
                .ones_complement()
                .to_be();
            prop_assert_eq!(fold(whole), initial_folded);
        }

        #[test]
        fn ipv4_header_checksum_matches_etherparse(
            dscp in 0u8..64,
            ecn in 0u8..4,
            payload_len in 0u16..60000,
            identification in any::<u16>(),
            dont_fragment in any::<bool>(),
            more_fragments in any::<bool>(),
            fragment_offset in 0u16..8192,
            time_to_live in any::<u8>(),
            protocol in any::<u8>(),
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
            option_words in 0usize..=10,
            option_seed in any::<u8>(),
        ) {
            let options: Vec<u8> = (0..option_words * 4).map(|i| option_seed.wrapping_mul(i as u8 | 1)).collect();
            let header = Ipv4Header {
                dscp: IpDscp::try_new(dscp).unwrap(),
                ecn: IpEcn::try_new(ecn).unwrap(),
                total_len: payload_len,
                identification,
                dont_fragment,
                more_fragments,
                fragment_offset: IpFragOffset::try_new(fragment_offset).unwrap(),
                time_to_live,
                protocol: IpNumber(protocol),
                header_checksum: 0x5555,
                source,
                destination,
                options: Ipv4Options::try_from(&options[..]).unwrap(),
            };
            let bytes = header.to_bytes();
            prop_assert_eq!(ipv4_header_checksum(&bytes), header.calc_header_checksum());
        }

        #[test]
        fn incremental_update_matches_recomputing(
            data in proptest::collection::vec(any::<u8>(), 2..200),
            word_index in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let mut data = data;
            let at = word_index.index(data.len() / 2) * 2;
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let old_checksum = etherparse_checksum(&data);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let recomputed = etherparse_checksum(&data);
            let updated = incremental_update16(old_checksum, old, new);
            // Both are valid encodings of the same sum; RFC 1624 eqn 3 picks the same one as a
            // recomputation except where the recomputed sum is +0 (0xffff) vs -0.
            prop_assert!(
                updated == recomputed || (updated ^ recomputed == 0xffff && (updated == 0 || recomputed == 0)),
                "updated {:#06x}, recomputed {:#06x}", updated, recomputed
            );
        }
    }

    #[test]
    fn incremental_update_rfc1624_example() {
        // RFC 1624 section 4: HC 0xdd2f, m 0x5555 -> m' 0x3285 gives HC' 0x0000.
        assert_eq!(incremental_update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }
}
