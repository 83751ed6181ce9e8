//! What only shows with several shards or a failing backend: connections
//! placed by load, a failed shard taken out of placement with its peers
//! redialed onto the others, and `Backend::Auto` falling back to epoll when
//! the io_uring probe fails (forced through the `test-hooks` feature).
//!
//! Every suite also runs on two shards per node through the matrix in
//! `common::both_backends!` (`cargo test two_shards`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::engine::test_hooks;
use shoal::metrics::BackendLabel;
use shoal::{Backend, ChannelConfig, Error, Network, NetworkHandle, Priority, Sender};

const MSG: u32 = 1;
const RPC: u32 = 5;

fn upper() -> Handler {
    Arc::new(|_, p: Bytes| Ok(Some(Bytes::from(p.to_ascii_uppercase()))))
}

/// Node `seed` listening on loopback with a message channel and an RPC
/// channel that upper-cases, authorizing `peers`, knowing `dial`'s
/// addresses.
fn node(
    backend: Backend,
    seed: u64,
    shards: usize,
    listen: bool,
    peers: &[u64],
    dial: &[(u64, std::net::SocketAddr)],
) -> (NetworkHandle, Sender, shoal::Receiver, Sender) {
    let mut cfg = local_config(backend, listen.then(any_addr)).with_identity(signer(seed));
    cfg.io.shards = shards;
    let (mut net, oracle) = Network::new(cfg).expect("config");
    let (tx, rx) = net
        .register(ChannelConfig::new(MSG).max_size(1 << 21).capacity(256))
        .unwrap();
    let (rpc, _) = net
        .register(ChannelConfig::new(RPC).max_size(1 << 16).capacity(64))
        .unwrap();
    let upper = upper();
    net.serve(RPC, move |p, m| upper(p, m)).unwrap();
    oracle.register(0, peers.iter().map(|s| key(*s)).collect());
    for (s, a) in dial {
        oracle.add_address(key(*s), *a);
    }
    // The oracle lives as long as the network: dropping it changes nothing.
    let handle = net.start().expect("start");
    (handle, tx, rx, rpc)
}

/// A message each way and a request each way between `hub` and every spoke.
fn exchange(
    hub: &(NetworkHandle, Sender, shoal::Receiver, Sender),
    spokes: &[(NetworkHandle, Sender, shoal::Receiver, Sender)],
    round: u32,
) {
    let hub_key = hub.0.public_key();
    for (i, s) in spokes.iter().enumerate() {
        let payload = Bytes::from(format!("round {round} to spoke {i}"));
        hub.1
            .send(&s.0.public_key(), payload.clone(), Priority::Low)
            .result()
            .unwrap();
        assert_eq!(s.2.recv_blocking().unwrap(), (hub_key.clone(), payload));
        let payload = Bytes::from(format!("round {round} from spoke {i}"));
        s.1.send(&hub_key, payload.clone(), Priority::Low)
            .result()
            .unwrap();
        assert_eq!(hub.2.recv_blocking().unwrap(), (s.0.public_key(), payload));
        let t = Duration::from_secs(10);
        assert_eq!(
            hub.3
                .request(&s.0.public_key(), Bytes::from_static(b"ab"), t)
                .blocking(),
            Ok(Bytes::from_static(b"AB"))
        );
        assert_eq!(
            s.3.request(&hub_key, Bytes::from_static(b"cd"), t)
                .blocking(),
            Ok(Bytes::from_static(b"CD"))
        );
    }
}

/// A dial-only hub with two shards and four spokes it dials: its four
/// connections are placed two per shard; when shard 0 fails, its two
/// connections are closed and counted, the node reports one shard alive, and
/// the two peers are redialed onto shard 1; traffic and RPC keep working.
fn placement_balances_and_a_failed_shard_is_replaced(backend: Backend) {
    let all = [1, 2, 3, 4, 5];
    let spokes: Vec<_> = (2..=5)
        .map(|s| node(backend, s, 1, true, &all, &[]))
        .collect();
    let dial: Vec<_> = spokes
        .iter()
        .zip(2..)
        .map(|(s, seed)| (seed, s.0.local_addr().unwrap()))
        .collect();
    let hub = node(backend, 1, 2, false, &all, &dial);
    assert_eq!(hub.0.backend(), backend);
    assert!(
        hub.0.wait_peers(WAIT, |p| p.len() == 4),
        "the hub dials every spoke"
    );
    let m = hub.0.metrics();
    assert_eq!(
        (m.shard_connections(0), m.shard_connections(1)),
        (2, 2),
        "four connections, two per shard"
    );
    assert_eq!(m.shards_alive.get(), 2);
    exchange(&hub, &spokes, 0);

    assert!(test_hooks::fail_shard(&hub.0, 0));
    wait_until("the shard failure", || m.shard_failures.get() == 1);
    assert_eq!(m.shards_alive.get(), 1, "the node reports itself degraded");
    assert_eq!(
        m.close_count("shard_failed"),
        2,
        "both of its connections are closed and counted"
    );
    assert!(
        hub.0.wait_peers(WAIT, |p| p.len() == 4),
        "the two peers of the dead shard are redialed"
    );
    assert_eq!(
        (m.shard_connections(0), m.shard_connections(1)),
        (0, 4),
        "the dead shard gets nothing"
    );
    exchange(&hub, &spokes, 1);

    // The last live shard failing leaves a node that refuses cleanly.
    assert!(test_hooks::fail_shard(&hub.0, 1));
    wait_until("the second shard failure", || m.shard_failures.get() == 2);
    assert_eq!(m.shards_alive.get(), 0);
    assert!(hub.0.wait_peers(WAIT, |p| p.is_empty()));
    assert_eq!(m.connections.get(), 0, "every connection released");
    for (h, ..) in spokes {
        h.shutdown(Duration::from_millis(200));
    }
    hub.0.shutdown(Duration::from_millis(200));
}

mod epoll {
    #[test]
    fn two_shards_placement_balances_and_a_failed_shard_is_replaced() {
        super::placement_balances_and_a_failed_shard_is_replaced(shoal::Backend::Epoll);
    }
}

mod io_uring {
    #[test]
    fn two_shards_placement_balances_and_a_failed_shard_is_replaced() {
        if super::backend_available(shoal::Backend::IoUring) {
            super::placement_balances_and_a_failed_shard_is_replaced(shoal::Backend::IoUring);
        }
    }
}

fn backend_gauge(h: &NetworkHandle, backend: &str, fallback: &str) -> i64 {
    h.metrics()
        .backend
        .get_or_create(&BackendLabel {
            backend: backend.into(),
            fallback: fallback.into(),
        })
        .get()
}

/// With the io_uring probe forced to fail, `Auto` nodes run on epoll, say
/// why in `shoal_backend{fallback="forced"}`, and carry messages (one frame
/// and many), RPC and both shard layouts; `IoUring` asked explicitly
/// refuses to start. Without the hook `Auto` picks io_uring where the
/// kernel has it.
#[test]
fn forced_fallback_auto_runs_on_epoll() {
    test_hooks::force_io_uring_probe_failure(true);
    let all = [1, 2, 3];
    let a = node(Backend::Auto, 1, 1, true, &all, &[]);
    let b = node(
        Backend::Auto,
        2,
        2,
        true,
        &all,
        &[(1, a.0.local_addr().unwrap())],
    );
    let dial = [
        (1, a.0.local_addr().unwrap()),
        (2, b.0.local_addr().unwrap()),
    ];
    let c = node(Backend::Auto, 3, 2, false, &all, &dial);
    for n in [&a, &b, &c] {
        assert_eq!(n.0.backend(), Backend::Epoll, "Auto fell back");
        assert_eq!(backend_gauge(&n.0, "epoll", "forced"), 1);
        assert_eq!(backend_gauge(&n.0, "io_uring", "none"), 0);
    }
    assert!(a.0.wait_peers(WAIT, |p| p.len() == 2));
    assert!(b.0.wait_peers(WAIT, |p| p.len() == 2));
    assert!(c.0.wait_peers(WAIT, |p| p.len() == 2));
    exchange(&c, &[a, b], 0);

    // A message of many frames (the local preset's frames are 64 KiB).
    let a = node(Backend::Auto, 4, 1, true, &[4, 5], &[]);
    let b = node(
        Backend::Auto,
        5,
        2,
        true,
        &[4, 5],
        &[(4, a.0.local_addr().unwrap())],
    );
    assert!(a.0.wait_peers(WAIT, |p| p.len() == 1));
    let big = Bytes::from((0..1_500_000u32).map(|i| i as u8).collect::<Vec<_>>());
    a.1.send(&b.0.public_key(), big.clone(), Priority::Low)
        .result()
        .unwrap();
    assert_eq!(b.2.recv_blocking().unwrap().1, big);
    b.1.send(&a.0.public_key(), big.clone(), Priority::High)
        .result()
        .unwrap();
    assert_eq!(a.2.recv_blocking().unwrap().1, big);

    let mut cfg = local_config(Backend::IoUring, None);
    cfg.io.shards = 1;
    let (net, _) = Network::new(cfg).unwrap();
    assert!(
        matches!(net.start(), Err(Error::IoUringUnavailable(_))),
        "io_uring asked explicitly: refused, not silently replaced"
    );

    test_hooks::force_io_uring_probe_failure(false);
    if backend_available(Backend::IoUring) {
        let n = node(Backend::Auto, 6, 1, false, &[6], &[]);
        assert_eq!(n.0.backend(), Backend::IoUring);
        assert_eq!(backend_gauge(&n.0, "io_uring", "none"), 1);
    }
}
