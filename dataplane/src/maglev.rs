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
use std::sync::OnceLock;
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
    /// The members' keys, in the order given to `build`: what the fingerprint digests.
    keys: Box<[BackendKey]>,
    /// Computed on first use. Workers never read it and it costs about as much as a seventh of
    /// the build (it hashes 18 bytes per slot), so a rebuilt table reaches the workers without
    /// waiting for it; operators' reports compute it once per table.
    fingerprint: OnceLock<u64>,
}

impl MaglevTable {
    /// Builds the table. Allocates the table and scratch space of about 40 bytes per member (plus the
    /// turn order, two bytes per slot, when weights differ).
    pub fn build(members: &[MaglevMember], size: u32) -> Result<MaglevTable, MaglevError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
            return Err(MaglevError::BadSize(size));
        }
        if members.len() > MAX_MEMBERS {
            return Err(MaglevError::TooManyMembers(members.len()));
        }
        // Canonical turn order: by key, so the config's order does not matter.
        let mut canonical: Vec<u16> = (0..members.len() as u16).collect();
        canonical.sort_unstable_by_key(|&i| key_order(&members[usize::from(i)].key));
        if let Some(pair) =
            canonical.windows(2).find(|w| members[usize::from(w[0])].key == members[usize::from(w[1])].key)
        {
            return Err(MaglevError::DuplicateMember(members[usize::from(pair[0])].key));
        }
        canonical.retain(|&i| members[usize::from(i)].weight > 0);
        let keys = members.iter().map(|m| m.key).collect();
        if canonical.is_empty() {
            return Ok(MaglevTable { slots: Box::new([]), size, keys, fingerprint: OnceLock::new() });
        }

        let (scale, moduli) = (FixedPoint::new(size), Moduli::new(size));
        let mut walkers: Vec<Walker> =
            canonical.iter().map(|&i| Walker::new(&members[usize::from(i)].key, i, &moduli, scale)).collect();
        let weights: Vec<u64> =
            canonical.iter().map(|&i| u64::from(members[usize::from(i)].weight)).collect();
        let slots = fill(size, &mut walkers, &Turns::new(&weights, size));
        Ok(MaglevTable { slots: slots.into_boxed_slice(), size, keys, fingerprint: OnceLock::new() })
    }

    /// The member index for a flow hash, or `None` if no member has a weight.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        self.slot(hash).copied()
    }

    /// The slot [`MaglevTable::lookup`] reads (for prefetching it).
    #[inline(always)]
    pub fn slot(&self, hash: u64) -> Option<&u16> {
        self.slots.get(reduce(hash, self.size) as usize)
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

    /// The members' keys, in the order given to `build` (what the slots index).
    pub fn keys(&self) -> &[BackendKey] {
        &self.keys
    }

    /// Slots owned by each member, indexed like the `members` given to `build`.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.keys.len()];
        for &s in self.slots.iter() {
            counts[usize::from(s)] += 1;
        }
        counts
    }

    /// A digest of the table as seen by flows: the size and, for every slot, the key of its owner.
    /// Equal on two boxes exactly when they send every flow hash to the same backend; 0 for a
    /// table without slots. Computed on the first call (about 0.1 ms at 65537 slots).
    pub fn fingerprint(&self) -> u64 {
        *self.fingerprint.get_or_init(|| {
            if self.slots.is_empty() {
                0
            } else {
                digest(&self.slots, &self.keys, self.size)
            }
        })
    }

    /// [`Self::fingerprint`] as the 16 hex digits operators compare between boxes.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:016x}", self.fingerprint())
    }
}

fn digest(slots: &[u16], keys: &[BackendKey], size: u32) -> u64 {
    const KEY: usize = std::mem::size_of::<BackendKey>();
    const BLOCK_SLOTS: usize = 512;
    let mut h = Xxh3::with_seed(0);
    h.update(&size.to_be_bytes());
    // The same bytes as one `update` per slot, fed in blocks: far fewer calls. Each key is copied
    // as a 16-byte and a 2-byte piece from separate arrays: measured faster than whole keys.
    let heads: Vec<[u8; 16]> = keys.iter().map(key_head).collect();
    let tails: Vec<[u8; 2]> = keys.iter().map(|k| [k.0[16], k.0[17]]).collect();
    let mut block = [0u8; BLOCK_SLOTS * KEY];
    for chunk in slots.chunks(BLOCK_SLOTS) {
        for (out, &s) in block.chunks_exact_mut(KEY).zip(chunk) {
            let (head, tail) = out.split_at_mut(16);
            head.copy_from_slice(&heads[usize::from(s)]);
            tail.copy_from_slice(&tails[usize::from(s)]);
        }
        h.update(&block[..chunk.len() * KEY]);
    }
    h.digest()
}

fn key_head(key: &BackendKey) -> [u8; 16] {
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, _, _] = key.0;
    [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15]
}

/// Sorts like the key's bytes, with two integer comparisons instead of a `memcmp`.
fn key_order(key: &BackendKey) -> (u128, u16) {
    (u128::from_be_bytes(key_head(key)), u16::from_be_bytes([key.0[16], key.0[17]]))
}

/// The order in which members (by canonical rank) take their turns, `size` turns in all.
///
/// The module doc's credit rule gives member `i` (weight `w`, largest weight `W`) its `k`-th turn
/// in round `ceil(k * W / w)`, and within a round turns go by rank. Listing the turns with a
/// counting sort on the round costs `O(size + members)` whatever the weights, where stepping
/// through rounds costs `O(rounds * members)`.
enum Turns {
    /// All weights are equal: every member, in rank order, every round.
    RoundRobin,
    /// At least `size` turns: ranks in turn order.
    Listed(Vec<u16>),
}

impl Turns {
    fn new(weights: &[u64], size: u32) -> Turns {
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        if weights.iter().all(|&w| w == max_weight) {
            return Turns::RoundRobin;
        }
        // After `r` rounds member `i` has had floor(r * w_i / W) turns, so the first
        // ceil((size + members) * W / total) rounds hold at least `size` turns; and `size` rounds
        // always do, as the heaviest member takes a turn every round.
        let total: u64 = weights.iter().sum();
        let needed = u64::from(size) + weights.len() as u64;
        let rounds = (needed * max_weight).div_ceil(total).min(u64::from(size)) as usize;
        // turns_before[r]: turns in rounds before `r` (rounds count from 1).
        let mut turns_before = vec![0u32; rounds + 2];
        for &weight in weights {
            for_each_turn_round(weight, max_weight, rounds, |round| turns_before[round + 1] += 1);
        }
        for r in 1..turns_before.len() {
            turns_before[r] += turns_before[r - 1];
        }
        let mut turns = vec![0u16; turns_before[rounds + 1] as usize];
        for (rank, &weight) in weights.iter().enumerate() {
            for_each_turn_round(weight, max_weight, rounds, |round| {
                turns[turns_before[round] as usize] = rank as u16;
                turns_before[round] += 1;
            });
        }
        Turns::Listed(turns)
    }
}

/// Calls `f` with the round of each turn of a member of weight `weight` up to round `rounds`:
/// `ceil(k * max_weight / weight)` for `k = 1, 2, ...`, stepped without a division.
#[inline]
fn for_each_turn_round(weight: u64, max_weight: u64, rounds: usize, mut f: impl FnMut(usize)) {
    let whole = max_weight / weight;
    let remainder = max_weight % weight;
    // round = k * whole + ceil(k * remainder / weight); slack = ceil(..) * weight - k * remainder.
    let mut round = 0u64;
    let mut slack = 0u64;
    loop {
        round += whole;
        if remainder > slack {
            round += 1;
            slack += weight - remainder;
        } else {
            slack -= remainder;
        }
        if round > rounds as u64 {
            return;
        }
        f(round as usize);
    }
}

/// Slot positions in fixed point, so that stepping along a walk is one wrapping add with no
/// reduction modulo the size: slot `n mod size` is represented by `n * ceil(2^64 / size)` (mod
/// 2^64) and read back as the high half of that times `size`.
///
/// Exact as long as `n < 2^64 / size`: with `ceil(2^64 / size) = 2^64 / size + d` (`0 < d < 1`, as
/// `size` is an odd prime), `n * scale mod 2^64 = (n mod size) * 2^64 / size + n * d`, and the
/// high half of that times `size` is `n mod size` while `n * d * size < 2^64`. A walk's `n` is
/// `offset + j * skip` with `j` at most `size` (no walk passes a slot twice), below
/// `size^2 + size`, and sizes are below 2^21, so `n * size < 2^63`.
#[derive(Clone, Copy)]
struct FixedPoint {
    scale: u64,
    size: u64,
}

impl FixedPoint {
    fn new(size: u32) -> FixedPoint {
        FixedPoint { scale: u64::MAX / u64::from(size) + 1, size: u64::from(size) }
    }

    #[inline(always)]
    fn of(self, slot: u32) -> u64 {
        u64::from(slot) * self.scale
    }

    #[inline(always)]
    fn slot(self, at: u64) -> usize {
        ((u128::from(at) * u128::from(self.size)) >> 64) as usize
    }
}

/// One member's walk through its permutation of the slots.
#[derive(Clone, Copy)]
struct Walker {
    /// The next slot it will try, in [`FixedPoint`].
    at: u64,
    /// `skip` in [`FixedPoint`]: a wrapping add steps the walk.
    step: u64,
    /// What its slots hold: its index among the members given to `build`.
    member: u16,
    /// `skip`'s inverse modulo the size, for the endgame; 0 until the endgame computes it.
    inverse: u32,
}

impl Walker {
    fn new(key: &BackendKey, member: u16, moduli: &Moduli, scale: FixedPoint) -> Walker {
        let skip = moduli.skip.rem(xxh3_64_with_seed(&key.0, MAGLEV_SKIP_SEED)) as u32 + 1;
        let offset = moduli.offset.rem(xxh3_64_with_seed(&key.0, MAGLEV_OFFSET_SEED)) as u32;
        Walker { at: scale.of(offset), step: scale.of(skip), member, inverse: 0 }
    }
}

/// The two divisors of [`Walker::new`]: `size` for offsets, `size - 1` for skips.
struct Moduli {
    offset: Modulus,
    skip: Modulus,
}

impl Moduli {
    fn new(size: u32) -> Moduli {
        Moduli { offset: Modulus::new(u64::from(size)), skip: Modulus::new(u64::from(size - 1)) }
    }
}

/// `x mod divisor` for any 64-bit `x` by multiplications instead of a 64-bit division (slow for a
/// 64-bit dividend): Lemire, Kaser and Kurz, "Faster remainder by direct computation" (2019),
/// exact for 64-bit numerators with a 128-bit `ceil(2^128 / divisor)`.
#[derive(Clone, Copy)]
struct Modulus {
    /// `ceil(2^128 / divisor)`, wrapping (the divisor is at least 2, so no wrap occurs).
    inverse: u128,
    divisor: u64,
}

impl Modulus {
    fn new(divisor: u64) -> Modulus {
        Modulus { inverse: u128::MAX / u128::from(divisor) + 1, divisor }
    }

    /// The high 64 bits of `(inverse * x mod 2^128) * divisor`, a 192-bit product.
    #[inline]
    fn rem(self, x: u64) -> u64 {
        let fraction = self.inverse.wrapping_mul(u128::from(x));
        let divisor = u128::from(self.divisor);
        let low = (u128::from(fraction as u64) * divisor) >> 64;
        let high = (fraction >> 64) * divisor;
        ((low + high) >> 64) as u64
    }
}

/// What a turn does with its member's walker.
trait Turn {
    fn take(&mut self, walker: &mut Walker);
}

/// Takes a turn with the walker of each turn in `turns` (turn numbers, from 0), in order.
#[inline(always)]
fn for_each_turn(order: &Turns, walkers: &mut [Walker], turns: std::ops::Range<usize>, turn: &mut impl Turn) {
    match order {
        Turns::RoundRobin => {
            // Whole stretches of consecutive ranks: a plain pass over the walkers. Only the first
            // can start mid-round (one division per call, not one per round).
            let mut next = turns.start;
            let mut rank = next % walkers.len();
            while next < turns.end {
                let stretch = (walkers.len() - rank).min(turns.end - next);
                for walker in &mut walkers[rank..rank + stretch] {
                    turn.take(walker);
                }
                next += stretch;
                rank = 0;
            }
        }
        Turns::Listed(ranks) => {
            for &rank in &ranks[turns] {
                turn.take(&mut walkers[usize::from(rank)]);
            }
        }
    }
}

/// A walking phase's turn: test the next `WIDTH` slots of the walk without a branch (none if
/// `WIDTH` is 1), then walk on if none was free.
struct Walk<'a, const WIDTH: usize> {
    slots: &'a mut [u16],
    scale: FixedPoint,
}

/// Fills the table one turn at a time: each turn's member takes the first free slot on its walk.
///
/// Two strategies give that same slot. While many slots are free, walk: test the slots one by one
/// (an empty slot holds [`EMPTY`] until claimed). Once few are free a walk would take
/// `size / free` steps, so instead compute for every free slot how many steps away it
/// is on the member's walk, `(slot - position) / skip mod size`, and take the nearest: `free`
/// multiplications per turn. The switch happens at about `1.5 sqrt(size)` free slots, where the
/// two costs meet; before it the walks take about `size * ln(size / sqrt(size))` steps in all
/// instead of `size * ln(size)`.
///
/// Measured and rejected (1000 members, 65537 slots; walking is ~90% of the build, its last phase
/// alone ~40%): switching at 0.5-4x `sqrt(size)` free slots (flat up to 1.5x, slower beyond,
/// while the endgame kept one running minimum: a compare-and-move chain of two cycles per free
/// slot; with four minima it is about 1.5x cheaper, and 1.5x `sqrt(size)` measured 0.92-0.98 ms
/// against 0.96-1.13 for `sqrt(size)`, five runs alternated; 2x took 1.04-1.12); testing an
/// occupancy bitmap (8 KiB, in L1) instead of the table (20% slower: the walks are bound by
/// instructions per tested slot, not by the table's L2 latency, and a bit test takes more of
/// them); four slots per step in the last phase instead of two (no change); a zeroed table instead of the `EMPTY` fill (the fill
/// is 0.3% of the build); the last phase stepped as a slot index with a conditional subtraction
/// (no multiplication per slot) instead of in fixed point (no change: best 0.95-0.97 ms either
/// way, alternated 4x; so the 128-bit multiply's throughput does not bound these walks). Stop 17,
/// alternated 4x against this code (best 0.78-0.86 ms): reading the slot with one 64-bit multiply
/// of the position's high half (`((at >> 32) + 1) * size >> 32`, exact within the bounds above)
/// took 0.90-1.02; touching the first candidate slot of the walker six turns ahead (a load, so
/// that its line is in L1 when its turn comes) took 0.88-0.90.
fn fill(size: u32, walkers: &mut [Walker], order: &Turns) -> Vec<u16> {
    let mut slots = vec![EMPTY; size as usize];
    let scale = FixedPoint::new(size);
    let claims = (size - size.isqrt() * 3 / 2) as usize;
    // While a walk usually ends within a few slots, whether each slot is free is a coin toss
    // for the branch predictor, and a mispredicted branch costs more than testing a few more
    // slots. So test the walk's next `WIDTH` slots without branching and take the first free
    // one; branch (and walk on) only when none is: rare while the table is at most as full as
    // each phase's bound. Up to 20% full the first slot is free often enough that one branch
    // per slot is cheaper. Widths and bounds measured at 65537 slots.
    let mut done = 0;
    let mut phase = |percent_full: u64, walk: fn(&mut [u16], &mut [Walker], &Turns, FixedPoint, _)| {
        let upto = ((u64::from(size) * percent_full / 100) as usize).clamp(done, claims);
        walk(&mut slots, walkers, order, scale, done..upto);
        done = upto;
    };
    phase(20, walk::<1>);
    phase(40, walk::<2>);
    phase(70, walk::<4>);
    phase(85, walk::<6>);
    phase(100, walk::<1>);
    nearest_free(&mut slots, walkers, order, claims..size as usize);
    slots
}

/// The walking phase: `turns` turns of [`Walk`].
#[inline(never)]
fn walk<const WIDTH: usize>(
    slots: &mut [u16],
    walkers: &mut [Walker],
    order: &Turns,
    scale: FixedPoint,
    turns: std::ops::Range<usize>,
) {
    for_each_turn(order, walkers, turns, &mut Walk::<WIDTH> { slots, scale });
}

impl<const WIDTH: usize> Turn for Walk<'_, WIDTH> {
    #[inline(always)]
    fn take(&mut self, walker: &mut Walker) {
        let (slots, scale) = (&mut *self.slots, self.scale);
        let step = walker.step;
        let mut at = walker.at;
        if WIDTH > 1 {
            // A bit per free candidate, combined arithmetically: with selects instead, the
            // compiler turns them back into branches.
            let mut free = 0u32;
            let mut candidate = at;
            for bit in 0..WIDTH {
                free |= u32::from(slots[scale.slot(candidate)] == EMPTY) << bit;
                candidate = candidate.wrapping_add(step);
            }
            if free != 0 {
                let first = at.wrapping_add(u64::from(free.trailing_zeros()).wrapping_mul(step));
                slots[scale.slot(first)] = walker.member;
                walker.at = first.wrapping_add(step);
                return;
            }
            at = candidate;
        }
        // Two slots per step, the second computed off the loop's dependency chain: long walks
        // (late in the fill) are bound by the latency of stepping the position.
        let double_step = step.wrapping_mul(2);
        loop {
            let second = at.wrapping_add(step);
            let first_slot = scale.slot(at);
            if slots[first_slot] == EMPTY {
                slots[first_slot] = walker.member;
                walker.at = second;
                return;
            }
            let second_slot = scale.slot(second);
            if slots[second_slot] == EMPTY {
                slots[second_slot] = walker.member;
                walker.at = at.wrapping_add(double_step);
                return;
            }
            at = at.wrapping_add(double_step);
        }
    }
}

/// The endgame: the remaining turns, one per free slot.
#[inline(never)]
fn nearest_free(slots: &mut [u16], walkers: &mut [Walker], order: &Turns, turns: std::ops::Range<usize>) {
    let scale = FixedPoint::new(slots.len() as u32);
    let free = free_slots(slots);
    debug_assert_eq!(free.len(), turns.len());
    // Every endgame member's inverse at once (Montgomery's trick: one Euclid, three
    // multiplications each), not one Euclid per member.
    let modulus = Modulus::new(slots.len() as u64);
    let mut inverses = Inverses { scale, modulus, skips: Vec::new(), before: Vec::new(), product: 1 };
    for_each_turn(order, walkers, turns.clone(), &mut inverses);
    let Inverses { skips, before, product, .. } = inverses;
    if !skips.is_empty() {
        // inverse_of_prefix[j]: the inverse of the product of the first j + 1 skips.
        let mut inverse_of_prefix = vec![0u64; skips.len()];
        let mut inverse = u64::from(inverse_mod_prime(product as u32, slots.len() as u32));
        for (j, &skip) in skips.iter().enumerate().rev() {
            inverse_of_prefix[j] = inverse;
            inverse = modulus.rem(inverse * skip);
        }
        let mut resolve = ResolveInverses { modulus, before, inverse_of_prefix };
        for_each_turn(order, walkers, turns.clone(), &mut resolve);
    }
    for_each_turn(order, walkers, turns, &mut Nearest { slots, scale, free });
}

/// Marks each endgame walker still without an inverse as pending (its index among them, with
/// [`PENDING`] set) and records its skip and the product of the skips before it.
struct Inverses {
    scale: FixedPoint,
    modulus: Modulus,
    skips: Vec<u64>,
    before: Vec<u64>,
    product: u64,
}

/// Marks a walker's `inverse` as an index into [`Inverses`]' lists; inverses are below 2^21.
const PENDING: u32 = 1 << 31;

impl Turn for Inverses {
    fn take(&mut self, walker: &mut Walker) {
        if walker.inverse == 0 {
            let skip = self.scale.slot(walker.step) as u64;
            walker.inverse = PENDING | self.skips.len() as u32;
            self.before.push(self.product);
            self.skips.push(skip);
            self.product = self.modulus.rem(self.product * skip);
        }
    }
}

/// A pending walker's inverse: the product of the skips before it over that up to its own.
struct ResolveInverses {
    modulus: Modulus,
    before: Vec<u64>,
    inverse_of_prefix: Vec<u64>,
}

impl Turn for ResolveInverses {
    fn take(&mut self, walker: &mut Walker) {
        if walker.inverse & PENDING != 0 {
            let j = (walker.inverse & !PENDING) as usize;
            walker.inverse = self.modulus.rem(self.before[j] * self.inverse_of_prefix[j]) as u32;
        }
    }
}

/// An endgame turn: take the free slot nearest on the walk.
struct Nearest<'a> {
    slots: &'a mut [u16],
    scale: FixedPoint,
    free: Vec<u32>,
}

impl Turn for Nearest<'_> {
    fn take(&mut self, walker: &mut Walker) {
        let (scale, size) = (self.scale, self.slots.len() as u32);
        let skip = scale.slot(walker.step) as u32;
        debug_assert_eq!(u64::from(walker.inverse) * u64::from(skip) % u64::from(size), 1);
        let base = u64::from(size) - scale.slot(walker.at) as u64;
        // A free slot is `(slot + base) * inverse mod size` steps away; in fixed point that is
        // one wrapping multiplication by `scale * inverse`, exact by `FixedPoint`'s bound as the
        // product is below 2 size^2. Distinct steps are at least 2^64 / size > 2^43 apart there
        // and the error is below 2^42, so with the index in the low 32 bits one comparison finds
        // the nearest (there are no ties).
        let factor = scale.scale.wrapping_mul(u64::from(walker.inverse));
        let candidate = |index: usize, slot: u32| {
            (u64::from(slot) + base).wrapping_mul(factor) & !0xffff_ffff | index as u64
        };
        // Four running minima: one is a chain of compare-and-move, two cycles per free slot.
        let mut nearest = [u64::MAX; 4];
        let chunks = self.free.chunks_exact(4);
        let rest = chunks.remainder();
        for (chunk_index, chunk) in chunks.enumerate() {
            for (lane, &slot) in chunk.iter().enumerate() {
                nearest[lane] = nearest[lane].min(candidate(chunk_index * 4 + lane, slot));
            }
        }
        let done = self.free.len() - rest.len();
        for (offset, &slot) in rest.iter().enumerate() {
            nearest[0] = nearest[0].min(candidate(done + offset, slot));
        }
        let nearest = nearest[0].min(nearest[1]).min(nearest[2].min(nearest[3]));
        let slot = self.free.swap_remove((nearest & 0xffff_ffff) as usize);
        walker.at = scale.of(slot).wrapping_add(walker.step);
        self.slots[slot as usize] = walker.member;
    }
}

/// The indices of the empty slots, in increasing order.
fn free_slots(slots: &[u16]) -> Vec<u32> {
    // Few slots are free: test 16 at a time with one branch (the test vectorises).
    const CHUNK: usize = 16;
    let mut free = Vec::new();
    for (chunk_index, chunk) in slots.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(false, |any, &s| any | (s == EMPTY)) {
            let first = (chunk_index * CHUNK) as u32;
            free.extend((first..).zip(chunk).filter(|&(_, &s)| s == EMPTY).map(|(slot, _)| slot));
        }
    }
    free
}

/// `a^-1 mod p` for prime `p < 2^31` and `0 < a < p`, by the extended Euclidean algorithm (in
/// 32 bits: the Bezout coefficients stay below `p` in magnitude, and 32-bit division is the
/// faster one).
fn inverse_mod_prime(a: u32, p: u32) -> u32 {
    let (mut r0, mut r1) = (p, a);
    let (mut t0, mut t1) = (0i32, 1i32);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q as i32 * t1);
    }
    if t0 < 0 {
        (t0 + p as i32) as u32
    } else {
        t0 as u32
    }
}

/// Deterministic trial division; table sizes are at most ~2^20, so this is microseconds.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// 198.18.0.0/15 has 2^17 addresses; `host` picks one.
    fn v4_key(host: u32, port: Option<u16>) -> BackendKey {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (host & 0x1_ffff));
        BackendKey::new(IpAddr::V4(addr), port)
    }

    fn v6_key(host: u64, port: Option<u16>) -> BackendKey {
        let addr = Ipv6Addr::from((0xfd00u128 << 112) | u128::from(host));
        BackendKey::new(IpAddr::V6(addr), port)
    }

    fn equal_members(n: usize) -> Vec<MaglevMember> {
        (0..n).map(|i| MaglevMember { key: v4_key(i as u32 + 1, None), weight: 1 }).collect()
    }

    /// The owner's key of every slot: what flows see, independent of member order.
    fn owners(table: &MaglevTable, members: &[MaglevMember]) -> Vec<BackendKey> {
        table.slots().iter().map(|&s| members[usize::from(s)].key).collect()
    }

    fn key_strategy() -> impl Strategy<Value = BackendKey> {
        prop_oneof![
            (0u32..1 << 17, any::<Option<u16>>()).prop_map(|(h, p)| v4_key(h, p)),
            (any::<u64>(), any::<Option<u16>>()).prop_map(|(h, p)| v6_key(h, p)),
        ]
    }

    /// Distinct members in random order with weights drawn from `weights`.
    fn members_strategy(
        count: std::ops::RangeInclusive<usize>,
        weights: std::ops::RangeInclusive<u32>,
    ) -> impl Strategy<Value = Vec<MaglevMember>> {
        prop::collection::btree_set(key_strategy(), count)
            .prop_flat_map(move |keys| {
                let n = keys.len();
                (Just(keys), prop::collection::vec(weights.clone(), n))
            })
            .prop_map(|(keys, weights)| {
                keys.into_iter().zip(weights).map(|(key, weight)| MaglevMember { key, weight }).collect()
            })
            .prop_shuffle()
    }

    fn size_strategy() -> impl Strategy<Value = u32> {
        prop::sample::select(vec![251u32, 509, 1021, 2039, 4099])
    }

    /// `None` if every member's slot count is within max(2, 1% of expected) of
    /// `size * weight / total weight`; otherwise a description of the first that is not.
    ///
    /// With `small_table`, a member may also have up to `1 + members * weight / total` slots more
    /// than expected: the credit rule rounds every member's share down (a member whose credit
    /// has not reached the largest weight when the table fills loses it) and the heaviest
    /// members, which take a turn every round, get what is left. That stays under 1% only when
    /// the table has at least 100 slots per member, as the paper recommends.
    fn disproportion(table: &MaglevTable, members: &[MaglevMember], small_table: bool) -> Option<String> {
        let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
        let weighted = members.iter().filter(|m| m.weight > 0).count() as f64;
        let counts = table.slot_counts();
        for (m, &count) in members.iter().zip(&counts) {
            let share = m.weight as f64 / total as f64;
            let expected = f64::from(table.size()) * share;
            let below = (expected * 0.01).max(2.0);
            let above = if small_table { below.max(1.0 + weighted * share) } else { below };
            let count = f64::from(count);
            if count < expected - below || count > expected + above {
                return Some(format!(
                    "{:?} weight {} has {count} slots, expected {expected:.2} -{below:.2}/+{above:.2}",
                    m.key, m.weight
                ));
            }
        }
        None
    }

    /// Slots whose owner changed between `before` and `after`, not counting slots `removed` had.
    fn moved_slots(before: &[BackendKey], after: &[BackendKey], removed: BackendKey) -> usize {
        before.iter().zip(after).filter(|(b, a)| **b != removed && a != b).count()
    }

    /// The build as first written (straightforward, unoptimised); the optimised build must give
    /// exactly the same slots.
    fn reference_build(members: &[MaglevMember], size: u32) -> Vec<u16> {
        struct State {
            member: u16,
            key: BackendKey,
            weight: u64,
            credit: u64,
            position: u64,
            skip: u64,
        }
        let size64 = u64::from(size);
        let mut states: Vec<State> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.weight > 0)
            .map(|(i, m)| State {
                member: i as u16,
                key: m.key,
                weight: u64::from(m.weight),
                credit: 0,
                position: xxh3_64_with_seed(&m.key.0, MAGLEV_OFFSET_SEED) % size64,
                skip: xxh3_64_with_seed(&m.key.0, MAGLEV_SKIP_SEED) % (size64 - 1) + 1,
            })
            .collect();
        states.sort_by_key(|s| s.key);
        if states.is_empty() {
            return Vec::new();
        }
        let max_weight = states.iter().map(|s| s.weight).max().unwrap();
        let mut slots = vec![None; size as usize];
        let mut filled = 0;
        while filled < size {
            for s in &mut states {
                s.credit += s.weight;
                if s.credit < max_weight || filled == size {
                    continue;
                }
                s.credit -= max_weight;
                while slots[s.position as usize].is_some() {
                    s.position = (s.position + s.skip) % size64;
                }
                slots[s.position as usize] = Some(s.member);
                s.position = (s.position + s.skip) % size64;
                filled += 1;
            }
        }
        slots.into_iter().map(Option::unwrap).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn same_slots_as_reference_build(
            members in members_strategy(1..=300, 0..=100),
            size in size_strategy(),
        ) {
            let table = MaglevTable::build(&members, size).unwrap();
            prop_assert_eq!(table.slots(), &reference_build(&members, size)[..]);
        }

        #[test]
        fn same_slots_as_reference_build_with_equal_weights(
            members in members_strategy(1..=300, 1..=1),
            size in size_strategy(),
        ) {
            let table = MaglevTable::build(&members, size).unwrap();
            prop_assert_eq!(table.slots(), &reference_build(&members, size)[..]);
        }

        #[test]
        fn slot_counts_follow_weights(
            members in members_strategy(1..=200, 1..=100),
            size in size_strategy(),
        ) {
            let table = MaglevTable::build(&members, size).unwrap();
            prop_assert_eq!(table.slot_counts().iter().sum::<u32>(), size);
            let problem = disproportion(&table, &members, true);
            prop_assert!(problem.is_none(), "{}", problem.unwrap_or_default());
        }

        #[test]
        fn equal_weights_differ_by_at_most_one_slot(
            members in members_strategy(1..=200, 1..=1),
            weight in 1u32..=1000,
            size in size_strategy(),
        ) {
            let members: Vec<_> = members.into_iter().map(|m| MaglevMember { weight, ..m }).collect();
            let counts = MaglevTable::build(&members, size).unwrap().slot_counts();
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{:?}", counts);
        }

        #[test]
        fn order_of_members_does_not_matter(
            members in members_strategy(1..=200, 0..=100),
            size in size_strategy(),
            rotation in any::<prop::sample::Index>(),
        ) {
            let mut reordered = members.clone();
            reordered.reverse();
            let mid = rotation.index(reordered.len());
            reordered.rotate_left(mid);
            let a = MaglevTable::build(&members, size).unwrap();
            let b = MaglevTable::build(&reordered, size).unwrap();
            prop_assert_eq!(a.fingerprint(), b.fingerprint());
            prop_assert_eq!(owners(&a, &members), owners(&b, &reordered));
        }

        #[test]
        fn zero_weight_is_the_same_as_absent(
            members in members_strategy(2..=200, 1..=100),
            size in size_strategy(),
            drained in any::<prop::sample::Index>(),
        ) {
            let drained = drained.index(members.len());
            let mut zeroed = members.clone();
            zeroed[drained].weight = 0;
            let mut absent = members.clone();
            absent.remove(drained);
            let a = MaglevTable::build(&zeroed, size).unwrap();
            let b = MaglevTable::build(&absent, size).unwrap();
            prop_assert_eq!(a.fingerprint(), b.fingerprint());
            prop_assert_eq!(owners(&a, &zeroed), owners(&b, &absent));
            prop_assert_eq!(a.slot_counts()[drained], 0);
        }

        #[test]
        fn adding_a_member_back_restores_the_table(
            members in members_strategy(2..=200, 1..=100),
            size in size_strategy(),
            removed in any::<prop::sample::Index>(),
        ) {
            let removed = removed.index(members.len());
            let full = MaglevTable::build(&members, size).unwrap();
            let mut fewer = members.clone();
            let back = fewer.remove(removed);
            let without = MaglevTable::build(&fewer, size).unwrap();
            // A light member among heavy ones in a small table may own no slot at all.
            if full.slot_counts()[removed] > 0 {
                prop_assert_ne!(without.fingerprint(), full.fingerprint());
            }
            // Added back at the end rather than where it was: position must not matter either.
            fewer.push(back);
            let restored = MaglevTable::build(&fewer, size).unwrap();
            prop_assert_eq!(restored.fingerprint(), full.fingerprint());
            prop_assert_eq!(owners(&restored, &fewer), owners(&full, &members));
        }
    }

    proptest! {
        // The production table size: each case builds a few 65537-slot tables, so few cases.
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn slot_counts_follow_weights_at_default_size(members in members_strategy(1..=200, 1..=100)) {
            let table = MaglevTable::build(&members, DEFAULT_TABLE_SIZE).unwrap();
            let problem = disproportion(&table, &members, false);
            prop_assert!(problem.is_none(), "{}", problem.unwrap_or_default());
        }

        #[test]
        fn removal_respreads_and_moves_few_other_slots(
            members in members_strategy(2..=200, 1..=100),
            removed in any::<prop::sample::Index>(),
        ) {
            let removed = removed.index(members.len());
            let before = MaglevTable::build(&members, DEFAULT_TABLE_SIZE).unwrap();
            let mut fewer = members.clone();
            let gone = fewer.remove(removed);
            let after = MaglevTable::build(&fewer, DEFAULT_TABLE_SIZE).unwrap();
            let problem = disproportion(&after, &fewer, false);
            prop_assert!(problem.is_none(), "after removing {:?}: {}", gone.key, problem.unwrap_or_default());
            let moved = moved_slots(&owners(&before, &members), &owners(&after, &fewer), gone.key);
            // 2%, not the 1% that equal weights keep to (the paper's algorithm itself reaches
            // 1.0% with ~400 equal members at this size; see
            // `removal_movement_with_equal_weights`). With unequal weights (1-100) and up to 200
            // members, 6 000 random cases (stop 26) moved 0.55% at the median, 0.92% at the 99th
            // percentile and 1.23% at most, but proptest found a case of 144 members that moves
            // 1.53% (1006 slots; kept in proptest-regressions/maglev.txt), over the 1.5% this
            // bound was first set to.
            prop_assert!(
                moved * 100 <= DEFAULT_TABLE_SIZE as usize * 2,
                "removing {:?} moved {moved} other slots", gone.key
            );
        }
    }

    /// The figure the paper reports (figure 12): share of the table that changes owner beyond the
    /// removed member's own slots. Printed so that `cargo test -- --nocapture` shows it.
    #[test]
    fn removal_movement_with_equal_weights() {
        for n in [10usize, 100, 1000] {
            let members = equal_members(n);
            let before = MaglevTable::build(&members, DEFAULT_TABLE_SIZE).unwrap();
            let before_owners = owners(&before, &members);
            let mut worst = 0;
            let mut total = 0;
            // Remove a few different members: the first, one in the middle, the last.
            let picks = [0, n / 2, n - 1];
            for &removed in &picks {
                let mut fewer = members.clone();
                let gone = fewer.remove(removed);
                let after = MaglevTable::build(&fewer, DEFAULT_TABLE_SIZE).unwrap();
                let after_owners = owners(&after, &fewer);
                let moved = moved_slots(&before_owners, &after_owners, gone.key);
                // Its slots are spread evenly: every survivor ends with the same count (+-1)...
                let counts = after.slot_counts();
                assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
                // ...so each gained the same share of the freed slots (net of slots that moved
                // between survivors).
                let freed = before.slot_counts()[removed];
                let old_counts: Vec<u32> = before
                    .slot_counts()
                    .into_iter()
                    .enumerate()
                    .filter(|&(i, _)| i != removed)
                    .map(|(_, c)| c)
                    .collect();
                let share = f64::from(freed) / (n - 1) as f64;
                for (survivor, (&new, &old)) in counts.iter().zip(&old_counts).enumerate() {
                    let gained = f64::from(new) - f64::from(old);
                    assert!(
                        (gained - share).abs() <= 2.0,
                        "n={n}: survivor {survivor} gained {gained}, share {share}"
                    );
                }
                assert!(moved * 100 <= DEFAULT_TABLE_SIZE as usize, "n={n}: moved {moved}");
                worst = worst.max(moved);
                total += moved;
            }
            println!(
                "maglev removal, {n} equal members, M={DEFAULT_TABLE_SIZE}: other slots moved \
                 mean {:.3}% worst {:.3}%",
                100.0 * total as f64 / (picks.len() as f64 * f64::from(DEFAULT_TABLE_SIZE)),
                100.0 * worst as f64 / f64::from(DEFAULT_TABLE_SIZE),
            );
        }
    }

    /// `n` members at `size` build the reference table, with equal weights and then with
    /// `weights` repeated over them.
    fn assert_same_slots_as_reference(n: usize, size: u32, weights: &[u32]) {
        let mut members = equal_members(n);
        let table = MaglevTable::build(&members, size).unwrap();
        assert_eq!(table.slots(), &reference_build(&members, size)[..], "{n} equal members at {size}");
        for (m, &w) in members.iter_mut().zip(weights.iter().cycle()) {
            m.weight = w;
        }
        let table = MaglevTable::build(&members, size).unwrap();
        assert_eq!(table.slots(), &reference_build(&members, size)[..], "{n} weighted members at {size}");
    }

    /// The production size with many members, equal and unequal weights, both build paths.
    #[test]
    fn same_slots_as_reference_build_at_default_size() {
        assert_same_slots_as_reference(1000, DEFAULT_TABLE_SIZE, &[1, 1000, 7, 0, 250]);
    }

    /// The largest size, where `FixedPoint`'s margin is smallest, against the reference build.
    #[test]
    fn same_slots_as_reference_build_at_largest_size() {
        assert_same_slots_as_reference(20, MAX_TABLE_SIZE, &[3, 1, 0, 8]);
    }

    /// A whole walk (every slot once) in fixed point reads back the slots modular arithmetic gives.
    #[test]
    fn fixed_point_walks_are_exact() {
        for size in [MIN_TABLE_SIZE, 4099, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE] {
            let scale = FixedPoint::new(size);
            for (offset, skip) in [(0, 1), (size - 1, size - 1), (size / 2, size / 3), (1, size - 2)] {
                let step = scale.of(skip);
                let mut at = scale.of(offset);
                let mut slot = u64::from(offset);
                for _ in 0..size {
                    assert_eq!(scale.slot(at) as u64, slot, "size {size} offset {offset} skip {skip}");
                    at = at.wrapping_add(step);
                    slot = (slot + u64::from(skip)) % u64::from(size);
                }
                assert_eq!(scale.slot(step), skip as usize);
            }
        }
    }

    /// `Modulus::rem` agrees with `%` for the divisors builds use and for extreme dividends.
    #[test]
    fn remainders_by_multiplication_are_exact() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for divisor in [
            MIN_TABLE_SIZE - 1,
            MIN_TABLE_SIZE,
            65536,
            DEFAULT_TABLE_SIZE,
            MAX_TABLE_SIZE - 1,
            MAX_TABLE_SIZE,
        ] {
            let divisor = u64::from(divisor);
            let modulus = Modulus::new(divisor);
            let edges = [
                0,
                1,
                divisor - 1,
                divisor,
                divisor + 1,
                u64::MAX,
                u64::MAX - 1,
                u64::MAX / divisor * divisor,
            ];
            for &x in &edges {
                assert_eq!(modulus.rem(x), x % divisor, "{x} mod {divisor}");
            }
            for _ in 0..100_000 {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let y = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
                assert_eq!(modulus.rem(y), y % divisor, "{y} mod {divisor}");
            }
        }
    }

    #[test]
    fn builds_are_deterministic() {
        let members = equal_members(100);
        let a = MaglevTable::build(&members, 4099).unwrap();
        let b = MaglevTable::build(&members, 4099).unwrap();
        assert_eq!(a.slots(), b.slots());
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    /// Pins the whole population (hashing, turn order, weights, fingerprint encoding). If this
    /// fails, boxes running different versions send flows to different backends: that is a
    /// breaking change, not a test to update.
    #[test]
    fn golden_tables() {
        struct Golden {
            description: &'static str,
            members: Vec<MaglevMember>,
            size: u32,
            fingerprint: u64,
            /// (slot, index of its member in `members`)
            slots: &'static [(usize, u16)],
        }
        let mixed = vec![
            MaglevMember { key: v4_key(10, Some(80)), weight: 3 },
            MaglevMember { key: v6_key(0x10, Some(80)), weight: 1 },
            MaglevMember { key: v4_key(11, Some(8080)), weight: 2 },
            MaglevMember { key: v6_key(0x11, Some(443)), weight: 5 },
            MaglevMember { key: v4_key(12, None), weight: 0 },
            MaglevMember { key: v6_key(0x1_0000_0000, None), weight: 4 },
        ];
        let cases = [
            Golden {
                description: "3 members, equal weights, 251 slots",
                members: equal_members(3),
                size: 251,
                fingerprint: 0xf191_dfef_b667_e550,
                slots: &[(0, 0), (1, 2), (2, 0), (3, 0), (4, 2), (125, 0), (250, 2)],
            },
            Golden {
                description: "10 members, weights 1..=10, 65537 slots",
                members: (1..=10u32).map(|i| MaglevMember { key: v4_key(i, Some(443)), weight: i }).collect(),
                size: DEFAULT_TABLE_SIZE,
                fingerprint: 0xd0af_7483_582f_78b6,
                slots: &[(0, 1), (1, 9), (2, 3), (3, 9), (4, 7), (32768, 5), (65536, 9)],
            },
            Golden {
                description: "mixed IPv4/IPv6 with ports, one drained, 4099 slots",
                members: mixed,
                size: 4099,
                fingerprint: 0xc600_059c_8ffe_f9fd,
                slots: &[(0, 5), (1, 5), (2, 1), (3, 2), (4, 0), (2049, 5), (4098, 5)],
            },
        ];
        let mut changed = Vec::new();
        for case in &cases {
            let table = MaglevTable::build(&case.members, case.size).unwrap();
            let actual: Vec<(usize, u16)> =
                case.slots.iter().map(|&(slot, _)| (slot, table.slots()[slot])).collect();
            if table.fingerprint() != case.fingerprint || actual != case.slots {
                changed.push(format!(
                    "{}: fingerprint {:#018x} slots {actual:?}",
                    case.description,
                    table.fingerprint()
                ));
            }
            assert_eq!(table.fingerprint_hex(), format!("{:016x}", table.fingerprint()));
        }
        assert!(changed.is_empty(), "Maglev population changed:\n{}", changed.join("\n"));
    }

    #[test]
    fn lookup_reads_the_reduced_slot() {
        let members = equal_members(7);
        let table = MaglevTable::build(&members, 251).unwrap();
        for hash in [0u64, 1, 0xffff_ffff, u64::MAX, 0x1234_5678_9abc_def0] {
            let slot = reduce(hash, 251) as usize;
            assert_eq!(table.lookup(hash), Some(table.slots()[slot]));
        }
    }

    #[test]
    fn rejects_bad_sizes_and_duplicates() {
        let one = equal_members(1);
        assert_eq!(MaglevTable::build(&one, 65536).unwrap_err(), MaglevError::BadSize(65536));
        assert_eq!(MaglevTable::build(&one, 7).unwrap_err(), MaglevError::BadSize(7));
        assert_eq!(MaglevTable::build(&one, 1_048_583).unwrap_err(), MaglevError::BadSize(1_048_583));
        let mut two = equal_members(2);
        two[1].key = two[0].key;
        assert_eq!(MaglevTable::build(&two, 251).unwrap_err(), MaglevError::DuplicateMember(two[0].key));
        // A duplicate is an error even when one copy is drained.
        two[1].weight = 0;
        assert_eq!(MaglevTable::build(&two, 251).unwrap_err(), MaglevError::DuplicateMember(two[0].key));
        let too_many = vec![MaglevMember { key: one[0].key, weight: 1 }; MAX_MEMBERS + 1];
        assert_eq!(
            MaglevTable::build(&too_many, 251).unwrap_err(),
            MaglevError::TooManyMembers(MAX_MEMBERS + 1)
        );
    }

    #[test]
    fn no_weight_means_no_slot() {
        let mut members = equal_members(3);
        for m in &mut members {
            m.weight = 0;
        }
        let table = MaglevTable::build(&members, 251).unwrap();
        assert!(table.is_empty());
        assert_eq!(table.lookup(12345), None);
        assert_eq!(table.slot_counts(), vec![0, 0, 0]);
        assert_eq!(table.fingerprint(), 0);
        assert!(MaglevTable::build(&[], 251).unwrap().is_empty());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(655373) && is_prime(251) && is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65535) && !is_prime(1) && !is_prime(0) && !is_prime(9));
        assert!(is_prime(2) && is_prime(3) && !is_prime(4));
    }
}
