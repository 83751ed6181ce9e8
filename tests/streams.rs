//! Byte streams over real loopback sockets, on both backends and on one and
//! two shards: a large checksummed transfer beside high-priority messages,
//! many concurrent streams, reset / stop / refusal, a reader that never
//! reads, and a connection that ends under its streams.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::streams::REFUSED;
use shoal::{
    Backend, DisconnectReason, Network, NetworkHandle, Priority, RecvStream, SendStream,
    StreamError, StreamListener,
};

/// The stream channel every test node registers.
const STREAMS: u32 = 7;
/// A message channel beside it.
const VOTES: u32 = 1;
/// `streams.window` of the test nodes.
const WINDOW: u64 = 256 << 10;

struct StreamNode {
    node: Node,
    listener: Option<StreamListener>,
}

/// A node (`seed`) authorizing `peers`, with the stream channel unless
/// `no_streams`, and a connection window of `connection_window`.
fn start_with(
    backend: Backend,
    seed: u64,
    peers: &[u64],
    streams: bool,
    connection_window: u64,
) -> StreamNode {
    let mut cfg = local_config(backend, Some(any_addr())).with_identity(signer(seed));
    cfg.streams.window = WINDOW;
    cfg.streams.connection_window = connection_window;
    cfg.streams.send_buffer = 2 * WINDOW;
    cfg.streams.max_streams = 32;
    let (mut net, oracle) = Network::new(cfg).expect("config");
    let chans = vec![net.register(chan(VOTES).config()).expect("register")];
    let listener = streams.then(|| net.streams(STREAMS, 64).expect("streams"));
    oracle.register(0, peers.iter().map(|s| key(*s)).collect());
    let handle = net.start().expect("start");
    StreamNode {
        node: Node {
            seed,
            addr: handle.local_addr().unwrap(),
            handle: Some(handle),
            oracle,
            channels: chans,
        },
        listener,
    }
}

/// Two connected nodes (seeds 1 and 2); node 1 registers no stream
/// channel when `second_only`.
fn pair(backend: Backend, second_only: bool) -> (StreamNode, StreamNode) {
    pair_with(backend, second_only, 4 * WINDOW)
}

/// [`pair`] with a connection window of `connection_window` on both nodes.
fn pair_with(
    backend: Backend,
    second_only: bool,
    connection_window: u64,
) -> (StreamNode, StreamNode) {
    let a = start_with(backend, 1, &[1, 2, 3], !second_only, connection_window);
    let b = start_with(backend, 2, &[1, 2, 3], true, connection_window);
    a.node.oracle.add_address(b.node.key(), b.node.addr);
    b.node.oracle.add_address(a.node.key(), a.node.addr);
    for n in [&a, &b] {
        assert!(n
            .node
            .handle()
            .wait_peers(WAIT, |p| p.contains(&key(3 - n.node.seed))));
    }
    (a, b)
}

fn open(from: &NetworkHandle, to: &StreamNode) -> (SendStream, RecvStream) {
    from.open_stream(&to.node.key(), STREAMS)
        .blocking()
        .expect("open")
}

fn accept(n: &StreamNode) -> shoal::IncomingStream {
    n.listener
        .as_ref()
        .unwrap()
        .accept()
        .blocking()
        .expect("accept")
}

/// The byte at `offset` of a transfer (not periodic in any chunk size).
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9).rotate_left(13) >> 5) as u8
}

fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(offset + i as u64);
    }
}

/// FNV-1a over `bytes`, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A transfer of `total` bytes through `std::io::Write` / `Read` while 64 B
/// high-priority messages flow the other way and this way on the same
/// connection: every byte arrives in order (checksummed), every message
/// arrives, and the receiving node never holds more stream bytes than its
/// windows allow.
fn large_transfer_beside_messages(backend: Backend) {
    let total: u64 = if shards() == 1 { 1 << 30 } else { 256 << 20 };
    let (a, b) = pair(backend, false);
    let (mut tx, _rx) = open(a.node.handle(), &b);
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let (mut off, mut h) = (0u64, FNV_START);
        while off < total {
            let n = buf.len().min((total - off) as usize);
            fill(&mut buf[..n], off);
            h = fnv(h, &buf[..n]);
            Write::write_all(&mut tx, &buf[..n]).expect("write");
            off += n as u64;
        }
        tx.finish().expect("finish");
        h
    });
    let (votes_tx, votes_rx) = &a.node.channels[0];
    let mut inc = accept(&b);
    assert_eq!(inc.peer, a.node.key());
    assert_eq!(inc.channel, STREAMS);
    let (mut got, mut h, mut sent, mut votes) = (0u64, FNV_START, 0u32, 0u32);
    let mut buf = vec![0u8; 48 << 10];
    let metrics = b.node.handle().metrics();
    let (b_votes_tx, _) = &b.node.channels[0];
    loop {
        let n = Read::read(&mut inc.recv, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        for (i, x) in buf[..n].iter().enumerate() {
            assert_eq!(*x, byte_at(got + i as u64), "byte {}", got + i as u64);
        }
        h = fnv(h, &buf[..n]);
        got += n as u64;
        // A vote every ~4 MiB, each way.
        if got >> 22 > u64::from(sent) {
            sent += 1;
            let vote = Bytes::from(vec![sent as u8; 64]);
            b_votes_tx
                .send_wait(&a.node.key(), vote.clone(), Priority::High)
                .blocking()
                .result()
                .expect("vote b→a");
            votes_tx
                .send_wait(&b.node.key(), vote, Priority::High)
                .blocking()
                .result()
                .expect("vote a→b");
        }
        // What node b holds for the stream: its connection's window plus
        // its pipe (the bytes delivered and not yet read are in `buf`).
        let delivered = metrics.stream_bytes_in.get();
        assert!(
            delivered - got <= WINDOW,
            "pipe holds {} > window",
            delivered - got
        );
    }
    assert_eq!(got, total);
    assert_eq!(h, writer.join().expect("writer"), "checksum");
    let (_, b_votes_rx) = &b.node.channels[0];
    for _ in 0..sent {
        let (from, m) = b_votes_rx.recv_blocking().expect("vote at b");
        assert_eq!((from, m.len()), (a.node.key(), 64));
        let (from, m) = votes_rx.recv_blocking().expect("vote at a");
        assert_eq!((from, m.len()), (b.node.key(), 64));
    }
    votes += sent;
    assert!(votes >= (total >> 22) as u32 - 1);
}

/// 32 streams at once from one node, each echoed back by the other
/// (`std::io::copy` on one thread per stream) and read back on its own
/// thread: every byte comes back in order on its own stream.
///
/// One direction only, on purpose: an echo on *both* nodes can deadlock by
/// design, as in HTTP/2 and QUIC. An echo blocked writing stops reading, its
/// stream's bytes hold the connection window, and the other side's echo
/// blocks the same way (`crate::streams`, "Not provided").
fn many_concurrent_streams(backend: Backend) {
    let (a, b) = pair(backend, false);
    let b = Arc::new(b);
    const EACH: u64 = 1 << 20;
    const COUNT: u64 = 32;
    let echo = {
        let b = b.clone();
        std::thread::spawn(move || {
            let mut threads = Vec::new();
            for _ in 0..COUNT {
                let mut inc = accept(&b);
                threads.push(std::thread::spawn(move || {
                    std::io::copy(&mut inc.recv, &mut inc.send).expect("echo");
                    inc.send.finish().expect("finish");
                }));
            }
            for t in threads {
                t.join().expect("echo thread");
            }
        })
    };
    let mut clients = Vec::new();
    for i in 0..COUNT {
        let (mut tx, mut rx) = open(a.node.handle(), &b);
        clients.push(std::thread::spawn(move || {
            let base = i << 32;
            let writer = std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                let mut off = 0;
                while off < EACH {
                    fill(&mut buf, base + off);
                    tx.write_all(&buf).blocking().expect("write");
                    off += buf.len() as u64;
                }
                tx.finish().expect("finish");
            });
            let mut back = Vec::new();
            rx.read_to_end(&mut back).expect("read back");
            writer.join().expect("writer");
            assert_eq!(back.len() as u64, EACH);
            for (j, x) in back.iter().enumerate() {
                assert_eq!(*x, byte_at(base + j as u64));
            }
        }));
    }
    for c in clients {
        c.join().expect("client");
    }
    echo.join().unwrap();
    wait_until("every stream released", || {
        a.node.handle().metrics().streams_open.get() == 0
            && b.node.handle().metrics().streams_open.get() == 0
    });
}

/// Reset, stop and refusal surface as typed errors on the other side.
fn reset_stop_and_refusal(backend: Backend) {
    // Node 1 registers no stream channel: it takes none, and cannot open.
    let (a, b) = pair(backend, true);
    assert_eq!(
        b.node
            .handle()
            .open_stream(&a.node.key(), STREAMS)
            .blocking()
            .err(),
        Some(StreamError::PeerTakesNoStreams)
    );
    assert_eq!(
        a.node
            .handle()
            .open_stream(&b.node.key(), STREAMS)
            .blocking()
            .err(),
        Some(StreamError::UnknownChannel)
    );

    // A channel the peer has no listener on: refused with typed errors.
    let (a, b) = pair(backend, false);
    let (mut tx, mut rx) = a
        .node
        .handle()
        .open_stream(&b.node.key(), STREAMS + 1)
        .blocking()
        .expect("open");
    let mut buf = [0u8; 16];
    assert_eq!(
        rx.read(&mut buf).blocking(),
        Err(StreamError::Reset(REFUSED))
    );
    let refused = loop {
        match tx.write(b"anyone?").blocking() {
            Ok(_) => std::thread::yield_now(),
            Err(e) => break e,
        }
    };
    assert_eq!(refused, StreamError::Stopped(REFUSED));
    let refusals =
        b.node
            .handle()
            .metrics()
            .streams_refused
            .get_or_create(&shoal::metrics::ReasonLabel {
                reason: "no_listener".into(),
            });
    assert_eq!(refusals.get(), 1);

    // Between two stream nodes: the sender resets, the reader stops.
    let (mut tx, _rx) = open(a.node.handle(), &b);
    tx.write_all(b"partial").blocking().unwrap();
    let mut inc = accept(&b);
    tx.reset(42).unwrap();
    assert_eq!(tx.write(b"more").blocking(), Err(StreamError::Closed));
    let err = loop {
        match inc.recv.read(&mut buf).blocking() {
            Ok(n) => assert!(n > 0, "no clean end after a reset"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, StreamError::Reset(42));

    // A reset after a finish whose end could not go out yet (the reader
    // reads nothing, so bytes beyond its windows wait here): the reader
    // sees the reset, not the end.
    let (mut tx3, _rx3) = open(a.node.handle(), &b);
    let total = 2 * WINDOW as usize + (WINDOW as usize) / 2;
    tx3.write_all(&vec![3u8; total]).blocking().unwrap();
    tx3.finish().unwrap();
    tx3.reset(5).unwrap();
    assert_eq!(tx3.reset(6), Err(StreamError::Closed));
    let mut inc3 = accept(&b);
    let mut read = 0usize;
    let err = loop {
        match inc3.recv.read(&mut buf).blocking() {
            Ok(n) => {
                assert!(n > 0, "the end arrived although the stream was reset");
                read += n;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, StreamError::Reset(5));
    assert!(read < total);

    let (mut tx2, _rx2) = open(a.node.handle(), &b);
    tx2.write_all(b"x").blocking().unwrap();
    let mut inc2 = accept(&b);
    inc2.recv.stop(9).unwrap();
    let stopped = loop {
        match tx2.write(&[0u8; 1024]).blocking() {
            Ok(_) => std::thread::yield_now(),
            Err(e) => break e,
        }
    };
    assert_eq!(stopped, StreamError::Stopped(9));
    // Its other half still works: the acceptor writes, the opener reads.
    inc2.send.write_all(b"reply").blocking().unwrap();
    inc2.send.finish().unwrap();
    let mut reply = Vec::new();
    _rx2.take(5).read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"reply");
}

/// A peer that opens streams and never reads costs its windows, no more:
/// the writers block.
///
/// A stream's credit comes back as its bytes move from the connection into
/// its pipe, so each stream can hold its pipe's window plus up to a window
/// more inside the connection, which the connection window bounds. With
/// that window at four stream windows, those extra bytes of some streams
/// could use up the connection's credit before the last stream's pipe was
/// full, and the pipes then never all filled; at eight, every pipe fills.
fn a_reader_that_never_reads_costs_its_window(backend: Backend) {
    const STREAMS_OPEN: u64 = 4;
    let (a, b) = pair_with(backend, false, 2 * STREAMS_OPEN * WINDOW);
    let accepted = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..STREAMS_OPEN {
        let (mut tx, rx) = open(a.node.handle(), &b);
        let accepted = accepted.clone();
        writers.push(std::thread::spawn(move || {
            let _rx = rx;
            let buf = vec![7u8; 64 << 10];
            loop {
                match tx.write(&buf).blocking() {
                    Ok(n) => accepted.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) => return e,
                };
            }
        }));
    }
    let held: Vec<_> = (0..STREAMS_OPEN).map(|_| accept(&b)).collect();
    let metrics = b.node.handle().metrics();
    // Each of b's pipes fills to its window; nobody reads them.
    wait_until("b's pipes are full", || {
        metrics.stream_bytes_in.get() == STREAMS_OPEN * WINDOW
    });
    // What a's writers got accepted: b's pipes, a window more per stream
    // inside b's connection, a's send buffer, and a's own pipes; whatever
    // the timing.
    let bound = STREAMS_OPEN * WINDOW + STREAMS_OPEN * WINDOW + 2 * WINDOW + STREAMS_OPEN * WINDOW;
    let got = accepted.load(Ordering::Relaxed);
    assert!(got <= bound, "{got} accepted > {bound}");
    assert!(metrics.stream_bytes_in.get() <= STREAMS_OPEN * WINDOW);
    // Stopping them ends the writers.
    for mut h in held {
        h.recv.stop(1).unwrap();
    }
    for w in writers {
        assert_eq!(w.join().unwrap(), StreamError::Stopped(1));
    }
}

/// Streams fail promptly, with the reason, when their connection ends.
fn a_closed_connection_fails_its_streams(backend: Backend) {
    let (a, b) = pair(backend, false);
    let (mut tx, mut rx) = open(a.node.handle(), &b);
    tx.write_all(b"hello").blocking().unwrap();
    let mut inc = accept(&b);
    let mut buf = [0u8; 5];
    inc.recv.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    a.node.handle().disconnect(&b.node.key());
    let err = rx.read(&mut [0u8; 8]).blocking().unwrap_err();
    assert!(
        matches!(err, StreamError::ConnectionLost(DisconnectReason::Local)),
        "{err:?}"
    );
    let err = inc.recv.read(&mut [0u8; 8]).blocking().unwrap_err();
    assert!(matches!(err, StreamError::ConnectionLost(_)), "{err:?}");
    wait_until("streams released", || {
        a.node.handle().metrics().streams_open.get() == 0
            && b.node.handle().metrics().streams_open.get() == 0
    });
    let _ = Duration::ZERO;
}

/// An authenticated peer that writes past the credit it was granted is a
/// protocol violation: its connection is closed with the violation's label
/// (and the misbehavior counted), while the node's other peer keeps
/// streaming.
fn a_peer_exceeding_its_credit_is_closed(backend: Backend) {
    use shoal::wire::stream::{StreamId, StreamRecord};
    use shoal::wire::{encode_header, RecordWriter, TAG_LEN};
    let (a, b) = pair(backend, false);
    let m = b.node.handle().metrics();
    let label = shoal::metrics::ReasonLabel {
        reason: "stream_credit_exceeded".into(),
    };
    let (mut s, mut session) = shoal_testkit::raw_client::dial(
        b.node.addr,
        &b.node.key(),
        signer(3),
        &shoal::Config::local(None),
        WAIT,
    )
    .expect("raw handshake");
    let mut frame = |fill: &dyn Fn(&mut RecordWriter)| {
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&[0u8; 4]);
        fill(&mut RecordWriter::new(&mut buf, 60_000));
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        session.sealer.seal_in_place(&mut buf[4..]).unwrap();
        let header = encode_header(buf.len() - 4);
        buf[..4].copy_from_slice(&header);
        buf.to_vec()
    };
    let id = StreamId(0);
    let hello = frame(&|w| {
        StreamRecord::Limits {
            stream_window: WINDOW,
            connection_window: 4 * WINDOW,
            max_streams: 8,
        }
        .emit(w)
        .unwrap();
        StreamRecord::Open {
            id,
            channel: STREAMS,
        }
        .emit(w)
        .unwrap();
    });
    s.write_all(&hello).unwrap();
    let chunk = Bytes::from(vec![0xabu8; 50_000]);
    let mut offset = 0u64;
    // The window is 256 KiB, and the victim grants at most another window
    // as it moves bytes into its (unread, 256 KiB) pipe: 800 kB overrun it.
    for _ in 0..16 {
        let rec = StreamRecord::Data {
            id,
            offset,
            payload: chunk.clone(),
        };
        if s.write_all(&frame(&|w| rec.emit(w).unwrap())).is_err() {
            break;
        }
        offset += chunk.len() as u64;
    }
    wait_until("the credit violation closes the attacker", || {
        m.closes.get_or_create(&label).get() == 1
    });
    // The honest peer still streams.
    let (mut tx, _rx) = open(a.node.handle(), &b);
    let mut inc = loop {
        let inc = accept(&b);
        if inc.peer == a.node.key() {
            break inc;
        }
    };
    tx.write_all(b"still here").blocking().unwrap();
    tx.finish().unwrap();
    let mut got = Vec::new();
    inc.recv.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"still here");
}

both_backends!(
    a_peer_exceeding_its_credit_is_closed,
    large_transfer_beside_messages,
    many_concurrent_streams,
    reset_stop_and_refusal,
    a_reader_that_never_reads_costs_its_window,
    a_closed_connection_fails_its_streams,
);
