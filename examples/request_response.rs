//! Requests answered by an in-shard handler, and the ways a request fails.
//!
//! What it shows:
//! - a handler ([`Network::handle`]) registered on Bob's channel answers
//!   Alice's requests on the shard thread that received them (no hop to
//!   another thread): the reply is the response;
//! - a handler that refuses gives the requester a typed error
//!   ([`RequestError::Remote`]);
//! - a request carries its own timeout: a handler too slow to answer in
//!   time gives [`RequestError::Timeout`], and its late answer is dropped;
//! - a peer that closes the connection while a request is in flight fails
//!   it at once with [`RequestError::Disconnected`], without waiting out the
//!   timeout;
//! - a request to a peer that is gone fails at once with
//!   [`RequestError::NotConnected`].
//!
//! Run it with `cargo run --release --example request_response`. It binds
//! two ephemeral loopback ports and exits within about a second; it exits
//! non-zero with a message if an outcome is not the one expected.
//!
//! [`Network::handle`]: shoal::Network::handle
//! [`RequestError::Remote`]: shoal::RequestError::Remote
//! [`RequestError::Timeout`]: shoal::RequestError::Timeout
//! [`RequestError::Disconnected`]: shoal::RequestError::Disconnected
//! [`RequestError::NotConnected`]: shoal::RequestError::NotConnected

use std::error::Error;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{
    ChannelConfig, Config, HandlerResult, Network, NetworkHandle, Oracle, PublicKey, RequestError,
    RpcStatus,
};

const RPC: u32 = 5;
/// How long Bob's handler takes for a `slow` request.
const SLOW: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let (mut alice_net, alice_oracle) = Network::new(Config::local(Some(listen)))?;
    let (mut bob_net, bob_oracle) = Network::new(Config::local(Some(listen)))?;
    let (alice_tx, _alice_rx) =
        alice_net.register(ChannelConfig::new(RPC).max_size(64 * 1024).capacity(16))?;
    let (_bob_tx, _bob_rx) =
        bob_net.register(ChannelConfig::new(RPC).max_size(1024).capacity(16))?;
    bob_net.serve(RPC, slow_or_upper)?;

    let alice = alice_net.start()?;
    let bob = bob_net.start()?;
    introduce(&alice_oracle, &bob)?;
    introduce(&bob_oracle, &alice)?;
    let bob_key = bob.public_key();
    if !alice.wait_peers(WAIT, |p| p.contains(&bob_key)) {
        return Err("alice and bob did not connect within 10 s".into());
    }

    // 1. Answered.
    let reply = alice_tx
        .request(&bob_key, Bytes::from_static(b"hello"), WAIT)
        .blocking()?;
    println!(
        "answered:     hello  -> {}",
        String::from_utf8_lossy(&reply)
    );

    // The handler refused: the error is the peer's status, typed.
    let r = alice_tx
        .request(&bob_key, Bytes::from_static(b"refuse"), WAIT)
        .blocking();
    println!("refused:      refuse -> {r:?}");
    expect(r, RequestError::Remote(RpcStatus::HandlerFailed))?;

    // 2. Timed out: the handler needs 300 ms, the request allows 100 ms.
    let t = Instant::now();
    let r = alice_tx
        .request(
            &bob_key,
            Bytes::from_static(b"slow"),
            Duration::from_millis(100),
        )
        .blocking();
    println!("timed out:    slow   -> {r:?} after {:?}", t.elapsed());
    expect(r, RequestError::Timeout)?;
    // Bob's busy shard still sends the late answer; Alice drops it.

    // 3. The peer closes the connection while the request is in flight.
    //    Here Bob's limit for the channel is 1 KiB and Alice's 64 KiB (two
    //    versions disagreeing during an upgrade): Bob closes the connection
    //    that carried a 4 KiB request. A peer that crashes, or a link that
    //    dies, fails the request the same way.
    let t = Instant::now();
    let r = alice_tx
        .request(&bob_key, Bytes::from(vec![b'x'; 4096]), WAIT)
        .blocking();
    // (It waits first for Bob's shard to finish the slow handler above.)
    println!(
        "disconnected: 4 KiB  -> {r:?} after {:?} (its timeout was {WAIT:?})",
        t.elapsed()
    );
    expect(r, RequestError::Disconnected)?;

    // 4. Bob is gone: requests fail at once, before anything is sent.
    bob.shutdown(Duration::from_millis(200));
    if !alice.wait_peers(WAIT, |p| p.is_empty()) {
        return Err("alice still sees bob after his shutdown".into());
    }
    let r = alice_tx
        .request(&bob_key, Bytes::from_static(b"hello"), WAIT)
        .blocking();
    println!("peer gone:    hello  -> {r:?}");
    expect(r, RequestError::NotConnected)?;

    alice.shutdown(Duration::from_millis(200));
    Ok(())
}

/// Bob's handler: upper-cases the request, except `slow`, which takes
/// [`SLOW`] first, and `refuse`, which it refuses. A handler runs on the
/// shard thread, so while it sleeps that shard serves no other connection:
/// real slow work belongs on another thread, answered with a message later.
fn slow_or_upper(_from: &PublicKey, request: Bytes) -> HandlerResult {
    match &request[..] {
        // `Err` (or a panic) answers with a "handler failed" status.
        b"refuse" => Err("not today".into()),
        b"slow" => {
            thread::sleep(SLOW);
            Ok(Some(Bytes::from_static(b"SLOW")))
        }
        // `Ok(Some(reply))` answers; `Ok(None)` answers with an empty
        // payload.
        _ => Ok(Some(Bytes::from(request.to_ascii_uppercase()))),
    }
}

/// Fails unless `r` is the error `want`.
fn expect(r: Result<Bytes, RequestError>, want: RequestError) -> Result<(), Box<dyn Error>> {
    match r {
        Err(e) if e == want => Ok(()),
        other => Err(format!("expected {want:?}, got {other:?}").into()),
    }
}

/// Authorizes `peer` in peer set 0 of `oracle` and tells it where to dial.
fn introduce(oracle: &Oracle, peer: &NetworkHandle) -> Result<(), Box<dyn Error>> {
    let addr = peer.local_addr().ok_or("the node has no listen address")?;
    oracle.register(0, vec![peer.public_key()]);
    oracle.add_address(peer.public_key(), addr);
    Ok(())
}
