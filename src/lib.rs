//! # shoal
//!
//! Facade over the shoal crates: [`wire`], [`crypto`] and [`engine`].
pub use shoal_crypto as crypto;
pub use shoal_engine as engine;
pub use shoal_wire as wire;
