//! Open mode: a small Kademlia network, and a message sent by node id.
//!
//! What it shows: with `discovery.open = true` any key may connect and
//! nodes find each other with Kademlia (the node id is the ed25519 public
//! key, authenticated by the handshake), instead of an oracle's peer set.
//! - Three nodes form the network; each knows only the first one's
//!   address (the bootstrapper), and finds the others by itself.
//! - A client without a listen address joins the same way.
//! - A target node joins after the client. Nobody gives the client its
//!   address, and it cannot dial the client (the client does not listen).
//! - The client looks the target's id up ([`NetworkHandle::lookup`]) and
//!   connects to it by id ([`NetworkHandle::connect_id`]), which dials
//!   the address the lookup found unless it is connected already, then
//!   sends to it like to any peer.
//!
//! Run it with `cargo run --release --example open_mode`. It binds four
//! ephemeral loopback ports and exits within a few seconds; it exits
//! non-zero with a message if the network does not form, the lookup does
//! not find the target, or the message does not arrive within 10 s.
//!
//! [`NetworkHandle::lookup`]: shoal::NetworkHandle::lookup
//! [`NetworkHandle::connect_id`]: shoal::NetworkHandle::connect_id

use std::error::Error;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{ChannelConfig, Config, Network, NetworkHandle, Priority, Receiver, Sender};

const APP: u32 = 1;
const WAIT: Duration = Duration::from_secs(10);

struct Node {
    handle: NetworkHandle,
    tx: Sender,
    rx: Receiver,
}

/// Starts an open-mode node, listening on an ephemeral port if `listen`,
/// that knows only `bootstrap`'s address (if any).
fn start(listen: bool, bootstrap: Option<&Node>) -> Result<Node, Box<dyn Error>> {
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    // `local` also accepts loopback addresses in the address records nodes
    // exchange; on the public internet they are refused.
    let mut cfg = Config::local(listen.then_some(addr));
    cfg.discovery.open = true;
    let (mut net, oracle) = Network::new(cfg)?;
    let (tx, rx) = net.register(ChannelConfig::new(APP).max_size(1024).capacity(16))?;
    if let Some(boot) = bootstrap {
        let boot_addr = boot
            .handle
            .local_addr()
            .ok_or("bootstrapper does not listen")?;
        // In open mode the oracle only holds addresses to start from.
        oracle.add_address(boot.handle.public_key(), boot_addr);
    }
    Ok(Node {
        handle: net.start()?,
        tx,
        rx,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let first = start(true, None)?;
    let second = start(true, Some(&first))?;
    let third = start(true, Some(&first))?;
    let network = [&first, &second, &third];
    for (i, node) in network.iter().enumerate() {
        // Joining looks the node's own id up, which connects it to its
        // neighbours: the second and third meet without being introduced.
        if !node.handle.wait_peers(WAIT, |p| p.len() == 2) {
            return Err(format!("node {} did not find the other two", i + 1).into());
        }
    }
    println!("network: 3 nodes, each connected to the other two");

    let client = start(false, Some(&first))?;
    if !client.handle.wait_peers(WAIT, |p| p.len() == 3) {
        return Err("the client did not find the three nodes".into());
    }
    println!(
        "client {} joined (no listen address)",
        client.handle.public_key()
    );

    let target = start(true, Some(&first))?;
    let target_key = target.handle.public_key();
    if !target.handle.wait_peers(WAIT, |p| p.len() == 3) {
        return Err("the target did not find the three nodes".into());
    }
    println!(
        "target {target_key} joined; client connected to it: {}",
        client.handle.is_connected(&target_key)
    );

    // Look the target up: the iterative FIND_NODE walk asks the client's
    // peers for the nodes closest to the id, and returns them with the
    // addresses they signed.
    let id: [u8; 32] = target_key.as_bytes().try_into()?;
    let t = Instant::now();
    let found = client.handle.lookup(id).blocking();
    println!(
        "lookup took {:?} and returned {} nodes:",
        t.elapsed(),
        found.len()
    );
    for (key, addr) in &found {
        let mark = if *key == target_key {
            "  <- target"
        } else {
            ""
        };
        println!("  {key} at {addr}{mark}");
    }
    if !found.iter().any(|(key, _)| *key == target_key) {
        return Err("the lookup did not find the target".into());
    }

    // Send by id. The lookup itself may have connected the client to the
    // target (it queries the closest nodes it finds, the target among
    // them); if not, this looks the id up again and dials it, waiting up
    // to `WAIT` for the connection.
    println!(
        "client connected to the target after the lookup: {}",
        client.handle.is_connected(&target_key)
    );
    if !client.handle.connect_id(&target_key, WAIT) {
        return Err("could not connect to the target by its id".into());
    }
    client
        .tx
        .send(&target_key, Bytes::from_static(b"found you"), Priority::Low)
        .result()?;
    let (from, msg) = target
        .rx
        .recv_timeout(WAIT)?
        .ok_or("the target received nothing within 10 s")?;
    println!("target got {:?} from {from}", String::from_utf8_lossy(&msg));

    // The connection now exists both ways: a plain send answers.
    target
        .tx
        .send(&from, Bytes::from_static(b"hello, client"), Priority::Low)
        .result()?;
    let (_, reply) = client
        .rx
        .recv_timeout(WAIT)?
        .ok_or("the client received no answer within 10 s")?;
    println!("client got {:?}", String::from_utf8_lossy(&reply));

    for node in [first, second, third, client, target] {
        node.handle.shutdown(Duration::from_millis(200));
    }
    Ok(())
}
