//! Fuzz target: see `shoal_engine::fuzzing::discovery_messages` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_engine::fuzzing::discovery_messages(data);
});
