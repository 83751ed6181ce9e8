//! The same-run baselines: what this machine does with the engine taken
//! away.
//!
//! # Design
//! Each baseline is the ceiling its scenario is compared with, measured in
//! the same process between the engine's rounds:
//! - [`raw_seal_bytes_per_sec`]: one core's raw ring ChaCha20-Poly1305 seal
//!   rate (throughput, fanout).
//! - [`raw_sealed_stream_bytes_per_sec`]: one encrypted TCP stream with no
//!   engine, no allocation and no queues (throughput of large messages).
//! - [`raw_tcp_pingpong`]: TCP ping-pong p50 over loopback, its two threads
//!   waiting as the engine's threads do ([`Wait`]) (latency, request, rpc,
//!   shard-rtt).
//!
//! The streams check what they carry as the scenarios do: every frame must
//! open and hold the expected payload.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::result::{nanos, us, LATENCY_MAX_NS};
use crate::traffic::{intact, payload, STALL};

/// One core's raw ChaCha20-Poly1305 (ring) seal rate for `size`-byte records.
pub(crate) fn raw_seal_bytes_per_sec(size: usize, for_at_least: Duration) -> f64 {
    let key = match UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => return 0.0,
    };
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < for_at_least {
        for _ in 0..16 {
            let tag = key
                .seal_in_place_separate_tag(counter_nonce(n), Aad::empty(), &mut buf)
                .ok();
            std::hint::black_box(tag);
            n += 1;
        }
    }
    (n as f64 * size as f64) / start.elapsed().as_secs_f64()
}

/// The nonce of the `n`-th record sealed by the raw baselines.
fn counter_nonce(n: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// The ceiling for one encrypted connection on this machine, engine aside:
/// one thread copies each `size`-byte message into a write batch (as any
/// sender must, to seal without touching the caller's bytes), seals it with
/// ring and writes 256 KiB batches to a blocking loopback TCP socket; another
/// reads each frame into one reused buffer (one `readv` per frame, taking the
/// next length prefix too, as the engine's reads do) and opens it in place.
/// No allocation, no application hand-off, no queues. Returns
/// delivered payload bytes/s; every frame must open and carry the payload.
pub(crate) fn raw_sealed_stream_bytes_per_sec(size: usize, messages: usize) -> Result<f64, String> {
    const BATCH: usize = 256 * 1024;
    const TAG: usize = 16;
    let key = || {
        UnboundKey::new(&CHACHA20_POLY1305, &[9u8; 32])
            .map(LessSafeKey::new)
            .map_err(|_| "ring key".to_string())
    };
    let nonce = counter_nonce;
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let opener_key = key()?;
    let opener = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut frame = vec![0u8; size + TAG];
        // One syscall per frame, as the engine does: each read takes the
        // rest of the current frame and the next length prefix.
        let mut header = [0u8; 4];
        s.read_exact(&mut header).map_err(|e| e.to_string())?;
        for i in 0..messages as u64 {
            if u32::from_be_bytes(header) as usize != frame.len() {
                return Err("raw sealed stream: bad length".into());
            }
            let last = i + 1 == messages as u64;
            let (mut body, mut next) = (0, 0);
            while body < frame.len() || (!last && next < header.len()) {
                let n = {
                    let mut bufs = [
                        std::io::IoSliceMut::new(&mut frame[body..]),
                        std::io::IoSliceMut::new(if last { &mut [] } else { &mut header[next..] }),
                    ];
                    s.read_vectored(&mut bufs).map_err(|e| e.to_string())?
                };
                if n == 0 {
                    return Err("raw sealed stream: closed early".into());
                }
                let to_body = n.min(frame.len() - body);
                body += to_body;
                next += n - to_body;
            }
            let plain = opener_key
                .open_in_place(nonce(i), Aad::empty(), &mut frame)
                .map_err(|_| "raw sealed stream: frame did not open".to_string())?;
            if !intact(plain, size) {
                return Err("raw sealed stream: payload corrupted".into());
            }
        }
        Ok(messages)
    });
    let sealer = key()?;
    let msg = payload(size);
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut out = Vec::with_capacity(BATCH + size + TAG + 4);
    let header = u32::try_from(size + TAG)
        .map_err(|_| "message too large".to_string())?
        .to_be_bytes();
    for i in 0..messages as u64 {
        out.extend_from_slice(&header);
        let at = out.len();
        out.extend_from_slice(&msg);
        let tag = sealer
            .seal_in_place_separate_tag(nonce(i), Aad::empty(), &mut out[at..])
            .map_err(|_| "seal failed".to_string())?;
        out.extend_from_slice(tag.as_ref());
        if out.len() >= BATCH {
            s.write_all(&out).map_err(|e| e.to_string())?;
            out.clear();
        }
    }
    s.write_all(&out).map_err(|e| e.to_string())?;
    let delivered = opener
        .join()
        .map_err(|_| "raw sealed stream: opener panicked".to_string())??;
    Ok((delivered * size) as f64 / start.elapsed().as_secs_f64())
}

/// How the raw ping-pong's threads wait for their next read.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    /// Retry the empty read, yielding the core, for this long, then block
    /// (the engine's `wait_spin`; zero blocks at once).
    SpinThenBlock(Duration),
    /// Retry without yielding, as busy-polling shards do (bounded by
    /// [`STALL`], then block).
    BusyPoll,
}

impl Wait {
    /// How long an empty read is retried before the socket blocks.
    fn spin(self) -> Duration {
        match self {
            Wait::SpinThenBlock(d) => d,
            Wait::BusyPoll => STALL,
        }
    }
}

/// p50 of a TCP ping-pong over loopback, in µs, with `inflight` requests
/// pipelined (1 = strict ping-pong). Each request's time runs from its write
/// to the read of its echo. Both threads wait as `wait` says: the way the
/// engine's blocking calls do (look again for up to a spin, yielding the
/// core, then block; zero: plain blocking sockets), or spinning without
/// yielding as busy-polling shards do. Returns 0 (n/a) when the pipelined
/// bytes could fill both socket buffers and deadlock this single-threaded
/// client.
pub(crate) fn raw_tcp_pingpong(
    size: usize,
    rounds: usize,
    inflight: usize,
    wait: Wait,
) -> Result<f64, String> {
    let spin = wait.spin();
    let inflight = inflight.clamp(1, rounds.max(1));
    if inflight > 1 && inflight.saturating_mul(size) > 64 * 1024 {
        return Ok(0.0);
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(!spin.is_zero())?;
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            read_spin_then_block(&mut s, &mut buf, wait)?;
            write_all_any(&mut s, &buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    c.set_nonblocking(!spin.is_zero())
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; size];
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    let mut sent_at = std::collections::VecDeque::with_capacity(inflight);
    let mut sent = 0;
    for _ in 0..inflight {
        sent_at.push_back(Instant::now());
        write_all_any(&mut c, &buf).map_err(|e| e.to_string())?;
        sent += 1;
    }
    for _ in 0..rounds {
        read_spin_then_block(&mut c, &mut buf, wait).map_err(|e| e.to_string())?;
        if let Some(t) = sent_at.pop_front() {
            let _ = hist.record(nanos(t.elapsed()));
        }
        if sent < rounds {
            sent_at.push_back(Instant::now());
            write_all_any(&mut c, &buf).map_err(|e| e.to_string())?;
            sent += 1;
        }
    }
    echo.join()
        .map_err(|_| "echo panicked")?
        .map_err(|e| e.to_string())?;
    Ok(us(hist.value_at_quantile(0.5)))
}

/// Fills `buf` from `s`. On a nonblocking socket an empty read is retried
/// as `wait` says (yielding the core, or not under busy-poll); then the
/// socket blocks for the rest of this read (the engine's `wait_spin`, done
/// with sockets).
fn read_spin_then_block(s: &mut TcpStream, buf: &mut [u8], wait: Wait) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut got = 0;
    let mut until = None;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match s.read(rest) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let until = *until.get_or_insert_with(|| Instant::now() + wait.spin());
                if Instant::now() < until {
                    if !matches!(wait, Wait::BusyPoll) {
                        std::thread::yield_now();
                    }
                } else {
                    s.set_nonblocking(false)?;
                    let r = s.read(rest);
                    s.set_nonblocking(true)?;
                    match r? {
                        0 => return Err(ErrorKind::UnexpectedEof.into()),
                        n => got += n,
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` that also works on a nonblocking socket (blocks on a full
/// send buffer instead of failing).
fn write_all_any(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut sent = 0;
    while sent < buf.len() {
        let Some(rest) = buf.get(sent..) else { break };
        match s.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                s.set_nonblocking(false)?;
                let r = s.write(rest);
                s.set_nonblocking(true)?;
                sent += r?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
