//! Chunking: bounded reassembly of messages larger than one frame.
//!
//! # Design
//!
//! A message (after optional compression) larger than what fits in one frame
//! is split by the sender into `total_parts` consecutive chunks, each sent as a
//! `Data`-shaped record carrying the same header (`channel`, `message_id`,
//! `total_parts`, `total_len`, `compressed`, `request_id`) and its `part`
//! index. The parts of one message are sent in order (part 0, 1, ...), and TCP
//! keeps that order, but parts of *different* messages may interleave so that
//! a high-priority small message never waits behind a large one.
//!
//! [`ChunkAssembler`] is the per-connection receive side. A message with
//! `total_parts == 1` passes straight through without a copy (its payload
//! `Bytes`, a slice of the opened frame, is reused). A multi-part message is
//! accumulated in a buffer keyed by `message_id` until its last part arrives.
//! [`parts_for`] is the sender's splitting helper.
//!
//! # Security
//!
//! Reassembly is where a peer can make a receiver hold memory on its behalf,
//! so every rule below is checked before anything is stored:
//!
//! - `total_parts >= 1`, `part < total_parts`, `total_len <= max_size` (the
//!   channel's maximum message size).
//! - Single part: `payload.len() == total_len`.
//! - Multi part: every non-last part is at least `min_chunk_size` bytes, and
//!   `total_parts <= ceil(total_len / min_chunk_size)`, so the number of parts
//!   (and the per-part work) is bounded by the claimed length; the parts must
//!   sum exactly to `total_len`, checked incrementally (no overflow: every sum
//!   is compared against `total_len` before it is formed).
//! - Budget: a new multi-part message is refused ([`ChunkError::BudgetExhausted`])
//!   if the *claimed* `total_len` of everything in progress plus its own would
//!   exceed `max_in_progress_bytes`, or the count would exceed
//!   `max_in_progress_messages`. Accounting by claim rather than by arrival
//!   bounds memory before it is allocated.
//! - Allocation follows arrival: part 0 reserves at most
//!   `min(total_len, 2 × its length)` (what has arrived plus one chunk), and
//!   growth doubles but is capped at `total_len`, so a peer that claims 16 MiB
//!   and sends 1 KiB costs about 2 KiB.
//! - Ordering: a part 0 for an id in progress is a [`ChunkError::Duplicate`],
//!   a later part for an unknown id is [`ChunkError::UnknownMessage`], a part
//!   other than the next one is [`ChunkError::OutOfOrder`], and a later part
//!   whose header disagrees with part 0 is [`ChunkError::HeaderMismatch`].
//!
//! Every error is a protocol violation; the engine is expected to close the
//! connection. The assembler stays consistent anyway: the offending message
//! (if it was in progress) is dropped and its budget released.
//!
//! Not provided: no timeout for messages that never complete (the assembler
//! has no clock; the budget bounds what a stalled peer can pin, and the engine
//! can [`clear`](ChunkAssembler::clear) on idle), and no check of `status`
//! across parts (part 0's `status` is reported).

use std::collections::HashMap;

use bytes::Bytes;

use crate::message::{Data, RecordKind};

/// Resource bounds of one [`ChunkAssembler`] (one connection).
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Sum of the claimed `total_len` of all in-progress messages.
    pub max_in_progress_bytes: usize,
    /// Number of in-progress multi-part messages.
    pub max_in_progress_messages: usize,
    /// Minimum size of every part but the last of a multi-part message.
    pub min_chunk_size: usize,
}

impl Default for ChunkLimits {
    /// - `max_in_progress_bytes` = 16 MiB + 64 KiB: room for one message of
    ///   the default maximum size (16 MiB) plus a frame's worth of other
    ///   interleaved multi-part messages, so a maximal message never starves
    ///   everything else, while a connection pins at most ~16 MiB.
    /// - `max_in_progress_messages` = 8: a sender interleaves a handful of
    ///   channels / priorities at once; more concurrent partial messages only
    ///   add bookkeeping for an attacker to exploit.
    /// - `min_chunk_size` = 1024: senders chunk at nearly a full frame
    ///   (~64 KiB); the floor only stops a peer from splitting a message into
    ///   1-byte parts, bounding per-part overhead (a ~30–80 byte header plus a
    ///   map lookup) to a few percent and a 16 MiB message to 16 Ki parts.
    fn default() -> Self {
        Self {
            max_in_progress_bytes: 16 * 1024 * 1024 + 64 * 1024,
            max_in_progress_messages: 8,
            min_chunk_size: 1024,
        }
    }
}

/// Why a chunk was refused. Every variant is a protocol violation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// `total_parts` is zero.
    #[error("total_parts is zero")]
    ZeroParts,
    /// `part >= total_parts`.
    #[error("part {part} out of range for {total_parts} parts")]
    PartOutOfRange { part: u32, total_parts: u32 },
    /// `total_len` exceeds the channel's maximum message size.
    #[error("message of {total_len} bytes exceeds the maximum of {max}")]
    TooLarge { total_len: u64, max: usize },
    /// `total_parts` cannot be right for `total_len` given the minimum chunk size.
    #[error("total_parts inconsistent with total_len")]
    InconsistentTotal,
    /// Part 0 of a message id that is already in progress.
    #[error("message {message_id} is already in progress")]
    Duplicate { message_id: u64 },
    /// A part other than the next expected one.
    #[error("message {message_id}: expected part {expected}, got {got}")]
    OutOfOrder {
        message_id: u64,
        expected: u32,
        got: u32,
    },
    /// A non-zero part for a message id that is not in progress.
    #[error("part {part} of unknown message {message_id}")]
    UnknownMessage { message_id: u64, part: u32 },
    /// A non-last part smaller than the minimum chunk size.
    #[error("non-final chunk smaller than the minimum chunk size")]
    ChunkTooSmall,
    /// The parts do not add up to `total_len`.
    #[error("chunk lengths do not add up to total_len")]
    LengthMismatch,
    /// Accepting this message would exceed the in-progress byte or message budget.
    #[error("reassembly budget exhausted")]
    BudgetExhausted,
    /// A later part disagrees with part 0 on kind, channel, total_parts,
    /// total_len, compressed or request_id.
    #[error("chunk header disagrees with part 0")]
    HeaderMismatch,
    /// The record kind is not `Data`, `RpcRequest` or `RpcResponse`.
    #[error("record kind {0:?} does not carry data")]
    NotData(RecordKind),
}

/// A complete message.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    pub kind: RecordKind,
    pub channel: u32,
    pub message_id: u64,
    pub request_id: u64,
    pub status: u32,
    pub compressed: bool,
    pub payload: Bytes,
}

#[derive(Debug)]
struct Partial {
    kind: RecordKind,
    channel: u32,
    total_parts: u32,
    /// Claimed length, already checked `<= max_size` and counted in the budget.
    total_len: usize,
    compressed: bool,
    request_id: u64,
    status: u32,
    next_part: u32,
    buf: Vec<u8>,
}

/// Per-connection reassembly of chunked messages. See the [module docs](self).
#[derive(Debug)]
pub struct ChunkAssembler {
    limits: ChunkLimits,
    in_progress: HashMap<u64, Partial>,
    in_progress_bytes: usize,
    /// Bytes copied into reassembly buffers (parts, and what a regrowth
    /// moved), since [`ChunkAssembler::take_copied_bytes`].
    copied_bytes: u64,
}

impl ChunkAssembler {
    /// An empty assembler with these limits.
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            limits,
            in_progress: HashMap::new(),
            in_progress_bytes: 0,
            copied_bytes: 0,
        }
    }

    /// Bytes copied since the last call: each part of a multi-part message
    /// once, plus what a buffer regrowth moved. Single-part messages cost 0.
    pub fn take_copied_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.copied_bytes)
    }

    /// The limits this assembler enforces.
    pub fn limits(&self) -> ChunkLimits {
        self.limits
    }

    /// Accepts one `Data`-shaped record. `max_size` is the channel's maximum
    /// (wire) message size. Returns the message when this part completes it.
    /// Single-part messages pass straight through with no copy.
    pub fn push(
        &mut self,
        kind: RecordKind,
        data: Data,
        max_size: usize,
    ) -> Result<Option<Assembled>, ChunkError> {
        if !matches!(
            kind,
            RecordKind::Data | RecordKind::RpcRequest | RecordKind::RpcResponse
        ) {
            return Err(ChunkError::NotData(kind));
        }
        if data.total_parts == 0 {
            return Err(ChunkError::ZeroParts);
        }
        if data.part >= data.total_parts {
            return Err(ChunkError::PartOutOfRange {
                part: data.part,
                total_parts: data.total_parts,
            });
        }
        let total_len = match usize::try_from(data.total_len) {
            Ok(n) if n <= max_size => n,
            _ => {
                return Err(ChunkError::TooLarge {
                    total_len: data.total_len,
                    max: max_size,
                })
            }
        };
        if data.total_parts == 1 {
            if self.in_progress.contains_key(&data.message_id) {
                return Err(ChunkError::Duplicate {
                    message_id: data.message_id,
                });
            }
            if data.payload.len() != total_len {
                return Err(ChunkError::LengthMismatch);
            }
            return Ok(Some(Assembled {
                kind,
                channel: data.channel,
                message_id: data.message_id,
                request_id: data.request_id,
                status: data.status,
                compressed: data.compressed,
                payload: data.payload,
            }));
        }
        if data.part == 0 {
            self.start(kind, data, total_len)
        } else {
            self.resume(kind, data)
        }
    }

    fn start(
        &mut self,
        kind: RecordKind,
        data: Data,
        total_len: usize,
    ) -> Result<Option<Assembled>, ChunkError> {
        let min_chunk = self.limits.min_chunk_size.max(1);
        // Every non-last part carries at least min_chunk bytes, so a
        // consistent claim has total_parts <= ceil(total_len / min_chunk).
        let max_parts = total_len.div_ceil(min_chunk);
        if data.total_parts as usize > max_parts {
            return Err(ChunkError::InconsistentTotal);
        }
        if self.in_progress.contains_key(&data.message_id) {
            return Err(ChunkError::Duplicate {
                message_id: data.message_id,
            });
        }
        if data.payload.len() < min_chunk {
            return Err(ChunkError::ChunkTooSmall);
        }
        if data.payload.len() > total_len {
            return Err(ChunkError::LengthMismatch);
        }
        let within_bytes = match self.in_progress_bytes.checked_add(total_len) {
            Some(after) => after <= self.limits.max_in_progress_bytes,
            None => false,
        };
        if !within_bytes || self.in_progress.len() >= self.limits.max_in_progress_messages {
            return Err(ChunkError::BudgetExhausted);
        }
        // What has arrived plus one more chunk of the same size, never more
        // than the claim.
        let reserve = total_len.min(data.payload.len().saturating_mul(2));
        let mut buf = Vec::with_capacity(reserve);
        buf.extend_from_slice(&data.payload);
        self.copied_bytes += data.payload.len() as u64;
        self.in_progress_bytes += total_len;
        self.in_progress.insert(
            data.message_id,
            Partial {
                kind,
                channel: data.channel,
                total_parts: data.total_parts,
                total_len,
                compressed: data.compressed,
                request_id: data.request_id,
                status: data.status,
                next_part: 1,
                buf,
            },
        );
        Ok(None)
    }

    fn resume(&mut self, kind: RecordKind, data: Data) -> Result<Option<Assembled>, ChunkError> {
        let message_id = data.message_id;
        let Some(p) = self.in_progress.get_mut(&message_id) else {
            return Err(ChunkError::UnknownMessage {
                message_id,
                part: data.part,
            });
        };
        let verdict = check_part(p, kind, &data, self.limits.min_chunk_size.max(1));
        if let Err(e) = verdict {
            self.drop_message(message_id);
            return Err(e);
        }
        let new_len = p.buf.len() + data.payload.len(); // <= total_len, checked
        if new_len > p.buf.capacity() {
            // Geometric growth, capped at the (budgeted) claim.
            let target = p
                .total_len
                .min(new_len.max(p.buf.capacity().saturating_mul(2)));
            // A reallocation may move what has arrived.
            self.copied_bytes += p.buf.len() as u64;
            p.buf.reserve_exact(target - p.buf.len());
        }
        p.buf.extend_from_slice(&data.payload);
        self.copied_bytes += data.payload.len() as u64;
        p.next_part += 1;
        if p.next_part < p.total_parts {
            return Ok(None);
        }
        let Some(p) = self.in_progress.remove(&message_id) else {
            return Ok(None); // unreachable: looked up above
        };
        self.in_progress_bytes -= p.total_len;
        Ok(Some(Assembled {
            kind: p.kind,
            channel: p.channel,
            message_id,
            request_id: p.request_id,
            status: p.status,
            compressed: p.compressed,
            payload: Bytes::from(p.buf),
        }))
    }

    fn drop_message(&mut self, message_id: u64) {
        if let Some(p) = self.in_progress.remove(&message_id) {
            self.in_progress_bytes -= p.total_len;
        }
    }

    /// Sum of the claimed `total_len` of every in-progress message (reserve
    /// accounting: the budget bounds memory before it is allocated).
    pub fn in_progress_bytes(&self) -> usize {
        self.in_progress_bytes
    }

    /// Number of in-progress multi-part messages.
    pub fn in_progress_messages(&self) -> usize {
        self.in_progress.len()
    }

    /// Whether a multi-part message with this id is in progress.
    pub fn contains(&self, message_id: u64) -> bool {
        self.in_progress.contains_key(&message_id)
    }

    /// Drops every in-progress message and releases its memory.
    pub fn clear(&mut self) {
        self.in_progress = HashMap::new();
        self.in_progress_bytes = 0;
    }
}

/// Validates a non-zero part against its in-progress message.
fn check_part(
    p: &Partial,
    kind: RecordKind,
    data: &Data,
    min_chunk: usize,
) -> Result<(), ChunkError> {
    if p.kind != kind
        || p.channel != data.channel
        || p.total_parts != data.total_parts
        || p.total_len as u64 != data.total_len
        || p.compressed != data.compressed
        || p.request_id != data.request_id
    {
        return Err(ChunkError::HeaderMismatch);
    }
    if data.part != p.next_part {
        return Err(ChunkError::OutOfOrder {
            message_id: data.message_id,
            expected: p.next_part,
            got: data.part,
        });
    }
    let last = data.part + 1 == p.total_parts;
    let left = p.total_len - p.buf.len();
    if !last && data.payload.len() < min_chunk {
        return Err(ChunkError::ChunkTooSmall);
    }
    if data.payload.len() > left || (last && data.payload.len() != left) {
        return Err(ChunkError::LengthMismatch);
    }
    Ok(())
}

/// Splitting helper for senders: the number of parts for `len` bytes in
/// chunks of `chunk_size` (at least one part, even for `len == 0`; a
/// `chunk_size` of 0 is treated as 1; saturates at `u32::MAX`).
pub fn parts_for(len: usize, chunk_size: usize) -> u32 {
    let parts = len.div_ceil(chunk_size.max(1)).max(1);
    u32::try_from(parts).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn limits() -> ChunkLimits {
        ChunkLimits {
            max_in_progress_bytes: 10_000,
            max_in_progress_messages: 2,
            min_chunk_size: 10,
        }
    }

    fn part(id: u64, part: u32, total_parts: u32, total_len: u64, payload: &[u8]) -> Data {
        Data {
            channel: 1,
            message_id: id,
            part,
            total_parts,
            total_len,
            payload: Bytes::copy_from_slice(payload),
            ..Default::default()
        }
    }

    /// Splits `msg` into `chunk`-sized parts.
    fn split(id: u64, msg: &[u8], chunk: usize) -> Vec<Data> {
        let n = parts_for(msg.len(), chunk);
        (0..n)
            .map(|i| {
                let start = (i as usize * chunk).min(msg.len());
                let end = (start + chunk).min(msg.len());
                part(id, i, n, msg.len() as u64, &msg[start..end])
            })
            .collect()
    }

    #[test]
    fn parts_for_rules() {
        assert_eq!(parts_for(0, 10), 1);
        assert_eq!(parts_for(1, 10), 1);
        assert_eq!(parts_for(10, 10), 1);
        assert_eq!(parts_for(11, 10), 2);
        assert_eq!(parts_for(5, 0), 5);
        assert_eq!(parts_for(usize::MAX, 1), u32::MAX);
    }

    #[test]
    fn single_part_is_zero_copy() {
        let mut a = ChunkAssembler::new(limits());
        let d = part(5, 0, 1, 3, b"abc");
        let ptr = d.payload.as_ptr();
        let m = a.push(RecordKind::RpcResponse, d, MAX).unwrap().unwrap();
        assert_eq!(m.payload.as_ptr(), ptr);
        assert_eq!(m.kind, RecordKind::RpcResponse);
        assert_eq!(m.message_id, 5);
        // Empty single-part message.
        let m = a
            .push(RecordKind::Data, part(6, 0, 1, 0, b""), MAX)
            .unwrap()
            .unwrap();
        assert!(m.payload.is_empty());
        assert_eq!(a.take_copied_bytes(), 0, "nothing copied");
    }

    #[test]
    fn multi_part_reassembles() {
        let mut a = ChunkAssembler::new(limits());
        let msg: Vec<u8> = (0..95u8).collect();
        let parts = split(9, &msg, 20);
        assert_eq!(parts.len(), 5);
        let n = parts.len();
        for (i, p) in parts.into_iter().enumerate() {
            let r = a.push(RecordKind::Data, p, MAX).unwrap();
            if i + 1 < n {
                assert!(r.is_none());
                assert_eq!(a.in_progress_bytes(), 95);
                assert_eq!(a.in_progress_messages(), 1);
            } else {
                assert_eq!(r.unwrap().payload, msg);
            }
        }
        // Each part once (95), plus two regrowths: the first part reserves
        // 40 (two parts); the third part moves those 40 into 80, the fifth
        // moves 80 into 95.
        assert_eq!(a.take_copied_bytes(), 95 + 40 + 80);
        assert_eq!(a.take_copied_bytes(), 0);
        assert_eq!(a.in_progress_bytes(), 0);
        assert_eq!(a.in_progress_messages(), 0);
    }

    #[test]
    fn zero_parts() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 0, 0, b""), MAX),
            Err(ChunkError::ZeroParts)
        );
    }

    #[test]
    fn not_data() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Ping, part(1, 0, 1, 0, b""), MAX),
            Err(ChunkError::NotData(RecordKind::Ping))
        );
    }

    #[test]
    fn part_out_of_range() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Data, part(1, 2, 2, 40, &[0; 20]), MAX),
            Err(ChunkError::PartOutOfRange {
                part: 2,
                total_parts: 2
            })
        );
    }

    #[test]
    fn too_large() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 1, 101, &[0; 101]), 100),
            Err(ChunkError::TooLarge {
                total_len: 101,
                max: 100
            })
        );
        // A claim that passes max_size still has to fit the budget.
        assert_eq!(
            a.push(
                RecordKind::Data,
                part(1, 0, 2, u64::MAX, &[0; 10]),
                usize::MAX
            ),
            Err(ChunkError::BudgetExhausted)
        );
        assert!(a
            .push(RecordKind::Data, part(1, 0, 1, 100, &[0; 100]), 100)
            .is_ok());
    }

    #[test]
    fn inconsistent_total() {
        let mut a = ChunkAssembler::new(limits());
        // 3 parts for 20 bytes with a 10-byte minimum: ceil(20/10) = 2 < 3.
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 3, 20, &[0; 10]), MAX),
            Err(ChunkError::InconsistentTotal)
        );
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 2, 0, &[]), MAX),
            Err(ChunkError::InconsistentTotal)
        );
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, u32::MAX, 1000, &[0; 10]), MAX),
            Err(ChunkError::InconsistentTotal)
        );
        assert_eq!(a.in_progress_messages(), 0);
    }

    #[test]
    fn duplicate() {
        let mut a = ChunkAssembler::new(limits());
        a.push(RecordKind::Data, part(1, 0, 2, 20, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 2, 20, &[0; 10]), MAX),
            Err(ChunkError::Duplicate { message_id: 1 })
        );
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 1, 3, b"abc"), MAX),
            Err(ChunkError::Duplicate { message_id: 1 })
        );
    }

    #[test]
    fn out_of_order_drops_message() {
        let mut a = ChunkAssembler::new(limits());
        a.push(RecordKind::Data, part(1, 0, 3, 30, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(1, 2, 3, 30, &[0; 10]), MAX),
            Err(ChunkError::OutOfOrder {
                message_id: 1,
                expected: 1,
                got: 2
            })
        );
        assert_eq!(a.in_progress_messages(), 0);
        assert_eq!(a.in_progress_bytes(), 0);
    }

    #[test]
    fn unknown_message() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Data, part(4, 1, 2, 20, &[0; 10]), MAX),
            Err(ChunkError::UnknownMessage {
                message_id: 4,
                part: 1
            })
        );
    }

    #[test]
    fn chunk_too_small() {
        let mut a = ChunkAssembler::new(limits());
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 2, 15, &[0; 9]), MAX),
            Err(ChunkError::ChunkTooSmall)
        );
        a.push(RecordKind::Data, part(1, 0, 3, 30, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(1, 1, 3, 30, &[0; 9]), MAX),
            Err(ChunkError::ChunkTooSmall)
        );
        // The last part may be small.
        a.push(RecordKind::Data, part(2, 0, 2, 11, &[0; 10]), MAX)
            .unwrap();
        assert!(a
            .push(RecordKind::Data, part(2, 1, 2, 11, &[0; 1]), MAX)
            .unwrap()
            .is_some());
    }

    #[test]
    fn length_mismatch() {
        let mut a = ChunkAssembler::new(limits());
        // Single part shorter / longer than claimed.
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 1, 4, b"abc"), MAX),
            Err(ChunkError::LengthMismatch)
        );
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 1, 2, b"abc"), MAX),
            Err(ChunkError::LengthMismatch)
        );
        // Part 0 longer than the whole.
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 2, 12, &[0; 13]), MAX),
            Err(ChunkError::LengthMismatch)
        );
        // Middle part overshoots.
        a.push(RecordKind::Data, part(2, 0, 3, 30, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(2, 1, 3, 30, &[0; 21]), MAX),
            Err(ChunkError::LengthMismatch)
        );
        // Last part short.
        a.push(RecordKind::Data, part(3, 0, 2, 30, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(3, 1, 2, 30, &[0; 19]), MAX),
            Err(ChunkError::LengthMismatch)
        );
        assert_eq!(a.in_progress_messages(), 0);
        assert_eq!(a.in_progress_bytes(), 0);
    }

    #[test]
    fn budget_exhausted() {
        let mut a = ChunkAssembler::new(limits());
        // Bytes: a 10_001-byte claim never fits.
        assert_eq!(
            a.push(RecordKind::Data, part(1, 0, 2, 10_001, &[0; 10]), MAX),
            Err(ChunkError::BudgetExhausted)
        );
        a.push(RecordKind::Data, part(1, 0, 2, 6_000, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(
            a.push(RecordKind::Data, part(2, 0, 2, 4_001, &[0; 10]), MAX),
            Err(ChunkError::BudgetExhausted)
        );
        a.push(RecordKind::Data, part(2, 0, 2, 4_000, &[0; 10]), MAX)
            .unwrap();
        assert_eq!(a.in_progress_bytes(), 10_000);
        // Messages: limit 2.
        assert_eq!(
            a.push(RecordKind::Data, part(3, 0, 2, 20, &[0; 10]), MAX),
            Err(ChunkError::BudgetExhausted)
        );
        // Single-part messages need no budget.
        assert!(a
            .push(RecordKind::Data, part(3, 0, 1, 1, b"x"), MAX)
            .unwrap()
            .is_some());
        a.clear();
        assert_eq!(a.in_progress_bytes(), 0);
        assert_eq!(a.in_progress_messages(), 0);
        a.push(RecordKind::Data, part(3, 0, 2, 20, &[0; 10]), MAX)
            .unwrap();
    }

    #[test]
    fn header_mismatch() {
        type Change = Box<dyn Fn(&mut Data, &mut RecordKind)>;
        let cases: Vec<Change> = vec![
            Box::new(|d, _| d.channel = 2),
            Box::new(|d, _| d.total_len = 31),
            Box::new(|d, _| d.total_parts = 2),
            Box::new(|d, _| d.compressed = true),
            Box::new(|d, _| d.request_id = 7),
            Box::new(|_, k| *k = RecordKind::RpcRequest),
        ];
        for change in cases {
            let mut a = ChunkAssembler::new(limits());
            a.push(RecordKind::Data, part(1, 0, 3, 30, &[0; 10]), MAX)
                .unwrap();
            let mut d = part(1, 1, 3, 30, &[0; 10]);
            let mut kind = RecordKind::Data;
            change(&mut d, &mut kind);
            assert_eq!(a.push(kind, d, MAX), Err(ChunkError::HeaderMismatch));
            assert_eq!(a.in_progress_messages(), 0);
        }
    }

    #[test]
    fn reserves_by_arrival_not_claim() {
        let mut a = ChunkAssembler::new(ChunkLimits::default());
        let claim = 16 * 1024 * 1024;
        a.push(
            RecordKind::Data,
            part(1, 0, 16, claim, &[0; 1024]),
            16 * 1024 * 1024,
        )
        .unwrap();
        let cap = a.in_progress.get(&1).map(|p| p.buf.capacity()).unwrap();
        assert!(cap <= 2048, "{cap}");
        a.push(
            RecordKind::Data,
            part(1, 1, 16, claim, &[0; 1024]),
            16 * 1024 * 1024,
        )
        .unwrap();
        let cap = a.in_progress.get(&1).map(|p| p.buf.capacity()).unwrap();
        assert!(cap <= 4096, "{cap}");
        assert_eq!(a.in_progress_bytes(), claim as usize);
    }

    proptest! {
        #[test]
        fn interleavings_reassemble(
            msgs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..200), 10usize..60, any::<bool>()),
                1..5,
            ),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
        ) {
            let limits = ChunkLimits { max_in_progress_bytes: 1000, max_in_progress_messages: 4, min_chunk_size: 10 };
            let mut a = ChunkAssembler::new(limits);
            let mut queues: Vec<std::collections::VecDeque<(RecordKind, Data)>> = msgs
                .iter()
                .enumerate()
                .map(|(i, (m, chunk, rpc))| {
                    let kind = if *rpc { RecordKind::RpcRequest } else { RecordKind::Data };
                    split(i as u64 + 100, m, *chunk).into_iter().map(|mut d| {
                        d.request_id = if *rpc { i as u64 + 1 } else { 0 };
                        (kind, d)
                    }).collect()
                })
                .collect();
            let mut done = std::collections::HashMap::new();
            let mut picks = picks.into_iter();
            loop {
                let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                if live.is_empty() { break; }
                let q = match picks.next() { Some(ix) => live[ix.index(live.len())], None => live[0] };
                let (kind, d) = queues[q].pop_front().unwrap();
                if let Some(m) = a.push(kind, d, 200).unwrap() {
                    prop_assert_eq!(m.kind, kind);
                    prop_assert!(done.insert(m.message_id, m.payload).is_none());
                }
                prop_assert!(a.in_progress_bytes() <= limits.max_in_progress_bytes);
            }
            prop_assert_eq!(done.len(), msgs.len());
            for (i, (m, _, _)) in msgs.iter().enumerate() {
                prop_assert_eq!(&done[&(i as u64 + 100)][..], &m[..]);
            }
            prop_assert_eq!(a.in_progress_messages(), 0);
            prop_assert_eq!(a.in_progress_bytes(), 0);
        }
    }
}
