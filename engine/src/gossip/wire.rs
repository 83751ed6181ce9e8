//! Gossip frames: the bytes one gossip node sends another on a channel.
//!
//! # Design
//! One frame per channel message; the first byte says what it is. Integers
//! are big-endian. An id is `key_len u8 ‖ origin key ‖ seq u64`.
//!
//! ```text
//! Data   0x01 ‖ id ‖ hops u8 ‖ sig_len u8 ‖ signature ‖ payload (rest of the frame)
//! IHave  0x02 ‖ count u16 ‖ count × (id ‖ hops u8)
//! Graft  0x03 ‖ count u16 ‖ count × id
//! IWant  0x04 ‖ count u16 ‖ count × id
//! Prune  0x05 ‖ key_len u8 ‖ origin key
//! ```
//!
//! [`Frame::parse`] checks every length against the bytes present and
//! against its limits before it allocates; any inconsistency is a
//! [`ParseError`], never a panic. Payload and signature are slices of the
//! received buffer (no copy).

use bytes::{BufMut, Bytes, BytesMut};
use shoal_crypto::PublicKey;

/// Longest origin key a frame may carry (ed25519 keys are 32 bytes).
pub const MAX_KEY_LEN: usize = 64;

const DATA: u8 = 0x01;
const IHAVE: u8 = 0x02;
const GRAFT: u8 = 0x03;
const IWANT: u8 = 0x04;
const PRUNE: u8 = 0x05;

/// A gossip message's id: its origin's key and the origin's sequence
/// number (the origin's clock in microseconds, strictly increasing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// The key of the node that published (and signed) the message.
    pub origin: PublicKey,
    /// The origin's sequence number.
    pub seq: u64,
}

/// A full message as relayed: signed by its origin, with the relay count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFrame {
    /// Origin and sequence (covered by the signature: see `super::auth`).
    pub id: MessageId,
    /// Relays so far (0 when sent by the origin); not signed.
    pub hops: u8,
    /// The origin's signature.
    pub signature: Bytes,
    /// The application's message.
    pub payload: Bytes,
}

/// One gossip frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A full message (eager push, or an answer to a graft or a pull).
    Data(DataFrame),
    /// Ids the sender has, each with its hop count (lazy push).
    IHave(Vec<(MessageId, u8)>),
    /// "Make our link eager, and send me these."
    Graft(Vec<MessageId>),
    /// "Send me these" (a pull; the link stays as it is).
    IWant(Vec<MessageId>),
    /// "Make our link lazy for this origin's messages."
    Prune(PublicKey),
}

/// Why bytes are not a gossip frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No bytes at all.
    #[error("empty frame")]
    Empty,
    /// The first byte names no frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A field runs past the end of the frame.
    #[error("truncated frame")]
    Truncated,
    /// An origin key of length 0 or above [`MAX_KEY_LEN`].
    #[error("origin key length {0} out of range")]
    KeyLength(u8),
    /// A zero-length signature.
    #[error("empty signature")]
    EmptySignature,
    /// More ids than the receiver takes in one frame.
    #[error("{count} ids in one frame, at most {max} taken")]
    TooManyIds {
        /// Ids the frame announces.
        count: u16,
        /// The receiver's limit.
        max: usize,
    },
    /// Bytes after the last field of a control frame.
    #[error("trailing bytes")]
    Trailing,
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, ParseError> {
        let end = self.pos.checked_add(n).ok_or(ParseError::Truncated)?;
        if end > self.buf.len() {
            return Err(ParseError::Truncated);
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        let b = self
            .buf
            .get(self.pos)
            .copied()
            .ok_or(ParseError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    fn key(&mut self) -> Result<PublicKey, ParseError> {
        let len = self.u8()?;
        if len == 0 || usize::from(len) > MAX_KEY_LEN {
            return Err(ParseError::KeyLength(len));
        }
        Ok(PublicKey::from_bytes_unchecked(
            self.take(usize::from(len))?,
        ))
    }

    fn id(&mut self) -> Result<MessageId, ParseError> {
        let origin = self.key()?;
        let seq = self.u64()?;
        Ok(MessageId { origin, seq })
    }

    fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    fn count(&mut self, max_ids: usize) -> Result<usize, ParseError> {
        let count = self.u16()?;
        if usize::from(count) > max_ids {
            return Err(ParseError::TooManyIds {
                count,
                max: max_ids,
            });
        }
        Ok(usize::from(count))
    }

    fn end(&self) -> Result<(), ParseError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(ParseError::Trailing)
        }
    }
}

fn put_key(out: &mut BytesMut, key: &PublicKey) {
    // Keys come from our own scheme or from a parsed frame: at most
    // MAX_KEY_LEN bytes (a longer one is cut, and fails verification).
    let key = key.as_bytes();
    let n = key.len().min(MAX_KEY_LEN);
    out.put_u8(n as u8);
    out.put_slice(&key[..n]);
}

fn put_id(out: &mut BytesMut, id: &MessageId) {
    put_key(out, &id.origin);
    out.put_u64(id.seq);
}

fn id_len(id: &MessageId) -> usize {
    1 + id.origin.as_bytes().len().min(MAX_KEY_LEN) + 8
}

impl Frame {
    /// Parses one frame, taking at most `max_ids` ids from a control frame.
    pub fn parse(buf: &Bytes, max_ids: usize) -> Result<Frame, ParseError> {
        let mut r = Reader { buf, pos: 0 };
        let kind = r.u8().map_err(|_| ParseError::Empty)?;
        match kind {
            DATA => {
                let id = r.id()?;
                let hops = r.u8()?;
                let sig_len = r.u8()?;
                if sig_len == 0 {
                    return Err(ParseError::EmptySignature);
                }
                let signature = r.take(usize::from(sig_len))?;
                let payload = r.rest();
                Ok(Frame::Data(DataFrame {
                    id,
                    hops,
                    signature,
                    payload,
                }))
            }
            IHAVE => {
                let n = r.count(max_ids)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    ids.push((id, r.u8()?));
                }
                r.end()?;
                Ok(Frame::IHave(ids))
            }
            GRAFT | IWANT => {
                let n = r.count(max_ids)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.id()?);
                }
                r.end()?;
                Ok(if kind == GRAFT {
                    Frame::Graft(ids)
                } else {
                    Frame::IWant(ids)
                })
            }
            PRUNE => {
                let origin = r.key()?;
                r.end()?;
                Ok(Frame::Prune(origin))
            }
            other => Err(ParseError::UnknownKind(other)),
        }
    }

    /// The encoded frame. Id lists longer than `u16::MAX` and signatures
    /// longer than 255 bytes are truncated (the core never builds them).
    pub fn emit(&self) -> Bytes {
        match self {
            Frame::Data(d) => {
                let sig = &d.signature[..d.signature.len().min(255)];
                let mut out =
                    BytesMut::with_capacity(1 + id_len(&d.id) + 2 + sig.len() + d.payload.len());
                out.put_u8(DATA);
                put_id(&mut out, &d.id);
                out.put_u8(d.hops);
                out.put_u8(sig.len() as u8);
                out.put_slice(sig);
                out.put_slice(&d.payload);
                out.freeze()
            }
            Frame::IHave(ids) => {
                let ids = &ids[..ids.len().min(usize::from(u16::MAX))];
                let len: usize = ids.iter().map(|(id, _)| id_len(id) + 1).sum();
                let mut out = BytesMut::with_capacity(3 + len);
                out.put_u8(IHAVE);
                out.put_u16(ids.len() as u16);
                for (id, hops) in ids {
                    put_id(&mut out, id);
                    out.put_u8(*hops);
                }
                out.freeze()
            }
            Frame::Graft(ids) | Frame::IWant(ids) => {
                let ids = &ids[..ids.len().min(usize::from(u16::MAX))];
                let len: usize = ids.iter().map(id_len).sum();
                let mut out = BytesMut::with_capacity(3 + len);
                out.put_u8(if matches!(self, Frame::Graft(_)) {
                    GRAFT
                } else {
                    IWANT
                });
                out.put_u16(ids.len() as u16);
                for id in ids {
                    put_id(&mut out, id);
                }
                out.freeze()
            }
            Frame::Prune(origin) => {
                let mut out = BytesMut::with_capacity(2 + MAX_KEY_LEN);
                out.put_u8(PRUNE);
                put_key(&mut out, origin);
                out.freeze()
            }
        }
    }

    /// The encoded length of one IHAVE entry for `id` (for batching).
    pub(crate) fn ihave_entry_len(id: &MessageId) -> usize {
        id_len(id) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: u8, seq: u64) -> MessageId {
        MessageId {
            origin: PublicKey::from_bytes_unchecked(vec![k; 2]),
            seq,
        }
    }

    #[test]
    fn data_fixture() {
        let f = Frame::Data(DataFrame {
            id: id(0xaa, 0x0102),
            hops: 3,
            signature: Bytes::from_static(&[9, 8]),
            payload: Bytes::from_static(b"hi"),
        });
        let bytes: &[u8] = &[
            0x01, 2, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 3, 2, 9, 8, b'h', b'i',
        ];
        assert_eq!(&f.emit()[..], bytes);
        assert_eq!(Frame::parse(&Bytes::from_static(bytes), 4), Ok(f));
    }

    #[test]
    fn control_fixtures() {
        let ihave: &[u8] = &[0x02, 0, 1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 5, 4];
        let f = Frame::IHave(vec![(
            MessageId {
                origin: PublicKey::from_bytes_unchecked(vec![7]),
                seq: 5,
            },
            4,
        )]);
        assert_eq!(&f.emit()[..], ihave);
        assert_eq!(Frame::parse(&Bytes::from_static(ihave), 4), Ok(f));

        let graft: &[u8] = &[0x03, 0, 1, 2, 0xbb, 0xbb, 0, 0, 0, 0, 0, 0, 0, 1];
        let f = Frame::Graft(vec![id(0xbb, 1)]);
        assert_eq!(&f.emit()[..], graft);
        assert_eq!(Frame::parse(&Bytes::from_static(graft), 4), Ok(f));

        let iwant: &[u8] = &[0x04, 0, 0];
        assert_eq!(&Frame::IWant(vec![]).emit()[..], iwant);
        assert_eq!(
            Frame::parse(&Bytes::from_static(iwant), 4),
            Ok(Frame::IWant(vec![]))
        );
        let prune = Frame::Prune(PublicKey::from_bytes_unchecked(vec![3, 4]));
        assert_eq!(&prune.emit()[..], &[0x05, 2, 3, 4]);
        assert_eq!(
            Frame::parse(&Bytes::from_static(&[0x05, 2, 3, 4]), 4),
            Ok(prune)
        );
    }

    #[test]
    fn hostile_bytes_are_typed_errors() {
        let p = |b: &'static [u8]| Frame::parse(&Bytes::from_static(b), 4);
        assert_eq!(p(&[]), Err(ParseError::Empty));
        assert_eq!(p(&[0x09]), Err(ParseError::UnknownKind(9)));
        assert_eq!(p(&[0x01, 0]), Err(ParseError::KeyLength(0)));
        assert_eq!(p(&[0x01, 65]), Err(ParseError::KeyLength(65)));
        assert_eq!(p(&[0x01, 2, 1]), Err(ParseError::Truncated));
        assert_eq!(
            p(&[0x01, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::EmptySignature)
        );
        assert_eq!(
            p(&[0x01, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1]),
            Err(ParseError::Truncated)
        );
        assert_eq!(
            p(&[0x02, 0xff, 0xff]),
            Err(ParseError::TooManyIds {
                count: 0xffff,
                max: 4
            })
        );
        assert_eq!(p(&[0x02, 0, 1]), Err(ParseError::Truncated));
        assert_eq!(p(&[0x04, 0, 0, 1]), Err(ParseError::Trailing));
        assert_eq!(p(&[0x05]), Err(ParseError::Truncated));
        assert_eq!(p(&[0x05, 0]), Err(ParseError::KeyLength(0)));
        assert_eq!(p(&[0x05, 1, 1, 0]), Err(ParseError::Trailing));
    }

    #[test]
    fn every_prefix_and_random_bytes_parse_without_panic() {
        use rand::{Rng, SeedableRng};
        let full = Frame::IHave(vec![(id(1, 2), 3), (id(4, 5), 6)]).emit();
        for n in 0..full.len() {
            assert!(Frame::parse(&full.slice(..n), 4).is_err(), "prefix {n}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if let Some(k) = b.first_mut() {
                *k = rng.gen_range(0..7);
            }
            let _ = Frame::parse(&Bytes::from(b), 8);
        }
    }
}
