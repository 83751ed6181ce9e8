//! Origin signatures: what an origin signs and how relays check it.
//!
//! # Design
//! The origin signs `seq u64 BE ‖ payload` under the namespace
//! `base ‖ "/gossip/" ‖ channel u32 BE` with its node identity (the
//! scheme's own domain separation wraps it, see `shoal_crypto::identity`),
//! so a gossip signature is never valid as a handshake or address-record
//! signature, nor on another gossip channel. The origin key is bound by the
//! check itself: a frame whose key is swapped fails. The hop count is not
//! signed (relays increment it).
//!
//! [`Verifier`] is the one place a relay checks a signature; the engine's
//! is [`SchemeVerifier`] (the node's scheme). The simulation plugs in a
//! cheap keyed checksum so that a thousand nodes do not spend their time in
//! ed25519.

use bytes::Bytes;
use shoal_crypto::{PublicKey, Scheme, Signer};

use super::wire::{DataFrame, MessageId};

/// Appended to the base namespace, before the channel id.
pub const GOSSIP_NAMESPACE_SUFFIX: &[u8] = b"/gossip/";

/// The namespace a gossip channel's messages are signed under.
pub fn namespace(base: &[u8], channel: u32) -> Vec<u8> {
    let mut ns = Vec::with_capacity(base.len() + GOSSIP_NAMESPACE_SUFFIX.len() + 4);
    ns.extend_from_slice(base);
    ns.extend_from_slice(GOSSIP_NAMESPACE_SUFFIX);
    ns.extend_from_slice(&channel.to_be_bytes());
    ns
}

/// The bytes an origin signs: `seq u64 BE ‖ payload`.
pub fn signed_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks an origin's signature on a message.
pub trait Verifier: Send {
    /// True iff `frame.signature` is `frame.id.origin`'s signature of
    /// `frame.id.seq` and `frame.payload`.
    fn verify(&self, frame: &DataFrame) -> bool;
}

/// The engine's verifier: the node's signature scheme under a channel's
/// namespace.
pub struct SchemeVerifier {
    scheme: &'static dyn Scheme,
    namespace: Vec<u8>,
}

impl SchemeVerifier {
    /// Verifies with `scheme` under `namespace` (see [`namespace`]).
    pub fn new(scheme: &'static dyn Scheme, namespace: Vec<u8>) -> Self {
        Self { scheme, namespace }
    }
}

impl Verifier for SchemeVerifier {
    fn verify(&self, frame: &DataFrame) -> bool {
        self.scheme
            .verify(
                &frame.id.origin,
                &self.namespace,
                &signed_bytes(frame.id.seq, &frame.payload),
                &frame.signature,
            )
            .is_ok()
    }
}

/// Something that signs as a gossip origin.
pub trait Sign: Send + Sync {
    /// The origin's key.
    fn origin(&self) -> &PublicKey;
    /// The signature of `seq` and `payload`.
    fn sign(&self, seq: u64, payload: &[u8]) -> Bytes;
}

/// A node identity signing under a channel's namespace.
pub struct SchemeSigner {
    signer: std::sync::Arc<dyn Signer>,
    namespace: Vec<u8>,
}

impl SchemeSigner {
    /// Signs with `signer` under `namespace` (see [`namespace`]).
    pub fn new(signer: std::sync::Arc<dyn Signer>, namespace: Vec<u8>) -> Self {
        Self { signer, namespace }
    }
}

impl Sign for SchemeSigner {
    fn origin(&self) -> &PublicKey {
        self.signer.public_key()
    }
    fn sign(&self, seq: u64, payload: &[u8]) -> Bytes {
        self.signer
            .sign(&self.namespace, &signed_bytes(seq, payload))
    }
}

/// A signed message with hop count 0, as its origin sends it.
pub fn sign_message(signer: &dyn Sign, seq: u64, payload: Bytes) -> DataFrame {
    DataFrame {
        id: MessageId {
            origin: signer.origin().clone(),
            seq,
        },
        hops: 0,
        signature: signer.sign(seq, &payload),
        payload,
    }
}

/// The simulation's stand-in for signatures: an FNV-1a checksum of key,
/// sequence and payload. Forgeable by anyone; it only lets tests tell a
/// tampered frame from an intact one without ed25519's cost.
#[cfg(test)]
pub(crate) mod checksum {
    use super::*;

    fn fnv(key: &[u8], seq: u64, payload: &[u8]) -> [u8; 8] {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.iter().chain(&seq.to_be_bytes()).chain(payload) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h.to_be_bytes()
    }

    pub struct ChecksumVerifier;

    impl Verifier for ChecksumVerifier {
        fn verify(&self, f: &DataFrame) -> bool {
            f.signature[..] == fnv(f.id.origin.as_bytes(), f.id.seq, &f.payload)
        }
    }

    pub struct ChecksumSigner(pub PublicKey);

    impl Sign for ChecksumSigner {
        fn origin(&self) -> &PublicKey {
            &self.0
        }
        fn sign(&self, seq: u64, payload: &[u8]) -> Bytes {
            Bytes::copy_from_slice(&fnv(self.0.as_bytes(), seq, payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_crypto::Ed25519Signer;

    use super::*;

    #[test]
    fn signature_binds_origin_seq_payload_and_channel() {
        let id: Arc<dyn Signer> = Arc::new(Ed25519Signer::insecure_from_seed(1));
        let scheme = id.scheme();
        let s = SchemeSigner::new(id.clone(), namespace(b"app", 7));
        let v = SchemeVerifier::new(scheme, namespace(b"app", 7));
        let f = sign_message(&s, 42, Bytes::from_static(b"block"));
        assert!(v.verify(&f));
        let mut hops = f.clone();
        hops.hops = 9;
        assert!(v.verify(&hops), "hops are not signed");
        let mut seq = f.clone();
        seq.id.seq = 43;
        assert!(!v.verify(&seq));
        let mut payload = f.clone();
        payload.payload = Bytes::from_static(b"blocK");
        assert!(!v.verify(&payload));
        let mut origin = f.clone();
        origin.id.origin = Ed25519Signer::insecure_from_seed(2).public_key().clone();
        assert!(!v.verify(&origin));
        let other_channel = SchemeVerifier::new(scheme, namespace(b"app", 8));
        assert!(!other_channel.verify(&f));
    }
}
