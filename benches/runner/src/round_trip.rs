//! The latency, rpc and request scenarios: round trips through the
//! application on one connection.
//!
//! # Design
//! [`rpc`] keeps `inflight` numbered requests outstanding (one for
//! `latency`) and an application thread on the spoke echoes each; a request's
//! time runs from its send to the arrival of its echo, and every echo must be
//! an outstanding request of the right size. [`request_rpc`] uses the request
//! API instead, one request in flight, answered by the spoke's in-shard
//! handler; every reply must echo its request.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shoal_engine::{Backend, Priority};

use crate::cluster::{backend_name, cluster, Cluster};
use crate::plan::Plan;
use crate::result::{nanos, RunResult, LATENCY_MAX_NS};
use crate::traffic::{numbered, stall_recv, Outstanding, Timeline};

/// `inflight` requests outstanding on one connection; the peer echoes each.
/// The latency scenario is this with one request in flight.
pub(crate) fn rpc(
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
            b_tx.send_wait(&a_key, m, Priority::High)
                .blocking()
                .result()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut tl = Timeline::new(Instant::now());
    let mut outstanding = Outstanding::new(inflight, size);
    let request = |seq: u64| numbered(seq, size.max(8));
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut delivered = 0;
    while (next as usize) < messages.min(inflight) {
        let m = request(next);
        outstanding.sent(next);
        a.tx.send_wait(&b_key, m, Priority::High)
            .blocking()
            .result()
            .map_err(|e| format!("send failed: {e}"))?;
        next += 1;
    }
    while delivered < messages {
        let Some((_, m)) = stall_recv(&a.rx) else {
            break;
        };
        let now = Instant::now();
        let Some(sent) = outstanding.answered(&m) else {
            return Err(format!(
                "response {delivered} is not an outstanding request"
            ));
        };
        delivered += 1;
        tl.add(now);
        hist.record(nanos(now.duration_since(sent)))
            .map_err(|e| e.to_string())?;
        if (next as usize) < messages {
            outstanding.sent(next);
            a.tx.send_wait(&b_key, request(next), Priority::High)
                .blocking()
                .result()
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
pub(crate) fn request_rpc(
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
            .request(&b_key, m.clone(), Duration::from_secs(10))
            .blocking()
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
