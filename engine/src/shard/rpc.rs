//! Requests, responses and in-shard handlers, on the connection's shard.
//!
//! # Design
//! A response completes the request registered for it in
//! [`crate::rpc::RpcState`] (by connection and request id); one nobody waits
//! for is counted and dropped. A request runs its channel's handler here, on
//! the shard that received it, and the answer goes back on the same
//! connection at high priority. A plain message on a channel with a handler
//! runs it too, and a reply, if any, is sent back on the channel. A handler
//! that fails or panics ([`crate::rpc::run_handler`]) affects only its
//! message. The request side (registering, timeouts) is [`crate::rpc`].
//!
//! A ping ([`super::Command::Ping`]) is answered the same way, by the connection:
//! its callers wait for the next pong, bounded per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::PublicKey;
use shoal_wire::{RecordKind, RpcStatus};

use super::slot::Live;
use super::ShardCore;
use crate::channel_spec::ChannelSpec;
use crate::connection::{Outgoing, Priority};
use crate::peers::ConnId;
use crate::rpc::RequestError;

/// `ping()` callers that may wait on one connection at once.
const MAX_PING_WAITERS: usize = 64;

impl ShardCore {
    /// A response to one of our requests on connection `key`.
    pub(super) fn on_response(&mut self, key: usize, request_id: u64, status: u32, payload: Bytes) {
        let Some(id) = self.conn_id(key) else { return };
        let result = match RpcStatus::from_u32(status) {
            RpcStatus::Ok => Ok(payload),
            other => Err(RequestError::Remote(other)),
        };
        if !self.shared.rpc.complete(id, request_id, result) {
            // Late (cancelled or timed out), duplicate, or never asked.
            self.shared.metrics.refuse("rpc_unmatched_response");
        }
    }

    /// A request from the peer of connection `key`: answered by its
    /// channel's handler (or `NoHandler`).
    pub(super) fn on_request(&mut self, key: usize, channel: u32, request_id: u64, payload: Bytes) {
        let Some(peer) = self.conns.get(key).and_then(|s| s.conn.peer().cloned()) else {
            return;
        };
        if self.local.claims_requests(channel) {
            self.request_to_task(key, peer, channel, request_id, payload);
            return;
        }
        let spec = self.channels.get(channel).cloned();
        let (status, reply) = self.answer(spec.as_ref(), &peer, channel, payload);
        if let Some(spec) = &spec {
            spec.metrics.messages_in.inc();
        }
        if let Some(id) = self.conn_id(key) {
            self.respond(id, channel, request_id, status, reply);
        }
    }

    /// A response (a handler's, or [`super::Command::Respond`]: a task's) on connection `id`, at high
    /// priority (nowhere if the connection is gone: its requester was
    /// failed with it).
    pub(super) fn respond(
        &mut self,
        id: ConnId,
        channel: u32,
        request_id: u64,
        status: RpcStatus,
        payload: Bytes,
    ) {
        let Some(slot) = self.conns.live_mut(id) else {
            return;
        };
        let msg = Outgoing {
            kind: RecordKind::RpcResponse,
            channel,
            request_id,
            status: status as u32,
            compressed: false,
            payload,
        };
        if slot.conn.send(msg, Priority::High, None).is_err() {
            self.shared.metrics.refuse("rpc_response_queue_full");
        }
        self.dirty.push(id.key);
    }

    /// Runs the channel's handler on a request: the response's status and
    /// payload.
    fn answer(
        &self,
        spec: Option<&Arc<ChannelSpec>>,
        peer: &PublicKey,
        channel: u32,
        payload: Bytes,
    ) -> (RpcStatus, Bytes) {
        match spec.and_then(|s| s.handler.get()) {
            None => (RpcStatus::NoHandler, Bytes::new()),
            Some(handler) => match crate::rpc::run_handler(handler, peer, payload) {
                Ok(r) => (RpcStatus::Ok, r.unwrap_or_default()),
                Err(e) => {
                    self.shared.metrics.refuse("handler_failed");
                    tracing::debug!(shard = self.id, %peer, channel, error = %e, "handler failed");
                    (RpcStatus::HandlerFailed, Bytes::new())
                }
            },
        }
    }

    /// A plain message on a channel with a handler: runs it; a reply goes
    /// back on the channel.
    pub(super) fn run_handler_for_message(
        &mut self,
        key: usize,
        spec: &Arc<ChannelSpec>,
        payload: Bytes,
    ) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let Some(handler) = spec.handler.get() else {
            return;
        };
        spec.metrics.messages_in.inc();
        spec.metrics.bytes_in.inc_by(payload.len() as u64);
        match crate::rpc::run_handler(handler, &peer, payload) {
            Ok(Some(reply)) => {
                if slot
                    .conn
                    .send(Outgoing::data(spec.id, reply, false), Priority::Low, None)
                    .is_err()
                {
                    self.shared.metrics.refuse("handler_reply_queue_full");
                }
                self.dirty.push(key);
            }
            Ok(None) => {}
            Err(e) => {
                self.shared.metrics.refuse("handler_failed");
                tracing::debug!(shard = self.id, %peer, channel = spec.id, error = %e, "handler failed");
            }
        }
    }

    /// [`super::Command::Ping`]: sends a ping; `reply` gets the next pong's round
    /// trip (dropped unanswered if too many wait already).
    pub(super) fn ping(
        &mut self,
        id: ConnId,
        reply: tokio::sync::oneshot::Sender<Duration>,
        now: Instant,
    ) {
        if let Some(slot) = self.conns.live_mut(id) {
            if slot.ping_waiters.len() < MAX_PING_WAITERS && slot.conn.ping(now).is_some() {
                slot.ping_waiters.push(reply);
                self.dirty.push(id.key);
            }
        }
    }

    /// A pong on connection `key`: every waiting `ping()` caller gets the
    /// round trip.
    pub(super) fn on_pong(&mut self, key: usize, rtt: Duration) {
        if let Some(slot) = self.conns.get_mut(key) {
            for w in slot.ping_waiters.drain(..) {
                let _ = w.send(rtt);
            }
        }
    }
}
