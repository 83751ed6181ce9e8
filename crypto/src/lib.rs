//! # shoal-crypto
//!
//! Identities, the shoal/1 handshake and the record cipher. No I/O, no clock,
//! no threads: the engine feeds bytes and the current time in and takes
//! bytes out.
//!
//! # Design
//!
//! - [`identity`]: an object-safe [`Scheme`] / [`Signer`] pair so the engine
//!   never names a concrete signature scheme. [`Ed25519`] is the one shipped;
//!   every signature is domain separated by a namespace.
//! - [`handshake`]: a sans-IO state machine ([`Handshake`]) for the dialer
//!   and the dialee: signed `Hello`s carrying x25519 ephemeral keys, a
//!   timestamp window, the engine's authorization check, HKDF-SHA256 keys
//!   salted with the transcript hash, and one encrypted key confirmation
//!   each way. It yields a [`Session`] (peer key, one [`RecordSealer`], one
//!   [`RecordOpener`]).
//! - [`cipher`]: ChaCha20-Poly1305 sealing and opening whole frame bodies in
//!   place, with the commonware implicit nonce (direction bit, u16
//!   iterator, u64 sequence): `ring` for small frames, OpenSSL's EVP for
//!   large ones on CPUs where it is faster, as a [`CipherPolicy`] says.
//!
//! Errors are fatal and sticky everywhere: a failed handshake or a failed
//! open never recovers, and the connection must be closed.
//!
//! # Security
//!
//! Provided: mutual authentication of long-term identities, forward secrecy
//! from ephemeral x25519 keys (a later key compromise does not reveal past
//! sessions), key confirmation (a connection is complete only when both
//! sides proved they hold the session keys, so a replayed `Hello` never
//! yields a connection), confidentiality and integrity of every frame, and
//! in-order delivery checks through the implicit nonce.
//!
//! Not provided: identity hiding (public keys travel in the clear in the
//! `Hello`s), protection of the first `Hello` against replay within the
//! timestamp window (it is detected only by the missing confirmation), DoS
//! resistance beyond cheap checks before the signature verification,
//! traffic-analysis resistance, or post-quantum security. Key material held
//! by `ring` (AEAD and HMAC key schedules, HKDF PRK) is not zeroized; the
//! copies this crate holds are, and OpenSSL clears its contexts when they
//! are freed.
#![forbid(unsafe_code)]

pub mod cipher;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod identity;
pub mod sealed;

pub use cipher::{CipherBackend, CipherError, CipherPolicy, RecordOpener, RecordSealer, TAG_LEN};
pub use handshake::{
    Handshake, HandshakeConfig, HandshakeError, Role, Session, EPHEMERAL_KEY_LEN, MAX_HELLO_LEN,
};
pub use identity::{
    Ed25519, Ed25519Signer, Identity, IdentityError, PublicKey, Scheme, Signer, ED25519,
};
pub use sealed::{SealError, SEAL_OVERHEAD};

/// Counts of expensive operations, per thread, in test builds only (the
/// handshake tests assert each side does exactly one of each).
pub(crate) mod counters {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Op {
        Sign = 0,
        Verify = 1,
        KeyGen = 2,
        Agree = 3,
    }

    #[cfg(test)]
    thread_local! {
        static COUNTS: std::cell::Cell<[u64; 4]> = const { std::cell::Cell::new([0; 4]) };
    }

    #[inline(always)]
    pub(crate) fn count(op: Op) {
        #[cfg(test)]
        COUNTS.with(|c| {
            let mut v = c.get();
            if let Some(slot) = v.get_mut(op as usize) {
                *slot += 1;
            }
            c.set(v);
        });
        #[cfg(not(test))]
        let _ = op;
    }

    /// `[sign, verify, keygen, agree]` so far on this thread.
    #[cfg(test)]
    pub(crate) fn snapshot() -> [u64; 4] {
        COUNTS.with(|c| c.get())
    }
}
