//! Plain threads, no async runtime, and backpressure you can see.
//!
//! What it shows: every shoal call has a form for ordinary threads
//! ([`Receiver::recv_timeout`], [`Wait::blocking`] of
//! [`Sender::send_wait`]), and a slow
//! consumer slows its producer down instead of making anything grow without
//! bound. The chain, end to end:
//! - Bob's channel holds at most `INBOX` (4) received messages. While it is
//!   full, Bob's shard stops reading Alice's connection (nothing is dropped).
//! - TCP then stops Alice's shard from writing, so Alice's per-peer send
//!   queue (`limits.peer_send_bytes`) fills up.
//! - [`Sender::send`] then reports [`SendError::Full`] at once: the
//!   sender decides what to do. Here it falls back to
//!   [`Sender::send_wait`], which waits for room (`.blocking()` on this
//!   thread).
//!
//! Bob sleeps between receives to play a consumer slower than the network;
//! the program prints how often Alice found the queue full and how long she
//! waited in total.
//!
//! Run it with `cargo run --release --example blocking`. It moves 24 MiB
//! over loopback and exits within a few seconds; it exits non-zero with a
//! message if the nodes do not connect or Bob stops receiving for 10 s.
//!
//! [`Receiver::recv_timeout`]: shoal::Receiver::recv_timeout
//! [`Sender::send`]: shoal::Sender::send
//! [`Sender::send_wait`]: shoal::Sender::send_wait
//! [`Wait::blocking`]: shoal::Wait::blocking
//! [`SendError::Full`]: shoal::SendError::Full

use std::error::Error;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{ChannelConfig, Config, Network, NetworkHandle, Oracle, Priority, SendError};

const BULK: u32 = 1;
/// Messages Alice sends, and their size: 24 MiB in all, several times what
/// the socket buffers and queues in between can hold.
const MESSAGES: usize = 192;
const SIZE: usize = 128 * 1024;
/// Received messages Bob's channel holds before his shard stops reading.
const INBOX: usize = 4;
/// Bob's pace: one message per this long.
const BOB_WORK: Duration = Duration::from_millis(2);
const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut alice_cfg = Config::local(Some(listen));
    // Alice's queue per peer: 256 KiB of payload (2 messages) before
    // `send` reports it full. The default is 8 MiB.
    alice_cfg.limits.peer_send_bytes = 256 * 1024;

    let (mut alice_net, alice_oracle) = Network::new(alice_cfg)?;
    let (mut bob_net, bob_oracle) = Network::new(Config::local(Some(listen)))?;
    let (alice_tx, _alice_rx) =
        alice_net.register(ChannelConfig::new(BULK).max_size(SIZE).capacity(INBOX))?;
    let (_bob_tx, bob_rx) =
        bob_net.register(ChannelConfig::new(BULK).max_size(SIZE).capacity(INBOX))?;
    let alice = alice_net.start()?;
    let bob = bob_net.start()?;
    introduce(&alice_oracle, &bob)?;
    introduce(&bob_oracle, &alice)?;
    let bob_key = bob.public_key();
    if !alice.wait_peers(WAIT, |p| p.contains(&bob_key)) {
        return Err("alice and bob did not connect within 10 s".into());
    }
    println!("connected; alice sends {MESSAGES} x {} KiB", SIZE / 1024);

    // Bob: a plain thread that receives with a timeout, so a stalled
    // sender (or a shutdown) is noticed instead of hanging forever.
    let consumer = thread::spawn(move || -> Result<usize, String> {
        let mut received = 0;
        while received < MESSAGES {
            match bob_rx.recv_timeout(WAIT) {
                Ok(Some((_from, msg))) => {
                    received += 1;
                    if received % 48 == 0 {
                        println!("bob received {received} ({} KiB each)", msg.len() / 1024);
                    }
                    thread::sleep(BOB_WORK); // the slow part of a slow consumer
                }
                Ok(None) => return Err(format!("bob got nothing for {WAIT:?}")),
                Err(e) => return Err(format!("bob's channel closed: {e}")),
            }
        }
        Ok(received)
    });

    // Alice: try without waiting first; on `Full`, count it and wait for
    // room. A real producer might instead drop a stale message, merge it
    // with the next one, or slow down its own source.
    let payload = Bytes::from(vec![7u8; SIZE]);
    let (mut full, mut waited) = (0usize, Duration::ZERO);
    let start = Instant::now();
    for _ in 0..MESSAGES {
        match alice_tx
            .send(&bob_key, payload.clone(), Priority::Low)
            .result()
        {
            Ok(()) => {}
            Err(SendError::Full) => {
                full += 1;
                let t = Instant::now();
                alice_tx
                    .send_wait(&bob_key, payload.clone(), Priority::Low)
                    .blocking()
                    .result()?;
                waited += t.elapsed();
            }
            Err(e) => return Err(format!("send failed: {e}").into()),
        }
    }
    println!(
        "alice queued everything in {:?}: the queue was full {full} of {MESSAGES} times, \
         {waited:?} spent waiting for room",
        start.elapsed()
    );

    let received = consumer.join().map_err(|_| "bob's thread panicked")??;
    println!("bob received all {received} in {:?}", start.elapsed());
    if full == 0 {
        return Err("alice never saw a full queue: backpressure did not show".into());
    }

    alice.shutdown(Duration::from_millis(200));
    bob.shutdown(Duration::from_millis(200));
    Ok(())
}

/// Authorizes `peer` in peer set 0 of `oracle` and tells it where to dial.
fn introduce(oracle: &Oracle, peer: &NetworkHandle) -> Result<(), Box<dyn Error>> {
    let addr = peer.local_addr().ok_or("the node has no listen address")?;
    oracle.register(0, vec![peer.public_key()]);
    oracle.add_address(peer.public_key(), addr);
    Ok(())
}
