//! The stream scenario: one byte stream of `--size` bytes (default 1 GiB)
//! between two nodes while 64 B high-priority messages flow beside it on
//! the same connection.
//!
//! # Design
//! The sender opens a stream to the receiver and writes `total` bytes from
//! one 256 KiB buffer (`write_all`); a thread on the receiver reads them
//! into a 256 KiB buffer and counts. Meanwhile the sender sends a 64 B
//! message at `Priority::High` every 500 µs carrying its send time, and an
//! in-shard handler on the receiver records each one's one-way delay as it
//! is delivered (no bench thread has to be scheduled on these two busy
//! cores to see it). Send times are wall-clock nanoseconds, which both
//! processes read from the same kernel clock.
//!
//! The figures: stream bytes/s from open to the last byte read, the delay
//! percentiles of the messages, and the receiver's peak RSS growth over
//! the transfer, sampled every 16 MiB read. By default the receiving node
//! runs alone in a child process ([`crate::child`]: this executable's
//! `bench --scenario stream --receiver-for <key>`), so the growth is the
//! receiver's own; `--in-process` runs both nodes here and reports the
//! growth of both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use shoal_crypto::{Ed25519Signer, PublicKey, Signer};
use shoal_engine::{
    Backend, ChannelConfig, Network, NetworkHandle, Priority, Sender, StreamListener,
};
use shoal_testkit::process;

use crate::args::BenchArgs;
use crate::child::{bench_command, hex, say, unhex, ChildGuard};
use crate::cluster::{backend_name, cluster_with, Cluster};
use crate::plan::Plan;
use crate::result::{RunResult, LATENCY_MAX_NS};

const STREAM_CHANNEL: u32 = 3;
const MESSAGE_CHANNEL: u32 = 1;
const CHUNK: usize = 256 << 10;
const MESSAGE_EVERY: Duration = Duration::from_micros(500);
const RUN_LIMIT: Duration = Duration::from_secs(600);
const ACCEPT_LIMIT: Duration = Duration::from_secs(60);

fn rss_kib() -> u64 {
    process::rss_kib().unwrap_or(0)
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

type Delays = Arc<Mutex<Histogram<u64>>>;

fn delays() -> Result<Delays, String> {
    Ok(Arc::new(Mutex::new(
        Histogram::<u64>::new_with_max(LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?,
    )))
}

/// The receiver's side of a node: the stream listener, and the in-shard
/// handler that records each message's one-way delay.
fn receiving(net: &mut Network, delays: &Delays) -> Result<StreamListener, String> {
    let listener = net.streams(STREAM_CHANNEL, 4).map_err(|e| e.to_string())?;
    let delays = delays.clone();
    net.serve(MESSAGE_CHANNEL, move |_, m| {
        let sent = m
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        let delay = unix_ns().saturating_sub(sent);
        if let Ok(mut h) = delays.lock() {
            let _ = h.record(delay.clamp(1, LATENCY_MAX_NS));
        }
        Ok(None)
    })
    .map_err(|e| e.to_string())?;
    Ok(listener)
}

/// The stream the sender opens, within `limit` (the sender may have
/// failed: nobody would open it then).
fn accept_within(
    listener: &StreamListener,
    limit: Duration,
) -> Result<shoal_engine::IncomingStream, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(inc) = listener.try_accept() {
            return Ok(inc);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "stream: nothing opened within {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the receiving side measured.
struct Received {
    bytes: u64,
    /// When the last byte was read (wall clock, ns).
    end_ns: u64,
    peak_rss_kib: u64,
}

/// Accepts one stream and reads it to its end, sampling RSS every 16 MiB;
/// `on_end` runs as soon as the last byte is read.
fn receive(listener: &StreamListener, on_end: impl FnOnce(u64)) -> Result<Received, String> {
    let mut inc = accept_within(listener, ACCEPT_LIMIT)?;
    let mut buf = vec![0u8; CHUNK];
    let (mut bytes, mut peak_rss_kib, mut next_sample) = (0u64, 0u64, 0u64);
    loop {
        let n = inc
            .recv
            .read(&mut buf)
            .blocking()
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        if bytes >= next_sample {
            peak_rss_kib = peak_rss_kib.max(rss_kib());
            next_sample = bytes + (16 << 20);
        }
    }
    let end_ns = unix_ns();
    on_end(end_ns);
    Ok(Received {
        bytes,
        end_ns,
        peak_rss_kib: peak_rss_kib.max(rss_kib()),
    })
}

/// What the sending side did.
struct Sent {
    messages: usize,
    /// When the stream was opened (wall clock, ns).
    opened_ns: u64,
}

/// Opens the stream, writes `total` bytes on a thread, and sends a 64 B
/// high-priority message every 500 µs until `done()`.
fn send(
    h: &NetworkHandle,
    tx: &Sender,
    peer: &PublicKey,
    total: u64,
    done: impl Fn() -> bool,
) -> Result<Sent, String> {
    let started = Instant::now();
    let opened_ns = unix_ns();
    let (mut stream, _rx) = h
        .open_stream(peer, STREAM_CHANNEL)
        .blocking()
        .map_err(|e| format!("open: {e}"))?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let buf = vec![0x5au8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            stream
                .write_all(&buf[..n])
                .blocking()
                .map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        stream.finish().map_err(|e| format!("finish: {e}"))
    });
    let mut messages = 0usize;
    let mut writer = Some(writer);
    while !done() && started.elapsed() < RUN_LIMIT {
        // A writer that failed ends the run; one that finished leaves the
        // receiver reading the rest.
        if let Some(w) = writer.take_if(|w| w.is_finished()) {
            w.join().map_err(|_| "writer panicked")??;
        }
        let mut m = vec![0u8; 64];
        m[..8].copy_from_slice(&unix_ns().to_le_bytes());
        if tx
            .send(peer, Bytes::from(m), Priority::High)
            .result()
            .is_ok()
        {
            messages += 1;
        }
        std::thread::sleep(MESSAGE_EVERY);
    }
    if let Some(w) = writer {
        w.join().map_err(|_| "writer panicked")??;
    }
    Ok(Sent {
        messages,
        opened_ns,
    })
}

fn result(
    backend: String,
    p: &Plan,
    total: u64,
    sent: &Sent,
    got: &Received,
    rss_before_kib: u64,
    hist: &Histogram<u64>,
) -> Result<RunResult, String> {
    if got.bytes != total {
        return Err(format!("stream: {} of {total} bytes arrived", got.bytes));
    }
    let mut res = RunResult::new("stream", backend, p.shards, total as usize);
    let seconds = got.end_ns.saturating_sub(sent.opened_ns) as f64 / 1e9;
    res.finish(sent.messages, hist.len() as usize, seconds, 0);
    res.bytes_per_sec = got.bytes as f64 / res.seconds.max(1e-9);
    res.rss_growth_mib = Some(got.peak_rss_kib.saturating_sub(rss_before_kib) as f64 / 1024.0);
    Ok(res.with_latency(hist))
}

/// One round on `backend`: the receiver in a child process unless
/// `--in-process`.
pub(crate) fn stream(
    p: &Plan,
    args: &BenchArgs,
    backend: Backend,
    total: u64,
) -> Result<RunResult, String> {
    if args.in_process {
        both_here(p, backend, total)
    } else {
        receiver_in_child(p, args, backend, total)
    }
}

/// Both nodes in this process; the RSS growth is theirs together.
fn both_here(p: &Plan, backend: Backend, total: u64) -> Result<RunResult, String> {
    let listeners: Mutex<Vec<StreamListener>> = Mutex::new(Vec::new());
    let delays = delays()?;
    let register = |i: usize, net: &mut Network| -> Result<(), String> {
        // Both nodes take part in streams (a node needs a stream channel to
        // open one too); only the receiver's listener is used.
        let l = if i == 1 {
            receiving(net, &delays)?
        } else {
            net.streams(STREAM_CHANNEL, 4).map_err(|e| e.to_string())?
        };
        listeners.lock().map_err(|_| "lock")?.push(l);
        Ok(())
    };
    let Cluster { hub, spokes } = cluster_with(p, backend, 1, 1024, &[], &register)?;
    let spoke = spokes.into_iter().next().ok_or("no spoke")?;
    let mut listeners = listeners.into_inner().map_err(|_| "lock")?;
    // Node 1 registered last; the hub's listener stays alive, unused.
    let listener = listeners.pop().ok_or("no listener")?;
    let rss_before = rss_kib();
    let reader = std::thread::spawn(move || receive(&listener, |_| ()));
    let sent = send(&hub.h, &hub.tx, &spoke.h.public_key(), total, || {
        reader.is_finished()
    })?;
    let got = reader.join().map_err(|_| "reader panicked")??;
    // The last messages sent are in flight: let them land.
    std::thread::sleep(Duration::from_millis(50));
    let hist = delays.lock().map_err(|_| "lock")?.clone();
    let res = result(
        backend_name(&hub.h),
        p,
        total,
        &sent,
        &got,
        rss_before,
        &hist,
    )?;
    hub.h.shutdown(Duration::from_millis(100));
    spoke.h.shutdown(Duration::from_millis(100));
    drop(listeners);
    Ok(res)
}

/// The sender here, the receiver alone in a child process.
fn receiver_in_child(
    p: &Plan,
    args: &BenchArgs,
    backend: Backend,
    total: u64,
) -> Result<RunResult, String> {
    let id = Arc::new(Ed25519Signer::generate());
    let me = id.public_key().clone();
    let mut cmd = bench_command(args, "stream", backend)?;
    cmd.args(["--receiver-for", &hex(me.as_bytes())]);
    let (child, mut lines) = ChildGuard::spawn(cmd)?;
    let hello = lines.next()?;
    let peer = PublicKey::from_bytes_unchecked(unhex(hello["key"].as_str().unwrap_or(""))?);
    let addr: std::net::SocketAddr = hello["addr"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e| format!("stream: the child's address: {e}"))?;

    let mut cfg = p.base.clone().with_identity(id);
    cfg.io.backend = backend;
    let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
    let (tx, _rx) = net
        .register(ChannelConfig::new(MESSAGE_CHANNEL).max_size(1024))
        .map_err(|e| e.to_string())?;
    let _listener = net.streams(STREAM_CHANNEL, 4).map_err(|e| e.to_string())?;
    oracle.register(0, vec![peer.clone()]);
    oracle.add_address(peer.clone(), addr);
    let h = net.start().map_err(|e| e.to_string())?;
    let ready = lines.next()?;
    let rss_before = ready["rss_kib"].as_u64().ok_or("stream: no rss_kib")?;
    if !h.wait_peers(ACCEPT_LIMIT, |x| x.contains(&peer)) {
        h.shutdown(Duration::from_millis(100));
        return Err("stream: the child's node did not connect".into());
    }

    // The child says when the last byte is read, then what it measured;
    // `done` is set however the reading ends.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || -> Result<_, String> {
            let end = lines.next();
            done.store(true, Ordering::Release);
            Ok((end?, lines.next()?))
        })
    };
    let sent = send(&h, &tx, &peer, total, || done.load(Ordering::Acquire));
    h.shutdown(Duration::from_millis(100));
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            // Killing the child ends its output: the reader stops.
            drop(child);
            let _ = reader.join();
            return Err(e);
        }
    };
    let (end, measured) = reader.join().map_err(|_| "child reader panicked")??;
    child.wait()?;
    let got = Received {
        bytes: measured["bytes"].as_u64().unwrap_or(0),
        end_ns: end["end_ns"].as_u64().unwrap_or(0),
        peak_rss_kib: measured["peak_rss_kib"].as_u64().unwrap_or(0),
    };
    let mut hist = Histogram::<u64>::new_with_max(LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?;
    for d in measured["delays_ns"].as_array().into_iter().flatten() {
        let _ = hist.record(d.as_u64().unwrap_or(0).clamp(1, LATENCY_MAX_NS));
    }
    let backend = measured["backend"].as_str().unwrap_or("?").to_string();
    result(backend, p, total, &sent, &got, rss_before, &hist)
}

/// The child's side (`--receiver-for <key>`): one receiving node that
/// authorizes only `sender`, speaking JSON lines on stdout: its address
/// and key; its RSS once connected; the byte count when the stream ends;
/// then its peak RSS and every message delay.
pub(crate) fn receiver_main(p: &Plan, backend: Backend, sender: &str) -> Result<(), String> {
    let sender = PublicKey::from_bytes_unchecked(unhex(sender)?);
    let id = Arc::new(Ed25519Signer::generate());
    let key = id.public_key().clone();
    let mut cfg = p.base.clone().with_identity(id);
    cfg.io.backend = backend;
    // With pinning, the sender's shards take the first cores.
    cfg.io.core_offset = cfg.shard_count();
    let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
    let _rx = net
        .register(
            ChannelConfig::new(MESSAGE_CHANNEL)
                .max_size(1024)
                .capacity(8192),
        )
        .map_err(|e| e.to_string())?;
    let delays = delays()?;
    let listener = receiving(&mut net, &delays)?;
    oracle.register(0, vec![sender]);
    let h = net.start().map_err(|e| e.to_string())?;
    let addr = h.local_addr().ok_or("no listen address")?;
    say(json!({ "addr": addr.to_string(), "key": hex(key.as_bytes()) }));
    if !h.wait_peers(Duration::from_secs(30), |x| x.len() == 1) {
        return Err("stream: the sender did not connect within 30 s".into());
    }
    say(json!({ "rss_kib": rss_kib() }));
    let got = receive(&listener, |end_ns| {
        say(json!({ "end_ns": end_ns }));
    })?;
    // The last messages sent are in flight: let them land.
    std::thread::sleep(Duration::from_millis(50));
    let hist = delays.lock().map_err(|_| "lock")?.clone();
    let all: Vec<u64> = hist
        .iter_recorded()
        .flat_map(|v| std::iter::repeat_n(v.value_iterated_to(), v.count_at_value() as usize))
        .collect();
    say(json!({
        "bytes": got.bytes,
        "peak_rss_kib": got.peak_rss_kib,
        "backend": backend_name(&h),
        "delays_ns": all,
    }));
    h.shutdown(Duration::from_millis(100));
    Ok(())
}
