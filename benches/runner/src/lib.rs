//! # shoal-bench
//!
//! The runner behind `shoal bench`: a local loopback cluster with same-run
//! baselines.
//!
//! Every figure is measured beside its baseline in the same process, rounds
//! interleaved (baseline, io_uring, epoll, baseline, ...), and the median of
//! the rounds is reported, because these machines drift by up to 2x between
//! runs. Every run checks what was delivered: counts, sizes and content, and
//! reports what actually arrived (`delivered`): a receiver that sees nothing
//! for a stall bound (10 s) stops and the shortfall is reported, never
//! hidden.
//!
//! Scenarios:
//! - `throughput`: one connection, `--size` messages as fast as delivery
//!   allows (baseline: one core's raw ring ChaCha20-Poly1305 seal rate, and
//!   a raw sealed TCP stream for large messages).
//! - `latency`: one request in flight, 64 B ping-pong (baseline: raw TCP
//!   ping-pong p50 over loopback).
//! - `request`: the request API, one request in flight, answered by an
//!   in-shard handler (baseline: raw TCP ping-pong).
//! - `shard-rtt`: 64 B round trips between in-shard handlers on both nodes,
//!   no application thread (baseline: raw TCP ping-pong whose two threads
//!   sleep in the kernel as idle shards do, or spin under `--busy-poll`).
//! - `rpc`: `--inflight N` requests outstanding on one connection, echoed by
//!   the peer; latency is per completed request (baseline: raw TCP with the
//!   same N requests pipelined).
//! - `fanout`: one node sends every message to `--peers N` nodes with
//!   `Recipients::All`; aggregate delivered msgs/s (baseline: raw seal rate,
//!   since every copy is sealed under its own connection key).
//! - `send`: noise's BenchmarkSend, time per message until enqueued and
//!   until delivered.
//! - `idle`: resident memory per idle established connection.
//! - `scale`: fan-out to 16 peers with 2 shards per node against 1.
//!
//! # Design
//! The `shoal` binary embeds [`BenchArgs`] as its `bench` subcommand, reads
//! the `--config` file itself and calls [`run`] with the file's values as a
//! [`FileSettings`]; the runner never parses TOML. Inside:
//! - `args`, `plan`: the flags, and the plan they resolve to with the file.
//! - `schedule`: the order of a run and the interleaving of rounds.
//! - `cluster`, `traffic`: the nodes a scenario runs on, its payloads and
//!   how arrivals are counted and checked.
//! - `throughput`, `round_trip`, `shard_rtt`, `fanout`, `idle`: one
//!   scenario (or a family of them) each.
//! - `baseline`: the raw, engine-less ceilings; `competitor`: commonware-p2p
//!   run in the same rounds (`--vs commonware`).
//! - `result`, `report`, `markdown`, `plot`: figures, medians, the table,
//!   its Markdown form with the machine and command that produced it, JSON
//!   and SVG.
//!
//! Not provided: a library API for embedders (everything but the entry
//! point is private), or any measurement across processes other than the
//! idle scenario's child runs.

#![forbid(unsafe_code)]

use std::path::PathBuf;

mod args;
mod baseline;
mod child;
mod cluster;
mod competitor;
mod fanout;
mod gossip;
mod idle;
mod markdown;
mod plan;
mod plot;
mod report;
mod result;
mod round_trip;
mod schedule;
mod shard_rtt;
mod stream;
mod tasks;
mod throughput;
mod traffic;

pub use args::BenchArgs;
pub use plan::{BenchSettings, FileSettings};

/// Why the bench did not run.
#[derive(Debug)]
pub enum BenchError {
    /// A flag or the config file's `[bench]` table is invalid (exit code 2).
    Config(String),
    /// The engine config (the file's, with the flags applied) does not
    /// validate (exit code 2). `file` is the `--config` file, if any.
    InvalidConfig {
        file: Option<PathBuf>,
        error: shoal_engine::Error,
    },
    /// The run failed (exit code 1).
    Run(String),
}

impl From<String> for BenchError {
    fn from(s: String) -> Self {
        BenchError::Run(s)
    }
}

/// Runs the scenarios `args` asks for over `file` (the `--config` file's
/// values, if one was given) and prints the table, Markdown or JSON on
/// stdout.
///
/// The idle scenario runs each backend, and the stream scenario its
/// receiving node, in a child process: this executable again, as `bench
/// --scenario idle --in-process --json` or `bench --scenario stream
/// --receiver-for <key>`, so it must be one whose `bench` subcommand is
/// [`BenchArgs`] (the `shoal` binary).
pub fn run(args: BenchArgs, file: Option<FileSettings>) -> Result<(), BenchError> {
    let plan = plan::plan(&args, file)?;
    if let Some(sender) = &args.receiver_for {
        let backend = *plan
            .backends
            .first()
            .ok_or_else(|| "no backend".to_string())?;
        return Ok(stream::receiver_main(&plan, backend, sender)?);
    }
    let mut results = schedule::run_scenarios(&plan, &args)?;
    let cipher = plan.base.io.cipher_policy().label();
    for r in &mut results {
        r.cipher.clone_from(&cipher);
    }
    report::report(&results, &args, plan.rounds)?;
    Ok(())
}
