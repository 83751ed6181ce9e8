//! The table of established connections, shared by every thread.
//!
//! # Design
//! Senders look a peer up on every send, so reads are lock-free: an
//! `ArcSwap` snapshot of `peer -> handle`. Writers (a connection established
//! or closed: rare) take a mutex, copy, and swap. A handle carries the shard
//! and slab slot of the connection plus the application-visible queue depth
//! counter that makes `send` report a full queue synchronously.
//!
//! At most one connection per peer. When a second one is established the
//! rule is deterministic so both ends agree without talking: if both were
//! dialed by the same side, the newer wins (a redial after a restart);
//! otherwise (both sides dialed at once) the connection dialed by the smaller
//! public key wins.
//!
//! Every change an application can see is also published as an [`Event`]
//! on a bounded broadcast channel (see [`crate::events`]), closed when the
//! network shuts down. A tie-break replacement is not an event: the peer
//! stays connected throughout.
//!
//! # Security
//! Only connections whose handshake completed, both key confirmations
//! included, are inserted, so a replayed Hello can never displace a live
//! connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shoal_crypto::PublicKey;
use tokio::sync::broadcast;

use crate::events::{DisconnectReason, Event, EVENT_CAPACITY};

/// Where a connection lives: shard, slab key, and a generation that makes a
/// reused slab slot distinguishable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: usize,
    pub key: usize,
    pub generation: u64,
}

/// An established connection as other threads see it.
#[derive(Debug)]
pub struct PeerHandle {
    pub peer: PublicKey,
    pub id: ConnId,
    /// Messages queued by the application and not yet encoded.
    pub depth: Arc<crate::queue_depth::QueueDepth>,
    /// The key of the side that dialed this connection.
    pub dialer: PublicKey,
    /// The peer's listening address when we dialed it (or learned it).
    pub addr: Option<std::net::SocketAddr>,
}

/// The outcome of [`PeerTable::insert`].
#[derive(Debug)]
pub enum Admit {
    /// No other connection to this peer.
    Inserted,
    /// The new connection replaced this older one, which must be closed.
    Replaced(Arc<PeerHandle>),
    /// The existing connection wins; close the new one.
    Rejected,
}

/// Looked up on every send: foldhash (randomly seeded per process) instead of
/// SipHash, which cost ~400 instructions per 64 B message. The keys are the
/// connected peers, bounded by the connection limits.
pub type Map = HashMap<PublicKey, Arc<PeerHandle>, foldhash::fast::RandomState>;

/// See the module docs.
pub struct PeerTable {
    snapshot: ArcSwap<Map>,
    /// Guards writers; its value counts changes, and `changed` is notified
    /// on each so that waiters need no polling.
    write: Mutex<u64>,
    changed: Condvar,
    /// Peers with a dial in progress (connecting or handshaking).
    dialing: Mutex<HashSet<PublicKey>>,
    /// `None` once the network shut down (subscribers then see the end).
    events: Mutex<Option<broadcast::Sender<Event>>>,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self {
            snapshot: ArcSwap::default(),
            write: Mutex::new(0),
            changed: Condvar::new(),
            dialing: Mutex::default(),
            events: Mutex::new(Some(broadcast::channel(EVENT_CAPACITY).0)),
        }
    }
}

impl PeerTable {
    /// A new subscription to [`Event`]s (from now on); an ended one after
    /// [`PeerTable::close_events`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &*lock(&self.events) {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// No more events: subscribers take what they hold, then see the end.
    pub fn close_events(&self) {
        lock(&self.events).take();
    }

    /// Publishes `e` (no subscriber is not an error).
    fn publish(&self, e: Event) {
        if let Some(tx) = &*lock(&self.events) {
            let _ = tx.send(e);
        }
    }

    /// The handle of the peer's connection, if established.
    pub fn get(&self, peer: &PublicKey) -> Option<Arc<PeerHandle>> {
        self.snapshot.load().get(peer).cloned()
    }

    /// Runs `f` over the current snapshot without cloning handles.
    pub fn with<R>(&self, f: impl FnOnce(&Map) -> R) -> R {
        f(&self.snapshot.load())
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PublicKey> {
        self.snapshot.load().keys().cloned().collect()
    }

    pub fn contains(&self, peer: &PublicKey) -> bool {
        self.snapshot.load().contains_key(peer)
    }

    /// Inserts an established connection, applying the tie-break rule.
    pub fn insert(&self, handle: Arc<PeerHandle>) -> Admit {
        let mut g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot.load_full();
        let admit = match cur.get(&handle.peer) {
            None => Admit::Inserted,
            Some(old) => {
                let new_wins = if old.dialer == handle.dialer {
                    true
                } else {
                    handle.dialer < old.dialer
                };
                if new_wins {
                    Admit::Replaced(old.clone())
                } else {
                    return Admit::Rejected;
                }
            }
        };
        let mut next: Map = (*cur).clone();
        let peer = handle.peer.clone();
        next.insert(handle.peer.clone(), handle);
        self.snapshot.store(Arc::new(next));
        *g += 1;
        self.changed.notify_all();
        if matches!(admit, Admit::Inserted) {
            self.publish(Event::Connected(peer));
        }
        admit
    }

    /// Removes the peer's entry if it still points at `id`; `reason` is
    /// the close cause's metric label, for the [`Event`].
    pub fn remove(&self, peer: &PublicKey, id: ConnId, reason: &'static str) -> bool {
        let mut g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot.load_full();
        match cur.get(peer) {
            Some(h) if h.id == id => {
                let mut next: Map = (*cur).clone();
                next.remove(peer);
                self.snapshot.store(Arc::new(next));
                *g += 1;
                self.changed.notify_all();
                self.publish(Event::Disconnected {
                    peer: peer.clone(),
                    reason: DisconnectReason::from_label(reason),
                });
                true
            }
            _ => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerTable {
    /// Blocks until `pred` holds for the connected peers or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[PublicKey]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let peers: Vec<PublicKey> = self.snapshot.load().keys().cloned().collect();
            if pred(&peers) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.changed.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Records that a dial to `peer` started (true) or ended (false).
    pub fn mark_dialing(&self, peer: &PublicKey, on: bool) {
        let mut d = self.dialing.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            d.insert(peer.clone());
        } else {
            d.remove(peer);
        }
    }

    /// Peers with a dial in progress.
    pub fn dialing_snapshot(&self) -> HashSet<PublicKey> {
        self.dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(b: u8) -> PublicKey {
        PublicKey::from_bytes_unchecked(vec![b; 32])
    }

    fn handle(peer: u8, dialer: u8, key: usize) -> Arc<PeerHandle> {
        Arc::new(PeerHandle {
            peer: pk(peer),
            id: ConnId {
                shard: 0,
                key,
                generation: key as u64,
            },
            depth: Arc::new(crate::queue_depth::QueueDepth::new(16, 1 << 20)),
            dialer: pk(dialer),
            addr: None,
        })
    }

    #[test]
    fn simultaneous_dial_keeps_the_smaller_dialer_on_both_ends() {
        // Node 1 and node 2 dial each other. On node 1 the table holds peer 2.
        let t1 = PeerTable::default();
        assert!(matches!(t1.insert(handle(2, 1, 1)), Admit::Inserted));
        assert!(matches!(t1.insert(handle(2, 2, 2)), Admit::Rejected));
        // On node 2 the other order: the connection dialed by 2 came first.
        let t2 = PeerTable::default();
        assert!(matches!(t2.insert(handle(1, 2, 2)), Admit::Inserted));
        assert!(matches!(t2.insert(handle(1, 1, 1)), Admit::Replaced(_)));
        assert_eq!(t1.get(&pk(2)).map(|h| h.dialer.clone()), Some(pk(1)));
        assert_eq!(t2.get(&pk(1)).map(|h| h.dialer.clone()), Some(pk(1)));
    }

    #[test]
    fn redial_by_the_same_side_replaces_and_stale_remove_is_ignored() {
        let t = PeerTable::default();
        let mut events = t.subscribe();
        let old = handle(2, 2, 1);
        t.insert(old.clone());
        assert!(matches!(t.insert(handle(2, 2, 7)), Admit::Replaced(_)));
        assert!(
            !t.remove(&pk(2), old.id, "replaced"),
            "old id must not remove the new entry"
        );
        assert_eq!(t.get(&pk(2)).map(|h| h.id.key), Some(7));
        // One Connected: the replacement is not an event, nor the stale
        // remove. Then the real close is.
        assert_eq!(events.try_recv(), Ok(Event::Connected(pk(2))));
        assert!(events.try_recv().is_err());
        let new_id = t.get(&pk(2)).unwrap().id;
        assert!(t.remove(&pk(2), new_id, "idle_timeout"));
        assert_eq!(
            events.try_recv(),
            Ok(Event::Disconnected {
                peer: pk(2),
                reason: DisconnectReason::IdleTimeout
            })
        );
    }

    #[test]
    fn a_slow_subscriber_learns_how_many_events_it_missed() {
        let t = PeerTable::default();
        let mut events = t.subscribe();
        for i in 0..(EVENT_CAPACITY as u64 + 10) {
            let h = handle(2, 2, i as usize);
            t.insert(h.clone());
            t.remove(&pk(2), h.id, "normal");
        }
        // 2 events per round; the oldest beyond the capacity are reported
        // as missed, never silently skipped.
        assert_eq!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(
                2 * (EVENT_CAPACITY as u64 + 10) - EVENT_CAPACITY as u64
            ))
        );
    }
}
