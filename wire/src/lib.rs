//! # shoal-wire
//!
//! The shoal/1 wire format with no I/O and no clock: protobuf messages
//! ([`message`]), the length-prefixed frame codec ([`frame`]), many
//! length-delimited records per frame plaintext ([`record`]), chunking and
//! bounded reassembly of large messages ([`chunk`]) and bounded zstd
//! compression ([`compress`]).
//!
//! `wire.proto` beside this crate is the human-readable spec.
#![forbid(unsafe_code)]

pub mod message;

pub use message::*;
