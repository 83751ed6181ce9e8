//! Fuzz target: see `shoal_wire::fuzzing::stream_records` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_wire::fuzzing::stream_records(data);
});
