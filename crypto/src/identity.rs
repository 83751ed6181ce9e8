//! Node identities: signature schemes behind an object-safe trait.
//!
//! # Design
//!
//! The engine never names a concrete scheme. It holds an [`Identity`]
//! (`Arc<dyn Signer>`) for itself and opaque [`PublicKey`] bytes for peers,
//! and every check of a peer's key or signature goes through the
//! [`Scheme`] the local identity reports ([`Signer::scheme`]). Adding a scheme
//! (e.g. BLS12-381) means implementing [`Scheme`] and [`Signer`]; nothing in
//! the handshake or the engine changes.
//!
//! Every signature is **domain separated** by a namespace. The bytes actually
//! signed are
//!
//! ```text
//! u32 big-endian len(namespace) ‖ namespace ‖ message
//! ```
//!
//! so a signature produced for one purpose (one namespace) never verifies for
//! another, and a namespace can never be confused with a message prefix.
//!
//! [`Ed25519`] is the one scheme shipped. Verification is *strict*
//! (`verify_strict`: small-order `R` and weak keys rejected, `s` must be
//! canonical) and [`Scheme::parse_public_key`] rejects keys that do not
//! decompress, that are not canonically encoded, or that have small order.
//!
//! # Key files
//!
//! [`Ed25519Signer::save`] writes, and [`Ed25519Signer::load`] reads, exactly
//! one text line:
//!
//! ```text
//! shoal-ed25519-secret-v1 <64 lowercase hex characters of the 32-byte secret>\n
//! ```
//!
//! `load` also accepts the line without its final newline and uppercase hex;
//! anything else (another prefix, extra whitespace, a second line, a
//! different length) is rejected with [`IdentityError::KeyFile`]. `save`
//! creates the file with mode `0600` from the start (never a window where it
//! is world readable) and refuses to replace an existing file unless asked;
//! a replacement is written to a fresh `0600` temporary file in the same
//! directory, synced, then renamed over the old one.
//!
//! # Security
//!
//! Provided: the 32-byte secret lives in an `ed25519_dalek::SigningKey`,
//! which is zeroized on drop, and the transient copies this module makes
//! (file contents, decoded hex, formatted line) are held in
//! [`zeroize::Zeroizing`] buffers.
//!
//! Not provided: protection against copies the OS or allocator make (swap,
//! core dumps, reallocation of a buffer before it is wrapped), against a
//! reader of the process memory, or against a key file whose permissions an
//! operator later widens (`load` does not check the mode).
//! [`Ed25519Signer::insecure_from_seed`] derives a secret from a `u64`: it is
//! for tests and benchmarks only.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sealed::SealError;
use bytes::Bytes;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// Length of an Ed25519 public key, in bytes.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature, in bytes.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// The first token of an Ed25519 key file line.
pub const ED25519_KEY_FILE_PREFIX: &str = "shoal-ed25519-secret-v1";

/// Anything larger than this cannot be a key file; refused before reading.
const MAX_KEY_FILE_LEN: u64 = 256;

/// An identity's public key: opaque bytes whose meaning belongs to a
/// [`Scheme`].
///
/// A `PublicKey` obtained from [`Scheme::parse_public_key`] is well formed
/// for that scheme; one built with [`PublicKey::from_bytes_unchecked`] is
/// not checked at all and must not be trusted as a verified key.
///
/// `Debug` prints the full hex; `Display` prints the first 8 bytes in hex
/// followed by `…` (`{:#}` prints the full hex).
///
/// Equality, ordering and hashing are those of the encoded bytes.
#[derive(Clone)]
pub struct PublicKey(KeyBytes);

/// 32-byte keys (ed25519) are stored inline: a key is cloned with every
/// message sent or received, and an inline copy touches no memory shared
/// with other threads, where a reference-counted one bounced its count's
/// cache line between the application's core and the shard's on each one.
#[derive(Clone)]
enum KeyBytes {
    Inline([u8; 32]),
    Other(Bytes),
}

impl PublicKey {
    fn from_slice(b: &[u8]) -> Self {
        match <[u8; 32]>::try_from(b) {
            Ok(a) => Self(KeyBytes::Inline(a)),
            Err(_) => Self(KeyBytes::Other(Bytes::copy_from_slice(b))),
        }
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline(a) => a,
            KeyBytes::Other(b) => b,
        }
    }

    /// The encoded key as [`Bytes`].
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            KeyBytes::Inline(a) => Bytes::copy_from_slice(a),
            KeyBytes::Other(b) => b.clone(),
        }
    }

    /// Wraps bytes **without any check**: for peer tables, configuration and
    /// tests. Anything received from the network goes through
    /// [`Scheme::parse_public_key`] instead.
    pub fn from_bytes_unchecked(b: impl Into<Bytes>) -> Self {
        let b: Bytes = b.into();
        match <[u8; 32]>::try_from(&b[..]) {
            Ok(a) => Self(KeyBytes::Inline(a)),
            Err(_) => Self(KeyBytes::Other(b)),
        }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl AsRef<[u8]> for PublicKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(")?;
        write_hex(f, self.as_bytes())?;
        f.write_str(")")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHORT: usize = 8;
        if f.alternate() || self.as_bytes().len() <= SHORT {
            write_hex(f, self.as_bytes())
        } else {
            write_hex(f, self.as_bytes().get(..SHORT).unwrap_or_default())?;
            f.write_str("…")
        }
    }
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a valid public key of the scheme.
    #[error("malformed public key")]
    MalformedPublicKey,
    /// The bytes are not a well-formed signature of the scheme.
    #[error("malformed signature")]
    MalformedSignature,
    /// The signature does not verify for this key, namespace and message.
    #[error("invalid signature")]
    BadSignature,
    /// Reading or writing a key file failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The key file exists and overwriting was not requested.
    #[error("key file {} already exists (refusing to overwrite)", path.display())]
    AlreadyExists {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not in the expected format.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A signature scheme: parses peer keys and verifies their signatures.
///
/// Object safe: the engine holds `&'static dyn Scheme`.
pub trait Scheme: Send + Sync + 'static {
    /// A short stable name (`"ed25519"`).
    fn name(&self) -> &'static str;

    /// Checks that `bytes` is a well-formed public key of this scheme.
    fn parse_public_key(&self, bytes: &[u8]) -> Result<PublicKey, IdentityError>;

    /// Verifies `signature` by `key` over `message` under `namespace` (see
    /// the module docs for the exact signed bytes).
    fn verify(
        &self,
        key: &PublicKey,
        namespace: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError>;

    /// Seals `plaintext` so that only the holder of `recipient`'s secret key
    /// can open it, bound to `aad` (see [`crate::sealed`]). A scheme without
    /// sealed messages refuses with [`SealError::Recipient`].
    fn seal(
        &self,
        recipient: &PublicKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let _ = (recipient, aad, plaintext);
        Err(SealError::Recipient)
    }
}

/// A local identity: a secret key that can sign.
pub trait Signer: Send + Sync + 'static {
    /// The scheme of this key (used to check peers' keys and signatures).
    fn scheme(&self) -> &'static dyn Scheme;
    /// This identity's public key.
    fn public_key(&self) -> &PublicKey;
    /// Signs `message` under `namespace` (domain separation; see the module
    /// docs).
    fn sign(&self, namespace: &[u8], message: &[u8]) -> Bytes;

    /// Opens a message sealed to this identity ([`Scheme::seal`]) with the
    /// same `aad`. An identity whose scheme has no sealed messages refuses
    /// with [`SealError::Unsupported`].
    fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let _ = (aad, sealed);
        Err(SealError::Unsupported)
    }
}

/// The identity the engine runs as.
pub type Identity = Arc<dyn Signer>;

/// The bytes actually signed: `u32 BE len(namespace) ‖ namespace ‖ message`.
fn signed_bytes(namespace: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + namespace.len() + message.len());
    // A namespace longer than u32::MAX bytes is not representable; saturate
    // (such a namespace cannot exist in practice, and saturation keeps the
    // encoding injective for every representable length).
    let len = u32::try_from(namespace.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(namespace);
    out.extend_from_slice(message);
    out
}

/// The Ed25519 scheme (RFC 8032, strict verification).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519;

/// The Ed25519 scheme instance signers hand out.
pub static ED25519: Ed25519 = Ed25519;

impl Ed25519 {
    fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, IdentityError> {
        let arr: &[u8; ED25519_PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::MalformedPublicKey)?;
        let key = VerifyingKey::from_bytes(arr).map_err(|_| IdentityError::MalformedPublicKey)?;
        // Reject small-order keys (a "weak" key signs almost anything) and
        // non-canonical encodings (two byte strings for one key).
        if key.is_weak() || key.to_edwards().compress().as_bytes() != arr {
            return Err(IdentityError::MalformedPublicKey);
        }
        Ok(key)
    }
}

impl Scheme for Ed25519 {
    fn name(&self) -> &'static str {
        "ed25519"
    }

    fn parse_public_key(&self, bytes: &[u8]) -> Result<PublicKey, IdentityError> {
        Self::verifying_key(bytes)?;
        Ok(PublicKey::from_slice(bytes))
    }

    fn verify(
        &self,
        key: &PublicKey,
        namespace: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        crate::counters::count(crate::counters::Op::Verify);
        let key = Self::verifying_key(key.as_bytes())?;
        let signature =
            Signature::from_slice(signature).map_err(|_| IdentityError::MalformedSignature)?;
        key.verify_strict(&signed_bytes(namespace, message), &signature)
            .map_err(|_| IdentityError::BadSignature)
    }

    fn seal(
        &self,
        recipient: &PublicKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let key = Self::verifying_key(recipient.as_bytes()).map_err(|_| SealError::Recipient)?;
        crate::sealed::seal_to_x25519(key.to_montgomery().to_bytes(), aad, plaintext)
    }
}

/// An Ed25519 secret key (zeroized on drop).
pub struct Ed25519Signer {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    fn from_signing_key(key: SigningKey) -> Self {
        let public = PublicKey::from_slice(key.verifying_key().as_bytes());
        Self { key, public }
    }

    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// **INSECURE: for tests and benchmarks only.** A key derived from a
    /// `u64` (SHA-256 of a fixed label and the seed): anyone can recompute
    /// it. Never use it for a node on a real network.
    pub fn insecure_from_seed(seed: u64) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"shoal insecure test identity seed v1");
        ctx.update(&seed.to_be_bytes());
        let digest = ctx.finish();
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(digest.as_ref());
        Self::from_secret_bytes(&secret)
    }

    /// The key whose 32-byte secret (RFC 8032 seed) is `secret`.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(secret))
    }

    /// Reads a key file (format in the module docs).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let bad = |reason| IdentityError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len > MAX_KEY_FILE_LEN {
            return Err(bad("too large to be a shoal key file"));
        }
        // Pre-size so the buffer never reallocates (leaving unzeroized copies).
        let mut contents = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
        Read::by_ref(&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut contents)
            .map_err(io_err)?;
        let line = contents.strip_suffix(b"\n").unwrap_or(&contents);
        let hex = line
            .strip_prefix(ED25519_KEY_FILE_PREFIX.as_bytes())
            .and_then(|rest| rest.strip_prefix(b" "))
            .ok_or_else(|| bad("expected `shoal-ed25519-secret-v1 <64 hex characters>`"))?;
        if hex.len() != 64 {
            return Err(bad("the secret must be exactly 64 hex characters"));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        for (out, pair) in secret.iter_mut().zip(hex.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (
                pair.first().copied().and_then(hex_val),
                pair.get(1).copied().and_then(hex_val),
            ) else {
                return Err(bad("the secret contains a non-hex character"));
            };
            *out = (hi << 4) | lo;
        }
        Ok(Self::from_secret_bytes(&secret))
    }

    /// Writes this key to `path` (format in the module docs), creating it
    /// with mode `0600`. Fails with [`IdentityError::AlreadyExists`] if the
    /// file exists and `overwrite` is false.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let mut line = Zeroizing::new(String::with_capacity(ED25519_KEY_FILE_PREFIX.len() + 66));
        line.push_str(ED25519_KEY_FILE_PREFIX);
        line.push(' ');
        let secret = Zeroizing::new(self.key.to_bytes());
        for b in secret.iter() {
            line.push(hex_digit(b >> 4));
            line.push(hex_digit(b & 0xf));
        }
        line.push('\n');

        if !overwrite {
            let mut file = create_private(path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    IdentityError::AlreadyExists {
                        path: path.to_owned(),
                    }
                } else {
                    io_err(e)
                }
            })?;
            file.write_all(line.as_bytes()).map_err(io_err)?;
            return file.sync_all().map_err(io_err);
        }

        // Replace atomically: a fresh 0600 file beside the target, renamed over it.
        let mut tmp_name = path
            .file_name()
            .ok_or_else(|| IdentityError::KeyFile {
                path: path.to_owned(),
                reason: "not a file path",
            })?
            .to_owned();
        let mut nonce = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        tmp_name.push(format!(".tmp-{}", u64::from_be_bytes(nonce)));
        let tmp = path.with_file_name(tmp_name);
        let result = (|| {
            let mut file = create_private(&tmp)?;
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err)
    }
}

/// Creates a new file (never opens an existing one), mode 0600 on Unix.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex_digit(v: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(v & 0xf)])
}

impl Signer for Ed25519Signer {
    fn scheme(&self) -> &'static dyn Scheme {
        &ED25519
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, namespace: &[u8], message: &[u8]) -> Bytes {
        crate::counters::count(crate::counters::Op::Sign);
        use ed25519_dalek::Signer as _;
        let signature = self.key.sign(&signed_bytes(namespace, message));
        Bytes::copy_from_slice(&signature.to_bytes())
    }

    fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let secret = zeroize::Zeroizing::new(self.key.to_scalar_bytes());
        crate::sealed::open_with_x25519(&secret, aad, sealed)
    }
}

impl Ed25519Signer {
    /// This identity's key in X25519 form (what [`Scheme::seal`] agrees
    /// with).
    #[cfg(test)]
    pub(crate) fn x25519_public(&self) -> [u8; 32] {
        self.key.verifying_key().to_montgomery().to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shoal-crypto-identity-{}-{}",
            name,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sign_verify_with_domain_separation() {
        let signer = Ed25519Signer::insecure_from_seed(7);
        let key = ED25519
            .parse_public_key(signer.public_key().as_bytes())
            .unwrap();
        let sig = signer.sign(b"ns", b"hello");
        ED25519.verify(&key, b"ns", b"hello", &sig).unwrap();
        // Another namespace, or shifting bytes between namespace and
        // message, does not verify.
        assert!(matches!(
            ED25519.verify(&key, b"ns2", b"hello", &sig),
            Err(IdentityError::BadSignature)
        ));
        assert!(matches!(
            ED25519.verify(&key, b"nsh", b"ello", &sig),
            Err(IdentityError::BadSignature)
        ));
        assert!(matches!(
            ED25519.verify(&key, b"ns", b"hellO", &sig),
            Err(IdentityError::BadSignature)
        ));
        assert!(matches!(
            ED25519.verify(&key, b"ns", b"hello", &sig[..63]),
            Err(IdentityError::MalformedSignature)
        ));
        let other = Ed25519Signer::insecure_from_seed(8);
        assert!(matches!(
            ED25519.verify(other.public_key(), b"ns", b"hello", &sig),
            Err(IdentityError::BadSignature)
        ));
    }

    #[test]
    fn signed_bytes_layout() {
        assert_eq!(signed_bytes(b"ab", b"cd"), b"\x00\x00\x00\x02abcd");
    }

    #[test]
    fn parse_rejects_bad_keys() {
        let good = Ed25519Signer::insecure_from_seed(1);
        assert!(ED25519
            .parse_public_key(good.public_key().as_bytes())
            .is_ok());
        assert!(ED25519.parse_public_key(&[0u8; 31]).is_err());
        assert!(ED25519.parse_public_key(&[0u8; 33]).is_err());
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ED25519.parse_public_key(&identity).is_err());
        // All-zero encodes a point of order 4.
        assert!(ED25519.parse_public_key(&[0u8; 32]).is_err());
        // A y coordinate with no x (not on the curve): y = 2.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(ED25519.parse_public_key(&off_curve).is_err());
        // Non-canonical: y = p + 1 encodes the identity non-canonically.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(ED25519.parse_public_key(&non_canonical).is_err());
    }

    #[test]
    fn display_and_debug() {
        let k = PublicKey::from_bytes_unchecked(vec![0xab; 32]);
        assert_eq!(format!("{k}"), "abababababababab…");
        assert_eq!(format!("{k:#}"), "ab".repeat(32));
        assert_eq!(format!("{k:?}"), format!("PublicKey({})", "ab".repeat(32)));
    }

    #[test]
    fn seeded_keys_are_stable() {
        let a = Ed25519Signer::insecure_from_seed(1);
        let b = Ed25519Signer::insecure_from_seed(1);
        let c = Ed25519Signer::insecure_from_seed(2);
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(a.public_key(), c.public_key());
        assert_ne!(
            Ed25519Signer::generate().public_key(),
            Ed25519Signer::generate().public_key()
        );
    }

    #[test]
    fn save_load_round_trip_and_permissions() {
        let dir = tmp_dir("roundtrip");
        let path = dir.join("node.key");
        let signer = Ed25519Signer::insecure_from_seed(3);
        signer.save(&path, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("shoal-ed25519-secret-v1 "));
        assert!(text.ends_with('\n'));
        assert_eq!(text.len(), ED25519_KEY_FILE_PREFIX.len() + 1 + 64 + 1);
        let loaded = Ed25519Signer::load(&path).unwrap();
        assert_eq!(loaded.public_key(), signer.public_key());

        // Refuses to overwrite unless asked.
        let other = Ed25519Signer::insecure_from_seed(4);
        assert!(matches!(
            other.save(&path, false),
            Err(IdentityError::AlreadyExists { .. })
        ));
        assert_eq!(
            Ed25519Signer::load(&path).unwrap().public_key(),
            signer.public_key()
        );
        other.save(&path, true).unwrap();
        assert_eq!(
            Ed25519Signer::load(&path).unwrap().public_key(),
            other.public_key()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_rejects_other_formats() {
        let dir = tmp_dir("formats");
        let path = dir.join("bad.key");
        let hex = "11".repeat(32);
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            hex.clone().into_bytes(),
            format!("shoal-ed25519-secret-v2 {hex}\n").into_bytes(),
            format!("shoal-ed25519-secret-v1  {hex}\n").into_bytes(),
            format!("shoal-ed25519-secret-v1 {hex}\n\n").into_bytes(),
            format!("shoal-ed25519-secret-v1 {hex} \n").into_bytes(),
            format!("shoal-ed25519-secret-v1 {}\n", &hex[..62]).into_bytes(),
            format!("shoal-ed25519-secret-v1 {hex}00\n").into_bytes(),
            format!("shoal-ed25519-secret-v1 {}zz\n", &hex[..62]).into_bytes(),
            vec![b'a'; 1000],
        ];
        for (i, case) in cases.iter().enumerate() {
            fs::write(&path, case).unwrap();
            assert!(
                matches!(
                    Ed25519Signer::load(&path),
                    Err(IdentityError::KeyFile { .. })
                ),
                "case {i} accepted"
            );
        }
        // Without the trailing newline is accepted.
        fs::write(&path, format!("shoal-ed25519-secret-v1 {hex}")).unwrap();
        let a = Ed25519Signer::load(&path).unwrap();
        assert_eq!(
            a.public_key(),
            Ed25519Signer::from_secret_bytes(&[0x11; 32]).public_key()
        );
        assert!(matches!(
            Ed25519Signer::load(&dir.join("missing")),
            Err(IdentityError::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
