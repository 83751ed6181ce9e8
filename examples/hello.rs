//! Two shoal nodes in one process exchange one message each way.
//!
//! What it shows: the whole life of an embedded node.
//! 1. [`Network::new`] validates a [`Config`] and hands back the network and
//!    its [`Oracle`] (who may connect, and where to dial them).
//! 2. Channels are registered before the network starts; each gives a
//!    [`Sender`] and a [`Receiver`].
//! 3. [`Network::start`] binds the listener and spawns the shard threads.
//! 4. The oracle authorizes the peer (peer set index 0) and says where it
//!    listens; the dialer connects on its own, the handshake authenticates
//!    both keys, and only then can messages flow.
//! 5. [`NetworkHandle::shutdown`] closes every connection and joins every
//!    thread.
//!
//! Run it with `cargo run --release --example hello`. It binds two ephemeral
//! loopback ports and exits by itself within a second or two; it exits
//! non-zero with a message if the nodes do not connect or a message does
//! not arrive in time.
//!
//! [`Sender`]: shoal::Sender
//! [`Receiver`]: shoal::Receiver

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use shoal::{ChannelConfig, Config, Network, NetworkHandle, Oracle, Priority};

/// The channel both nodes talk on. Channel ids are the application's own
/// choice; both ends must register the same id.
const CHAT: u32 = 1;
/// How long any single step may take before the example gives up.
const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    // `Config::local` is the preset for loopback clusters (quick dials, one
    // shard). Port 0: the kernel picks a free port, so runs never collide.
    let listen: SocketAddr = "127.0.0.1:0".parse()?;

    let (mut alice_net, alice_oracle) = Network::new(Config::local(Some(listen)))?;
    let (mut bob_net, bob_oracle) = Network::new(Config::local(Some(listen)))?;

    // A channel: no inbound rate quota, messages up to 64 KiB, at most 16
    // received messages waiting for the application, no compression.
    let (alice_tx, alice_rx) =
        alice_net.register(ChannelConfig::new(CHAT).max_size(64 * 1024).capacity(16))?;
    let (bob_tx, bob_rx) =
        bob_net.register(ChannelConfig::new(CHAT).max_size(64 * 1024).capacity(16))?;

    let alice = alice_net.start()?;
    let bob = bob_net.start()?;
    println!(
        "alice {} listens on {} ({:?})",
        alice.public_key(),
        listen_addr(&alice)?,
        alice.backend()
    );
    println!(
        "bob   {} listens on {} ({:?})",
        bob.public_key(),
        listen_addr(&bob)?,
        bob.backend()
    );

    // Authorization is explicit: each node only accepts (and dials) keys in
    // a peer set its oracle tracks. A validator would register the epoch's
    // validator set here; the address lets the dialer find the peer.
    introduce(&alice_oracle, &bob)?;
    introduce(&bob_oracle, &alice)?;

    if !alice.wait_peers(WAIT, |peers| peers.contains(&bob.public_key())) {
        return Err("alice and bob did not connect within 10 s".into());
    }
    println!("connected: alice has {} peer(s)", alice.peers().len());

    // `send` never blocks: it queues the message for the peer's shard, or
    // its report says why it cannot (not connected, queue full, too large).
    alice_tx
        .send(
            &bob.public_key(),
            Bytes::from_static(b"hello, bob"),
            Priority::Low,
        )
        .result()?;
    let (from, msg) = bob_rx
        .recv_timeout(WAIT)?
        .ok_or("bob received nothing within 10 s")?;
    println!("bob   got {:?} from {from}", String::from_utf8_lossy(&msg));

    bob_tx
        .send(&from, Bytes::from_static(b"hi, alice"), Priority::Low)
        .result()?;
    let (from, msg) = alice_rx
        .recv_timeout(WAIT)?
        .ok_or("alice received nothing within 10 s")?;
    println!("alice got {:?} from {from}", String::from_utf8_lossy(&msg));

    // Graceful: queued messages are flushed for up to the given time, every
    // socket is closed and every thread joined before this returns.
    alice.shutdown(Duration::from_millis(500));
    bob.shutdown(Duration::from_millis(500));
    println!("both nodes shut down");
    Ok(())
}

/// Authorizes `peer` in peer set 0 of `oracle` and tells it where to dial.
fn introduce(oracle: &Oracle, peer: &NetworkHandle) -> Result<(), Box<dyn Error>> {
    oracle.register(0, vec![peer.public_key()]);
    oracle.add_address(peer.public_key(), listen_addr(peer)?);
    Ok(())
}

/// The address the node actually bound (port 0 resolved).
fn listen_addr(node: &NetworkHandle) -> Result<SocketAddr, Box<dyn Error>> {
    Ok(node.local_addr().ok_or("the node has no listen address")?)
}
