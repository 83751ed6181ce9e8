//! Both backends behind the record types: pinned records, one sealing what
//! the other opens at every length around the threshold (also mixed within
//! one connection), and the OpenSSL path's tamper, poisoning and nonce
//! exhaustion behaviour.

use proptest::prelude::*;
use ring::digest::{digest, SHA256};

use super::*;

const KEY: [u8; 32] = [7u8; 32];
const THRESHOLD: usize = 4096;

fn ring_policy() -> CipherPolicy {
    CipherPolicy::ring()
}

/// OpenSSL from `THRESHOLD` whatever the CPU.
fn evp_policy() -> CipherPolicy {
    CipherPolicy::evp_for_test(THRESHOLD)
}

/// OpenSSL for every record.
fn evp_only() -> CipherPolicy {
    CipherPolicy::evp_for_test(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `n` plaintext bytes `(i * 7 + 3) mod 256` and room for the tag.
fn record(n: usize) -> Vec<u8> {
    let mut buf: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    buf.resize(n + TAG_LEN, 0);
    buf
}

// Records sealed by the dialer under key 0x07.. at (iterator 0, sequence
// 0), plaintext as `record` builds it; computed independently with
// pyca/cryptography's ChaCha20Poly1305 (nonce 0x80 followed by 11 zero
// bytes, no associated data).
const PIN_RECORD_20: &str =
    "5b2c3d47a7783007afe83c265d05a5141c0386f3ae0804d5d11537d6320283cffa0b97d3";
/// SHA-256 of the sealed 4096 + 16 byte and 65536 + 16 byte records.
const PIN_RECORD_4096_SHA256: &str =
    "2992ed7fe52efddb3c2ea1b5526672b7616b4cf7eb7e28700034cf75b36bf1f9";
const PIN_RECORD_65536_SHA256: &str =
    "0eb85a307fc310a1ef25bba7be8e2a16dd8e5a95e6fa8668f5d18dd71fd52f9b";

#[test]
fn both_backends_seal_the_pinned_records() {
    for policy in [ring_policy(), evp_only(), evp_policy()] {
        let mut buf = record(20);
        RecordSealer::with_policy(&KEY, true, policy)
            .seal_in_place(&mut buf)
            .unwrap();
        assert_eq!(hex(&buf), PIN_RECORD_20, "{policy:?}");
        for (n, pin) in [
            (4096, PIN_RECORD_4096_SHA256),
            (65536, PIN_RECORD_65536_SHA256),
        ] {
            let mut buf = record(n);
            RecordSealer::with_policy(&KEY, true, policy)
                .seal_in_place(&mut buf)
                .unwrap();
            assert_eq!(hex(digest(&SHA256, &buf).as_ref()), pin, "{n} {policy:?}");
        }
    }
}

#[test]
fn the_threshold_counts_the_tag() {
    let sealer = RecordSealer::with_policy(&KEY, true, evp_policy());
    assert_eq!(sealer.evp_threshold(), Some(THRESHOLD));
    assert_eq!(RecordSealer::new(&KEY, true).evp_threshold(), None);
    assert_eq!(
        RecordOpener::with_policy(&KEY, true, ring_policy()).evp_threshold(),
        None
    );
    // A record of THRESHOLD - 1 bytes goes to ring, THRESHOLD to OpenSSL:
    // an opener that can only be right if both agree on the bytes opens both.
    let mut opener = RecordOpener::with_policy(&KEY, true, ring_policy());
    let mut sealer = RecordSealer::with_policy(&KEY, true, evp_policy());
    for total in [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1] {
        let mut buf = record(total - TAG_LEN);
        sealer.seal_in_place(&mut buf).unwrap();
        assert_eq!(opener.open_in_place(&mut buf), Ok(total - TAG_LEN));
        assert_eq!(
            buf[..total - TAG_LEN],
            record(total - TAG_LEN)[..total - TAG_LEN]
        );
    }
}

/// Seals `sizes` in order with one policy and opens them with the other,
/// checking every plaintext, and that each ciphertext is the reference's.
fn cross(sizes: &[usize], seal: CipherPolicy, open: CipherPolicy) -> Result<(), TestCaseError> {
    let mut sealer = RecordSealer::with_policy(&KEY, false, seal);
    let mut reference = RecordSealer::new(&KEY, false);
    let mut opener = RecordOpener::with_policy(&KEY, false, open);
    for &n in sizes {
        let mut buf = record(n);
        let mut want = record(n);
        sealer.seal_in_place(&mut buf).unwrap();
        reference.seal_in_place(&mut want).unwrap();
        prop_assert_eq!(&buf, &want, "ciphertext at {} bytes", n);
        prop_assert_eq!(opener.open_in_place(&mut buf), Ok(n));
        prop_assert_eq!(&buf[..n], &record(n)[..n]);
    }
    prop_assert_eq!(sealer.sequence(), opener.sequence());
    Ok(())
}

/// Plaintext lengths whose records fall within 64 bytes of the threshold.
fn around_threshold() -> impl Strategy<Value = usize> {
    (THRESHOLD - TAG_LEN - 64)..=(THRESHOLD - TAG_LEN + 64)
}

/// Mostly around the threshold, sometimes tiny or large.
fn any_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => around_threshold(),
        1 => 0usize..64,
        1 => 0usize..70_000,
    ]
}

#[test]
fn every_length_around_the_threshold_crosses_both_ways() {
    let sizes: Vec<usize> = ((THRESHOLD - TAG_LEN - 64)..=(THRESHOLD - TAG_LEN + 64)).collect();
    let pairs = [
        (evp_policy(), ring_policy()),
        (ring_policy(), evp_policy()),
        (evp_policy(), evp_policy()),
        (evp_only(), ring_policy()),
        (ring_policy(), evp_only()),
    ];
    for (seal, open) in pairs {
        cross(&sizes, seal, open).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// One connection's frames in any order of lengths: each side switches
    /// backends from frame to frame while the shared nonce counter moves on.
    #[test]
    fn mixed_dispatch_on_one_connection(
        sizes in proptest::collection::vec(any_len(), 1..24),
        which in 0usize..4,
    ) {
        let (seal, open) = [
            (evp_policy(), ring_policy()),
            (ring_policy(), evp_policy()),
            (evp_policy(), evp_policy()),
            (evp_policy(), CipherPolicy::evp_for_test(THRESHOLD / 2)),
        ][which];
        cross(&sizes, seal, open)?;
    }
}

fn sealed_evp(n: usize) -> Vec<u8> {
    let mut buf = record(n);
    RecordSealer::with_policy(&KEY, true, evp_policy())
        .seal_in_place(&mut buf)
        .unwrap();
    buf
}

fn open_evp(buf: &mut [u8]) -> Result<usize, CipherError> {
    RecordOpener::with_policy(&KEY, true, evp_policy()).open_in_place(buf)
}

#[test]
fn openssl_tampering_fails_and_poisons() {
    let n = 2 * THRESHOLD;
    let good = sealed_evp(n);
    assert_eq!(open_evp(&mut good.clone()), Ok(n));
    for pos in [0, 1, n / 2, n - 1, n, n + TAG_LEN - 1] {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        assert_eq!(open_evp(&mut bad), Err(CipherError::Open), "pos {pos}");
        // Unauthenticated plaintext is not left behind.
        assert!(bad[..n].iter().all(|&b| b == 0), "pos {pos}");
    }
    // A changed length moves the tag.
    assert_eq!(
        open_evp(&mut good[..good.len() - 1].to_vec()),
        Err(CipherError::Open)
    );
    let mut extended = good.clone();
    extended.push(0);
    assert_eq!(open_evp(&mut extended), Err(CipherError::Open));
    // Wrong direction, key, stream position.
    assert_eq!(
        RecordOpener::with_policy(&KEY, false, evp_policy()).open_in_place(&mut good.clone()),
        Err(CipherError::Open)
    );
    assert_eq!(
        RecordOpener::with_policy(&[8u8; 32], true, evp_policy()).open_in_place(&mut good.clone()),
        Err(CipherError::Open)
    );
    assert_eq!(
        RecordOpener::with_policy(&KEY, true, evp_policy())
            .with_counter_for_test(0, 1)
            .open_in_place(&mut good.clone()),
        Err(CipherError::Open)
    );

    // Sticky: after a failure even a valid record, on either backend, is
    // refused.
    let mut opener = RecordOpener::with_policy(&KEY, true, evp_policy());
    let mut bad = good.clone();
    bad[3] ^= 0x10;
    assert_eq!(opener.open_in_place(&mut bad), Err(CipherError::Open));
    assert!(opener.is_poisoned());
    assert_eq!(
        opener.open_in_place(&mut good.clone()),
        Err(CipherError::Poisoned)
    );
    assert_eq!(
        opener.open_in_place(&mut record(8)),
        Err(CipherError::Poisoned)
    );
}

#[test]
fn openssl_replay_and_reorder_fail() {
    let mut sealer = RecordSealer::with_policy(&KEY, true, evp_policy());
    let mut a = record(THRESHOLD);
    let mut b = record(THRESHOLD);
    sealer.seal_in_place(&mut a).unwrap();
    sealer.seal_in_place(&mut b).unwrap();
    let mut opener = RecordOpener::with_policy(&KEY, true, evp_policy());
    assert_eq!(opener.open_in_place(&mut b.clone()), Err(CipherError::Open));
    let mut opener = RecordOpener::with_policy(&KEY, true, evp_policy());
    assert_eq!(opener.open_in_place(&mut a.clone()), Ok(THRESHOLD));
    assert_eq!(opener.open_in_place(&mut a.clone()), Err(CipherError::Open));
}

#[test]
fn openssl_rollover_and_exhaustion() {
    let n = THRESHOLD;
    let mut sealer = RecordSealer::with_policy(&KEY, true, evp_policy())
        .with_counter_for_test(u16::MAX - 1, u64::MAX);
    let mut reference = RecordSealer::new(&KEY, true).with_counter_for_test(u16::MAX - 1, u64::MAX);
    let mut opener = RecordOpener::with_policy(&KEY, true, evp_policy())
        .with_counter_for_test(u16::MAX - 1, u64::MAX);
    for expected in [(u16::MAX, 0), (u16::MAX, 1)] {
        let mut buf = record(n);
        let mut want = record(n);
        sealer.seal_in_place(&mut buf).unwrap();
        reference.seal_in_place(&mut want).unwrap();
        assert_eq!(buf, want);
        assert_eq!(sealer.sequence(), expected);
        assert_eq!(opener.open_in_place(&mut buf), Ok(n));
    }
    let mut sealer = sealer.with_counter_for_test(u16::MAX, u64::MAX);
    let mut opener = opener.with_counter_for_test(u16::MAX, u64::MAX);
    let mut buf = record(n);
    sealer.seal_in_place(&mut buf).unwrap();
    assert_eq!(opener.open_in_place(&mut buf), Ok(n));
    let mut buf = record(n);
    assert_eq!(
        sealer.seal_in_place(&mut buf),
        Err(CipherError::NonceExhausted)
    );
    assert_eq!(
        opener.open_in_place(&mut buf),
        Err(CipherError::NonceExhausted)
    );
    assert_eq!(opener.open_in_place(&mut buf), Err(CipherError::Poisoned));
}

#[test]
fn the_openssl_context_is_made_at_the_first_large_record() {
    let unmade = |l: &Option<Large<EvpSealer>>| {
        l.as_ref()
            .is_some_and(|l| matches!(l.state, LargeState::Unmade(_)))
    };
    let mut sealer = RecordSealer::with_policy(&KEY, true, evp_policy());
    assert!(unmade(&sealer.large));
    sealer.seal_in_place(&mut record(64)).unwrap();
    assert!(unmade(&sealer.large), "a small record leaves it unmade");
    sealer.seal_in_place(&mut record(THRESHOLD)).unwrap();
    assert!(sealer
        .large
        .as_ref()
        .is_some_and(|l| matches!(l.state, LargeState::Made(_))));
    let mut opener = RecordOpener::with_policy(&KEY, true, evp_policy());
    assert!(opener
        .large
        .as_ref()
        .is_some_and(|l| matches!(l.state, LargeState::Unmade(_))));
    assert!(RecordSealer::with_policy(&KEY, true, ring_policy())
        .large
        .is_none());
    let mut small = record(64);
    RecordSealer::new(&KEY, true)
        .seal_in_place(&mut small)
        .unwrap();
    assert_eq!(opener.open_in_place(&mut small), Ok(64));
}
