//! Application tasks on the shards over real loopback sockets, on both
//! backends and on one and two shards: requests and messages between tasks
//! on two nodes, many tasks on one shard, fairness (a task spinning on
//! `yield_now` does not stop I/O; a flood does not stop a timer),
//! backpressure into a task that does not read, a panicking task, work
//! handed between tasks and threads, and shutdown with tasks mid-request.

#[macro_use]
mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::tasks::{Outcome, TaskHandle};
use shoal::{Backend, NetworkHandle, Priority, RequestError, RpcStatus, SendError};

/// Messages between tasks (and threads).
const MSG: u32 = 1;
/// Requests served by tasks.
const RPC: u32 = 2;

fn pair(backend: Backend) -> Vec<Node> {
    mesh(backend, 2, &[chan(MSG), chan(RPC)], |_| {})
}

/// Starts, on every shard of `h`, a task serving `RPC` with
/// `answer(payload)`; returns once every one holds the channel.
fn serve_everywhere(h: &NetworkHandle, answer: fn(&[u8]) -> Vec<u8>) -> Vec<TaskHandle> {
    let (claimed, ready) = mpsc::channel();
    let handles: Vec<TaskHandle> = (0..h.shards())
        .map(|s| {
            let claimed = claimed.clone();
            h.spawn_on(s, move |ctx| async move {
                let mut requests = ctx.requests(RPC).expect("claim");
                claimed.send(()).unwrap();
                loop {
                    let r = requests.recv().await;
                    let reply = Bytes::from(answer(r.payload()));
                    r.respond(reply);
                }
            })
            .expect("spawn")
        })
        .collect();
    for _ in 0..h.shards() {
        ready.recv_timeout(WAIT).expect("every server claimed RPC");
    }
    handles
}

fn upper(p: &[u8]) -> Vec<u8> {
    p.to_ascii_uppercase()
}

/// Requests from a task on every shard of node 1 to node 2's tasks (local
/// to the connection's shard or across shards), and messages echoed by a
/// task on node 2 back to a thread on node 1.
fn requests_and_messages_between_tasks(backend: Backend) {
    let nodes = pair(backend);
    let (a, b) = (&nodes[0], &nodes[1]);
    let servers = serve_everywhere(b.handle(), upper);
    let b_key = b.key();
    let clients: Vec<TaskHandle> = (0..a.handle().shards())
        .map(|s| {
            let b_key = b_key.clone();
            a.handle()
                .spawn_on(s, move |ctx| async move {
                    let tx = ctx.sender(RPC).unwrap();
                    for i in 0..50u32 {
                        let q = Bytes::from(format!("req {i} from shard {}", ctx.shard()));
                        let r = tx.request(&b_key, q.clone(), WAIT).await.unwrap();
                        assert_eq!(r, Bytes::from(q.to_ascii_uppercase()));
                    }
                })
                .unwrap()
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().blocking(), Outcome::Finished);
    }

    // Node 2 echoes channel MSG from a task on the shard of its connection
    // to node 1; node 1's thread sends and receives.
    let a_key = a.key();
    let (claimed, ready) = mpsc::channel();
    let shard = b.handle().shard_of(&a_key).unwrap();
    let echo = b
        .handle()
        .spawn_on(shard, move |ctx| async move {
            let mut rx = ctx.receiver(MSG).unwrap();
            let tx = ctx.sender(MSG).unwrap();
            claimed.send(()).unwrap();
            assert_eq!(ctx.local_peers().len(), 1);
            loop {
                let (from, m) = rx.recv().await;
                tx.send_wait(&from, m, Priority::Low).await.unwrap();
            }
        })
        .unwrap();
    ready.recv_timeout(WAIT).unwrap();
    let (tx, rx) = &a.channels[0];
    for i in 0..200u32 {
        tx.send_wait(&b_key, Bytes::from(i.to_be_bytes().to_vec()), Priority::Low)
            .blocking()
            .result()
            .unwrap();
    }
    for i in 0..200u32 {
        let (from, m) = rx.recv_timeout(WAIT).unwrap().expect("echo");
        assert_eq!((from, &m[..]), (b_key.clone(), &i.to_be_bytes()[..]));
    }
    // Node 2's thread receiver saw none of them: the task had the channel.
    assert!(b.channels[0].1.try_recv().is_none());
    stop_all(nodes);
    assert_eq!(echo.join().blocking(), Outcome::Cancelled);
    for s in servers {
        assert_eq!(s.join().blocking(), Outcome::Cancelled);
    }
}

/// 200 tasks on one shard, each sleeping, spawning a child and asking a
/// request; every one finishes and the gauge comes back to zero.
fn many_tasks_on_one_shard(backend: Backend) {
    let nodes = pair(backend);
    let (a, b) = (&nodes[0], &nodes[1]);
    let _servers = serve_everywhere(b.handle(), upper);
    let b_key = b.key();
    let children = Arc::new(AtomicU64::new(0));
    let handles: Vec<TaskHandle> = (0..200u64)
        .map(|i| {
            let (b_key, children) = (b_key.clone(), children.clone());
            a.handle()
                .spawn_on(0, move |ctx| async move {
                    ctx.sleep(Duration::from_millis(i % 7)).await;
                    let tx = ctx.sender(RPC).unwrap();
                    let r = tx.request(&b_key, Bytes::from_static(b"x"), WAIT).await;
                    assert_eq!(r.unwrap(), Bytes::from_static(b"X"));
                    ctx.spawn(async move {
                        children.fetch_add(1, Ordering::SeqCst);
                    });
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().blocking(), Outcome::Finished);
    }
    let m = a.handle().metrics();
    wait_until("the children ran", || {
        children.load(Ordering::SeqCst) == 200
    });
    wait_until("every task ended", || m.tasks_running.get() == 0);
    assert_eq!(m.task_count("spawned"), 400);
    assert_eq!(m.task_count("finished"), 400);
    stop_all(nodes);
}

/// A task that only yields shares its shard with I/O (requests served by a
/// task on the same shard keep being answered), and a flood into one task
/// does not stop another's timer: the flood runs until the ticker ticked
/// three times while messages kept arriving.
fn fairness(backend: Backend) {
    let nodes = pair(backend);
    let (a, b) = (&nodes[0], &nodes[1]);
    let a_key = a.key();
    let shard = a.handle().shard_of(&b.key()).unwrap();
    let yields = Arc::new(AtomicU64::new(0));
    let y = yields.clone();
    let spinner = a
        .handle()
        .spawn_on(shard, move |ctx| async move {
            loop {
                y.fetch_add(1, Ordering::Relaxed);
                ctx.yield_now().await;
            }
        })
        .unwrap();
    let _servers = serve_everywhere(a.handle(), upper);
    let (rpc, _) = &b.channels[1];
    let before = yields.load(Ordering::Relaxed);
    for _ in 0..200 {
        let r = rpc
            .request(&a_key, Bytes::from_static(b"ping"), WAIT)
            .blocking();
        assert_eq!(r.unwrap(), Bytes::from_static(b"PING"));
    }
    // Both went on: the requests were answered and the spinner kept
    // getting polls in between (it is never starved by the I/O either).
    wait_until("the spinner runs beside the requests", || {
        yields.load(Ordering::Relaxed) > before + 200
    });

    // The flood: node 2's thread sends until node 1's ticker, on the same
    // shard as the task taking the flood, has ticked 3 times mid-flood.
    let received = Arc::new(AtomicU64::new(0));
    let ticks_mid_flood = Arc::new(AtomicU64::new(0));
    let (claimed, ready) = mpsc::channel();
    let r = received.clone();
    let sink = a
        .handle()
        .spawn_on(shard, move |ctx| async move {
            let mut rx = ctx.receiver(MSG).unwrap();
            claimed.send(()).unwrap();
            loop {
                rx.recv().await;
                r.fetch_add(1, Ordering::Relaxed);
            }
        })
        .unwrap();
    ready.recv_timeout(WAIT).unwrap();
    let (r, t) = (received.clone(), ticks_mid_flood.clone());
    let ticker = a
        .handle()
        .spawn_on(shard, move |ctx| async move {
            let mut every = ctx.interval(Duration::from_millis(2));
            let mut seen = r.load(Ordering::Relaxed);
            while t.load(Ordering::SeqCst) < 3 {
                every.tick().await;
                let now = r.load(Ordering::Relaxed);
                if now > seen {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                seen = now;
            }
        })
        .unwrap();
    let (tx, _) = &b.channels[0];
    let bound = 5_000_000u64;
    let mut sent = 0u64;
    while ticks_mid_flood.load(Ordering::SeqCst) < 3 && sent < bound {
        tx.send_wait(&a_key, Bytes::from_static(&[0u8; 64]), Priority::Low)
            .blocking()
            .result()
            .unwrap();
        sent += 1;
    }
    assert!(sent < bound, "the timer never ran during the flood");
    assert_eq!(ticker.join().blocking(), Outcome::Finished);
    wait_until("the flood is taken", || {
        received.load(Ordering::Relaxed) == sent
    });
    stop_all(nodes);
    assert_eq!(spinner.join().blocking(), Outcome::Cancelled);
    assert_eq!(sink.join().blocking(), Outcome::Cancelled);
}

/// A task that does not read holds its peer back (the peer's sends end up
/// `Full`), and loses nothing: once it reads, it gets every message the
/// peer's sends accepted, in order.
fn a_task_that_does_not_read_holds_its_peer_back(backend: Backend) {
    let nodes = mesh(
        backend,
        2,
        &[ChannelDef {
            backlog: 16,
            ..chan(MSG)
        }],
        |c| {
            c.limits.peer_send_backlog = 64;
        },
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    let (claimed, ready) = mpsc::channel();
    let (go, start_reading) = tokio::sync::oneshot::channel::<()>();
    let (count_tx, counted) = mpsc::channel();
    let shard = a.handle().shard_of(&b.key()).unwrap();
    let reader = a
        .handle()
        .spawn_on(shard, move |ctx| async move {
            let mut rx = ctx.receiver(MSG).unwrap();
            claimed.send(()).unwrap();
            let _ = start_reading.await;
            let mut next = 0u64;
            loop {
                let (_, m) = rx.recv().await;
                assert_eq!(&m[..], &next.to_be_bytes()[..], "in order");
                next += 1;
                count_tx.send(next).unwrap();
            }
        })
        .unwrap();
    ready.recv_timeout(WAIT).unwrap();
    let (tx, _) = &b.channels[0];
    let a_key = a.key();
    let mut accepted = 0u64;
    loop {
        match tx
            .send(
                &a_key,
                Bytes::from(accepted.to_be_bytes().to_vec()),
                Priority::Low,
            )
            .result()
        {
            Ok(()) => accepted += 1,
            Err(SendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        // Bounded: the receiver's 16, the connection's and the socket
        // buffers, and the 64-message send backlog.
        assert!(
            accepted < 1_000_000,
            "a reader that never reads held nothing back"
        );
        if accepted.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    go.send(()).unwrap();
    let mut last = 0;
    while last < accepted {
        last = counted
            .recv_timeout(WAIT)
            .expect("every accepted message arrives");
    }
    assert!(a.handle().metrics().receiver_full_pauses.get() > 0);
    stop_all(nodes);
    assert_eq!(reader.join().blocking(), Outcome::Cancelled);
}

/// A task receiver dropped while its full queue holds the connection
/// paused gives the channel back: the held input and everything after it
/// reach the channel's `Receiver`, and what the task's queue still held is
/// counted as dropped: nothing else is lost.
fn a_receiver_dropped_while_paused_hands_the_channel_back(backend: Backend) {
    let nodes = mesh(
        backend,
        2,
        &[ChannelDef {
            backlog: 16,
            ..chan(MSG)
        }],
        |c| {
            c.limits.peer_send_backlog = 64;
        },
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    let (claimed, ready) = mpsc::channel();
    let (go, drop_it) = tokio::sync::oneshot::channel::<()>();
    let shard = a.handle().shard_of(&b.key()).unwrap();
    let task = a
        .handle()
        .spawn_on(shard, move |ctx| async move {
            let rx = ctx.receiver(MSG).unwrap();
            claimed.send(()).unwrap();
            let _ = drop_it.await;
            drop(rx);
        })
        .unwrap();
    ready.recv_timeout(WAIT).unwrap();
    let (tx, _) = &b.channels[0];
    let a_key = a.key();
    let mut accepted = 0u64;
    loop {
        match tx
            .send(
                &a_key,
                Bytes::from(accepted.to_be_bytes().to_vec()),
                Priority::Low,
            )
            .result()
        {
            Ok(()) => accepted += 1,
            Err(SendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1_000_000, "nothing held the sender back");
        if accepted.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    wait_until("the connection is paused", || {
        a.handle().metrics().receiver_full_pauses.get() > 0
    });
    go.send(()).unwrap();
    assert_eq!(task.join().blocking(), Outcome::Finished);
    let m = a.handle().metrics();
    let rx = &a.channels[0].1;
    let mut got = 0u64;
    let mut last: Option<u64> = None;
    while got + m.refused_count("task_receiver_dropped") < accepted {
        let (_, msg) = rx
            .recv_timeout(WAIT)
            .unwrap()
            .expect("the rest reaches the Receiver");
        let n = u64::from_be_bytes(msg[..8].try_into().unwrap());
        assert!(last.is_none_or(|l| n > l), "in order");
        last = Some(n);
        got += 1;
    }
    assert_eq!(
        m.refused_count("task_receiver_dropped"),
        16,
        "the task's full queue"
    );
    assert_eq!(got + 16, accepted);
    stop_all(nodes);
}

/// A panicking task ends alone: its handle says so, the metric counts it,
/// and the shard's other tasks keep serving. A panic in the start closure
/// is contained too.
fn a_panicking_task_is_contained(backend: Backend) {
    let nodes = pair(backend);
    let (a, b) = (&nodes[0], &nodes[1]);
    let _servers = serve_everywhere(a.handle(), upper);
    let bad = a
        .handle()
        .spawn_on(0, |ctx| async move {
            ctx.sleep(Duration::from_millis(1)).await;
            panic!("task bug");
        })
        .unwrap();
    assert_eq!(bad.join().blocking(), Outcome::Panicked);
    let start_panics = a
        .handle()
        .spawn_on(0, |_ctx| -> std::future::Ready<()> { panic!("start bug") })
        .unwrap();
    assert_eq!(start_panics.join().blocking(), Outcome::Panicked);
    assert_eq!(a.handle().metrics().task_count("panicked"), 2);
    let (rpc, _) = &b.channels[1];
    let r = rpc
        .request(&a.key(), Bytes::from_static(b"still"), WAIT)
        .blocking();
    assert_eq!(r.unwrap(), Bytes::from_static(b"STILL"));
    stop_all(nodes);
}

/// A task hands work to a plain thread through a bounded tokio queue
/// (seeing `Full` when it outruns it) and takes the results back through
/// another: the thread's sends wake the task from outside the shard.
fn tasks_and_threads_hand_work_both_ways(backend: Backend) {
    let nodes = pair(backend);
    let a = &nodes[0];
    let (work_tx, mut work_rx) = tokio::sync::mpsc::channel::<u64>(4);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<u64>(4);
    let worker = std::thread::spawn(move || {
        while let Some(n) = work_rx.blocking_recv() {
            if done_tx.blocking_send(n * 2).is_err() {
                return;
            }
        }
    });
    let task = a
        .handle()
        .spawn_on(0, move |ctx| async move {
            let full = Rc::new(Cell::new(0u32));
            let mut sum = 0;
            let mut sent = 0u64;
            let mut got = 0u64;
            while got < 100 {
                while sent < 100 {
                    match work_tx.try_send(sent) {
                        Ok(()) => sent += 1,
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            full.set(full.get() + 1);
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                match done_rx.recv().await {
                    Some(n) => sum += n,
                    None => panic!("worker gone"),
                }
                got += 1;
                ctx.yield_now().await;
            }
            assert_eq!(sum, (0..100).map(|n| n * 2).sum::<u64>());
            // Certain, not timing: the first inner loop runs before any
            // result is taken, and at most 9 items (4 queued, 1 at the
            // worker, 4 results) fit before `try_send` must refuse.
            assert!(full.get() > 0, "the bounded queue pushed back");
        })
        .unwrap();
    assert_eq!(task.join().blocking(), Outcome::Finished);
    worker.join().unwrap();
    stop_all(nodes);
}

/// Shutdown cancels tasks: what a task's sends had queued still reaches
/// the peer, and a request a task held unanswered is answered
/// `HandlerFailed` rather than left to time out.
fn shutdown_with_tasks_mid_request(backend: Backend) {
    let mut nodes = pair(backend);
    let (a_key, b_key) = (nodes[0].key(), nodes[1].key());
    // Node 2 holds every request it takes, on every shard.
    let (took, taken) = mpsc::channel();
    let h2 = nodes[1].handle();
    let holders: Vec<TaskHandle> = (0..h2.shards())
        .map(|s| {
            let took = took.clone();
            h2.spawn_on(s, move |ctx| async move {
                let mut requests = ctx.requests(RPC).unwrap();
                let mut held = Vec::new();
                took.send(()).unwrap();
                loop {
                    held.push(requests.recv().await);
                    took.send(()).unwrap();
                }
            })
            .unwrap()
        })
        .collect();
    for _ in 1..h2.shards() {
        taken.recv_timeout(WAIT).unwrap();
    }
    taken.recv_timeout(WAIT).unwrap();
    // Node 1's task queues 100 messages, then waits on a request node 2
    // never answers.
    let (queued, all_queued) = mpsc::channel();
    let b = b_key.clone();
    let asker = nodes[0]
        .handle()
        .spawn_on(0, move |ctx| async move {
            let tx = ctx.sender(MSG).unwrap();
            for i in 0..100u32 {
                tx.send(&b, Bytes::from(i.to_be_bytes().to_vec()), Priority::Low)
                    .unwrap();
            }
            queued.send(()).unwrap();
            let rpc = ctx.sender(RPC).unwrap();
            let _ = rpc.request(&b, Bytes::from_static(b"?"), WAIT).await;
            unreachable!("node 2 never answers while node 1 runs");
        })
        .unwrap();
    all_queued.recv_timeout(WAIT).unwrap();
    taken.recv_timeout(WAIT).expect("node 2 holds the request");
    let a = nodes.remove(0);
    a.handle.unwrap().shutdown(Duration::from_secs(5));
    assert_eq!(asker.join().blocking(), Outcome::Cancelled);
    let rx = &nodes[0].channels[0].1;
    for i in 0..100u32 {
        let (from, m) = rx
            .recv_timeout(WAIT)
            .unwrap()
            .expect("queued before shutdown");
        assert_eq!((from, &m[..]), (a_key.clone(), &i.to_be_bytes()[..]));
    }

    // Now a thread on a third node asks node 2, whose task holds it; node
    // 2 shuts down.
    let c = start_node(
        backend,
        3,
        any_addr(),
        &[2],
        &[(2, nodes[0].addr)],
        &[chan(MSG), chan(RPC)],
        |_| {},
    );
    nodes[0].oracle.register(1, vec![key(1), key(2), key(3)]);
    assert!(c.handle().wait_peers(WAIT, |p| p.contains(&b_key)));
    let (rpc, _) = &c.channels[1];
    let asking = std::thread::scope(|s| {
        let pending = s.spawn(|| {
            rpc.request(&b_key, Bytes::from_static(b"?"), WAIT)
                .blocking()
        });
        taken.recv_timeout(WAIT).expect("node 2 holds the request");
        stop_all(std::mem::take(&mut nodes));
        pending.join().unwrap()
    });
    assert_eq!(asking, Err(RequestError::Remote(RpcStatus::HandlerFailed)));
    for h in holders {
        assert_eq!(h.join().blocking(), Outcome::Cancelled);
    }
    stop_all(vec![c]);
}

both_backends!(
    requests_and_messages_between_tasks,
    many_tasks_on_one_shard,
    fairness,
    a_task_that_does_not_read_holds_its_peer_back,
    a_receiver_dropped_while_paused_hands_the_channel_back,
    a_panicking_task_is_contained,
    tasks_and_threads_hand_work_both_ways,
    shutdown_with_tasks_mid_request,
);
