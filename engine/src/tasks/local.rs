//! What a shard's tasks and the shard's core share, on the shard's thread.
//!
//! # Design
//! [`Local`] is one `Rc` per shard, held by the core's executor and by every
//! [`super::Ctx`] on the shard. Tasks never touch the core while they run:
//! what they ask of it (a send, a response) goes into the [`Local::outbox`]
//! as the same [`Command`] another thread would send, and the core applies
//! the outbox right after the task's poll, in the same loop turn. What the
//! core gives tasks (messages of a channel a task claimed, requests it
//! serves, timer expiries) waits in bounded queues here and wakes the task
//! that waits on it. Nothing here crosses a thread, so it is `RefCell`s and
//! `Cell`s, borrowed only for the length of one call.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::PublicKey;

use crate::peers::ConnId;
use crate::shard::Command;

/// Receives a ready item may hand a task in one poll before it yields
/// (a task draining a deep queue lets the shard do I/O in between).
pub(crate) const RECV_BUDGET: u32 = 64;

/// A request a task serves: who asked, on which connection, and the id its
/// response must carry.
pub(crate) struct Asked {
    pub peer: PublicKey,
    pub conn: ConnId,
    pub request_id: u64,
    pub payload: Bytes,
}

/// A bounded queue from the core to one task, with the waker of the task
/// waiting on it.
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    capacity: usize,
    waker: Option<Waker>,
    /// The core held input because this queue was full: taking an item
    /// asks it to retry ([`Local::resume`]).
    refused: bool,
}

impl<T> Queue<T> {
    fn new(capacity: usize) -> Self {
        Queue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            waker: None,
            refused: false,
        }
    }

    /// Adds `item`; hands it back when full. The waiting task's waker is
    /// returned, to be woken once the caller's borrow of the queue ends (a
    /// waker may poll synchronously and reach the queue again).
    fn offer(&mut self, item: T) -> Result<Option<Waker>, T> {
        if self.items.len() >= self.capacity {
            self.refused = true;
            return Err(item);
        }
        self.items.push_back(item);
        Ok(self.waker.take())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// A channel a task claimed on this shard, for messages or for requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Claim {
    Messages(u32),
    Requests(u32),
}

/// See the [module docs](self).
pub(crate) struct Local {
    pub shard: usize,
    /// What tasks asked of the core since it last looked.
    pub outbox: RefCell<Vec<Command>>,
    messages: RefCell<HashMap<u32, Queue<(PublicKey, Bytes)>>>,
    requests: RefCell<HashMap<u32, Queue<Asked>>>,
    /// Sleeping tasks by deadline (a sequence number tells equal ones apart).
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    /// What the task being polled may still receive in this poll.
    pub budget: Cell<u32>,
    /// A queue that refused input has room again: the core retries what it
    /// holds.
    resume: Cell<bool>,
    /// Tasks spawned by tasks, started after the current poll.
    pub spawned: RefCell<Vec<super::executor::LocalFuture>>,
}

impl Local {
    pub fn new(shard: usize) -> Self {
        Local {
            shard,
            outbox: RefCell::new(Vec::new()),
            messages: RefCell::new(HashMap::new()),
            requests: RefCell::new(HashMap::new()),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
            budget: Cell::new(RECV_BUDGET),
            resume: Cell::new(false),
            spawned: RefCell::new(Vec::new()),
        }
    }

    // Claims.

    /// Claims `claim` with a queue of `capacity`; false if a task has it.
    pub fn claim(&self, claim: Claim, capacity: usize) -> bool {
        match claim {
            Claim::Messages(ch) => insert_new(&mut self.messages.borrow_mut(), ch, capacity),
            Claim::Requests(ch) => insert_new(&mut self.requests.borrow_mut(), ch, capacity),
        }
    }

    /// Ends a claim. What its queue still holds is dropped (returned, for
    /// the count); requests are answered by the caller.
    pub fn release_messages(&self, channel: u32) -> usize {
        let q = self.messages.borrow_mut().remove(&channel);
        self.resume.set(true);
        q.map_or(0, |q| q.len())
    }

    /// Ends a request claim: the requests nobody will answer.
    pub fn release_requests(&self, channel: u32) -> Vec<Asked> {
        let q = self.requests.borrow_mut().remove(&channel);
        q.map_or_else(Vec::new, |q| q.items.into())
    }

    pub fn claims_messages(&self, channel: u32) -> bool {
        self.messages.borrow().contains_key(&channel)
    }

    pub fn claims_requests(&self, channel: u32) -> bool {
        self.requests.borrow().contains_key(&channel)
    }

    // The core's side.

    /// A message for a claimed channel ([`Local::claims_messages`]);
    /// handed back when its queue is full.
    pub fn offer_message(
        &self,
        channel: u32,
        item: (PublicKey, Bytes),
    ) -> Result<(), (PublicKey, Bytes)> {
        let waker = match self.messages.borrow_mut().get_mut(&channel) {
            Some(q) => q.offer(item)?,
            None => return Err(item),
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// A request for a claimed channel; handed back when its queue is full
    /// or nobody claims it.
    pub fn offer_request(&self, channel: u32, asked: Asked) -> Result<(), Asked> {
        let waker = match self.requests.borrow_mut().get_mut(&channel) {
            Some(q) => q.offer(asked)?,
            None => return Err(asked),
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether a queue that refused input made room since the last call.
    pub fn take_resume(&self) -> bool {
        self.resume.replace(false)
    }

    /// Wakes every task whose deadline is at or before `now`.
    pub fn fire_timers(&self, now: Instant) {
        loop {
            let mut timers = self.timers.borrow_mut();
            let Some(entry) = timers.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let waker = entry.remove();
            drop(timers);
            waker.wake();
        }
    }

    /// The earliest deadline a task sleeps until.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.borrow().first_key_value().map(|(k, _)| k.0)
    }

    // The tasks' side.

    /// Takes the next message of claimed `channel`, or registers `waker`
    /// (`None`: only looks).
    pub fn take_message(&self, channel: u32, waker: Option<&Waker>) -> Option<(PublicKey, Bytes)> {
        take(
            &mut self.messages.borrow_mut(),
            channel,
            waker,
            &self.resume,
        )
    }

    /// Takes the next request of claimed `channel`, or registers `waker`.
    pub fn take_request(&self, channel: u32, waker: &Waker) -> Option<Asked> {
        take(
            &mut self.requests.borrow_mut(),
            channel,
            Some(waker),
            &self.resume,
        )
    }

    /// Messages waiting for claimed `channel`.
    pub fn queued_messages(&self, channel: u32) -> usize {
        self.messages.borrow().get(&channel).map_or(0, |q| q.len())
    }

    /// Sleeps until `at`: (re)registers `waker` under `key`, or a new key.
    pub fn sleep(&self, at: Instant, key: Option<(Instant, u64)>, waker: &Waker) -> (Instant, u64) {
        let key = key.unwrap_or_else(|| {
            let n = self.next_timer.get();
            self.next_timer.set(n.wrapping_add(1));
            (at, n)
        });
        self.timers.borrow_mut().insert(key, waker.clone());
        key
    }

    /// Forgets a sleep that ended or was dropped.
    pub fn cancel_sleep(&self, key: (Instant, u64)) {
        self.timers.borrow_mut().remove(&key);
    }

    /// One receive out of the polled task's budget; false when it is spent
    /// (the caller yields: wakes itself and returns `Pending`).
    pub fn spend(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        self.budget.set(left - 1);
        true
    }
}

fn insert_new<T>(map: &mut HashMap<u32, Queue<T>>, channel: u32, capacity: usize) -> bool {
    if map.contains_key(&channel) {
        return false;
    }
    map.insert(channel, Queue::new(capacity));
    true
}

fn take<T>(
    map: &mut HashMap<u32, Queue<T>>,
    channel: u32,
    waker: Option<&Waker>,
    resume: &Cell<bool>,
) -> Option<T> {
    let q = map.get_mut(&channel)?;
    match q.items.pop_front() {
        Some(item) => {
            if std::mem::take(&mut q.refused) {
                resume.set(true);
            }
            Some(item)
        }
        None => {
            if let Some(waker) = waker {
                if !q.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    q.waker = Some(waker.clone());
                }
            }
            None
        }
    }
}
