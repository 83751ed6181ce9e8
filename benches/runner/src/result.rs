//! One scenario's measured figures, and how rounds become one figure.
//!
//! # Design
//! A [`RunResult`] is both the table row and the `--json` object (serde
//! field names are the JSON keys; the plot's curve and timeline are not
//! serialized). Each scenario runs several interleaved rounds;
//! [`summarize`] keeps the round with the median headline figure (p50 for
//! latency scenarios, bytes/s otherwise) and sets its ratio to the median
//! same-run baseline. Latencies are recorded in nanoseconds and reported in
//! µs with a decimal.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plot;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub(crate) scenario: &'static str,
    pub(crate) backend: String,
    /// The record cipher on this machine: `ring`, or `ring < N B <=
    /// openssl` (frame bodies of at least N bytes, tag included, sealed and
    /// opened by OpenSSL). Set for every result of a run from its config.
    pub(crate) cipher: String,
    pub(crate) shards: usize,
    pub(crate) size: usize,
    /// Messages that should arrive (fanout: sends x peers).
    pub(crate) messages: usize,
    /// Messages that did arrive (checked for size and content).
    pub(crate) delivered: usize,
    pub(crate) seconds: f64,
    pub(crate) msgs_per_sec: f64,
    pub(crate) bytes_per_sec: f64,
    /// Round-trip percentiles in µs; null for throughput and fanout.
    pub(crate) latency_us: Option<Latency>,
    /// rpc: requests outstanding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) inflight: Option<usize>,
    /// throughput, send: messages per `send_batch_wait` call (absent:
    /// one `send_wait` per message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<usize>,
    /// fanout: receiving nodes; gossip: nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peers: Option<usize>,
    /// gossip: connections per node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) degree: Option<usize>,
    /// gossip: (message, node) pairs delivered, of messages × (nodes − 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivered_fraction: Option<f64>,
    /// gossip: full copies received beyond the first, per node and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duplicates_per_message: Option<f64>,
    /// gossip: the same rounds' flooding over the same overlay (medians).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) flooding: Option<crate::gossip::Flooding>,
    /// send: seconds until the last `send` returned (enqueued, not yet
    /// delivered); `seconds` is until the last delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) enqueue_seconds: Option<f64>,
    /// stream: the receiving node's peak RSS growth over the transfer,
    /// MiB (with `--in-process`, both nodes': one process).
    pub(crate) rss_growth_mib: Option<f64>,
    /// idle: resident KiB per established idle connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_connection_kib: Option<f64>,
    /// Same-run baseline: raw ring seal bytes/s (throughput, fanout) or raw
    /// TCP ping-pong p50 µs (latency; rpc: same number pipelined), median
    /// over rounds.
    pub(crate) baseline: f64,
    /// shoal / baseline (throughput, fanout: higher is better; latency, rpc:
    /// p50 ratio, lower is better).
    pub(crate) ratio: f64,
    /// throughput: the same-run rate of a raw sealed TCP stream (one thread
    /// copies, seals and writes; one reads and opens; no engine), bytes/s,
    /// median over rounds: what this machine allows one encrypted connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sealed_stream: Option<f64>,
    /// throughput with `--vs commonware`: commonware-p2p's delivered msgs/s
    /// at the same size and count, its better runtime per round, median
    /// over the same rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commonware_msgs_per_sec: Option<f64>,
    /// The commonware runtime of that median round (`iouring`, `tokio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commonware_runtime: Option<&'static str>,
    /// latency, request, rpc: how long the waiting application threads (and
    /// the raw TCP baseline's two threads, to match) look for their next
    /// message before parking, µs (`IoSettings::wait_spin`; 0 under busy-poll).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_spin_us: Option<u64>,
    /// shard-rtt: the shards busy-polled (and the raw baseline's two threads
    /// spun, to match); otherwise both slept in the kernel when idle.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) busy_poll: bool,
    /// shard-rtt: idle connections the hub held beside the measured one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) crowd: Option<usize>,
    /// rpc, request: both ends ran as shard tasks (`--tasks`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) tasks: bool,
    /// Percentile curve for the plot: (quantile, µs).
    #[serde(skip)]
    pub(crate) curve: Vec<(f64, f64)>,
    /// Delivered msgs/s per [`BUCKET`](crate::traffic::BUCKET) for the plot.
    #[serde(skip)]
    pub(crate) timeline: Vec<f64>,
}

impl RunResult {
    pub(crate) fn new(scenario: &'static str, backend: String, shards: usize, size: usize) -> Self {
        RunResult {
            scenario,
            backend,
            cipher: String::new(),
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
            degree: None,
            delivered_fraction: None,
            duplicates_per_message: None,
            flooding: None,
            enqueue_seconds: None,
            rss_per_connection_kib: None,
            rss_growth_mib: None,
            baseline: 0.0,
            ratio: 0.0,
            sealed_stream: None,
            commonware_msgs_per_sec: None,
            commonware_runtime: None,
            wait_spin_us: None,
            busy_poll: false,
            crowd: None,
            tasks: false,
            curve: Vec::new(),
            timeline: Vec::new(),
        }
    }

    pub(crate) fn finish(&mut self, messages: usize, delivered: usize, seconds: f64, bytes: usize) {
        self.messages = messages;
        self.delivered = delivered;
        self.seconds = seconds;
        let s = seconds.max(1e-9);
        self.msgs_per_sec = delivered as f64 / s;
        self.bytes_per_sec = bytes as f64 / s;
    }

    pub(crate) fn with_latency(mut self, h: &Histogram<u64>) -> Self {
        if !h.is_empty() {
            self.latency_us = Some(lat(h));
            self.curve = plot::percentile_curve(h);
        }
        self
    }

    fn is_latency(&self) -> bool {
        matches!(
            self.scenario,
            "latency" | "rpc" | "request" | "shard-rtt" | "gossip"
        )
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The run with the median headline figure, carrying the median baseline.
pub(crate) fn summarize(mut runs: Vec<RunResult>, baseline: f64) -> RunResult {
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

/// Latency histograms count nanoseconds (3 significant figures) and report
/// µs with a decimal: whole µs hid sub-µs differences at 5–10 µs.
pub(crate) const LATENCY_MAX_NS: u64 = 60_000_000_000;

pub(crate) fn nanos(d: Duration) -> u64 {
    (d.as_nanos() as u64).max(1)
}

pub(crate) fn us(ns: u64) -> f64 {
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
