//! `shoal node --config FILE`: a long-running node.
//!
//! Startup order: parse and validate the file (exit 2 on any problem),
//! install SIGINT/SIGTERM handlers, build the network, register the metrics
//! and the echo channel, bind the metrics listener, start, print the listen
//! address and public key on stderr, then wait for a signal and shut down
//! gracefully. An optional `[probe]` table adds a delivery probe
//! ([`crate::probe`]) and `[gossip]` a gossip broadcast probe
//! ([`crate::gossip_probe`]), both used by `scripts/netns-mesh.sh`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shoal::{ChannelConfig, GossipConfig, Network, Priority, Receiver, SendError, Sender, Verdict};
use tokio::sync::Notify;

use crate::config_file::{engine_error, FileConfig};

/// Exit code for an invalid config.
pub const EXIT_CONFIG: u8 = 2;
/// How long shutdown may spend flushing queued messages.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Messages the echo channel buffers for the echo thread.
const ECHO_BACKLOG: usize = 1024;

fn config_error(path: &Path, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("shoal node: invalid config {}: {msg}", path.display());
    ExitCode::from(EXIT_CONFIG)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("shoal node: {msg}");
    ExitCode::from(1)
}

pub fn run(config_path: &Path) -> ExitCode {
    let file = match FileConfig::load(config_path) {
        Ok(f) => f,
        Err(e) => return config_error(config_path, e),
    };
    if file.bench.is_some() {
        tracing::debug!("ignoring the [bench] table (read by `shoal bench` only)");
    }
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (cfg, peers, random_identity) = match file.node_config(base) {
        Ok(x) => x,
        Err(e) => return config_error(config_path, e),
    };
    if random_identity {
        eprintln!(
            "shoal node: warning: no `identity` in the config: running with a random key \
             (peers cannot authorize it across restarts; create one with `shoal keygen`)"
        );
    }
    let max_message_size = cfg.limits.max_message_size;

    // Signal handlers first, so a signal arriving right after startup is a
    // graceful shutdown and not a kill.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot build the signal runtime: {e}")),
    };
    let signals = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut sigint, mut sigterm) = match signals {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
    };

    let (mut network, oracle) = match Network::new(cfg) {
        Ok(x) => x,
        Err(e @ shoal::Error::InvalidConfig { .. }) => {
            return config_error(config_path, engine_error(e))
        }
        Err(e) => return fail(e),
    };
    let mut registry = Registry::with_prefix("shoal");
    network.metrics().register(&mut registry);
    let echo_metrics = EchoMetrics::default();
    let channel = |id| {
        ChannelConfig::new(id)
            .max_size(max_message_size)
            .capacity(ECHO_BACKLOG)
    };
    let echo = match file.node.echo_channel {
        Some(ch) => match network.register(channel(ch)) {
            Ok(x) => {
                echo_metrics.register(&mut registry);
                Some((ch, x))
            }
            Err(e) => return fail(format!("cannot register echo channel {ch}: {e}")),
        },
        None => None,
    };
    let probe = match &file.probe {
        Some(p) => match network.register(channel(p.channel)) {
            Ok(x) => {
                let m = crate::probe::ProbeMetrics::new(&peers);
                m.register(&mut registry);
                Some((p.channel, p.interval, p.count, m, x))
            }
            Err(e) => return fail(format!("cannot register probe channel {}: {e}", p.channel)),
        },
        None => None,
    };
    let gossip = match &file.gossip {
        Some(g) => match network.register(channel(g.channel)) {
            Ok(x) => {
                let plan = crate::gossip_probe::Plan {
                    interval: g.interval,
                    count: g.count,
                    wait_peers: g.wait_peers,
                };
                Some((g.channel, plan, x))
            }
            Err(e) => return fail(format!("cannot register gossip channel {}: {e}", g.channel)),
        },
        None => None,
    };
    oracle.register(0, peers.iter().map(|p| p.key.clone()).collect());
    for p in &peers {
        if let Some(a) = p.address {
            oracle.add_address(p.key.clone(), a);
        }
    }
    let metrics_listener = match file.node.metrics {
        Some(addr) => match TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => return fail(format!("cannot bind the metrics endpoint {addr}: {e}")),
        },
        None => None,
    };

    let handle = match network.start() {
        Ok(h) => h,
        Err(e) => return fail(format!("cannot start: {e}")),
    };
    match handle.local_addr() {
        Some(a) => eprintln!(
            "shoal node: listening on {a} ({})",
            backend_name(handle.backend())
        ),
        None => eprintln!(
            "shoal node: not listening (dial-only, {})",
            backend_name(handle.backend())
        ),
    }
    eprintln!("shoal node: public key {:#}", handle.public_key());
    tracing::info!(peers = peers.len(), "node started");

    if let Some(l) = metrics_listener {
        if let Ok(a) = l.local_addr() {
            eprintln!("shoal node: metrics on http://{a}/metrics");
        }
        let registry = Arc::new(registry);
        let spawned = std::thread::Builder::new()
            .name("shoal-metrics".into())
            .spawn(move || serve_metrics(l, registry));
        if let Err(e) = spawned {
            handle.shutdown(SHUTDOWN_FLUSH);
            return fail(format!("cannot start the metrics thread: {e}"));
        }
    }

    let stop = Arc::new(Notify::new());
    let echo_thread = match echo {
        Some((ch, (tx, rx))) => {
            eprintln!("shoal node: echoing channel {ch}");
            let stop = stop.clone();
            let metrics = echo_metrics.clone();
            match std::thread::Builder::new()
                .name("shoal-echo".into())
                .spawn(move || echo_loop(tx, rx, stop, metrics))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    handle.shutdown(SHUTDOWN_FLUSH);
                    return fail(format!("cannot start the echo thread: {e}"));
                }
            }
        }
        None => None,
    };

    let probe_stop = Arc::new(Notify::new());
    let probe_thread = match probe {
        Some((ch, interval, count, m, (tx, rx))) => {
            eprintln!("shoal node: probing channel {ch} every {interval:?}");
            let keys = peers.iter().map(|p| p.key.clone()).collect();
            let stop = probe_stop.clone();
            match std::thread::Builder::new()
                .name("shoal-probe".into())
                .spawn(move || crate::probe::run(tx, rx, keys, interval, count, m, stop))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    handle.shutdown(SHUTDOWN_FLUSH);
                    return fail(format!("cannot start the probe thread: {e}"));
                }
            }
        }
        None => None,
    };

    let gossip_stop = Arc::new(AtomicBool::new(false));
    let gossip_thread = match gossip {
        Some((ch, plan, channel)) => {
            // Probes are a few bytes: any channel has room for them.
            let config = GossipConfig {
                max_message_size: 1024,
                ..GossipConfig::default()
            };
            let (tx, rx) =
                match handle.gossip(channel, config, ECHO_BACKLOG, |_, _| Verdict::Accept) {
                    Ok(x) => x,
                    Err(e) => {
                        handle.shutdown(SHUTDOWN_FLUSH);
                        return fail(format!("cannot start gossip on channel {ch}: {e}"));
                    }
                };
            eprintln!(
                "shoal node: gossip on channel {ch}, broadcasting every {:?}",
                plan.interval
            );
            let stop = gossip_stop.clone();
            match std::thread::Builder::new()
                .name("shoal-gossip-probe".into())
                .spawn(move || crate::gossip_probe::run(tx, rx, plan, stop))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    handle.shutdown(SHUTDOWN_FLUSH);
                    return fail(format!("cannot start the gossip probe thread: {e}"));
                }
            }
        }
        None => None,
    };

    let which = rt.block_on(async {
        tokio::select! {
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        }
    });
    eprintln!("shoal node: {which}: shutting down");
    stop.notify_one();
    probe_stop.notify_one();
    gossip_stop.store(true, Ordering::Release);
    // Shutdown closes every connection, which also releases an echo send
    // waiting for queue space.
    handle.shutdown(SHUTDOWN_FLUSH);
    if let Some(t) = echo_thread {
        if t.join().is_err() {
            return fail("the echo thread panicked");
        }
    }
    if let Some(t) = probe_thread {
        if t.join().is_err() {
            return fail("the probe thread panicked");
        }
    }
    if let Some(t) = gossip_thread {
        if t.join().is_err() {
            return fail("the gossip probe thread panicked");
        }
    }
    eprintln!("shoal node: stopped");
    ExitCode::SUCCESS
}

fn backend_name(b: shoal::Backend) -> &'static str {
    match b {
        shoal::Backend::IoUring => "io_uring",
        shoal::Backend::Epoll => "epoll",
        shoal::Backend::Auto => "auto",
    }
}

/// Echoes every message on the channel back to its sender until `stop`.
fn echo_loop(tx: Sender, rx: Receiver, stop: Arc<Notify>, metrics: EchoMetrics) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(%e, "echo: cannot build runtime");
            return;
        }
    };
    rt.block_on(async {
        loop {
            let (from, msg) = tokio::select! {
                _ = stop.notified() => return,
                m = rx.recv() => match m {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            // Never wait on one peer's full queue: every other peer's
            // echo would wait with it. An echo that does not fit is
            // counted and dropped (the sender sees it missing).
            match tx.send(&from, msg, Priority::Low).result() {
                Ok(()) => {
                    metrics.echoed.inc();
                }
                Err(SendError::Closed) => return,
                Err(e) => {
                    metrics.unsent(e).inc();
                    tracing::debug!(peer = %from, %e, "echo: not sent");
                }
            }
        }
    });
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The echo service's counters: `shoal_echo_sent_total` and
/// `shoal_echo_unsent_total{reason}` (`full`: that peer's queue was full;
/// `not_connected`, `too_large`).
#[derive(Clone, Default)]
struct EchoMetrics {
    echoed: Counter,
    not_sent: Family<ReasonLabel, Counter>,
}

impl EchoMetrics {
    fn unsent(&self, e: SendError) -> Counter {
        let reason = match e {
            SendError::Full => "full",
            SendError::NotConnected => "not_connected",
            SendError::TooLarge => "too_large",
            SendError::Closed => "closed",
        };
        self.not_sent.get_or_create(&ReasonLabel { reason }).clone()
    }

    fn register(&self, r: &mut Registry) {
        r.register("echo_sent", "Echo replies queued", self.echoed.clone());
        r.register(
            "echo_unsent",
            "Echo replies dropped because they could not be queued, by reason",
            self.not_sent.clone(),
        );
    }
}

/// Largest request head accepted by the metrics endpoint.
const MAX_REQUEST: usize = 8 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics`, one request per connection, one connection at a
/// time (a scrape endpoint, not a web server).
fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = serve_one(stream, &registry) {
                    tracing::debug!(%e, "metrics: request failed");
                }
            }
            Err(e) => {
                tracing::warn!(%e, "metrics: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_one(mut s: TcpStream, registry: &Registry) -> std::io::Result<()> {
    // One deadline for the whole request head, so a client trickling bytes
    // cannot hold the endpoint longer than HTTP_TIMEOUT.
    let deadline = std::time::Instant::now() + HTTP_TIMEOUT;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break Some(i);
        }
        if buf.len() >= MAX_REQUEST {
            break None;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end.is_none() {
        return respond(
            &mut s,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"",
        );
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        );
    }
    if path != "/metrics" {
        return respond(&mut s, "404 Not Found", "text/plain", b"try /metrics\n");
    }
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return respond(&mut s, "500 Internal Server Error", "text/plain", b"");
    }
    respond(
        &mut s,
        "200 OK",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body.as_bytes(),
    )
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
