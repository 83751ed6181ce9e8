//! A slow or hostile authorized peer that floods a node and never reads
//! what the node sends back, over real loopback sockets on both backends:
//! the node holds it only within its per-peer byte bound, resets it once its
//! output has made no progress for `write_timeout`, releases everything
//! (socket, fd, buffers, gauges), and keeps serving an honest peer
//! throughout.
//!
//! `measure_the_recommended_bounds` (ignored; run with `--ignored
//! --nocapture`) is the same attack on the default bounds, reporting what
//! `SECURITY.md`'s slow-peer table lists; it uses only what every version
//! of the engine has (with `message_frames` from `tests/common`), so it
//! also measures a build without these bounds.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use shoal::{Backend, Config, Priority, SendError};
use shoal_testkit::{process, raw_client};

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: each measures this process's RSS and fd count.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    process::rss_kib().expect("VmRSS of this process")
}

/// The attacker's message size.
const MESSAGE: usize = 256 << 10;
fn echo_channel() -> ChannelDef {
    ChannelDef {
        quota: None,
        id: 1,
        max_size: 1 << 20,
        backlog: 64,
        compression: None,
    }
}

/// Echoes every message back to its sender without ever waiting on one
/// peer's full queue (as `shoal node` does). Returns the echoes refused.
fn echo(node: &Node, stop: &AtomicBool) -> u64 {
    let (tx, rx) = &node.channels[0];
    let mut full = 0;
    while !stop.load(Ordering::Acquire) {
        let Ok(Some((from, msg))) = rx.recv_timeout(Duration::from_millis(20)) else {
            continue;
        };
        match tx.send(&from, msg, Priority::Low).result() {
            Err(SendError::Full) => full += 1,
            Err(SendError::Closed) => break,
            _ => {}
        }
    }
    full
}

/// The honest peer: one small message at a time, each waiting for its
/// echo. Returns the longest time between two echoes.
fn honest_pings(
    node: &Node,
    to: &shoal::PublicKey,
    exchanges: &AtomicU64,
    stop: &AtomicBool,
) -> Duration {
    let (tx, rx) = &node.channels[0];
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    for i in 0u64..10_000_000 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let msg = Bytes::from(i.to_be_bytes().to_vec());
        if tx
            .send_wait(to, msg.clone(), Priority::Low)
            .blocking()
            .result()
            .is_err()
        {
            break;
        }
        let got = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Some((_, m))) => break Some(m),
                Ok(None) if !stop.load(Ordering::Acquire) => continue,
                _ => break None,
            }
        };
        let Some(got) = got else { break };
        assert_eq!(got, msg, "echoes come back in order");
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        exchanges.fetch_add(1, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(5));
    }
    longest
}

/// Polls `cond` every 2 ms until it holds or `within` passes; returns
/// the time taken, or `None`.
fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(start.elapsed())
}

/// The attacker's end, read until the node's reset (or FIN) arrives.
fn reset_or_eof(s: &mut TcpStream, within: Duration) -> Option<&'static str> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Some("eof"),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some("reset"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("unexpected read error on the attacker's socket: {e}"),
        }
    }
    None
}

/// What one attack did to the node.
#[derive(Debug)]
struct Outcome {
    /// From the attacker's connect to the node's socket being closed (the
    /// `connections` gauge and the fd count back where they were, the
    /// attacker still holding its end), if within the window.
    released: Option<Duration>,
    /// Closes counted `write_timeout` (0 on a build without it).
    write_timeouts: u64,
    /// Peak RSS growth during the attack, KiB.
    peak_growth_kib: u64,
    /// What the attacker's socket saw after the release.
    attacker_saw: Option<&'static str>,
    /// Every fd back once the attacker closed its end too.
    fds_back: bool,
    /// Honest exchanges between the node's first `Full` toward the
    /// attacker and the release (or the end of the window).
    honest_while_stalled: u64,
    /// Longest time between two honest echoes over the whole attack.
    honest_longest_gap: Duration,
}

/// An authorized raw client completes a real handshake, floods `MESSAGE`
/// messages on the echo channel and never reads, for at most `window`.
fn attack(backend: Backend, tweak: impl FnOnce(&mut Config), window: Duration) -> Outcome {
    let victim = start_node(
        backend,
        1,
        any_addr(),
        &[1, 2, 3],
        &[],
        &[echo_channel()],
        tweak,
    );
    let honest = start_node(
        backend,
        2,
        any_addr(),
        &[1, 2, 3],
        &[(1, victim.addr)],
        &[echo_channel()],
        |_| {},
    );
    assert!(victim
        .handle()
        .wait_peers(WAIT, |p| p.contains(&honest.key())));
    let m = victim.handle().metrics();
    let stop = AtomicBool::new(false);
    let stop_flood = AtomicBool::new(false);
    let exchanges = AtomicU64::new(0);
    let victim_key = victim.key();
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| echo(&victim, &stop));
        let pinger = scope.spawn(|| honest_pings(&honest, &victim_key, &exchanges, &stop));
        assert!(
            wait_for(WAIT, || exchanges.load(Ordering::Acquire) > 0).is_some(),
            "the honest peer's first echo"
        );

        let (fds0, conns0, rss0) = (fds(), m.connections.get(), rss_kib());
        let (mut attacker, mut session) = raw_client::dial(
            victim.addr,
            &victim.key(),
            signer(3),
            &Config::local(None),
            WAIT,
        )
        .expect("the attacker's handshake");
        let t0 = Instant::now();
        let mut writer = attacker.try_clone().unwrap();
        let stop_flood = &stop_flood;
        let flood = scope.spawn(move || {
            let payload = vec![0xA5u8; MESSAGE];
            // At most 8192 messages (2 GiB), and only within the window.
            for id in 1..=8192u64 {
                if stop_flood.load(Ordering::Acquire) || t0.elapsed() > window {
                    break;
                }
                let frames = message_frames(&mut session.sealer, 1, id, &payload);
                if frames.iter().any(|f| writer.write_all(f).is_err()) {
                    break;
                }
            }
        });
        assert!(
            wait_for(WAIT, || m.connections.get() > conns0).is_some(),
            "the attacker's connection"
        );
        let full = wait_for(window, || m.send_full.get() > 0);
        let at_full = exchanges.load(Ordering::Acquire);
        let mut peak = rss_kib();
        let left = window.saturating_sub(t0.elapsed());
        let released = wait_for(left, || {
            peak = peak.max(rss_kib());
            m.connections.get() == conns0 && fds() == fds0 + 1
        })
        .map(|_| t0.elapsed());
        let honest_while_stalled = if full.is_some() {
            exchanges.load(Ordering::Acquire) - at_full
        } else {
            0
        };
        let attacker_saw = released.and_then(|_| reset_or_eof(&mut attacker, WAIT));
        stop_flood.store(true, Ordering::Release);
        // A flood thread blocked on a full socket returns once it closes.
        let _ = attacker.shutdown(std::net::Shutdown::Both);
        flood.join().unwrap();
        drop(attacker);
        let fds_back = wait_for(WAIT, || fds() == fds0).is_some();
        stop.store(true, Ordering::Release);
        let honest_longest_gap = pinger.join().unwrap();
        echo.join().unwrap();
        assert!(
            victim.handle().is_connected(&honest.key()),
            "the honest peer stays"
        );
        Outcome {
            released,
            write_timeouts: m.close_count("write_timeout"),
            peak_growth_kib: peak.saturating_sub(rss0),
            attacker_saw,
            fds_back,
            honest_while_stalled,
            honest_longest_gap,
        }
    })
}

/// Small bounds so the attack ends quickly: the node's queue toward the
/// attacker fills (`Full`), its output stalls, and within `write_timeout`
/// (plus the timer sweep) it resets the attacker: the fd, the
/// `connections` gauge and the memory come back, the attacker sees the
/// reset, and the honest peer's echoes kept flowing while the attacker's
/// output was stalled.
fn a_peer_that_never_reads_is_reset_and_released(backend: Backend) {
    let _g = serial();
    const PEER_SEND_BYTES: usize = 1 << 20;
    // What the node may hold for the attacker by design (its send queue,
    // the engine-originated allowance, one reassembly budget) plus a
    // constant for allocator slack and the test's threads.
    const BOUND_KIB: u64 =
        ((3 * PEER_SEND_BYTES + 2 * MESSAGE + (16 << 20)) >> 10) as u64 + 48 * 1024;
    let write_timeout = Duration::from_secs(1);
    let o = attack(
        backend,
        |c| {
            c.timeouts.write_timeout = write_timeout;
            c.limits.peer_send_bytes = PEER_SEND_BYTES;
        },
        WAIT,
    );
    eprintln!("[{backend:?}, write_timeout {write_timeout:?}, peer_send_bytes 1 MiB] {o:?}");
    assert!(
        o.released.is_some(),
        "the attacker's connection was released"
    );
    assert_eq!(o.write_timeouts, 1, "counted once, as write_timeout");
    assert!(
        o.attacker_saw.is_some(),
        "the attacker saw its connection end"
    );
    assert!(o.fds_back, "every fd back");
    assert!(
        o.peak_growth_kib < BOUND_KIB,
        "RSS grew {} KiB (bound {BOUND_KIB} KiB)",
        o.peak_growth_kib
    );
    assert!(
        o.honest_while_stalled > 0,
        "the honest peer got no echo while the attacker's output was stalled"
    );
}

both_backends!(a_peer_that_never_reads_is_reset_and_released);

/// The same attack on the default bounds, for at most 30 s per backend.
#[test]
#[ignore = "a measurement (30 s per backend): run with --ignored --nocapture"]
fn measure_the_recommended_bounds() {
    let _g = serial();
    for backend in [Backend::Epoll, Backend::IoUring] {
        if !backend_available(backend) {
            continue;
        }
        let o = attack(backend, |_| {}, Duration::from_secs(30));
        println!(
            "slow-peer {backend:?}: released {} | write_timeouts {} | peak RSS growth {} MiB | \
             attacker saw {} | fds back {} | honest longest gap {} ms, {} echoes while stalled",
            o.released
                .map_or("not within 30 s".to_string(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                )),
            o.write_timeouts,
            o.peak_growth_kib / 1024,
            o.attacker_saw.unwrap_or("nothing"),
            o.fds_back,
            o.honest_longest_gap.as_millis(),
            o.honest_while_stalled,
        );
    }
}
