//! The shard's side of application tasks ([`crate::tasks`]): starting them,
//! one step of them per loop turn, and what they asked of the connections.
//!
//! # Design
//! [`ShardCore::run_tasks`] polls this turn's ready tasks one at a time and,
//! after each, applies what it queued in the shard's outbox (sends,
//! responses) exactly as the same commands from another thread would be
//! applied, so a task's send follows every rule a `Sender`'s does (queue
//! depth, reroute to a replacement, hand-over). Then, if a task took from a
//! queue that had refused input, the held input is retried.
//!
//! Delivery to tasks hooks into [`super::delivery`] and [`super::rpc`]: a
//! message of a channel a task claimed goes to its queue (or is held, and
//! its connection paused, while that is full); a request for a channel a
//! task serves goes to its request queue (or is answered `HandlerFailed`
//! when that is full).

use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::PublicKey;
use shoal_wire::RpcStatus;

use super::delivery::Received;
use super::ShardCore;
use crate::tasks::local::Asked;
use crate::tasks::{Ctx, Outcome, Start};

impl ShardCore {
    // Getters.

    /// A task is ready: do not sleep (a task's timer bounds the sleep
    /// instead, see `sleep_budget`).
    #[inline]
    pub(crate) fn tasks_ready(&self) -> bool {
        self.tasks.is_ready()
    }

    /// The shard runs application tasks.
    #[inline]
    pub(crate) fn has_tasks(&self) -> bool {
        self.tasks.len() > 0
    }

    // Mutators.

    /// [`super::Command::Spawn`]: builds the task's future on this thread and
    /// starts it (after shutdown began: cancelled at once).
    pub(super) fn spawn_task(&mut self, start: Start, done: tokio::sync::oneshot::Sender<Outcome>) {
        if self.shutdown.is_some() {
            let _ = done.send(Outcome::Cancelled);
            return;
        }
        let ctx = Ctx::new(
            self.local.clone(),
            self.shared.clone(),
            self.channels.clone(),
        );
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start(ctx))) {
            Ok(fut) => self.tasks.spawn(fut, Some(done)),
            Err(_) => {
                tracing::error!(shard = self.id, "a shard task panicked while starting");
                self.shared.metrics.task_event("spawned");
                self.shared.metrics.task_event("panicked");
                let _ = done.send(Outcome::Panicked);
            }
        }
        // Tasks the start closure spawned (`Ctx::spawn`) start with it.
        self.tasks.start_spawned();
        // What the start closure queued before returning its future (it
        // may send already).
        self.apply_task_output(Instant::now());
    }

    /// One step of the shard's tasks (see the module docs). Returns whether
    /// any ran.
    pub(crate) fn run_tasks(&mut self, now: Instant) -> bool {
        self.local.fire_timers(now);
        if !self.tasks.is_ready() {
            // A claim ended outside a poll (a receiver dropped by a start
            // closure, or by a cancelled task) frees held input too.
            if self.local.take_resume() {
                self.retry_held(now);
            }
            return false;
        }
        let batch = self.tasks.take_batch();
        for &task in &batch {
            self.tasks.poll(task);
            self.apply_task_output(now);
        }
        let ran = !batch.is_empty();
        self.tasks.return_batch(batch);
        if self.local.take_resume() {
            self.retry_held(now);
        }
        ran
    }

    /// Shutdown: every task is cancelled, oldest first, and what their drop
    /// queued (answers to requests they held) is applied before the
    /// connections close.
    pub(super) fn cancel_tasks(&mut self, now: Instant) {
        self.tasks.cancel_all();
        self.apply_task_output(now);
    }

    /// Applies the commands tasks queued in the outbox.
    fn apply_task_output(&mut self, now: Instant) {
        if self.local.outbox.borrow().is_empty() {
            return;
        }
        let mut cmds = std::mem::take(&mut self.task_commands);
        std::mem::swap(&mut cmds, &mut *self.local.outbox.borrow_mut());
        let mut actions = Vec::new();
        for cmd in cmds.drain(..) {
            self.handle_command(cmd, now, &mut actions);
        }
        debug_assert!(actions.is_empty(), "tasks queue sends and responses only");
        self.task_commands = cmds;
    }

    /// A message for a channel a task claimed on this shard: to its queue;
    /// `Err` hands it back when the queue is full (the caller holds it).
    pub(super) fn offer_to_task(&mut self, peer: PublicKey, msg: Received) -> Result<(), Received> {
        let Received { spec, payload } = msg;
        let len = payload.len() as u64;
        match self.local.offer_message(spec.id, (peer, payload)) {
            Ok(()) => {
                spec.metrics.messages_in.inc();
                spec.metrics.bytes_in.inc_by(len);
                Ok(())
            }
            Err((_, payload)) => Err(Received { spec, payload }),
        }
    }

    /// A request for a channel a task serves on this shard: to its queue,
    /// or answered `HandlerFailed` when that is full.
    pub(super) fn request_to_task(
        &mut self,
        key: usize,
        peer: PublicKey,
        channel: u32,
        request_id: u64,
        payload: Bytes,
    ) {
        let Some(conn) = self.conn_id(key) else {
            return;
        };
        if let Some(spec) = self.channels.get(channel) {
            spec.metrics.messages_in.inc();
            spec.metrics.bytes_in.inc_by(payload.len() as u64);
        }
        let asked = Asked {
            peer,
            conn,
            request_id,
            payload,
        };
        if self.local.offer_request(channel, asked).is_err() {
            self.shared.metrics.refuse("task_requests_full");
            self.respond(
                conn,
                channel,
                request_id,
                RpcStatus::HandlerFailed,
                Bytes::new(),
            );
        }
    }
}
