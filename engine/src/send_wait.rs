//! [`SendWait`]: a send that waits for room, `.await`ed or blocked on.
//!
//! # Design
//! The common case, a recipient with room, is queued by the same code
//! [`Sender::send`] runs, at the first poll (or at once in
//! [`SendWait::blocking`]), with nothing else built: no waiting state
//! machine, no parker, no allocation. Only a recipient whose queue is full
//! gets the waiting future ([`Sender`]'s reservation, woken as the shard
//! gives room back), boxed then. Built this way because a `send_wait` that
//! always went through the general [`crate::Wait`] machinery ran 64 B
//! messages ~12 % slower than a loop calling `send` (`benches/README.md`,
//! "Comparing two builds").
//!
//! Not provided: a deadline. Drop the future (or race it against a timer)
//! to stop waiting; a message already queued for an earlier recipient stays
//! queued.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::channels::Sender;
use crate::connection::Priority;
use crate::send_report::{Recipients, SendReport};
use crate::wait::block_on;

type Waiting<'a> = Pin<Box<dyn Future<Output = SendReport> + Send + 'a>>;

/// A send that waits while a recipient's queue is full, returned by
/// [`Sender::send_wait`]: `.await` it on any executor, or call
/// [`SendWait::blocking`] on a plain thread.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, Priority};
/// let [(a, mut a_ch), (b, mut b_ch)] =
///     shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
/// let (tx, _) = a_ch.remove(0);
/// let (_, rx) = b_ch.remove(0);
/// // On a plain thread; in async code, `.await` it instead.
/// tx.send_wait(&b.public_key(), Bytes::from_static(b"vote"), Priority::High)
///     .blocking()
///     .result()?;
/// assert_eq!(rx.recv_blocking()?.1, Bytes::from_static(b"vote"));
/// # drop((a, b));
/// # Ok(()) }
/// ```
#[must_use = "a send_wait sends nothing unless it is awaited or blocked on"]
pub struct SendWait<'a> {
    sender: &'a Sender,
    to: Recipients<'a>,
    msg: Bytes,
    priority: Priority,
}

/// What the first attempt left: done, or the waiting part.
enum Started<'a> {
    Done(SendReport),
    Waiting(Waiting<'a>),
}

impl<'a> SendWait<'a> {
    pub(crate) fn new(
        sender: &'a Sender,
        to: Recipients<'a>,
        msg: Bytes,
        priority: Priority,
    ) -> Self {
        SendWait {
            sender,
            to,
            msg,
            priority,
        }
    }

    /// Runs the send to completion on this thread, parking (not spinning)
    /// while a recipient's queue is full. Do not call it from inside an
    /// async task: it blocks that task's thread.
    pub fn blocking(self) -> SendReport {
        match self.start() {
            Started::Done(report) => report,
            Started::Waiting(waiting) => block_on(waiting, Duration::ZERO),
        }
    }

    /// The first attempt: one recipient with room is queued here.
    fn start(self) -> Started<'a> {
        let SendWait {
            sender,
            to,
            msg,
            priority,
        } = self;
        let msg = match sender.prepare(msg) {
            Ok(msg) => msg,
            Err(e) => return Started::Done(SendReport::refused_with(e)),
        };
        match to {
            Recipients::One(peer) => match sender.try_one(peer, msg, priority) {
                Ok(outcome) => Started::Done(SendReport::one(peer, outcome)),
                Err(full) => Started::Waiting(Box::pin(async move {
                    SendReport::one(peer, sender.wait_one(peer, full, priority).await)
                })),
            },
            to => Started::Waiting(Box::pin(sender.wait_each(to, msg, priority))),
        }
    }
}

/// The future of a [`SendWait`] (see [`IntoFuture`]).
#[must_use = "futures do nothing unless polled"]
pub struct SendWaitFuture<'a> {
    state: State<'a>,
}

enum State<'a> {
    Start(SendWait<'a>),
    Waiting(Waiting<'a>),
    Done,
}

impl<'a> IntoFuture for SendWait<'a> {
    type Output = SendReport;
    type IntoFuture = SendWaitFuture<'a>;

    fn into_future(self) -> SendWaitFuture<'a> {
        SendWaitFuture {
            state: State::Start(self),
        }
    }
}

impl Future for SendWaitFuture<'_> {
    type Output = SendReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendReport> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Start(send) => match send.start() {
                    Started::Done(report) => return Poll::Ready(report),
                    Started::Waiting(waiting) => this.state = State::Waiting(waiting),
                },
                State::Waiting(mut waiting) => {
                    return match waiting.as_mut().poll(cx) {
                        Poll::Ready(report) => Poll::Ready(report),
                        Poll::Pending => {
                            this.state = State::Waiting(waiting);
                            Poll::Pending
                        }
                    };
                }
                // Polled after completion: nothing more to send.
                State::Done => return Poll::Pending,
            }
        }
    }
}
