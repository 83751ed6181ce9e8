//! Application tasks on the shard: async code that runs on a data shard's
//! own thread, next to the connections it talks to.
//!
//! [`crate::NetworkHandle::spawn_on`] starts a `!Send` future on one shard.
//! Inside, [`Ctx`] gives it the shard's side of the channels: a
//! [`LocalSender`] (messages and requests), a [`LocalReceiver`] for the
//! messages of a channel that arrive on this shard, [`Requests`] to serve
//! requests, timers ([`Ctx::sleep`], [`Ctx::interval`]), peers and events.
//!
//! # Design
//! A message between two application threads on two nodes crosses four
//! threads (application, shard, peer's shard, peer's application) and as
//! many queues and wake-ups. A task removes the two application hops: it
//! is polled by the shard's loop, once per turn between
//! the timers and the transmit step, with a budget per turn. What it sends
//! to a peer whose connection is on its shard is queued on the connection
//! right after its poll, in the same turn, with no queue between threads
//! and no wake-up; what arrives for it is handed over by the
//! shard in the same turn the bytes were decrypted, and wakes it there.
//! A send to a peer on another shard takes the bounded hand-off every
//! [`crate::Sender`] uses.
//!
//! Which shard a peer's connection lands on is the control shard's
//! placement (fewest connections), unless the application placed the peer
//! ([`crate::NetworkHandle::place`]): then its connections live on the
//! shard of the task that serves it, dialed there or moved there at
//! establishment. Serving peers that are not placed
//! means one task per shard ([`crate::NetworkHandle::shards`]), each with
//! its own [`Ctx::receiver`] / [`Ctx::requests`]; [`Ctx::local_peers`] and
//! [`crate::NetworkHandle::shard_of`] say which peers are local.
//!
//! Threads and tasks meet through any bounded, runtime-free queue whose
//! futures wake through their `Waker`: `tokio::sync::mpsc` works both ways
//! (`try_send` gives `Full` / `Closed`), and a task's waker woken from
//! another thread rings the shard like a command does.
//!
//! # Fairness
//! One turn polls the tasks that were ready when it began, at most 256;
//! a task woken during the turn waits for the next one, after the shard's
//! I/O. A receive hands a task at most 64 ready items per poll, then
//! yields. So a task spinning on [`Ctx::yield_now`] cannot stop I/O, a
//! deep queue cannot hold the shard, and a flood of I/O cannot stop the
//! tasks: every turn polls them.
//!
//! A task must never block its thread: `.blocking()` on a [`Wait`] (a
//! request, a join, a send) inside a task stops the shard that would
//! complete it. Inside a task, `.await` instead.
//!
//! # Security
//! Tasks run the embedder's code; peers reach them only through the same
//! checked, bounded paths as a [`crate::Receiver`] or a handler: a claimed
//! channel's queue is bounded by its capacity (and pauses the connection
//! when full, as a full `Receiver` does), a request queue answers
//! `HandlerFailed` beyond it. A task that panics is ended alone (its
//! handle says [`Outcome::Panicked`], `shoal_tasks_total{event="panicked"}`
//! counts it); a task that never yields does hold its shard, as an
//! in-shard handler that never returns would.
//!
//! # Not provided
//! - Moving an established connection: [`crate::NetworkHandle::place`]
//!   applies to a peer's next connection, not to the one it has.
//! - A task outliving its network: shutdown cancels every task, oldest
//!   first, before the connections flush. What a task queued before that
//!   is flushed with them; a request it took and had not answered is
//!   answered `HandlerFailed`.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use shoal_engine::{ChannelConfig, tasks::Outcome};
//! let [(a, _), (b, _)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(7)]);
//! let a_key = a.public_key();
//! // b answers every request on channel 7 from a task on the shard that
//! // holds its connection to a, and says when it holds the channel...
//! let (claimed, ready) = std::sync::mpsc::channel();
//! let server = b.spawn_on(b.shard_of(&a_key).unwrap_or(0), move |ctx| async move {
//!     let Ok(mut requests) = ctx.requests(7) else { return };
//!     let _ = claimed.send(());
//!     loop {
//!         let r = requests.recv().await;
//!         let upper = Bytes::from(r.payload().to_ascii_uppercase());
//!         r.respond(upper);
//!     }
//! })?;
//! ready.recv_timeout(Duration::from_secs(10))?;
//! // ...and a asks from one of its own.
//! let b_key = b.public_key();
//! let client = a.spawn_on(0, move |ctx| async move {
//!     let tx = ctx.sender(7).expect("registered");
//!     let reply = tx.request(&b_key, Bytes::from_static(b"hi"), Duration::from_secs(10)).await;
//!     assert_eq!(reply.as_deref(), Ok(&b"HI"[..]));
//! })?;
//! assert_eq!(client.join().blocking(), Outcome::Finished);
//! b.shutdown(Duration::from_millis(100));
//! assert_eq!(server.join().blocking(), Outcome::Cancelled);
//! # Ok(()) }
//! ```

mod ctx;
pub(crate) mod executor;
pub(crate) mod local;

use std::future::Future;

pub use ctx::{ClaimError, Ctx, Interval, LocalReceiver, LocalSender, Request, Requests, Sleep};

use crate::wait::Wait;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its future completed.
    Finished,
    /// It panicked; the panic was contained and counted.
    Panicked,
    /// The network shut down (or its shard stopped) first.
    Cancelled,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Panicked => "panicked",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Why a task was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// There is no data shard with this index.
    #[error("no shard {0}")]
    NoSuchShard(usize),
    /// The shard's command queue is full; try again.
    #[error("the shard's queue is full")]
    Full,
    /// The network shut down, or the shard stopped.
    #[error("the network or the shard is not running")]
    Closed,
}

/// A started task: [`TaskHandle::join`] waits for its [`Outcome`]. Dropping
/// the handle does not stop the task.
#[derive(Debug)]
pub struct TaskHandle {
    shard: usize,
    done: tokio::sync::oneshot::Receiver<Outcome>,
}

impl TaskHandle {
    pub(crate) fn new(shard: usize, done: tokio::sync::oneshot::Receiver<Outcome>) -> Self {
        TaskHandle { shard, done }
    }

    /// The shard the task runs on.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Waits for the task to end: `.await` it, or `.blocking()` (never on
    /// the task's own shard: from a task, `.await`).
    pub fn join(self) -> Wait<impl Future<Output = Outcome>> {
        Wait::new(
            async move { self.done.await.unwrap_or(Outcome::Cancelled) },
            std::time::Duration::ZERO,
        )
    }

    /// How the task ended, if it has.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.done.try_recv() {
            Ok(o) => Some(o),
            Err(TryRecvError::Closed) => Some(Outcome::Cancelled),
            Err(TryRecvError::Empty) => None,
        }
    }
}

/// What a [`crate::NetworkHandle::spawn_on`] call sends its shard: builds
/// the task's future there.
pub(crate) type Start = Box<dyn FnOnce(Ctx) -> executor::LocalFuture + Send>;
