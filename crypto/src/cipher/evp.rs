//! The OpenSSL (libcrypto EVP) ChaCha20-Poly1305 backend: one reused
//! context per direction, key set once, nonce set per record, in place.
//!
//! # Design
//!
//! An [`EvpSealer`] / [`EvpOpener`] owns one `EVP_CIPHER_CTX` initialised
//! once with the cipher and the key. Each record re-initialises only the
//! nonce (`EVP_{En,De}cryptInit_ex` with no cipher and no key, which keeps
//! the key schedule), runs one in-place update over the record and
//! finalises; the tag is read (`EVP_CTRL_AEAD_GET_TAG`) or set before the
//! update (`EVP_CTRL_AEAD_SET_TAG`) and checked by the final call. Nothing
//! is allocated per record. The nonce counter, the poisoning and the choice
//! of backend per record live in [`super`]; this module only computes the
//! AEAD. It uses the `openssl` crate's safe API only: this crate forbids
//! `unsafe`.
//!
//! Associated data is supported only so that the RFC 8439 test vector runs
//! through the same code as the records (which have none).
//!
//! # Linking
//!
//! The `openssl` crate is built with its `vendored` feature: `openssl-src`
//! compiles OpenSSL 3 (with its assembly, AVX-512 paths included) from
//! source with the machine's C compiler, perl and make, and links it
//! statically. A fresh build machine needs no `libssl-dev`, no `pkg-config`
//! and no hand-installed tool, which the project requires of `cargo test
//! --workspace` and `cargo run --release -- bench`; the cost is one
//! OpenSSL build (a few minutes on 2 cores) per cargo profile. A packager who
//! would rather link the distribution's libcrypto (and take its security
//! updates) sets `OPENSSL_NO_VENDOR=1` at build time, which `openssl-sys`
//! honours even with `vendored` on; both give the same bytes on the wire.
//!
//! # Security
//!
//! Same guarantees as the `ring` path (same algorithm, nonce and tag). A
//! failed open has already written unauthenticated plaintext into the
//! buffer (the update runs before the final tag check), so the opener
//! zeroes it before reporting the failure. OpenSSL clears its key schedule
//! when the context is freed.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;

use super::TAG_LEN;

/// Largest record the EVP path takes: EVP lengths are C `int`s. Longer
/// records (never produced by the engine, whose frames are at most 16 MiB)
/// go to `ring`.
pub(super) const MAX_EVP_LEN: usize = 1 << 30;

fn context(key: &[u8; 32], encrypt: bool) -> Result<CipherCtx, ErrorStack> {
    let mut ctx = CipherCtx::new()?;
    let cipher = Cipher::chacha20_poly1305();
    if encrypt {
        ctx.encrypt_init(Some(cipher), Some(key), None)?;
    } else {
        ctx.decrypt_init(Some(cipher), Some(key), None)?;
    }
    Ok(ctx)
}

/// Seals records with one reused encryption context.
pub(super) struct EvpSealer {
    ctx: CipherCtx,
}

impl EvpSealer {
    /// A context for `key`, or `None` if libcrypto could not make one (the
    /// caller then seals everything with `ring`).
    pub(super) fn new(key: &[u8; 32]) -> Option<Self> {
        context(key, true).ok().map(|ctx| Self { ctx })
    }

    /// Encrypts `data` in place under `nonce` and `aad` and writes the tag
    /// into `tag_out` ([`TAG_LEN`] bytes).
    pub(super) fn seal(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag_out: &mut [u8; TAG_LEN],
    ) -> Result<(), ErrorStack> {
        self.ctx.encrypt_init(None, None, Some(nonce))?;
        if !aad.is_empty() {
            self.ctx.cipher_update(aad, None)?;
        }
        let len = data.len();
        self.ctx.cipher_update_inplace(data, len)?;
        self.ctx.cipher_final(&mut [])?;
        self.ctx.tag(tag_out)
    }
}

/// Opens records with one reused decryption context.
pub(super) struct EvpOpener {
    ctx: CipherCtx,
}

impl EvpOpener {
    /// A context for `key`, or `None` if libcrypto could not make one (the
    /// caller then opens everything with `ring`).
    pub(super) fn new(key: &[u8; 32]) -> Option<Self> {
        context(key, false).ok().map(|ctx| Self { ctx })
    }

    /// Decrypts `data` in place under `nonce` and `aad` and checks `tag`.
    /// On failure `data` is zeroed and `false` returned.
    pub(super) fn open(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let ok = self.open_inner(nonce, aad, data, tag).is_ok();
        if !ok {
            data.fill(0);
        }
        ok
    }

    fn open_inner(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), ErrorStack> {
        self.ctx.decrypt_init(None, None, Some(nonce))?;
        self.ctx.set_tag(tag)?;
        if !aad.is_empty() {
            self.ctx.cipher_update(aad, None)?;
        }
        let len = data.len();
        self.ctx.cipher_update_inplace(data, len)?;
        self.ctx.cipher_final(&mut []).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 8439 §2.8.2: the AEAD_CHACHA20_POLY1305 test vector.
    const RFC_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const RFC_NONCE: &str = "070000004041424344454647";
    const RFC_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
    const RFC_PLAIN: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you \
        only one tip for the future, sunscreen would be it.";
    const RFC_CIPHER: &str = "
        d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
        3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
        92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
        3ff4def08e4b7a9de576d26586cec64b6116";
    const RFC_TAG: &str = "1ae10b594f09e26a7e902ecbd0600691";

    /// Key, nonce, associated data, ciphertext, tag.
    type Vector = ([u8; 32], [u8; 12], Vec<u8>, Vec<u8>, [u8; TAG_LEN]);

    fn rfc() -> Vector {
        let key: [u8; 32] = unhex(RFC_KEY).try_into().unwrap();
        let nonce: [u8; 12] = unhex(RFC_NONCE).try_into().unwrap();
        let tag: [u8; TAG_LEN] = unhex(RFC_TAG).try_into().unwrap();
        (key, nonce, unhex(RFC_AAD), unhex(RFC_CIPHER), tag)
    }

    #[test]
    fn rfc8439_vector_openssl() {
        let (key, nonce, aad, cipher, tag) = rfc();
        let mut data = RFC_PLAIN.to_vec();
        let mut got = [0u8; TAG_LEN];
        let mut sealer = EvpSealer::new(&key).unwrap();
        sealer.seal(&nonce, &aad, &mut data, &mut got).unwrap();
        assert_eq!(data, cipher);
        assert_eq!(got, tag);
        // The reused context gives the same bytes again.
        let mut again = RFC_PLAIN.to_vec();
        sealer.seal(&nonce, &aad, &mut again, &mut got).unwrap();
        assert_eq!((again, got), (cipher.clone(), tag));

        let mut opener = EvpOpener::new(&key).unwrap();
        assert!(opener.open(&nonce, &aad, &mut data, &tag));
        assert_eq!(data, RFC_PLAIN);
    }

    #[test]
    fn rfc8439_vector_ring() {
        let (key, nonce, aad, cipher, tag) = rfc();
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let mut data = RFC_PLAIN.to_vec();
        let got = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut data,
            )
            .unwrap();
        assert_eq!(data, cipher);
        assert_eq!(got.as_ref(), &tag[..]);
    }

    #[test]
    fn a_bad_tag_fails_and_zeroes_the_plaintext() {
        let (key, nonce, aad, cipher, tag) = rfc();
        let mut opener = EvpOpener::new(&key).unwrap();
        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        let mut data = cipher.clone();
        assert!(!opener.open(&nonce, &aad, &mut data, &bad_tag));
        assert!(data.iter().all(|&b| b == 0));
        // Wrong associated data, flipped ciphertext.
        let mut data = cipher.clone();
        assert!(!opener.open(&nonce, b"other", &mut data, &tag));
        let mut data = cipher.clone();
        data[7] ^= 0x80;
        assert!(!opener.open(&nonce, &aad, &mut data, &tag));
        // The reused context still opens a good record afterwards.
        let mut data = cipher;
        assert!(opener.open(&nonce, &aad, &mut data, &tag));
        assert_eq!(data, RFC_PLAIN);
    }
}
