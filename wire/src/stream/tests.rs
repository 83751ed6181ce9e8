//! Deterministic tests: two [`Streams`] and a loop moving records between
//! them through their encoded bytes, one record at a time.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::record::RecordWriter;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn cfg() -> StreamConfig {
    StreamConfig {
        stream_window: 64 * KIB,
        connection_window: 128 * KIB,
        max_streams: 4,
        max_record_payload: 4096,
        send_buffer: 256 * KIB,
    }
}

/// Encodes and decodes `rec` as the connection would.
fn through_bytes(rec: &StreamRecord) -> StreamRecord {
    let mut buf = BytesMut::new();
    rec.emit(&mut RecordWriter::new(&mut buf, usize::MAX))
        .unwrap();
    let mut b = buf.freeze();
    let back = StreamRecord::read_record(&mut b).unwrap();
    assert!(b.is_empty());
    back
}

struct Pair {
    a: Streams,
    b: Streams,
    /// Records moved a→b and b→a.
    moved: usize,
}

impl Pair {
    fn new(cfg_a: StreamConfig, cfg_b: StreamConfig) -> Self {
        let mut p = Self {
            a: Streams::new(Side::Dialer, cfg_a),
            b: Streams::new(Side::Listener, cfg_b),
            moved: 0,
        };
        p.run();
        p
    }

    /// Moves one record from `a` to `b` (or `b` to `a`); false if none.
    fn step(&mut self, a_to_b: bool, budget: usize) -> bool {
        let (from, to) = if a_to_b {
            (&mut self.a, &mut self.b)
        } else {
            (&mut self.b, &mut self.a)
        };
        let Some(rec) = from.poll_transmit(budget) else {
            return false;
        };
        assert!(rec.record_len() <= budget);
        to.handle_record(through_bytes(&rec))
            .unwrap_or_else(|v| panic!("conforming peer violated: {v}"));
        self.moved += 1;
        true
    }

    /// Moves records both ways, alternating, until neither side has any.
    fn run(&mut self) {
        for _ in 0..1_000_000 {
            let ab = self.step(true, 1 << 16);
            let ba = self.step(false, 1 << 16);
            if !ab && !ba {
                return;
            }
        }
        panic!("did not settle");
    }
}

fn events(s: &mut Streams) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Reads everything buffered on `id`.
fn drain(s: &mut Streams, id: StreamId) -> (Vec<u8>, Result<ReadOutcome, ReadError>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        match s.read(id, &mut buf) {
            Ok(ReadOutcome::Data(n)) => got.extend_from_slice(&buf[..n]),
            other => return (got, other),
        }
    }
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn pattern(offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> 56) as u8;
    }
}

#[test]
fn limits_are_exchanged_first() {
    let mut a = Streams::new(Side::Dialer, cfg());
    assert_eq!(a.open(1), Err(OpenError::TooManyStreams));
    assert!(matches!(
        a.poll_transmit(100),
        Some(StreamRecord::Limits {
            stream_window: 65536,
            connection_window: 131072,
            max_streams: 4
        })
    ));
    assert!(!a.has_transmit());
    let mut p = Pair::new(cfg(), cfg());
    assert_eq!(p.moved, 2);
    p.a.open(1).unwrap();
}

#[test]
fn large_transfer_is_ordered_and_bounded_by_the_window() {
    let c = StreamConfig {
        stream_window: MIB,
        connection_window: 2 * MIB,
        max_streams: 4,
        max_record_payload: 16 * 1024,
        send_buffer: MIB,
    };
    let mut p = Pair::new(c, c);
    let id = p.a.open(9).unwrap();
    const TOTAL: u64 = 64 * MIB;
    let (mut written, mut read) = (0u64, 0u64);
    let (mut h_sent, mut h_read) = (0xcbf2_9ce4_8422_2325u64, 0xcbf2_9ce4_8422_2325u64);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut rbuf = vec![0u8; 48 * 1024];
    let mut finished = false;
    let mut opened = false;
    for _ in 0..1_000_000 {
        // Writer: as much as credit allows.
        while written < TOTAL {
            let n = chunk.len().min((TOTAL - written) as usize);
            pattern(written, &mut chunk[..n]);
            match p.a.write(id, &chunk[..n]) {
                Ok(k) => {
                    fnv(&mut h_sent, &chunk[..k]);
                    written += k as u64;
                }
                Err(WriteError::Blocked) => break,
                Err(e) => panic!("{e}"),
            }
        }
        if written == TOTAL && !finished {
            p.a.finish(id).unwrap();
            finished = true;
        }
        assert!(p.a.pending_bytes() <= c.send_buffer);
        // A few records each way, then the reader takes one buffer.
        for _ in 0..8 {
            p.step(true, 20_000);
            assert!(p.b.buffered_bytes() <= c.stream_window, "window exceeded");
        }
        p.step(false, 20_000);
        for e in events(&mut p.b) {
            if let Event::Opened { id: got, channel } = e {
                assert_eq!((got, channel), (id, 9));
                opened = true;
            }
        }
        if !opened {
            continue;
        }
        match p.b.read(id, &mut rbuf) {
            Ok(ReadOutcome::Data(n)) => {
                fnv(&mut h_read, &rbuf[..n]);
                read += n as u64;
            }
            Ok(ReadOutcome::Finished) => break,
            Err(ReadError::Blocked) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(read, TOTAL);
    assert_eq!(h_read, h_sent);
    p.run();
    assert_eq!(p.a.stream_count(), 1, "b's half is still open");
    assert_eq!(p.b.stream_count(), 1, "b's half is still open");
    p.b.finish(id).unwrap();
    p.run();
    assert_eq!(drain(&mut p.a, id).1, Ok(ReadOutcome::Finished));
    assert_eq!(p.b.stream_count(), 0);
    assert_eq!(p.a.stream_count(), 0);
}

#[test]
fn credit_exhaustion_blocks_the_writer_until_the_reader_reads_half() {
    let mut p = Pair::new(cfg(), cfg());
    let id = p.a.open(1).unwrap();
    let big = vec![7u8; 200 * 1024];
    assert_eq!(p.a.write(id, &big), Ok(64 * 1024), "the stream window");
    assert_eq!(p.a.write(id, &big), Err(WriteError::Blocked));
    p.run();
    assert_eq!(p.b.buffered_bytes(), 64 * KIB);
    assert_eq!(
        events(&mut p.b),
        vec![Event::Opened { id, channel: 1 }, Event::Readable { id }]
    );
    assert_eq!(p.a.write(id, &big), Err(WriteError::Blocked));
    // Reading less than half the window grants nothing.
    let mut buf = vec![0u8; 32 * 1024 - 1];
    assert_eq!(p.b.read(id, &mut buf), Ok(ReadOutcome::Data(32 * 1024 - 1)));
    assert!(!p.b.has_transmit());
    // Half: a StreamCredit to 96 KiB.
    assert_eq!(p.b.read(id, &mut buf[..1]), Ok(ReadOutcome::Data(1)));
    assert!(matches!(
        p.b.poll_transmit(100),
        Some(StreamRecord::StreamCredit { max_offset, .. }) if max_offset == 96 * KIB
    ));
    let mut p2 = p;
    p2.a.handle_record(StreamRecord::StreamCredit {
        id,
        max_offset: 96 * KIB,
    })
    .unwrap();
    assert!(events(&mut p2.a).contains(&Event::Writable { id }));
    assert_eq!(p2.a.write(id, &big), Ok(32 * 1024));
    assert_eq!(p2.a.write(id, &big), Err(WriteError::Blocked));
}

#[test]
fn connection_credit_is_shared_by_all_streams() {
    let c = StreamConfig {
        connection_window: 64 * KIB,
        ..cfg()
    };
    let mut p = Pair::new(c, c);
    let s1 = p.a.open(1).unwrap();
    let s2 = p.a.open(1).unwrap();
    assert_eq!(p.a.write(s1, &[1u8; 40 * 1024]), Ok(40 * 1024));
    assert_eq!(p.a.write(s2, &[2u8; 40 * 1024]), Ok(24 * 1024));
    assert_eq!(p.a.write(s2, &[2u8; 1]), Err(WriteError::Blocked));
    p.run();
    assert_eq!(p.b.buffered_bytes(), 64 * KIB);
    // Reading half of the connection window from either stream re-grants.
    let mut buf = vec![0u8; 32 * 1024];
    assert_eq!(p.b.read(s1, &mut buf), Ok(ReadOutcome::Data(32 * 1024)));
    p.run();
    assert!(events(&mut p.a).contains(&Event::Writable { id: s2 }));
    assert_eq!(p.a.write(s2, &[2u8; 40 * 1024]), Ok(32 * 1024));
}

#[test]
fn finish_after_reset_is_refused_and_the_reader_sees_the_reset() {
    let mut p = Pair::new(cfg(), cfg());
    let id = p.a.open(1).unwrap();
    p.a.write(id, b"lost").unwrap();
    p.a.reset(id, 42).unwrap();
    assert_eq!(p.a.finish(id), Err(WriteError::Closed));
    assert_eq!(p.a.write(id, b"x"), Err(WriteError::Closed));
    assert_eq!(p.a.reset(id, 1), Err(WriteError::Closed));
    assert_eq!(p.a.pending_bytes(), 0, "pending bytes dropped");
    p.run();
    let ev = events(&mut p.b);
    assert!(ev.contains(&Event::Reset { id, code: 42 }), "{ev:?}");
    assert_eq!(p.b.read(id, &mut [0; 8]), Err(ReadError::Reset(42)));
    assert_eq!(
        p.b.read(id, &mut [0; 8]),
        Err(ReadError::Reset(42)),
        "sticky"
    );
    // Reset after finish (once the finish is out) is refused too.
    let id2 = p.a.open(1).unwrap();
    p.a.finish(id2).unwrap();
    p.run();
    assert_eq!(p.a.reset(id2, 1), Err(WriteError::Closed));
}

#[test]
fn reset_before_the_pending_finish_went_out_replaces_it() {
    let mut p = Pair::new(cfg(), cfg());
    let id = p.a.open(1).unwrap();
    p.a.write(id, b"abc").unwrap();
    p.a.finish(id).unwrap();
    p.a.reset(id, 3).unwrap();
    p.run();
    let ev = events(&mut p.b);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Finished { .. })),
        "{ev:?}"
    );
    assert_eq!(p.b.read(id, &mut [0; 8]), Err(ReadError::Reset(3)));
}

#[test]
fn stop_is_answered_with_a_reset_and_both_sides_release() {
    let mut p = Pair::new(cfg(), cfg());
    let id = p.a.open(1).unwrap();
    p.a.write(id, &[5u8; 10_000]).unwrap();
    p.run();
    events(&mut p.b);
    p.b.stop(id, 7).unwrap();
    assert_eq!(p.b.buffered_bytes(), 0, "stop drops what was buffered");
    assert_eq!(p.b.read(id, &mut [0; 4]), Err(ReadError::Closed));
    p.run();
    assert!(events(&mut p.a).contains(&Event::Stopped { id, code: 7 }));
    assert_eq!(p.a.write(id, b"more"), Err(WriteError::Stopped(7)));
    assert_eq!(p.a.finish(id), Err(WriteError::Stopped(7)));
    // b's half: finish it; a reads the end; then both are released.
    p.b.finish(id).unwrap();
    p.run();
    assert_eq!(drain(&mut p.a, id).1, Ok(ReadOutcome::Finished));
    p.run();
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
    assert!(events(&mut p.b).is_empty(), "the answering reset is quiet");
}

#[test]
fn stop_and_reset_crossing_are_no_violation() {
    let mut p = Pair::new(cfg(), cfg());
    let id = p.a.open(1).unwrap();
    p.a.write(id, &[1u8; 5000]).unwrap();
    p.b.handle_record(through_bytes(&p.a.poll_transmit(100).unwrap()))
        .unwrap(); // Open
    p.a.reset(id, 1).unwrap();
    p.b.stop(id, 2).unwrap();
    // Both records cross; then data that was in flight is gone already.
    p.run();
    assert_eq!(p.a.write(id, b"x"), Err(WriteError::Closed));
    // b's sending half is still open: a's stop is a fresh record.
    p.b.finish(id).unwrap();
    p.run();
    assert_eq!(drain(&mut p.a, id).1, Ok(ReadOutcome::Finished));
    p.run();
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
    // Data in flight when we stop is discarded, and its credit given back.
    let id = p.a.open(1).unwrap();
    p.a.write(id, &[1u8; 60_000]).unwrap();
    assert!(p.step(true, 1 << 16)); // Open
    assert!(p.step(true, 1 << 16)); // Data
    p.b.stop(id, 9).unwrap();
    p.run();
    assert_eq!(p.b.buffered_bytes(), 0);
}

#[test]
fn too_many_streams_are_refused_until_one_is_released() {
    let mut p = Pair::new(cfg(), cfg());
    let ids: Vec<_> = (0..4).map(|_| p.a.open(1).unwrap()).collect();
    assert_eq!(p.a.open(1), Err(OpenError::TooManyStreams));
    p.run();
    for &id in &ids[..] {
        p.a.finish(id).unwrap();
    }
    p.run();
    // a's halves are finished; b finishes one stream and reads its end.
    p.b.finish(ids[0]).unwrap();
    assert_eq!(drain(&mut p.b, ids[0]).1, Ok(ReadOutcome::Finished));
    p.run();
    assert_eq!(
        p.a.open(1),
        Err(OpenError::TooManyStreams),
        "a still reads it"
    );
    assert_eq!(drain(&mut p.a, ids[0]).1, Ok(ReadOutcome::Finished));
    assert!(events(&mut p.a).contains(&Event::CanOpen));
    p.run(); // b's StreamsCredit
    let id = p.a.open(1).unwrap();
    assert_eq!(id, StreamId::new(Side::Dialer, 4).unwrap());
}

#[test]
fn the_peer_stream_count_is_credit_not_configuration() {
    // a allows 4 streams of b's, b's own limit is 8: b is refused at 4.
    let mut p = Pair::new(
        cfg(),
        StreamConfig {
            max_streams: 8,
            ..cfg()
        },
    );
    for _ in 0..4 {
        p.b.open(2).unwrap();
    }
    assert_eq!(p.b.open(2), Err(OpenError::TooManyStreams));
    p.run();
}

/// A peer's records fed straight in (the peer is `Dialer`, we listen).
fn hostile(records: Vec<StreamRecord>) -> (Streams, Result<(), Violation>) {
    let mut s = Streams::new(Side::Listener, cfg());
    let mut result = Ok(());
    for r in records {
        result = s.handle_record(r);
        if result.is_err() {
            break;
        }
    }
    (s, result)
}

fn limits() -> StreamRecord {
    StreamRecord::Limits {
        stream_window: 1 << 20,
        connection_window: 1 << 20,
        max_streams: 10,
    }
}

fn d(index: u64) -> StreamId {
    StreamId::new(Side::Dialer, index).unwrap()
}

fn open(index: u64) -> StreamRecord {
    StreamRecord::Open {
        id: d(index),
        channel: 1,
    }
}

fn data(index: u64, offset: u64, len: usize) -> StreamRecord {
    StreamRecord::Data {
        id: d(index),
        offset,
        payload: Bytes::from(vec![0u8; len]),
    }
}

#[test]
fn hostile_records_are_violations_that_fail_every_stream() {
    use Violation as V;
    let cases: Vec<(Vec<StreamRecord>, Violation)> = vec![
        (vec![open(0)], V::LimitsMissing),
        (vec![limits(), limits()], V::DuplicateLimits),
        (vec![limits(), open(1)], V::UnexpectedOpen(d(1))),
        (vec![limits(), open(0), open(0)], V::UnexpectedOpen(d(0))),
        (
            vec![
                limits(),
                StreamRecord::Open {
                    id: StreamId::new(Side::Listener, 0).unwrap(),
                    channel: 1,
                },
            ],
            V::UnexpectedOpen(StreamId::new(Side::Listener, 0).unwrap()),
        ),
        (
            vec![limits(), open(0), open(1), open(2), open(3), open(4)],
            V::TooManyStreams(d(4)),
        ),
        (vec![limits(), data(0, 0, 1)], V::UnknownStream(d(0))),
        (
            vec![limits(), StreamRecord::Stop { id: d(3), code: 0 }],
            V::UnknownStream(d(3)),
        ),
        (
            vec![limits(), open(0), data(0, 0, 64 * 1024 + 1)],
            V::StreamCreditExceeded(d(0)),
        ),
        (
            vec![
                limits(),
                open(0),
                open(1),
                open(2),
                data(0, 0, 60_000),
                data(1, 0, 60_000),
                data(2, 0, 20_000),
            ],
            V::ConnectionCreditExceeded,
        ),
        (
            vec![limits(), open(0), data(0, 0, 10), data(0, 5, 10)],
            V::OffsetMismatch {
                id: d(0),
                expected: 10,
                got: 5,
            },
        ),
        (
            vec![
                limits(),
                open(0),
                data(0, 0, 10),
                StreamRecord::Finish {
                    id: d(0),
                    final_size: 10,
                },
                data(0, 10, 1),
            ],
            V::DataAfterFinish(d(0)),
        ),
        (
            vec![
                limits(),
                open(0),
                StreamRecord::Reset {
                    id: d(0),
                    code: 1,
                    final_size: 0,
                },
                StreamRecord::Finish {
                    id: d(0),
                    final_size: 0,
                },
            ],
            V::DataAfterFinish(d(0)),
        ),
        (
            vec![
                limits(),
                open(0),
                data(0, 0, 10),
                StreamRecord::Finish {
                    id: d(0),
                    final_size: 11,
                },
            ],
            V::FinalSizeMismatch {
                id: d(0),
                expected: 10,
                got: 11,
            },
        ),
    ];
    for (records, want) in cases {
        let (mut s, got) = hostile(records.clone());
        assert_eq!(got, Err(want), "{records:?}");
        assert_eq!(s.lost(), Some(CloseReason::ProtocolViolation));
        assert_eq!(s.stream_count(), 0);
        assert!(s.poll_transmit(1 << 16).is_none());
        assert!(s.buffered_bytes() == 0);
        // Sticky: more records change nothing.
        assert_eq!(s.handle_record(limits()), Ok(()));
        assert!(!want.label().is_empty());
    }
}

#[test]
fn records_for_a_released_stream() {
    // Peer stream 0: both halves end and the app saw the end: released.
    let (mut s, r) = hostile(vec![limits(), open(0)]);
    r.unwrap();
    s.finish(d(0)).unwrap();
    while s.poll_transmit(1 << 16).is_some() {}
    s.handle_record(StreamRecord::Finish {
        id: d(0),
        final_size: 0,
    })
    .unwrap();
    assert_eq!(s.read(d(0), &mut [0; 1]), Ok(ReadOutcome::Finished));
    assert_eq!(s.stream_count(), 0);
    // A Stop or credit racing our end is ignored.
    s.handle_record(StreamRecord::Stop { id: d(0), code: 1 })
        .unwrap();
    s.handle_record(StreamRecord::StreamCredit {
        id: d(0),
        max_offset: 1 << 30,
    })
    .unwrap();
    // Data cannot come after the peer's own Finish: a violation.
    assert_eq!(
        s.handle_record(data(0, 0, 1)),
        Err(Violation::ClosedStream(d(0)))
    );
}

#[test]
fn a_peer_that_never_reads_costs_only_its_windows() {
    let mut p = Pair::new(cfg(), cfg());
    let ids: Vec<_> = (0..4).map(|_| p.a.open(1).unwrap()).collect();
    for _ in 0..10 {
        for &id in &ids {
            let _ = p.a.write(id, &[0u8; 50_000]);
        }
        p.run();
        assert!(p.b.buffered_bytes() <= cfg().connection_window);
    }
    assert_eq!(p.b.buffered_bytes(), cfg().connection_window);
    for &id in &ids {
        assert_eq!(p.a.write(id, &[0u8; 1]), Err(WriteError::Blocked));
    }
}

#[test]
fn close_all_fails_every_stream() {
    let mut p = Pair::new(cfg(), cfg());
    let s1 = p.a.open(1).unwrap();
    let s2 = p.a.open(1).unwrap();
    p.a.write(s1, b"abc").unwrap();
    p.run();
    events(&mut p.a);
    p.a.close_all(CloseReason::IdleTimeout);
    let lost = CloseReason::IdleTimeout;
    assert_eq!(
        events(&mut p.a),
        vec![
            Event::Lost {
                id: s1,
                reason: lost
            },
            Event::Lost {
                id: s2,
                reason: lost
            }
        ]
    );
    assert_eq!(p.a.write(s1, b"x"), Err(WriteError::ConnectionLost(lost)));
    assert_eq!(p.a.finish(s2), Err(WriteError::ConnectionLost(lost)));
    assert_eq!(p.a.read(s1, &mut [0]), Err(ReadError::ConnectionLost(lost)));
    assert_eq!(p.a.stop(s1, 0), Err(ReadError::ConnectionLost(lost)));
    assert_eq!(p.a.open(1), Err(OpenError::ConnectionLost(lost)));
    assert!(p.a.poll_transmit(1 << 16).is_none());
    assert_eq!(p.a.pending_bytes(), 0);
    p.a.close_all(CloseReason::Normal);
    assert_eq!(p.a.lost(), Some(lost), "sticky");
}

#[test]
fn budget_too_small_holds_the_record_back() {
    let mut a = Streams::new(Side::Dialer, cfg());
    assert!(a.poll_transmit(10).is_none());
    assert!(a.has_transmit());
    assert!(a.poll_transmit(27).is_some());
}

/// One operation of the random interleaving test.
#[derive(Debug, Clone)]
enum Op {
    Open(bool),
    Write(bool, usize, usize),
    Finish(bool, usize),
    Reset(bool, usize),
    Stop(bool, usize),
    Read(bool, usize, usize),
    Move(bool, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let side = any::<bool>();
    prop_oneof![
        side.prop_map(Op::Open),
        (side, 0usize..8, 1usize..20_000).prop_map(|(s, i, n)| Op::Write(s, i, n)),
        (side, 0usize..8).prop_map(|(s, i)| Op::Finish(s, i)),
        (side, 0usize..8).prop_map(|(s, i)| Op::Reset(s, i)),
        (side, 0usize..8).prop_map(|(s, i)| Op::Stop(s, i)),
        (side, 0usize..8, 1usize..30_000).prop_map(|(s, i, n)| Op::Read(s, i, n)),
        (side, 18usize..5000).prop_map(|(s, b)| Op::Move(s, b)),
        (side, 18usize..5000).prop_map(|(s, b)| Op::Move(s, b)),
        (side, 18usize..5000).prop_map(|(s, b)| Op::Move(s, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any interleaving of calls on both sides: a conforming pair never
    /// sees a violation, buffers stay within the windows, and what a side
    /// reads is a prefix of what the other wrote on that stream.
    #[test]
    fn random_interleavings_keep_the_invariants(ops in proptest::collection::vec(op(), 1..300)) {
        let c = StreamConfig { stream_window: 16 * KIB, connection_window: 24 * KIB, ..cfg() };
        let mut p = Pair::new(c, c);
        let mut ids: Vec<StreamId> = Vec::new();
        // (stream, writer is a) -> bytes written / read.
        let mut written: std::collections::HashMap<(StreamId, bool), Vec<u8>> = Default::default();
        let mut read: std::collections::HashMap<(StreamId, bool), Vec<u8>> = Default::default();
        let mut counter = 0u8;
        for op in ops {
            match op {
                Op::Open(a) => {
                    let s = if a { &mut p.a } else { &mut p.b };
                    if let Ok(id) = s.open(0) {
                        ids.push(id);
                    }
                }
                Op::Write(a, i, n) => {
                    if let Some(&id) = ids.get(i) {
                        let s = if a { &mut p.a } else { &mut p.b };
                        let bytes: Vec<u8> = (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                        if let Ok(k) = s.write(id, &bytes) {
                            written.entry((id, a)).or_default().extend_from_slice(&bytes[..k]);
                        }
                    }
                }
                Op::Finish(a, i) => if let Some(&id) = ids.get(i) {
                    let _ = if a { p.a.finish(id) } else { p.b.finish(id) };
                },
                Op::Reset(a, i) => if let Some(&id) = ids.get(i) {
                    let _ = if a { p.a.reset(id, 1) } else { p.b.reset(id, 1) };
                },
                Op::Stop(a, i) => if let Some(&id) = ids.get(i) {
                    let _ = if a { p.a.stop(id, 2) } else { p.b.stop(id, 2) };
                },
                Op::Read(a, i, n) => if let Some(&id) = ids.get(i) {
                    let s = if a { &mut p.a } else { &mut p.b };
                    let mut buf = vec![0u8; n];
                    if let Ok(ReadOutcome::Data(k)) = s.read(id, &mut buf) {
                        // Reader a reads what b wrote.
                        read.entry((id, !a)).or_default().extend_from_slice(&buf[..k]);
                    }
                },
                Op::Move(a, budget) => { p.step(a, budget); }
            }
            for s in [&p.a, &p.b] {
                prop_assert!(s.buffered_bytes() <= c.connection_window);
                prop_assert!(s.pending_bytes() <= c.send_buffer);
            }
            while p.a.poll_event().is_some() {}
            while p.b.poll_event().is_some() {}
        }
        p.run();
        for (key, got) in &read {
            let sent = written.get(key).map(Vec::as_slice).unwrap_or_default();
            prop_assert!(sent.starts_with(got), "read bytes are not a prefix of the written ones");
        }
    }
}
