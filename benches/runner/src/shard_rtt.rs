//! The shard-rtt scenario: round trips between in-shard handlers on both
//! nodes, with no application thread.
//!
//! # Design
//! The hub's handler on [`PING_CHANNEL`] times each echo, checks it against
//! the ping just sent and answers with the next ping ([`PingState`]); the
//! spoke's handler echoes. The two nodes' shards are then the only busy
//! threads, as in the raw TCP ping-pong it is compared with. With
//! `--crowd N` the hub also holds N authenticated raw clients that never
//! speak, so a loop turn's cost with many quiet peers shows in the round
//! trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use shoal_engine::{Backend, ChannelConfig, Ed25519Signer, Priority, PublicKey, Sender};
use shoal_testkit::raw_client;

use crate::cluster::{backend_name, cluster_with, Cluster};
use crate::plan::Plan;
use crate::result::{nanos, RunResult, LATENCY_MAX_NS};
use crate::traffic::{numbered, STALL};

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
pub(crate) fn shard_rtt(
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
        .map(|c| shoal_crypto::Signer::public_key(&**c).clone())
        .collect();
    let Cluster { hub: a, spokes } = cluster_with(p, backend, 1, size, &crowd_keys, &|i, net| {
        type Handler = Arc<dyn Fn(&PublicKey, Bytes) -> shoal_engine::HandlerResult + Send + Sync>;
        let handler: Handler = if i == 0 {
            let st = hub_state.clone();
            Arc::new(move |_, echo| {
                let mut st = st.lock().map_err(|_| "ping state poisoned".to_string())?;
                Ok(st.on_echo(&echo))
            })
        } else {
            Arc::new(|_, ping| Ok(Some(ping)))
        };
        let (tx, _rx) = net
            .register(
                ChannelConfig::new(PING_CHANNEL)
                    .max_size(size.max(1024))
                    .capacity(16),
            )
            .map_err(|e| e.to_string())?;
        if i == 0 {
            *hub_tx.lock().map_err(|_| "poisoned")? = Some(tx);
        }
        net.serve(PING_CHANNEL, move |from, msg| handler(from, msg))
            .map_err(|e| e.to_string())
    })?;
    let mut res = RunResult::new("shard-rtt", backend_name(&a.h), p.shards, size);
    let b = spokes.into_iter().next().ok_or("no spoke")?;
    // The crowd: authenticated connections that stay silent while measured.
    let hub_addr = a.h.local_addr().ok_or("no listen address")?;
    let mut quiet = Vec::with_capacity(crowd.len());
    for c in &crowd {
        let identity: shoal_engine::Identity = c.clone();
        let (socket, _) = raw_client::dial(
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
        .send_wait(&b.h.public_key(), PingState::ping(0, size), Priority::High)
        .blocking()
        .result()
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
