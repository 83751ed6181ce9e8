//! Two shoal nodes inside a `#[tokio::main]` application.
//!
//! What it shows: shoal's async calls ([`Receiver::recv`], the peer event
//! stream) are plain futures, so they compose with tokio timers in
//! `tokio::select!`. The shard threads are shoal's own, not tokio tasks: the
//! runtime only waits on results, it never runs network I/O.
//!
//! Alice ticks every 100 ms and sends the tick to Bob; a tokio task on Bob's
//! side answers each with a "tock". Alice's loop selects over three things
//! at once: her receiver (a tock arrived), the tick timer (send the next
//! tick) and a deadline (give up). It ends after five tocks.
//!
//! Run it with `cargo run --release --example tokio_app`. It binds two
//! ephemeral loopback ports and exits within about a second; it exits
//! non-zero with a message if the nodes do not connect, or the tocks do not
//! come back, before the deadline.
//!
//! [`Receiver::recv`]: shoal::Receiver::recv

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use shoal::{ChannelConfig, Config, Event, Network, NetworkHandle, Oracle, Priority};
use tokio::time::{interval, sleep, timeout};

const TICKS: u32 = 1;
/// Tocks Alice waits for before she stops.
const ROUNDS: usize = 5;
/// The whole exchange must finish by then.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let (mut alice_net, alice_oracle) = Network::new(Config::local(Some(listen)))?;
    let (mut bob_net, bob_oracle) = Network::new(Config::local(Some(listen)))?;
    let (alice_tx, alice_rx) =
        alice_net.register(ChannelConfig::new(TICKS).max_size(1024).capacity(64))?;
    let (bob_tx, bob_rx) =
        bob_net.register(ChannelConfig::new(TICKS).max_size(1024).capacity(64))?;
    let alice = alice_net.start()?;
    let bob = bob_net.start()?;

    // Subscribe before authorizing, so the `Connected` event cannot be
    // missed: events are delivered from the moment of subscription.
    let mut alice_events = alice.events();
    introduce(&alice_oracle, &bob)?;
    introduce(&bob_oracle, &alice)?;

    // Await the connection instead of blocking a runtime thread
    // (`wait_peers` blocks; it is for plain threads).
    let bob_key = bob.public_key();
    timeout(DEADLINE, async {
        loop {
            match alice_events.recv().await {
                Ok(Event::Connected(peer)) if peer == bob_key => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| "alice did not connect to bob in time")??;
    println!("alice connected to bob {bob_key}");

    // Bob's side: a task that answers every tick with a tock. `recv` is a
    // future like any other; it fails only once Bob's network shuts down.
    let responder = tokio::spawn(async move {
        while let Ok((from, tick)) = bob_rx.recv().await {
            let tock = String::from_utf8_lossy(&tick).replace("tick", "tock");
            if let Err(e) = bob_tx
                .send(&from, Bytes::from(tock), Priority::Low)
                .result()
            {
                eprintln!("bob could not answer: {e}");
            }
        }
    });

    let mut ticker = interval(Duration::from_millis(100));
    let deadline = sleep(DEADLINE);
    tokio::pin!(deadline);
    let (mut sent, mut tocks) = (0u32, 0usize);
    while tocks < ROUNDS {
        tokio::select! {
            _ = ticker.tick() => {
                sent += 1;
                // Sending never blocks, so it is fine inside async code: a
                // full peer queue is an error to handle, not a wait.
                match alice_tx.send(&bob_key, Bytes::from(format!("tick {sent}")), Priority::Low).result() {
                    Ok(()) => println!("alice sent tick {sent}"),
                    Err(e) => println!("alice could not send tick {sent}: {e}"),
                }
            }
            got = alice_rx.recv() => {
                let (_, tock) = got?;
                tocks += 1;
                println!("alice got {:?}", String::from_utf8_lossy(&tock));
            }
            _ = &mut deadline => {
                return Err(format!("only {tocks} of {ROUNDS} tocks within {DEADLINE:?}").into());
            }
        }
    }

    // `shutdown` joins shoal's threads, which blocks: keep it off the
    // runtime's worker threads.
    tokio::task::spawn_blocking(move || {
        alice.shutdown(Duration::from_millis(200));
        bob.shutdown(Duration::from_millis(200));
    })
    .await?;
    // Bob's network is down, so his `recv` returned an error and the task ended.
    responder.await?;
    println!("done: {sent} ticks sent, {tocks} tocks received");
    Ok(())
}

/// Authorizes `peer` in peer set 0 of `oracle` and tells it where to dial.
fn introduce(oracle: &Oracle, peer: &NetworkHandle) -> Result<(), Box<dyn Error>> {
    let addr = peer.local_addr().ok_or("the node has no listen address")?;
    oracle.register(0, vec![peer.public_key()]);
    oracle.add_address(peer.public_key(), addr);
    Ok(())
}
