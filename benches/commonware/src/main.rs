//! cw-bench: commonware-p2p (authenticated::lookup) loopback throughput.
//!
//! Two peers (A, B) in one process on 127.0.0.1, each its own lookup
//! `Network`, authorized to each other, one channel. A sends `--messages`
//! messages of `--size` bytes to B; B counts them and checks each length.
//!
//! commonware-p2p is lossy by design: `send` only reports whether the
//! router mailbox accepted the message; the per-peer relay queue and the
//! receiver's inbound mailbox silently drop on overflow. To get "every
//! message delivered" without dropping anything, A keeps at most `--window`
//! messages outstanding (window <= per-peer relay capacity and <= inbound
//! mailbox capacity), and B acks its delivered count every window/4 messages
//! (and at the end). If the router mailbox rejects a send, A retries it; a
//! rejected message is not counted as sent.
//!
//! Rate: first send -> last delivery (as observed by B).
//! Every loop is bounded by a 60 s deadline; a shortfall is reported.

use commonware_cryptography::{ChaCha20Poly1305, Signer, ed25519};
use commonware_macros::select;
use commonware_p2p::{
    Address, AddressableManager, CheckedSender as _, LimitedSender as _, Receiver as _, Recipients,
    authenticated::lookup,
};
use commonware_runtime::{
    Clock, IoBuf, Quota, Runner as _, Spawner, iouring, tokio as cw_tokio,
};
use commonware_stream::{
    cups::{self, Cups},
    sake::{self, Sake},
};
use commonware_utils::{NZU32, NZUsize, ordered::Map};
use commonware_actor::{Feedback, Unreliable};
use futures::FutureExt as _;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    num::NonZeroU32,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(60);

struct Args {
    size: usize,
    messages: u64,
    window: u64,
    runtime: String,
    workers: usize,
    yield_every: u64,
    batch: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        size: 65536,
        messages: 20000,
        window: 0,
        runtime: "iouring".into(),
        workers: 2,
        yield_every: 0,
        batch: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("missing value for {k}"));
        match k.as_str() {
            "--size" => a.size = v.parse().unwrap(),
            "--messages" => a.messages = v.parse().unwrap(),
            "--window" => a.window = v.parse().unwrap(),
            "--runtime" => a.runtime = v,
            "--workers" => a.workers = v.parse().unwrap(),
            "--yield-every" => a.yield_every = v.parse().unwrap(),
            "--batch" => a.batch = v.parse().unwrap(),
            _ => panic!("unknown arg {k}"),
        }
    }
    assert!(a.size >= 8, "size must be >= 8 (acks are 8 bytes)");
    if a.window == 0 {
        // ~64 MiB in flight, between 64 and 8192 messages.
        a.window = ((64 << 20) / a.size as u64).clamp(64, 8192);
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let args = parse_args();
    match args.runtime.as_str() {
        "iouring" => {
            let cfg = iouring::Config::new().with_worker_threads(args.workers);
            iouring::Runner::new(cfg).start(|ctx| run(ctx, args));
        }
        "tokio" => {
            let cfg = cw_tokio::Config::new().with_worker_threads(args.workers);
            cw_tokio::Runner::new(cfg).start(|ctx| run(ctx, args));
        }
        r => panic!("unknown runtime {r}"),
    }
}

async fn run<E>(context: E, args: Args)
where
    E: Spawner
        + Clock
        + commonware_runtime::Metrics
        + commonware_runtime::Network
        + commonware_runtime::Resolver
        + rand_core::CryptoRng
        + commonware_runtime::Supervisor,
{
    let size = args.size;
    let n = args.messages;
    let window = args.window;
    // Per-peer relay (outbox) capacity: must be >= window so nothing is dropped.
    let mailbox = NZUsize!(16384).max(std::num::NonZeroUsize::new(2 * window as usize).unwrap());
    // Rate high enough not to throttle: 1e9 msgs/s (1 ns replenish), burst
    // large enough that the inbound mailbox (peers * sets * burst) holds the window.
    let burst = NonZeroU32::new((2 * window as u32).max(4096)).unwrap();
    let quota = Quota::per_second(NZU32!(1_000_000_000)).allow_burst(burst);
    let max_message_size = size.max(64) as u32;

    let keys: Vec<ed25519::PrivateKey> = (0..2).map(ed25519::PrivateKey::from_seed).collect();
    let addrs: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()))
        .collect();
    let peers: Vec<(ed25519::PublicKey, Address)> = keys
        .iter()
        .zip(&addrs)
        .map(|(k, a)| (k.public_key(), (*a).into()))
        .collect();

    let mut chans = Vec::new();
    for i in 0..2 {
        let cfg = lookup::Config::local(
            Cups::<_, ChaCha20Poly1305>::new(
                Sake {
                    signer: keys[i].clone(),
                    synchrony_bound: Duration::from_secs(5),
                    max_handshake_age: Duration::from_secs(10),
                    version: sake::Version::V1,
                },
                cups::Version::V1,
            ),
            b"cw-bench",
            addrs[i],
            NZUsize!(2),
            max_message_size,
            mailbox,
        );
        let mut cfg = cfg;
        // Config::local default is 8 queued messages per send_many (one write).
        cfg.send_batch_size = std::num::NonZeroUsize::new(args.batch).unwrap();
        let (mut network, mut oracle) =
            lookup::Network::new(context.child(if i == 0 { "a" } else { "b" }), cfg);
        let _ = oracle.track(0, Map::try_from(peers.clone()).unwrap());
        let (s, r) = network.register(0, quota);
        network.start();
        chans.push((s, r, oracle));
    }
    let (mut b_tx, mut b_rx, _b_oracle) = chans.pop().unwrap();
    let (mut a_tx, mut a_rx, _a_oracle) = chans.pop().unwrap();
    let a_pk = keys[0].public_key();
    let b_pk = keys[1].public_key();
    eprintln!(
        "cw-bench: size={size} messages={n} window={window} send_batch={} relay_mailbox={mailbox} inbound_capacity={} runtime={} workers={}",
        args.batch,
        b_rx_capacity(&b_rx),
        args.runtime,
        args.workers
    );

    let t0 = Instant::now();
    // --- B: receiver. Announces readiness until the first data message,
    // then counts, checks lengths, and acks.
    let receiver = context.child("b_app").spawn(move |ctx| async move {
        let mut delivered: u64 = 0;
        let mut bad_len: u64 = 0;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let ack_every = (window / 4).max(1);
        let hard = Instant::now() + DEADLINE;
        // Readiness: send "READY!!!" (8 bytes) until data arrives.
        let mut ready_sent = 0u64;
        // Phase 1: announce readiness every 50 ms until the first data message.
        while first.is_none() && Instant::now() < hard {
            if let Ok(c) = b_tx.check(Recipients::One(a_pk.clone())) {
                let _ = c.send(IoBuf::from(b"READY!!!".to_vec()), true);
                ready_sent += 1;
            }
            select! {
                m = b_rx.recv() => {
                    let (_, msg) = m.expect("network closed");
                    first = Some(Instant::now());
                    if msg.len() != size { bad_len += 1; }
                    delivered += 1;
                    last = Instant::now();
                },
                _ = ctx.sleep(Duration::from_millis(50)) => {},
            }
        }
        // Phase 2: count. One deadline timer for the whole run (no per-message timers).
        let mut deadline = std::pin::pin!(ctx.sleep(hard.saturating_duration_since(Instant::now())));
        let ack = |delivered: u64, b_tx: &mut lookup::Sender<ed25519::PublicKey, E>| {
            if delivered % ack_every == 0 || delivered == n {
                // Ack: 8-byte delivered count (high priority). Bounded retry on rejection.
                let buf = IoBuf::from(delivered.to_le_bytes().to_vec());
                for _ in 0..1_000_000 {
                    let ok = match b_tx.check(Recipients::One(a_pk.clone())) {
                        Ok(c) => matches!(c.send(buf.clone(), true), Unreliable::Outcome(Feedback::Ok)),
                        Err(_) => false,
                    };
                    if ok { return; }
                    std::thread::yield_now();
                }
                eprintln!("B: ack {delivered} could not be sent");
            }
        };
        if delivered > 0 { ack(delivered, &mut b_tx); }
        while delivered < n {
            let m = match b_rx.recv().now_or_never() {
                Some(m) => m,
                None => {
                    let mut got = None;
                    select! {
                        m = b_rx.recv() => { got = Some(m); },
                        _ = &mut deadline => {},
                    }
                    match got {
                        Some(m) => m,
                        None => { eprintln!("B: deadline hit at {delivered}"); break; }
                    }
                }
            };
            let (_, msg) = m.expect("network closed");
            if msg.len() != size { bad_len += 1; }
            delivered += 1;
            last = Instant::now();
            ack(delivered, &mut b_tx);
        }
        (delivered, bad_len, first, last, ready_sent)
    });

    // --- A: sender.
    let a_ctx = context.child("a_app");
    // Wait for B's readiness announcement (proves the connection is up).
    let hard = Instant::now() + DEADLINE;
    let mut acked: u64 = 0;
    loop {
        select! {
            m = a_rx.recv() => {
                let (from, msg) = m.expect("network closed");
                if from == b_pk && msg.len() == 8 && msg.as_ref() == b"READY!!!" { break; }
            },
            _ = a_ctx.sleep(Duration::from_secs(1)) => {},
        }
        if Instant::now() > hard {
            eprintln!("A: peer never became ready");
            std::process::exit(2);
        }
    }
    let connect = t0.elapsed();
    let payload = IoBuf::from(vec![0xABu8; size]);
    let mut sent: u64 = 0;
    let mut rejected: u64 = 0;
    let mut window_waits: u64 = 0;
    let start = Instant::now();
    let mut aborted = false;
    let mut a_deadline = std::pin::pin!(a_ctx.sleep(DEADLINE));
    let handle_ack = |msg: &IoBuf, acked: &mut u64| {
        if msg.len() == 8 && msg.as_ref() != b"READY!!!" {
            let v = u64::from_le_bytes(msg.as_ref().try_into().unwrap());
            if v > *acked {
                *acked = v;
            }
        }
    };
    while sent < n {
        // Opportunistically drain acks without blocking.
        while let Some(m) = a_rx.recv().now_or_never() {
            let (_, msg) = m.expect("network closed");
            handle_ack(&msg, &mut acked);
        }
        if sent - acked >= window {
            window_waits += 1;
            // Window full: block for an ack (bounded).
            select! {
                m = a_rx.recv() => {
                    let (_, msg) = m.expect("network closed");
                    handle_ack(&msg, &mut acked);
                },
                _ = &mut a_deadline => {
                    eprintln!("A: deadline hit (sent={sent} acked={acked})");
                    aborted = true;
                    break;
                },
            }
            if start.elapsed() > DEADLINE {
                aborted = true;
                break;
            }
            continue;
        }
        let fb = match a_tx.check(Recipients::One(b_pk.clone())) {
            Ok(c) => c.send(payload.clone(), false),
            Err(_) => Unreliable::Rejected, // rate limited (should not happen)
        };
        match fb {
            Unreliable::Outcome(Feedback::Ok) => {
                sent += 1;
                if args.yield_every > 0 && sent % args.yield_every == 0 {
                    YieldNow(false).await;
                }
            }
            Unreliable::Outcome(Feedback::Closed) => {
                eprintln!("A: network closed");
                aborted = true;
                break;
            }
            _ => {
                // Router mailbox full (or Backoff): not counted; retry.
                rejected += 1;
                if start.elapsed() > DEADLINE {
                    aborted = true;
                    break;
                }
                a_ctx.sleep(Duration::from_micros(20)).await;
            }
        }
    }
    let send_done = start.elapsed();
    let (delivered, bad_len, _first, last, _ready) = receiver.await.expect("receiver task");
    let secs = last.saturating_duration_since(start).as_secs_f64();
    let bytes = delivered as f64 * size as f64;
    println!(
        "commonware-p2p {} size={} messages={} delivered={} bad_len={} secs={:.3} msgs/s={:.0} MiB/s={:.1} (connect={:.2}s sends_done={:.3}s rejected_retries={} window_waits={}{})",
        args.runtime,
        size,
        n,
        delivered,
        bad_len,
        secs,
        delivered as f64 / secs,
        bytes / secs / (1024.0 * 1024.0),
        connect.as_secs_f64(),
        send_done.as_secs_f64(),
        rejected,
        window_waits,
        if aborted || delivered < n { " SHORTFALL" } else { "" }
    );
    let _ = context.stop(0, Some(Duration::from_secs(2))).await;
    if delivered < n || bad_len > 0 {
        std::process::exit(1);
    }
}

fn b_rx_capacity<R: commonware_p2p::Receiver>(r: &R) -> usize {
    r.capacity().get()
}

/// Yield once to the executor.
struct YieldNow(bool);
impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}
