//! Churn: 30 loopback nodes in one process (authorized discovery from two
//! bootstrappers, every key authorized) while random nodes (at most
//! `MAX_DOWN` at a time, chosen by a seeded RNG) are shut down and restarted
//! with the same key on the same listen address, for `SHOAL_CHURN_SECS`
//! (default 60) seconds of wall time. Every live node sends numbered messages
//! to random peers with `Recipients::One` / `Recipients::Some` and records
//! which peers accepted each one.
//!
//! Afterwards:
//! 1. the mesh converges again: every node is connected to all 29 others
//!    (awaited with `wait_peers`, bounded);
//! 2. per (sender incarnation, priority, recipient incarnation) the received
//!    sequence numbers strictly increase (no reordering, no duplicate), every
//!    received message was one the sender was told was accepted, and every
//!    accepted message whose two ends both stayed up until the end of the run
//!    was delivered. Accepted messages whose sender or recipient instance was
//!    shut down afterwards may be lost ("accepted" only means queued for a
//!    connection; the connection then died): they are counted and printed.
//!
//! A restarted node is a new instance, so sequence numbers are keyed by
//! (sender key, sender incarnation). Which recipient instance a message was
//! accepted for is known from the timeline: after a node is shut down, the
//! test waits until every live node has dropped it before it can be
//! restarted, so a message accepted by a send that started after the
//! restart went to a connection to the new instance.
//!
//! Environment: `SHOAL_CHURN_SECS` (churn duration, default 60),
//! `SHOAL_CHURN_SEED` (RNG seed, default from the clock; always printed),
//! `SHOAL_CHURN_BACKEND` (`auto` (default), `io_uring` or `epoll`). One
//! backend per run keeps this file's CI time near 90 s; the other backend is
//! run by setting `SHOAL_CHURN_BACKEND`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender as StdSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal::{
    Backend, ChannelConfig, Config, Network, NetworkHandle, Priority, PublicKey, Receiver,
    Recipients, Sender,
};

const N: u64 = 30;
const MAX_DOWN: usize = 5;
const BOOTSTRAPPERS: [u64; 2] = [1, 2];
const CHANNEL: u32 = 1;
/// Pause between two sends of one node.
const SEND_PERIOD: Duration = Duration::from_millis(10);
/// Chance that a tick is a burst to one peer instead of one send (bursts
/// keep queues non-empty when connections die).
const BURST_CHANCE: f64 = 0.01;
/// Sends in one burst.
const BURST: std::ops::Range<usize> = 50..300;
/// Largest recipient list of one `Recipients::Some` send.
const MAX_FANOUT: usize = 6;
/// Flush deadline of a node's graceful shutdown.
const FLUSH: Duration = Duration::from_millis(200);
/// Bound on every live node dropping a node that was shut down.
const GONE_WAIT: Duration = Duration::from_secs(20);
/// Bound on the mesh converging (initially and after churn).
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
/// Bound on the end-of-run markers arriving.
const FIN_WAIT: Duration = Duration::from_secs(30);
/// Bound on rebinding a restarted node's port (an outgoing connection may
/// briefly hold it as its ephemeral port).
const BIND_TRIES: u32 = 100;

const KIND_DATA: u8 = 0;
const KIND_FIN: u8 = 1;

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Microseconds since the test started.
fn now_us() -> u64 {
    t0().elapsed().as_micros() as u64
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed_index(seed: u64) -> usize {
    (seed - 1) as usize
}

// ---------------------------------------------------------------- payload

/// kind u8 | sender seed u8 | incarnation u32 | priority u8 | n u8 |
/// n x (recipient seed u8, seq u64) | filler (one byte value repeated).
fn encode(sender: u64, inc: u32, high: bool, entries: &[(u64, u64)], len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len.max(8 + 9 * entries.len()));
    v.push(KIND_DATA);
    v.push(sender as u8);
    v.extend_from_slice(&inc.to_le_bytes());
    v.push(high as u8);
    v.push(entries.len() as u8);
    for (r, s) in entries {
        v.push(*r as u8);
        v.extend_from_slice(&s.to_le_bytes());
    }
    let fill = filler(sender, entries[0].1);
    v.resize(len.max(v.len()), fill);
    Bytes::from(v)
}

fn filler(sender: u64, first_seq: u64) -> u8 {
    (sender.wrapping_mul(31).wrapping_add(first_seq) & 0xff) as u8
}

fn fin(sender: u64, inc: u32) -> Bytes {
    let mut v = vec![KIND_FIN, sender as u8];
    v.extend_from_slice(&inc.to_le_bytes());
    Bytes::from(v)
}

struct Decoded {
    sender: u64,
    inc: u32,
    high: bool,
    mine: Option<u64>,
    intact: bool,
}

fn decode(me: u64, p: &[u8]) -> Option<Decoded> {
    if p.len() < 8 || p[0] != KIND_DATA {
        return None;
    }
    let sender = p[1] as u64;
    let inc = u32::from_le_bytes(p[2..6].try_into().ok()?);
    let high = p[6] != 0;
    let n = p[7] as usize;
    let end = 8 + 9 * n;
    if n == 0 || p.len() < end {
        return None;
    }
    let mut mine = None;
    let mut first = 0;
    for i in 0..n {
        let at = 8 + 9 * i;
        let seq = u64::from_le_bytes(p[at + 1..at + 9].try_into().ok()?);
        if i == 0 {
            first = seq;
        }
        if p[at] as u64 == me {
            mine = Some(seq);
        }
    }
    let fill = filler(sender, first);
    let intact = p[end..].iter().all(|b| *b == fill);
    Some(Decoded {
        sender,
        inc,
        high,
        mine,
        intact,
    })
}

// ---------------------------------------------------------------- logs

#[derive(Clone, Copy)]
struct SentRec {
    seq: u64,
    /// When the send call started (µs since the test started).
    t0: u64,
    accepted: bool,
    /// The recipient instance that got it.
    delivered_to: Option<u32>,
}

/// What one sender instance sent: per (recipient index, priority).
struct SenderLog {
    seed: u64,
    inc: u32,
    sends: u64,
    full: u64,
    not_connected: u64,
    recs: Vec<Vec<SentRec>>,
}

fn lane(recipient: u64, high: bool) -> usize {
    seed_index(recipient) * 2 + high as usize
}

/// What one receiver instance got: per (sender seed, sender incarnation,
/// priority) the sequence numbers in arrival order.
#[derive(Default)]
struct RecvLog {
    got: HashMap<(u64, u32, bool), Vec<u64>>,
    fins: HashSet<u64>,
    /// Out-of-order or repeated sequence numbers (with context).
    order_violations: Vec<String>,
    malformed: u64,
    not_addressed_to_me: u64,
    wrong_key: u64,
    corrupt: u64,
}

struct FinCount {
    n: Mutex<usize>,
    cv: Condvar,
}

// ---------------------------------------------------------------- nodes

struct Live {
    inc: u32,
    handle: NetworkHandle,
    sender: Sender,
    stop_tx: Option<StdSender<()>>,
    send_thread: Option<JoinHandle<SenderLog>>,
    recv_thread: JoinHandle<RecvLog>,
    fins: Arc<FinCount>,
}

#[derive(Clone, Copy, Debug)]
struct IncTimes {
    start_us: u64,
    /// When its shutdown began (None: alive at the end of the run).
    stop_us: Option<u64>,
}

struct Slot {
    seed: u64,
    addr: SocketAddr,
    live: Option<Live>,
    incs: Vec<IncTimes>,
    restart_at: Option<Instant>,
}

struct Ctx {
    backend: Backend,
    keys: Vec<PublicKey>,
    boot: Vec<(u64, SocketAddr)>,
    bind_retries: AtomicUsize,
}

fn config(ctx: &Ctx, seed: u64, addr: SocketAddr) -> Config {
    let mut cfg = Config::local(Some(addr)).with_identity(signer(seed));
    cfg.io.backend = ctx.backend;
    // Half the nodes run two shards: connections, replacements and
    // reroutes spread over shards within the one run (rather than a second
    // 60 s run per layout).
    cfg.io.shards = 1 + (seed % 2) as usize;
    cfg.io.uring.recv_buffers = 32;
    cfg.io.shard_queue = 4096;
    cfg
}

/// Starts instance `inc` of node `seed` on `addr` (retrying the bind while
/// the port is briefly taken), with its sender and receiver threads.
fn start(ctx: &Ctx, seed: u64, addr: SocketAddr, inc: u32, rng_seed: u64) -> Live {
    let mut tries = 0;
    let (handle, sender, receiver) = loop {
        let (mut net, oracle) = Network::new(config(ctx, seed, addr)).expect("config");
        let (tx, rx) = net
            .register(ChannelConfig::new(CHANNEL).max_size(1 << 20))
            .expect("register");
        oracle.register(0, ctx.keys.clone());
        for (s, a) in &ctx.boot {
            if *s != seed {
                oracle.add_address(key(*s), *a);
            }
        }
        match net.start() {
            Ok(h) => break (h, tx, rx),
            Err(e) => {
                tries += 1;
                ctx.bind_retries.fetch_add(1, Ordering::Relaxed);
                assert!(
                    tries < BIND_TRIES,
                    "node {seed} could not restart on {addr}: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    if ctx.backend != Backend::Auto {
        assert_eq!(handle.backend(), ctx.backend);
    }
    if addr.port() != 0 {
        assert_eq!(handle.local_addr(), Some(addr), "same listen address");
    }
    let fins = Arc::new(FinCount {
        n: Mutex::new(0),
        cv: Condvar::new(),
    });
    let recv_thread = {
        let fins = fins.clone();
        std::thread::Builder::new()
            .name(format!("churn-recv-{seed}.{inc}"))
            .spawn(move || receive(seed, receiver, fins))
            .unwrap()
    };
    let (stop_tx, stop_rx) = channel::<()>();
    let send_thread = {
        let sender = sender.clone();
        let keys = ctx.keys.clone();
        std::thread::Builder::new()
            .name(format!("churn-send-{seed}.{inc}"))
            .spawn(move || {
                let mut log = SenderLog {
                    seed,
                    inc,
                    sends: 0,
                    full: 0,
                    not_connected: 0,
                    recs: vec![Vec::new(); 2 * N as usize],
                };
                let mut next_seq = vec![1u64; 2 * N as usize];
                let mut rng = StdRng::seed_from_u64(rng_seed);
                let others: Vec<u64> = (1..=N).filter(|s| *s != seed).collect();
                // Until the stop channel closes (its sender is dropped).
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(SEND_PERIOD) {
                    let mut send = |one: Option<u64>, rng: &mut StdRng, log: &mut SenderLog| {
                        send_one(&sender, &keys, &others, one, rng, &mut next_seq, log)
                    };
                    if rng.gen_bool(BURST_CHANCE) {
                        let to = others[rng.gen_range(0..others.len())];
                        for _ in 0..rng.gen_range(BURST) {
                            send(Some(to), &mut rng, &mut log);
                        }
                    } else {
                        send(None, &mut rng, &mut log);
                    }
                }
                log
            })
            .unwrap()
    };
    Live {
        inc,
        handle,
        sender,
        stop_tx: Some(stop_tx),
        send_thread: Some(send_thread),
        recv_thread,
        fins,
    }
}

impl Live {
    /// Stops the sender thread and returns its log.
    fn stop_sender(&mut self) -> SenderLog {
        drop(self.stop_tx.take());
        self.send_thread
            .take()
            .expect("sender running")
            .join()
            .expect("sender thread")
    }
}

/// One send to `one`, or to 1..=MAX_FANOUT random peers, one sequence
/// number each.
fn send_one(
    sender: &Sender,
    keys: &[PublicKey],
    others: &[u64],
    one: Option<u64>,
    rng: &mut StdRng,
    next_seq: &mut [u64],
    log: &mut SenderLog,
) {
    let fanout = if one.is_some() {
        1
    } else {
        rng.gen_range(1..=MAX_FANOUT)
    };
    let mut targets: Vec<u64> = one.into_iter().collect();
    while targets.len() < fanout {
        let t = others[rng.gen_range(0..others.len())];
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let high = rng.gen_bool(0.2);
    let entries: Vec<(u64, u64)> = targets
        .iter()
        .map(|t| {
            let l = lane(*t, high);
            let s = next_seq[l];
            next_seq[l] += 1;
            (*t, s)
        })
        .collect();
    // Mostly small; now and then a message that spans several frames.
    let len = if one.is_none() && rng.gen_bool(0.01) {
        rng.gen_range(64 * 1024..300 * 1024)
    } else {
        rng.gen_range(16..1024)
    };
    let payload = encode(log.seed, log.inc, high, &entries, len);
    let listed: Vec<PublicKey> = targets
        .iter()
        .map(|t| keys[seed_index(*t)].clone())
        .collect();
    let recipients = if targets.len() == 1 {
        Recipients::One(&listed[0])
    } else {
        Recipients::Peers(&listed)
    };
    let priority = if high { Priority::High } else { Priority::Low };
    let t0 = now_us();
    let report = sender.send(recipients, payload, priority);
    assert_eq!(report.refused(), None, "send on a running network");
    log.sends += 1;
    log.full += report.full().count() as u64;
    log.not_connected += report.not_connected().count() as u64;
    for (t, s) in entries {
        let accepted = report.accepted().any(|k| *k == keys[seed_index(t)]);
        log.recs[lane(t, high)].push(SentRec {
            seq: s,
            t0,
            accepted,
            delivered_to: None,
        });
    }
}

fn receive(me: u64, rx: Receiver, fins: Arc<FinCount>) -> RecvLog {
    let mut log = RecvLog::default();
    while let Ok((peer, payload)) = rx.recv_blocking() {
        if payload.first() == Some(&KIND_FIN) && payload.len() == 6 {
            let s = payload[1] as u64;
            if (1..=N).contains(&s) && peer == key(s) && log.fins.insert(s) {
                let mut n = fins.n.lock().unwrap();
                *n += 1;
                fins.cv.notify_all();
            }
            continue;
        }
        let Some(d) = decode(me, &payload) else {
            log.malformed += 1;
            continue;
        };
        if !(1..=N).contains(&d.sender) || peer != key(d.sender) {
            log.wrong_key += 1;
            continue;
        }
        if !d.intact {
            log.corrupt += 1;
        }
        let Some(seq) = d.mine else {
            log.not_addressed_to_me += 1;
            continue;
        };
        let seqs = log.got.entry((d.sender, d.inc, d.high)).or_default();
        if let Some(&last) = seqs.last() {
            if seq <= last && log.order_violations.len() < 20 {
                log.order_violations.push(format!(
                    "from {}.{} (high={}) to {me}: seq {seq} after {last} at {} ms",
                    d.sender,
                    d.inc,
                    d.high,
                    now_us() / 1000
                ));
            } else if seq <= last {
                log.order_violations.push(String::new());
            }
        }
        seqs.push(seq);
    }
    log
}

// ---------------------------------------------------------------- churn

struct Cluster {
    ctx: Ctx,
    slots: Vec<Slot>,
    rng: StdRng,
    sent: Vec<SenderLog>,
    recv: Vec<(u64, u32, RecvLog)>,
    closes: BTreeMap<&'static str, u64>,
    counters: BTreeMap<&'static str, u64>,
    /// (dead node, live node that still listed it after GONE_WAIT).
    not_dropped: Vec<(u64, u64)>,
    /// Time for every live node to drop a stopped node (ms).
    drop_ms: Vec<u64>,
    restarts: u64,
}

const CLOSE_LABELS: [&str; 12] = [
    "replaced",
    "idle_timeout",
    "io_error",
    "remote_close",
    "local_close",
    "shutdown",
    "handshake_timeout",
    "unauthorized",
    "bad_timestamp",
    "protocol_violation",
    "decrypt_failed",
    "bad_frame",
];

impl Cluster {
    fn live_seeds(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.live.is_some())
            .map(|s| s.seed)
            .collect()
    }

    fn collect_metrics(&mut self, h: &NetworkHandle) {
        let m = h.metrics();
        for l in CLOSE_LABELS {
            *self.closes.entry(l).or_default() += m.close_count(l);
        }
        for (name, v) in [
            ("dials", m.dials.get()),
            ("dial_failures", m.dial_failures.get()),
            ("send_queue_full", m.send_full.get()),
            ("send_not_connected", m.send_not_connected.get()),
            ("control_dropped", m.control_dropped.get()),
            ("handshakes_ok", m.handshake_count("ok")),
        ] {
            *self.counters.entry(name).or_default() += v;
        }
    }

    /// Stops the sender, shuts the node down, collects its logs, then waits
    /// until every live node has dropped it.
    fn stop(&mut self, i: usize) {
        let mut live = self.slots[i].live.take().expect("live");
        let slog = live.stop_sender();
        self.sent.push(slog);
        self.slots[i].incs.last_mut().unwrap().stop_us = Some(now_us());
        self.collect_metrics(&live.handle);
        let stopping = Instant::now();
        live.handle.shutdown(FLUSH);
        let rlog = live.recv_thread.join().expect("receiver thread");
        self.recv.push((self.slots[i].seed, live.inc, rlog));
        let gone = key(self.slots[i].seed);
        let dead = self.slots[i].seed;
        let deadline = Instant::now() + GONE_WAIT;
        for s in &self.slots {
            if let Some(l) = &s.live {
                let left = deadline.saturating_duration_since(Instant::now());
                if !l.handle.wait_peers(left, |p| !p.contains(&gone)) {
                    self.not_dropped.push((dead, s.seed));
                }
            }
        }
        self.drop_ms.push(stopping.elapsed().as_millis() as u64);
    }

    fn restart(&mut self, i: usize) {
        let inc = self.slots[i].incs.len() as u32;
        let seed = self.slots[i].seed;
        let rng_seed = self.rng.gen();
        let addr = self.slots[i].addr;
        self.slots[i].incs.push(IncTimes {
            start_us: now_us(),
            stop_us: None,
        });
        let live = start(&self.ctx, seed, addr, inc, rng_seed);
        self.slots[i].live = Some(live);
        self.slots[i].restart_at = None;
        self.restarts += 1;
    }
}

/// Which instance of `recipient` a send that started at `t0` reached: the
/// last one started at or before `t0` (see the module docs).
fn attribute(incs: &[IncTimes], t0: u64) -> Option<usize> {
    incs.iter().rposition(|x| x.start_us <= t0)
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn churn_keeps_order_and_reconverges() {
    let started = t0();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let backend = match std::env::var("SHOAL_CHURN_BACKEND").as_deref() {
        Ok("epoll") => Backend::Epoll,
        Ok("io_uring") => {
            if !backend_available(Backend::IoUring) {
                return;
            }
            Backend::IoUring
        }
        _ => Backend::Auto,
    };
    let secs = env_u64("SHOAL_CHURN_SECS").unwrap_or(60);
    let seed = env_u64("SHOAL_CHURN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "churn: seed {seed} (rerun with SHOAL_CHURN_SEED={seed}), {secs} s, {N} nodes, \
         backend {backend:?}, at most {MAX_DOWN} down"
    );
    let fds_before = open_fds();
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<PublicKey> = (1..=N).map(key).collect();

    // Bootstrappers first (their addresses are what everyone else knows).
    let mut ctx = Ctx {
        backend,
        keys: keys.clone(),
        boot: Vec::new(),
        bind_retries: AtomicUsize::new(0),
    };
    let mut slots: Vec<Slot> = Vec::new();
    for s in 1..=N {
        let live = start(&ctx, s, any_addr(), 0, rng.gen());
        let addr = live.handle.local_addr().unwrap();
        if BOOTSTRAPPERS.contains(&s) {
            // Node 1 starts alone; node 2 dials it; everyone else (and any
            // restarted node) knows both.
            ctx.boot.push((s, addr));
        }
        slots.push(Slot {
            seed: s,
            addr,
            live: Some(live),
            incs: vec![IncTimes {
                start_us: now_us(),
                stop_us: None,
            }],
            restart_at: None,
        });
    }
    let mut cl = Cluster {
        ctx,
        slots,
        rng,
        sent: Vec::new(),
        recv: Vec::new(),
        closes: BTreeMap::new(),
        counters: BTreeMap::new(),
        not_dropped: Vec::new(),
        drop_ms: Vec::new(),
        restarts: 0,
    };
    let backend_used = cl.slots[0].live.as_ref().unwrap().handle.backend();
    let initial = Instant::now();
    let initial_ok = wait_mesh(&cl, CONVERGE_WAIT);
    eprintln!(
        "churn: initial mesh ({backend_used:?}) {} in {:.2?}",
        if initial_ok { "complete" } else { "INCOMPLETE" },
        initial.elapsed()
    );
    assert!(
        initial_ok,
        "the initial mesh did not form within {CONVERGE_WAIT:?}"
    );

    // Churn.
    let churn_start = Instant::now();
    let churn_end = churn_start + Duration::from_secs(secs);
    let mut next_stop = churn_start + Duration::from_millis(cl.rng.gen_range(200..800));
    let mut max_down_seen = 0;
    let mut events = 0u64;
    while Instant::now() < churn_end && events < 100_000 {
        events += 1;
        let now = Instant::now();
        // Restarts due.
        for i in 0..cl.slots.len() {
            if cl.slots[i].restart_at.is_some_and(|t| t <= now) {
                cl.restart(i);
            }
        }
        let down: Vec<usize> = (0..cl.slots.len())
            .filter(|i| cl.slots[*i].live.is_none())
            .collect();
        if now >= next_stop {
            if down.len() < MAX_DOWN {
                let live = cl.live_seeds();
                let victim = seed_index(live[cl.rng.gen_range(0..live.len())]);
                cl.stop(victim);
                let down_for = Duration::from_millis(cl.rng.gen_range(300..3000));
                cl.slots[victim].restart_at = Some(Instant::now() + down_for);
                max_down_seen = max_down_seen.max(down.len() + 1);
            }
            next_stop = Instant::now() + Duration::from_millis(cl.rng.gen_range(200..1200));
        }
        // Sleep until the next scheduled event (the schedule, not a poll).
        let next_restart = cl.slots.iter().filter_map(|s| s.restart_at).min();
        let wake = [Some(next_stop), next_restart, Some(churn_end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    // Churn over: bring every node back now.
    for i in 0..cl.slots.len() {
        if cl.slots[i].live.is_none() {
            cl.restart(i);
        }
    }
    let churn_elapsed = churn_start.elapsed();
    let reconverge = Instant::now();
    let converged = wait_mesh(&cl, CONVERGE_WAIT);
    let reconverge_time = reconverge.elapsed();
    let missing: Vec<(u64, usize)> = cl
        .slots
        .iter()
        .map(|s| (s.seed, s.live.as_ref().unwrap().handle.peers().len()))
        .filter(|(_, n)| *n != (N - 1) as usize)
        .collect();
    eprintln!(
        "churn: {:.1?} of churn, {} restarts, at most {max_down_seen} down at once; mesh {} \
         {reconverge_time:.2?} after churn stopped{}",
        churn_elapsed,
        cl.restarts,
        if converged {
            "reconverged"
        } else {
            "NOT reconverged"
        },
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (seed, peers): {missing:?}")
        }
    );

    // Stop the senders, then one end marker per (sender, recipient): a
    // low-priority message queued after everything that sender sent.
    for i in 0..cl.slots.len() {
        let slog = cl.slots[i].live.as_mut().unwrap().stop_sender();
        cl.sent.push(slog);
    }
    let mut fin_not_accepted = Vec::new();
    for s in &cl.slots {
        let live = s.live.as_ref().unwrap();
        for r in 1..=N {
            if r == s.seed {
                continue;
            }
            let send = || {
                live.sender
                    .send_wait(&key(r), fin(s.seed, live.inc), Priority::Low)
                    .blocking()
                    .result()
            };
            let mut sent = send();
            if matches!(sent, Err(shoal::SendError::NotConnected)) {
                // A duplicate-connection tie-break that ends after the mesh
                // check can close the connection it saw (the peer kept the
                // other one, still handshaking here): wait for that one.
                let back = live
                    .handle
                    .wait_peers(CONVERGE_WAIT, |p| p.contains(&key(r)));
                if back {
                    sent = send();
                }
            }
            if let Err(e) = sent {
                fin_not_accepted.push((s.seed, r, e));
            }
        }
    }
    let fin_deadline = Instant::now() + FIN_WAIT;
    let mut fins_missing = Vec::new();
    for s in &cl.slots {
        let live = s.live.as_ref().unwrap();
        let mut n = live.fins.n.lock().unwrap();
        while *n < (N - 1) as usize {
            let left = fin_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            n = live.fins.cv.wait_timeout(n, left).unwrap().0;
        }
        if *n < (N - 1) as usize {
            fins_missing.push((s.seed, *n));
        }
    }
    // Shut everything down and collect the receivers' logs.
    for i in 0..cl.slots.len() {
        let live = cl.slots[i].live.take().unwrap();
        cl.collect_metrics(&live.handle);
        live.handle.shutdown(FLUSH);
        let rlog = live.recv_thread.join().expect("receiver thread");
        cl.recv.push((cl.slots[i].seed, live.inc, rlog));
    }

    // ------------------------------------------------------------ analysis
    let incs: Vec<Vec<IncTimes>> = cl.slots.iter().map(|s| s.incs.clone()).collect();
    let mut sent_index: HashMap<(u64, u32), usize> = HashMap::new();
    for (i, l) in cl.sent.iter().enumerate() {
        sent_index.insert((l.seed, l.inc), i);
    }
    let mut order_violations: Vec<String> = Vec::new();
    let mut order_violation_count = 0usize;
    let (mut malformed, mut wrong_key, mut corrupt, mut not_mine) = (0, 0, 0, 0);
    let mut delivered = 0u64;
    let mut delivered_not_accepted: Vec<String> = Vec::new();
    let mut delivered_unknown = 0u64;
    let mut delivered_to_other_instance = 0u64;
    for (r, rinc, log) in &cl.recv {
        order_violation_count += log.order_violations.len();
        order_violations.extend(
            log.order_violations
                .iter()
                .filter(|s| !s.is_empty())
                .cloned(),
        );
        malformed += log.malformed;
        wrong_key += log.wrong_key;
        corrupt += log.corrupt;
        not_mine += log.not_addressed_to_me;
        for ((s, sinc, high), seqs) in &log.got {
            let Some(&si) = sent_index.get(&(*s, *sinc)) else {
                delivered_unknown += seqs.len() as u64;
                continue;
            };
            let recs = &mut cl.sent[si].recs[lane(*r, *high)];
            for seq in seqs {
                delivered += 1;
                match recs.binary_search_by_key(seq, |x| x.seq) {
                    Ok(k) => {
                        let rec = &mut recs[k];
                        if !rec.accepted && delivered_not_accepted.len() < 20 {
                            delivered_not_accepted.push(format!(
                                "{s}.{sinc} -> {r}.{rinc} seq {seq} (high={high}) sent at {} ms",
                                rec.t0 / 1000
                            ));
                        } else if !rec.accepted {
                            delivered_not_accepted.push(String::new());
                        }
                        if attribute(&incs[seed_index(*r)], rec.t0) != Some(*rinc as usize) {
                            delivered_to_other_instance += 1;
                        }
                        rec.delivered_to = Some(*rinc);
                    }
                    Err(_) => delivered_unknown += 1,
                }
            }
        }
    }
    // Every accepted message: delivered, or lost with a reason.
    let (mut total, mut accepted) = (0u64, 0u64);
    let (mut sends, mut full, mut not_connected) = (0u64, 0u64, 0u64);
    // A lost message (accepted, never delivered) is either
    // - a gap: a later message of the same sender instance, priority and
    //   recipient instance was delivered, so both ends and the pair's
    //   connectivity outlived it (a violation whatever happened later);
    // - stale: accepted after the recipient's shutdown had begun (the sender
    //   had not seen the connection close yet): allowed;
    // - lost at a shutdown: the recipient or the sender instance was shut
    //   down later, with nothing later delivered: allowed;
    // - lost with both ends up until the end: a violation.
    let mut lost_stale = 0u64;
    let mut lost_recipient_later = 0u64;
    let mut lost_sender_later = 0u64;
    let mut lost_violations: Vec<String> = Vec::new();
    let mut lost_gap = 0u64;
    let mut lost_both_up = 0u64;
    let mut lost_age_ms: Vec<u64> = Vec::new();
    for l in &cl.sent {
        sends += l.sends;
        full += l.full;
        not_connected += l.not_connected;
        let sender_inc = incs[seed_index(l.seed)][l.inc as usize];
        let sender_stop = sender_inc.stop_us;
        for (ln, recs) in l.recs.iter().enumerate() {
            let r = (ln / 2) as u64 + 1;
            let high = ln % 2 == 1;
            let r_incs = &incs[seed_index(r)];
            // Per recipient instance: the next delivered message (newest
            // first walk), to spot gaps.
            let mut next_delivered: HashMap<u32, SentRec> = HashMap::new();
            for rec in recs.iter().rev() {
                total += 1;
                if let Some(j) = rec.delivered_to {
                    next_delivered.insert(j, *rec);
                }
                if !rec.accepted {
                    continue;
                }
                accepted += 1;
                if rec.delivered_to.is_some() {
                    continue;
                }
                let rinc = attribute(r_incs, rec.t0);
                let recipient_stop = rinc.and_then(|j| r_incs[j].stop_us);
                let later = rinc.and_then(|j| next_delivered.get(&(j as u32)));
                let what = |why: &str| {
                    format!(
                        "{why}: {}.{} (up {}..{:?} ms) -> {r}.{} (up {}..{:?} ms) seq {} \
                         (high={high}) accepted at {} ms{}",
                        l.seed,
                        l.inc,
                        sender_inc.start_us / 1000,
                        sender_stop.map(|t| t / 1000),
                        rinc.unwrap_or(usize::MAX),
                        rinc.map(|j| r_incs[j].start_us / 1000).unwrap_or(0),
                        recipient_stop.map(|t| t / 1000),
                        rec.seq,
                        rec.t0 / 1000,
                        later
                            .map(|n| format!(
                                "; seq {} accepted at {} ms was delivered",
                                n.seq,
                                n.t0 / 1000
                            ))
                            .unwrap_or_default()
                    )
                };
                if later.is_some() {
                    lost_gap += 1;
                    if lost_violations.len() < 20 {
                        lost_violations.push(what("gap"));
                    }
                    continue;
                }
                if recipient_stop.is_some_and(|t| t <= rec.t0) {
                    lost_stale += 1;
                    continue;
                }
                match (sender_stop, recipient_stop) {
                    (None, None) => {
                        lost_both_up += 1;
                        if lost_violations.len() < 20 {
                            lost_violations.push(what("both ends up"));
                        }
                    }
                    (s, r) => {
                        let death = [s, r].into_iter().flatten().min().unwrap();
                        if Some(death) == r {
                            lost_recipient_later += 1;
                        } else {
                            lost_sender_later += 1;
                        }
                        lost_age_ms.push(death.saturating_sub(rec.t0) / 1000);
                    }
                }
            }
        }
    }
    let lost_total = lost_stale + lost_recipient_later + lost_sender_later;
    let max_age = lost_age_ms.iter().copied().max().unwrap_or(0);
    let p50_age = percentile(&mut lost_age_ms, 0.5);
    eprintln!(
        "churn: {sends} sends, {total} messages (one per recipient): {accepted} accepted, \
         {full} refused full, {not_connected} refused not connected; {delivered} delivered"
    );
    eprintln!(
        "churn: accepted but lost because the connection died: {lost_total} = {lost_stale} \
         accepted after the recipient's shutdown had begun + {lost_recipient_later} accepted \
         before the recipient's shutdown + {lost_sender_later} accepted before the sender's \
         shutdown (these two: accepted p50 {p50_age} ms, max {max_age} ms before the shutdown)"
    );
    eprintln!(
        "churn: VIOLATIONS: lost although a later message of the same sender, priority and \
         recipient instance was delivered: {lost_gap}; lost with both ends up until the end: \
         {lost_both_up}; delivered to an instance other than the one the send was attributed \
         to: {delivered_to_other_instance}"
    );
    for v in &lost_violations {
        eprintln!("churn:   {v}");
    }
    let mut drop_ms = cl.drop_ms.clone();
    eprintln!(
        "churn: a stopped node was dropped by every live node in p50 {} ms, max {} ms \
         (shutdown included); port rebind retries {}",
        percentile(&mut drop_ms, 0.5),
        drop_ms.iter().max().copied().unwrap_or(0),
        cl.ctx.bind_retries.load(Ordering::Relaxed)
    );
    eprintln!("churn: closes by reason (all instances) {:?}", cl.closes);
    eprintln!("churn: counters (all instances) {:?}", cl.counters);

    // Leaks: every socket, thread and buffer pool released.
    let fds_after = open_fds();
    let threads_after = shoal_threads();
    let pools_after = shoal::engine::test_hooks::live_buffer_pools();
    eprintln!(
        "churn: fds before {fds_before}, after {fds_after}; shoal threads after {threads_after}; \
         live buffer pools after {pools_after}; total {:.1?}",
        started.elapsed()
    );

    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
    assert!(
        cl.not_dropped.is_empty(),
        "(stopped node, live node that still listed it after {GONE_WAIT:?}): {:?}",
        cl.not_dropped
    );
    assert!(
        converged,
        "the mesh did not reconverge within {CONVERGE_WAIT:?} after churn: (seed, peers) {missing:?}"
    );
    assert!(
        fin_not_accepted.is_empty(),
        "end markers refused on the converged mesh: {fin_not_accepted:?}"
    );
    assert!(
        fins_missing.is_empty(),
        "end markers missing after {FIN_WAIT:?} (recipient, markers received): {fins_missing:?}"
    );
    assert_eq!(
        order_violation_count, 0,
        "reordered or duplicated messages: {order_violations:#?}"
    );
    assert!(
        delivered_not_accepted.is_empty(),
        "{} messages delivered that the sender was told were not accepted: {:#?}",
        delivered_not_accepted.len(),
        delivered_not_accepted
            .iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    );
    assert_eq!(delivered_unknown, 0, "delivered messages nobody sent");
    assert_eq!(
        (malformed, wrong_key, corrupt, not_mine),
        (0, 0, 0, 0),
        "(malformed, wrong sender key, corrupt payload, not addressed to the recipient)"
    );
    assert_eq!(
        (lost_gap, lost_both_up),
        (0, 0),
        "accepted messages lost although both ends stayed up (gaps, lost with both ends up \
         until the end): {lost_violations:#?}"
    );
    assert_eq!(threads_after, 0, "no shoal thread left");
    assert_eq!(pools_after, 0, "every buffer pool freed");
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors leaked: {fds_before} before, {fds_after} after"
    );
}

/// Waits (bounded) until every node is connected to all the others.
fn wait_mesh(cl: &Cluster, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let want = (N - 1) as usize;
    cl.slots.iter().all(|s| {
        let left = deadline.saturating_duration_since(Instant::now());
        s.live
            .as_ref()
            .unwrap()
            .handle
            .wait_peers(left, |p| p.len() == want)
    })
}
