//! Fuzz target: see `shoal_crypto::fuzzing::handshake_dialee` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_crypto::fuzzing::handshake_dialee(data);
});
