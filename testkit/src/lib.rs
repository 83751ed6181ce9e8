//! # shoal-testkit
//!
//! Support code for shoal's integration tests (`tests/`) and for the
//! benchmark runner (`benches/runner`): the parts of an attacker or of a
//! measurement that no embedder needs, kept out of the shipped libraries.
//!
//! # Design
//! - [`raw_client`]: a bare shoal/1 dialer over a blocking socket. It
//!   completes a real handshake and hands back the socket and the session
//!   keys, so a test can hold a silent connection, seal records of any
//!   shape, or stall mid-handshake.
//! - [`process`]: readings of this process (resident memory), for the
//!   tests and scenarios that bound or measure it.
//!
//! Not provided: a connection state machine, keep-alives, or any stability
//! promise. The crate is `publish = false` and only tests and the bench
//! runner depend on it.

#![forbid(unsafe_code)]

pub mod process;
pub mod raw_client;
