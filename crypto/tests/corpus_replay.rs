//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same target bodies libFuzzer runs (`shoal_crypto::fuzzing`), so every corpus
//! entry and every regression input is checked by `cargo test --workspace`.
//! Needs the crate's `fuzzing` feature (`required-features`), which the
//! workspace's test run turns on through the root package's dev-dependencies.

use shoal_wire::fuzzing::{corpus_dir, replay_corpus as replay};

#[test]
fn handshake_dialer_corpus() {
    replay("handshake_dialer", shoal_crypto::fuzzing::handshake_dialer);
}

#[test]
fn handshake_dialee_corpus() {
    replay("handshake_dialee", shoal_crypto::fuzzing::handshake_dialee);
}

/// The hand-made seeds must pass, and the honest ones must really complete
/// (so the corpus reaches every phase, not only the Hello checks).
#[test]
fn seeds_pass() {
    for (target, name, data) in shoal_crypto::fuzzing::seeds() {
        let run = match target {
            "handshake_dialer" => shoal_crypto::fuzzing::run_dialer,
            _ => shoal_crypto::fuzzing::run_dialee,
        };
        let result = std::panic::catch_unwind(|| run(&data));
        let completed = result.unwrap_or_else(|_| panic!("{target}: seed {name} failed"));
        // Only the honest exchanges end complete (after_complete feeds one
        // more frame, which is an error).
        let want = name.starts_with("honest");
        assert_eq!(completed, want, "{target}: seed {name} completion");
    }
}

/// Writes the hand-made seeds into `fuzz/corpus/<target>/seed-*`. Run
/// explicitly:
/// `cargo test -p shoal-crypto --features fuzzing --test corpus_replay -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes into fuzz/corpus; run explicitly to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, name, data) in shoal_crypto::fuzzing::seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
