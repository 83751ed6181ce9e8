//! `--tasks`: the rpc and request scenarios with both ends as shard tasks
//! ([`shoal_engine::tasks`]).
//!
//! # Design
//! The same traffic as [`crate::round_trip`], with no application thread:
//! each node's end runs as a task on the shard that holds the connection,
//! so a round trip touches only the two nodes' shard threads. The hub's
//! task measures and sends its histogram back over a channel; the bench
//! thread waits for it with a deadline and shuts both nodes down either way
//! (which cancels a stalled task).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use shoal_engine::{ChannelConfig, Priority};

use crate::cluster::{backend_name, cluster_with, Cluster};
use crate::plan::Plan;
use crate::result::{nanos, RunResult, LATENCY_MAX_NS};
use crate::traffic::{numbered, Outstanding, Timeline, STALL};

/// The channel the request scenario's tasks serve (the cluster's request
/// channel has an in-shard handler, which a task cannot claim).
const TASK_RPC_CHANNEL: u32 = 4;

/// What the hub's task reports.
struct Measured {
    hist: Histogram<u64>,
    timeline: Timeline,
    delivered: usize,
    seconds: f64,
}

type Report = Result<Measured, String>;

/// `inflight` numbered messages outstanding, echoed by the spoke's task.
pub(crate) fn rpc_tasks(
    p: &Plan,
    backend: shoal_engine::Backend,
    size: usize,
    messages: usize,
    inflight: usize,
    name: &'static str,
) -> Result<RunResult, String> {
    let size = size.max(8);
    let cluster = cluster_with(p, backend, 1, size, &[], &|_, _| Ok(()))?;
    let run = |c: &Cluster| -> Result<std::sync::mpsc::Receiver<Report>, String> {
        let (a, b) = (&c.hub, c.spokes.first().ok_or("no spoke")?);
        let (a_key, b_key) = (a.h.public_key(), b.h.public_key());
        let on_b = b.h.shard_of(&a_key).ok_or("spoke not connected")?;
        let (claimed, ready) = std::sync::mpsc::sync_channel(1);
        b.h.spawn_on(on_b, move |ctx| async move {
            let (Ok(mut rx), Ok(tx)) = (ctx.receiver(1), ctx.sender(1)) else {
                return;
            };
            let _ = claimed.send(());
            loop {
                let (from, m) = rx.recv().await;
                if tx.send_wait(&from, m, Priority::High).await.is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
        claimed_within(&ready)?;
        let (report, reports) = std::sync::mpsc::sync_channel(1);
        let on_a = a.h.shard_of(&b_key).ok_or("hub not connected")?;
        a.h.spawn_on(on_a, move |ctx| async move {
            let measured = async {
                let rx = ctx.receiver(1).map_err(|e| e.to_string())?;
                let tx = ctx.sender(1).map_err(|e| e.to_string())?;
                pipelined(rx, tx, &b_key, size, messages, inflight).await
            };
            let _ = report.send(measured.await);
        })
        .map_err(|e| e.to_string())?;
        Ok(reports)
    };
    finish(cluster, run, name, p.shards, size, messages, |r| {
        if name == "rpc" {
            r.inflight = Some(inflight);
        }
    })
}

/// The hub's side of [`rpc_tasks`].
async fn pipelined(
    mut rx: shoal_engine::tasks::LocalReceiver,
    tx: shoal_engine::tasks::LocalSender,
    to: &shoal_engine::PublicKey,
    size: usize,
    messages: usize,
    inflight: usize,
) -> Report {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut timeline = Timeline::new(Instant::now());
    let mut outstanding = Outstanding::new(inflight, size);
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut delivered = 0;
    while (next as usize) < messages.min(inflight) {
        outstanding.sent(next);
        tx.send_wait(to, numbered(next, size), Priority::High)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        next += 1;
    }
    while delivered < messages {
        let (_, m) = rx.recv().await;
        let now = Instant::now();
        let Some(sent) = outstanding.answered(&m) else {
            return Err(format!(
                "response {delivered} is not an outstanding request"
            ));
        };
        delivered += 1;
        timeline.add(now);
        hist.record(nanos(now.duration_since(sent)))
            .map_err(|e| e.to_string())?;
        if (next as usize) < messages {
            outstanding.sent(next);
            tx.send_wait(to, numbered(next, size), Priority::High)
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            next += 1;
        }
    }
    Ok(Measured {
        hist,
        timeline,
        delivered,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One request in flight on the request API, answered by the spoke's task.
pub(crate) fn request_tasks(
    p: &Plan,
    backend: shoal_engine::Backend,
    size: usize,
    messages: usize,
) -> Result<RunResult, String> {
    let size = size.max(8);
    let register = |_: usize, net: &mut shoal_engine::Network| {
        net.register(ChannelConfig::new(TASK_RPC_CHANNEL).max_size(size.max(1024)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let cluster = cluster_with(p, backend, 1, size, &[], &register)?;
    let run = |c: &Cluster| -> Result<std::sync::mpsc::Receiver<Report>, String> {
        let (a, b) = (&c.hub, c.spokes.first().ok_or("no spoke")?);
        let (a_key, b_key) = (a.h.public_key(), b.h.public_key());
        let on_b = b.h.shard_of(&a_key).ok_or("spoke not connected")?;
        let (claimed, ready) = std::sync::mpsc::sync_channel(1);
        b.h.spawn_on(on_b, move |ctx| async move {
            let Ok(mut requests) = ctx.requests(TASK_RPC_CHANNEL) else {
                return;
            };
            let _ = claimed.send(());
            loop {
                let r = requests.recv().await;
                let echo = r.payload().clone();
                r.respond(echo);
            }
        })
        .map_err(|e| e.to_string())?;
        claimed_within(&ready)?;
        let (report, reports) = std::sync::mpsc::sync_channel(1);
        let on_a = a.h.shard_of(&b_key).ok_or("hub not connected")?;
        a.h.spawn_on(on_a, move |ctx| async move {
            let measured = async {
                let ch = TASK_RPC_CHANNEL;
                let tx = ctx.sender(ch).map_err(|e| e.to_string())?;
                one_at_a_time(tx, &b_key, size, messages).await
            };
            let _ = report.send(measured.await);
        })
        .map_err(|e| e.to_string())?;
        Ok(reports)
    };
    finish(cluster, run, "request", p.shards, size, messages, |_| {})
}

/// The hub's side of [`request_tasks`].
async fn one_at_a_time(
    tx: shoal_engine::tasks::LocalSender,
    to: &shoal_engine::PublicKey,
    size: usize,
    messages: usize,
) -> Report {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut timeline = Timeline::new(Instant::now());
    let start = Instant::now();
    for seq in 0..messages as u64 {
        let m: Bytes = numbered(seq, size);
        let t = Instant::now();
        let reply = tx
            .request(to, m.clone(), Duration::from_secs(10))
            .await
            .map_err(|e| format!("request {seq} failed: {e}"))?;
        let now = Instant::now();
        if reply != m {
            return Err(format!(
                "request {seq}: the reply does not echo the request"
            ));
        }
        hist.record(nanos(now.duration_since(t)))
            .map_err(|e| e.to_string())?;
        timeline.add(now);
    }
    Ok(Measured {
        hist,
        timeline,
        delivered: messages,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Waits until the spoke's task holds its channel: a claim takes effect
/// when the task makes it, and what arrives before goes to the channel's
/// thread receiver.
fn claimed_within(ready: &std::sync::mpsc::Receiver<()>) -> Result<(), String> {
    ready
        .recv_timeout(STALL)
        .map_err(|_| "the spoke's task did not claim its channel".to_string())
}

/// Starts the tasks (`run`), waits for the hub's report (a stall bound per
/// message batch), shuts the cluster down and builds the result.
#[allow(clippy::too_many_arguments)]
fn finish(
    cluster: Cluster,
    run: impl FnOnce(&Cluster) -> Result<std::sync::mpsc::Receiver<Report>, String>,
    name: &'static str,
    shards: usize,
    size: usize,
    messages: usize,
    tweak: impl FnOnce(&mut RunResult),
) -> Result<RunResult, String> {
    let mut res = RunResult::new(name, backend_name(&cluster.hub.h), shards, size);
    res.tasks = true;
    let report = run(&cluster).and_then(|reports| {
        reports
            .recv_timeout(STALL.saturating_mul(6))
            .map_err(|_| format!("{name} --tasks: no result within {} s", STALL.as_secs() * 6))?
    });
    let Cluster { hub, spokes } = cluster;
    hub.h.shutdown(Duration::from_millis(100));
    for s in spokes {
        s.h.shutdown(Duration::from_millis(100));
    }
    let m = report?;
    res.finish(messages, m.delivered, m.seconds, m.delivered * size * 2);
    tweak(&mut res);
    res.timeline = m.timeline.rates();
    Ok(res.with_latency(&m.hist))
}
