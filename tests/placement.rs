//! Peers placed on a chosen shard (`NetworkHandle::place`), over real
//! loopback sockets on both backends: accepted connections move to their
//! peer's shard at establishment, with what the peer sent straight after
//! its handshake delivered once and in order (also when the end of its
//! stream comes in the same write), and requests both ways on the moved
//! connections; a dial to a placed peer goes to its shard; what `place`
//! refuses.

#[macro_use]
mod common;

use std::io::Write;
use std::sync::mpsc;

use bytes::Bytes;
use common::*;
use shoal::tasks::Outcome;
use shoal::{Backend, PlaceError, Priority};

/// Messages from the spokes.
const MSG: u32 = 1;
/// Requests, served by a task on the hub and by threads on the spokes.
const RPC: u32 = 2;
/// The hub's shard count, and the one its peers are placed on.
const HUB_SHARDS: usize = 3;
const PLACED: usize = 2;
const SPOKES: u64 = 4;
const BURST: u32 = 100;

/// Node `seed`, authorizing `seeds`, dialing `hub` (seed 1).
fn spoke(backend: Backend, seed: u64, seeds: &[u64], hub: &Node, channels: &[ChannelDef]) -> Node {
    start_node(
        backend,
        seed,
        any_addr(),
        seeds,
        &[(1, hub.addr)],
        channels,
        |_| {},
    )
}

/// A hub on 3 shards places 4 spokes on shard 2; the spokes dial it and
/// send a burst at once. Load placement would spread them over the shards,
/// so at least two must move: every connection ends on shard 2, every
/// burst arrives complete and in order, and requests cross both ways (a
/// task on shard 2 asking the spokes; the spokes asking that task).
fn accepted_connections_move_to_their_peers_shard(backend: Backend) {
    let seeds: Vec<u64> = (1..=SPOKES + 1).collect();
    let channels = [chan(MSG), chan(RPC)];
    let hub = start_node(backend, 1, any_addr(), &seeds, &[], &channels, |c| {
        c.io.shards = HUB_SHARDS;
    });
    let h = hub.handle();
    for s in 2..=SPOKES + 1 {
        h.place(&key(s), PLACED).unwrap();
    }
    let spokes: Vec<Node> = (2..=SPOKES + 1)
        .map(|s| spoke(backend, s, &seeds, &hub, &channels))
        .collect();
    // Each spoke sends its burst as soon as it sees the hub: the first
    // messages can arrive while the hub's connection is still moving.
    for n in &spokes {
        assert!(n.handle().wait_peers(WAIT, |p| p.contains(&key(1))));
        let (tx, _) = &n.channels[0];
        for i in 0..BURST {
            let m = Bytes::from([&n.seed.to_be_bytes()[..], &i.to_be_bytes()[..]].concat());
            tx.send_wait(&key(1), m, Priority::Low)
                .blocking()
                .result()
                .unwrap();
        }
    }
    let (_, rx) = &hub.channels[0];
    let mut next = [0u32; SPOKES as usize + 2];
    for _ in 0..SPOKES as u32 * BURST {
        let (from, m) = rx.recv_timeout(WAIT).unwrap().expect("every burst arrives");
        let seed = u64::from_be_bytes(m[..8].try_into().unwrap());
        let i = u32::from_be_bytes(m[8..12].try_into().unwrap());
        assert_eq!(from, key(seed));
        assert_eq!(i, next[seed as usize], "spoke {seed}'s burst in order");
        next[seed as usize] += 1;
    }
    assert!(h.wait_peers(WAIT, |p| p.len() == SPOKES as usize));
    for s in 2..=SPOKES + 1 {
        assert_eq!(h.shard_of(&key(s)), Some(PLACED), "spoke {s} on its shard");
    }
    let m = h.metrics();
    assert!(
        m.connections_moved.get() >= 2,
        "load placement put some elsewhere first: {} moved",
        m.connections_moved.get()
    );
    assert_eq!(m.shard_connections(PLACED), SPOKES as i64);
    for s in 0..HUB_SHARDS {
        if s != PLACED {
            assert_eq!(m.shard_connections(s), 0, "shard {s} kept nothing");
        }
    }

    // Requests both ways on the moved connections: the spokes' threads ask
    // a task on the hub's shard 2, and that task asks a task on each spoke.
    let (claimed, ready) = mpsc::channel();
    let serve = |n: &Node, answer: String| {
        let claimed = claimed.clone();
        let shard = n.handle().shard_of(&key(1)).unwrap_or(0);
        let shard = if n.seed == 1 { PLACED } else { shard };
        n.handle()
            .spawn_on(shard, move |ctx| async move {
                let mut requests = ctx.requests(RPC).unwrap();
                claimed.send(()).unwrap();
                loop {
                    let r = requests.recv().await;
                    let reply = Bytes::from(format!("{answer} {}", r.payload().len()));
                    r.respond(reply);
                }
            })
            .unwrap()
    };
    let mut servers = vec![serve(&hub, "hub".into())];
    for n in &spokes {
        servers.push(serve(n, format!("spoke {}", n.seed)));
    }
    for _ in 0..servers.len() {
        ready.recv_timeout(WAIT).expect("every server holds RPC");
    }
    for n in &spokes {
        let (rpc, _) = &n.channels[1];
        let r = rpc
            .request(&key(1), Bytes::from_static(b"?"), WAIT)
            .blocking()
            .unwrap();
        assert_eq!(r, Bytes::from_static(b"hub 1"));
    }
    let asker = h
        .spawn_on(PLACED, move |ctx| async move {
            let tx = ctx.sender(RPC).unwrap();
            for s in 2..=SPOKES + 1 {
                let r = tx.request(&key(s), Bytes::from_static(b"??"), WAIT).await;
                assert_eq!(r.unwrap(), Bytes::from(format!("spoke {s} 2")));
            }
        })
        .unwrap();
    assert_eq!(asker.join().blocking(), Outcome::Finished);
    drop(servers);
    stop_all(spokes);
    stop_all(vec![hub]);
}

/// Peers placed on the hub's shard 1 connect one after another, send a
/// burst as soon as they see the hub and shut down at once: every burst is
/// delivered, whole and in order, before its sender's disconnect. (The
/// raw dialer below puts the end of the stream in the same write.)
fn a_peer_that_sends_and_leaves_at_once_is_delivered(backend: Backend) {
    let seeds: Vec<u64> = (1..=SPOKES + 1).collect();
    let channels = [chan(MSG)];
    let hub = start_node(backend, 1, any_addr(), &seeds, &[], &channels, |c| {
        c.io.shards = 2;
    });
    let h = hub.handle();
    let (_, rx) = &hub.channels[0];
    for s in 2..=SPOKES + 1 {
        h.place(&key(s), 1).unwrap();
        let n = spoke(backend, s, &seeds, &hub, &channels);
        assert!(n.handle().wait_peers(WAIT, |p| p.contains(&key(1))));
        let (tx, _) = &n.channels[0];
        for i in 0..BURST {
            tx.send_wait(
                &key(1),
                Bytes::from(i.to_be_bytes().to_vec()),
                Priority::Low,
            )
            .blocking()
            .result()
            .unwrap();
        }
        stop_all(vec![n]);
        for i in 0..BURST {
            let (from, m) = rx
                .recv_timeout(WAIT)
                .unwrap()
                .expect("the burst arrives after its sender left");
            assert_eq!((from, &m[..]), (key(s), &i.to_be_bytes()[..]));
        }
    }
    assert!(h.metrics().connections_moved.get() >= 1, "some moved");
    stop_all(vec![hub]);
}

/// A raw dialer placed on the hub's shard 1 (load puts its connection on
/// shard 0 first) writes its key confirmation, a burst of messages and the
/// end of its stream in one go, so the hub learns who it is, and reads
/// what follows and the end, while it moves the connection: the burst is
/// delivered whole and in order.
fn confirmation_burst_and_end_in_one_write_are_delivered(backend: Backend) {
    let hub = start_node(backend, 1, any_addr(), &[1, 2], &[], &[chan(MSG)], |c| {
        c.io.shards = 2;
    });
    let h = hub.handle();
    h.place(&key(2), 1).unwrap();
    let config = shoal::Config::local(None);
    let (mut s, mut session, held) =
        shoal_testkit::raw_client::dial_held(hub.addr, &key(1), signer(2), &config, WAIT)
            .expect("a held handshake");
    let mut bytes = held.concat();
    for i in 0..BURST {
        for f in message_frames(&mut session.sealer, MSG, u64::from(i) + 1, &i.to_be_bytes()) {
            bytes.extend_from_slice(&f);
        }
    }
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (_, rx) = &hub.channels[0];
    for i in 0..BURST {
        let (from, m) = rx.recv_timeout(WAIT).unwrap().expect("the burst arrives");
        assert_eq!((from, &m[..]), (key(2), &i.to_be_bytes()[..]));
    }
    assert_eq!(h.metrics().connections_moved.get(), 1);
    stop_all(vec![hub]);
}

/// Peers placed on a shard that failed go by load, accepted and dialed:
/// nothing waits for (or moves to) the dead shard, and both connections
/// carry messages.
fn placements_on_a_failed_shard_are_ignored(backend: Backend) {
    let seeds = [1, 2, 3];
    let channels = [chan(MSG)];
    let dialed = start_node(backend, 3, any_addr(), &seeds, &[], &channels, |_| {});
    let hub = start_node(backend, 1, any_addr(), &seeds, &[], &channels, |c| {
        c.io.shards = 2;
    });
    let h = hub.handle();
    let m = h.metrics();
    h.place(&key(2), 1).unwrap();
    h.place(&key(3), 1).unwrap();
    assert!(shoal::engine::test_hooks::fail_shard(h, 1));
    wait_until("the shard failure", || m.shards_alive.get() == 1);
    let accepted = spoke(backend, 2, &seeds, &hub, &channels);
    hub.oracle.add_address(key(3), dialed.addr);
    assert!(h.wait_peers(WAIT, |p| p.contains(&key(2)) && p.contains(&key(3))));
    assert_eq!(h.shard_of(&key(2)), Some(0));
    assert_eq!(h.shard_of(&key(3)), Some(0));
    assert_eq!(m.connections_moved.get(), 0);
    for (n, s) in [(&accepted, 2), (&dialed, 3)] {
        let (tx, _) = &hub.channels[0];
        tx.send_wait(&key(s), Bytes::from_static(b"still here"), Priority::High)
            .blocking()
            .result()
            .unwrap();
        let (_, rx) = &n.channels[0];
        let (from, msg) = rx.recv_timeout(WAIT).unwrap().expect("delivered");
        assert_eq!((from, &msg[..]), (key(1), &b"still here"[..]));
    }
    stop_all(vec![hub, accepted, dialed]);
}

/// A dial to a placed peer goes to its shard; nothing moves. `place`
/// refuses a shard that does not exist, and `unplace` forgets.
fn a_dial_to_a_placed_peer_goes_to_its_shard(backend: Backend) {
    let seeds = [1, 2];
    let channels = [chan(MSG)];
    let peer = start_node(backend, 2, any_addr(), &seeds, &[], &channels, |_| {});
    let hub = start_node(backend, 1, any_addr(), &seeds, &[], &channels, |c| {
        c.io.shards = 2;
    });
    let h = hub.handle();
    assert_eq!(h.place(&key(2), 2), Err(PlaceError::NoSuchShard(2)));
    h.place(&key(3), 0).unwrap();
    assert!(h.unplace(&key(3)));
    assert!(!h.unplace(&key(3)));
    h.place(&key(2), 1).unwrap();
    // The hub alone knows the address: it dials, the peer accepts.
    hub.oracle.add_address(key(2), peer.addr);
    assert!(h.wait_peers(WAIT, |p| p.contains(&key(2))));
    assert_eq!(h.shard_of(&key(2)), Some(1));
    assert_eq!(h.metrics().connections_moved.get(), 0);
    let (tx, _) = &hub.channels[0];
    tx.send_wait(&key(2), Bytes::from_static(b"hello"), Priority::High)
        .blocking()
        .result()
        .unwrap();
    let (_, rx) = &peer.channels[0];
    let (from, m) = rx.recv_timeout(WAIT).unwrap().expect("the message arrives");
    assert_eq!((from, &m[..]), (key(1), &b"hello"[..]));
    stop_all(vec![hub, peer]);
}

both_backends!(
    accepted_connections_move_to_their_peers_shard,
    a_peer_that_sends_and_leaves_at_once_is_delivered,
    confirmation_burst_and_end_in_one_write_are_delivered,
    placements_on_a_failed_shard_are_ignored,
    a_dial_to_a_placed_peer_goes_to_its_shard,
);
