//! # shoal-crypto
#![forbid(unsafe_code)]
