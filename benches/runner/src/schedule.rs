//! The order of a run: which scenarios, their sizes and counts, and which
//! baseline is measured beside which engine run.
//!
//! # Design
//! Every scenario runs `rounds` interleaved rounds: its baseline, then the
//! engine on each backend, then the baseline again, so a machine that
//! drifts between a fast and a slow regime moves both alike. Each scenario
//! function here returns one summarized [`RunResult`] per backend (the
//! median round against the median baseline). The progress bar (stderr, on a
//! terminal only) counts one step per baseline and per engine run.
//!
//! Order under `all`: throughput, latency, request, shard-rtt (sleeping, then
//! busy-polling shards), rpc, fanout, send, scale, stream, idle.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_engine::Backend;

use crate::args::{BenchArgs, Scenario};
use crate::baseline::{
    raw_seal_bytes_per_sec, raw_sealed_stream_bytes_per_sec, raw_tcp_pingpong, Wait,
};
use crate::cluster::label;
use crate::competitor::median_round;
use crate::fanout::fanout;
use crate::gossip::{flood, gossip, result as gossip_result, Flooding, Shape};
use crate::idle::{idle_in_child, idle_rss};
use crate::plan::Plan;
use crate::result::{median, summarize, RunResult};
use crate::round_trip::{request_rpc, rpc};
use crate::shard_rtt::shard_rtt;
use crate::stream::stream;
use crate::tasks::{request_tasks, rpc_tasks};
use crate::throughput::throughput;

/// Runs every scenario the plan asks for, in order.
pub(crate) fn run_scenarios(p: &Plan, args: &BenchArgs) -> Result<Vec<RunResult>, String> {
    let pb = progress_bar(steps(p));
    let wants = |s: Scenario| p.scenario == Scenario::All || p.scenario == s;
    let mut results = Vec::new();
    if wants(Scenario::Throughput) {
        for size in throughput_sizes(p) {
            results.extend(throughput_rounds(p, &pb, size)?);
        }
    }
    for scenario in [Scenario::Latency, Scenario::Request] {
        if wants(scenario) {
            results.extend(one_in_flight_rounds(p, &pb, scenario)?);
        }
    }
    if wants(Scenario::ShardRtt) {
        results.extend(shard_rtt_rounds(p, &pb)?);
    }
    if wants(Scenario::Rpc) {
        results.extend(rpc_rounds(p, &pb)?);
    }
    if wants(Scenario::Fanout) {
        results.extend(fanout_rounds(p, &pb)?);
    }
    if wants(Scenario::Send) {
        results.extend(send_rounds(p, &pb)?);
    }
    if wants(Scenario::Scale) {
        results.extend(scale_rounds(p, &pb)?);
    }
    if wants(Scenario::Stream) {
        results.extend(stream_rounds(p, &pb, args)?);
    }
    if wants(Scenario::Gossip) {
        results.extend(gossip_rounds(p, &pb, args)?);
    }
    if wants(Scenario::Idle) {
        results.extend(idle_rounds(p, &pb, args)?);
    }
    if p.scenario == Scenario::Tasks {
        results.extend(tasks_rounds(p, &pb)?);
    }
    pb.finish_and_clear();
    Ok(results)
}

/// The tasks scenario: rpc x8, rpc x2 and request with thread-based and
/// task ends in the same rounds, then shard-rtt.
fn tasks_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    let mut q = p.clone();
    q.tasks = true;
    let mut results = Vec::new();
    for inflight in [8, 2] {
        q.inflight = inflight;
        results.extend(rpc_rounds(&q, pb)?);
    }
    results.extend(one_in_flight_rounds(&q, pb, Scenario::Request)?);
    results.extend(shard_rtt_rounds(&q, pb)?);
    Ok(results)
}

/// Progress steps of the whole run: per scenario and round, one baseline
/// and one engine run per backend.
fn steps(p: &Plan) -> u64 {
    if p.scenario == Scenario::Tasks {
        let b = p.backends.len();
        return (p.rounds * (3 * (1 + 2 * b) + 1 + b)) as u64;
    }
    let all = p.scenario == Scenario::All;
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
        Scenario::Stream,
        Scenario::Gossip,
    ]
    .into_iter()
    .filter(|s| all || p.scenario == *s)
    .count();
    // `all` runs shard-rtt twice (sleeping and busy-polling shards).
    let extra = usize::from(all && !p.base.io.busy_poll);
    let per_round = 1 + p.backends.len();
    // --vs: throughput at more sizes, each with the competitor's run.
    let vs = match &p.commonware {
        Some(_) => throughput_sizes(p).len() * (per_round + 1) - per_round,
        None => 0,
    };
    // rpc and request with shard tasks: one more run per backend.
    let tasks = match p.tasks || all {
        true => [Scenario::Rpc, Scenario::Request]
            .into_iter()
            .filter(|s| all || p.scenario == *s)
            .count(),
        false => 0,
    };
    ((scenarios + extra) * p.rounds * per_round
        + vs * p.rounds
        + tasks * p.rounds * p.backends.len()) as u64
}

/// The message sizes throughput runs at: `--size`, or 64 KiB; with `--vs`
/// and no `--size`, the four sizes the comparison is quoted at.
fn throughput_sizes(p: &Plan) -> Vec<usize> {
    match (p.size, &p.commonware) {
        (None, Some(_)) => vec![64, 1024, 16 * 1024, 64 * 1024],
        (size, _) => vec![size.unwrap_or(64 * 1024).max(1)],
    }
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

/// Throughput against the raw ring seal rate and, for messages of 16 KiB
/// and more, the raw sealed TCP stream; with `--vs commonware`, the
/// harness right after shoal in every round.
fn throughput_rounds(p: &Plan, pb: &ProgressBar, size: usize) -> Result<Vec<RunResult>, String> {
    let rounds = p.rounds;
    let messages = p
        .messages
        .unwrap_or(((256usize << 20) / size).clamp(1000, 2_000_000))
        .max(1);
    let mut seal = Vec::new();
    let mut stream = Vec::new();
    let mut theirs = Vec::new();
    let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
    for round in 0..rounds {
        pb.set_message(format!("throughput {}/{rounds}: raw ring seal", round + 1));
        seal.push(raw_seal_bytes_per_sec(size, Duration::from_millis(500)));
        // A ceiling for large messages only: the engine packs small ones
        // many to a frame, which this stream (one frame each) does not.
        if size >= 16 * 1024 {
            pb.set_message(format!(
                "throughput {}/{rounds}: raw sealed TCP stream",
                round + 1
            ));
            stream.push(raw_sealed_stream_bytes_per_sec(size, messages)?);
        }
        pb.inc(1);
        for (i, b) in p.backends.iter().enumerate() {
            pb.set_message(format!("throughput {}/{rounds}: {}", round + 1, label(*b)));
            per[i].push(throughput(p, *b, size, messages, "throughput")?);
            pb.inc(1);
        }
        if let Some(cw) = &p.commonware {
            pb.set_message(format!("throughput {}/{rounds}: commonware-p2p", round + 1));
            theirs.push(cw.round(size, messages)?);
            pb.inc(1);
        }
    }
    let (seal, stream) = (median(seal), median(stream));
    let theirs = median_round(theirs);
    Ok(per
        .into_iter()
        .map(|runs| {
            let mut r = summarize(runs, seal);
            r.sealed_stream = (stream > 0.0).then_some(stream);
            if let Some(t) = &theirs {
                r.commonware_msgs_per_sec = Some(t.msgs_per_sec);
                r.commonware_runtime = Some(t.runtime);
            }
            r
        })
        .collect())
}

/// One request in flight, against a raw TCP ping-pong: echoed by the
/// peer's application (`latency`) or by an in-shard handler (`request`).
fn one_in_flight_rounds(
    p: &Plan,
    pb: &ProgressBar,
    scenario: Scenario,
) -> Result<Vec<RunResult>, String> {
    let all = p.scenario == Scenario::All;
    let name = match scenario {
        Scenario::Request => "request",
        _ => "latency",
    };
    let size = if all { 64 } else { p.size.unwrap_or(64) };
    let messages = p.messages.unwrap_or(5000).max(1);
    let runs = match scenario {
        Scenario::Request => with_tasks(p),
        _ => p.backends.iter().map(|b| (*b, false)).collect(),
    };
    let mut out = interleaved_runs(
        pb,
        p.rounds,
        &runs,
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
        |(b, tasks)| match scenario {
            Scenario::Request if tasks => request_tasks(p, b, size, messages),
            Scenario::Request => request_rpc(p, b, size, messages),
            _ => rpc(p, b, size, messages, 1, "latency"),
        },
    )?;
    spin_matched(&mut out, p);
    Ok(out)
}

/// In-shard round trips. The baseline's two threads wait as the shards do:
/// they spin for `idle_spin` then sleep in the kernel, or spin throughout
/// under busy-poll (bounded by the stall bound). The whole table (`all`)
/// also runs the busy-poll variant, so one command shows both targets.
fn shard_rtt_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    let all = p.scenario == Scenario::All;
    let size = if all { 64 } else { p.size.unwrap_or(64) };
    let messages = p.messages.unwrap_or(5000).max(1);
    let mut variants = vec![p.clone()];
    if all && !p.base.io.busy_poll {
        let mut busy = p.clone();
        busy.base.io.busy_poll = true;
        variants.push(busy);
    }
    let mut results = Vec::new();
    for q in &variants {
        let wait = if q.base.io.busy_poll {
            Wait::BusyPoll
        } else {
            Wait::SpinThenBlock(q.base.io.idle_spin)
        };
        let mut out = interleaved(
            pb,
            q.rounds,
            &q.backends,
            "shard-rtt",
            "raw TCP ping-pong",
            || raw_tcp_pingpong(size, messages, 1, wait),
            |b| shard_rtt(q, b, size, messages),
        )?;
        if !q.base.io.busy_poll {
            for r in &mut out {
                r.wait_spin_us = Some(q.base.io.idle_spin.as_micros() as u64);
            }
        }
        results.extend(out);
    }
    Ok(results)
}

/// `--inflight N` requests outstanding, against raw TCP with the same N
/// pipelined.
fn rpc_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    let all = p.scenario == Scenario::All;
    let size = if all { 64 } else { p.size.unwrap_or(64) };
    let messages = p.messages.unwrap_or(30_000).max(1);
    let mut out = interleaved_runs(
        pb,
        p.rounds,
        &with_tasks(p),
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
        |(b, tasks)| match tasks {
            true => rpc_tasks(p, b, size, messages, p.inflight, "rpc"),
            false => rpc(p, b, size, messages, p.inflight, "rpc"),
        },
    )?;
    spin_matched(&mut out, p);
    Ok(out)
}

/// Fan-out to `--peers N` against the raw seal rate (every copy is sealed
/// under its own connection key).
fn fanout_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    let rounds = p.rounds;
    let size = p.size.unwrap_or(16 * 1024).max(1);
    let messages = p.messages.unwrap_or(20_000).max(1);
    let mut seal = Vec::new();
    let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
    for round in 0..rounds {
        pb.set_message(format!("fanout {}/{rounds}: raw ring seal", round + 1));
        seal.push(raw_seal_bytes_per_sec(size, Duration::from_millis(300)));
        pb.inc(1);
        for (i, b) in p.backends.iter().enumerate() {
            pb.set_message(format!(
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
    Ok(per.into_iter().map(|runs| summarize(runs, seal)).collect())
}

/// noise's BenchmarkSend: no baseline.
fn send_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    let rounds = p.rounds;
    let all = p.scenario == Scenario::All;
    let size = if all { 5 } else { p.size.unwrap_or(5) };
    let messages = p.messages.unwrap_or(1_000_000).max(1);
    let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); p.backends.len()];
    for round in 0..rounds {
        pb.inc(1);
        for (i, b) in p.backends.iter().enumerate() {
            pb.set_message(format!("send {}/{rounds}: {}", round + 1, label(*b)));
            per[i].push(throughput(p, *b, size, messages, "send")?);
            pb.inc(1);
        }
    }
    Ok(per.into_iter().map(|runs| summarize(runs, 0.0)).collect())
}

/// Aggregate fan-out throughput over 16 connections, every node with 2
/// shards, against the same with 1 shard, interleaved.
fn scale_rounds(p: &Plan, pb: &ProgressBar) -> Result<Vec<RunResult>, String> {
    const PEERS: usize = 16;
    let rounds = p.rounds;
    let all = p.scenario == Scenario::All;
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
            pb.set_message(format!(
                "scale {}/{rounds}: {}, 1 shard",
                round + 1,
                label(*b)
            ));
            per1[i].push(fanout(&one, *b, size, messages, PEERS)?.bytes_per_sec);
            pb.inc(1);
            pb.set_message(format!(
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
    Ok(per2
        .into_iter()
        .zip(per1)
        .map(|(runs, base)| summarize(runs, median(base)))
        .collect())
}

/// Memory per idle connection, each round and backend in a fresh child
/// process unless `--in-process`; the median round per backend. One round
/// is not enough: the allocator returns freed pages to the system on its
/// own schedule, and one run's figure moved by ±25 % from the next's.
fn idle_rounds(p: &Plan, pb: &ProgressBar, args: &BenchArgs) -> Result<Vec<RunResult>, String> {
    let conns = args.connections.unwrap_or(2000).max(1);
    let mut per_backend: Vec<Vec<RunResult>> = p.backends.iter().map(|_| Vec::new()).collect();
    for _ in 0..p.rounds {
        pb.inc(1);
        for (b, runs) in p.backends.iter().zip(per_backend.iter_mut()) {
            pb.set_message(format!("idle: {conns} connections, {}", label(*b)));
            runs.push(if args.in_process {
                let m = idle_rss(&p.base, *b, conns)?;
                let mut r = RunResult::new("idle", m.backend.clone(), p.shards, 0);
                r.messages = conns;
                r.delivered = m.established;
                r.rss_per_connection_kib = Some(m.per_connection_kib());
                r
            } else {
                idle_in_child(args, *b, conns)?
            });
            pb.inc(1);
        }
    }
    Ok(per_backend.into_iter().filter_map(median_rss).collect())
}

/// The run with the median resident memory per connection.
fn median_rss(mut runs: Vec<RunResult>) -> Option<RunResult> {
    runs.sort_by(|a, b| {
        let (a, b) = (a.rss_per_connection_kib, b.rss_per_connection_kib);
        a.unwrap_or(0.0).total_cmp(&b.unwrap_or(0.0))
    });
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid)
}

/// `rounds` interleaved rounds of `baseline` then `run` on each backend;
/// one summarized result per backend against the median baseline.
fn interleaved(
    pb: &ProgressBar,
    rounds: usize,
    backends: &[Backend],
    name: &str,
    baseline_name: &str,
    baseline: impl FnMut() -> Result<f64, String>,
    mut run: impl FnMut(Backend) -> Result<RunResult, String>,
) -> Result<Vec<RunResult>, String> {
    let runs: Vec<(Backend, bool)> = backends.iter().map(|b| (*b, false)).collect();
    interleaved_runs(
        pb,
        rounds,
        &runs,
        name,
        baseline_name,
        baseline,
        |(b, _)| run(b),
    )
}

/// The engine runs of a scenario that can run its ends as shard tasks: on
/// each backend, thread-based and, with `--tasks` (or under `all`), with
/// tasks right after it in the same round.
fn with_tasks(p: &Plan) -> Vec<(Backend, bool)> {
    let tasks = p.tasks || p.scenario == Scenario::All;
    p.backends
        .iter()
        .flat_map(|b| {
            [(*b, false), (*b, true)]
                .into_iter()
                .take(1 + usize::from(tasks))
        })
        .collect()
}

/// [`interleaved`] over `runs`: (backend, ends as shard tasks).
fn interleaved_runs(
    pb: &ProgressBar,
    rounds: usize,
    runs: &[(Backend, bool)],
    name: &str,
    baseline_name: &str,
    mut baseline: impl FnMut() -> Result<f64, String>,
    mut run: impl FnMut((Backend, bool)) -> Result<RunResult, String>,
) -> Result<Vec<RunResult>, String> {
    let mut base = Vec::new();
    let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        pb.set_message(format!("{name} {}/{rounds}: {baseline_name}", round + 1));
        base.push(baseline()?);
        pb.inc(1);
        for (i, r) in runs.iter().enumerate() {
            let tasks = if r.1 { " tasks" } else { "" };
            pb.set_message(format!(
                "{name} {}/{rounds}: {}{tasks}",
                round + 1,
                label(r.0)
            ));
            per[i].push(run(*r)?);
            pb.inc(1);
        }
    }
    let base = median(base);
    Ok(per.into_iter().map(|runs| summarize(runs, base)).collect())
}

/// One stream against the raw sealed TCP stream of 64 KiB frames moving
/// the same bytes, interleaved.
fn stream_rounds(p: &Plan, pb: &ProgressBar, args: &BenchArgs) -> Result<Vec<RunResult>, String> {
    let default = if p.scenario == Scenario::All {
        256 << 20
    } else {
        1 << 30
    };
    let total = p.size.map_or(default, |s| s as u64).max(1 << 20);
    let frames = (total / (64 << 10)).max(1) as usize;
    let mut out = interleaved(
        pb,
        p.rounds,
        &p.backends,
        "stream",
        "raw sealed TCP stream",
        || raw_sealed_stream_bytes_per_sec(64 << 10, frames),
        |b| stream(p, args, b, total),
    )?;
    for r in &mut out {
        r.sealed_stream = Some(r.baseline);
    }
    Ok(out)
}

/// Gossip against flooding over the same overlay, interleaved (flooding
/// runs on the first backend: it is the same for both).
fn gossip_rounds(p: &Plan, pb: &ProgressBar, args: &BenchArgs) -> Result<Vec<RunResult>, String> {
    let nodes = args.nodes.unwrap_or(30).max(3);
    let shape = Shape {
        nodes,
        degree: args.degree.unwrap_or(6).clamp(2, nodes - 1),
        size: p.size.unwrap_or(1024).max(4),
        messages: p.messages.unwrap_or(600).max(nodes),
    };
    let flood_on = *p.backends.first().ok_or("no backend")?;
    let mut floods = Vec::new();
    let mut out = interleaved(
        pb,
        p.rounds,
        &p.backends,
        "gossip",
        "flooding",
        || {
            let f = flood(p, flood_on, shape)?;
            let p50 = f.time_to_all.value_at_quantile(0.5) as f64 / 1000.0;
            floods.push(f);
            Ok(p50)
        },
        |b| {
            let (g, name) = gossip(p, b, shape)?;
            Ok(gossip_result(p, shape, name, &g))
        },
    )?;
    let f = Flooding::median(&floods);
    for r in &mut out {
        r.flooding = Some(f.clone());
    }
    Ok(out)
}

/// Marks latency-type results with the wait spin both they and their raw
/// TCP baseline ran with.
fn spin_matched(results: &mut [RunResult], p: &Plan) {
    // Tasks rows have no application thread to wait.
    for r in results.iter_mut().filter(|r| !r.tasks) {
        r.wait_spin_us = Some(p.base.effective_wait_spin().as_micros() as u64);
    }
}
