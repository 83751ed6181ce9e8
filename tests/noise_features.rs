//! Everything noise offers, over real loopback sockets: RPC with timeouts and
//! prompt failure on disconnect, in-shard handlers (panics contained), ping,
//! and the outbound connection limit noise ignored.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use shoal::{
    Backend, ChannelConfig, DisconnectReason, Event, Network, Priority, RequestError, RpcStatus,
};

/// Two nodes where node 2 answers requests on channel 5 with a handler.
fn rpc_pair(backend: Backend, handler: Handler) -> (Node, Node) {
    let a = start_node(
        backend,
        1,
        any_addr(),
        &[1, 2],
        &[],
        &[chan(5), chan(6)],
        |_| {},
    );
    // Node 2 needs a handler registered before start: build it by hand.
    let cfg = local_config(backend, Some(any_addr())).with_identity(signer(2));
    let (mut net, oracle) = Network::new(cfg).unwrap();
    let c5 = net.register(chan_of(5)).unwrap();
    let c6 = net.register(chan_of(6)).unwrap();
    net.serve(5, move |p, m| handler(p, m)).unwrap();
    oracle.register(0, vec![key(1), key(2)]);
    oracle.add_address(key(1), a.addr);
    let handle = net.start().unwrap();
    a.oracle.add_address(key(2), handle.local_addr().unwrap());
    let b = Node {
        seed: 2,
        addr: handle.local_addr().unwrap(),
        handle: Some(handle),
        oracle,
        channels: vec![c5, c6],
    };
    assert!(a.handle().wait_peers(WAIT, |p| p.len() == 1));
    assert!(b.handle().wait_peers(WAIT, |p| p.len() == 1));
    (a, b)
}

fn chan_of(id: u32) -> ChannelConfig {
    ChannelConfig::new(id).max_size(1 << 20).capacity(64)
}

fn echo_upper() -> Handler {
    Arc::new(|_, p: Bytes| {
        if &p[..] == b"boom" {
            panic!("handler bug on purpose");
        }
        if &p[..] == b"err" {
            return Err("refused".into());
        }
        Ok(Some(Bytes::from(p.to_ascii_uppercase())))
    })
}

fn request_response_and_handler_failures(backend: Backend) {
    let (a, b) = rpc_pair(backend, echo_upper());
    let tx = &a.channels[0].0;
    let t = Duration::from_secs(10);
    assert_eq!(
        tx.request(&b.key(), Bytes::from_static(b"hello"), t)
            .blocking(),
        Ok(Bytes::from_static(b"HELLO"))
    );
    // A panic affects only that request; the shard keeps serving.
    assert_eq!(
        tx.request(&b.key(), Bytes::from_static(b"boom"), t)
            .blocking(),
        Err(RequestError::Remote(RpcStatus::HandlerFailed))
    );
    assert_eq!(
        tx.request(&b.key(), Bytes::from_static(b"err"), t)
            .blocking(),
        Err(RequestError::Remote(RpcStatus::HandlerFailed))
    );
    assert_eq!(
        tx.request(&b.key(), Bytes::from_static(b"again"), t)
            .blocking(),
        Ok(Bytes::from_static(b"AGAIN"))
    );
    // A channel without a handler answers NoHandler (never a hang).
    assert_eq!(
        a.channels[1]
            .0
            .request(&b.key(), Bytes::from_static(b"x"), t)
            .blocking(),
        Err(RequestError::Remote(RpcStatus::NoHandler))
    );
    // Many requests in flight from several threads all complete.
    std::thread::scope(|s| {
        for t_id in 0..4 {
            let tx = tx.clone();
            let peer = b.key();
            s.spawn(move || {
                for i in 0..200 {
                    let msg = format!("t{t_id} r{i}");
                    let r = tx
                        .request(&peer, Bytes::from(msg.clone()), t)
                        .blocking()
                        .unwrap();
                    assert_eq!(r, Bytes::from(msg.to_ascii_uppercase()));
                }
            });
        }
    });
    // A plain message to a handled channel: the handler's reply comes back.
    tx.send(&b.key(), Bytes::from_static(b"plain"), Priority::Low)
        .result()
        .unwrap();
    assert_eq!(
        a.channels[0].1.recv_blocking().unwrap().1,
        Bytes::from_static(b"PLAIN")
    );
}

fn request_fails_promptly_when_peer_disconnects(backend: Backend) {
    // The handler holds the request until the test releases it.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let arrived_tx = std::sync::Mutex::new(arrived_tx);
    let holding: Handler = Arc::new(move |_, _| {
        let _ = arrived_tx.lock().unwrap().send(());
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        Ok(None)
    });
    let (a, b) = rpc_pair(backend, holding);
    let peer = b.key();
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let tx = a.channels[0].0.clone();
        let h = s.spawn(move || {
            tx.request(&peer, Bytes::from_static(b"q"), Duration::from_secs(60))
                .blocking()
        });
        // Once the responder holds the request, drop the connection from the
        // requester's side.
        arrived_rx
            .recv_timeout(WAIT)
            .expect("the request reached the responder's handler");
        a.handle().disconnect(&b.key());
        let r = h.join().unwrap();
        let _ = release_tx.send(());
        r
    });
    assert_eq!(result, Err(RequestError::Disconnected));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failed before its 60 s timeout"
    );
}

fn request_times_out(backend: Backend) {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let holding: Handler = Arc::new(move |_, _| {
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        Ok(Some(Bytes::from_static(b"too late")))
    });
    let (a, b) = rpc_pair(backend, holding);
    let r = a.channels[0]
        .0
        .request(
            &b.key(),
            Bytes::from_static(b"q"),
            Duration::from_millis(200),
        )
        .blocking();
    assert_eq!(r, Err(RequestError::Timeout));
    let _ = release_tx.send(());
    // The late response arrives and is dropped and counted, not delivered.
    let deadline = Instant::now() + WAIT;
    while a.handle().metrics().refused_count("rpc_unmatched_response") == 0 {
        assert!(Instant::now() < deadline, "late response never counted");
        std::thread::yield_now();
    }
    assert!(
        a.channels[0].1.try_recv().is_none(),
        "a late response is never a message"
    );
}

fn ping_measures_a_round_trip(backend: Backend) {
    let nodes = mesh(backend, 2, &[chan(1)], |_| {});
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rtt = rt
        .block_on(nodes[0].handle().ping(&nodes[1].key()))
        .unwrap();
    assert!(rtt > Duration::ZERO);
}

fn outbound_limit_is_enforced(backend: Backend) {
    // Nodes 2..=5 listen; node 1 knows all four but may dial only two. They
    // don't know node 1's address, so every connection is node 1's outbound.
    let all = [1, 2, 3, 4, 5];
    let others: Vec<Node> = (2..=5u64)
        .map(|s| start_node(backend, s, any_addr(), &all, &[], &[chan(1)], |_| {}))
        .collect();
    let dial: Vec<(u64, std::net::SocketAddr)> = others.iter().map(|n| (n.seed, n.addr)).collect();
    let n1 = start_node(backend, 1, any_addr(), &all, &dial, &[chan(1)], |c| {
        c.limits.max_outbound = 2
    });
    assert!(n1.handle().wait_peers(WAIT, |p| p.len() == 2));
    let deadline = Instant::now() + WAIT;
    while n1.handle().metrics().refused_count("max_outbound") == 0 {
        assert!(Instant::now() < deadline, "the dialer never hit the limit");
        std::thread::yield_now();
    }
    assert_eq!(n1.handle().peers().len(), 2, "never more than max_outbound");
    drop(others);
}

/// Connected / disconnected events, and closing and reopening the listener.
fn lifecycle_events_and_listening(backend: Backend) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let a = start_node(backend, 1, any_addr(), &[1, 2], &[], &[chan(1)], |_| {});
    let mut events = a.handle().events();
    let next = |events: &mut shoal::Events| {
        let e = rt
            .block_on(async { tokio::time::timeout(WAIT, events.recv()).await })
            .expect("an event within the wait")
            .expect("the network runs");
        assert!(!matches!(e, Event::Lagged(_)), "no event missed");
        e
    };
    let b = start_node(
        backend,
        2,
        any_addr(),
        &[1, 2],
        &[(1, a.addr)],
        &[chan(1)],
        |_| {},
    );
    assert_eq!(next(&mut events), Event::Connected(key(2)));

    // Disconnect: an event with the cause, then the dialer reconnects.
    a.handle().disconnect(&key(2));
    match next(&mut events) {
        Event::Disconnected { peer, reason } => {
            assert_eq!(peer, key(2));
            assert_eq!(reason, DisconnectReason::Local);
        }
        other => panic!("expected a disconnection, got {other:?}"),
    }
    assert_eq!(next(&mut events), Event::Connected(key(2)));

    // Stop listening: the kernel refuses new connections; existing ones stay.
    a.handle().stop_listening().unwrap();
    let refused = std::net::TcpStream::connect(a.addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(a.handle().is_connected(&key(2)));
    // Listen again, on the same address.
    assert_eq!(a.handle().listen().unwrap(), a.addr);
    std::net::TcpStream::connect(a.addr).expect("listening again");
    drop(b);
}

both_backends!(
    request_response_and_handler_failures,
    request_fails_promptly_when_peer_disconnects,
    request_times_out,
    ping_measures_a_round_trip,
    outbound_limit_is_enforced,
    lifecycle_events_and_listening,
);
