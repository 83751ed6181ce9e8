//! Fuzz target: see `shoal_wire::fuzzing::chunk_assembler` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_wire::fuzzing::chunk_assembler(data);
});
