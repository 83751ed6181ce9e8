//! Stream records: the fixed-layout records that carry streams inside a
//! frame plaintext, beside the prost records of [`crate::record`].
//!
//! # Design
//!
//! Every stream record is one record of kind byte [`STREAM_KIND`] (the next
//! kind after [`RecordKind::Close`](crate::RecordKind::Close); the bytes of
//! every existing record are unchanged):
//!
//! ```text
//! record  := 12 ‖ N: varint ‖ body (N bytes)
//! body    := type: u8 ‖ fields (big-endian, fixed width) [‖ payload]
//!
//! type  name              fields                                   body length
//! 1     Limits            stream_window u64 ‖ connection_window u64
//!                         ‖ max_streams u64                        25
//! 2     Open              id u64 ‖ channel u32                     13
//! 3     Data              id u64 ‖ offset u64 ‖ payload            17 + len, len ≥ 1
//! 4     Finish            id u64 ‖ final_size u64                  17
//! 5     Reset             id u64 ‖ code u32 ‖ final_size u64       21
//! 6     Stop              id u64 ‖ code u32                        13
//! 7     StreamCredit      id u64 ‖ max_offset u64                  17
//! 8     ConnectionCredit  max_bytes u64                            9
//! 9     StreamsCredit     max_streams u64                          9
//! ```
//!
//! The layout is smoltcp's: [`StreamRecordView`] is a checked view over a
//! body (its constructor checks the type and the exact length, then the
//! accessors read fixed offsets), [`StreamRecord`] the validated typed
//! form with [`StreamRecord::parse`] and [`StreamRecord::emit`]. A fixed
//! layout makes encoding canonical: parse then emit gives back the same
//! bytes, which the fuzz target checks. `Data` payloads are zero-copy
//! slices of the body `Bytes`.
//!
//! # Security
//!
//! Every length is checked before a field is read: a body shorter or longer
//! than its type's layout, an unknown type, an empty `Data` payload or a
//! `Data` whose `offset + len` overflows `u64` is a typed
//! [`StreamRecordError`], never a panic or an out-of-bounds index.
//! Semantic rules (credit, ordering, stream ids) are the state machine's
//! ([`super::Streams`]).

use bytes::Bytes;

use crate::record::{read_varint, record_len, RecordFull, RecordWriter};

/// The record kind byte of every stream record.
pub const STREAM_KIND: u8 = crate::RecordKind::Stream as u8;

/// Body bytes of a `Data` record before its payload.
pub const DATA_HEADER_LEN: usize = 17;

/// Who opened a stream: the low bit of its [`StreamId`] (as in QUIC), so
/// both sides open streams without ever choosing the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that dialed the connection (ids with the low bit 0).
    Dialer,
    /// The side that accepted it (ids with the low bit 1).
    Listener,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Self {
        match self {
            Side::Dialer => Side::Listener,
            Side::Listener => Side::Dialer,
        }
    }
}

/// A stream's id: `index << 1 | initiator bit`. Each side numbers the
/// streams it opens 0, 1, 2, … in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The id of the `index`-th stream opened by `side` (`None` past
    /// `2^63 - 1`).
    pub fn new(side: Side, index: u64) -> Option<Self> {
        let bit = match side {
            Side::Dialer => 0,
            Side::Listener => 1,
        };
        index.checked_mul(2).map(|i| StreamId(i | bit))
    }

    /// Which side opened the stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Dialer
        } else {
            Side::Listener
        }
    }

    /// Its place among the streams its initiator opened.
    pub fn index(self) -> u64 {
        self.0 >> 1
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// Why bytes are not a valid stream record.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StreamRecordError {
    /// The body holds no type byte.
    #[error("empty stream record")]
    Empty,
    /// The type byte names no stream record.
    #[error("unknown stream record type {0}")]
    UnknownType(u8),
    /// The body length does not match the type's fixed layout.
    #[error("stream record type {ty} of {len} bytes, expected {expected}")]
    Length { ty: u8, len: usize, expected: usize },
    /// A `Data` record without payload.
    #[error("stream data record without payload")]
    EmptyData,
    /// `offset + payload length` of a `Data` record overflows `u64`.
    #[error("stream data offset overflows")]
    OffsetOverflow,
    /// The record's kind byte is not [`STREAM_KIND`].
    #[error("record kind {0} is not a stream record")]
    NotStream(u8),
    /// The record header is truncated, or its length exceeds the input.
    #[error("truncated stream record")]
    Truncated,
}

/// A stream record, validated (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRecord {
    /// The sender's receive limits, sent once before any other stream
    /// record: every stream it accepts starts with `stream_window` of
    /// credit, the connection with `connection_window`, and the peer may
    /// open `max_streams` streams.
    Limits {
        stream_window: u64,
        connection_window: u64,
        max_streams: u64,
    },
    /// Opens stream `id` (initiated by the sender) on `channel`.
    Open { id: StreamId, channel: u32 },
    /// Bytes `offset .. offset + payload.len()` of stream `id`.
    Data {
        id: StreamId,
        offset: u64,
        payload: Bytes,
    },
    /// The sender's half of `id` ended cleanly after `final_size` bytes.
    Finish { id: StreamId, final_size: u64 },
    /// The sender abandoned its half of `id` after `final_size` bytes.
    Reset {
        id: StreamId,
        code: u32,
        final_size: u64,
    },
    /// The sender will not read `id` any more: stop sending.
    Stop { id: StreamId, code: u32 },
    /// The peer may send `id` up to offset `max_offset` (absolute).
    StreamCredit { id: StreamId, max_offset: u64 },
    /// The peer may send `max_bytes` stream bytes in total (absolute).
    ConnectionCredit { max_bytes: u64 },
    /// The peer may open `max_streams` streams in total (absolute).
    StreamsCredit { max_streams: u64 },
}

const LIMITS: u8 = 1;
const OPEN: u8 = 2;
const DATA: u8 = 3;
const FINISH: u8 = 4;
const RESET: u8 = 5;
const STOP: u8 = 6;
const STREAM_CREDIT: u8 = 7;
const CONNECTION_CREDIT: u8 = 8;
const STREAMS_CREDIT: u8 = 9;

/// Exact body length of each fixed type (`Data`: its header).
fn fixed_len(ty: u8) -> Option<usize> {
    Some(match ty {
        LIMITS => 25,
        OPEN | STOP => 13,
        DATA => DATA_HEADER_LEN,
        FINISH | STREAM_CREDIT => 17,
        RESET => 21,
        CONNECTION_CREDIT | STREAMS_CREDIT => 9,
        _ => return None,
    })
}

/// A checked view over a stream record body: the type is known and the
/// length matches its layout, so every accessor reads within bounds.
#[derive(Debug, Clone, Copy)]
pub struct StreamRecordView<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> StreamRecordView<T> {
    /// Checks the type byte and the length; see [`StreamRecordError`].
    pub fn new_checked(buf: T) -> Result<Self, StreamRecordError> {
        let b = buf.as_ref();
        let Some(&ty) = b.first() else {
            return Err(StreamRecordError::Empty);
        };
        let expected = fixed_len(ty).ok_or(StreamRecordError::UnknownType(ty))?;
        if ty == DATA {
            if b.len() < expected {
                return Err(StreamRecordError::Length {
                    ty,
                    len: b.len(),
                    expected,
                });
            }
            if b.len() == expected {
                return Err(StreamRecordError::EmptyData);
            }
        } else if b.len() != expected {
            return Err(StreamRecordError::Length {
                ty,
                len: b.len(),
                expected,
            });
        }
        Ok(Self { buf })
    }

    /// The type byte.
    pub fn record_type(&self) -> u8 {
        self.bytes().first().copied().unwrap_or(0)
    }

    fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The big-endian `u64` at `at` (0 if out of range, which the length
    /// check rules out).
    fn u64_at(&self, at: usize) -> u64 {
        self.bytes()
            .get(at..at + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(0, u64::from_be_bytes)
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.bytes()
            .get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map_or(0, u32::from_be_bytes)
    }

    /// The first field: the stream id of the per-stream types, the value of
    /// the connection-level ones.
    pub fn first_u64(&self) -> u64 {
        self.u64_at(1)
    }

    /// The `Data` payload (empty for other types).
    pub fn payload(&self) -> &[u8] {
        if self.record_type() == DATA {
            self.bytes().get(DATA_HEADER_LEN..).unwrap_or(&[])
        } else {
            &[]
        }
    }
}

impl StreamRecord {
    /// Parses a stream record body (after the kind byte and length); a
    /// `Data` payload is a slice of `body`.
    pub fn parse(body: &Bytes) -> Result<Self, StreamRecordError> {
        let v = StreamRecordView::new_checked(&body[..])?;
        let id = StreamId(v.first_u64());
        Ok(match v.record_type() {
            LIMITS => StreamRecord::Limits {
                stream_window: v.u64_at(1),
                connection_window: v.u64_at(9),
                max_streams: v.u64_at(17),
            },
            OPEN => StreamRecord::Open {
                id,
                channel: v.u32_at(9),
            },
            DATA => {
                let offset = v.u64_at(9);
                let len = body.len() - DATA_HEADER_LEN;
                if offset.checked_add(len as u64).is_none() {
                    return Err(StreamRecordError::OffsetOverflow);
                }
                StreamRecord::Data {
                    id,
                    offset,
                    payload: body.slice(DATA_HEADER_LEN..),
                }
            }
            FINISH => StreamRecord::Finish {
                id,
                final_size: v.u64_at(9),
            },
            RESET => StreamRecord::Reset {
                id,
                code: v.u32_at(9),
                final_size: v.u64_at(13),
            },
            STOP => StreamRecord::Stop {
                id,
                code: v.u32_at(9),
            },
            STREAM_CREDIT => StreamRecord::StreamCredit {
                id,
                max_offset: v.u64_at(9),
            },
            CONNECTION_CREDIT => StreamRecord::ConnectionCredit {
                max_bytes: v.u64_at(1),
            },
            STREAMS_CREDIT => StreamRecord::StreamsCredit {
                max_streams: v.u64_at(1),
            },
            ty => return Err(StreamRecordError::UnknownType(ty)),
        })
    }

    /// Parses one whole record (kind byte, length varint, body) from the
    /// front of `buf` and advances past it.
    pub fn read_record(buf: &mut Bytes) -> Result<Self, StreamRecordError> {
        let Some(&kind) = buf.first() else {
            return Err(StreamRecordError::Truncated);
        };
        if kind != STREAM_KIND {
            return Err(StreamRecordError::NotStream(kind));
        }
        let (len, width) = read_varint(&buf[1..]).map_err(|_| StreamRecordError::Truncated)?;
        let start = 1 + width;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= buf.len() - start)
            .ok_or(StreamRecordError::Truncated)?;
        let body = buf.slice(start..start + len);
        let rec = Self::parse(&body)?;
        bytes::Buf::advance(buf, start + len);
        Ok(rec)
    }

    /// The fixed part of the body (everything but a `Data` payload), on
    /// the stack.
    fn head(&self) -> ([u8; 25], usize) {
        let mut h = [0u8; 25];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(dst) = h.get_mut(n..n + bytes.len()) {
                dst.copy_from_slice(bytes);
                n += bytes.len();
            }
        };
        match self {
            StreamRecord::Limits {
                stream_window,
                connection_window,
                max_streams,
            } => {
                put(&[LIMITS]);
                put(&stream_window.to_be_bytes());
                put(&connection_window.to_be_bytes());
                put(&max_streams.to_be_bytes());
            }
            StreamRecord::Open { id, channel } => {
                put(&[OPEN]);
                put(&id.0.to_be_bytes());
                put(&channel.to_be_bytes());
            }
            StreamRecord::Data { id, offset, .. } => {
                put(&[DATA]);
                put(&id.0.to_be_bytes());
                put(&offset.to_be_bytes());
            }
            StreamRecord::Finish { id, final_size } => {
                put(&[FINISH]);
                put(&id.0.to_be_bytes());
                put(&final_size.to_be_bytes());
            }
            StreamRecord::Reset {
                id,
                code,
                final_size,
            } => {
                put(&[RESET]);
                put(&id.0.to_be_bytes());
                put(&code.to_be_bytes());
                put(&final_size.to_be_bytes());
            }
            StreamRecord::Stop { id, code } => {
                put(&[STOP]);
                put(&id.0.to_be_bytes());
                put(&code.to_be_bytes());
            }
            StreamRecord::StreamCredit { id, max_offset } => {
                put(&[STREAM_CREDIT]);
                put(&id.0.to_be_bytes());
                put(&max_offset.to_be_bytes());
            }
            StreamRecord::ConnectionCredit { max_bytes } => {
                put(&[CONNECTION_CREDIT]);
                put(&max_bytes.to_be_bytes());
            }
            StreamRecord::StreamsCredit { max_streams } => {
                put(&[STREAMS_CREDIT]);
                put(&max_streams.to_be_bytes());
            }
        }
        (h, n)
    }

    fn payload(&self) -> &[u8] {
        match self {
            StreamRecord::Data { payload, .. } => payload,
            _ => &[],
        }
    }

    /// Body length (type byte, fields, payload).
    pub fn body_len(&self) -> usize {
        self.head().1 + self.payload().len()
    }

    /// Whole record length: kind byte, length varint and body.
    pub fn record_len(&self) -> usize {
        record_len(self.body_len())
    }

    /// Appends this record (kind [`STREAM_KIND`]) to `w`, or returns
    /// [`RecordFull`] writing nothing.
    pub fn emit(&self, w: &mut RecordWriter<'_>) -> Result<(), RecordFull> {
        let (head, n) = self.head();
        w.push_raw(STREAM_KIND, head.get(..n).unwrap_or(&[]), self.payload())
    }
}

/// The largest `Data` payload whose whole record fits `record_budget`
/// bytes (0 if none does).
pub fn max_data_payload(record_budget: usize) -> usize {
    // kind + length varint + header; the varint of a body < budget is at
    // most as wide as the budget's.
    let varint = prost::encoding::encoded_len_varint(record_budget as u64);
    record_budget.saturating_sub(1 + varint + DATA_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn emit(rec: &StreamRecord) -> Vec<u8> {
        let mut buf = BytesMut::new();
        rec.emit(&mut RecordWriter::new(&mut buf, usize::MAX))
            .unwrap();
        assert_eq!(buf.len(), rec.record_len());
        buf.to_vec()
    }

    fn read(bytes: &[u8]) -> Result<StreamRecord, StreamRecordError> {
        let mut b = Bytes::copy_from_slice(bytes);
        let r = StreamRecord::read_record(&mut b);
        if r.is_ok() {
            assert!(b.is_empty());
        }
        r
    }

    #[test]
    fn fixtures() {
        let cases: Vec<(StreamRecord, Vec<u8>)> = vec![
            (
                StreamRecord::Limits {
                    stream_window: 0x10_0000,
                    connection_window: 0x40_0000,
                    max_streams: 64,
                },
                vec![
                    12, 25, 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 64,
                ],
            ),
            (
                StreamRecord::Open {
                    id: StreamId(5),
                    channel: 7,
                },
                vec![12, 13, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 7],
            ),
            (
                StreamRecord::Data {
                    id: StreamId(2),
                    offset: 0x0102,
                    payload: Bytes::from_static(b"hi"),
                },
                vec![
                    12, 19, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, b'h', b'i',
                ],
            ),
            (
                StreamRecord::Finish {
                    id: StreamId(3),
                    final_size: 9,
                },
                vec![12, 17, 4, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9],
            ),
            (
                StreamRecord::Reset {
                    id: StreamId(3),
                    code: 0xabcd,
                    final_size: 1,
                },
                vec![
                    12, 21, 5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 1,
                ],
            ),
            (
                StreamRecord::Stop {
                    id: StreamId(4),
                    code: 1,
                },
                vec![12, 13, 6, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1],
            ),
            (
                StreamRecord::StreamCredit {
                    id: StreamId(1),
                    max_offset: 256,
                },
                vec![12, 17, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
            ),
            (
                StreamRecord::ConnectionCredit { max_bytes: 1 },
                vec![12, 9, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
            (
                StreamRecord::StreamsCredit { max_streams: 2 },
                vec![12, 9, 9, 0, 0, 0, 0, 0, 0, 0, 2],
            ),
        ];
        for (rec, bytes) in cases {
            assert_eq!(emit(&rec), bytes, "{rec:?}");
            assert_eq!(read(&bytes), Ok(rec));
        }
    }

    #[test]
    fn stream_ids_carry_the_initiator() {
        let d = StreamId::new(Side::Dialer, 3).unwrap();
        let l = StreamId::new(Side::Listener, 3).unwrap();
        assert_eq!((d.0, l.0), (6, 7));
        assert_eq!(
            (d.initiator(), l.initiator()),
            (Side::Dialer, Side::Listener)
        );
        assert_eq!((d.index(), l.index()), (3, 3));
        assert_eq!(StreamId::new(Side::Dialer, 1 << 63), None);
        assert_eq!(Side::Dialer.peer(), Side::Listener);
    }

    #[test]
    fn hostile_bodies_are_typed_errors() {
        let p = |b: &[u8]| StreamRecord::parse(&Bytes::copy_from_slice(b));
        assert_eq!(p(&[]), Err(StreamRecordError::Empty));
        assert_eq!(p(&[0]), Err(StreamRecordError::UnknownType(0)));
        assert_eq!(p(&[10, 0]), Err(StreamRecordError::UnknownType(10)));
        assert_eq!(
            p(&[2; 12]),
            Err(StreamRecordError::Length {
                ty: 2,
                len: 12,
                expected: 13
            })
        );
        assert_eq!(
            p(&[8; 10]),
            Err(StreamRecordError::Length {
                ty: 8,
                len: 10,
                expected: 9
            })
        );
        assert_eq!(
            p(&[3; 16]),
            Err(StreamRecordError::Length {
                ty: 3,
                len: 16,
                expected: 17
            })
        );
        assert_eq!(p(&[3; 17]), Err(StreamRecordError::EmptyData));
        let mut overflow = vec![3, 0, 0, 0, 0, 0, 0, 0, 0];
        overflow.extend_from_slice(&[0xff; 8]);
        overflow.push(1);
        assert_eq!(p(&overflow), Err(StreamRecordError::OffsetOverflow));
        // Whole records.
        assert_eq!(read(&[]), Err(StreamRecordError::Truncated));
        assert_eq!(read(&[7, 0]), Err(StreamRecordError::NotStream(7)));
        assert_eq!(read(&[12]), Err(StreamRecordError::Truncated));
        assert_eq!(read(&[12, 0x80]), Err(StreamRecordError::Truncated));
        assert_eq!(read(&[12, 9, 8, 0]), Err(StreamRecordError::Truncated));
        assert_eq!(read(&[12, 0]), Err(StreamRecordError::Empty));
    }

    #[test]
    fn max_data_payload_fits_exactly() {
        for budget in [0usize, 18, 19, 20, 127, 128, 129, 200, 16_384, 1 << 20] {
            let n = max_data_payload(budget);
            if n == 0 {
                continue;
            }
            let rec = StreamRecord::Data {
                id: StreamId(0),
                offset: 0,
                payload: Bytes::from(vec![0; n]),
            };
            assert!(rec.record_len() <= budget, "{budget}");
            assert!(rec.record_len() + 2 >= budget, "{budget}: tight");
        }
    }

    fn arb_record() -> impl Strategy<Value = StreamRecord> {
        let id = any::<u64>().prop_map(StreamId);
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| {
                StreamRecord::Limits {
                    stream_window: a,
                    connection_window: b,
                    max_streams: c,
                }
            }),
            (id.clone(), any::<u32>()).prop_map(|(id, channel)| StreamRecord::Open { id, channel }),
            (
                id.clone(),
                0u64..1 << 40,
                proptest::collection::vec(any::<u8>(), 1..300)
            )
                .prop_map(|(id, offset, p)| StreamRecord::Data {
                    id,
                    offset,
                    payload: Bytes::from(p)
                }),
            (id.clone(), any::<u64>())
                .prop_map(|(id, final_size)| StreamRecord::Finish { id, final_size }),
            (id.clone(), any::<u32>(), any::<u64>()).prop_map(|(id, code, final_size)| {
                StreamRecord::Reset {
                    id,
                    code,
                    final_size,
                }
            }),
            (id.clone(), any::<u32>()).prop_map(|(id, code)| StreamRecord::Stop { id, code }),
            (id, any::<u64>())
                .prop_map(|(id, max_offset)| StreamRecord::StreamCredit { id, max_offset }),
            any::<u64>().prop_map(|max_bytes| StreamRecord::ConnectionCredit { max_bytes }),
            any::<u64>().prop_map(|max_streams| StreamRecord::StreamsCredit { max_streams }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_is_byte_exact(rec in arb_record()) {
            let bytes = emit(&rec);
            prop_assert_eq!(read(&bytes), Ok(rec));
        }

        #[test]
        fn any_body_parses_or_errs_and_reemits_identically(
            body in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let body = Bytes::from(body);
            if let Ok(rec) = StreamRecord::parse(&body) {
                let bytes = emit(&rec);
                prop_assert_eq!(&bytes[bytes.len() - body.len()..], &body[..]);
            }
        }
    }
}
