//! shoal-crypto benchmarks.
//!
//! - `seal` / `open`: the record cipher at 64 B, 1 KiB, 4 KiB, 8 KiB,
//!   16 KiB and 64 KiB of plaintext, each size with both backends behind
//!   the record types (`ring`: [`CipherPolicy::ring`]; `openssl`: OpenSSL's
//!   EVP for every record, whatever the CPU) and beside raw `ring`
//!   `LessSafeKey` on the same buffer (`raw-ring`), so the report shows the
//!   backends' crossover (where `io.cipher_threshold` belongs) and the
//!   overhead of the nonce bookkeeping.
//! - `handshake`: complete in-memory handshakes, both sides (throughput is
//!   reported as handshakes per second).
//!
//! `cargo bench --bench crypto -- --warm-up-time 1 --measurement-time 3`
//! (`-- seal` or `-- open` for one group).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use shoal::crypto::{
    CipherPolicy, Ed25519Signer, Handshake, HandshakeConfig, Identity, RecordOpener, RecordSealer,
    TAG_LEN,
};

const SIZES: [usize; 6] = [64, 1024, 4096, 8192, 16 * 1024, 64 * 1024];
const KEY: [u8; 32] = [0x42; 32];

/// The two backends behind the record types, by bench id.
const BACKENDS: [(&str, CipherPolicy); 2] = [
    ("ring", CipherPolicy::ring()),
    ("openssl", CipherPolicy::evp_for_test(0)),
];

fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).expect("32-byte key"))
}

/// The commonware nonce for the dialer at (0, `seq`), as the raw baseline
/// would build it itself.
fn raw_nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = 0x80;
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, policy) in BACKENDS {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                let mut sealer = RecordSealer::with_policy(&KEY, true, policy);
                let mut buf = vec![0xa5u8; size + TAG_LEN];
                b.iter(|| {
                    sealer.seal_in_place(black_box(&mut buf)).expect("seal");
                });
            });
        }
        group.bench_with_input(BenchmarkId::new("raw-ring", size), &size, |b, &size| {
            let key = raw_key();
            let mut seq = 0u64;
            let mut buf = vec![0xa5u8; size + TAG_LEN];
            b.iter(|| {
                let buf = black_box(&mut buf);
                let (data, tag_out) = buf.split_at_mut(size);
                let tag = key
                    .seal_in_place_separate_tag(raw_nonce(seq), Aad::empty(), data)
                    .expect("seal");
                tag_out.copy_from_slice(tag.as_ref());
                seq += 1;
            });
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        // One record sealed at sequence 0; every iteration opens a fresh copy
        // with a fresh opener (both made in the untimed setup).
        let mut sealed = vec![0xa5u8; size + TAG_LEN];
        RecordSealer::new(&KEY, true)
            .seal_in_place(&mut sealed)
            .expect("seal");
        for (name, policy) in BACKENDS {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter_batched_ref(
                    || {
                        (
                            RecordOpener::with_policy(&KEY, true, policy),
                            sealed.clone(),
                        )
                    },
                    |(opener, buf)| opener.open_in_place(black_box(buf)).expect("open"),
                    BatchSize::SmallInput,
                );
            });
        }
        group.bench_with_input(BenchmarkId::new("raw-ring", size), &size, |b, _| {
            b.iter_batched_ref(
                || (raw_key(), sealed.clone()),
                |(key, buf)| {
                    key.open_in_place(raw_nonce(0), Aad::empty(), black_box(buf))
                        .expect("open")
                        .len()
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let dialer_id: Identity = Arc::new(Ed25519Signer::insecure_from_seed(1));
    let dialee_id: Identity = Arc::new(Ed25519Signer::insecure_from_seed(2));
    let dialee_key = dialee_id.public_key().clone();
    let config = Arc::new(HandshakeConfig {
        namespace: b"shoal-bench".to_vec(),
        max_age: Duration::from_secs(10),
        synchrony_bound: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        cipher: CipherPolicy::default(),
    });
    let now = 1_700_000_000_000u64;

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_both_sides", |b| {
        b.iter(|| {
            let mut dialer =
                Handshake::dialer(dialer_id.clone(), dialee_key.clone(), config.clone(), now);
            let mut dialee = Handshake::dialee(dialee_id.clone(), config.clone(), now);
            let mut allow = |_: &shoal::crypto::PublicKey| true;
            // Shuttle frames until both sides are done.
            loop {
                let mut moved = false;
                while let Some(mut f) = dialer.poll_transmit() {
                    dialee
                        .handle_frame(&mut f[4..], now, &mut allow)
                        .expect("dialee");
                    moved = true;
                }
                while let Some(mut f) = dialee.poll_transmit() {
                    dialer
                        .handle_frame(&mut f[4..], now, &mut allow)
                        .expect("dialer");
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            let a = dialer.into_session().expect("dialer session");
            let b = dialee.into_session().expect("dialee session");
            black_box((a, b))
        });
    });
    group.finish();
}

criterion_group!(benches, seal, open, handshake);
criterion_main!(benches);
