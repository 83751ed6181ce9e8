//! Tracked peer sets and the bit-vector encoding.
//!
//! # Design
//!
//! A peer set is `(index, keys)`; keys are kept sorted (by their encoded
//! bytes, [`PublicKey`]'s `Ord`) and deduplicated, so position `i` means the
//! same key on every node that registered the same set. The last
//! `tracked_peer_sets` indexes (the highest ones) are kept; registering an
//! index again replaces its keys, and registering an index lower than every
//! tracked one when the window is full keeps nothing
//! ([`Registered::Outdated`]).
//!
//! # Bit order
//!
//! A set of `n` keys is described by `ceil(n / 8)` bytes. Bit `i` (for the
//! `i`-th sorted key) is the most significant bit first within each byte:
//!
//! ```text
//! bit i  =  bits[i / 8] & (0x80 >> (i % 8))
//! ```
//!
//! so key 0 is `0x80` of byte 0, key 7 is `0x01` of byte 0, key 8 is `0x80`
//! of byte 1. The `8 * ceil(n / 8) - n` padding bits after bit `n - 1` must
//! be zero. A set of exactly `8k` keys takes exactly `k` bytes (no extra
//! byte) and has no padding; an empty set takes zero bytes.

use std::collections::{BTreeMap, BTreeSet};

use shoal_crypto::PublicKey;

/// What [`register`](super::Discovery::register) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new index is tracked (possibly evicting the lowest one).
    Added,
    /// The index was already tracked; its keys were replaced.
    Replaced,
    /// The index is lower than every tracked index and the window is full:
    /// nothing changed.
    Outdated,
}

/// Why a received bit vector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitVecRejected {
    /// The index is not a tracked set (the sender may track other sets:
    /// this is expected around set changes, not proof of misbehavior).
    #[error("peer set {0} is not tracked")]
    UntrackedIndex(u64),
    /// `bits.len() != ceil(n / 8)` for the set's `n` keys.
    #[error("bit vector has {got} bytes, expected {expected}")]
    WrongLength {
        /// `ceil(n / 8)`.
        expected: usize,
        /// What was received.
        got: usize,
    },
    /// A padding bit after the last key is set.
    #[error("bit vector has nonzero padding bits")]
    NonzeroPadding,
}

/// `ceil(n / 8)`: the bytes describing a set of `n` keys.
pub const fn bit_vec_len(n: usize) -> usize {
    n.div_ceil(8)
}

/// Bit `i` of `bits` (MSB first); `false` past the end.
pub fn get_bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8)
        .is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
}

/// Encodes `n` bits, bit `i` set when `known(i)`.
pub fn encode_bits(n: usize, mut known: impl FnMut(usize) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; bit_vec_len(n)];
    for i in 0..n {
        if known(i) {
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 0x80 >> (i % 8);
            }
        }
    }
    bits
}

/// Checks that `bits` describes exactly `n` keys: right length, zero
/// padding.
pub fn check_bits(n: usize, bits: &[u8]) -> Result<(), BitVecRejected> {
    let expected = bit_vec_len(n);
    if bits.len() != expected {
        return Err(BitVecRejected::WrongLength {
            expected,
            got: bits.len(),
        });
    }
    let used = n % 8;
    if used != 0 {
        let padding_mask = 0xffu8 >> used;
        if bits.last().is_some_and(|last| last & padding_mask != 0) {
            return Err(BitVecRejected::NonzeroPadding);
        }
    }
    Ok(())
}

/// The tracked peer sets and the union of their keys.
#[derive(Debug)]
pub(crate) struct PeerSets {
    max: usize,
    sets: BTreeMap<u64, Vec<PublicKey>>,
    tracked: BTreeSet<PublicKey>,
}

impl PeerSets {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            sets: BTreeMap::new(),
            tracked: BTreeSet::new(),
        }
    }

    pub(crate) fn register(&mut self, index: u64, mut keys: Vec<PublicKey>) -> Registered {
        keys.sort();
        keys.dedup();
        let outcome = if let Some(slot) = self.sets.get_mut(&index) {
            *slot = keys;
            Registered::Replaced
        } else {
            let full = self.sets.len() >= self.max;
            if full
                && self
                    .sets
                    .keys()
                    .next()
                    .is_some_and(|&lowest| index < lowest)
            {
                return Registered::Outdated;
            }
            self.sets.insert(index, keys);
            while self.sets.len() > self.max {
                self.sets.pop_first();
            }
            Registered::Added
        };
        self.tracked = self.sets.values().flatten().cloned().collect();
        outcome
    }

    pub(crate) fn get(&self, index: u64) -> Option<&[PublicKey]> {
        self.sets.get(&index).map(Vec::as_slice)
    }

    pub(crate) fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        self.sets.keys().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.sets.len()
    }

    pub(crate) fn is_tracked(&self, key: &PublicKey) -> bool {
        self.tracked.contains(key)
    }

    pub(crate) fn tracked(&self) -> &BTreeSet<PublicKey> {
        &self.tracked
    }
}
