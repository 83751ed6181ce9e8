//! The throughput and send scenarios: one connection, messages as fast as
//! delivery allows.
//!
//! # Design
//! The hub sends `messages` copies of one payload to its only spoke, one
//! `send_wait(..).blocking()` each (or `--batch N` per `send_batch_wait`),
//! waiting only while the peer's queue is full; a thread on the spoke counts
//! and checks what arrives. The figure is delivered bytes/s from the first
//! send to the last delivery. As `send` (noise's BenchmarkSend) it also
//! reports when the last send returned.

use std::time::{Duration, Instant};

use shoal_engine::{Backend, Priority};

use crate::cluster::{backend_name, cluster, Cluster};
use crate::plan::Plan;
use crate::result::RunResult;
use crate::traffic::{count_messages, payload};

/// One connection, `messages` of `size` bytes as fast as delivery allows.
/// As `send` (noise's BenchmarkSend) it also reports how long the sends took
/// to return: enqueued, waiting only while the peer's queue was full.
pub(crate) fn throughput(
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
                .send_batch_wait(&b_key, std::iter::repeat_n(msg.clone(), n), Priority::Low)
                .blocking()
                .map_err(|e| format!("send failed: {e}"))?;
            left -= n;
        }
    } else {
        for _ in 0..messages {
            // Waits (parked, not spinning) while the peer's queue is full.
            hub.tx
                .send_wait(&b_key, msg.clone(), Priority::Low)
                .blocking()
                .result()
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
