//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same target bodies libFuzzer runs (`shoal_wire::fuzzing`), so every corpus
//! entry and every regression input is checked by `cargo test --workspace`.
//! Needs the crate's `fuzzing` feature (`required-features`), which the
//! workspace's test run turns on through the root package's dev-dependencies.

use shoal_wire::fuzzing::{corpus_dir, replay_corpus as replay};

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", shoal_wire::fuzzing::frame_decoder);
}

#[test]
fn record_reader_corpus() {
    replay("record_reader", shoal_wire::fuzzing::record_reader);
}

#[test]
fn chunk_assembler_corpus() {
    replay("chunk_assembler", shoal_wire::fuzzing::chunk_assembler);
}

#[test]
fn stream_records_corpus() {
    replay("stream_records", shoal_wire::fuzzing::stream_records);
}

#[test]
fn decompress_corpus() {
    replay("decompress", shoal_wire::fuzzing::decompress);
}

/// Writes the hand-made seeds (valid encodings and known edge cases) into
/// `fuzz/corpus/<target>/seed-*`. Run explicitly:
/// `cargo test -p shoal-wire --features fuzzing --test corpus_replay -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes into fuzz/corpus; run explicitly to regenerate the seeds"]
fn write_seed_corpus() {
    use bytes::{Bytes, BytesMut};
    use shoal_wire::*;

    fn write(target: &str, name: &str, data: &[u8]) {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }

    // record_reader: one plaintext per kind, and one with every kind.
    let peer = PeerRecord {
        public_key: Bytes::from_static(&[7; 32]),
        socket: Bytes::from_static(&[10, 0, 0, 1, 0x1f, 0x90]),
        timestamp: 1_700_000_000_000,
        signature: Bytes::from_static(&[9; 64]),
    };
    let header = DataHeader {
        channel: 3,
        message_id: 42,
        part: 1,
        total_parts: 3,
        total_len: 3000,
        compressed: true,
        request_id: 5,
        status: 1,
    };
    let records: Vec<(&str, Record)> = vec![
        (
            "key_confirmation",
            Record::KeyConfirmation(KeyConfirmation {
                mac: Bytes::from_static(&[1; 32]),
            }),
        ),
        (
            "data",
            Record::Data(header.to_data(Bytes::from_static(b"payload bytes"))),
        ),
        (
            "rpc_request",
            Record::RpcRequest(
                DataHeader {
                    status: 0,
                    ..header
                }
                .to_data(Bytes::from_static(b"req")),
            ),
        ),
        (
            "rpc_response",
            Record::RpcResponse(header.to_data(Bytes::from_static(b"resp"))),
        ),
        (
            "bit_vec",
            Record::BitVec(BitVec {
                index: 3,
                bits: Bytes::from_static(&[0xa5, 0x01]),
            }),
        ),
        (
            "peers",
            Record::Peers(Peers {
                peers: vec![peer.clone(), PeerRecord::default()],
            }),
        ),
        ("ping", Record::Ping(Ping { nonce: 77 })),
        ("pong", Record::Pong(Pong { nonce: u64::MAX })),
        (
            "find_node",
            Record::FindNode(FindNode {
                query_id: 8,
                target: Bytes::from_static(&[3; 32]),
            }),
        ),
        (
            "nodes",
            Record::Nodes(Nodes {
                query_id: 8,
                nodes: vec![peer],
            }),
        ),
        (
            "close",
            Record::Close(Close {
                reason: 1,
                detail: "protocol violation".into(),
            }),
        ),
    ];
    let mut all = BytesMut::new();
    for (name, rec) in &records {
        let mut one = BytesMut::new();
        rec.write_to(&mut RecordWriter::new(&mut one, usize::MAX))
            .unwrap();
        write("record_reader", name, &one);
        rec.write_to(&mut RecordWriter::new(&mut all, usize::MAX))
            .unwrap();
    }
    write("record_reader", "all_kinds", &all);

    // frame_decoder: [max - 1, pattern] ++ stream.
    let mut stream = vec![255u8, 3];
    for body in [&b"hello"[..], &[0u8; 200][..], &all[..250]] {
        stream.extend_from_slice(&encode_header(body.len()));
        stream.extend_from_slice(body);
    }
    write("frame_decoder", "three_frames", &stream);
    stream[1] = 0x80; // feed exactly `wanted()`
    write("frame_decoder", "three_frames_wanted", &stream);
    write(
        "frame_decoder",
        "four_gib",
        &[255, 0, 0xff, 0xff, 0xff, 0xff],
    );
    write(
        "frame_decoder",
        "empty_frame",
        &[10, 1, 0, 0, 0, 1, b'x', 0, 0, 0, 0],
    );
    write(
        "frame_decoder",
        "max_plus_one",
        &[9, 0x40, 0, 0, 0, 10, 1, 2, 3],
    );

    // chunk_assembler: ops [kind, id, part, total_parts, len_hi, len_lo, payload_len].
    let mut ops = Vec::new();
    ops.extend_from_slice(&[0, 1, 0, 3, 0, 20, 8]); // msg 1 part 0 of 3, 20 bytes
    ops.extend_from_slice(&[4, 2, 0, 1, 0, 5, 5]); // rpc single part
    ops.extend_from_slice(&[0, 1, 1, 3, 0, 20, 8]);
    ops.extend_from_slice(&[0x48, 3, 0, 2, 0x02, 0x00, 255]); // msg 3, 512 bytes, compressed
    ops.extend_from_slice(&[0, 1, 2, 3, 0, 20, 4]); // msg 1 complete
    ops.extend_from_slice(&[0x48, 3, 1, 2, 0x02, 0x00, 255]); // msg 3 short: mismatch
    write("chunk_assembler", "interleaved", &ops);
    write(
        "chunk_assembler",
        "budget",
        &[
            0, 1, 0, 2, 0x03, 0x00, 200, 0, 2, 0, 2, 0x03, 0x00, 200, 0, 3, 0, 2, 0x03, 0x00, 200,
            0, 4, 0, 2, 0x01, 0x00, 200,
        ],
    );

    // decompress: [mode] ++ input.
    let text: Vec<u8> = b"shoal wire ".iter().cycle().take(5000).copied().collect();
    let mut with_size = vec![0u8];
    with_size.extend_from_slice(&compress(3, &text).unwrap());
    write("decompress", "with_size", &with_size);
    let mut no_size = vec![0u8];
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.window_log(13).unwrap();
    std::io::Write::write_all(&mut enc, &text).unwrap();
    no_size.extend_from_slice(&enc.finish().unwrap());
    write("decompress", "no_size", &no_size);
    let mut small_max = with_size.clone();
    small_max[0] = 2; // bound of 128 bytes
    write("decompress", "small_max", &small_max);
    let mut round_trip = vec![1u8];
    round_trip.extend_from_slice(&text[..300]);
    write("decompress", "round_trip", &round_trip);
}
