//! Fuzz target bodies, shared by libFuzzer and the corpus replay test.
//!
//! # Design
//!
//! Each function takes arbitrary bytes, drives one decoder with them, and
//! asserts invariants beyond "does not panic": frame bodies never exceed the
//! maximum and match a straightforward reference parser, records re-encode to
//! what they decoded from, reassembly matches a model of the accepted parts
//! and its budget is never exceeded, decompression never outputs more than
//! its bound and agrees with zstd's own decoder. `fuzz/fuzz_targets/*.rs`
//! call these under libFuzzer; `tests/corpus_replay.rs` replays the committed
//! corpus through the same code in a normal `cargo test`.
//!
//! # Security
//!
//! This module is test harness, not API: it panics (by design) when an
//! invariant is violated. It is `#[doc(hidden)]` and has no stability promise.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::chunk::{ChunkAssembler, ChunkError, ChunkLimits};
use crate::compress;
use crate::frame::{FrameDecoder, FrameError, HEADER_LEN};
use crate::message::{Data, RecordKind};
use crate::record::{DataHeader, Record, RecordError, RecordReader, RecordWriter};

/// Reference frame parser over the whole stream: the frames and the error (if
/// any) a correct decoder must report, in order.
fn reference_frames(mut s: &[u8], max: usize) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    while s.len() >= HEADER_LEN {
        let len = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if len == 0 {
            return (frames, Some(FrameError::Empty));
        }
        if len > max {
            return (
                frames,
                Some(FrameError::TooLarge {
                    len: len as u64,
                    max,
                }),
            );
        }
        if s.len() - HEADER_LEN < len {
            break;
        }
        frames.push(&s[HEADER_LEN..HEADER_LEN + len]);
        s = &s[HEADER_LEN + len..];
    }
    (frames, None)
}

/// `data[0]` picks the maximum body (1..=256), `data[1]` the feed pattern; the
/// rest is the stream.
pub fn frame_decoder(data: &[u8]) {
    let [a, b, stream @ ..] = data else { return };
    let max = usize::from(*a) + 1;
    let (want_frames, want_err) = reference_frames(stream, max);

    let mut dec = FrameDecoder::new(max);
    let mut got = Vec::new();
    let mut err = None;
    let mut pos = 0;
    let mut step = 0usize;
    while pos < stream.len() && err.is_none() {
        assert!(dec.wanted() <= HEADER_LEN + max);
        // Feed pattern: exactly `wanted()` bytes, or 1..=16 bytes cycling.
        let n = if *b & 0x80 != 0 {
            dec.wanted().max(1)
        } else {
            (usize::from(*b) + step) % 16 + 1
        };
        step += 1;
        let mut end = (pos + n).min(stream.len());
        // Received straight into the decoder's buffer, or copied in (also
        // when the decoder asks for a decode first).
        let lent = if *b & 0x40 != 0 {
            dec.lend(end - pos)
        } else {
            None
        };
        match lent {
            Some(mut lent) => {
                end = end.min(pos + lent.want());
                lent.buf_mut().extend_from_slice(&stream[pos..end]);
                assert_eq!(dec.feed_lent(lent), end - pos);
            }
            None => dec.feed(&stream[pos..end]),
        }
        pos = end;
        loop {
            match dec.decode() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= max);
                    got.push(body);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.decode(), Err(e.clone()), "errors are sticky");
                    assert_eq!(dec.wanted(), 0);
                    err = Some(e);
                    break;
                }
            }
        }
        if err.is_none() && dec.buffered() == 0 {
            dec.shrink_if_idle();
        }
    }
    assert_eq!(got.len(), want_frames.len());
    for (g, w) in got.iter().zip(&want_frames) {
        assert_eq!(&g[..], *w);
    }
    assert_eq!(err, want_err);
    if err.is_none() {
        assert!(dec.buffered() < HEADER_LEN + max);
    }
}

/// Re-encodes one decoded record and checks it decodes to itself.
fn check_reencode(rec: &Record) {
    let mut buf = BytesMut::new();
    let mut w = RecordWriter::new(&mut buf, usize::MAX);
    rec.write_to(&mut w).expect("unbounded budget");
    let bytes = buf.freeze();
    if let Record::Data(d) | Record::RpcRequest(d) | Record::RpcResponse(d) = rec {
        let mut direct = BytesMut::new();
        RecordWriter::new(&mut direct, usize::MAX)
            .push_data(rec.kind(), &DataHeader::of(d), &d.payload)
            .expect("unbounded budget");
        assert_eq!(direct, bytes, "push_data differs from prost");
        assert_eq!(
            crate::record::data_record_len(&DataHeader::of(d), d.payload.len()),
            bytes.len()
        );
    }
    let again: Vec<_> = RecordReader::new(bytes).collect();
    assert_eq!(again, vec![Ok(rec.clone())]);
}

/// Any bytes as one frame plaintext.
pub fn record_reader(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    let range = input.as_ptr_range();
    let mut errors = 0;
    let mut records = 0;
    let mut reader = RecordReader::new(input.clone());
    for item in reader.by_ref() {
        assert_eq!(errors, 0, "an item after an error");
        match item {
            Ok(rec) => {
                records += 1;
                if let Record::Data(d) | Record::RpcRequest(d) | Record::RpcResponse(d) = &rec {
                    if !d.payload.is_empty() {
                        let p = d.payload.as_ptr_range();
                        assert!(
                            range.start <= p.start && p.end <= range.end,
                            "payload copied"
                        );
                    }
                }
                check_reencode(&rec);
            }
            Err(e) => {
                errors += 1;
                if data.is_empty() {
                    assert_eq!(e, RecordError::Empty);
                }
            }
        }
    }
    assert!(reader.next().is_none(), "iteration resumed after the end");
    assert!(records + errors >= 1, "an empty plaintext must yield Empty");
}

const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_in_progress_bytes: 1000,
    max_in_progress_messages: 3,
    min_chunk_size: 8,
};
const CHUNK_MAX_SIZE: usize = 700;

/// Ops of 7 bytes: kind, id, part, total_parts, total_len (2 bytes), payload
/// length. Payload bytes are derived from (id, part, offset) so reassembly
/// errors show up as content mismatches.
pub fn chunk_assembler(data: &[u8]) {
    let mut a = ChunkAssembler::new(CHUNK_LIMITS);
    // message id -> (claimed total_len, bytes accepted so far)
    let mut model: HashMap<u64, (usize, Vec<u8>)> = HashMap::new();
    for op in data.chunks_exact(7) {
        let kind = match op[0] % 8 {
            0..=3 => RecordKind::Data,
            4 | 5 => RecordKind::RpcRequest,
            6 => RecordKind::RpcResponse,
            _ => RecordKind::Ping,
        };
        let id = u64::from(op[1] % 5);
        let part = u32::from(op[2] % 6);
        let total_parts = u32::from(op[3] % 7);
        let total_len = u64::from(u16::from_be_bytes([op[4], op[5]]) % 1024);
        let payload_len = usize::from(op[6]);
        let payload: Vec<u8> = (0..payload_len)
            .map(|i| (id as usize * 31 + part as usize * 7 + i) as u8)
            .collect();
        let d = Data {
            channel: u32::from(op[0] >> 4),
            message_id: id,
            part,
            total_parts,
            total_len,
            compressed: op[0] & 0x08 != 0,
            payload: Bytes::from(payload.clone()),
            request_id: u64::from(op[0] >> 6),
            status: 0,
        };
        match a.push(kind, d, CHUNK_MAX_SIZE) {
            Ok(Some(m)) => {
                assert_eq!(m.payload.len() as u64, total_len);
                assert!(m.payload.len() <= CHUNK_MAX_SIZE);
                assert_eq!(m.kind, kind);
                if total_parts == 1 {
                    assert_eq!(m.payload, payload);
                } else {
                    let (claim, mut acc) = model.remove(&id).expect("completed an unknown message");
                    assert_eq!(claim as u64, total_len);
                    acc.extend_from_slice(&payload);
                    assert_eq!(m.payload, acc);
                }
            }
            Ok(None) => {
                assert!(total_parts > 1);
                if part == 0 {
                    assert!(model.insert(id, (total_len as usize, payload)).is_none());
                } else {
                    model
                        .get_mut(&id)
                        .expect("resumed an unknown message")
                        .1
                        .extend_from_slice(&payload);
                }
            }
            Err(e) => {
                if let ChunkError::Duplicate { .. } = e {
                    assert!(model.contains_key(&id));
                }
                if !a.contains(id) {
                    model.remove(&id);
                }
            }
        }
        assert!(a.in_progress_bytes() <= CHUNK_LIMITS.max_in_progress_bytes);
        assert!(a.in_progress_messages() <= CHUNK_LIMITS.max_in_progress_messages);
        assert_eq!(a.in_progress_messages(), model.len());
        assert_eq!(
            a.in_progress_bytes(),
            model.values().map(|(c, _)| c).sum::<usize>()
        );
        for (id, (claim, acc)) in &model {
            assert!(a.contains(*id));
            assert!(acc.len() <= *claim);
        }
    }
}

const DECOMPRESS_MAX: usize = 64 * 1024;

/// `data[0]` even: decompress the rest (bounded, and checked against zstd's
/// own decoder); odd: compress the rest and check the round trip and bound.
pub fn decompress(data: &[u8]) {
    let [mode, rest @ ..] = data else { return };
    if mode % 2 == 0 {
        let max = if mode % 4 == 0 {
            DECOMPRESS_MAX
        } else {
            usize::from(*mode) * 64
        };
        if let Ok(out) = compress::decompress(rest, max) {
            assert!(out.len() <= max);
            // A single frame within the bound: zstd's own decoder must agree.
            let reference = zstd::stream::decode_all(rest).expect("zstd rejects what we accepted");
            assert_eq!(&out[..], &reference[..]);
        }
    } else {
        let level = i32::from(mode / 2 % 4);
        let c = compress::compress(level, rest).expect("compress");
        let out = compress::decompress(&c, rest.len()).expect("round trip");
        assert_eq!(&out[..], rest);
        if !rest.is_empty() {
            assert_eq!(
                compress::decompress(&c, rest.len() - 1),
                Err(compress::DecompressError::TooLarge {
                    max: rest.len() - 1
                })
            );
        }
    }
}

/// `fuzz/corpus/<target>` of this repository (every crate's fuzz targets
/// keep their corpus there).
pub fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s committed corpus through `run` (the same
/// body libFuzzer runs); panics naming the first input that fails, or when
/// the corpus is empty. Used by each crate's `tests/corpus_replay.rs`.
pub fn replay_corpus(target: &str, run: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} missing: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: {} failed", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
    eprintln!("{target}: replayed {n} inputs");
}

/// Stream records: `data` is a sequence of `len: u8 ‖ len bytes` bodies.
/// Each body parses or gives a typed error; a parsed one re-emits to the
/// same bytes; parsed records are fed to a listener's [`Streams`], whose
/// buffers never exceed its windows, and which after a violation is failed
/// for good.
pub fn stream_records(data: &[u8]) {
    use crate::stream::{Side, StreamConfig, StreamRecord, Streams};
    let cfg = StreamConfig {
        stream_window: 1024,
        connection_window: 2048,
        max_streams: 3,
        max_record_payload: 256,
        send_buffer: 1024,
    };
    let mut s = Streams::new(Side::Listener, cfg);
    let mut rest = data;
    let mut violated = false;
    while let [len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let body = Bytes::copy_from_slice(body);
        let Ok(rec) = StreamRecord::parse(&body) else {
            continue;
        };
        let mut out = BytesMut::new();
        rec.emit(&mut RecordWriter::new(&mut out, usize::MAX))
            .expect("unbounded writer");
        assert_eq!(&out[out.len() - body.len()..], &body[..], "not canonical");
        assert_eq!(out.len(), rec.record_len());
        if s.handle_record(rec).is_err() {
            violated = true;
        }
        assert!(s.buffered_bytes() <= cfg.connection_window);
        assert!(s.stream_count() <= 2 * cfg.max_streams as usize);
        if violated {
            assert!(s.lost().is_some());
            assert_eq!(s.stream_count(), 0);
        }
        while s.poll_transmit(300).is_some() {}
        while s.poll_event().is_some() {}
    }
}
