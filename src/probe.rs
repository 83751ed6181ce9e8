//! `[probe]` of `shoal node`: a delivery probe for test clusters (see
//! [`run`]); its counters are the `shoal_probe_*` metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shoal::{Priority, PublicKey, Receiver, Sender};
use tokio::sync::Notify;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    /// The peer's public key, 64 hex characters.
    peer: String,
}

fn peer_label(key: &PublicKey) -> PeerLabel {
    PeerLabel {
        peer: format!("{key:#}"),
    }
}

/// The `[probe]` counters: `shoal_probe_sent_total{peer}`,
/// `shoal_probe_received_total{peer}`, `shoal_probe_missing_total{peer}`
/// (sequence numbers skipped by a received probe: lost across a reconnect)
/// and `shoal_probe_delay_microseconds_total` (sum of one-way delays of
/// received probes; divide by the received count for the mean).
#[derive(Clone, Default)]
pub struct ProbeMetrics {
    sent: Family<PeerLabel, Counter>,
    received: Family<PeerLabel, Counter>,
    missing: Family<PeerLabel, Counter>,
    delay_us: Counter,
}

impl ProbeMetrics {
    /// Every configured peer's series exists from the start (at 0).
    pub fn new(peers: &[crate::config_file::Peer]) -> ProbeMetrics {
        let m = ProbeMetrics::default();
        for p in peers {
            let l = peer_label(&p.key);
            let _ = m.sent.get_or_create(&l);
            let _ = m.received.get_or_create(&l);
            let _ = m.missing.get_or_create(&l);
        }
        m
    }

    pub fn register(&self, r: &mut Registry) {
        r.register("probe_sent", "Probes sent per peer", self.sent.clone());
        r.register(
            "probe_received",
            "Probes received per peer",
            self.received.clone(),
        );
        r.register(
            "probe_missing",
            "Probe sequence numbers never received, per peer",
            self.missing.clone(),
        );
        r.register(
            "probe_delay_microseconds",
            "Sum of one-way delays of received probes",
            self.delay_us.clone(),
        );
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The delivery probe: every `interval`, sends each connected peer of
/// `peers` a 16-byte message (its next sequence number for that peer,
/// counting from 1, then the send time in Unix microseconds, both
/// big-endian), up to `count` per peer; counts what arrives, per sender.
/// A peer that is not connected (or whose queue is full) is skipped and gets
/// the same sequence number on a later tick, so a receiver that sees a gap
/// knows a probe was accepted and then lost with its connection.
pub fn run(
    tx: Sender,
    rx: Receiver,
    peers: Vec<PublicKey>,
    interval: Duration,
    count: Option<u64>,
    m: ProbeMetrics,
    stop: Arc<Notify>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(%e, "probe: cannot build runtime");
            return;
        }
    };
    let mut next = vec![1u64; peers.len()];
    let mut last: HashMap<PublicKey, u64> = HashMap::new();
    let (mut sent, mut received, mut missing) = (0u64, 0u64, 0u64);
    rt.block_on(async {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {
                    for (peer, seq) in peers.iter().zip(next.iter_mut()) {
                        if count.is_some_and(|c| *seq > c) {
                            continue;
                        }
                        let mut b = [0u8; 16];
                        b[..8].copy_from_slice(&seq.to_be_bytes());
                        b[8..].copy_from_slice(&unix_micros().to_be_bytes());
                        if tx.send(peer, Bytes::copy_from_slice(&b), Priority::Low).result().is_ok() {
                            m.sent.get_or_create(&peer_label(peer)).inc();
                            *seq += 1;
                            sent += 1;
                        }
                    }
                }
                r = rx.recv() => {
                    let Ok((from, msg)) = r else { return };
                    let (Some(seq), Some(at)) = (msg.get(..8), msg.get(8..16)) else {
                        tracing::debug!(peer = %from, len = msg.len(), "probe: not a probe");
                        continue;
                    };
                    let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
                    let at = u64::from_be_bytes(at.try_into().unwrap_or_default());
                    let l = peer_label(&from);
                    m.received.get_or_create(&l).inc();
                    m.delay_us.inc_by(unix_micros().saturating_sub(at));
                    received += 1;
                    let prev = last.entry(from).or_insert(0);
                    if seq > *prev + 1 {
                        m.missing.get_or_create(&l).inc_by(seq - *prev - 1);
                        missing += seq - *prev - 1;
                    }
                    *prev = (*prev).max(seq);
                }
            }
        }
    });
    eprintln!("shoal node: probe: sent {sent}, received {received}, missing {missing}");
}
