//! Routed unicast's frames on the wire: a checked parse and an emit.
//!
//! The first byte says what a frame is: [`VERSION`] (1) an [`Envelope`],
//! [`NEIGHBOURS`] (2) the sender's neighbour list (`u16` count, then each
//! key as `u8` length and bytes).
//!
//! An envelope's layout (integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, [`VERSION`] |
//! | 1 | hops left (decremented by each relay; not signed) |
//! | 2 | zero |
//! | 8 | seq: the origin's clock in µs (with the origin, the message id) |
//! | 4 | channel |
//! | 1 + n | origin key (n ≤ [`MAX_KEY_LEN`]) |
//! | 1 + n | target key (n ≤ [`MAX_KEY_LEN`]) |
//! | 4 + n | the payload sealed to the target |
//! | 2 + n | the origin's signature (n ≤ [`MAX_SIGNATURE_LEN`]) |
//!
//! Nothing may follow the signature. Parsing bounds every length by the
//! buffer (and the sealed payload by the caller's limit) before it slices,
//! so no input can make it panic or allocate beyond its own size.

use bytes::{BufMut, Bytes, BytesMut};
use shoal_crypto::PublicKey;

use crate::gossip::MessageId;

/// The envelope version this code reads and writes (its first byte).
pub const VERSION: u8 = 1;
/// The first byte of a neighbour list.
pub const NEIGHBOURS: u8 = 2;
/// The longest key accepted (ed25519 keys are 32 bytes).
pub const MAX_KEY_LEN: usize = 64;
/// The longest signature accepted (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE_LEN: usize = 128;
/// Bytes of an envelope besides its keys, sealed payload and signature.
pub const FIXED_LEN: usize = 1 + 1 + 2 + 8 + 4 + 1 + 1 + 4 + 2;

/// A routed message as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Origin and sequence (signed).
    pub id: MessageId,
    /// Relays it may still take.
    pub hops_left: u8,
    /// The application channel at the target (signed).
    pub channel: u32,
    /// Whom it is for (signed).
    pub target: PublicKey,
    /// The payload, sealed to `target` (signed).
    pub sealed: Bytes,
    /// The origin's signature over [`Envelope::signed_bytes`].
    pub signature: Bytes,
}

/// One frame of the route channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A routed message.
    Envelope(Envelope),
    /// The sender's neighbours, whole (it replaces the previous list).
    Neighbours(Vec<PublicKey>),
}

impl Frame {
    /// Parses `buf`: an envelope's sealed payload at most `max_sealed`
    /// bytes, a neighbour list at most `max_neighbours` keys.
    pub fn parse(
        buf: &Bytes,
        max_sealed: usize,
        max_neighbours: usize,
    ) -> Result<Frame, ParseError> {
        match buf.first() {
            Some(&NEIGHBOURS) => {
                let mut r = Reader { buf: &buf[1..] };
                let n = usize::from(u16::from_be_bytes(r.array()?));
                if n > max_neighbours {
                    return Err(ParseError::TooMany(n));
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.key()?);
                }
                if !r.buf.is_empty() {
                    return Err(ParseError::Trailing);
                }
                Ok(Frame::Neighbours(keys))
            }
            _ => Envelope::parse(buf, max_sealed).map(Frame::Envelope),
        }
    }

    /// Encodes a neighbour list (at most `u16::MAX` keys are written).
    pub fn emit_neighbours<'a>(keys: impl ExactSizeIterator<Item = &'a PublicKey>) -> Bytes {
        let n = keys.len().min(usize::from(u16::MAX));
        let mut out = BytesMut::with_capacity(3 + n * 33);
        out.put_u8(NEIGHBOURS);
        out.put_u16(n as u16);
        for k in keys.take(n) {
            put_key(&mut out, k);
        }
        out.freeze()
    }
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its fields say.
    #[error("truncated envelope")]
    Truncated,
    /// Another version.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// The reserved bytes are not zero.
    #[error("reserved bytes set")]
    Reserved,
    /// A key or signature length out of range.
    #[error("bad key or signature length")]
    Length,
    /// The sealed payload is longer than allowed.
    #[error("sealed payload of {0} bytes is too large")]
    TooLarge(usize),
    /// A neighbour list longer than allowed.
    #[error("neighbour list of {0} keys is too long")]
    TooMany(usize),
    /// Bytes after the last field.
    #[error("trailing bytes")]
    Trailing,
}

/// A cursor that never reads past its buffer.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn key(&mut self) -> Result<PublicKey, ParseError> {
        let [n] = self.array::<1>()?;
        let n = usize::from(n);
        if n == 0 || n > MAX_KEY_LEN {
            return Err(ParseError::Length);
        }
        Ok(PublicKey::from_bytes_unchecked(Bytes::copy_from_slice(
            self.take(n)?,
        )))
    }
}

impl Envelope {
    /// Parses `buf`, refusing a sealed payload longer than `max_sealed`.
    pub fn parse(buf: &Bytes, max_sealed: usize) -> Result<Envelope, ParseError> {
        let mut r = Reader { buf };
        let [version, hops_left] = r.array::<2>()?;
        if version != VERSION {
            return Err(ParseError::Version(version));
        }
        if r.array::<2>()? != [0, 0] {
            return Err(ParseError::Reserved);
        }
        let seq = u64::from_be_bytes(r.array()?);
        let channel = u32::from_be_bytes(r.array()?);
        let origin = r.key()?;
        let target = r.key()?;
        let sealed_len = u32::from_be_bytes(r.array()?) as usize;
        if sealed_len > max_sealed {
            return Err(ParseError::TooLarge(sealed_len));
        }
        let sealed = r.take(sealed_len)?;
        let sig_len = usize::from(u16::from_be_bytes(r.array()?));
        if sig_len == 0 || sig_len > MAX_SIGNATURE_LEN {
            return Err(ParseError::Length);
        }
        let signature = r.take(sig_len)?;
        if !r.buf.is_empty() {
            return Err(ParseError::Trailing);
        }
        Ok(Envelope {
            id: MessageId { origin, seq },
            hops_left,
            channel,
            target,
            sealed: buf.slice_ref(sealed),
            signature: buf.slice_ref(signature),
        })
    }

    /// The encoded length.
    pub fn len(&self) -> usize {
        FIXED_LEN
            + self.id.origin.as_bytes().len()
            + self.target.as_bytes().len()
            + self.sealed.len()
            + self.signature.len()
    }

    /// Encodes the envelope. Keys and signatures come from this node's
    /// scheme or from a parsed envelope, so their lengths are in range.
    pub fn emit(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.put_u8(VERSION);
        out.put_u8(self.hops_left);
        out.put_u16(0);
        out.put_u64(self.id.seq);
        out.put_u32(self.channel);
        put_key(&mut out, &self.id.origin);
        put_key(&mut out, &self.target);
        out.put_u32(self.sealed.len() as u32);
        out.put_slice(&self.sealed);
        out.put_u16(self.signature.len() as u16);
        out.put_slice(&self.signature);
        out.freeze()
    }

    /// What the origin signs: everything but the hop count.
    pub fn signed_bytes(seq: u64, channel: u32, target: &PublicKey, sealed: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 + 1 + target.as_bytes().len() + sealed.len());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&channel.to_be_bytes());
        out.push(target.as_bytes().len() as u8);
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(sealed);
        out
    }

    /// The associated data of the sealed payload: it binds the box to its
    /// origin, sequence and channel, so that nobody can re-sign a box they
    /// saw as their own.
    pub fn sealed_aad(id: &MessageId, channel: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + id.origin.as_bytes().len() + 12);
        out.extend_from_slice(b"shoal route v1");
        out.push(id.origin.as_bytes().len() as u8);
        out.extend_from_slice(id.origin.as_bytes());
        out.extend_from_slice(&id.seq.to_be_bytes());
        out.extend_from_slice(&channel.to_be_bytes());
        out
    }
}

fn put_key(out: &mut BytesMut, key: &PublicKey) {
    out.put_u8(key.as_bytes().len() as u8);
    out.put_slice(key.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: MessageId {
                origin: PublicKey::from_bytes_unchecked(vec![0xAA; 2]),
                seq: 0x0102_0304_0506_0708,
            },
            hops_left: 5,
            channel: 9,
            target: PublicKey::from_bytes_unchecked(vec![0xBB; 3]),
            sealed: Bytes::from_static(&[0xCC; 4]),
            signature: Bytes::from_static(&[0xDD; 2]),
        }
    }

    /// The sample's bytes, field by field.
    const SAMPLE: &[u8] = &[
        1, 5, 0, 0, // version, hops left, zero
        1, 2, 3, 4, 5, 6, 7, 8, // seq
        0, 0, 0, 9, // channel
        2, 0xAA, 0xAA, // origin
        3, 0xBB, 0xBB, 0xBB, // target
        0, 0, 0, 4, 0xCC, 0xCC, 0xCC, 0xCC, // sealed
        0, 2, 0xDD, 0xDD, // signature
    ];

    #[test]
    fn emit_matches_the_fixture_and_parse_inverts_it() {
        let e = sample();
        assert_eq!(&e.emit()[..], SAMPLE);
        assert_eq!(e.len(), SAMPLE.len());
        assert_eq!(Envelope::parse(&Bytes::from_static(SAMPLE), 1024), Ok(e));
    }

    #[test]
    fn a_neighbour_list_round_trips_and_is_bounded() {
        let keys = vec![
            PublicKey::from_bytes_unchecked(vec![1; 32]),
            PublicKey::from_bytes_unchecked(vec![2; 5]),
        ];
        let b = Frame::emit_neighbours(keys.iter());
        assert_eq!(&b[..4], &[NEIGHBOURS, 0, 2, 32]);
        assert_eq!(b.len(), 3 + 33 + 6);
        assert_eq!(Frame::parse(&b, 0, 2), Ok(Frame::Neighbours(keys)));
        assert_eq!(Frame::parse(&b, 0, 1), Err(ParseError::TooMany(2)));
        for n in 1..b.len() {
            assert!(Frame::parse(&b.slice(..n), 0, 2).is_err(), "prefix of {n}");
        }
        assert_eq!(
            Frame::parse(&Bytes::from_static(SAMPLE), 1024, 0),
            Ok(Frame::Envelope(sample()))
        );
    }

    #[test]
    fn mutated_frames_never_panic_and_what_parses_is_canonical() {
        let list = Frame::emit_neighbours([PublicKey::from_bytes_unchecked(vec![9; 32])].iter());
        let mut x: u64 = 1;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for seed in [SAMPLE, &list[..]] {
            for _ in 0..20_000 {
                let mut b = seed.to_vec();
                for _ in 0..1 + next() % 4 {
                    let i = next() % b.len();
                    b[i] = next() as u8;
                }
                b.truncate(b.len() - next() % 3);
                let b = Bytes::from(b);
                match Frame::parse(&b, 1024, 8) {
                    Ok(Frame::Envelope(e)) => assert_eq!(e.emit(), b),
                    Ok(Frame::Neighbours(keys)) => {
                        assert_eq!(Frame::emit_neighbours(keys.iter()), b)
                    }
                    Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn every_truncation_and_every_bad_field_is_refused() {
        for n in 0..SAMPLE.len() {
            let cut = Bytes::copy_from_slice(&SAMPLE[..n]);
            assert!(Envelope::parse(&cut, 1024).is_err(), "prefix of {n}");
        }
        let with = |i: usize, v: u8| {
            let mut b = SAMPLE.to_vec();
            b[i] = v;
            Envelope::parse(&Bytes::from(b), 1024)
        };
        assert_eq!(with(0, 2), Err(ParseError::Version(2)));
        assert_eq!(with(3, 1), Err(ParseError::Reserved));
        assert_eq!(with(16, 0), Err(ParseError::Length), "empty origin");
        assert_eq!(with(16, 65), Err(ParseError::Length), "origin too long");
        let mut long = SAMPLE.to_vec();
        long.push(0);
        assert_eq!(
            Envelope::parse(&Bytes::from(long), 1024),
            Err(ParseError::Trailing)
        );
        assert_eq!(
            Envelope::parse(&Bytes::from_static(SAMPLE), 3),
            Err(ParseError::TooLarge(4))
        );
        // A length far beyond the buffer is truncation, not an allocation.
        let mut huge = SAMPLE.to_vec();
        huge[23..27].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Envelope::parse(&Bytes::from(huge), usize::MAX),
            Err(ParseError::Truncated)
        );
    }
}
