//! Node ids and the XOR metric.
//!
//! # Design
//! A [`NodeId`] is 32 bytes. In open mode identities are Ed25519 keys and the
//! node id **is** the public key: no hashing, so a peer's id is checked by
//! the handshake itself (a node cannot claim an id without its secret key).
//! Keys of any other length are refused by [`NodeId::from_public_key`]
//! (returns `None`); hashing such keys into an id would need a digest
//! dependency that shoal-engine does not have, and open mode only runs on
//! Ed25519 today.
//!
//! The distance between two ids is their XOR read as a 256-bit big-endian
//! unsigned integer; [`Distance`] derives `Ord` on its bytes, which is exactly
//! that numeric order.
//!
//! Bucket convention: the bucket of a distance `d != 0` is the index of its
//! highest set bit, counted from the least significant bit, i.e.
//! `255 - leading_zeros(d)`. Bucket 255 holds the half of the id space that
//! differs from us in the first bit (the farthest), bucket 0 the single id at
//! distance 1. Distance 0 (ourselves) has no bucket.

use std::fmt;

use rand::Rng;
use shoal_crypto::PublicKey;

/// Length of a node id in bytes.
pub const ID_LEN: usize = 32;
/// Length of a node id in bits, and the number of buckets.
pub const ID_BITS: usize = ID_LEN * 8;

/// A node's identifier: its Ed25519 public key bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; ID_LEN]);

impl NodeId {
    /// Wraps raw id bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The node id of a public key: the key bytes themselves when the key is
    /// 32 bytes long (Ed25519), `None` for any other length.
    pub fn from_public_key(key: &PublicKey) -> Option<Self> {
        <[u8; ID_LEN]>::try_from(key.as_bytes()).ok().map(Self)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; ID_LEN];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// A uniformly random id.
    #[cfg(test)]
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b[..]);
        Self(b)
    }

    /// A random id whose distance from `self` falls in `bucket` (its highest
    /// set bit is `bucket`): the target of a lookup that refreshes that
    /// bucket. `bucket` is clamped to `0..=255`.
    pub fn random_in_bucket<R: Rng + ?Sized>(&self, bucket: usize, rng: &mut R) -> Self {
        let bucket = bucket.min(ID_BITS - 1);
        let mut d = [0u8; ID_LEN];
        rng.fill(&mut d[..]);
        let top_byte = ID_LEN - 1 - bucket / 8;
        let bit = bucket % 8;
        for byte in d.iter_mut().take(top_byte) {
            *byte = 0;
        }
        // Keep bits below `bit` random, clear those above, set `bit`.
        let low_mask = ((1u16 << bit) - 1) as u8;
        d[top_byte] = (d[top_byte] & low_mask) | (1u8 << bit);
        let mut id = self.0;
        for (i, byte) in id.iter_mut().enumerate() {
            *byte ^= d[i];
        }
        Self(id)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeId(")?;
        write_hex(f, &self.0[..8])?;
        f.write_str("…)")
    }
}

impl fmt::Display for NodeId {
    /// First 8 bytes in hex; `{:#}` prints all 32.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write_hex(f, &self.0)
        } else {
            write_hex(f, &self.0[..8])?;
            f.write_str("…")
        }
    }
}

/// XOR distance between two ids; `Ord` is the numeric order of the 256-bit
/// big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

impl Distance {
    /// Distance zero (an id to itself).
    #[cfg(test)]
    pub const ZERO: Distance = Distance([0u8; ID_LEN]);

    /// Number of leading zero bits (256 for [`Distance::ZERO`]).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }

    /// Bucket index: `255 - leading_zeros`, `None` for distance zero.
    pub fn bucket_index(&self) -> Option<usize> {
        let lz = self.leading_zeros() as usize;
        (lz < ID_BITS).then(|| ID_BITS - 1 - lz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn id_with(last: u8, first: u8) -> NodeId {
        let mut b = [0u8; ID_LEN];
        b[0] = first;
        b[31] = last;
        NodeId(b)
    }

    #[test]
    fn distance_and_bucket_literals() {
        let zero = NodeId([0u8; 32]);
        assert_eq!(zero.distance(&zero), Distance::ZERO);
        assert_eq!(Distance::ZERO.bucket_index(), None);
        assert_eq!(Distance::ZERO.leading_zeros(), 256);

        // distance 1 -> bucket 0
        let one = id_with(1, 0);
        assert_eq!(zero.distance(&one).bucket_index(), Some(0));
        assert_eq!(zero.distance(&one).leading_zeros(), 255);
        // distance 0b11 -> bucket 1
        assert_eq!(zero.distance(&id_with(3, 0)).bucket_index(), Some(1));
        // distance 0x80 in the last byte -> bucket 7
        assert_eq!(zero.distance(&id_with(0x80, 0)).bucket_index(), Some(7));
        // top bit of the first byte -> bucket 255
        assert_eq!(zero.distance(&id_with(0, 0x80)).bucket_index(), Some(255));
        // 0x01 in the first byte -> bucket 248
        assert_eq!(
            zero.distance(&id_with(0xff, 0x01)).bucket_index(),
            Some(248)
        );

        // Symmetric, XOR of literal bytes.
        let a = id_with(0b1010, 0xf0);
        let b = id_with(0b0110, 0x0f);
        let d = a.distance(&b);
        assert_eq!(d, b.distance(&a));
        assert_eq!(d.0[0], 0xff);
        assert_eq!(d.0[31], 0b1100);
        assert_eq!(d.bucket_index(), Some(255));
    }

    #[test]
    fn distance_order_is_numeric() {
        let zero = NodeId([0u8; 32]);
        // 0x0100 (byte 30) is farther than 0x00ff (byte 31).
        let mut a = [0u8; 32];
        a[30] = 1;
        let mut b = [0u8; 32];
        b[31] = 0xff;
        assert!(zero.distance(&NodeId(a)) > zero.distance(&NodeId(b)));
        assert!(zero.distance(&id_with(2, 0)) > zero.distance(&id_with(1, 0)));
        assert!(zero.distance(&id_with(0, 1)) > zero.distance(&id_with(0xff, 0)));
    }

    #[test]
    fn from_public_key_requires_32_bytes() {
        let k = PublicKey::from_bytes_unchecked(vec![7u8; 32]);
        assert_eq!(NodeId::from_public_key(&k), Some(NodeId([7u8; 32])));
        let short = PublicKey::from_bytes_unchecked(vec![7u8; 31]);
        assert_eq!(NodeId::from_public_key(&short), None);
        let long = PublicKey::from_bytes_unchecked(vec![7u8; 33]);
        assert_eq!(NodeId::from_public_key(&long), None);
    }

    #[test]
    fn random_in_bucket_lands_in_bucket() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let me = NodeId::random(&mut rng);
            for bucket in 0..ID_BITS {
                let id = me.random_in_bucket(bucket, &mut rng);
                assert_eq!(me.distance(&id).bucket_index(), Some(bucket));
            }
        }
    }
}
