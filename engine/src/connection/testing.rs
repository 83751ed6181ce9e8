//! A simulated pair driven step by step, for the connection's tests: no
//! sockets, no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::{Ed25519Signer, HandshakeConfig, PublicKey, Signer};
use shoal_wire::ChunkLimits;

use super::{Authorizer, ChannelLimit, ChannelLookup, Connection, ConnectionConfig, Event};
use crate::clock::Clock;

/// Channels 0..10, each up to 1 MiB.
pub(super) struct Chans;

impl ChannelLookup for Chans {
    fn limit(&self, channel: u32) -> Option<ChannelLimit> {
        (channel < 10).then_some(ChannelLimit { max_size: 1 << 20 })
    }
}

pub(super) fn cfg(seed: u64, t0: Instant) -> Arc<ConnectionConfig> {
    cfg_framed(seed, t0, 4096)
}

pub(super) fn cfg_framed(seed: u64, t0: Instant, max_frame_body: usize) -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig {
        identity: Arc::new(Ed25519Signer::insecure_from_seed(seed)),
        handshake: Arc::new(HandshakeConfig {
            namespace: b"test".to_vec(),
            max_age: Duration::from_secs(10),
            synchrony_bound: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            cipher: shoal_crypto::CipherPolicy::default(),
        }),
        max_frame_body,
        max_write_batch: 4 * max_frame_body,
        idle_timeout: Duration::from_secs(10),
        ping_interval: Duration::from_secs(3),
        chunk_limits: ChunkLimits {
            max_in_progress_bytes: 4 << 20,
            max_in_progress_messages: 4,
            min_chunk_size: 1024,
        },
        max_queued: 1000,
        max_queued_bytes: 64 << 20,
        clock: Clock::new(t0, 1_700_000_000_000),
        streams: Some(shoal_wire::stream::StreamConfig::default()),
    })
}

pub(super) fn key(seed: u64) -> PublicKey {
    Ed25519Signer::insecure_from_seed(seed).public_key().clone()
}

pub(super) fn allow_all() -> Authorizer {
    Arc::new(|_| true)
}

/// Moves every byte each side has to the other; returns the events.
pub(super) fn pump(
    a: &mut Connection,
    b: &mut Connection,
    now: Instant,
) -> (Vec<Event>, Vec<Event>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let mut moved = false;
        if let Some(bytes) = a.poll_transmit() {
            b.handle_input(&bytes, now);
            moved = true;
        }
        if let Some(bytes) = b.poll_transmit() {
            a.handle_input(&bytes, now);
            moved = true;
        }
        while let Some(e) = a.poll_event(now) {
            ea.push(e);
        }
        while let Some(e) = b.poll_event(now) {
            eb.push(e);
        }
        if !moved {
            break;
        }
    }
    (ea, eb)
}

/// An established pair with 4 KiB frames.
pub(super) fn pair(t0: Instant) -> (Connection, Connection) {
    pair_framed(t0, 4096)
}

pub(super) fn pair_framed(t0: Instant, max_frame_body: usize) -> (Connection, Connection) {
    let (ca, cb) = (
        cfg_framed(1, t0, max_frame_body),
        cfg_framed(2, t0, max_frame_body),
    );
    let mut a = Connection::dialer(ca, Arc::new(Chans), allow_all(), key(2), t0);
    let mut b = Connection::dialee(cb, Arc::new(Chans), allow_all(), t0);
    let (ea, eb) = pump(&mut a, &mut b, t0);
    assert!(
        matches!(&ea[..], [Event::Established { peer }] if *peer == key(2)),
        "{ea:?}"
    );
    assert!(
        matches!(&eb[..], [Event::Established { peer }] if *peer == key(1)),
        "{eb:?}"
    );
    (a, b)
}

/// The messages among `evs`: channel and payload.
pub(super) fn messages(evs: Vec<Event>) -> Vec<(u32, Bytes)> {
    evs.into_iter()
        .filter_map(|e| match e {
            Event::Message {
                channel, payload, ..
            } => Some((channel, payload)),
            _ => None,
        })
        .collect()
}
