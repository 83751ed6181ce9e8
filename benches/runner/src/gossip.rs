//! The gossip scenario: `--nodes` nodes on a partial mesh of degree
//! `--degree`, every node broadcasting in turn, beside flooding over the
//! same overlay in the same rounds.
//!
//! # Design
//! The overlay is a ring lattice: node `i` is connected to the `degree / 2`
//! nearest nodes on either side, each link dialed by one end, and
//! authorizes only those. Messages (`--messages` in all, `--size` bytes)
//! are broadcast round-robin over the origins, one every [`PACE`], so the
//! figures are propagation, not queueing. A thread per node takes its
//! deliveries and records when each message arrived there; a message's
//! *time to all* is its last arrival minus its broadcast, and
//! `delivered_fraction` the (message, node) pairs that arrived out of
//! `messages × (nodes − 1)`. `duplicates_per_message` is full copies
//! received beyond the first, per node and message.
//!
//! Every node's `io.wait_spin` is 0: with dozens of nodes on a few cores,
//! threads spinning for their next message take the cores from the nodes
//! that would send it (30 nodes on 2 cores, at the default 100 µs: gossip's
//! p50 time to all 6.4 ms, against 2.1 and 2.2 ms at 0).
//!
//! The flooding baseline runs on nodes of the same shape with a plain
//! channel: an origin signs its message (Ed25519, as gossip does) and sends
//! it to every neighbour; a node that receives a message it has not seen
//! verifies it, takes it and sends it to every neighbour but the one it came
//! from.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use shoal_crypto::{Ed25519Signer, PublicKey, Scheme, Signer};
use shoal_engine::{
    Backend, ChannelConfig, GossipConfig, Network, NetworkHandle, Priority, Receiver, Sender,
    Verdict,
};

use crate::cluster::backend_name;
use crate::plan::Plan;
use crate::result::{nanos, RunResult, LATENCY_MAX_NS};

const CHANNEL: u32 = 6;
/// Between two broadcasts (all origins together).
const PACE: Duration = Duration::from_millis(2);
/// A node that has not completed by then reports what it has.
const DEADLINE: Duration = Duration::from_secs(30);
const NAMESPACE: &[u8] = b"shoal-bench-flood";

/// What one run was asked to do.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) nodes: usize,
    pub(crate) degree: usize,
    pub(crate) size: usize,
    pub(crate) messages: usize,
}

/// What one run measured (gossip or flooding).
pub(crate) struct Spread {
    pub(crate) delivered_fraction: f64,
    pub(crate) duplicates_per_message: f64,
    /// Time to all nodes, ns, per message delivered everywhere.
    pub(crate) time_to_all: Histogram<u64>,
    pub(crate) seconds: f64,
    pub(crate) delivered: usize,
}

struct MeshNode {
    h: NetworkHandle,
    channel: Option<(Sender, Receiver)>,
    neighbours: Vec<PublicKey>,
}

/// Neighbours on either side: the lattice's degree is twice this.
fn reach(s: Shape) -> usize {
    (s.degree / 2).clamp(1, (s.nodes - 1) / 2)
}

/// The ring lattice of [`Shape`], connected.
fn mesh(p: &Plan, backend: Backend, s: Shape) -> Result<Vec<MeshNode>, String> {
    let n = s.nodes;
    let reach = reach(s);
    let ids: Vec<Arc<Ed25519Signer>> = (0..n)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let keys: Vec<PublicKey> = ids.iter().map(|i| i.public_key().clone()).collect();
    let near = |i: usize| -> Vec<usize> {
        (1..=reach)
            .flat_map(|d| [(i + d) % n, (i + n - d) % n])
            .collect()
    };
    let mut nodes = Vec::with_capacity(n);
    let mut oracles = Vec::with_capacity(n);
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = p.base.clone().with_identity(id.clone());
        cfg.io.backend = backend;
        // Dozens of nodes share these cores: a thread that spins for its
        // next message before parking (`io.wait_spin`, meant for one node
        // per machine) takes the core from the node it waits on.
        cfg.io.wait_spin = Duration::ZERO;
        let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
        let channel = net
            .register(
                ChannelConfig::new(CHANNEL)
                    .max_size(s.size + 1024)
                    .capacity(8192),
            )
            .map_err(|e| e.to_string())?;
        let neighbours: Vec<PublicKey> = near(i).into_iter().map(|j| keys[j].clone()).collect();
        oracle.register(0, neighbours.clone());
        let h = net.start().map_err(|e| e.to_string())?;
        nodes.push(MeshNode {
            h,
            channel: Some(channel),
            neighbours,
        });
        oracles.push(oracle);
    }
    for (i, oracle) in oracles.iter().enumerate() {
        for d in 1..=reach {
            let j = (i + d) % n;
            let addr = nodes[j].h.local_addr().ok_or("no listen address")?;
            oracle.add_address(keys[j].clone(), addr);
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let want = &node.neighbours;
        if !node
            .h
            .wait_peers(DEADLINE, |p| want.iter().all(|k| p.contains(k)))
        {
            return Err(format!("gossip: node {i} did not reach its neighbours"));
        }
    }
    Ok(nodes)
}

fn shutdown(nodes: Vec<MeshNode>) {
    for n in nodes {
        n.h.shutdown(Duration::from_millis(100));
    }
}

/// A message's payload: its index first, then filler.
fn message(index: usize, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(4));
    b.put_u32(index as u32);
    b.resize(size.max(4), 0x5a);
    b.freeze()
}

fn index_of(payload: &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize)
}

/// Per node, when each message arrived (`None`: not there).
type Arrivals = Vec<Option<Instant>>;

fn spread(
    s: Shape,
    sent: &[Instant],
    arrivals: &[Arrivals],
    copies: u64,
    start: Instant,
) -> Result<Spread, String> {
    let mut time_to_all =
        Histogram::<u64>::new_with_max(LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut delivered = 0usize;
    let mut end = start;
    for (k, at) in sent.iter().enumerate() {
        let origin = k % s.nodes;
        let mut last = Some(*at);
        for (i, a) in arrivals.iter().enumerate() {
            if i == origin {
                continue;
            }
            match a.get(k).copied().flatten() {
                Some(t) => {
                    delivered += 1;
                    end = end.max(t);
                    last = last.map(|l| l.max(t));
                }
                None => last = None,
            }
        }
        if let Some(l) = last {
            let _ = time_to_all.record(nanos(l.duration_since(*at)).min(LATENCY_MAX_NS));
        }
    }
    let pairs = (s.messages * (s.nodes - 1)).max(1);
    Ok(Spread {
        delivered_fraction: delivered as f64 / pairs as f64,
        duplicates_per_message: copies.saturating_sub(delivered as u64) as f64 / pairs as f64,
        time_to_all,
        seconds: end.duration_since(start).as_secs_f64(),
        delivered,
    })
}

/// Broadcasts `s.messages` round-robin over the origins, one per [`PACE`];
/// returns when each was handed over.
fn pace(
    s: Shape,
    mut broadcast: impl FnMut(usize, usize) -> Result<(), String>,
) -> Result<Vec<Instant>, String> {
    let start = Instant::now();
    let mut sent = Vec::with_capacity(s.messages);
    for k in 0..s.messages {
        let due = start + PACE * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent.push(Instant::now());
        broadcast(k % s.nodes, k)?;
    }
    Ok(sent)
}

/// One gossip run (the engine's Plumtree).
pub(crate) fn gossip(p: &Plan, backend: Backend, s: Shape) -> Result<(Spread, String), String> {
    let mut nodes = mesh(p, backend, s)?;
    let name = backend_name(&nodes[0].h);
    let config = GossipConfig {
        max_message_size: s.size.max(4),
        ..GossipConfig::default()
    };
    let mut senders = Vec::with_capacity(s.nodes);
    let mut collectors = Vec::with_capacity(s.nodes);
    for (i, node) in nodes.iter_mut().enumerate() {
        let channel = node.channel.take().ok_or("no channel")?;
        let (tx, rx) = node
            .h
            .gossip(channel, config.clone(), 8192, |_, _| Verdict::Accept)
            .map_err(|e| e.to_string())?;
        senders.push(tx);
        let want = s.messages - s.messages / s.nodes - usize::from(i < s.messages % s.nodes);
        let messages = s.messages;
        collectors.push(std::thread::spawn(move || {
            let mut got: Arrivals = vec![None; messages];
            let deadline = Instant::now() + DEADLINE;
            let mut n = 0;
            while n < want {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Some(d)) => {
                        if let Some(slot) = index_of(&d.payload).and_then(|k| got.get_mut(k)) {
                            if slot.is_none() {
                                *slot = Some(Instant::now());
                                n += 1;
                            }
                        }
                    }
                    _ => break,
                }
            }
            got
        }));
    }
    let start = Instant::now();
    let sent = pace(s, |origin, k| {
        senders[origin]
            .broadcast(message(k, s.size))
            .map(|_| ())
            .map_err(|e| format!("broadcast: {e}"))
    })?;
    let arrivals: Vec<Arrivals> = collectors
        .into_iter()
        .map(|c| c.join().map_err(|_| "collector panicked".to_string()))
        .collect::<Result<_, _>>()?;
    let copies: u64 = senders
        .iter()
        .map(|t| {
            let st = t.stats().core;
            st.delivered + st.duplicates
        })
        .sum();
    drop(senders);
    shutdown(nodes);
    Ok((spread(s, &sent, &arrivals, copies, start)?, name))
}

/// One flooding run over the same overlay (see the module docs).
pub(crate) fn flood(p: &Plan, backend: Backend, s: Shape) -> Result<Spread, String> {
    let mut nodes = mesh(p, backend, s)?;
    let signers: Vec<Arc<Ed25519Signer>> = (0..s.nodes)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let keys: Arc<Vec<PublicKey>> =
        Arc::new(signers.iter().map(|x| x.public_key().clone()).collect());
    let mut senders = Vec::with_capacity(s.nodes);
    let mut workers = Vec::with_capacity(s.nodes);
    let done = Arc::new(AtomicBool::new(false));
    let (complete, completed) = std::sync::mpsc::channel::<()>();
    for (i, node) in nodes.iter_mut().enumerate() {
        let (tx, rx) = node.channel.take().ok_or("no channel")?;
        senders.push((tx.clone(), node.neighbours.clone()));
        let neighbours = node.neighbours.clone();
        let keys = keys.clone();
        let want = s.messages - s.messages / s.nodes - usize::from(i < s.messages % s.nodes);
        let messages = s.messages;
        let (done, complete) = (done.clone(), complete.clone());
        workers.push(std::thread::spawn(move || {
            let mut got: Arrivals = vec![None; messages];
            let mut seen = HashSet::new();
            let (mut n, mut copies) = (0usize, 0u64);
            let deadline = Instant::now() + DEADLINE;
            // Relays until the run ends, not only until it has its own.
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                let (from, frame) = match rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                copies += 1;
                // origin u16, signature 64 B, then the payload (index first).
                let (Some(origin), Some(sig), Some(payload)) = (
                    frame
                        .get(..2)
                        .map(|o| u16::from_be_bytes([o[0], o[1]]) as usize),
                    frame.get(2..66),
                    frame.get(66..),
                ) else {
                    continue;
                };
                let Some(k) = index_of(payload) else { continue };
                if !seen.insert(k) {
                    continue;
                }
                let Some(key) = keys.get(origin) else {
                    continue;
                };
                if shoal_crypto::ED25519
                    .verify(key, NAMESPACE, payload, sig)
                    .is_err()
                {
                    continue;
                }
                if let Some(slot) = got.get_mut(k) {
                    *slot = Some(Instant::now());
                    n += 1;
                    if n == want {
                        let _ = complete.send(());
                    }
                }
                // A full queue drops the copy, as a flooding relay does: a
                // waiting send could deadlock two relays sending to each
                // other.
                for nb in neighbours.iter().filter(|nb| **nb != from) {
                    let _ = tx.send(nb, frame.clone(), Priority::Low);
                }
            }
            (got, copies)
        }));
    }
    let start = Instant::now();
    let sent = pace(s, |origin, k| {
        let payload = message(k, s.size);
        let sig = signers[origin].sign(NAMESPACE, &payload);
        let mut f = BytesMut::with_capacity(66 + payload.len());
        f.put_u16(origin as u16);
        f.put_slice(&sig);
        f.put_slice(&payload);
        let f = f.freeze();
        let (tx, neighbours) = &senders[origin];
        for nb in neighbours {
            tx.send_wait(nb, f.clone(), Priority::Low)
                .blocking()
                .result()
                .map_err(|e| format!("flood send: {e}"))?;
        }
        Ok(())
    })?;
    // Every node has every message, or the deadline passed.
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..s.nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        if completed.recv_timeout(left).is_err() {
            break;
        }
    }
    done.store(true, Ordering::Release);
    let mut arrivals = Vec::with_capacity(s.nodes);
    let mut copies = 0;
    for w in workers {
        let (a, c) = w.join().map_err(|_| "flood worker panicked")?;
        arrivals.push(a);
        copies += c;
    }
    drop(senders);
    shutdown(nodes);
    spread(s, &sent, &arrivals, copies, start)
}

/// `r` from a gossip [`Spread`].
pub(crate) fn result(p: &Plan, s: Shape, backend: String, g: &Spread) -> RunResult {
    let mut r = RunResult::new("gossip", backend, p.shards, s.size);
    r.finish(
        s.messages * (s.nodes - 1),
        g.delivered,
        g.seconds,
        g.delivered * s.size,
    );
    r.peers = Some(s.nodes);
    r.degree = Some(2 * reach(s));
    r.delivered_fraction = Some(g.delivered_fraction);
    r.duplicates_per_message = Some(g.duplicates_per_message);
    r.with_latency(&g.time_to_all)
}

/// The flooding figures beside a gossip result (medians over the rounds).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Flooding {
    pub(crate) delivered_fraction: f64,
    pub(crate) duplicates_per_message: f64,
    /// Time to all nodes, µs.
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

impl Flooding {
    pub(crate) fn median(runs: &[Spread]) -> Flooding {
        let med = |f: &dyn Fn(&Spread) -> f64| crate::result::median(runs.iter().map(f).collect());
        Flooding {
            delivered_fraction: med(&|r| r.delivered_fraction),
            duplicates_per_message: med(&|r| r.duplicates_per_message),
            p50_us: med(&|r| r.time_to_all.value_at_quantile(0.5) as f64 / 1000.0),
            p99_us: med(&|r| r.time_to_all.value_at_quantile(0.99) as f64 / 1000.0),
        }
    }
}
