//! The `shoal bench` flags.
//!
//! # Design
//! One clap [`Args`] struct the `shoal` binary embeds as its `bench`
//! subcommand; its doc comments are the `--help` text. A flag left out
//! falls back to the `--config` file's value, then to the scenario's
//! default ([`crate::plan`] resolves them). The values stay private to the
//! runner: the binary only reads [`BenchArgs::config`], the file it parses.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Every scenario below (shard-rtt twice: sleeping, then busy-polling
    /// shards), each beside its baselines.
    All,
    /// One connection, `--size` messages, as fast as delivery allows.
    Throughput,
    /// One request in flight: 64 B (or `--size`) ping-pong round trips.
    Latency,
    /// `--inflight N` requests outstanding on one connection.
    Rpc,
    /// The request API: one `request` in flight, answered by an in-shard
    /// handler on the peer (64 B, or `--size`); round trips vs raw TCP.
    Request,
    /// Round trips between in-shard handlers on both nodes (no application
    /// thread: two threads in all, as in the raw ping-pong); 64 B.
    ShardRtt,
    /// One node sends each message to `--peers N` nodes (`Recipients::All`).
    Fanout,
    /// noise's BenchmarkSend: 5-byte (or `--size`) messages on one
    /// connection; time per message until enqueued and until delivered.
    Send,
    /// Resident memory per idle established connection (`--connections N`).
    Idle,
    /// Shard scaling: fan-out to 16 peers with 2 shards per node vs 1.
    Scale,
    /// One byte stream of `--size` bytes (default 1 GiB; 256 MiB under
    /// `all`) beside 64 B high-priority messages on the same connection.
    Stream,
    /// Gossip broadcast on `--nodes` nodes of `--degree` connections each,
    /// every node broadcasting in turn (`--size`, default 1 KiB), beside
    /// flooding over the same overlay.
    Gossip,
    /// Shard tasks against threads: rpc with 8 and with 2 in flight and
    /// request, each with thread-based ends and with both ends as shard
    /// tasks in the same rounds, and shard-rtt (in-shard handlers).
    Tasks,
}

impl Scenario {
    pub(crate) fn parse(s: &str) -> Result<Scenario, String> {
        <Scenario as ValueEnum>::from_str(s, true).map_err(|_| {
            format!(
                "`bench.scenario` must be one of all, throughput, latency, rpc, request, shard-rtt, fanout, send, idle, scale, stream, gossip, tasks (got {s:?})"
            )
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    /// io_uring and epoll side by side.
    Both,
    IoUring,
    Epoll,
    Auto,
}

/// `--cipher`: the record cipher implementation (`io.cipher`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CipherArg {
    /// ring below `io.cipher_threshold`, OpenSSL from it, on AVX-512 CPUs.
    Auto,
    /// ring for every frame.
    Ring,
}

/// Another library measured in the same rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Versus {
    /// commonware-p2p 2026.10 (`benches/commonware`), its better runtime.
    Commonware,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Scenario [default: all, or `[bench] scenario` from --config].
    #[arg(long, value_enum)]
    pub(crate) scenario: Option<Scenario>,
    /// Message size in bytes (throughput default 65536, fanout 16384; latency
    /// and rpc use 64 unless run alone with --size); stream: the bytes to
    /// move (default 1GiB). Takes KiB / MiB / GiB suffixes.
    #[arg(long, value_parser = parse_size)]
    pub(crate) size: Option<usize>,
    /// Messages per round (default: 256 MiB worth for throughput, 5000 round
    /// trips for latency and request, 30000 requests for rpc, 20000 sends for
    /// fanout, 3000 for scale).
    #[arg(long)]
    pub(crate) messages: Option<usize>,
    /// Backend [default: both, or `io.backend` from --config].
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendArg>,
    /// Data shards per node [default: 1, or `io.shards` from --config].
    #[arg(long)]
    pub(crate) shards: Option<usize>,
    /// Record cipher: `auto` (OpenSSL for large frames on AVX-512 CPUs) or
    /// `ring` for every frame, for A/B runs [default: `io.cipher` from
    /// --config, or auto].
    #[arg(long, value_enum)]
    pub(crate) cipher: Option<CipherArg>,
    /// Under `--cipher auto`: frame bodies of at least this many bytes go to
    /// OpenSSL [default: `io.cipher_threshold` from --config, or 4096].
    #[arg(long, value_name = "BYTES")]
    pub(crate) cipher_threshold: Option<usize>,
    /// Shards spin instead of sleeping.
    #[arg(long)]
    pub(crate) busy_poll: bool,
    /// io_uring shards sleep in the ring instead of in their doorbell epoll
    /// set (`io.uring.doorbell = false`), for A/B runs.
    #[arg(long)]
    pub(crate) no_doorbell: bool,
    /// Application threads blocked in a receive or request look for their
    /// result this many µs (yielding the core) before parking
    /// [default: the preset's `io.wait_spin`, or `io.wait_spin` from --config].
    #[arg(long, value_name = "US")]
    pub(crate) wait_spin_us: Option<u64>,
    /// Shards keep polling this many µs after a turn with work before they
    /// sleep [default: the preset's `io.idle_spin`, or `io.idle_spin` from
    /// --config].
    #[arg(long, value_name = "US")]
    pub(crate) idle_spin_us: Option<u64>,
    /// Pin every node's shards to their own cores (node i starts at core
    /// i × shards), so the sending and the receiving shard never share one.
    #[arg(long)]
    pub(crate) pin: bool,
    /// Interleaved rounds; medians are reported [default: 3].
    #[arg(long)]
    pub(crate) rounds: Option<usize>,
    /// rpc: requests outstanding on the connection [default: 32].
    #[arg(long)]
    pub(crate) inflight: Option<usize>,
    /// throughput, send: hand messages to the engine N at a time with
    /// `send_batch_wait(..).blocking()` instead of one `send_wait(..).blocking()` each
    /// [default: 1].
    #[arg(long, value_name = "N")]
    pub(crate) batch: Option<usize>,
    /// fanout: receiving nodes [default: 3].
    #[arg(long)]
    pub(crate) peers: Option<usize>,
    /// gossip: nodes in the mesh [default: 30].
    #[arg(long)]
    pub(crate) nodes: Option<usize>,
    /// gossip: connections per node (a ring lattice: degree / 2 on either
    /// side) [default: 6].
    #[arg(long)]
    pub(crate) degree: Option<usize>,
    /// idle: connections the node holds [default: 2000].
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// shard-rtt: the hub also holds N idle authenticated connections (raw
    /// clients that never speak) on the same shard, so a loop turn's cost
    /// with many quiet peers shows in the round trip [default: 0].
    #[arg(long, value_name = "N")]
    pub(crate) crowd: Option<usize>,
    /// rpc, request: also run both ends as tasks on the shards
    /// (`NetworkHandle::spawn_on`), in the same rounds as the thread-based
    /// run (`all` always does).
    #[arg(long)]
    pub(crate) tasks: bool,
    /// idle, stream: measure in this process (the default runs each idle
    /// round, and each stream round's receiver, in a fresh child process,
    /// so one run's freed memory cannot hide the next run's growth and the
    /// stream's receiver is measured alone).
    #[arg(long, hide = true)]
    pub(crate) in_process: bool,
    /// stream: be the receiving node for the sender with this key (hex),
    /// speaking JSON lines on stdout: how the stream scenario runs its
    /// receiver in a child process.
    #[arg(long, hide = true, value_name = "KEY")]
    pub(crate) receiver_for: Option<String>,
    /// throughput: run this library in the same rounds, at the same size and
    /// count, and report shoal / it; without --size, at 64 B, 1 KiB, 16 KiB
    /// and 64 KiB.
    #[arg(long, value_enum, value_name = "LIBRARY")]
    pub(crate) vs: Option<Versus>,
    /// The commonware harness binary for --vs commonware [default:
    /// benches/commonware/target/release/cw-bench, built if missing].
    #[arg(long, value_name = "PATH", requires = "vs")]
    pub(crate) cw_bench: Option<PathBuf>,
    /// Node TOML (same file as `shoal node`): preset, limits, backend,
    /// shards, and an optional `[bench]` table. Flags override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Write an SVG plot (latency percentiles, throughput over time).
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The table as Markdown, headed by the machine (CPU model, cores,
    /// kernel), the date (UTC) and this command line: the form the README
    /// and benches/README.md tables are pasted from.
    #[arg(long, conflicts_with = "json")]
    pub(crate) markdown: bool,
}

impl BenchArgs {
    /// The node TOML given with `--config`, if any: the binary parses it
    /// into the [`FileSettings`](crate::FileSettings) it passes to
    /// [`run`](crate::run).
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// A byte count: digits with an optional `KiB`, `MiB` or `GiB` suffix.
fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(format!(
                "`{s}`: a byte count, optionally with KiB, MiB or GiB"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{s}`: a byte count, optionally with KiB, MiB or GiB"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("GiB").is_err());
    }
}
