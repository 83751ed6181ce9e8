//! The `identity` and `listen` sections: who this node is and where it can
//! be reached.
//!
//! # Design
//!
//! The signing key itself is not a file setting: code sets
//! [`IdentitySettings::signer`], a file names a
//! [`IdentitySettings::key_file`] that [`IdentitySettings::load_key_file`]
//! reads. The engine never reads files on its own.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_crypto::{Ed25519Signer, Identity, IdentityError};

use super::preset::{Preset, Section};

/// `[identity]`: the node's key and the namespace its signatures live in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct IdentitySettings {
    /// This node's signing key: a fresh random key unless set (in code, or
    /// from [`IdentitySettings::key_file`]). Not read from a file.
    #[serde(skip)]
    pub signer: Identity,
    /// Ed25519 key file (written by `shoal keygen` or
    /// [`Ed25519Signer::save`]) that [`IdentitySettings::load_key_file`]
    /// reads into [`IdentitySettings::signer`]. `shoal node` resolves a
    /// relative path against the config file's directory. Absent: the
    /// random key, for this run only (peers cannot authorize a key that
    /// changes on restart).
    pub key_file: Option<PathBuf>,
    /// Domain-separation namespace for every signature (handshakes, address
    /// records). Nodes with different namespaces cannot talk to each other.
    /// A non-empty string in a file. Default `"shoal/1"`.
    #[serde(with = "namespace")]
    pub namespace: Vec<u8>,
}

impl Section for IdentitySettings {
    fn preset(_: Preset) -> Self {
        Self {
            signer: Arc::new(Ed25519Signer::generate()),
            key_file: None,
            namespace: b"shoal/1".to_vec(),
        }
    }
}

impl fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("signer", self.signer.public_key())
            .field("key_file", &self.key_file)
            .field("namespace", &String::from_utf8_lossy(&self.namespace))
            .finish()
    }
}

impl IdentitySettings {
    /// Replaces [`IdentitySettings::signer`] with the key in
    /// [`IdentitySettings::key_file`] (a relative path is taken relative to
    /// `base_dir`). Returns whether a key file was read: `false` leaves the
    /// signer as it was.
    pub fn load_key_file(&mut self, base_dir: &Path) -> Result<bool, IdentityError> {
        let Some(file) = &self.key_file else {
            return Ok(false);
        };
        let path = if file.is_relative() {
            base_dir.join(file)
        } else {
            file.clone()
        };
        self.signer = Arc::new(Ed25519Signer::load(&path)?);
        Ok(true)
    }
}

/// `[listen]`: the address this node accepts connections on and the one it
/// tells its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct ListenSettings {
    /// Address to accept connections on. Absent: a dial-only node.
    pub address: Option<SocketAddr>,
    /// Address advertised in this node's signed address record. Absent:
    /// [`ListenSettings::address`].
    pub advertise: Option<SocketAddr>,
}

impl Section for ListenSettings {
    fn preset(_: Preset) -> Self {
        Self {
            address: None,
            advertise: None,
        }
    }
}

/// A namespace is written as a non-empty string.
mod namespace {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(ns) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Err(serde::ser::Error::custom("the namespace is not UTF-8")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(text.into_bytes())
    }
}
