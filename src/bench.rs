//! `shoal bench`: a local loopback cluster with same-run baselines.
//!
//! Every figure is measured beside its baseline in the same process, rounds
//! interleaved (baseline, io_uring, epoll, baseline, ...), and the median of
//! the rounds is reported, because these machines drift by up to 2x between
//! runs. Every run checks what was delivered: counts, sizes and content.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::Serialize;
use shoal::engine::{
    Backend, Config, Ed25519Signer, Network, NetworkHandle, Receiver, Sender,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Throughput and latency.
    All,
    /// One connection, `--size` messages, as fast as delivery allows.
    Throughput,
    /// One request in flight: 64 B (or `--size`) ping-pong round trips.
    Latency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// io_uring and epoll side by side.
    Both,
    IoUring,
    Epoll,
    Auto,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Message size in bytes (throughput; latency uses 64 unless given).
    #[arg(long)]
    size: Option<usize>,
    /// Messages per round (default: 256 MiB worth for throughput, 5000 round trips for latency).
    #[arg(long)]
    messages: Option<usize>,
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendArg,
    /// Data shards per node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Shards spin instead of sleeping.
    #[arg(long)]
    busy_poll: bool,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    scenario: &'static str,
    backend: String,
    shards: usize,
    size: usize,
    messages: usize,
    delivered: usize,
    seconds: f64,
    msgs_per_sec: f64,
    bytes_per_sec: f64,
    latency_us: Option<Latency>,
    /// Same-run baseline: raw ring seal bytes/s (throughput) or raw TCP
    /// ping-pong p50 µs (latency), median over rounds.
    baseline: f64,
    /// shoal / baseline (throughput: higher is better; latency: p50 ratio,
    /// lower is better).
    ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let backends: Vec<Backend> = match args.backend {
        BackendArg::Both => vec![Backend::IoUring, Backend::Epoll],
        BackendArg::IoUring => vec![Backend::IoUring],
        BackendArg::Epoll => vec![Backend::Epoll],
        BackendArg::Auto => vec![Backend::Auto],
    };
    let rounds = args.rounds.max(1);
    let mut results = Vec::new();
    if matches!(args.scenario, Scenario::All | Scenario::Throughput) {
        let size = args.size.unwrap_or(64 * 1024).max(1);
        let messages = args
            .messages
            .unwrap_or(((256usize << 20) / size).clamp(1000, 2_000_000));
        let mut seal = Vec::new();
        let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); backends.len()];
        for round in 0..rounds {
            progress(
                &args,
                &format!("throughput round {}/{rounds}: raw ring seal", round + 1),
            );
            seal.push(raw_seal_bytes_per_sec(size, Duration::from_millis(500)));
            for (i, b) in backends.iter().enumerate() {
                progress(
                    &args,
                    &format!("throughput round {}/{rounds}: {b:?}", round + 1),
                );
                per[i].push(throughput(*b, args.shards, size, messages, args.busy_poll)?);
            }
        }
        let seal = median(seal);
        for runs in per {
            results.push(summarize(runs, seal, true));
        }
    }
    if matches!(args.scenario, Scenario::All | Scenario::Latency) {
        let size = if args.scenario == Scenario::Latency {
            args.size.unwrap_or(64)
        } else {
            64
        };
        let messages = args.messages.unwrap_or(5000).max(1);
        let mut tcp = Vec::new();
        let mut per: Vec<Vec<RunResult>> = vec![Vec::new(); backends.len()];
        for round in 0..rounds {
            progress(
                &args,
                &format!("latency round {}/{rounds}: raw TCP ping-pong", round + 1),
            );
            tcp.push(raw_tcp_pingpong_p50_us(size, messages)?);
            for (i, b) in backends.iter().enumerate() {
                progress(
                    &args,
                    &format!("latency round {}/{rounds}: {b:?}", round + 1),
                );
                per[i].push(latency(*b, args.shards, size, messages, args.busy_poll)?);
            }
        }
        let tcp = median(tcp);
        for runs in per {
            results.push(summarize(runs, tcp, false));
        }
    }
    if args.json {
        let out = if results.len() == 1 {
            serde_json::to_string(&results[0])
        } else {
            serde_json::to_string(&serde_json::json!({ "results": results }))
        }
        .map_err(|e| e.to_string())?;
        println!("{out}");
    } else {
        print_table(&results, rounds);
    }
    Ok(())
}

fn progress(args: &BenchArgs, what: &str) {
    if !args.json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("... {what}");
    }
}

/// The run with the median headline figure, carrying the median baseline.
fn summarize(mut runs: Vec<RunResult>, baseline: f64, throughput: bool) -> RunResult {
    let key = |r: &RunResult| {
        if throughput {
            r.bytes_per_sec
        } else {
            r.latency_us.as_ref().map_or(0.0, |l| l.p50)
        }
    };
    runs.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut r = runs.swap_remove(runs.len() / 2);
    r.baseline = baseline;
    r.ratio = if baseline > 0.0 {
        key(&r) / baseline
    } else {
        0.0
    };
    r
}

fn print_table(results: &[RunResult], rounds: usize) {
    println!("shoal bench — loopback, medians of {rounds} interleaved rounds");
    println!(
        "{:<11} {:<8} {:>6} {:>8} {:>12} {:>11} {:>9} {:>9} {:>9} {:>22}",
        "scenario",
        "backend",
        "shards",
        "size",
        "msgs/s",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "vs same-run baseline"
    );
    for r in results {
        let (p50, p99, max) =
            r.latency_us
                .as_ref()
                .map_or(("-".into(), "-".into(), "-".into()), |l| {
                    (
                        format!("{:.1}", l.p50),
                        format!("{:.1}", l.p99),
                        format!("{:.1}", l.max),
                    )
                });
        let vs = if r.scenario == "throughput" {
            format!(
                "{:.2}x raw seal ({:.0} MiB/s)",
                r.ratio,
                r.baseline / (1 << 20) as f64
            )
        } else {
            format!("{:.2}x raw TCP p50 ({:.1} µs)", r.ratio, r.baseline)
        };
        println!(
            "{:<11} {:<8} {:>6} {:>8} {:>12.0} {:>11.1} {:>9} {:>9} {:>9} {:>22}",
            r.scenario,
            r.backend,
            r.shards,
            r.size,
            r.msgs_per_sec,
            r.bytes_per_sec / (1 << 20) as f64,
            p50,
            p99,
            max,
            vs
        );
    }
}

struct Pair {
    a: NetworkHandle,
    b: NetworkHandle,
    a_tx: Sender,
    a_rx: Receiver,
    b_tx: Sender,
    b_rx: Receiver,
}

fn pair(backend: Backend, shards: usize, max_size: usize, busy: bool) -> Result<Pair, String> {
    let ids = [
        Arc::new(Ed25519Signer::generate()),
        Arc::new(Ed25519Signer::generate()),
    ];
    let keys: Vec<_> = ids
        .iter()
        .map(|s| shoal::crypto::Signer::public_key(&**s).clone())
        .collect();
    let mut nets = Vec::new();
    for id in &ids {
        let mut cfg = Config::local(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
            .with_identity(id.clone());
        cfg.backend = backend;
        cfg.shards = shards;
        cfg.busy_poll = busy;
        cfg.peer_send_backlog = 8192;
        let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
        let (tx, rx) = net
            .register(1, None, max_size.max(1024), 8192, None)
            .map_err(|e| e.to_string())?;
        oracle.register(0, keys.clone());
        nets.push((net, oracle, tx, rx));
    }
    let (net_b, oracle_b, b_tx, b_rx) = nets.pop().ok_or("no node")?;
    let (net_a, oracle_a, a_tx, a_rx) = nets.pop().ok_or("no node")?;
    let b = net_b.start().map_err(|e| e.to_string())?;
    let a = net_a.start().map_err(|e| e.to_string())?;
    let b_addr = b.local_addr().ok_or("no listen address")?;
    let a_addr = a.local_addr().ok_or("no listen address")?;
    oracle_a.add_address(keys[1].clone(), b_addr);
    oracle_b.add_address(keys[0].clone(), a_addr);
    if !a.wait_peers(Duration::from_secs(10), |p| p.len() == 1)
        || !b.wait_peers(Duration::from_secs(10), |p| p.len() == 1)
    {
        return Err("the two bench nodes did not connect within 10 s".into());
    }
    Ok(Pair {
        a,
        b,
        a_tx,
        a_rx,
        b_tx,
        b_rx,
    })
}

fn backend_name(h: &NetworkHandle) -> String {
    match h.backend() {
        Backend::IoUring => "io_uring".into(),
        Backend::Epoll => "epoll".into(),
        Backend::Auto => "auto".into(),
    }
}

fn throughput(
    backend: Backend,
    shards: usize,
    size: usize,
    messages: usize,
    busy: bool,
) -> Result<RunResult, String> {
    let p = pair(backend, shards, size, busy)?;
    let name = backend_name(&p.a);
    let b_key = p.b.public_key();
    let mut payload = vec![0x5Au8; size];
    if let Some(last) = payload.last_mut() {
        *last = 0xA5;
    }
    let payload = Bytes::from(payload);
    let start = Instant::now();
    let rx = p.b_rx;
    let receiver = std::thread::spawn(move || -> Result<(usize, Instant), String> {
        let mut n = 0;
        while n < messages {
            let (_, m) = rx.recv_blocking().map_err(|e| e.to_string())?;
            if m.len() != size || m.first() != Some(&0x5A) && size > 1 || m.last() != Some(&0xA5) {
                return Err(format!("message {n} corrupted (len {})", m.len()));
            }
            n += 1;
        }
        Ok((n, Instant::now()))
    });
    for _ in 0..messages {
        // Waits (parked, not spinning) while the peer's queue is full.
        p.a_tx
            .send_to_blocking(&b_key, payload.clone(), false)
            .map_err(|e| format!("send failed: {e}"))?;
    }
    let (delivered, end) = receiver.join().map_err(|_| "receiver panicked")??;
    let seconds = end.duration_since(start).as_secs_f64();
    p.a.shutdown(Duration::from_millis(100));
    p.b.shutdown(Duration::from_millis(100));
    let _ = (p.a_rx, p.b_tx);
    Ok(RunResult {
        scenario: "throughput",
        backend: name,
        shards,
        size,
        messages,
        delivered,
        seconds,
        msgs_per_sec: delivered as f64 / seconds,
        bytes_per_sec: (delivered * size) as f64 / seconds,
        latency_us: None,
        baseline: 0.0,
        ratio: 0.0,
    })
}

fn latency(
    backend: Backend,
    shards: usize,
    size: usize,
    messages: usize,
    busy: bool,
) -> Result<RunResult, String> {
    let p = pair(backend, shards, size, busy)?;
    let name = backend_name(&p.a);
    let (a_key, b_key) = (p.a.public_key(), p.b.public_key());
    let (b_rx, b_tx) = (p.b_rx, p.b_tx);
    let echo = std::thread::spawn(move || -> Result<(), String> {
        for _ in 0..messages {
            let (_, m) = b_rx.recv_blocking().map_err(|e| e.to_string())?;
            b_tx.send_to(&a_key, m, true).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut delivered = 0;
    for i in 0..messages {
        let mut v = vec![0u8; size.max(8)];
        v[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let t = Instant::now();
        p.a_tx
            .send_to(&b_key, Bytes::from(v), true)
            .map_err(|e| format!("send failed: {e}"))?;
        let (_, m) = p.a_rx.recv_blocking().map_err(|e| e.to_string())?;
        let rtt = t.elapsed();
        if m.len() < 8 || m[..8] != (i as u64).to_be_bytes() {
            return Err(format!("round trip {i} returned the wrong message"));
        }
        delivered += 1;
        hist.record((rtt.as_nanos() as u64 / 1000).max(1))
            .map_err(|e| e.to_string())?;
    }
    let seconds = start.elapsed().as_secs_f64();
    echo.join().map_err(|_| "echo panicked")??;
    p.a.shutdown(Duration::from_millis(100));
    p.b.shutdown(Duration::from_millis(100));
    Ok(RunResult {
        scenario: "latency",
        backend: name,
        shards,
        size,
        messages,
        delivered,
        seconds,
        msgs_per_sec: delivered as f64 / seconds,
        bytes_per_sec: (delivered * size * 2) as f64 / seconds,
        latency_us: Some(lat(&hist)),
        baseline: 0.0,
        ratio: 0.0,
    })
}

fn lat(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: h.value_at_quantile(0.5) as f64,
        p90: h.value_at_quantile(0.9) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        max: h.max() as f64,
    }
}

/// One core's raw ChaCha20-Poly1305 (ring) seal rate for `size`-byte records.
fn raw_seal_bytes_per_sec(size: usize, for_at_least: Duration) -> f64 {
    let key = match UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => return 0.0,
    };
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < for_at_least {
        for _ in 0..16 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .ok();
            std::hint::black_box(tag);
            n += 1;
        }
    }
    (n as f64 * size as f64) / start.elapsed().as_secs_f64()
}

/// p50 of a blocking-socket TCP ping-pong over loopback, in µs.
fn raw_tcp_pingpong_p50_us(size: usize, rounds: usize) -> Result<f64, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; size];
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for _ in 0..rounds {
        let t = Instant::now();
        c.write_all(&buf).map_err(|e| e.to_string())?;
        c.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let _ = hist.record((t.elapsed().as_nanos() as u64 / 1000).max(1));
    }
    echo.join()
        .map_err(|_| "echo panicked")?
        .map_err(|e| e.to_string())?;
    Ok(hist.value_at_quantile(0.5) as f64)
}
