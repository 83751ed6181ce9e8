//! The fanout and scale scenarios: one node sends every message to all its
//! peers.
//!
//! # Design
//! The hub offers each message to every spoke with `Recipients::All`; a
//! spoke whose queue is full gets that copy with a waiting send, so every
//! copy is offered and none is dropped. A thread per spoke counts and checks
//! what arrives; the figure is aggregate delivered bytes/s, until the last
//! spoke's last delivery.

use std::time::{Duration, Instant};

use shoal_engine::{Backend, Priority, Recipients};

use crate::cluster::{backend_name, cluster, Cluster};
use crate::plan::Plan;
use crate::result::RunResult;
use crate::traffic::{count_messages, payload, Timeline};

/// The hub sends every message to all `peers` spokes (`Recipients::All`);
/// a spoke whose queue is full gets that copy with a waiting send, so every
/// copy is offered. Aggregate delivered msgs/s over all spokes.
pub(crate) fn fanout(
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
        let report = hub.tx.send(Recipients::All, msg.clone(), Priority::Low);
        if let Some(e) = report.refused() {
            return Err(format!("send failed: {e}"));
        }
        let (accepted, full) = (report.accepted().count(), report.full().count());
        let not_connected = report.not_connected().count();
        if not_connected != 0 || accepted + full != peers {
            return Err(format!(
                "send {i}: {accepted} accepted, {full} full, {not_connected} not connected of {peers} peers",
            ));
        }
        for peer in report.full() {
            hub.tx
                .send_wait(peer, msg.clone(), Priority::Low)
                .blocking()
                .result()
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
