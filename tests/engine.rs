//! Engine integration tests over real loopback sockets, for both backends.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::engine::{Backend, Recipients};

fn exchange_on_several_channels(backend: Backend) {
    if !backend_available(backend) {
        return;
    }
    let nodes = mesh(backend, 2, &[chan(1), chan(2), chan(3)], |_| {});
    let (a, b) = (&nodes[0], &nodes[1]);
    const N: usize = 500;
    for ch in 0..3 {
        for i in 0..N {
            let msg = Bytes::from(format!("a->b ch{ch} #{i}"));
            let sent = a.channels[ch].0.send(Recipients::One(b.key()), msg, false).unwrap();
            assert_eq!(sent, vec![b.key()]);
            let msg = Bytes::from(format!("b->a ch{ch} #{i}"));
            b.channels[ch].0.send_to(&a.key(), msg, false).unwrap();
        }
    }
    for ch in 0..3 {
        for i in 0..N {
            let (from, m) = b.channels[ch].1.recv_blocking().unwrap();
            assert_eq!(from, a.key());
            assert_eq!(m, Bytes::from(format!("a->b ch{ch} #{i}")), "in order per channel");
            let (from, m) = a.channels[ch].1.recv_blocking().unwrap();
            assert_eq!(from, b.key());
            assert_eq!(m, Bytes::from(format!("b->a ch{ch} #{i}")));
        }
    }
}

#[test]
fn epoll_exchange_on_several_channels() {
    exchange_on_several_channels(Backend::Epoll);
}

#[test]
fn io_uring_exchange_on_several_channels() {
    exchange_on_several_channels(Backend::IoUring);
}
