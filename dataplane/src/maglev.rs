//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Built by control, read by workers. A table is a pure function of the members' identities
//! (address and port, never their position in the config), their weights and the table size, so
//! every box with the same config builds the same table; [`MaglevTable::fingerprint`] lets
//! operators check that.
//!
//! Population: member `i` prefers slots `(offset_i + j * skip_i) mod M` for `j = 0, 1, ...`, with
//! `offset = h1(key) mod M` and `skip = h2(key) mod (M - 1) + 1` (XXH3 with the seeds in
//! [`crate::hash`]). Members take turns claiming their next preferred free slot. Weights follow
//! Katran's `MaglevHashV2`: in each round every member adds its weight to a credit and claims a slot
//! when the credit reaches the largest weight, so members with the largest weight claim every round
//! and the others in proportion. Weight 0 claims nothing (a drained or absent member). Turns are
//! taken in the canonical order of member keys, which makes the result independent of input order.

use crate::hash::{reduce, MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED};
use std::net::IpAddr;
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// Default table size: the paper's and Katran's.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Smallest table size accepted (a prime).
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest table size accepted (a prime, 2^20 - 3): 2 MiB of entries per service.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Most members one table can hold: entries are `u16` and one value marks an empty slot.
pub const MAX_MEMBERS: usize = u16::MAX as usize;

const EMPTY: u16 = u16::MAX;

/// A member's identity for hashing: its address (IPv4 as IPv4-mapped IPv6) and port (0 if none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey(pub [u8; 18]);

impl BackendKey {
    pub fn new(addr: IpAddr, port: Option<u16>) -> Self {
        let mut k = [0u8; 18];
        k[..16].copy_from_slice(&crate::flow::ip_to_16(addr));
        k[16..].copy_from_slice(&port.unwrap_or(0).to_be_bytes());
        BackendKey(k)
    }
}

/// One member of a table as given to [`MaglevTable::build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevMember {
    pub key: BackendKey,
    /// Relative weight; 0 takes no slot.
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime in the accepted range.
    #[error("Maglev table size {0} must be a prime between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE}")]
    BadSize(u32),
    /// More members than `u16` entries can name.
    #[error("a Maglev table holds at most {MAX_MEMBERS} members, got {0}")]
    TooManyMembers(usize),
    /// Two members with the same address and port.
    #[error("two Maglev members share the key {0:?}")]
    DuplicateMember(BackendKey),
}

/// A populated lookup table: slot -> index of the member (in the order given to `build`).
#[derive(Clone, Debug)]
pub struct MaglevTable {
    /// Empty when no member has a weight: every lookup then misses.
    slots: Box<[u16]>,
    size: u32,
    members: usize,
    fingerprint: u64,
}

/// Per-member build state, kept together so that a claim touches one cache line.
#[derive(Clone, Copy)]
struct Claimant {
    member: u16,
    weight: u64,
    credit: u64,
    position: u32,
    skip: u32,
}

impl MaglevTable {
    /// Builds the table. Allocates the table once and one scratch vector of per-member state.
    pub fn build(members: &[MaglevMember], size: u32) -> Result<MaglevTable, MaglevError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
            return Err(MaglevError::BadSize(size));
        }
        if members.len() > MAX_MEMBERS {
            return Err(MaglevError::TooManyMembers(members.len()));
        }
        let mut claimants: Vec<Claimant> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.weight > 0)
            .map(|(i, m)| Claimant {
                member: i as u16,
                weight: u64::from(m.weight),
                credit: 0,
                position: (xxh3_64_with_seed(&m.key.0, MAGLEV_OFFSET_SEED) % u64::from(size)) as u32,
                skip: (xxh3_64_with_seed(&m.key.0, MAGLEV_SKIP_SEED) % u64::from(size - 1)) as u32 + 1,
            })
            .collect();
        // Canonical turn order: by key, so the config's order does not matter.
        claimants.sort_unstable_by_key(|c| members[usize::from(c.member)].key);
        if let Some(pair) = claimants.windows(2).find(|w| {
            members[usize::from(w[0].member)].key == members[usize::from(w[1].member)].key
        }) {
            return Err(MaglevError::DuplicateMember(members[usize::from(pair[0].member)].key));
        }
        if claimants.is_empty() {
            return Ok(MaglevTable { slots: Box::new([]), size, members: members.len(), fingerprint: 0 });
        }

        let max_weight = claimants.iter().map(|c| c.weight).max().unwrap_or(1);
        let mut slots = vec![EMPTY; size as usize].into_boxed_slice();
        let mut filled = 0u32;
        'rounds: loop {
            for c in claimants.iter_mut() {
                c.credit += c.weight;
                if c.credit < max_weight {
                    continue;
                }
                c.credit -= max_weight;
                // Walk this member's permutation to its next free slot. Terminates: skip and size
                // are coprime (size is prime), so the walk visits every slot, and one is free.
                loop {
                    let slot = c.position as usize;
                    c.position += c.skip;
                    if c.position >= size {
                        c.position -= size;
                    }
                    if slots[slot] == EMPTY {
                        slots[slot] = c.member;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'rounds;
                }
            }
        }
        let fingerprint = digest(&slots, members, size);
        Ok(MaglevTable { slots, size, members: members.len(), fingerprint })
    }

    /// The member index for a flow hash, or `None` if no member has a weight.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        self.slots.get(reduce(hash, self.size) as usize).copied()
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The raw slots (member indices); empty if no member has a weight.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }

    /// Slots owned by each member, indexed like the `members` given to `build`.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.members];
        for &s in self.slots.iter() {
            counts[usize::from(s)] += 1;
        }
        counts
    }

    /// A digest of the table as seen by flows: the size and, for every slot, the key of its owner.
    /// Equal on two boxes exactly when they send every flow hash to the same backend.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// [`Self::fingerprint`] as the 16 hex digits operators compare between boxes.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

fn digest(slots: &[u16], members: &[MaglevMember], size: u32) -> u64 {
    let mut h = Xxh3::with_seed(0);
    h.update(&size.to_be_bytes());
    for &s in slots {
        h.update(&members[usize::from(s)].key.0);
    }
    h.digest()
}

/// Deterministic trial division; table sizes are at most ~2^20, so this is microseconds.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<MaglevMember> {
        (0..n)
            .map(|i| MaglevMember {
                key: BackendKey::new(IpAddr::from([198, 18, (i >> 8) as u8, i as u8]), None),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        let m = members(10);
        let t = MaglevTable::build(&m, 65537).unwrap();
        let c = t.slot_counts();
        assert_eq!(c.iter().sum::<u32>(), 65537);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{c:?}");
    }

    #[test]
    fn order_of_members_does_not_matter() {
        let m = members(20);
        let mut r = m.clone();
        r.reverse();
        let a = MaglevTable::build(&m, 251).unwrap();
        let b = MaglevTable::build(&r, 251).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        for (sa, sb) in a.slots().iter().zip(b.slots()) {
            assert_eq!(m[usize::from(*sa)].key, r[usize::from(*sb)].key);
        }
    }

    #[test]
    fn rejects_bad_sizes_and_duplicates() {
        assert_eq!(MaglevTable::build(&members(1), 65536).unwrap_err(), MaglevError::BadSize(65536));
        assert_eq!(MaglevTable::build(&members(1), 7).unwrap_err(), MaglevError::BadSize(7));
        let mut m = members(2);
        m[1].key = m[0].key;
        assert!(matches!(MaglevTable::build(&m, 251), Err(MaglevError::DuplicateMember(_))));
    }

    #[test]
    fn no_weight_means_no_slot() {
        let mut m = members(3);
        for x in &mut m {
            x.weight = 0;
        }
        let t = MaglevTable::build(&m, 251).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.lookup(12345), None);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(655373) && is_prime(251) && is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65535) && !is_prime(1) && !is_prime(0) && !is_prime(9));
    }
}
