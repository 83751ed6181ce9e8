//! The shard's executor: which task runs when, and what happens when one
//! ends.
//!
//! # Design
//! Tasks live in a slab on the shard's thread; a task's waker is an `Arc`
//! holding its slab key and generation and the shard's [`Ready`] queue, so
//! any thread may wake it: the wake pushes the key (once until the task is
//! polled again) and rings the shard's waker, which costs a system call
//! only when the shard sleeps. The shard loop calls [`Executor::run`] once
//! per turn, between its timers and its transmit step. One turn polls the
//! tasks that were ready when it began, at most [`POLLS_PER_TURN`]; a task
//! woken meanwhile (by itself, or by what an earlier one sent) runs in the
//! next turn, after the shard did its I/O. So a task that spins on
//! `yield_now` gets one poll per turn and cannot stop I/O, and a flood of
//! I/O cannot stop tasks: every turn polls them.
//!
//! A poll that panics ends its task there: the panic is caught, the future
//! dropped (a panic in its drop is caught too), the handle told
//! [`Outcome::Panicked`], `shoal_tasks_total{event="panicked"}` counted and
//! an error logged. The shard and its other tasks carry on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;
use tokio::sync::oneshot;

use super::local::{Local, RECV_BUDGET};
use super::Outcome;
use crate::metrics::Metrics;
use crate::waker::ShardWaker;

/// A task's future: `!Send`, it never leaves its shard.
pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// At most this many task polls per loop turn; the rest wait for the next.
pub(crate) const POLLS_PER_TURN: usize = 256;

/// Tasks to poll, pushed by their wakers from any thread.
pub(crate) struct Ready {
    list: Mutex<Vec<(usize, u64)>>,
    /// Something is in `list` (read without the lock).
    pending: AtomicBool,
    shard: Arc<ShardWaker>,
}

impl Ready {
    fn push(&self, task: (usize, u64)) {
        lock(&self.list).push(task);
        self.pending.store(true, Ordering::Release);
        self.shard.wake();
    }
}

/// One task's waker.
struct TaskWaker {
    key: usize,
    generation: u64,
    /// In the ready list already (cleared just before each poll).
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push((self.key, self.generation));
        }
    }
}

struct Task {
    fut: LocalFuture,
    generation: u64,
    wake: Arc<TaskWaker>,
    waker: Waker,
    done: Option<oneshot::Sender<Outcome>>,
}

/// See the [module docs](self).
pub(crate) struct Executor {
    tasks: Slab<Task>,
    ready: Arc<Ready>,
    next_generation: u64,
    /// This turn's tasks to poll.
    batch: Vec<(usize, u64)>,
    local: Rc<Local>,
    metrics: Metrics,
}

impl Executor {
    pub fn new(local: Rc<Local>, shard: Arc<ShardWaker>, metrics: Metrics) -> Self {
        Executor {
            tasks: Slab::new(),
            ready: Arc::new(Ready {
                list: Mutex::new(Vec::new()),
                pending: AtomicBool::new(false),
                shard,
            }),
            next_generation: 1,
            batch: Vec::new(),
            local,
            metrics,
        }
    }

    // Getters.

    /// A task is ready to poll (or a timer due): the shard must not sleep.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.pending.load(Ordering::Acquire)
    }

    /// Tasks alive on this shard.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    // Mutators.

    /// Adds a task and makes it ready; `done` hears how it ended.
    pub fn spawn(&mut self, fut: LocalFuture, done: Option<oneshot::Sender<Outcome>>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = self.tasks.vacant_entry();
        let wake = Arc::new(TaskWaker {
            key: entry.key(),
            generation,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        let waker = Waker::from(wake.clone());
        entry.insert(Task {
            fut,
            generation,
            wake,
            waker: waker.clone(),
            done,
        });
        self.metrics.tasks_running.inc();
        self.metrics.task_event("spawned");
        waker.wake();
    }

    /// Takes this turn's ready tasks (at most [`POLLS_PER_TURN`]); the core
    /// then polls them one by one ([`Executor::poll`]), applying what each
    /// asked of it in between.
    pub fn take_batch(&mut self) -> Vec<(usize, u64)> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        if !self.ready.pending.load(Ordering::Acquire) {
            return batch;
        }
        let mut list = lock(&self.ready.list);
        let n = list.len().min(POLLS_PER_TURN);
        batch.extend(list.drain(..n));
        self.ready
            .pending
            .store(!list.is_empty(), Ordering::Release);
        batch
    }

    /// Gives the batch's buffer back for the next turn.
    pub fn return_batch(&mut self, batch: Vec<(usize, u64)>) {
        self.batch = batch;
    }

    /// Polls task `key` if it is still the one woken; starts what it
    /// spawned. A task that finished or panicked is removed.
    pub fn poll(&mut self, (key, generation): (usize, u64)) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        if task.generation != generation {
            return;
        }
        task.wake.queued.store(false, Ordering::Release);
        self.local.budget.set(RECV_BUDGET);
        let mut cx = Context::from_waker(&task.waker);
        let fut = &mut task.fut;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => self.end(key, Outcome::Finished),
            Err(_) => {
                tracing::error!(shard = self.local.shard, "a shard task panicked");
                self.end(key, Outcome::Panicked);
            }
        }
        self.start_spawned();
    }

    /// Starts the tasks spawned with `Ctx::spawn` since the last call.
    pub fn start_spawned(&mut self) {
        if self.local.spawned.borrow().is_empty() {
            return;
        }
        let spawned: Vec<LocalFuture> = self.local.spawned.borrow_mut().drain(..).collect();
        for fut in spawned {
            self.spawn(fut, None);
        }
    }

    /// Cancels every task, oldest first (shutdown): each future is dropped
    /// where it stands.
    pub fn cancel_all(&mut self) {
        let mut keys: Vec<(u64, usize)> =
            self.tasks.iter().map(|(k, t)| (t.generation, k)).collect();
        keys.sort_unstable();
        for (_, key) in keys {
            self.end(key, Outcome::Cancelled);
        }
        // Tasks spawned by the dropped ones never start.
        self.local.spawned.borrow_mut().clear();
    }

    fn end(&mut self, key: usize, outcome: Outcome) {
        let Some(task) = self.tasks.try_remove(key) else {
            return;
        };
        self.metrics.tasks_running.dec();
        self.metrics.task_event(outcome.label());
        let Task { fut, done, .. } = task;
        if std::panic::catch_unwind(AssertUnwindSafe(move || drop(fut))).is_err() {
            tracing::error!(
                shard = self.local.shard,
                "a shard task panicked while dropped"
            );
        }
        if let Some(done) = done {
            let _ = done.send(outcome);
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn executor() -> (Executor, Rc<Local>) {
        let local = Rc::new(Local::new(0));
        let shard = Arc::new(ShardWaker::new(Default::default()).unwrap());
        (
            Executor::new(local.clone(), shard, Metrics::default()),
            local,
        )
    }

    fn turn(e: &mut Executor) -> usize {
        let batch = e.take_batch();
        let n = batch.len();
        for t in &batch {
            e.poll(*t);
        }
        e.return_batch(batch);
        n
    }

    /// Pending once (waking itself), then done.
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_task_woken_during_a_turn_runs_in_the_next_one() {
        let (mut e, _) = executor();
        let (tx, mut rx) = oneshot::channel();
        e.spawn(Box::pin(YieldOnce(false)), Some(tx));
        assert_eq!(turn(&mut e), 1);
        assert!(e.is_ready(), "it woke itself");
        assert_eq!(e.len(), 1);
        assert_eq!(turn(&mut e), 1);
        assert_eq!(rx.try_recv(), Ok(Outcome::Finished));
        assert_eq!(e.len(), 0);
        assert!(!e.is_ready());
        assert_eq!(turn(&mut e), 0);
    }

    #[test]
    fn one_turn_polls_at_most_its_budget() {
        let (mut e, _) = executor();
        for _ in 0..POLLS_PER_TURN + 10 {
            e.spawn(Box::pin(std::future::pending::<()>()), None);
        }
        assert_eq!(turn(&mut e), POLLS_PER_TURN);
        assert!(e.is_ready());
        assert_eq!(turn(&mut e), 10);
        assert!(!e.is_ready(), "pending forever, never woken again");
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let (mut e, _) = executor();
        let (tx, mut rx) = oneshot::channel();
        let (ok_tx, mut ok_rx) = oneshot::channel();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        e.spawn(Box::pin(async { panic!("task bug") }), Some(tx));
        e.spawn(Box::pin(async move { r.set(true) }), Some(ok_tx));
        turn(&mut e);
        assert_eq!(rx.try_recv(), Ok(Outcome::Panicked));
        assert_eq!(ok_rx.try_recv(), Ok(Outcome::Finished));
        assert!(ran.get());
        assert_eq!(e.metrics.task_count("panicked"), 1);
        assert_eq!(e.metrics.tasks_running.get(), 0);
    }

    #[test]
    fn a_stale_wake_polls_nothing() {
        let (mut e, _) = executor();
        let polls = Rc::new(Cell::new(0));
        let p = polls.clone();
        let stale: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
        let s = stale.clone();
        e.spawn(
            Box::pin(std::future::poll_fn(move |cx| {
                s.set(Some(cx.waker().clone()));
                Poll::Ready(())
            })),
            None,
        );
        turn(&mut e);
        // A new task takes the slab key of the finished one.
        e.spawn(
            Box::pin(std::future::poll_fn(move |_| {
                p.set(p.get() + 1);
                Poll::<()>::Pending
            })),
            None,
        );
        turn(&mut e);
        assert_eq!(polls.get(), 1);
        stale.take().unwrap().wake();
        turn(&mut e);
        assert_eq!(
            polls.get(),
            1,
            "the old task's waker does not poll the new one"
        );
    }

    #[test]
    fn cancel_all_drops_every_task_and_tells_its_handle() {
        let (mut e, _) = executor();
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            e.spawn(Box::pin(std::future::pending::<()>()), Some(tx));
            rxs.push(rx);
        }
        turn(&mut e);
        e.cancel_all();
        for mut rx in rxs {
            assert_eq!(rx.try_recv(), Ok(Outcome::Cancelled));
        }
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn a_wake_from_another_thread_makes_the_task_ready() {
        let (mut e, _) = executor();
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let sent = Cell::new(false);
        e.spawn(
            Box::pin(std::future::poll_fn(move |cx| {
                if !sent.replace(true) {
                    let _ = tx.send(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(())
            })),
            None,
        );
        turn(&mut e);
        assert!(!e.is_ready());
        let w = rx.recv().unwrap();
        std::thread::spawn(move || w.wake()).join().unwrap();
        assert!(e.is_ready());
        turn(&mut e);
        assert_eq!(e.len(), 0);
    }
}
