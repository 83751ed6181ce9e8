//! The control shard's sleep: the wake-up handshake with the threads that
//! queue events for it.
//!
//! # Design
//! The control shard blocks in its poll (listener and wake socket) until
//! its next timer. Producers (data shards, the embedder's threads) queue an
//! event and call [`ShardWaker::wake`], which writes to the wake socket only
//! when the shard announced a sleep; so before blocking the shard announces
//! it, then looks at its inbox once more, Dekker-style (see
//! [`crate::waker`]). This is the same handshake the data shards' drivers
//! run around their own waits.

use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver as StdReceiver;
use std::time::{Duration, Instant};

use mio::{unix::SourceFd, Events, Interest, Poll, Token};

use crate::shared::ControlEvent;
use crate::waker::ShardWaker;

const CONTROL_WAKE: Token = Token(1);

/// Makes `poll` wake up when a producer writes to `waker`'s socket.
pub(crate) fn register(poll: &Poll, waker: &ShardWaker) -> std::io::Result<()> {
    let fd = waker.rx().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), CONTROL_WAKE, Interest::READABLE)
}

/// Sleeps until `wake_at`, a pending connection, or a wake-up from a
/// producer. The sleep is announced first and `recheck` (the inbox) looked
/// at once more: a producer that queued before seeing the flag is handled
/// now (no sleep); one that queues after sees the flag and wakes us.
pub(crate) fn sleep(
    poll: &mut Poll,
    events: &mut Events,
    waker: &ShardWaker,
    wake_at: Instant,
    recheck: impl FnOnce() -> bool,
) -> std::io::Result<()> {
    let mut timeout = wake_at.saturating_duration_since(Instant::now());
    waker.prepare_sleep();
    if recheck() {
        timeout = Duration::ZERO;
    }
    let polled = poll.poll(events, Some(timeout));
    waker.cancel_sleep();
    if let Err(e) = polled {
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if events.iter().any(|ev| ev.token() == CONTROL_WAKE) {
        waker.woke();
    }
    let _ = waker.take_resume();
    Ok(())
}

/// Moves the data shards' events into `pending` (at most `cap` held);
/// true if any is held.
pub(crate) fn drain(
    inbox: &StdReceiver<ControlEvent>,
    pending: &mut Vec<ControlEvent>,
    cap: usize,
) -> bool {
    while pending.len() < cap {
        match inbox.try_recv() {
            Ok(ev) => pending.push(ev),
            Err(_) => break,
        }
    }
    !pending.is_empty()
}
