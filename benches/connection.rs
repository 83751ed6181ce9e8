//! The engine's per-message CPU cost without I/O, against its crypto floor.
//!
//! - `hop/shoal`: one message through an established sans-IO connection
//!   pair, as a shard handles it: `send` on one side, `poll_transmit` (record
//!   framing, sealing, the frame header), `handle_input` on the other side, then
//!   `poll_event` until the message comes out (frame split, open, record
//!   decode). Configured by `Config::recommended(..).connection_config()`.
//! - `hop/ring`: the same payload sealed and opened with raw `ring`
//!   `LessSafeKey` in one reused buffer: the part of a hop no engine can
//!   avoid.
//!
//! The difference is what the engine adds per message beyond crypto (the
//! round trip of `shoal bench --scenario shard-rtt` pays it twice, plus the
//! drivers' syscalls). One message per frame here, as in a ping-pong; under
//! load many messages share a frame and its header.
//!
//! `cargo bench --bench connection -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use shoal::engine::__private::connection::{
    self as conn, ChannelLimit, ChannelLookup, Connection, ConnectionConfig, Event, Outgoing,
    Priority,
};
use shoal::{Config, Ed25519Signer, Identity};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const TAG_LEN: usize = 16;

struct OneChannel;

impl ChannelLookup for OneChannel {
    fn limit(&self, channel: u32) -> Option<ChannelLimit> {
        (channel == 1).then_some(ChannelLimit { max_size: 1 << 20 })
    }
}

fn conn_config(seed: u64) -> Arc<ConnectionConfig> {
    let identity: Identity = Arc::new(Ed25519Signer::insecure_from_seed(seed));
    Arc::new(conn::config(
        &Config::recommended(None).with_identity(identity),
    ))
}

/// An established pair (handshake driven to completion in memory).
fn established(t0: Instant) -> (Connection, Connection) {
    let (ca, cb) = (conn_config(1), conn_config(2));
    let peer = cb.identity.public_key().clone();
    let mut a = Connection::dialer(ca, Arc::new(OneChannel), Arc::new(|_| true), peer, t0);
    let mut b = Connection::dialee(cb, Arc::new(OneChannel), Arc::new(|_| true), t0);
    let (mut up_a, mut up_b) = (false, false);
    for _ in 0..100 {
        if let Some(bytes) = a.poll_transmit() {
            b.handle_input(&bytes, t0);
        }
        if let Some(bytes) = b.poll_transmit() {
            a.handle_input(&bytes, t0);
        }
        while let Some(e) = a.poll_event(t0) {
            up_a |= matches!(e, Event::Established { .. });
        }
        while let Some(e) = b.poll_event(t0) {
            up_b |= matches!(e, Event::Established { .. });
        }
        if up_a && up_b {
            return (a, b);
        }
    }
    panic!("the in-memory handshake did not complete");
}

fn hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("hop");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("shoal", size), &size, |bch, &size| {
            let t0 = Instant::now();
            let (mut a, mut b) = established(t0);
            let payload = Bytes::from(vec![0xa5u8; size]);
            bch.iter(|| {
                a.send(
                    Outgoing::data(1, payload.clone(), false),
                    Priority::Low,
                    None,
                )
                .expect("queue has room");
                let frame = a.poll_transmit().expect("a frame");
                b.handle_input(&frame, t0);
                let mut got = 0;
                while let Some(e) = b.poll_event(t0) {
                    if let Event::Message { payload, .. } = e {
                        got += payload.len();
                    }
                }
                assert_eq!(got, size, "the message came out whole");
                black_box(got)
            });
        });
        group.bench_with_input(BenchmarkId::new("ring", size), &size, |bch, &size| {
            let key = LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &[0x42; 32]).expect("32-byte key"),
            );
            let mut buf = vec![0xa5u8; size + TAG_LEN];
            let mut seq = 0u64;
            let nonce = |seq: u64| {
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&seq.to_be_bytes());
                Nonce::assume_unique_for_key(n)
            };
            bch.iter(|| {
                let (data, tag_out) = buf.split_at_mut(size);
                let tag = key
                    .seal_in_place_separate_tag(nonce(seq), Aad::empty(), data)
                    .expect("seal");
                tag_out.copy_from_slice(tag.as_ref());
                let opened = key
                    .open_in_place(nonce(seq), Aad::empty(), black_box(&mut buf))
                    .expect("open")
                    .len();
                seq += 1;
                black_box(opened)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hop);
criterion_main!(benches);
