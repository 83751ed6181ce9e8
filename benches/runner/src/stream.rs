//! The stream scenario: one byte stream of `--size` bytes (default 1 GiB)
//! between two nodes while 64 B high-priority messages flow beside it on
//! the same connection.
//!
//! # Design
//! The hub opens a stream to its spoke and writes `total` bytes from one
//! 256 KiB buffer (`write_all`); a thread on the spoke reads them into a
//! 256 KiB buffer and counts. Meanwhile the hub sends a 64 B message at
//! `Priority::High` every 500 µs carrying its send time, and an in-shard
//! handler on the spoke records each one's one-way delay as it is
//! delivered (both nodes share this process's clock). The figures: stream bytes/s from open to the last
//! byte read, the delay percentiles of the messages, and the process's
//! peak RSS growth over the transfer (both nodes: one process), sampled
//! every 16 MiB read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use shoal_engine::{Backend, Network, Priority, StreamListener};

use crate::cluster::{backend_name, cluster_with, Cluster};
use crate::plan::Plan;
use crate::result::{nanos, RunResult, LATENCY_MAX_NS};

const STREAM_CHANNEL: u32 = 3;
const CHUNK: usize = 256 << 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn stream(p: &Plan, backend: Backend, total: u64) -> Result<RunResult, String> {
    let listeners: Mutex<Vec<StreamListener>> = Mutex::new(Vec::new());
    let start = Instant::now();
    // The spoke's in-shard handler records each message's one-way delay on
    // the shard that decoded it: no thread of the bench's own has to be
    // scheduled on these two busy cores to see it.
    let delays = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_max(LATENCY_MAX_NS, 3).map_err(|e| e.to_string())?,
    ));
    let register = |i: usize, net: &mut Network| -> Result<(), String> {
        // Both nodes take part in streams (a node needs a stream channel to
        // open one too); only the spoke's listener is used.
        let l = net.streams(STREAM_CHANNEL, 4).map_err(|e| e.to_string())?;
        let mut all = listeners.lock().map_err(|_| "lock")?;
        if all.len() != i {
            return Err("nodes start in order".into());
        }
        all.push(l);
        if i == 1 {
            let delays = delays.clone();
            net.serve(1, move |_, m| {
                let sent = m
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                let delay = nanos(start.elapsed()).saturating_sub(sent);
                if let Ok(mut h) = delays.lock() {
                    let _ = h.record(delay.clamp(1, LATENCY_MAX_NS));
                }
                Ok(None)
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let Cluster { hub, spokes } = cluster_with(p, backend, 1, 1024, &[], &register)?;
    let spoke = spokes.into_iter().next().ok_or("no spoke")?;
    let mut listeners = listeners.into_inner().map_err(|_| "lock")?;
    let listener = listeners.pop().ok_or("no listener")?;
    // The hub's listener stays alive (and unused) for the run.
    let _hub_listener = listeners;
    let mut res = RunResult::new("stream", backend_name(&hub.h), p.shards, total as usize);
    let rss_before = rss_kib();
    let opened = Instant::now();
    let (mut tx, _rx) = hub
        .h
        .open_stream(&spoke.h.public_key(), STREAM_CHANNEL)
        .blocking()
        .map_err(|e| format!("open: {e}"))?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let buf = vec![0x5au8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            tx.write_all(&buf[..n])
                .blocking()
                .map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        tx.finish().map_err(|e| format!("finish: {e}"))
    });
    let reader = std::thread::spawn(move || -> Result<(u64, Instant, u64), String> {
        let mut inc = listener
            .accept()
            .blocking()
            .ok_or("the network closed before the stream arrived")?;
        let mut buf = vec![0u8; CHUNK];
        let (mut got, mut peak, mut next_sample) = (0u64, 0u64, 0u64);
        loop {
            let n = inc
                .recv
                .read(&mut buf)
                .blocking()
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got >= next_sample {
                peak = peak.max(rss_kib());
                next_sample = got + (16 << 20);
            }
        }
        Ok((got, Instant::now(), peak))
    });
    // 64 B high-priority messages beside the stream, until it is read.
    let spoke_key = spoke.h.public_key();
    let mut sent = 0usize;
    while !reader.is_finished() && opened.elapsed() < Duration::from_secs(600) {
        let mut m = vec![0u8; 64];
        m[..8].copy_from_slice(&nanos(start.elapsed()).to_le_bytes());
        if hub
            .tx
            .send(&spoke_key, Bytes::from(m), Priority::High)
            .result()
            .is_ok()
        {
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    writer.join().map_err(|_| "writer panicked")??;
    let (got, end, peak) = reader.join().map_err(|_| "reader panicked")??;
    // The last messages sent are in flight: let them land.
    std::thread::sleep(Duration::from_millis(50));
    let hist = delays.lock().map_err(|_| "lock")?.clone();
    res.finish(
        sent,
        hist.len() as usize,
        end.duration_since(opened).as_secs_f64(),
        0,
    );
    res.bytes_per_sec = got as f64 / res.seconds.max(1e-9);
    if got != total {
        return Err(format!("stream: {got} of {total} bytes arrived"));
    }
    res.rss_growth_mib = Some(peak.saturating_sub(rss_before) as f64 / 1024.0);
    res = res.with_latency(&hist);
    hub.h.shutdown(Duration::from_millis(100));
    spoke.h.shutdown(Duration::from_millis(100));
    Ok(res)
}
