//! `shoal bench`: a local loopback cluster with same-run baselines.
//!
//! Every figure is measured beside its baseline in the same process, rounds
//! interleaved (baseline, io_uring, epoll, baseline, ...), and the median of
//! the rounds is reported, because these machines drift by up to 2x between
//! runs. Every run checks what was delivered: counts, sizes and content, and
//! reports what actually arrived (`delivered`): a receiver that sees nothing
//! for [`STALL`] stops and the shortfall is reported, never hidden.
//!
//! Scenarios:
//! - `throughput`: one connection, `--size` messages as fast as delivery
//!   allows (baseline: one core's raw ring ChaCha20-Poly1305 seal rate).
//! - `latency`: one request in flight, 64 B ping-pong (baseline: raw TCP
//!   ping-pong p50 over loopback).
//! - `shard-rtt`: 64 B round trips between in-shard handlers on both nodes,
//!   no application thread (baseline: raw TCP ping-pong whose two threads
//!   sleep in the kernel as idle shards do, or spin under `--busy-poll`).
//! - `rpc`: `--inflight N` requests outstanding on one connection, echoed by
//!   the peer; latency is per completed request (baseline: raw TCP with the
//!   same N requests pipelined).
//! - `fanout`: one node sends every message to `--peers N` nodes with
//!   `Recipients::All`; aggregate delivered msgs/s (baseline: raw seal rate,
//!   since every copy is sealed under its own connection key).

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::Serialize;
use shoal::engine::{
    Backend, Config, Ed25519Signer, Network, NetworkHandle, PublicKey, Receiver, Recipients, Sender,
};

use crate::config_file::{engine_error, FileConfig};
use crate::plot;

/// A receiver that sees no message for this long gives up and reports what
/// arrived (a liveness bound, not a performance threshold).
const STALL: Duration = Duration::from_secs(10);
/// Width of one throughput-over-time bucket.
const BUCKET: Duration = Duration::from_millis(10);
/// At most this many buckets are kept (bounded memory on long runs).
const MAX_BUCKETS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
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
}

impl Scenario {
    fn parse(s: &str) -> Result<Scenario, String> {
        <Scenario as ValueEnum>::from_str(s, true).map_err(|_| {
            format!(
                "`bench.scenario` must be one of all, throughput, latency, rpc, request, shard-rtt, fanout, send, idle, scale (got {s:?})"
            )
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// io_uring and epoll side by side.
    Both,
    IoUring,
    Epoll,
    Auto,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Scenario [default: all, or `[bench] scenario` from --config].
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Message size in bytes (throughput default 65536, fanout 16384; latency
    /// and rpc use 64 unless run alone with --size).
    #[arg(long)]
    size: Option<usize>,
    /// Messages per round (default: 256 MiB worth for throughput, 5000 round
    /// trips for latency and request, 30000 requests for rpc, 20000 sends for
    /// fanout, 3000 for scale).
    #[arg(long)]
    messages: Option<usize>,
    /// Backend [default: both, or `backend` from --config].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Data shards per node [default: 1, or `shards` from --config].
    #[arg(long)]
    shards: Option<usize>,
    /// Shards spin instead of sleeping.
    #[arg(long)]
    busy_poll: bool,
    /// io_uring shards sleep in the ring instead of in their doorbell epoll
    /// set (`uring_doorbell = false`), for A/B runs.
    #[arg(long)]
    no_doorbell: bool,
    /// Application threads blocked in a receive or request look for their
    /// result this many µs (yielding the core) before parking
    /// [default: the preset's `wait_spin`, or `wait_spin` from --config].
    #[arg(long, value_name = "US")]
    wait_spin_us: Option<u64>,
    /// Shards keep polling this many µs after a turn with work before they
    /// sleep [default: the preset's `idle_spin`, or `idle_spin` from
    /// --config].
    #[arg(long, value_name = "US")]
    idle_spin_us: Option<u64>,
    /// Pin every node's shards to their own cores (node i starts at core
    /// i × shards), so the sending and the receiving shard never share one.
    #[arg(long)]
    pin: bool,
    /// Interleaved rounds; medians are reported [default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// rpc: requests outstanding on the connection [default: 32].
    #[arg(long)]
    inflight: Option<usize>,
    /// throughput, send: hand messages to the engine N at a time with
    /// `send_batch_to_blocking` instead of one `send_to_blocking` each
    /// [default: 1].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// fanout: receiving nodes [default: 3].
    #[arg(long)]
    peers: Option<usize>,
    /// idle: connections the node holds [default: 2000].
    #[arg(long)]
    connections: Option<usize>,
    /// shard-rtt: the hub also holds N idle authenticated connections (raw
    /// clients that never speak) on the same shard, so a loop turn's cost
    /// with many quiet peers shows in the round trip [default: 0].
    #[arg(long, value_name = "N")]
    crowd: Option<usize>,
    /// idle: measure in this process (the default runs each backend in a
    /// fresh child process, so one run's freed memory cannot hide the next
    /// run's growth).
    #[arg(long, hide = true)]
    in_process: bool,
    /// Node TOML (same file as `shoal node`): preset, limits, backend,
    /// shards, and an optional `[bench]` table. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write an SVG plot (latency percentiles, throughput over time).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Why the bench did not run.
pub enum BenchError {
    /// The config file or a flag is invalid (exit code 2).
    Config(String),
    /// The run failed (exit code 1).
    Run(String),
}

impl From<String> for BenchError {
    fn from(s: String) -> Self {
        BenchError::Run(s)
    }
}

impl From<&str> for BenchError {
    fn from(s: &str) -> Self {
        BenchError::Run(s.to_string())
    }
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    scenario: &'static str,
    backend: String,
    shards: usize,
    size: usize,
    /// Messages that should arrive (fanout: sends x peers).
    messages: usize,
    /// Messages that did arrive (checked for size and content).
    delivered: usize,
    seconds: f64,
    msgs_per_sec: f64,
    bytes_per_sec: f64,
    /// Round-trip percentiles in µs; null for throughput and fanout.
    latency_us: Option<Latency>,
    /// rpc: requests outstanding.
    #[serde(skip_serializing_if = "Option::is_none")]
    inflight: Option<usize>,
    /// throughput, send: messages per `send_batch_to_blocking` call (absent:
    /// one `send_to_blocking` per message).
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    /// fanout: receiving nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<usize>,
    /// send: seconds until the last `send` returned (enqueued, not yet
    /// delivered); `seconds` is until the last delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    enqueue_seconds: Option<f64>,
    /// idle: resident KiB per established idle connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_per_connection_kib: Option<f64>,
    /// Same-run baseline: raw ring seal bytes/s (throughput, fanout) or raw
    /// TCP ping-pong p50 µs (latency; rpc: same number pipelined), median
    /// over rounds.
    baseline: f64,
    /// shoal / baseline (throughput, fanout: higher is better; latency, rpc:
    /// p50 ratio, lower is better).
    ratio: f64,
    /// throughput: the same-run rate of a raw sealed TCP stream (one thread
    /// copies, seals and writes; one reads and opens; no engine), bytes/s,
    /// median over rounds: what this machine allows one encrypted connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed_stream: Option<f64>,
    /// latency, request, rpc: how long the waiting application threads (and
    /// the raw TCP baseline's two threads, to match) look for their next
    /// message before parking, µs (`IoSettings::wait_spin`; 0 under busy-poll).
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_spin_us: Option<u64>,
    /// shard-rtt: the shards busy-polled (and the raw baseline's two threads
    /// spun, to match); otherwise both slept in the kernel when idle.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    busy_poll: bool,
    /// shard-rtt: idle connections the hub held beside the measured one.
    #[serde(skip_serializing_if = "Option::is_none")]
    crowd: Option<usize>,
    /// Percentile curve for the plot: (quantile, µs).
    #[serde(skip)]
    curve: Vec<(f64, f64)>,
    /// Delivered msgs/s per [`BUCKET`] for the plot.
    #[serde(skip)]
    timeline: Vec<f64>,
}

impl RunResult {
    fn new(scenario: &'static str, backend: String, shards: usize, size: usize) -> Self {
        RunResult {
            scenario,
            backend,
            shards,
            size,
            messages: 0,
            delivered: 0,
            seconds: 0.0,
            msgs_per_sec: 0.0,
            bytes_per_sec: 0.0,
            latency_us: None,
            inflight: None,
            batch: None,
            peers: None,
            enqueue_seconds: None,
            rss_per_connection_kib: None,
            baseline: 0.0,
            ratio: 0.0,
            sealed_stream: None,
            wait_spin_us: None,
            busy_poll: false,
            crowd: None,
            curve: Vec::new(),
            timeline: Vec::new(),
        }
    }

    fn finish(&mut self, messages: usize, delivered: usize, seconds: f64, bytes: usize) {
        self.messages = messages;
        self.delivered = delivered;
        self.seconds = seconds;
        let s = seconds.max(1e-9);
        self.msgs_per_sec = delivered as f64 / s;
        self.bytes_per_sec = bytes as f64 / s;
    }

    fn with_latency(mut self, h: &Histogram<u64>) -> Self {
        if !h.is_empty() {
            self.latency_us = Some(lat(h));
            self.curve = plot::percentile_curve(h);
        }
        self
    }

    fn is_latency(&self) -> bool {
        matches!(self.scenario, "latency" | "rpc" | "request" | "shard-rtt")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Everything a run needs, resolved from flags, the config file and defaults.
#[derive(Clone)]
struct Plan {
    scenario: Scenario,
    size: Option<usize>,
    messages: Option<usize>,
    backends: Vec<Backend>,
    shards: usize,
    rounds: usize,
    inflight: usize,
    peers: usize,
    batch: usize,
    /// shard-rtt: idle connections the hub holds beside the measured one.
    crowd: usize,
    /// Template for every node (listen and identity replaced per node).
    base: Config,
}

fn plan(args: &BenchArgs) -> Result<Plan, BenchError> {
    let file = match &args.config {
        Some(p) => Some(
            FileConfig::load(p)
                .map_err(|e| BenchError::Config(format!("invalid config {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let bench = file.as_ref().and_then(|f| f.bench.as_ref());
    let scenario = match (args.scenario, bench.and_then(|b| b.scenario.as_deref())) {
        (Some(s), _) => s,
        (None, Some(s)) => Scenario::parse(s).map_err(BenchError::Config)?,
        (None, None) => Scenario::All,
    };
    let loopback = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let mut base = match &file {
        Some(f) => {
            let mut c = f.engine_config();
            c.listen.address = loopback;
            c
        }
        None => {
            let mut c = Config::local(loopback);
            c.limits.peer_send_backlog = 8192;
            c.io.shards = 1;
            c
        }
    };
    let file_backend = file
        .as_ref()
        .filter(|f| f.sets("io.backend"))
        .map(|f| f.io.backend);
    let backends = match (args.backend, file_backend) {
        (Some(BackendArg::Both), _) | (None, None) => vec![Backend::IoUring, Backend::Epoll],
        (Some(BackendArg::IoUring), _) => vec![Backend::IoUring],
        (Some(BackendArg::Epoll), _) => vec![Backend::Epoll],
        (Some(BackendArg::Auto), _) => vec![Backend::Auto],
        (None, Some(b)) => vec![b],
    };
    if let Some(s) = args.shards {
        base.io.shards = s;
    } else if !file.as_ref().is_some_and(|f| f.sets("io.shards")) {
        base.io.shards = 1;
    }
    base.io.busy_poll |= args.busy_poll;
    // Every bench node is on 127.0.0.1: a per-address limit from a
    // `recommended` config file would refuse the cluster's own peers.
    base.admission.max_inbound_per_ip = 0;
    base.admission.accept_rate_per_ip = 0;
    if args.no_doorbell {
        base.io.uring.doorbell = false;
    }
    if let Some(us) = args.wait_spin_us {
        base.io.wait_spin = Duration::from_micros(us);
    }
    if let Some(us) = args.idle_spin_us {
        base.io.idle_spin = Duration::from_micros(us);
    }
    base.io.pin_cores |= args.pin;
    base.validate().map_err(|e| {
        BenchError::Config(format!(
            "invalid config{}: {}",
            args.config
                .as_ref()
                .map(|p| format!(" {}", p.display()))
                .unwrap_or_default(),
            engine_error(e)
        ))
    })?;
    let pick = |flag: Option<usize>, file: Option<usize>| flag.or(file);
    let inflight = pick(args.inflight, bench.and_then(|b| b.inflight)).unwrap_or(32);
    let peers = pick(args.peers, bench.and_then(|b| b.peers)).unwrap_or(3);
    let batch = args.batch.unwrap_or(1);
    if batch == 0 {
        return Err(BenchError::Config("`batch` must be > 0".into()));
    }
    if inflight == 0 {
        return Err(BenchError::Config("`inflight` must be > 0".into()));
    }
    if peers == 0 {
        return Err(BenchError::Config("`peers` must be > 0".into()));
    }
    Ok(Plan {
        scenario,
        size: pick(args.size, bench.and_then(|b| b.size)),
        messages: pick(args.messages, bench.and_then(|b| b.messages)),
        backends,
        shards: base.shard_count(),
        rounds: pick(args.rounds, bench.and_then(|b| b.rounds))
            .unwrap_or(3)
            .max(1),
        inflight,
        peers,
        batch,
        crowd: args.crowd.unwrap_or(0),
        base,
    })
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let plan = plan(&args)?;
    let p = &plan;
    let rounds = p.rounds;
    let all = p.scenario == Scenario::All;
    let wants = |s: Scenario| all || p.scenario == s;
    let scenarios = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Rpc,
        Scenario::Request,
        Scenario::ShardRtt,
        Scenario::Fanout,
        Scenario::Send,
        Scenario::Idle,
        Scenario::Scale,
    ]
    .into_iter()
    .filter(|s| wants(*s))
    .count();
    // `all` runs shard-rtt twice (sleeping and busy-polling shards).
    let extra = usize::from(all && !p.base.io.busy_poll);
    let steps = (scenarios + extra) * rounds * (1 + p.backends.len());
    let pb = progress_bar(steps as u64);
    let step = |what: String| {
        pb.set_message(what);
    };
    let mut results = Vec::new();

    if wants(Scenario::Throughput) {
        let size = p.size.unwrap_or(64 * 1024).max(1);
        let messages = p
            .messages
            .unwrap_or(((256usize << 20) / size).clamp(1000, 2_000_000))
            .max(1);
        let mut seal = Vec::new();
        let mut stream = Vec::new();
        let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
        for round in 0..rounds {
            step(format!("throughput {}/{rounds}: raw ring seal", round + 1));
            seal.push(raw_seal_bytes_per_sec(size, Duration::from_millis(500)));
            // A ceiling for large messages only: the engine packs small ones
            // many to a frame, which this stream (one frame each) does not.
            if size >= 16 * 1024 {
                step(format!(
                    "throughput {}/{rounds}: raw sealed TCP stream",
                    round + 1
                ));
                stream.push(raw_sealed_stream_bytes_per_sec(size, messages)?);
            }
            pb.inc(1);
            for (i, b) in p.backends.iter().enumerate() {
                step(format!("throughput {}/{rounds}: {}", round + 1, label(*b)));
                per[i].push(throughput(p, *b, size, messages, "throughput")?);
                pb.inc(1);
            }
        }
        let (seal, stream) = (median(seal), median(stream));
        for runs in per {
            let mut r = summarize(runs, seal);
            r.sealed_stream = (stream > 0.0).then_some(stream);
            results.push(r);
        }
    }
    // One request in flight, against a raw TCP ping-pong: echoed by the
    // peer's application (`latency`) or by an in-shard handler (`request`).
    for (scenario, name) in [
        (Scenario::Latency, "latency"),
        (Scenario::Request, "request"),
    ] {
        if !wants(scenario) {
            continue;
        }
        let size = if all { 64 } else { p.size.unwrap_or(64) };
        let messages = p.messages.unwrap_or(5000).max(1);
        results.extend(interleaved(
            &pb,
            rounds,
            &p.backends,
            name,
            "raw TCP ping-pong",
            || {
                raw_tcp_pingpong(
                    size,
                    messages,
                    1,
                    Wait::SpinThenBlock(p.base.effective_wait_spin()),
                )
            },
            |b| match scenario {
                Scenario::Request => request_rpc(p, b, size, messages),
                _ => rpc(p, b, size, messages, 1, "latency"),
            },
        )?);
        spin_matched(&mut results, p);
    }
    if wants(Scenario::ShardRtt) {
        // The baseline's two threads wait as the shards do: they spin for
        // `idle_spin` then sleep in the kernel, or spin throughout under
        // busy-poll (bounded by STALL). The whole table (`all`) also runs
        // the busy-poll variant, so one command shows both targets.
        let size = if all { 64 } else { p.size.unwrap_or(64) };
        let messages = p.messages.unwrap_or(5000).max(1);
        let mut variants = vec![p.clone()];
        if all && !p.base.io.busy_poll {
            let mut busy = p.clone();
            busy.base.io.busy_poll = true;
            variants.push(busy);
        }
        for q in &variants {
            let wait = if q.base.io.busy_poll {
                Wait::BusyPoll
            } else {
                Wait::SpinThenBlock(q.base.io.idle_spin)
            };
            results.extend(interleaved(
                &pb,
                rounds,
                &q.backends,
                "shard-rtt",
                "raw TCP ping-pong",
                || raw_tcp_pingpong(size, messages, 1, wait),
                |b| shard_rtt(q, b, size, messages),
            )?);
            if !q.base.io.busy_poll {
                for r in results.iter_mut().rev().take(q.backends.len()) {
                    r.wait_spin_us = Some(q.base.io.idle_spin.as_micros() as u64);
                }
            }
        }
    }
    if wants(Scenario::Rpc) {
        let size = if all { 64 } else { p.size.unwrap_or(64) };
        let messages = p.messages.unwrap_or(30_000).max(1);
        results.extend(interleaved(
            &pb,
            rounds,
            &p.backends,
            "rpc",
            &format!("raw TCP, {} pipelined", p.inflight),
            || {
                raw_tcp_pingpong(
                    size,
                    messages,
                    p.inflight,
                    Wait::SpinThenBlock(p.base.effective_wait_spin()),
                )
            },
            |b| rpc(p, b, size, messages, p.inflight, "rpc"),
        )?);
        spin_matched(&mut results, p);
    }
    if wants(Scenario::Fanout) {
        let size = p.size.unwrap_or(16 * 1024).max(1);
        let messages = p.messages.unwrap_or(20_000).max(1);
        let mut seal = Vec::new();
        let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
        for round in 0..rounds {
            step(format!("fanout {}/{rounds}: raw ring seal", round + 1));
            seal.push(raw_seal_bytes_per_sec(size, Duration::from_millis(300)));
            pb.inc(1);
            for (i, b) in p.backends.iter().enumerate() {
                step(format!(
                    "fanout {}/{rounds}: {}, {} peers",
                    round + 1,
                    label(*b),
                    p.peers
                ));
                per[i].push(fanout(p, *b, size, messages, p.peers)?);
                pb.inc(1);
            }
        }
        let seal = median(seal);
        for runs in per {
            results.push(summarize(runs, seal));
        }
    }
    if wants(Scenario::Send) {
        let size = if all { 5 } else { p.size.unwrap_or(5) };
        let messages = p.messages.unwrap_or(1_000_000).max(1);
        let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
        for round in 0..rounds {
            pb.inc(1);
            for (i, b) in p.backends.iter().enumerate() {
                step(format!("send {}/{rounds}: {}", round + 1, label(*b)));
                per[i].push(throughput(p, *b, size, messages, "send")?);
                pb.inc(1);
            }
        }
        for runs in per {
            results.push(summarize(runs, 0.0));
        }
    }
    if wants(Scenario::Scale) {
        // Aggregate fan-out throughput over 16 connections, every node with
        // 2 shards, against the same with 1 shard, interleaved.
        const PEERS: usize = 16;
        let size = if all {
            16 * 1024
        } else {
            p.size.unwrap_or(16 * 1024)
        };
        let messages = p.messages.unwrap_or(3000).max(1);
        let with_shards = |n: usize| {
            let mut q = p.clone();
            q.base.io.shards = n;
            q.shards = n;
            q
        };
        let (one, two) = (with_shards(1), with_shards(2));
        let mut per1: Vec<Vec<f64>> = vec![Vec::new(); p.backends.len()];
        let mut per2: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
        for round in 0..rounds {
            for (i, b) in p.backends.iter().enumerate() {
                step(format!(
                    "scale {}/{rounds}: {}, 1 shard",
                    round + 1,
                    label(*b)
                ));
                per1[i].push(fanout(&one, *b, size, messages, PEERS)?.bytes_per_sec);
                pb.inc(1);
                step(format!(
                    "scale {}/{rounds}: {}, 2 shards",
                    round + 1,
                    label(*b)
                ));
                let mut r = fanout(&two, *b, size, messages, PEERS)?;
                r.scenario = "scale";
                per2[i].push(r);
                pb.inc(1);
            }
        }
        for (runs, base) in per2.into_iter().zip(per1) {
            results.push(summarize(runs, median(base)));
        }
    }
    if wants(Scenario::Idle) {
        // Memory, not speed: one round is enough.
        let conns = args.connections.unwrap_or(2000).max(1);
        for round in 0..rounds {
            pb.inc(1);
            for b in &p.backends {
                if round == 0 {
                    step(format!("idle: {conns} connections, {}", label(*b)));
                    results.push(if args.in_process {
                        let m = crate::idle::idle_rss(&p.base, *b, conns)?;
                        let mut r = RunResult::new("idle", m.backend.clone(), p.shards, 0);
                        r.messages = conns;
                        r.delivered = m.established;
                        r.rss_per_connection_kib = Some(m.per_connection_kib());
                        r
                    } else {
                        idle_in_child(&args, *b, conns)?
                    });
                }
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();

    if let Some(path) = &args.plot {
        let series: Vec<plot::Series> = results
            .iter()
            .map(|r| plot::Series {
                label: format!("{} {} {} B", r.scenario, r.backend, r.size),
                curve: r.curve.clone(),
                timeline: r.timeline.clone(),
            })
            .collect();
        let svg = plot::svg(&series, BUCKET.as_secs_f64());
        std::fs::write(path, svg)
            .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
        if !args.json {
            eprintln!("plot written to {}", path.display());
        }
    }
    for r in &results {
        if r.delivered != r.messages {
            eprintln!(
                "warning: {} {}: {} of {} messages delivered (a receiver stalled for {} s)",
                r.scenario,
                r.backend,
                r.delivered,
                r.messages,
                STALL.as_secs()
            );
        }
    }
    if args.json {
        let out = if results.len() == 1 {
            serde_json::to_string(&results[0])
        } else {
            serde_json::to_string(&serde_json::json!({ "results": results }))
        }
        .map_err(|e| e.to_string())?;
        println!("{out}");
    } else {
        print_table(&results, rounds);
    }
    Ok(())
}

/// `rounds` interleaved rounds of `baseline` then `run` on each backend;
/// one summarized result per backend against the median baseline.
fn interleaved(
    pb: &ProgressBar,
    rounds: usize,
    backends: &[Backend],
    name: &str,
    baseline_name: &str,
    mut baseline: impl FnMut() -> Result<f64, String>,
    mut run: impl FnMut(Backend) -> Result<RunResult, String>,
) -> Result<Vec<RunResult>, String> {
    let mut base = Vec::new();
    let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); backends.len()];
    for round in 0..rounds {
        pb.set_message(format!("{name} {}/{rounds}: {baseline_name}", round + 1));
        base.push(baseline()?);
        pb.inc(1);
        for (i, b) in backends.iter().enumerate() {
            pb.set_message(format!("{name} {}/{rounds}: {}", round + 1, label(*b)));
            per[i].push(run(*b)?);
            pb.inc(1);
        }
    }
    let base = median(base);
    Ok(per.into_iter().map(|runs| summarize(runs, base)).collect())
}

/// Marks the latency-type results just added with the wait spin both they
/// and their raw TCP baseline ran with.
fn spin_matched(results: &mut [RunResult], p: &Plan) {
    for r in results.iter_mut().rev().take(p.backends.len()) {
        r.wait_spin_us = Some(p.base.effective_wait_spin().as_micros() as u64);
    }
}

/// The run with the median headline figure, carrying the median baseline.
fn summarize(mut runs: Vec<RunResult>, baseline: f64) -> RunResult {
    let latency = runs.first().is_some_and(RunResult::is_latency);
    let key = |r: &RunResult| {
        if latency {
            r.latency_us.as_ref().map_or(0.0, |l| l.p50)
        } else {
            r.bytes_per_sec
        }
    };
    runs.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut r = runs.swap_remove(runs.len() / 2);
    r.baseline = baseline;
    r.ratio = if baseline > 0.0 {
        key(&r) / baseline
    } else {
        0.0
    };
    r
}

fn print_table(results: &[RunResult], rounds: usize) {
    println!("shoal bench — loopback, medians of {rounds} interleaved rounds");
    println!(
        "{:<11} {:<8} {:>6} {:>8} {:>12} {:>11} {:>9} {:>9} {:>9} {:>22}",
        "scenario",
        "backend",
        "shards",
        "size",
        "msgs/s",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "vs same-run baseline"
    );
    for r in results {
        let (p50, p99, max) =
            r.latency_us
                .as_ref()
                .map_or(("-".into(), "-".into(), "-".into()), |l| {
                    (
                        format!("{:.1}", l.p50),
                        format!("{:.1}", l.p99),
                        format!("{:.1}", l.max),
                    )
                });
        let vs = match r.scenario {
            "scale" => format!(
                "{:.2}x 1 shard ({:.0} MiB/s)",
                r.ratio,
                r.baseline / (1 << 20) as f64
            ),
            "idle" => format!(
                "{:.1} KiB RSS/conn ({} conns)",
                r.rss_per_connection_kib.unwrap_or(0.0),
                r.delivered
            ),
            "send" => format!(
                "{:.2} µs/op enq, {:.2} delivered",
                r.enqueue_seconds.unwrap_or(0.0) * 1e6 / r.messages.max(1) as f64,
                r.seconds * 1e6 / r.messages.max(1) as f64
            ),
            "throughput" | "fanout" => {
                let mut vs = format!(
                    "{:.2}x raw seal ({:.0} MiB/s)",
                    r.ratio,
                    r.baseline / (1 << 20) as f64
                );
                if let Some(st) = r.sealed_stream.filter(|st| *st > 0.0) {
                    vs.push_str(&format!(
                        ", {:.2}x raw sealed TCP stream ({:.0} MiB/s)",
                        r.bytes_per_sec / st,
                        st / (1 << 20) as f64
                    ));
                }
                vs
            }
            "rpc" if r.baseline <= 0.0 => "n/a (too much to pipeline)".to_string(),
            "shard-rtt" if r.busy_poll => format!(
                "{:.2}x raw TCP p50 ({:.1} µs, both busy-poll)",
                r.ratio, r.baseline
            ),
            _ => match r.wait_spin_us.filter(|us| *us > 0) {
                Some(us) => format!(
                    "{:.2}x raw TCP p50 ({:.1} µs, both spin {us} µs)",
                    r.ratio, r.baseline
                ),
                None => format!("{:.2}x raw TCP p50 ({:.1} µs)", r.ratio, r.baseline),
            },
        };
        let scenario = match (r.batch, r.inflight, r.peers) {
            (Some(b), _, _) => format!("{} b{b}", r.scenario),
            (_, Some(n), _) if r.scenario == "rpc" => format!("rpc x{n}"),
            (_, _, Some(n)) if r.scenario == "scale" => format!("scale x{n}"),
            (_, _, Some(n)) => format!("fanout x{n}"),
            _ if r.scenario == "shard-rtt" && r.crowd.is_some() => format!(
                "rtt{} +{}",
                if r.busy_poll { " busy" } else { "" },
                r.crowd.unwrap_or(0)
            ),
            _ if r.scenario == "shard-rtt" && r.busy_poll => "rtt busy".to_string(),
            _ => r.scenario.to_string(),
        };
        println!(
            "{:<11} {:<8} {:>6} {:>8} {:>12.0} {:>11.1} {:>9} {:>9} {:>9} {:>22}",
            scenario,
            r.backend,
            r.shards,
            r.size,
            r.msgs_per_sec,
            r.bytes_per_sec / (1 << 20) as f64,
            p50,
            p99,
            max,
            vs
        );
    }
}

/// Runs the idle scenario for one backend in a fresh `shoal bench` process
/// (same config file and shard count) and reads its JSON result.
fn idle_in_child(args: &BenchArgs, backend: Backend, conns: usize) -> Result<RunResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench",
        "--scenario",
        "idle",
        "--in-process",
        "--json",
        "--rounds",
        "1",
    ])
    .args(["--connections", &conns.to_string()])
    .args([
        "--backend",
        match backend {
            Backend::IoUring => "io-uring",
            Backend::Epoll => "epoll",
            Backend::Auto => "auto",
        },
    ]);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(s) = args.shards {
        cmd.args(["--shards", &s.to_string()]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("idle: cannot run the child bench: {e}"))?;
    if !out.status.success() {
        return Err(format!("idle: the child bench failed ({})", out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("idle: bad child output: {e}"))?;
    let mut r = RunResult::new(
        "idle",
        v["backend"].as_str().unwrap_or("?").to_string(),
        v["shards"].as_u64().unwrap_or(0) as usize,
        0,
    );
    r.messages = v["messages"].as_u64().unwrap_or(0) as usize;
    r.delivered = v["delivered"].as_u64().unwrap_or(0) as usize;
    r.rss_per_connection_kib = v["rss_per_connection_kib"].as_f64();
    Ok(r)
}

/// One bench node.
struct Node {
    h: NetworkHandle,
    tx: Sender,
    rx: Receiver,
    /// Channel [`RPC_CHANNEL`]: requests, answered by an in-shard echo
    /// handler on every node.
    rpc: Sender,
}

/// The request scenario's channel.
const RPC_CHANNEL: u32 = 2;

/// A hub and `spokes` nodes, every spoke connected to the hub (spokes do
/// not authorize each other).
struct Cluster {
    hub: Node,
    spokes: Vec<Node>,
}

fn cluster(p: &Plan, backend: Backend, spokes: usize, max_size: usize) -> Result<Cluster, String> {
    cluster_with(p, backend, spokes, max_size, &[], &|_, _| Ok(()))
}

/// [`cluster`], with `extra(i, network)` run on node `i` (0 is the hub)
/// before it starts, for scenario-specific channels and handlers.
fn cluster_with(
    p: &Plan,
    backend: Backend,
    spokes: usize,
    max_size: usize,
    hub_also_allows: &[PublicKey],
    extra: &dyn Fn(usize, &mut Network) -> Result<(), String>,
) -> Result<Cluster, String> {
    let ids: Vec<Arc<Ed25519Signer>> = (0..=spokes)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let keys: Vec<PublicKey> = ids
        .iter()
        .map(|s| shoal::crypto::Signer::public_key(&**s).clone())
        .collect();
    let mut nodes = Vec::new();
    let mut oracles = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = p.base.clone().with_identity(id.clone());
        cfg.io.backend = backend;
        // With pinning, consecutive nodes take consecutive cores.
        cfg.io.core_offset = i * cfg.shard_count();
        if i == 0 {
            cfg.limits.max_inbound = cfg
                .limits
                .max_inbound
                .max(hub_also_allows.len() + spokes + 16);
        }
        let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
        let (tx, rx) = net
            .register(1, None, max_size.max(1024), 8192, None)
            .map_err(|e| e.to_string())?;
        let (rpc, _requests) = net
            .register(RPC_CHANNEL, None, max_size.max(1024), 1024, None)
            .map_err(|e| e.to_string())?;
        net.handle(RPC_CHANNEL, Arc::new(|_, request| Ok(Some(request))))
            .map_err(|e| e.to_string())?;
        extra(i, &mut net)?;
        if i == 0 {
            let mut allowed = keys.clone();
            allowed.extend_from_slice(hub_also_allows);
            oracle.register(0, allowed);
        } else {
            oracle.register(0, vec![keys[0].clone()]);
        }
        let h = net.start().map_err(|e| e.to_string())?;
        nodes.push(Node { h, tx, rx, rpc });
        oracles.push(oracle);
    }
    let hub_addr = nodes[0].h.local_addr().ok_or("no listen address")?;
    for i in 1..nodes.len() {
        let addr = nodes[i].h.local_addr().ok_or("no listen address")?;
        oracles[0].add_address(keys[i].clone(), addr);
        oracles[i].add_address(keys[0].clone(), hub_addr);
    }
    let wait = Duration::from_secs(10);
    if !nodes[0].h.wait_peers(wait, |x| x.len() == spokes)
        || !nodes[1..]
            .iter()
            .all(|n| n.h.wait_peers(wait, |x| x.len() == 1))
    {
        return Err(format!(
            "the {} bench nodes did not connect within {} s",
            spokes + 1,
            wait.as_secs()
        ));
    }
    let mut it = nodes.into_iter();
    let hub = it.next().ok_or("no node")?;
    Ok(Cluster {
        hub,
        spokes: it.collect(),
    })
}

pub(crate) fn label(b: Backend) -> &'static str {
    match b {
        Backend::IoUring => "io_uring",
        Backend::Epoll => "epoll",
        Backend::Auto => "auto",
    }
}

fn backend_name(h: &NetworkHandle) -> String {
    label(h.backend()).to_string()
}

/// Receives with a stall bound: `None` if nothing arrived for [`STALL`] or
/// the network closed.
fn stall_recv(rx: &Receiver) -> Option<(PublicKey, Bytes)> {
    rx.try_recv()
        .or_else(|| rx.recv_timeout(STALL).ok().flatten())
}

/// Delivered messages per [`BUCKET`] since `start`.
struct Timeline {
    start: Instant,
    counts: Vec<u64>,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Timeline {
            start,
            counts: Vec::new(),
        }
    }

    fn add(&mut self, now: Instant) {
        self.add_n(now, 1);
    }

    /// `n` deliveries seen at `now`.
    fn add_n(&mut self, now: Instant, n: u64) {
        let i = (now.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as usize;
        if i < MAX_BUCKETS {
            if self.counts.len() <= i {
                self.counts.resize(i + 1, 0);
            }
            self.counts[i] += n;
        }
    }

    fn merge(&mut self, other: &Timeline) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    fn rates(&self) -> Vec<f64> {
        let w = BUCKET.as_secs_f64();
        self.counts.iter().map(|c| *c as f64 / w).collect()
    }
}

/// A round-trip message: `seq` in its first 8 bytes (big-endian), filler
/// after; `size` must be at least 8.
fn numbered(seq: u64, size: usize) -> Bytes {
    let mut v = vec![0x5Au8; size.max(8)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn payload(size: usize) -> Bytes {
    let mut v = vec![0x5Au8; size];
    if let Some(last) = v.last_mut() {
        *last = 0xA5;
    }
    Bytes::from(v)
}

fn intact(m: &[u8], size: usize) -> bool {
    m.len() == size && (size <= 1 || m.first() == Some(&0x5A)) && m.last() == Some(&0xA5)
}

/// Counts intact messages on `rx` until `want` arrived or it stalls.
fn count_messages(
    rx: Receiver,
    want: usize,
    size: usize,
    start: Instant,
) -> Result<(usize, Instant, Timeline), String> {
    // A clock read costs about as much as receiving a 64 B message, so the
    // clock is read once per run of queued messages (at most STAMP_EVERY),
    // when the inbox runs dry, and at the last message: the timeline's 10 ms
    // buckets and the end time stay exact to well under a bucket.
    const STAMP_EVERY: u64 = 64;
    let mut tl = Timeline::new(start);
    let mut n = 0;
    let mut last = start;
    let mut unstamped = 0u64;
    while n < want {
        let m = match rx.try_recv() {
            Some(m) => m,
            None => {
                if unstamped > 0 {
                    last = Instant::now();
                    tl.add_n(last, unstamped);
                    unstamped = 0;
                }
                match rx.recv_timeout(STALL) {
                    Ok(Some(m)) => m,
                    _ => break,
                }
            }
        };
        if !intact(&m.1, size) {
            return Err(format!("message {n} corrupted (len {})", m.1.len()));
        }
        n += 1;
        unstamped += 1;
        if unstamped == STAMP_EVERY || n == want {
            last = Instant::now();
            tl.add_n(last, unstamped);
            unstamped = 0;
        }
    }
    Ok((n, last, tl))
}

/// One connection, `messages` of `size` bytes as fast as delivery allows.
/// As `send` (noise's BenchmarkSend) it also reports how long the sends took
/// to return: enqueued, waiting only while the peer's queue was full.
fn throughput(
    p: &Plan,
    backend: Backend,
    size: usize,
    messages: usize,
    scenario: &'static str,
) -> Result<RunResult, String> {
    let Cluster { hub, spokes } = cluster(p, backend, 1, size)?;
    let mut res = RunResult::new(scenario, backend_name(&hub.h), p.shards, size);
    let b = spokes.into_iter().next().ok_or("no spoke")?;
    let b_key = b.h.public_key();
    let msg = payload(size);
    let rx = b.rx;
    let start = Instant::now();
    let receiver = std::thread::spawn(move || count_messages(rx, messages, size, start));
    if p.batch > 1 {
        res.batch = Some(p.batch);
        let mut left = messages;
        while left > 0 {
            let n = left.min(p.batch);
            hub.tx
                .send_batch_to_blocking(&b_key, std::iter::repeat_n(msg.clone(), n), false)
                .map_err(|e| format!("send failed: {e}"))?;
            left -= n;
        }
    } else {
        for _ in 0..messages {
            // Waits (parked, not spinning) while the peer's queue is full.
            hub.tx
                .send_to_blocking(&b_key, msg.clone(), false)
                .map_err(|e| format!("send failed: {e}"))?;
        }
    }
    if scenario == "send" {
        res.enqueue_seconds = Some(start.elapsed().as_secs_f64());
    }
    let (delivered, end, tl) = receiver.join().map_err(|_| "receiver panicked")??;
    res.finish(
        messages,
        delivered,
        end.duration_since(start).as_secs_f64(),
        delivered * size,
    );
    res.timeline = tl.rates();
    hub.h.shutdown(Duration::from_millis(100));
    b.h.shutdown(Duration::from_millis(100));
    Ok(res)
}

/// `inflight` requests outstanding on one connection; the peer echoes each.
/// The latency scenario is this with one request in flight.
fn rpc(
    p: &Plan,
    backend: Backend,
    size: usize,
    messages: usize,
    inflight: usize,
    name: &'static str,
) -> Result<RunResult, String> {
    let Cluster { hub: a, spokes } = cluster(p, backend, 1, size.max(8))?;
    let mut res = RunResult::new(name, backend_name(&a.h), p.shards, size);
    let b = spokes.into_iter().next().ok_or("no spoke")?;
    let (a_key, b_key) = (a.h.public_key(), b.h.public_key());
    let (b_rx, b_tx) = (b.rx, b.tx);
    let echo = std::thread::spawn(move || -> Result<(), String> {
        for _ in 0..messages {
            let Some((_, m)) = stall_recv(&b_rx) else {
                break;
            };
            b_tx.send_to_blocking(&a_key, m, true)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut tl = Timeline::new(Instant::now());
    let mut outstanding: HashMap<u64, Instant> = HashMap::with_capacity(inflight);
    let request = |seq: u64| numbered(seq, size.max(8));
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut delivered = 0;
    while (next as usize) < messages.min(inflight) {
        let m = request(next);
        outstanding.insert(next, Instant::now());
        a.tx.send_to_blocking(&b_key, m, true)
            .map_err(|e| format!("send failed: {e}"))?;
        next += 1;
    }
    while delivered < messages {
        let Some((_, m)) = stall_recv(&a.rx) else {
            break;
        };
        let now = Instant::now();
        let seq = m
            .get(..8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes);
        let sent = seq.and_then(|s| outstanding.remove(&s));
        let Some(sent) = sent.filter(|_| m.len() == size.max(8)) else {
            return Err(format!(
                "response {delivered} is not an outstanding request"
            ));
        };
        delivered += 1;
        tl.add(now);
        hist.record(nanos(now.duration_since(sent)))
            .map_err(|e| e.to_string())?;
        if (next as usize) < messages {
            outstanding.insert(next, Instant::now());
            a.tx.send_to_blocking(&b_key, request(next), true)
                .map_err(|e| format!("send failed: {e}"))?;
            next += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let echoed = echo.join().map_err(|_| "echo panicked")?;
    a.h.shutdown(Duration::from_millis(100));
    b.h.shutdown(Duration::from_millis(100));
    echoed?;
    res.finish(messages, delivered, seconds, delivered * size * 2);
    if name == "rpc" {
        res.inflight = Some(inflight);
    }
    res.timeline = tl.rates();
    Ok(res.with_latency(&hist))
}

/// One `request` in flight on the request API; the peer answers from an
/// in-shard handler (no application thread on that side), as a validator
/// serving RPCs would. Each reply must echo its request.
fn request_rpc(
    p: &Plan,
    backend: Backend,
    size: usize,
    messages: usize,
) -> Result<RunResult, String> {
    let size = size.max(8);
    let Cluster { hub: a, spokes } = cluster(p, backend, 1, size)?;
    let mut res = RunResult::new("request", backend_name(&a.h), p.shards, size);
    let b = spokes.into_iter().next().ok_or("no spoke")?;
    let b_key = b.h.public_key();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut tl = Timeline::new(Instant::now());
    let start = Instant::now();
    let mut delivered = 0;
    for seq in 0..messages as u64 {
        let m = numbered(seq, size);
        let t = Instant::now();
        let reply = a
            .rpc
            .request_blocking(&b_key, m.clone(), Duration::from_secs(10))
            .map_err(|e| format!("request {seq} failed: {e}"))?;
        let now = Instant::now();
        if reply != m {
            return Err(format!(
                "request {seq}: the reply does not echo the request"
            ));
        }
        hist.record(nanos(now.duration_since(t)))
            .map_err(|e| e.to_string())?;
        tl.add(now);
        delivered += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    a.h.shutdown(Duration::from_millis(100));
    b.h.shutdown(Duration::from_millis(100));
    res.finish(messages, delivered, seconds, delivered * size * 2);
    res.timeline = tl.rates();
    Ok(res.with_latency(&hist))
}

/// The shard-rtt scenario's channel: both nodes answer it from a handler.
const PING_CHANNEL: u32 = 3;

/// The hub's side of the in-shard ping-pong: times each echo, checks it,
/// and answers it with the next ping until `want` round trips are done.
struct PingState {
    want: usize,
    done: usize,
    size: usize,
    sent_at: Instant,
    hist: Histogram<u64>,
    /// The first echo that was not the ping just sent, if any.
    corrupt: Option<usize>,
    finished: Option<std::sync::mpsc::SyncSender<()>>,
}

impl PingState {
    fn ping(seq: usize, size: usize) -> Bytes {
        numbered(seq as u64, size)
    }

    /// One echo arrived on the hub's shard; `Some` is the next ping.
    fn on_echo(&mut self, echo: &[u8]) -> Option<Bytes> {
        let now = Instant::now();
        if self.done >= self.want || self.corrupt.is_some() {
            return None;
        }
        if echo != Self::ping(self.done, self.size) {
            self.corrupt = Some(self.done);
            self.finished.take().map(|f| f.send(()));
            return None;
        }
        let _ = self.hist.record(nanos(now.duration_since(self.sent_at)));
        self.done += 1;
        if self.done == self.want {
            self.finished.take().map(|f| f.send(()));
            return None;
        }
        self.sent_at = Instant::now();
        Some(Self::ping(self.done, self.size))
    }
}

/// Round trips with no application thread: the hub's in-shard handler sends
/// the next ping when the spoke's in-shard handler has echoed the last one,
/// so the two nodes' shards are the only threads, as in the raw ping-pong.
/// What a validator answering from handlers sees of the engine, and the
/// like-for-like comparison under busy-poll on two cores (an application
/// thread would be a third spinner).
fn shard_rtt(
    p: &Plan,
    backend: Backend,
    size: usize,
    messages: usize,
) -> Result<RunResult, String> {
    let size = size.max(8);
    let (finished, all_done) = std::sync::mpsc::sync_channel(1);
    let state = Arc::new(std::sync::Mutex::new(PingState {
        want: messages,
        done: 0,
        size,
        sent_at: Instant::now(),
        hist: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?,
        corrupt: None,
        finished: Some(finished),
    }));
    let hub_state = state.clone();
    let hub_tx: std::sync::Mutex<Option<Sender>> = std::sync::Mutex::new(None);
    let crowd: Vec<Arc<Ed25519Signer>> = (0..p.crowd)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let crowd_keys: Vec<PublicKey> = crowd
        .iter()
        .map(|c| shoal::crypto::Signer::public_key(&**c).clone())
        .collect();
    let Cluster { hub: a, spokes } = cluster_with(p, backend, 1, size, &crowd_keys, &|i, net| {
        let handler: shoal::engine::Handler = if i == 0 {
            let st = hub_state.clone();
            Arc::new(move |_, echo| {
                let mut st = st.lock().map_err(|_| "ping state poisoned".to_string())?;
                Ok(st.on_echo(&echo))
            })
        } else {
            Arc::new(|_, ping| Ok(Some(ping)))
        };
        let (tx, _rx) = net
            .register(PING_CHANNEL, None, size.max(1024), 16, None)
            .map_err(|e| e.to_string())?;
        if i == 0 {
            *hub_tx.lock().map_err(|_| "poisoned")? = Some(tx);
        }
        net.handle(PING_CHANNEL, handler).map_err(|e| e.to_string())
    })?;
    let mut res = RunResult::new("shard-rtt", backend_name(&a.h), p.shards, size);
    let b = spokes.into_iter().next().ok_or("no spoke")?;
    // The crowd: authenticated connections that stay silent while measured.
    let hub_addr = a.h.local_addr().ok_or("no listen address")?;
    let mut quiet = Vec::with_capacity(crowd.len());
    for c in &crowd {
        let identity: shoal::engine::Identity = c.clone();
        let (socket, _) = shoal::raw_client::dial(
            hub_addr,
            &a.h.public_key(),
            identity,
            &p.base,
            Duration::from_secs(10),
        )
        .map_err(|e| format!("shard-rtt: crowd handshake: {e}"))?;
        quiet.push(socket);
    }
    if !a
        .h
        .wait_peers(Duration::from_secs(30), |x| x.len() == crowd.len() + 1)
    {
        return Err(format!(
            "shard-rtt: the hub holds {} of {} crowd connections",
            a.h.peers().len().saturating_sub(1),
            crowd.len()
        ));
    }
    let ping_tx = hub_tx
        .into_inner()
        .map_err(|_| "poisoned")?
        .ok_or("no ping channel")?;
    let start = Instant::now();
    state.lock().map_err(|_| "ping state poisoned")?.sent_at = Instant::now();
    ping_tx
        .send_to_blocking(&b.h.public_key(), PingState::ping(0, size), true)
        .map_err(|e| format!("send failed: {e}"))?;
    let _ = all_done.recv_timeout(STALL.saturating_mul(4));
    let seconds = start.elapsed().as_secs_f64();
    drop(quiet);
    a.h.shutdown(Duration::from_millis(100));
    b.h.shutdown(Duration::from_millis(100));
    let st = state.lock().map_err(|_| "ping state poisoned")?;
    if let Some(n) = st.corrupt {
        return Err(format!("shard-rtt: echo {n} does not match its ping"));
    }
    res.finish(messages, st.done, seconds, st.done * size * 2);
    res.busy_poll = p.base.io.busy_poll;
    res.crowd = (p.crowd > 0).then_some(p.crowd);
    Ok(res.with_latency(&st.hist))
}

/// The hub sends every message to all `peers` spokes (`Recipients::All`);
/// a spoke whose queue is full gets that copy with a waiting send, so every
/// copy is offered. Aggregate delivered msgs/s over all spokes.
fn fanout(
    p: &Plan,
    backend: Backend,
    size: usize,
    messages: usize,
    peers: usize,
) -> Result<RunResult, String> {
    let Cluster { hub, spokes } = cluster(p, backend, peers, size)?;
    let mut res = RunResult::new("fanout", backend_name(&hub.h), p.shards, size);
    let msg = payload(size);
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut receivers = Vec::new();
    for s in spokes {
        let rx = s.rx;
        receivers.push(std::thread::spawn(move || {
            count_messages(rx, messages, size, start)
        }));
        handles.push(s.h);
    }
    for i in 0..messages {
        let report = hub
            .tx
            .send_report(Recipients::All, msg.clone(), false)
            .map_err(|e| format!("send failed: {e}"))?;
        if !report.not_connected.is_empty() || report.accepted.len() + report.full.len() != peers {
            return Err(format!(
                "send {i}: {} accepted, {} full, {} not connected of {peers} peers",
                report.accepted.len(),
                report.full.len(),
                report.not_connected.len()
            ));
        }
        for peer in &report.full {
            hub.tx
                .send_to_blocking(peer, msg.clone(), false)
                .map_err(|e| format!("send failed: {e}"))?;
        }
    }
    let mut delivered = 0;
    let mut end = start;
    let mut tl = Timeline::new(start);
    for r in receivers {
        let (n, last, t) = r.join().map_err(|_| "receiver panicked")??;
        delivered += n;
        end = end.max(last);
        tl.merge(&t);
    }
    hub.h.shutdown(Duration::from_millis(100));
    for h in handles {
        h.shutdown(Duration::from_millis(100));
    }
    res.finish(
        messages * peers,
        delivered,
        end.duration_since(start).as_secs_f64(),
        delivered * size,
    );
    res.peers = Some(peers);
    res.timeline = tl.rates();
    Ok(res)
}

/// Latency histograms count nanoseconds (3 significant figures) and report
/// µs with a decimal: whole µs hid sub-µs differences at 5–10 µs.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

fn nanos(d: Duration) -> u64 {
    (d.as_nanos() as u64).max(1)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn lat(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    }
}

/// One core's raw ChaCha20-Poly1305 (ring) seal rate for `size`-byte records.
fn raw_seal_bytes_per_sec(size: usize, for_at_least: Duration) -> f64 {
    let key = match UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => return 0.0,
    };
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < for_at_least {
        for _ in 0..16 {
            let tag = key
                .seal_in_place_separate_tag(counter_nonce(n), Aad::empty(), &mut buf)
                .ok();
            std::hint::black_box(tag);
            n += 1;
        }
    }
    (n as f64 * size as f64) / start.elapsed().as_secs_f64()
}

/// The nonce of the `n`-th record sealed by the raw baselines.
fn counter_nonce(n: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// The ceiling for one encrypted connection on this machine, engine aside:
/// one thread copies each `size`-byte message into a write batch (as any
/// sender must, to seal without touching the caller's bytes), seals it with
/// ring and writes 256 KiB batches to a blocking loopback TCP socket; another
/// reads each frame into one reused buffer (one `readv` per frame, taking the
/// next length prefix too, as the engine's reads do) and opens it in place.
/// No allocation, no application hand-off, no queues. Returns
/// delivered payload bytes/s; every frame must open and carry the payload.
fn raw_sealed_stream_bytes_per_sec(size: usize, messages: usize) -> Result<f64, String> {
    const BATCH: usize = 256 * 1024;
    const TAG: usize = 16;
    let key = || {
        UnboundKey::new(&CHACHA20_POLY1305, &[9u8; 32])
            .map(LessSafeKey::new)
            .map_err(|_| "ring key".to_string())
    };
    let nonce = counter_nonce;
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let opener_key = key()?;
    let opener = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut frame = vec![0u8; size + TAG];
        // One syscall per frame, as the engine does: each read takes the
        // rest of the current frame and the next length prefix.
        let mut header = [0u8; 4];
        s.read_exact(&mut header).map_err(|e| e.to_string())?;
        for i in 0..messages as u64 {
            if u32::from_be_bytes(header) as usize != frame.len() {
                return Err("raw sealed stream: bad length".into());
            }
            let last = i + 1 == messages as u64;
            let (mut body, mut next) = (0, 0);
            while body < frame.len() || (!last && next < header.len()) {
                let n = {
                    let mut bufs = [
                        std::io::IoSliceMut::new(&mut frame[body..]),
                        std::io::IoSliceMut::new(if last { &mut [] } else { &mut header[next..] }),
                    ];
                    s.read_vectored(&mut bufs).map_err(|e| e.to_string())?
                };
                if n == 0 {
                    return Err("raw sealed stream: closed early".into());
                }
                let to_body = n.min(frame.len() - body);
                body += to_body;
                next += n - to_body;
            }
            let plain = opener_key
                .open_in_place(nonce(i), Aad::empty(), &mut frame)
                .map_err(|_| "raw sealed stream: frame did not open".to_string())?;
            if !intact(plain, size) {
                return Err("raw sealed stream: payload corrupted".into());
            }
        }
        Ok(messages)
    });
    let sealer = key()?;
    let msg = payload(size);
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut out = Vec::with_capacity(BATCH + size + TAG + 4);
    let header = u32::try_from(size + TAG)
        .map_err(|_| "message too large".to_string())?
        .to_be_bytes();
    for i in 0..messages as u64 {
        out.extend_from_slice(&header);
        let at = out.len();
        out.extend_from_slice(&msg);
        let tag = sealer
            .seal_in_place_separate_tag(nonce(i), Aad::empty(), &mut out[at..])
            .map_err(|_| "seal failed".to_string())?;
        out.extend_from_slice(tag.as_ref());
        if out.len() >= BATCH {
            s.write_all(&out).map_err(|e| e.to_string())?;
            out.clear();
        }
    }
    s.write_all(&out).map_err(|e| e.to_string())?;
    let delivered = opener
        .join()
        .map_err(|_| "raw sealed stream: opener panicked".to_string())??;
    Ok((delivered * size) as f64 / start.elapsed().as_secs_f64())
}

/// How the raw ping-pong's threads wait for their next read.
#[derive(Clone, Copy)]
enum Wait {
    /// Retry the empty read, yielding the core, for this long, then block
    /// (the engine's `wait_spin`; zero blocks at once).
    SpinThenBlock(Duration),
    /// Retry without yielding, as busy-polling shards do (bounded by
    /// [`STALL`], then block).
    BusyPoll,
}

impl Wait {
    /// How long an empty read is retried before the socket blocks.
    fn spin(self) -> Duration {
        match self {
            Wait::SpinThenBlock(d) => d,
            Wait::BusyPoll => STALL,
        }
    }
}

/// p50 of a TCP ping-pong over loopback, in µs, with `inflight` requests
/// pipelined (1 = strict ping-pong). Each request's time runs from its write
/// to the read of its echo. Both threads wait as `wait` says: the way the
/// engine's blocking calls do (look again for up to a spin, yielding the
/// core, then block; zero: plain blocking sockets), or spinning without
/// yielding as busy-polling shards do. Returns 0 (n/a) when the pipelined
/// bytes could fill both socket buffers and deadlock this single-threaded
/// client.
fn raw_tcp_pingpong(
    size: usize,
    rounds: usize,
    inflight: usize,
    wait: Wait,
) -> Result<f64, String> {
    let spin = wait.spin();
    let inflight = inflight.clamp(1, rounds.max(1));
    if inflight > 1 && inflight.saturating_mul(size) > 64 * 1024 {
        return Ok(0.0);
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(!spin.is_zero())?;
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            read_spin_then_block(&mut s, &mut buf, wait)?;
            write_all_any(&mut s, &buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    c.set_nonblocking(!spin.is_zero())
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; size];
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut sent_at = std::collections::VecDeque::with_capacity(inflight);
    let mut sent = 0;
    for _ in 0..inflight {
        sent_at.push_back(Instant::now());
        write_all_any(&mut c, &buf).map_err(|e| e.to_string())?;
        sent += 1;
    }
    for _ in 0..rounds {
        read_spin_then_block(&mut c, &mut buf, wait).map_err(|e| e.to_string())?;
        if let Some(t) = sent_at.pop_front() {
            let _ = hist.record(nanos(t.elapsed()));
        }
        if sent < rounds {
            sent_at.push_back(Instant::now());
            write_all_any(&mut c, &buf).map_err(|e| e.to_string())?;
            sent += 1;
        }
    }
    echo.join()
        .map_err(|_| "echo panicked")?
        .map_err(|e| e.to_string())?;
    Ok(us(hist.value_at_quantile(0.5)))
}

/// Fills `buf` from `s`. On a nonblocking socket an empty read is retried
/// as `wait` says (yielding the core, or not under busy-poll); then the
/// socket blocks for the rest of this read (the engine's `wait_spin`, done
/// with sockets).
fn read_spin_then_block(s: &mut TcpStream, buf: &mut [u8], wait: Wait) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut got = 0;
    let mut until = None;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match s.read(rest) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let until = *until.get_or_insert_with(|| Instant::now() + wait.spin());
                if Instant::now() < until {
                    if !matches!(wait, Wait::BusyPoll) {
                        std::thread::yield_now();
                    }
                } else {
                    s.set_nonblocking(false)?;
                    let r = s.read(rest);
                    s.set_nonblocking(true)?;
                    match r? {
                        0 => return Err(ErrorKind::UnexpectedEof.into()),
                        n => got += n,
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` that also works on a nonblocking socket (blocks on a full
/// send buffer instead of failing).
fn write_all_any(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut sent = 0;
    while sent < buf.len() {
        let Some(rest) = buf.get(sent..) else { break };
        match s.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                s.set_nonblocking(false)?;
                let r = s.write(rest);
                s.set_nonblocking(true)?;
                sent += r?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
