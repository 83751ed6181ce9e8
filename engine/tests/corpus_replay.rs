//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same target bodies libFuzzer runs (`shoal_engine::fuzzing`), so every corpus
//! entry and every regression input is checked by `cargo test --workspace`.
//! Needs the crate's `fuzzing` feature (`required-features`), which the
//! workspace's test run turns on through the root package's dev-dependencies.

use shoal_wire::fuzzing::{corpus_dir, replay_corpus as replay};

#[test]
fn discovery_messages_corpus() {
    replay(
        "discovery_messages",
        shoal_engine::fuzzing::discovery_messages,
    );
}

#[test]
fn kademlia_messages_corpus() {
    replay(
        "kademlia_messages",
        shoal_engine::fuzzing::kademlia_messages,
    );
}

/// The hand-made seeds must pass.
#[test]
fn seeds_pass() {
    for (target, name, data) in shoal_engine::fuzzing::seeds() {
        let run = match target {
            "discovery_messages" => shoal_engine::fuzzing::discovery_messages,
            _ => shoal_engine::fuzzing::kademlia_messages,
        };
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: seed {name} failed");
    }
}

/// Writes the hand-made seeds into `fuzz/corpus/<target>/seed-*`. Run
/// explicitly:
/// `cargo test -p shoal-engine --features fuzzing --test corpus_replay -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes into fuzz/corpus; run explicitly to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, name, data) in shoal_engine::fuzzing::seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
