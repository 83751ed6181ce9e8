//! Fuzz target: see `shoal_wire::fuzzing::frame_decoder` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_wire::fuzzing::frame_decoder(data);
});
