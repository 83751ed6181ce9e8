//! The record cipher: ChaCha20-Poly1305 over whole frame bodies, in place.
//!
//! # Design
//!
//! One [`RecordSealer`] per direction on the sending side and one
//! [`RecordOpener`] on the receiving side, each owning a `ring`
//! [`LessSafeKey`], an implicit nonce counter and, where its
//! [`CipherPolicy`] says so, an OpenSSL EVP context for large frames
//! (`evp`), made at the first record that needs it (so an idle connection
//! holds none). Nothing is allocated per record: the caller's buffer is
//! encrypted or decrypted in place and the 16-byte tag lives in its last
//! [`TAG_LEN`] bytes.
//!
//! Each record goes to one backend by its length ([`policy`]): `ring`
//! below the policy's threshold, OpenSSL from it. Both compute the same
//! AEAD under the same nonce, so the choice never shows on the wire, a
//! sealer and an opener need not choose alike, and the one nonce counter
//! serves both backends across a connection's frames.
//!
//! The 12-byte nonce is never sent; both ends compute it, exactly as the
//! commonware p2p seed lays it out:
//!
//! ```text
//! byte 0      bit 7 = sender is the dialer (1) or the dialee (0); bits 6..0 = 0
//! byte 1      0
//! bytes 2..4  u16 iterator, big endian
//! bytes 4..12 u64 sequence, big endian
//! ```
//!
//! After sequence `u64::MAX` the iterator increments and the sequence restarts
//! at 0: 2^80 records per direction. When the iterator itself would wrap, the
//! cipher refuses with [`CipherError::NonceExhausted`] and the connection must
//! end.
//!
//! There is no associated data. The frame length is authenticated implicitly:
//! a changed length moves where the tag is read from, so opening fails.
//!
//! # Security
//!
//! Provided: confidentiality and integrity of every record; detection of
//! reordering, replay, deletion within the stream and truncation of a record
//! (the nonce is implicit, so any of these makes the next open fail), and no
//! nonce reuse for a key as long as each key is used by one sealer (the
//! handshake derives a distinct key per direction, and the direction bit
//! separates the two roles even if keys were ever shared). An opener that
//! failed once is poisoned for good ([`CipherError::Poisoned`]): the stream
//! position is lost and nothing after it can be trusted.
//!
//! Not provided: detection of the stream being cut *between* records (that
//! is the protocol's `Close` record's job), traffic-analysis resistance
//! (lengths and timing are visible), and zeroization of the key schedule
//! (`ring` does not zeroize its keys, OpenSSL clears its context when it is
//! freed; the copy of the key kept until the first large record makes the
//! OpenSSL context is zeroized on drop; the caller's 32-byte input is the
//! caller's to zeroize).

#[cfg(test)]
mod backend_tests;
mod evp;
pub mod policy;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use evp::{EvpOpener, EvpSealer, MAX_EVP_LEN};
pub use policy::{CipherBackend, CipherPolicy};
use zeroize::Zeroizing;

/// Length of the Poly1305 tag appended to every sealed record.
pub const TAG_LEN: usize = 16;

/// Why sealing or opening failed. Every error ends the connection.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CipherError {
    /// All 2^80 nonces of this direction are used; the connection must end.
    #[error("nonce space exhausted")]
    NonceExhausted,
    /// Authentication failed: the record was forged, corrupted, reordered,
    /// replayed or resized.
    #[error("record authentication failed")]
    Open,
    /// The buffer is shorter than a tag.
    #[error("record shorter than the authentication tag")]
    TooShort,
    /// An earlier failure poisoned this cipher.
    #[error("cipher poisoned by an earlier failure")]
    Poisoned,
}

/// The implicit nonce counter shared by both directions' types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counter {
    dialer: bool,
    iterator: u16,
    sequence: u64,
    exhausted: bool,
}

impl Counter {
    fn new(dialer: bool) -> Self {
        Self {
            dialer,
            iterator: 0,
            sequence: 0,
            exhausted: false,
        }
    }

    fn nonce_bytes(&self) -> [u8; NONCE_LEN] {
        // Constant indices into a fixed-size array: cannot panic.
        let mut n = [0u8; NONCE_LEN];
        if self.dialer {
            n[0] = 0x80;
        }
        n[2..4].copy_from_slice(&self.iterator.to_be_bytes());
        n[4..12].copy_from_slice(&self.sequence.to_be_bytes());
        n
    }

    /// Returns the next nonce and advances, or `NonceExhausted`.
    #[inline]
    fn next(&mut self) -> Result<[u8; NONCE_LEN], CipherError> {
        if self.exhausted {
            return Err(CipherError::NonceExhausted);
        }
        let nonce = self.nonce_bytes();
        if self.sequence == u64::MAX {
            if self.iterator == u16::MAX {
                self.exhausted = true;
            } else {
                self.iterator += 1;
                self.sequence = 0;
            }
        } else {
            self.sequence += 1;
        }
        Ok(nonce)
    }
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // CHACHA20_POLY1305 takes exactly 32 bytes, so this cannot fail; the
    // fallback is unreachable but keeps the function panic free.
    match UnboundKey::new(&CHACHA20_POLY1305, bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("ChaCha20-Poly1305 keys are 32 bytes"),
    }
}

/// The large-frame backend of one direction, made at its first record: a
/// connection that never carries a large frame (most idle ones) never holds
/// an OpenSSL context (the two of a connection cost ~3.8 KiB of RSS in
/// `shoal bench --scenario idle`).
enum LargeState<T> {
    /// No record has needed it yet; the key it will be made with.
    Unmade(Zeroizing<[u8; 32]>),
    Made(T),
    /// libcrypto could not make a context: `ring` takes every record.
    Failed,
}

/// The large-frame backend of one direction and the smallest record (tag
/// included) it takes.
struct Large<T> {
    state: LargeState<T>,
    make: fn(&[u8; 32]) -> Option<T>,
    from: usize,
}

impl<T> Large<T> {
    /// The backend of `key` if `policy` uses it on this machine.
    fn new(policy: CipherPolicy, key: &[u8; 32], make: fn(&[u8; 32]) -> Option<T>) -> Option<Self> {
        Some(Self {
            state: LargeState::Unmade(Zeroizing::new(*key)),
            make,
            from: policy.evp_threshold()?,
        })
    }

    /// The backend if it takes a record of `len` bytes (tag included),
    /// made now if this is its first.
    #[inline]
    fn takes(this: &mut Option<Self>, len: usize) -> Option<&mut T> {
        let l = this.as_mut()?;
        if len < l.from || len > MAX_EVP_LEN {
            return None;
        }
        if let LargeState::Unmade(key) = &l.state {
            let made = (l.make)(key);
            l.state = made.map_or(LargeState::Failed, LargeState::Made);
        }
        match &mut l.state {
            LargeState::Made(backend) => Some(backend),
            _ => None,
        }
    }
}

/// Seals the records one side sends.
pub struct RecordSealer {
    key: LessSafeKey,
    large: Option<Large<EvpSealer>>,
    counter: Counter,
    poisoned: bool,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("evp_threshold", &self.evp_threshold())
            .field("dialer", &self.counter.dialer)
            .field("iterator", &self.counter.iterator)
            .field("sequence", &self.counter.sequence)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// A sealer for `key`, sending as the dialer (`true`) or the dialee;
    /// `ring` seals every record.
    pub fn new(key: &[u8; 32], dialer: bool) -> Self {
        Self::with_policy(key, dialer, CipherPolicy::ring())
    }

    /// A sealer whose records go to the backend `policy` picks by length.
    pub fn with_policy(key: &[u8; 32], dialer: bool, policy: CipherPolicy) -> Self {
        Self {
            key: self::key(key),
            large: Large::new(policy, key, EvpSealer::new),
            counter: Counter::new(dialer),
            poisoned: false,
        }
    }

    /// The smallest record (tag included) OpenSSL seals, or `None` if
    /// `ring` seals everything.
    pub fn evp_threshold(&self) -> Option<usize> {
        self.large.as_ref().map(|l| l.from)
    }

    /// Starts the counter at (`iterator`, `sequence`). Tests only.
    #[doc(hidden)]
    pub fn with_counter_for_test(mut self, iterator: u16, sequence: u64) -> Self {
        self.counter.iterator = iterator;
        self.counter.sequence = sequence;
        self
    }

    /// `buf` = plaintext ‖ [`TAG_LEN`] bytes of space; seals
    /// `buf[..len - TAG_LEN]` in place and writes the tag into the last
    /// [`TAG_LEN`] bytes. Consumes one nonce on success.
    #[inline]
    pub fn seal_in_place(&mut self, buf: &mut [u8]) -> Result<(), CipherError> {
        if self.poisoned {
            return Err(CipherError::Poisoned);
        }
        let Some(split) = buf.len().checked_sub(TAG_LEN) else {
            return Err(CipherError::TooShort);
        };
        let len = buf.len();
        let (data, tag_out) = buf.split_at_mut(split);
        let nonce = self.counter.next()?;
        let sealed = match Large::takes(&mut self.large, len) {
            Some(evp) => match <&mut [u8; TAG_LEN]>::try_from(tag_out) {
                Ok(tag_out) => evp.seal(&nonce, &[], data, tag_out).is_ok(),
                Err(_) => false,
            },
            None => match self.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                data,
            ) {
                Ok(tag) => {
                    tag_out.copy_from_slice(tag.as_ref());
                    true
                }
                Err(_) => false,
            },
        };
        if sealed {
            Ok(())
        } else {
            // ring: only for inputs beyond ChaCha20's 256 GiB limit; OpenSSL:
            // a libcrypto failure. The nonce is spent either way, so refuse
            // everything from now on.
            self.poisoned = true;
            Err(CipherError::Poisoned)
        }
    }

    /// The (iterator, sequence) the next sealed record will use.
    pub fn sequence(&self) -> (u16, u64) {
        (self.counter.iterator, self.counter.sequence)
    }
}

/// Opens the records the peer sends.
pub struct RecordOpener {
    key: LessSafeKey,
    large: Option<Large<EvpOpener>>,
    counter: Counter,
    poisoned: bool,
}

impl std::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOpener")
            .field("evp_threshold", &self.evp_threshold())
            .field("dialer", &self.counter.dialer)
            .field("iterator", &self.counter.iterator)
            .field("sequence", &self.counter.sequence)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl RecordOpener {
    /// An opener for `key`; `dialer` is the **sender's** role. `ring` opens
    /// every record.
    pub fn new(key: &[u8; 32], dialer: bool) -> Self {
        Self::with_policy(key, dialer, CipherPolicy::ring())
    }

    /// An opener whose records go to the backend `policy` picks by length.
    pub fn with_policy(key: &[u8; 32], dialer: bool, policy: CipherPolicy) -> Self {
        Self {
            key: self::key(key),
            large: Large::new(policy, key, EvpOpener::new),
            counter: Counter::new(dialer),
            poisoned: false,
        }
    }

    /// The smallest record (tag included) OpenSSL opens, or `None` if
    /// `ring` opens everything.
    pub fn evp_threshold(&self) -> Option<usize> {
        self.large.as_ref().map(|l| l.from)
    }

    /// Starts the counter at (`iterator`, `sequence`). Tests only.
    #[doc(hidden)]
    pub fn with_counter_for_test(mut self, iterator: u16, sequence: u64) -> Self {
        self.counter.iterator = iterator;
        self.counter.sequence = sequence;
        self
    }

    /// `buf` = ciphertext ‖ tag; opens in place and returns the plaintext
    /// length (the plaintext is `buf[..n]`). Any failure poisons the opener:
    /// the failing call returns the cause, every later call
    /// [`CipherError::Poisoned`].
    #[inline]
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<usize, CipherError> {
        if self.poisoned {
            return Err(CipherError::Poisoned);
        }
        let result = self.open_inner(buf);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    #[inline]
    fn open_inner(&mut self, buf: &mut [u8]) -> Result<usize, CipherError> {
        let Some(len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(CipherError::TooShort);
        };
        let nonce = self.counter.next()?;
        let total = buf.len();
        if let Some(evp) = Large::takes(&mut self.large, total) {
            let (data, tag) = buf.split_at_mut(len);
            let opened = match <&[u8; TAG_LEN]>::try_from(&*tag) {
                Ok(tag) => evp.open(&nonce, &[], data, tag),
                Err(_) => false,
            };
            return if opened {
                Ok(len)
            } else {
                Err(CipherError::Open)
            };
        }
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
            .map(|_| len)
            .map_err(|_| CipherError::Open)
    }

    /// The (iterator, sequence) the next opened record must use.
    pub fn sequence(&self) -> (u16, u64) {
        (self.counter.iterator, self.counter.sequence)
    }

    /// Whether an earlier failure poisoned this opener.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    fn nonce_hex(c: &Counter) -> String {
        c.nonce_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn nonce_layout_literal() {
        let mut c = Counter::new(true);
        assert_eq!(nonce_hex(&c), "800000000000000000000000");
        c.next().unwrap();
        assert_eq!(nonce_hex(&c), "800000000000000000000001");
        let mut d = Counter::new(false);
        d.iterator = 0x1234;
        d.sequence = 0x0102_0304_0506_0708;
        assert_eq!(nonce_hex(&d), "000012340102030405060708");
    }

    #[test]
    fn nonce_rollover_and_exhaustion() {
        let mut c = Counter::new(true);
        c.iterator = 0;
        c.sequence = u64::MAX;
        assert_eq!(nonce_hex(&c), "80000000ffffffffffffffff");
        c.next().unwrap();
        assert_eq!(nonce_hex(&c), "800000010000000000000000");
        assert_eq!((c.iterator, c.sequence), (1, 0));

        let mut c = Counter::new(false);
        c.iterator = u16::MAX;
        c.sequence = u64::MAX - 1;
        assert_eq!(nonce_hex(&c), "0000fffffffffffffffffffe");
        c.next().unwrap();
        assert_eq!(nonce_hex(&c), "0000ffffffffffffffffffff");
        c.next().unwrap(); // the very last nonce
        assert!(matches!(c.next(), Err(CipherError::NonceExhausted)));
        assert!(matches!(c.next(), Err(CipherError::NonceExhausted)));
    }

    /// The sealer really uses the documented nonce: check against raw ring.
    #[test]
    fn sealer_matches_raw_ring_with_literal_nonces() {
        let raw = key(&KEY);
        let cases: [(bool, u16, u64, [u8; 12]); 3] = [
            (true, 0, 0, [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (false, 0x0001, 0x0203, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 3]),
            (
                true,
                0xfffe,
                u64::MAX,
                [
                    0x80, 0, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
            ),
        ];
        for (dialer, it, seq, nonce) in cases {
            let mut sealer = RecordSealer::new(&KEY, dialer).with_counter_for_test(it, seq);
            let mut buf = b"hello world\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
            sealer.seal_in_place(&mut buf).unwrap();
            let mut expected = b"hello world".to_vec();
            raw.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut expected,
            )
            .unwrap();
            assert_eq!(buf, expected);
        }
    }

    #[test]
    fn rollover_and_exhaustion_through_seal_and_open() {
        let mut sealer =
            RecordSealer::new(&KEY, true).with_counter_for_test(u16::MAX - 1, u64::MAX);
        let mut opener =
            RecordOpener::new(&KEY, true).with_counter_for_test(u16::MAX - 1, u64::MAX);
        // (MAX-1, MAX) -> (MAX, 0) -> (MAX, 1)
        for expected in [(u16::MAX, 0), (u16::MAX, 1)] {
            let mut buf = vec![42u8; 10 + TAG_LEN];
            sealer.seal_in_place(&mut buf).unwrap();
            assert_eq!(sealer.sequence(), expected);
            assert_eq!(opener.open_in_place(&mut buf), Ok(10));
            assert_eq!(&buf[..10], &[42u8; 10]);
        }
        let mut sealer = sealer.with_counter_for_test(u16::MAX, u64::MAX);
        let mut opener = opener.with_counter_for_test(u16::MAX, u64::MAX);
        let mut buf = vec![1u8; 3 + TAG_LEN];
        sealer.seal_in_place(&mut buf).unwrap();
        assert_eq!(opener.open_in_place(&mut buf), Ok(3));
        let mut buf = vec![1u8; 3 + TAG_LEN];
        assert_eq!(
            sealer.seal_in_place(&mut buf),
            Err(CipherError::NonceExhausted)
        );
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
    fn round_trip_many_sizes() {
        let mut sealer = RecordSealer::new(&KEY, false);
        let mut opener = RecordOpener::new(&KEY, false);
        let sizes = [
            0usize, 1, 15, 16, 17, 63, 64, 65, 255, 1024, 4097, 16384, 65536,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let plain: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
            let mut buf = plain.clone();
            buf.resize(n + TAG_LEN, 0);
            sealer.seal_in_place(&mut buf).unwrap();
            if n >= 16 {
                assert_ne!(&buf[..n], &plain[..], "not encrypted at size {n}");
            }
            assert_eq!(opener.open_in_place(&mut buf), Ok(n));
            assert_eq!(&buf[..n], &plain[..]);
        }
        assert_eq!(sealer.sequence(), (0, sizes.len() as u64));
        assert_eq!(opener.sequence(), (0, sizes.len() as u64));
    }

    fn sealed(n: usize) -> Vec<u8> {
        let mut buf = vec![5u8; n + TAG_LEN];
        RecordSealer::new(&KEY, true)
            .seal_in_place(&mut buf)
            .unwrap();
        buf
    }

    fn open_fresh(buf: &mut [u8]) -> Result<usize, CipherError> {
        RecordOpener::new(&KEY, true).open_in_place(buf)
    }

    #[test]
    fn tampering_fails_and_poisons() {
        let good = sealed(100);
        assert_eq!(open_fresh(&mut good.clone()), Ok(100));

        // Flipped ciphertext bit, flipped tag bit.
        for pos in [0, 50, 99, 100, 115] {
            let mut bad = good.clone();
            bad[pos] ^= 0x01;
            assert_eq!(open_fresh(&mut bad), Err(CipherError::Open), "pos {pos}");
        }
        // Truncated and extended buffers (a changed frame length).
        assert_eq!(
            open_fresh(&mut good[..good.len() - 1].to_vec()),
            Err(CipherError::Open)
        );
        assert_eq!(open_fresh(&mut good[1..].to_vec()), Err(CipherError::Open));
        let mut extended = good.clone();
        extended.push(0);
        assert_eq!(open_fresh(&mut extended), Err(CipherError::Open));
        assert_eq!(
            open_fresh(&mut good[..TAG_LEN].to_vec()),
            Err(CipherError::Open)
        );
        assert_eq!(
            open_fresh(&mut good[..TAG_LEN - 1].to_vec()),
            Err(CipherError::TooShort)
        );
        assert_eq!(open_fresh(&mut []), Err(CipherError::TooShort));

        // Wrong direction bit, wrong key, wrong position in the stream.
        assert_eq!(
            RecordOpener::new(&KEY, false).open_in_place(&mut good.clone()),
            Err(CipherError::Open)
        );
        assert_eq!(
            RecordOpener::new(&[8u8; 32], true).open_in_place(&mut good.clone()),
            Err(CipherError::Open)
        );
        assert_eq!(
            RecordOpener::new(&KEY, true)
                .with_counter_for_test(0, 1)
                .open_in_place(&mut good.clone()),
            Err(CipherError::Open)
        );

        // Sticky: after a failure even a valid record is refused.
        let mut opener = RecordOpener::new(&KEY, true);
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(opener.open_in_place(&mut bad), Err(CipherError::Open));
        assert!(opener.is_poisoned());
        assert_eq!(
            opener.open_in_place(&mut good.clone()),
            Err(CipherError::Poisoned)
        );
    }

    #[test]
    fn replay_and_reorder_fail() {
        let mut sealer = RecordSealer::new(&KEY, true);
        let mut a = vec![1u8; 8 + TAG_LEN];
        let mut b = vec![2u8; 8 + TAG_LEN];
        sealer.seal_in_place(&mut a).unwrap();
        sealer.seal_in_place(&mut b).unwrap();
        let mut opener = RecordOpener::new(&KEY, true);
        assert_eq!(opener.open_in_place(&mut b.clone()), Err(CipherError::Open));
        let mut opener = RecordOpener::new(&KEY, true);
        assert_eq!(opener.open_in_place(&mut a.clone()), Ok(8));
        assert_eq!(opener.open_in_place(&mut a.clone()), Err(CipherError::Open));
    }

    #[test]
    fn seal_too_short() {
        let mut sealer = RecordSealer::new(&KEY, true);
        assert_eq!(
            sealer.seal_in_place(&mut [0u8; TAG_LEN - 1]),
            Err(CipherError::TooShort)
        );
        // No nonce consumed.
        assert_eq!(sealer.sequence(), (0, 0));
        let mut buf = [0u8; TAG_LEN];
        sealer.seal_in_place(&mut buf).unwrap();
        assert_eq!(RecordOpener::new(&KEY, true).open_in_place(&mut buf), Ok(0));
    }
}
