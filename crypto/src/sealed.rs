//! Sealed messages: a payload that only the holder of an identity's secret
//! key can open, for messages that travel through relays (routed unicast).
//!
//! # Design
//! An anonymous sealed box addressed to an identity key, in the manner of
//! libsodium's `crypto_box_seal` over a converted ed25519 key
//! (`crypto_sign_ed25519_pk_to_curve25519`):
//! - the recipient's ed25519 public key maps to its X25519 (Montgomery)
//!   form, and its secret key to the matching X25519 scalar (the clamped
//!   first half of SHA-512 of the seed);
//! - the sender draws a fresh X25519 key pair for every message and agrees
//!   with the recipient's key; an all-zero agreement (a low-order recipient
//!   key) is refused;
//! - `key = HKDF-SHA256(salt = SEAL_SALT, ikm = shared, info = ephemeral
//!   public ‖ recipient X25519 public)`;
//! - ChaCha20-Poly1305 under that key with the all-zero nonce (each key
//!   seals exactly one message: the ephemeral is fresh), and the caller's
//!   associated data, which binds whatever header travels beside it.
//!
//! Layout: `ephemeral public (32) ‖ ciphertext ‖ tag (16)`, so a sealed
//! message is [`SEAL_OVERHEAD`] bytes longer than its plaintext.
//!
//! # Security
//! Provided: only the recipient can read the plaintext, and any change to
//! the sealed bytes or to the associated data makes
//! [`crate::Signer::open_sealed`] fail.
//!
//! Not provided: who sealed it (the box is anonymous: a routed message
//! carries its origin's signature over the sealed bytes for that), replay
//! protection (the router's seen-cache), or forward secrecy for the
//! recipient (a recipient key leaked later opens every message sealed to
//! it).
//!
//! The identity key serves both signing and this agreement. The same is
//! done by libsodium's conversion, by age's `ssh-ed25519` recipients and by
//! Signal's XEdDSA, and analysed in "On using the same key pair for Ed25519
//! and an X25519 based KEM" (Thormarker, ePrint 2021/509); the HKDF salt
//! separates the derived keys from every other use of the key here.

use ring::{aead, hkdf};
use x25519_dalek::{EphemeralSecret, PublicKey as X25519PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The bytes a sealed message adds to its plaintext: the ephemeral public
/// key and the tag.
pub const SEAL_OVERHEAD: usize = 32 + TAG;

const TAG: usize = 16;

/// The HKDF salt of sealed messages (a version: another construction gets
/// another salt).
const SEAL_SALT: &[u8] = b"shoal sealed message v1";

/// Why sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The recipient key is not a valid key of a scheme that can seal.
    #[error("the recipient key cannot receive sealed messages")]
    Recipient,
    /// The agreement gave the all-zero secret (a low-order key).
    #[error("non-contributory key agreement")]
    LowOrder,
    /// Shorter than [`SEAL_OVERHEAD`], altered, sealed to another key, or
    /// with other associated data.
    #[error("the sealed message does not open")]
    Open,
    /// This identity's scheme has no sealed messages.
    #[error("this identity cannot open sealed messages")]
    Unsupported,
}

/// Seals `plaintext` to the X25519 key `recipient` with a fresh ephemeral.
pub(crate) fn seal_to_x25519(
    recipient: [u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let secret = EphemeralSecret::random_from_rng(rand_core::OsRng);
    let ephemeral = X25519PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&X25519PublicKey::from(recipient));
    if !shared.was_contributory() {
        return Err(SealError::LowOrder);
    }
    let shared = Zeroizing::new(shared.to_bytes());
    seal_with(&shared, ephemeral, recipient, aad, plaintext)
}

/// The sealing once the agreement is done (also the test vectors' entry).
fn seal_with(
    shared: &[u8; 32],
    ephemeral: [u8; 32],
    recipient: [u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let key = message_key(shared, &ephemeral, &recipient)?;
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.extend_from_slice(&ephemeral);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(aad),
            &mut out[32..],
        )
        .map_err(|_| SealError::Open)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens `sealed` with the X25519 secret scalar `secret`.
pub(crate) fn open_with_x25519(
    secret: &Zeroizing<[u8; 32]>,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(SealError::Open);
    }
    let (head, body) = sealed.split_at(32);
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(head);
    let secret = StaticSecret::from(**secret);
    let recipient = X25519PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&X25519PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(SealError::Open);
    }
    let shared = Zeroizing::new(shared.to_bytes());
    let key = message_key(&shared, &ephemeral, &recipient)?;
    let mut out = body.to_vec();
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(aad),
            &mut out,
        )
        .map_err(|_| SealError::Open)?
        .len();
    out.truncate(plain);
    Ok(out)
}

fn message_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<aead::LessSafeKey, SealError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SEAL_SALT).extract(shared);
    let info: [&[u8]; 2] = [ephemeral, recipient];
    let okm = prk
        .expand(&info, &aead::CHACHA20_POLY1305)
        .map_err(|_| SealError::Open)?;
    Ok(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Ed25519Signer, Signer, ED25519};
    use crate::Scheme;

    fn signer(seed: u8) -> Ed25519Signer {
        Ed25519Signer::insecure_from_seed(u64::from(seed))
    }

    #[test]
    fn the_recipient_opens_what_was_sealed_to_it() {
        let bob = signer(2);
        for len in [0usize, 1, 15, 16, 17, 64, 1000, 70_000] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = ED25519.seal(bob.public_key(), b"header", &msg).unwrap();
            assert_eq!(sealed.len(), msg.len() + SEAL_OVERHEAD);
            assert_eq!(bob.open_sealed(b"header", &sealed).unwrap(), msg);
        }
    }

    #[test]
    fn two_seals_of_one_message_differ() {
        let bob = signer(2);
        let a = ED25519.seal(bob.public_key(), b"", b"same").unwrap();
        let b = ED25519.seal(bob.public_key(), b"", b"same").unwrap();
        assert_ne!(a, b, "a fresh ephemeral per message");
    }

    #[test]
    fn any_change_and_any_other_key_fail() {
        let bob = signer(2);
        let carol = signer(3);
        let sealed = ED25519.seal(bob.public_key(), b"aad", b"payload").unwrap();
        assert_eq!(carol.open_sealed(b"aad", &sealed), Err(SealError::Open));
        assert_eq!(bob.open_sealed(b"aae", &sealed), Err(SealError::Open));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                bob.open_sealed(b"aad", &bad),
                Err(SealError::Open),
                "byte {i}"
            );
        }
        for n in 0..SEAL_OVERHEAD {
            assert_eq!(bob.open_sealed(b"aad", &sealed[..n]), Err(SealError::Open));
        }
    }

    #[test]
    fn a_low_order_recipient_is_refused() {
        // The ed25519 identity point maps to the X25519 point u = 1, whose
        // agreement with anything is all zero: as a recipient it is refused,
        // as an ephemeral it does not open.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = ED25519.parse_public_key(&identity);
        if let Ok(key) = key {
            assert!(ED25519.seal(&key, b"", b"x").is_err());
        }
        let bob = signer(2);
        let mut sealed = ED25519.seal(bob.public_key(), b"", b"x").unwrap();
        sealed[..32].copy_from_slice(&[0u8; 32]);
        assert_eq!(bob.open_sealed(b"", &sealed), Err(SealError::Open));
    }

    #[test]
    fn a_pinned_seal_opens_and_keeps_its_bytes() {
        // A fixed ephemeral, so the construction cannot drift unnoticed:
        // recipient = seed 2's key, ephemeral scalar = [7; 32], aad "aad".
        let bob = signer(2);
        let recipient = bob.x25519_public();
        let eph = StaticSecret::from([7u8; 32]);
        let ephemeral = X25519PublicKey::from(&eph).to_bytes();
        let shared = eph
            .diffie_hellman(&X25519PublicKey::from(recipient))
            .to_bytes();
        let sealed = seal_with(&shared, ephemeral, recipient, b"aad", b"pinned").unwrap();
        assert_eq!(bob.open_sealed(b"aad", &sealed).unwrap(), b"pinned");
        assert_eq!(hex(&sealed), PINNED);
    }

    /// Cross-checked with libsodium's key conversion
    /// (`crypto_sign_ed25519_pk_to_curve25519`, via PyNaCl) and pyca/cryptography's
    /// X25519, HKDF and ChaCha20-Poly1305.
    const PINNED: &str = "13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d\
                          99e13b9992a42cc8d752dfe541fd860bc381e37727fc";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
