//! Records: the length-delimited messages inside one frame plaintext.
//!
//! # Design
//!
//! A frame plaintext is one or more records, back to back:
//!
//! ```text
//! record := kind: u8 (RecordKind) ‖ N: varint (LEB128, ≤ 10 bytes) ‖ N bytes of the prost message for `kind`
//! ```
//!
//! Coalescing many small records into one frame is how a frame amortises one
//! AEAD call and one syscall over many messages. [`RecordWriter`] appends
//! records to a caller-provided `BytesMut` (typically the plaintext region of
//! a frame being built) and never writes past its byte budget, reporting
//! [`RecordFull`] instead so the caller can seal the frame and start another.
//! [`RecordWriter::push_data`] writes `Data`-shaped records (kinds `Data`,
//! `RpcRequest`, `RpcResponse`) straight from a [`DataHeader`] and a payload
//! slice, producing exactly the bytes prost would produce for the equivalent
//! [`Data`], without building a `Data` or any intermediate buffer.
//! [`data_record_len`] and [`MAX_DATA_OVERHEAD`] let a sender size chunks so
//! they fit a frame exactly.
//!
//! [`RecordReader`] iterates the records of one opened plaintext. It takes the
//! plaintext as `Bytes`, and prost decodes `bytes` fields from a `Bytes`
//! buffer with `copy_to_bytes`, which for `Bytes` is a slice: every payload,
//! key and signature is a zero-copy view of the frame.
//!
//! # Security
//!
//! Provided:
//! - Every decode path returns a typed [`RecordError`]; nothing panics or
//!   indexes out of bounds on hostile input. Record lengths are checked
//!   against what remains of the plaintext before anything is sliced
//!   ([`RecordError::TooLong`]), overlong varints are refused, unknown kinds
//!   are refused ([`RecordError::UnknownKind`]), and errors are sticky: after
//!   the first error the reader yields `None`.
//! - An empty plaintext is refused ([`RecordError::Empty`]): a sealed frame
//!   carries at least one record.
//! - Allocation while decoding is bounded by the plaintext: `bytes` fields are
//!   slices, and repeated fields (`Peers`, `Nodes`) allocate at most one
//!   `PeerRecord` per two input bytes (an empty nested message is two bytes).
//!
//! Not provided:
//! - No semantic validation: key lengths, `request_id != 0` on RPC records,
//!   signature checks and chunk rules belong to `shoal-crypto`, the
//!   [`chunk`](crate::chunk) assembler and the engine.
//! - Unknown protobuf fields inside a known kind are skipped (prost's
//!   forward-compatibility rule), so decoding then re-encoding is not
//!   byte-identical for non-canonical input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;

use crate::message::{
    BitVec, Close, Data, FindNode, KeyConfirmation, Nodes, Peers, Ping, Pong, RecordKind,
};

/// Why a plaintext is not a valid sequence of records.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The kind byte names no record kind.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The plaintext ends inside a record's length varint.
    #[error("truncated record header")]
    Truncated,
    /// A record's length exceeds what remains of the plaintext.
    #[error("record of {len} bytes exceeds the {remaining} remaining bytes")]
    TooLong { len: u64, remaining: usize },
    /// The record body is not a valid prost encoding of its kind's message
    /// (or its length varint is overlong).
    #[error("invalid record body: {0}")]
    Decode(String),
    /// The plaintext holds no record at all.
    #[error("empty plaintext: a frame carries at least one record")]
    Empty,
    /// A stream record's body does not fit its fixed layout.
    #[error("invalid stream record: {0}")]
    Stream(#[from] crate::stream::StreamRecordError),
}

/// The record budget is exhausted: the record does not fit.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("record does not fit the remaining frame budget")]
pub struct RecordFull;

/// The header fields of a `Data`-shaped record (everything but the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataHeader {
    pub channel: u32,
    pub message_id: u64,
    pub part: u32,
    pub total_parts: u32,
    pub total_len: u64,
    pub compressed: bool,
    pub request_id: u64,
    pub status: u32,
}

impl DataHeader {
    /// The header of a decoded [`Data`].
    pub fn of(data: &Data) -> Self {
        Self {
            channel: data.channel,
            message_id: data.message_id,
            part: data.part,
            total_parts: data.total_parts,
            total_len: data.total_len,
            compressed: data.compressed,
            request_id: data.request_id,
            status: data.status,
        }
    }

    /// The equivalent [`Data`] carrying `payload`.
    pub fn to_data(&self, payload: Bytes) -> Data {
        Data {
            channel: self.channel,
            message_id: self.message_id,
            part: self.part,
            total_parts: self.total_parts,
            total_len: self.total_len,
            compressed: self.compressed,
            payload,
            request_id: self.request_id,
            status: self.status,
        }
    }
}

/// Maximum width of a varint-encoded `u32` / `u64`.
const MAX_VARINT32: usize = 5;
const MAX_VARINT64: usize = 10;

/// Upper bound on the bytes a `Data`/`RpcRequest`/`RpcResponse` record adds
/// beyond its payload: kind byte, record length varint, every header field
/// (one-byte key each) at maximum varint width, and the payload's key and
/// length varint.
pub const MAX_DATA_OVERHEAD: usize = 1 // kind
    + MAX_VARINT64 // record length
    + (1 + MAX_VARINT32) // channel
    + (1 + MAX_VARINT64) // message_id
    + (1 + MAX_VARINT32) // part
    + (1 + MAX_VARINT32) // total_parts
    + (1 + MAX_VARINT64) // total_len
    + (1 + 1) // compressed
    + (1 + MAX_VARINT64) // payload key and length
    + (1 + MAX_VARINT64) // request_id
    + (1 + MAX_VARINT32); // status

/// Encoded length of a proto3 varint field (one-byte key): 0 when the value is
/// the default and therefore omitted.
#[inline]
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

/// Length of the prost encoding of the `Data` with this header and payload.
#[inline]
fn data_body_len(h: &DataHeader, payload_len: usize) -> usize {
    varint_field_len(u64::from(h.channel))
        + varint_field_len(h.message_id)
        + varint_field_len(u64::from(h.part))
        + varint_field_len(u64::from(h.total_parts))
        + varint_field_len(h.total_len)
        + if h.compressed { 2 } else { 0 }
        + if payload_len == 0 {
            0
        } else {
            1 + encoded_len_varint(payload_len as u64) + payload_len
        }
        + varint_field_len(h.request_id)
        + varint_field_len(u64::from(h.status))
}

/// Exact record length (kind, length varint and body) of a `Data`-shaped
/// record with this header and payload length.
pub fn data_record_len(header: &DataHeader, payload_len: usize) -> usize {
    let body = data_body_len(header, payload_len);
    1 + encoded_len_varint(body as u64) + body
}

/// Record length of `msg` under any kind.
pub(crate) fn record_len(body_len: usize) -> usize {
    1 + encoded_len_varint(body_len as u64) + body_len
}

fn is_data_kind(kind: RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::Data | RecordKind::RpcRequest | RecordKind::RpcResponse
    )
}

/// Appends records to a caller-provided `BytesMut`, never past `budget` bytes
/// from where it started.
#[derive(Debug)]
pub struct RecordWriter<'a> {
    buf: &'a mut BytesMut,
    start: usize,
    budget: usize,
}

impl<'a> RecordWriter<'a> {
    /// A writer appending to `buf` (after its current contents), at most
    /// `budget` bytes in total.
    pub fn new(buf: &'a mut BytesMut, budget: usize) -> Self {
        let start = buf.len();
        Self { buf, start, budget }
    }

    /// Bytes still available in the budget.
    pub fn remaining(&self) -> usize {
        self.budget.saturating_sub(self.written())
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Appends `msg` as a record of `kind`, or returns [`RecordFull`] (writing
    /// nothing) if it does not fit.
    pub fn push<M: Message>(&mut self, kind: RecordKind, msg: &M) -> Result<(), RecordFull> {
        let body = msg.encoded_len();
        let total = record_len(body);
        if total > self.remaining() {
            return Err(RecordFull);
        }
        self.buf.reserve(total);
        self.buf.put_u8(kind as u8);
        encode_varint(body as u64, self.buf);
        // Cannot fail: `BytesMut` grows (and room was reserved above).
        msg.encode(self.buf).map_err(|_| RecordFull)?;
        debug_assert!(self.written() <= self.budget);
        Ok(())
    }

    /// Appends a record of kind byte `kind` whose body is `head ‖ payload`
    /// (fixed-layout records such as [`crate::stream::StreamRecord`]), or
    /// returns [`RecordFull`] (writing nothing) if it does not fit.
    pub(crate) fn push_raw(
        &mut self,
        kind: u8,
        head: &[u8],
        payload: &[u8],
    ) -> Result<(), RecordFull> {
        let body = head.len() + payload.len();
        let total = record_len(body);
        if total > self.remaining() {
            return Err(RecordFull);
        }
        self.buf.reserve(total);
        self.buf.put_u8(kind);
        encode_varint(body as u64, self.buf);
        self.buf.put_slice(head);
        self.buf.put_slice(payload);
        Ok(())
    }

    /// Writes a `Data`-shaped record (kind `Data`, `RpcRequest` or
    /// `RpcResponse`) straight from a header and a payload slice: no `Data`
    /// struct, no `Bytes`, no intermediate `Vec`. The bytes are identical to
    /// prost's encoding of the equivalent [`Data`].
    ///
    /// A non-`Data` kind is a caller bug; it is written anyway (debug builds
    /// assert) so that release builds never panic on it.
    pub fn push_data(
        &mut self,
        kind: RecordKind,
        header: &DataHeader,
        payload: &[u8],
    ) -> Result<(), RecordFull> {
        debug_assert!(is_data_kind(kind), "push_data with kind {kind:?}");
        let body = data_body_len(header, payload.len());
        let total = record_len(body);
        if total > self.remaining() {
            return Err(RecordFull);
        }
        let buf = &mut *self.buf;
        buf.reserve(total);
        // The fields before and after the payload are assembled on the stack
        // and copied in with one `put_slice` each: prost's `encode_varint`
        // and a `put_u8` per byte cost ~380 instructions a 64 B message.
        let mut head = Scratch::new();
        head.byte(kind as u8);
        head.varint(body as u64);
        // Field order and default-omission exactly as prost's derive emits
        // them: ascending tags, proto3 defaults skipped.
        head.varint_field(1, u64::from(header.channel));
        head.varint_field(2, header.message_id);
        head.varint_field(3, u64::from(header.part));
        head.varint_field(4, u64::from(header.total_parts));
        head.varint_field(5, header.total_len);
        if header.compressed {
            head.byte(6 << 3);
            head.byte(1);
        }
        if !payload.is_empty() {
            head.byte((7 << 3) | 2);
            head.varint(payload.len() as u64);
        }
        buf.put_slice(head.bytes());
        buf.put_slice(payload);
        let mut tail = Scratch::new();
        tail.varint_field(8, header.request_id);
        tail.varint_field(9, u64::from(header.status));
        buf.put_slice(tail.bytes());
        Ok(())
    }
}

/// A record's fixed fields, encoded on the stack. Large enough for a kind
/// byte, a length and every `Data` field at its widest (79 bytes: 1, 10,
/// five fields of 11, 2 and 11); a write past the end is dropped, never a
/// panic (it cannot happen, and the proptests compare every byte with
/// prost).
struct Scratch {
    b: [u8; 80],
    n: usize,
}

impl Scratch {
    #[inline(always)]
    fn new() -> Self {
        Self { b: [0; 80], n: 0 }
    }

    #[inline(always)]
    fn byte(&mut self, v: u8) {
        if let Some(slot) = self.b.get_mut(self.n) {
            *slot = v;
            self.n += 1;
        }
    }

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// A varint field (tags 1..=15: one key byte), skipped when zero.
    #[inline(always)]
    fn varint_field(&mut self, tag: u8, v: u64) {
        if v != 0 {
            self.byte(tag << 3);
            self.varint(v);
        }
    }

    fn bytes(&self) -> &[u8] {
        self.b.get(..self.n).unwrap_or(&[])
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    KeyConfirmation(KeyConfirmation),
    Data(Data),
    RpcRequest(Data),
    RpcResponse(Data),
    BitVec(BitVec),
    Peers(Peers),
    Ping(Ping),
    Pong(Pong),
    FindNode(FindNode),
    Nodes(Nodes),
    Close(Close),
    Stream(crate::stream::StreamRecord),
}

impl Record {
    /// The record's kind byte.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::KeyConfirmation(_) => RecordKind::KeyConfirmation,
            Record::Data(_) => RecordKind::Data,
            Record::RpcRequest(_) => RecordKind::RpcRequest,
            Record::RpcResponse(_) => RecordKind::RpcResponse,
            Record::BitVec(_) => RecordKind::BitVec,
            Record::Peers(_) => RecordKind::Peers,
            Record::Ping(_) => RecordKind::Ping,
            Record::Pong(_) => RecordKind::Pong,
            Record::FindNode(_) => RecordKind::FindNode,
            Record::Nodes(_) => RecordKind::Nodes,
            Record::Close(_) => RecordKind::Close,
            Record::Stream(_) => RecordKind::Stream,
        }
    }

    /// Appends this record to `w` (the inverse of [`RecordReader`]).
    pub fn write_to(&self, w: &mut RecordWriter<'_>) -> Result<(), RecordFull> {
        let kind = self.kind();
        match self {
            Record::KeyConfirmation(m) => w.push(kind, m),
            Record::Data(m) | Record::RpcRequest(m) | Record::RpcResponse(m) => w.push(kind, m),
            Record::BitVec(m) => w.push(kind, m),
            Record::Peers(m) => w.push(kind, m),
            Record::Ping(m) => w.push(kind, m),
            Record::Pong(m) => w.push(kind, m),
            Record::FindNode(m) => w.push(kind, m),
            Record::Nodes(m) => w.push(kind, m),
            Record::Close(m) => w.push(kind, m),
            Record::Stream(r) => r.emit(w),
        }
    }
}

/// Iterates the records of one frame plaintext. Payload `Bytes` are zero-copy
/// slices of the input. After the first error it yields `None`.
#[derive(Debug)]
pub struct RecordReader {
    buf: Bytes,
    started: bool,
    done: bool,
}

impl RecordReader {
    /// A reader over one opened frame plaintext.
    pub fn new(plaintext: Bytes) -> Self {
        Self {
            buf: plaintext,
            started: false,
            done: false,
        }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn next_record(&mut self) -> Result<Record, RecordError> {
        let Some((&kind_byte, rest)) = self.buf.split_first() else {
            return Err(RecordError::Empty);
        };
        let kind = RecordKind::from_u8(kind_byte).ok_or(RecordError::UnknownKind(kind_byte))?;
        let (len, varint_len) = read_varint(rest)?;
        let header_len = 1 + varint_len;
        let remaining = self.buf.len() - header_len;
        let len = match usize::try_from(len) {
            Ok(n) if n <= remaining => n,
            _ => return Err(RecordError::TooLong { len, remaining }),
        };
        if is_data_kind(kind) {
            // Straight from the frame: the payload is the only slice taken
            // (one reference count increment per message, not three).
            if let Some(d) = decode_data_fast_in(&self.buf, header_len..header_len + len) {
                self.buf.advance(header_len + len);
                return Ok(match kind {
                    RecordKind::RpcRequest => Record::RpcRequest(d),
                    RecordKind::RpcResponse => Record::RpcResponse(d),
                    _ => Record::Data(d),
                });
            }
        }
        self.buf.advance(header_len);
        let body = self.buf.split_to(len);
        decode_body(kind, body)
    }
}

/// Decodes a LEB128 varint from the front of `bytes`: `(value, width)`.
/// prost's rule: at most 10 bytes, the 10th at most 1 (the `Data` fast path
/// relies on agreeing with prost here). Most varints in a record (keys,
/// small lengths and ids) are one byte: that case is inlined, the general
/// loop is not (it was ~17 instructions a varint, ~9 varints a message).
#[inline(always)]
pub(crate) fn read_varint(bytes: &[u8]) -> Result<(u64, usize), RecordError> {
    match bytes.first() {
        Some(&b) if b < 0x80 => Ok((u64::from(b), 1)),
        _ => read_varint_long(bytes),
    }
}

#[inline(never)]
fn read_varint_long(bytes: &[u8]) -> Result<(u64, usize), RecordError> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(MAX_VARINT64) {
        let low = u64::from(b & 0x7f);
        if i == MAX_VARINT64 - 1 && b > 1 {
            return Err(RecordError::Decode(
                "record length varint overflows u64".into(),
            ));
        }
        value |= low << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() >= MAX_VARINT64 {
        Err(RecordError::Decode(
            "record length varint longer than 10 bytes".into(),
        ))
    } else {
        Err(RecordError::Truncated)
    }
}

fn decode_body(kind: RecordKind, body: Bytes) -> Result<Record, RecordError> {
    fn de<M: Message + Default>(body: Bytes) -> Result<M, RecordError> {
        M::decode(body).map_err(|e| RecordError::Decode(e.to_string()))
    }
    Ok(match kind {
        RecordKind::KeyConfirmation => Record::KeyConfirmation(de(body)?),
        RecordKind::Data => Record::Data(de(body)?),
        RecordKind::RpcRequest => Record::RpcRequest(de(body)?),
        RecordKind::RpcResponse => Record::RpcResponse(de(body)?),
        RecordKind::BitVec => Record::BitVec(de(body)?),
        RecordKind::Peers => Record::Peers(de(body)?),
        RecordKind::Ping => Record::Ping(de(body)?),
        RecordKind::Pong => Record::Pong(de(body)?),
        RecordKind::FindNode => Record::FindNode(de(body)?),
        RecordKind::Nodes => Record::Nodes(de(body)?),
        RecordKind::Close => Record::Close(de(body)?),
        RecordKind::Stream => Record::Stream(crate::stream::StreamRecord::parse(&body)?),
    })
}

/// [`decode_data_fast_in`] over a whole body.
#[cfg(test)]
fn decode_data_fast(body: &Bytes) -> Option<Data> {
    decode_data_fast_in(body, 0..body.len())
}

/// Decodes the `Data` body at `range` of `frame` when it holds only the
/// nine declared fields, each with its declared wire type (what every shoal
/// sender writes), with the
/// result prost's derived decoder gives for the same bytes: last value wins,
/// `uint32` fields truncate, `bool` is "not zero", the payload is a zero-copy
/// slice. Anything else (an unknown field, a wrong wire type, a group, a bad
/// or truncated varint, a short payload) returns `None`, and the caller
/// decodes with prost, so unusual or hostile encodings keep prost's exact
/// semantics and errors. prost's generic loop cost ~500 instructions per
/// 64-byte message; this is the receive path's per-message floor.
fn decode_data_fast_in(frame: &Bytes, range: std::ops::Range<usize>) -> Option<Data> {
    let base = range.start;
    let b: &[u8] = frame.get(range)?;
    let mut d = Data::default();
    let mut payload = None;
    let mut i = 0;
    while i < b.len() {
        let (key, n) = read_varint(b.get(i..)?).ok()?;
        i += n;
        if key == (7 << 3) | 2 {
            let (len, n) = read_varint(b.get(i..)?).ok()?;
            i += n;
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= b.len() - i)?;
            payload = Some(i..i + len);
            i += len;
            continue;
        }
        // Every other declared field is a varint (wire type 0).
        if key & 7 != 0 {
            return None;
        }
        let (v, n) = read_varint(b.get(i..)?).ok()?;
        i += n;
        match key >> 3 {
            1 => d.channel = v as u32,
            2 => d.message_id = v,
            3 => d.part = v as u32,
            4 => d.total_parts = v as u32,
            5 => d.total_len = v,
            6 => d.compressed = v != 0,
            8 => d.request_id = v,
            9 => d.status = v as u32,
            _ => return None,
        }
    }
    if let Some(range) = payload {
        d.payload = frame.slice(base + range.start..base + range.end);
    }
    Some(d)
}

impl Iterator for RecordReader {
    type Item = Result<Record, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || (self.started && self.buf.is_empty()) {
            return None;
        }
        self.started = true;
        let item = self.next_record();
        if item.is_err() {
            self.done = true;
            self.buf.clear();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PeerRecord;
    use proptest::prelude::*;
    use prost::encoding::{encode_key, WireType};

    fn read_all(bytes: &[u8]) -> Vec<Result<Record, RecordError>> {
        RecordReader::new(Bytes::copy_from_slice(bytes)).collect()
    }

    #[test]
    fn record_fixture() {
        let mut buf = BytesMut::new();
        let mut w = RecordWriter::new(&mut buf, 100);
        w.push(RecordKind::Ping, &Ping { nonce: 1 }).unwrap();
        w.push(RecordKind::Pong, &Pong { nonce: 0 }).unwrap();
        w.push_data(
            RecordKind::Data,
            &DataHeader {
                channel: 7,
                message_id: 1,
                total_parts: 1,
                total_len: 2,
                ..Default::default()
            },
            b"hi",
        )
        .unwrap();
        assert_eq!(w.written(), 4 + 2 + 14);
        assert_eq!(
            &buf[..],
            &[
                7, 2, 0x08, 1, // Ping{1}
                8, 0, // Pong{0}
                2, 12, 0x08, 7, 0x10, 1, 0x20, 1, 0x28, 2, 0x3a, 2, b'h', b'i'
            ][..]
        );
        let recs: Vec<_> = read_all(&buf).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            recs,
            vec![
                Record::Ping(Ping { nonce: 1 }),
                Record::Pong(Pong { nonce: 0 }),
                Record::Data(Data {
                    channel: 7,
                    message_id: 1,
                    total_parts: 1,
                    total_len: 2,
                    payload: Bytes::from_static(b"hi"),
                    ..Default::default()
                }),
            ]
        );
    }

    #[test]
    fn writer_respects_budget_and_prefix() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let mut w = RecordWriter::new(&mut buf, 5);
        assert_eq!(w.remaining(), 5);
        w.push(RecordKind::Ping, &Ping { nonce: 5 }).unwrap(); // 4 bytes
        assert_eq!(w.remaining(), 1);
        assert_eq!(
            w.push(RecordKind::Ping, &Ping { nonce: 5 }),
            Err(RecordFull)
        );
        w.push(RecordKind::Ping, &Ping { nonce: 0 }).unwrap_err(); // 2 bytes > 1
        assert_eq!(w.written(), 4);
        assert_eq!(
            w.push_data(RecordKind::Data, &DataHeader::default(), b""),
            Err(RecordFull)
        );
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn exact_fit() {
        let h = DataHeader {
            channel: 1,
            message_id: 2,
            total_parts: 1,
            total_len: 100,
            ..Default::default()
        };
        let payload = [9u8; 100];
        let len = data_record_len(&h, payload.len());
        let mut buf = BytesMut::new();
        let mut w = RecordWriter::new(&mut buf, len);
        w.push_data(RecordKind::Data, &h, &payload).unwrap();
        assert_eq!(w.remaining(), 0);
        assert_eq!(buf.len(), len);
        let mut buf = BytesMut::new();
        let mut w = RecordWriter::new(&mut buf, len - 1);
        assert_eq!(w.push_data(RecordKind::Data, &h, &payload), Err(RecordFull));
        assert!(buf.is_empty());
    }

    #[test]
    fn max_overhead_bound_is_tight_enough_and_holds() {
        let h = DataHeader {
            channel: u32::MAX,
            message_id: u64::MAX,
            part: u32::MAX,
            total_parts: u32::MAX,
            total_len: u64::MAX,
            compressed: true,
            request_id: u64::MAX,
            status: u32::MAX,
        };
        for payload_len in [1usize, 127, 128, 16_383, 16_384, 65_536, 1 << 21] {
            let overhead = data_record_len(&h, payload_len) - payload_len;
            assert!(overhead <= MAX_DATA_OVERHEAD, "{payload_len}: {overhead}");
        }
        const { assert!(MAX_DATA_OVERHEAD < 100) };
    }

    #[test]
    fn empty_plaintext() {
        assert_eq!(read_all(&[]), vec![Err(RecordError::Empty)]);
    }

    #[test]
    fn unknown_kind_is_sticky() {
        let r = read_all(&[7, 0, 0, 0, 8, 0]);
        assert_eq!(
            r,
            vec![
                Ok(Record::Ping(Ping::default())),
                Err(RecordError::UnknownKind(0))
            ]
        );
        assert_eq!(read_all(&[13, 0]), vec![Err(RecordError::UnknownKind(13))]);
        // Kind 12 is a stream record: its body is checked against its layout.
        assert_eq!(
            read_all(&[12, 0]),
            vec![Err(RecordError::Stream(
                crate::stream::StreamRecordError::Empty
            ))]
        );
        assert_eq!(
            read_all(&[12, 9, 8, 0, 0, 0, 0, 0, 0, 0, 7]),
            vec![Ok(Record::Stream(
                crate::stream::StreamRecord::ConnectionCredit { max_bytes: 7 }
            ))]
        );
        assert_eq!(read_all(&[255]), vec![Err(RecordError::UnknownKind(255))]);
    }

    #[test]
    fn truncated_header() {
        assert_eq!(read_all(&[7]), vec![Err(RecordError::Truncated)]);
        assert_eq!(read_all(&[7, 0x80]), vec![Err(RecordError::Truncated)]);
        assert_eq!(
            read_all(&[7, 0x80, 0x80]),
            vec![Err(RecordError::Truncated)]
        );
    }

    #[test]
    fn overlong_varints() {
        let mut v = vec![7u8];
        v.extend_from_slice(&[0x80; 10]);
        v.push(0);
        assert!(matches!(read_all(&v)[..], [Err(RecordError::Decode(_))]));
        // 10th byte > 1 overflows u64.
        let mut v = vec![7u8];
        v.extend_from_slice(&[0xff; 9]);
        v.push(0x02);
        assert!(matches!(read_all(&v)[..], [Err(RecordError::Decode(_))]));
        // u64::MAX is a valid varint, just too long.
        let mut v = vec![7u8];
        v.extend_from_slice(&[0xff; 9]);
        v.push(0x01);
        assert_eq!(
            read_all(&v),
            vec![Err(RecordError::TooLong {
                len: u64::MAX,
                remaining: 0
            })]
        );
    }

    #[test]
    fn too_long() {
        assert_eq!(
            read_all(&[7, 3, 8, 1]),
            vec![Err(RecordError::TooLong {
                len: 3,
                remaining: 2
            })]
        );
    }

    #[test]
    fn bad_body() {
        // Ping with a truncated varint field.
        assert!(matches!(
            read_all(&[7, 2, 0x08, 0x80])[..],
            [Err(RecordError::Decode(_))]
        ));
        // Close with invalid UTF-8 detail.
        assert!(matches!(
            read_all(&[11, 3, 0x12, 1, 0xff])[..],
            [Err(RecordError::Decode(_))]
        ));
    }

    #[test]
    fn payloads_are_zero_copy() {
        let mut buf = BytesMut::new();
        let mut w = RecordWriter::new(&mut buf, 1 << 16);
        let h = DataHeader {
            channel: 3,
            total_parts: 1,
            total_len: 1000,
            ..Default::default()
        };
        w.push_data(RecordKind::RpcRequest, &h, &[0xab; 1000])
            .unwrap();
        w.push(
            RecordKind::Peers,
            &Peers {
                peers: vec![PeerRecord {
                    public_key: Bytes::from_static(&[1; 32]),
                    ..Default::default()
                }],
            },
        )
        .unwrap();
        let plain = buf.freeze();
        let range = plain.as_ptr_range();
        let mut r = RecordReader::new(plain.clone());
        let Some(Ok(Record::RpcRequest(d))) = r.next() else {
            panic!("expected RpcRequest")
        };
        assert_eq!(d.payload.len(), 1000);
        assert!(range.contains(&d.payload.as_ptr()));
        assert!(d.payload.as_ptr_range().end <= range.end);
        let Some(Ok(Record::Peers(p))) = r.next() else {
            panic!("expected Peers")
        };
        assert!(range.contains(&p.peers[0].public_key.as_ptr()));
        assert!(r.next().is_none());
    }

    fn arb_header() -> impl Strategy<Value = DataHeader> {
        (
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()),
            (any::<u64>(), any::<bool>(), any::<u64>(), any::<u32>()),
        )
            .prop_map(
                |(
                    (channel, message_id, part, total_parts),
                    (total_len, compressed, request_id, status),
                )| {
                    DataHeader {
                        channel,
                        message_id,
                        part,
                        total_parts,
                        total_len,
                        compressed,
                        request_id,
                        status,
                    }
                },
            )
    }

    /// Small values too, so default-omission is exercised.
    fn arb_sparse_header() -> impl Strategy<Value = DataHeader> {
        prop_oneof![
            arb_header(),
            arb_header().prop_map(|h| DataHeader {
                channel: h.channel % 3,
                message_id: h.message_id % 3,
                part: h.part % 2,
                total_parts: h.total_parts % 2,
                total_len: h.total_len % 300,
                compressed: h.compressed,
                request_id: h.request_id % 2,
                status: h.status % 2,
            }),
        ]
    }

    fn arb_kind() -> impl Strategy<Value = RecordKind> {
        prop_oneof![
            Just(RecordKind::Data),
            Just(RecordKind::RpcRequest),
            Just(RecordKind::RpcResponse)
        ]
    }

    #[test]
    fn fast_data_decode_fixtures() {
        // channel 7, message_id 1, total_parts 1, total_len 2, payload "hi".
        let body = Bytes::from_static(&[0x08, 7, 0x10, 1, 0x20, 1, 0x28, 2, 0x3a, 2, b'h', b'i']);
        let d = decode_data_fast(&body).unwrap();
        assert_eq!(
            (d.channel, d.message_id, d.total_parts, d.total_len),
            (7, 1, 1, 2)
        );
        assert_eq!(&d.payload[..], b"hi");
        assert_eq!(Data::decode(body.clone()).unwrap(), d);
        // Last value wins; a uint32 truncates a 64-bit varint (as prost).
        let body = Bytes::from_static(&[
            0x08, 1, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x3a, 1, b'a', 0x3a, 1, b'b',
        ]);
        let d = decode_data_fast(&body).unwrap();
        assert_eq!((d.channel, &d.payload[..]), (u32::MAX, &b"b"[..]));
        assert_eq!(Data::decode(body).unwrap(), d);
        // Left to prost: an unknown field, a wrong wire type, a short payload,
        // an overlong varint.
        for odd in [
            &[0x50, 1][..],
            &[0x09, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x3a, 5, b'a'],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
        ] {
            assert_eq!(
                decode_data_fast(&Bytes::copy_from_slice(odd)),
                None,
                "{odd:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn fast_data_decode_agrees_with_prost_on_any_bytes(
            fields in proptest::collection::vec(
                prop_oneof![
                    // Well-formed declared fields (any tag 1..=10, varint or bytes).
                    (1u8..=10, any::<u64>()).prop_map(|(t, v)| {
                        let mut b = BytesMut::new();
                        encode_key(u32::from(t), WireType::Varint, &mut b);
                        encode_varint(v, &mut b);
                        b.to_vec()
                    }),
                    (proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|p| {
                        let mut b = BytesMut::new();
                        encode_key(7, WireType::LengthDelimited, &mut b);
                        encode_varint(p.len() as u64, &mut b);
                        b.extend_from_slice(&p);
                        b.to_vec()
                    }),
                    // Junk.
                    proptest::collection::vec(any::<u8>(), 0..12),
                ],
                0..8,
            ),
        ) {
            let body = Bytes::from(fields.concat());
            let by_prost = Data::decode(body.clone());
            // When the fast path declines, prost decides (only junk or
            // undeclared fields get there).
            if let Some(fast) = decode_data_fast(&body) {
                prop_assert_eq!(Ok(fast), by_prost.map_err(|_| ()));
            }
        }

        #[test]
        fn every_data_record_we_write_takes_the_fast_path(
            h in arb_sparse_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let data = h.to_data(Bytes::from(payload));
            let body = Bytes::from(data.encode_to_vec());
            prop_assert_eq!(decode_data_fast(&body), Some(data));
        }

        #[test]
        fn push_data_matches_prost(
            kind in arb_kind(),
            h in arb_sparse_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut a = BytesMut::new();
            RecordWriter::new(&mut a, usize::MAX).push_data(kind, &h, &payload).unwrap();
            let mut b = BytesMut::new();
            let data = h.to_data(Bytes::from(payload.clone()));
            RecordWriter::new(&mut b, usize::MAX).push(kind, &data).unwrap();
            prop_assert_eq!(&a[..], &b[..]);
            prop_assert_eq!(a.len(), data_record_len(&h, payload.len()));
            prop_assert!(a.len() - payload.len() <= MAX_DATA_OVERHEAD);
            let recs: Vec<_> = RecordReader::new(a.freeze()).collect();
            prop_assert_eq!(recs.len(), 1);
            let rec = recs.into_iter().next().unwrap().unwrap();
            prop_assert_eq!(rec.kind(), kind);
            let (Record::Data(d) | Record::RpcRequest(d) | Record::RpcResponse(d)) = rec else {
                panic!("not data");
            };
            prop_assert_eq!(DataHeader::of(&d), h);
            prop_assert_eq!(&d.payload[..], &payload[..]);
        }

        #[test]
        fn many_records_round_trip(
            nonces in proptest::collection::vec(any::<u64>(), 1..50),
            budget in 0usize..400,
        ) {
            let mut buf = BytesMut::new();
            let mut w = RecordWriter::new(&mut buf, budget);
            let mut pushed = Vec::new();
            for (i, n) in nonces.iter().enumerate() {
                let rec = if i % 2 == 0 { Record::Ping(Ping { nonce: *n }) } else { Record::Pong(Pong { nonce: *n }) };
                match rec.write_to(&mut w) {
                    Ok(()) => pushed.push(rec),
                    Err(RecordFull) => break,
                }
            }
            prop_assert!(w.written() <= budget);
            prop_assert_eq!(w.written(), buf.len());
            let got: Vec<_> = RecordReader::new(buf.freeze()).collect();
            if pushed.is_empty() {
                prop_assert_eq!(got, vec![Err(RecordError::Empty)]);
            } else {
                let got: Vec<Record> = got.into_iter().map(Result::unwrap).collect();
                prop_assert_eq!(got, pushed);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut errors = 0;
            for r in RecordReader::new(Bytes::from(bytes)) {
                if r.is_err() { errors += 1; }
            }
            prop_assert!(errors <= 1);
        }
    }
}
