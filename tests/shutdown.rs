//! Shutdown leaves no shoal thread running and returns every receive buffer.
//! (Own test binary: it counts process-wide threads and buffer pools.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::{Backend, Priority};

#[test]
fn shutdown_joins_threads_and_frees_buffers_on_both_backends() {
    for backend in [Backend::Epoll, Backend::IoUring] {
        if !backend_available(backend) {
            continue;
        }
        let mut nodes = mesh(backend, 2, &[chan(1)], |c| c.io.shards = 2);
        assert!(shoal_threads() >= 6, "2 nodes x (2 shards + control)");
        // Leave traffic in flight when shutting down.
        for i in 0..1000u32 {
            let _ = nodes[0].channels[0]
                .0
                .send(
                    &nodes[1].key(),
                    Bytes::from(i.to_be_bytes().to_vec()),
                    Priority::Low,
                )
                .result();
        }
        for n in nodes.iter_mut() {
            n.handle
                .take()
                .unwrap()
                .shutdown(Duration::from_millis(500));
        }
        assert_eq!(shoal_threads(), 0, "{backend:?}: no shoal thread left");
        assert_eq!(
            shoal::engine::test_hooks::live_buffer_pools(),
            0,
            "{backend:?}: every pool freed"
        );
    }
}
