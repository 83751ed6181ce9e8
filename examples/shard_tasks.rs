//! A replicated counter whose logic runs as tasks on the nodes' shards.
//!
//! What it shows: [`NetworkHandle::spawn_on`] and the task context.
//! 1. Three nodes connect in a full mesh.
//! 2. On every node, one task per data shard claims the `INCREMENTS`
//!    channel ([`Ctx::receiver`]) and applies every increment a peer sends
//!    to a counter only that shard's tasks touch (an `Rc<Cell>`: tasks are
//!    `!Send` and never leave their shard).
//! 3. Another task on shard 0 increments its node's own counter `ROUNDS`
//!    times, sending each increment to every peer ([`LocalSender::send_wait`]:
//!    a peer whose connection is on this shard gets it without a thread
//!    hop), pacing itself with the shard's timer ([`Ctx::interval`]).
//! 4. The node's counter is the sum over its shards; every node reaches
//!    `3 * ROUNDS`: its own increments plus the two others'.
//!
//! Run it with `cargo run --release --example shard_tasks`. It exits by
//! itself within a few seconds; non-zero if the nodes do not connect or
//! the counters do not converge in time.
//!
//! [`NetworkHandle::spawn_on`]: shoal::NetworkHandle::spawn_on
//! [`Ctx::receiver`]: shoal::tasks::Ctx::receiver
//! [`Ctx::interval`]: shoal::tasks::Ctx::interval
//! [`LocalSender::send_wait`]: shoal::tasks::LocalSender::send_wait

use std::cell::Cell;
use std::error::Error;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::tasks::Outcome;
use shoal::{ChannelConfig, Config, Network, NetworkHandle, Oracle, Priority, PublicKey};

/// Increments between the nodes: an 8-byte big-endian amount.
const INCREMENTS: u32 = 1;
/// Increments each node makes.
const ROUNDS: u64 = 50;
const WAIT: Duration = Duration::from_secs(20);

struct Replica {
    node: NetworkHandle,
    oracle: Oracle,
    /// The increments from peers each shard's applier counted, as it last
    /// published them.
    per_shard: Vec<Arc<AtomicU64>>,
    /// The node's own increments.
    own: Arc<AtomicU64>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let (mut net, oracle) = Network::new(Config::local(Some(listen)))?;
        net.register(ChannelConfig::new(INCREMENTS).max_size(64).capacity(256))?;
        let node = net.start()?;
        replicas.push(Replica {
            per_shard: (0..node.shards()).map(|_| Arc::default()).collect(),
            own: Arc::default(),
            node,
            oracle,
        });
    }
    let keys: Vec<PublicKey> = replicas.iter().map(|r| r.node.public_key()).collect();
    for r in &replicas {
        r.oracle.register(0, keys.clone());
        for other in &replicas {
            let addr = other.node.local_addr().ok_or("no listen address")?;
            r.oracle.add_address(other.node.public_key(), addr);
        }
    }
    for r in &replicas {
        if !r.node.wait_peers(WAIT, |p| p.len() == 2) {
            return Err("the three nodes did not connect within 20 s".into());
        }
    }
    println!("3 nodes connected; each applies increments on its shards");

    let mut appliers = Vec::new();
    let (claimed, ready) = std::sync::mpsc::channel();
    for r in &replicas {
        // One applier per shard: each serves the peers whose connection
        // lives on its shard.
        for (shard, published) in r.per_shard.iter().enumerate() {
            let (published, claimed) = (published.clone(), claimed.clone());
            appliers.push(r.node.spawn_on(shard, move |ctx| async move {
                let Ok(mut increments) = ctx.receiver(INCREMENTS) else {
                    return;
                };
                // The claim starts here, in the task: nobody may send
                // increments before every applier holds its channel.
                let _ = claimed.send(());
                let counter = Rc::new(Cell::new(0u64));
                loop {
                    let (_, msg) = increments.recv().await;
                    let amount = msg
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes);
                    counter.set(counter.get() + amount);
                    published.store(counter.get(), Ordering::Release);
                }
            })?);
        }
    }
    for _ in 0..appliers.len() {
        ready
            .recv_timeout(WAIT)
            .map_err(|_| "an applier did not start")?;
    }
    let mut writers = Vec::new();
    for r in &replicas {
        let own = r.own.clone();
        writers.push(r.node.spawn_on(0, move |ctx| async move {
            let Ok(tx) = ctx.sender(INCREMENTS) else {
                return;
            };
            let mut every = ctx.interval(Duration::from_millis(2));
            for _ in 0..ROUNDS {
                every.tick().await;
                own.fetch_add(1, Ordering::Release);
                let one = Bytes::copy_from_slice(&1u64.to_be_bytes());
                for peer in ctx.peers() {
                    if let Err(e) = tx.send_wait(&peer, one.clone(), Priority::Low).await {
                        eprintln!("increment to {peer} not sent: {e}");
                    }
                }
            }
        })?);
    }
    for w in writers {
        if w.join().blocking() != Outcome::Finished {
            return Err("a writer did not finish".into());
        }
    }

    let deadline = Instant::now() + WAIT;
    let total = |r: &Replica| -> u64 {
        let from_peers: u64 = r.per_shard.iter().map(|c| c.load(Ordering::Acquire)).sum();
        from_peers + r.own.load(Ordering::Acquire)
    };
    while replicas.iter().any(|r| total(r) < 3 * ROUNDS) {
        if Instant::now() > deadline {
            let got: Vec<u64> = replicas.iter().map(total).collect();
            return Err(format!("counters did not converge: {got:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, r) in replicas.iter().enumerate() {
        println!(
            "node {i}: counter {} (on {} shard(s))",
            total(r),
            r.per_shard.len()
        );
    }
    for r in replicas {
        r.node.shutdown(Duration::from_millis(200));
    }
    for a in appliers {
        // Appliers run until the network shuts down.
        if a.join().blocking() != Outcome::Cancelled {
            return Err("an applier ended before shutdown".into());
        }
    }
    println!("every replica counted {}", 3 * ROUNDS);
    Ok(())
}
