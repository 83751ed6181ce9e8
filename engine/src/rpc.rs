//! Request / response, in-shard handlers, and pings.
//!
//! # Design
//! A request is an RPC_REQUEST record with a node-unique request id (the
//! correlation id; unique per connection because it is unique per node). The
//! requester registers the id in the pending table of the shard that owns the
//! connection *before* enqueueing, with a deadline and a oneshot for the
//! answer. That shard completes it when the RPC_RESPONSE arrives, fails it at
//! the deadline (its timer sweep: runtime-agnostic, no extra thread), and
//! fails every request of a connection the moment the connection closes (noise
//! left them hanging forever). Dropping the future cancels: the entry stays
//! until its response or deadline, then the late answer is dropped and
//! counted. A response whose id is not pending (late, duplicate, forged) is
//! dropped and counted; it is never delivered as a message.
//!
//! A handler registered with [`crate::Network::handle`] runs on the shard that
//! received the message (no thread hop). Its reply to a request becomes the
//! response; its reply to a plain message is sent back on the same channel. A
//! handler that errors or panics affects only that message: the requester gets
//! [`RpcStatus::HandlerFailed`], the shard carries on.
//!
//! # Bounds
//! At most `max_pending_requests` requests per node are outstanding; beyond
//! that `request` fails at once with [`RequestError::TooManyPending`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::PublicKey;
use shoal_wire::RpcStatus;
use tokio::sync::oneshot;

use crate::peers::ConnId;

/// A handler's verdict on one message.
pub type HandlerResult = Result<Option<Bytes>, String>;

/// Runs on the receiving shard: `(sender, payload) -> reply`.
pub type Handler = Arc<dyn Fn(&PublicKey, Bytes) -> HandlerResult + Send + Sync>;

/// Why a request failed.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, RequestError, RpcStatus};
/// let channels = [ChannelConfig::new(5), ChannelConfig::new(6)];
/// let [(_a, a_ch), (b, _)] = shoal_engine::__private::connected_pair_with(&channels, |net| {
///     net.serve(5, |_peer, req| match &req[..] {
///         b"fail" => Err("refused".into()),
///         _ => Ok(Some(Bytes::from(req.to_ascii_uppercase()))),
///     })
/// });
/// let (peer, t) = (b.public_key(), Duration::from_secs(10));
/// let served = &a_ch[0].0;
/// assert_eq!(served.request(&peer, Bytes::from_static(b"hi"), t).blocking()?, "HI");
/// assert_eq!(
///     served.request(&peer, Bytes::from_static(b"fail"), t).blocking(),
///     Err(RequestError::Remote(RpcStatus::HandlerFailed))
/// );
/// let unserved = &a_ch[1].0;
/// assert_eq!(
///     unserved.request(&peer, Bytes::from_static(b"hi"), t).blocking(),
///     Err(RequestError::Remote(RpcStatus::NoHandler))
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("peer not connected")]
    NotConnected,
    #[error("peer send queue full")]
    Full,
    #[error("request larger than the channel's max size")]
    TooLarge,
    #[error("too many requests pending")]
    TooManyPending,
    #[error("no response within the timeout")]
    Timeout,
    #[error("the peer disconnected before responding")]
    Disconnected,
    #[error("the peer answered with status {0:?}")]
    Remote(RpcStatus),
    #[error("network shut down")]
    Closed,
}

pub(crate) struct PendingRequest {
    pub conn: ConnId,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Bytes, RequestError>>,
}

/// Per-shard pending requests (app threads insert, the shard completes).
#[derive(Default)]
pub(crate) struct PendingTable {
    map: Mutex<HashMap<u64, PendingRequest>>,
}

/// Node-wide RPC state.
pub(crate) struct RpcState {
    next_id: AtomicU64,
    pending: AtomicUsize,
    max_pending: usize,
    tables: Vec<PendingTable>,
}

impl RpcState {
    pub fn new(shards: usize, max_pending: usize) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            pending: AtomicUsize::new(0),
            max_pending,
            tables: (0..shards).map(|_| PendingTable::default()).collect(),
        }
    }

    /// Registers a request on `conn`'s shard; returns its id and receiver.
    pub fn register(
        &self,
        conn: ConnId,
        timeout: Duration,
    ) -> Result<(u64, oneshot::Receiver<Result<Bytes, RequestError>>), RequestError> {
        let table = self
            .tables
            .get(conn.shard)
            .ok_or(RequestError::NotConnected)?;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(RequestError::TooManyPending);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let entry = PendingRequest {
            conn,
            deadline: Instant::now() + timeout,
            reply: tx,
        };
        lock(&table.map).insert(id, entry);
        Ok((id, rx))
    }

    /// Removes a request that could not be sent.
    pub fn forget(&self, shard: usize, id: u64) {
        if let Some(t) = self.tables.get(shard) {
            if lock(&t.map).remove(&id).is_some() {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Completes request `id` arriving on `conn`. Returns false when nothing
    /// was pending (late, duplicate or forged response) or the requester
    /// already gave up (dropped future).
    pub fn complete(&self, conn: ConnId, id: u64, result: Result<Bytes, RequestError>) -> bool {
        let Some(t) = self.tables.get(conn.shard) else {
            return false;
        };
        let entry = {
            let mut map = lock(&t.map);
            match map.get(&id) {
                // A response must come from the connection the request left on.
                Some(e) if e.conn == conn => map.remove(&id),
                _ => None,
            }
        };
        match entry {
            Some(e) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                e.reply.send(result).is_ok()
            }
            None => false,
        }
    }

    /// Fails (and answers) every request of shard `shard` whose deadline
    /// passed and, if given, every request on the closed connection.
    pub fn expire(&self, shard: usize, now: Instant, closed: Option<ConnId>) -> usize {
        let Some(t) = self.tables.get(shard) else {
            return 0;
        };
        let drained: Vec<(PendingRequest, bool)> = {
            let mut map = lock(&t.map);
            if map.is_empty() {
                return 0;
            }
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, e)| Some(e.conn) == closed || now >= e.deadline)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| map.remove(&id))
                .map(|e| {
                    let gone = Some(e.conn) == closed;
                    (e, gone)
                })
                .collect()
        };
        let n = drained.len();
        self.pending.fetch_sub(n, Ordering::AcqRel);
        for (e, gone) in drained {
            let err = if gone {
                RequestError::Disconnected
            } else {
                RequestError::Timeout
            };
            let _ = e.reply.send(Err(err));
        }
        n
    }

    /// Outstanding requests (node-wide).
    #[allow(dead_code)] // used by tests and metrics export
    pub fn outstanding(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `handler` catching panics: a panic is reported like an error and
/// affects only this message.
pub(crate) fn run_handler(handler: &Handler, peer: &PublicKey, payload: Bytes) -> HandlerResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(peer, payload))) {
        Ok(r) => r,
        Err(_) => Err("handler panicked".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(key: usize) -> ConnId {
        ConnId {
            shard: 0,
            key,
            generation: key as u64,
        }
    }

    #[test]
    fn a_response_completes_once_and_duplicates_are_refused() {
        let rpc = RpcState::new(1, 10);
        let (id, mut rx) = rpc.register(conn(1), Duration::from_secs(5)).unwrap();
        assert!(rpc.complete(conn(1), id, Ok(Bytes::from_static(b"a"))));
        assert_eq!(rx.try_recv().unwrap(), Ok(Bytes::from_static(b"a")));
        assert!(
            !rpc.complete(conn(1), id, Ok(Bytes::from_static(b"dup"))),
            "duplicate refused"
        );
        assert_eq!(rpc.outstanding(), 0);
    }

    #[test]
    fn a_response_from_another_connection_is_refused() {
        let rpc = RpcState::new(1, 10);
        let (id, _rx) = rpc.register(conn(1), Duration::from_secs(5)).unwrap();
        assert!(!rpc.complete(conn(2), id, Ok(Bytes::new())));
        assert_eq!(rpc.outstanding(), 1);
    }

    #[test]
    fn a_late_response_after_cancellation_is_dropped() {
        let rpc = RpcState::new(1, 10);
        let (id, rx) = rpc.register(conn(1), Duration::from_secs(5)).unwrap();
        drop(rx); // the caller dropped its future
        assert!(
            !rpc.complete(conn(1), id, Ok(Bytes::new())),
            "counted as unmatched"
        );
        assert_eq!(rpc.outstanding(), 0);
    }

    #[test]
    fn deadlines_and_disconnects_fail_requests() {
        let rpc = RpcState::new(1, 10);
        let t0 = Instant::now();
        let (_a, mut ra) = rpc.register(conn(1), Duration::from_millis(10)).unwrap();
        let (_b, mut rb) = rpc.register(conn(2), Duration::from_secs(60)).unwrap();
        let (_c, mut rc) = rpc.register(conn(3), Duration::from_secs(60)).unwrap();
        assert_eq!(rpc.expire(0, t0 + Duration::from_secs(1), None), 1);
        assert_eq!(ra.try_recv().unwrap(), Err(RequestError::Timeout));
        assert_eq!(rpc.expire(0, t0 + Duration::from_secs(1), Some(conn(2))), 1);
        assert_eq!(rb.try_recv().unwrap(), Err(RequestError::Disconnected));
        assert!(rc.try_recv().is_err(), "unrelated request still pending");
        assert_eq!(rpc.outstanding(), 1);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let rpc = RpcState::new(1, 2);
        let _a = rpc.register(conn(1), Duration::from_secs(5)).unwrap();
        let _b = rpc.register(conn(1), Duration::from_secs(5)).unwrap();
        assert!(matches!(
            rpc.register(conn(1), Duration::from_secs(5)),
            Err(RequestError::TooManyPending)
        ));
    }

    #[test]
    fn a_panicking_handler_is_contained() {
        let h: Handler = Arc::new(|_, p| {
            if &p[..] == b"boom" {
                panic!("handler bug");
            }
            Ok(Some(p))
        });
        let pk = PublicKey::from_bytes_unchecked(vec![1u8; 32]);
        assert!(run_handler(&h, &pk, Bytes::from_static(b"boom")).is_err());
        assert_eq!(
            run_handler(&h, &pk, Bytes::from_static(b"ok")),
            Ok(Some(Bytes::from_static(b"ok")))
        );
    }
}
