//! The `shoal` binary end to end: keygen, node (echo, metrics, signals),
//! bench --json and --markdown, invalid configs.
//!
//! No assertion depends on speed: every wait is a liveness deadline, and a
//! child process is killed if the test fails (see [`Proc`]).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{Backend, ChannelConfig, Config, Ed25519Signer, Network, Priority, PublicKey};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// Liveness bound for anything we wait on.
const WAIT: Duration = Duration::from_secs(30);
const ECHO: u32 = 7;
/// The nodes' `[gossip]` probe channel.
const GOSSIP: u32 = 11;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("shoal-cli-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) if still running when dropped.
struct Proc {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], stderr: PathBuf) -> Proc {
        let err = fs::File::create(&stderr).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn shoal");
        Proc {
            child: Some(child),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let st = Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Waits for exit within `WAIT`; panics (and the guard kills) otherwise.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "shoal did not exit within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn shoal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shoal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keygen(path: &Path) -> String {
    let out = shoal(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    let hex = text(&out.stdout).trim().to_string();
    assert_eq!(hex.len(), 64, "a full hex public key: {hex:?}");
    hex
}

fn hex(pk: &PublicKey) -> String {
    format!("{pk:#}")
}

fn parse_key(hex: &str) -> PublicKey {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    shoal::crypto::Scheme::parse_public_key(&shoal::crypto::ED25519, &bytes).unwrap()
}

/// `GET path` over HTTP/1.1; returns (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[allow(clippy::too_many_arguments)]
fn node_toml(
    key_file: &str,
    listen: SocketAddr,
    metrics: SocketAddr,
    peers: &[(&str, SocketAddr)],
) -> String {
    node_toml_on(key_file, listen, metrics, peers, "auto", 1)
}

/// [`node_toml`] on a given backend and shard count.
fn node_toml_on(
    key_file: &str,
    listen: SocketAddr,
    metrics: SocketAddr,
    peers: &[(&str, SocketAddr)],
    backend: &str,
    shards: usize,
) -> String {
    // Dotted keys, so that a test can add top-level `section.key` lines.
    let mut t = format!(
        "preset = \"local\"\nidentity.key_file = \"{key_file}\"\nlisten.address = \"{listen}\"\n\
         io.backend = \"{backend}\"\nio.shards = {shards}\ntimeouts.idle_timeout = \"20s\"\n\
         node.echo_channel = {ECHO}\nnode.metrics = \"{metrics}\"\n"
    );
    for (k, a) in peers {
        t.push_str(&format!("\n[[peers]]\nkey = \"{k}\"\naddress = \"{a}\"\n"));
    }
    t
}

// The CLI's share of the test matrix: node 1 on epoll, node 2 on `auto`
// (io_uring where the kernel has it), both on one shard and again on two.
#[test]
fn two_nodes_echo_serve_metrics_and_stop_on_sigterm() {
    two_nodes_echo(1);
}

#[test]
fn two_shards_two_nodes_echo_serve_metrics_and_stop_on_sigterm() {
    two_nodes_echo(2);
}

fn two_nodes_echo(shards: usize) {
    let dir = TempDir::new(&format!("nodes{shards}"));
    let k1 = keygen(&dir.path("n1.key"));
    let k2 = keygen(&dir.path("n2.key"));
    assert_ne!(k1, k2);

    // The test itself is the third node, authorized by both.
    let me = Arc::new(Ed25519Signer::generate());
    let my_key = hex(shoal::crypto::Signer::public_key(&*me));
    let (a1, a2, a_me) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let (m1, m2) = (common::free_addr(), common::free_addr());
    // Both nodes also run the `[gossip]` probe (every peer of a gossip node
    // must register its channel: a message on an unknown channel closes the
    // connection).
    let gossip = format!(
        "gossip.channel = {GOSSIP}\ngossip.interval = \"20ms\"\ngossip.count = 3\n\
         gossip.wait_peers = 2\n"
    );
    let t1 = node_toml_on(
        "n1.key",
        a1,
        m1,
        &[(&k2, a2), (&my_key, a_me)],
        "epoll",
        shards,
    );
    fs::write(dir.path("n1.toml"), format!("{gossip}{t1}")).unwrap();
    let t2 = node_toml_on(
        "n2.key",
        a2,
        m2,
        &[(&k1, a1), (&my_key, a_me)],
        "auto",
        shards,
    );
    fs::write(dir.path("n2.toml"), format!("{gossip}{t2}")).unwrap();
    let c1 = dir.path("n1.toml");
    let c2 = dir.path("n2.toml");
    let mut n1 = Proc::spawn(
        &["node", "--config", c1.to_str().unwrap()],
        dir.path("n1.err"),
    );
    let mut n2 = Proc::spawn(
        &["node", "--config", c2.to_str().unwrap()],
        dir.path("n2.err"),
    );

    let mut cfg = Config::local(Some(a_me)).with_identity(me.clone());
    cfg.io.backend = Backend::Epoll;
    let (mut net, oracle) = Network::new(cfg).unwrap();
    let (tx, rx) = net
        .register(ChannelConfig::new(ECHO).max_size(1 << 20).capacity(64))
        .unwrap();
    // The nodes' `[gossip]` probe counts this node as a neighbour: it takes
    // their frames (and relays nothing).
    let _gossip = net
        .register(ChannelConfig::new(GOSSIP).capacity(1024))
        .unwrap();
    let (pk1, pk2) = (parse_key(&k1), parse_key(&k2));
    oracle.register(0, vec![pk1.clone(), pk2.clone()]);
    oracle.add_address(pk1.clone(), a1);
    oracle.add_address(pk2.clone(), a2);
    let handle = net.start().unwrap();
    assert!(
        handle.wait_peers(WAIT, |p| p.len() == 2),
        "both nodes connect to the test node; node 1:\n{}\nnode 2:\n{}",
        n1.stderr(),
        n2.stderr()
    );

    // Echo through each node.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (i, pk) in [&pk1, &pk2].into_iter().enumerate() {
        let payload = Bytes::from(format!("hello node {}", i + 1));
        tx.send(pk, payload.clone(), Priority::Low)
            .result()
            .unwrap();
        let (from, got) = rt
            .block_on(async { tokio::time::timeout(WAIT, rx.recv()).await })
            .expect("an echo within the deadline")
            .expect("network open");
        assert_eq!(&from, pk, "the echo comes from the node it was sent to");
        assert_eq!(got, payload);
    }

    // Metrics: both nodes also connect to each other (from their [[peers]]).
    for (m, p) in [(m1, &n1), (m2, &n2)] {
        let deadline = Instant::now() + WAIT;
        let body = loop {
            let (status, body) = http_get(m, "/metrics");
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            if body.contains("shoal_connections 2") {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "node never reached 2 connections; metrics:\n{body}\nstderr:\n{}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        for name in [
            "shoal_connections",
            "shoal_handshakes",
            "shoal_send_queue_full",
            "shoal_messages_in",
            "shoal_messages_out",
            "shoal_bytes_in",
        ] {
            assert!(body.contains(name), "metric {name} missing:\n{body}");
        }
        assert!(
            body.contains(&format!("shoal_messages_in_total{{channel=\"{ECHO}\"}} 1")),
            "exactly one message arrived on the echo channel:\n{body}"
        );
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        // The `[gossip]` probe: each node delivers the other's 3 broadcasts.
        let gossip =
            format!("shoal_gossip_events_total{{channel=\"{GOSSIP}\",event=\"delivered\"}} 3\n");
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = http_get(m, "/metrics");
            if body.contains(&gossip) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {gossip}; metrics:\n{body}\nstderr:\n{}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, _) = http_get(m, "/nope");
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    }

    handle.shutdown(Duration::from_millis(100));
    for (p, k) in [(&mut n1, &k1), (&mut n2, &k2)] {
        p.signal("-TERM");
        let st = p.wait();
        let err = p.stderr();
        assert_eq!(st.code(), Some(0), "graceful exit; stderr:\n{err}");
        assert!(err.contains(&format!("public key {k}")), "{err}");
        assert!(err.contains("listening on 127.0.0.1:"), "{err}");
        assert!(err.contains("SIGTERM"), "{err}");
    }
}

#[test]
fn sigint_stops_a_node_without_identity() {
    let dir = TempDir::new("sigint");
    let cfg = dir.path("n.toml");
    fs::write(
        &cfg,
        format!(
            "preset = \"local\"\n[listen]\naddress = \"{}\"\n",
            common::free_addr()
        ),
    )
    .unwrap();
    let mut n = Proc::spawn(
        &["node", "--config", cfg.to_str().unwrap()],
        dir.path("n.err"),
    );
    // Wait for the startup lines (printed after the handlers are installed).
    let deadline = Instant::now() + WAIT;
    while !n.stderr().contains("public key") {
        assert!(
            Instant::now() < deadline,
            "no startup line:\n{}",
            n.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n.signal("-INT");
    let st = n.wait();
    let err = n.stderr();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        err.contains("random key"),
        "warns about the random key: {err}"
    );
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = TempDir::new("keygen");
    let path = dir.path("id.key");
    let first = keygen(&path);
    let before = fs::read(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = shoal(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(fs::read(&path).unwrap(), before, "the key is untouched");
    let forced = shoal(&["keygen", "--out", path.to_str().unwrap(), "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(text(&forced.stdout).trim(), first, "a new key");
}

#[test]
fn invalid_configs_exit_2_naming_the_field() {
    let dir = TempDir::new("badcfg");
    let good_key = keygen(&dir.path("x.key"));
    let cases: &[(&str, &str)] = &[
        // Config::validate
        (
            "preset = \"local\"\n[timeouts]\nidle_timeout = \"1s\"\nping_interval = \"2s\"\n",
            "`timeouts.idle_timeout`",
        ),
        ("[limits]\nmax_frame_body = 10\n", "`limits.max_frame_body`"),
        // Ranges: values that would exhaust memory or make no sense.
        ("[io]\nshards = 100000\n", "`io.shards`"),
        ("[io]\nshard_queue = 1000000000000\n", "`io.shard_queue`"),
        (
            "[discovery]\ncontrol_queue = 1000000000000\n",
            "`discovery.control_queue`",
        ),
        (
            "[limits]\npeer_send_bytes = 1\n",
            "`limits.peer_send_bytes`",
        ),
        (
            "[timeouts]\nwrite_timeout = \"1ms\"\n",
            "`timeouts.write_timeout`",
        ),
        ("[io]\nrecv_buffer_size = 1\n", "`io.recv_buffer_size`"),
        ("io.uring.entries = 100\n", "`io.uring.entries`"),
        // Type and value errors from the parser.
        (
            "[io.uring]\nrecv_buffers = \"many\"\n",
            "`io.uring.recv_buffers`",
        ),
        (
            "[timeouts]\nhandshake_timeout = 5\n",
            "`timeouts.handshake_timeout`",
        ),
        ("[io]\nbackend = \"kqueue\"\n", "`io.backend`"),
        ("[listen]\naddress = \"nowhere\"\n", "`listen.address`"),
        // Unknown fields and sections, and flat keys of no section.
        (
            "[timeouts]\nidle_timout = \"30s\"\n",
            "`timeouts.idle_timout`",
        ),
        ("[limit]\nmax_inbound = 1\n", "limit"),
        ("idle_timeout = \"30s\"\n", "`idle_timeout`"),
        // Peers.
        ("[[peers]]\nkey = \"abcd\"\n", "peers[0].key"),
        (
            "[identity]\nkey_file = \"missing.key\"\n",
            "`identity.key_file`",
        ),
    ];
    for (i, (toml, field)) in cases.iter().enumerate() {
        let p = dir.path(&format!("bad{i}.toml"));
        fs::write(&p, toml).unwrap();
        let out = shoal(&["node", "--config", p.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml:?}: {err}");
        assert!(
            err.contains(field),
            "{toml:?}: stderr must name {field}: {err}"
        );
        assert!(
            !err.contains("panicked"),
            "{toml:?}: a config error, not a panic: {err}"
        );
    }
    // A valid key in a peer entry but an unknown field inside it.
    let p = dir.path("peerfield.toml");
    fs::write(
        &p,
        format!("[[peers]]\nkey = \"{good_key}\"\nadress = \"1.2.3.4:5\"\n"),
    )
    .unwrap();
    let out = shoal(&["node", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("adress"));
    // bench reads the same file and fails the same way.
    let p = dir.path("bad0.toml");
    let out = shoal(&["bench", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`timeouts.idle_timeout`"));
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json", "--backend", "epoll", "--rounds", "1"];
    all.extend_from_slice(args);
    let out = shoal(&all);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(stdout.trim()).expect("stdout is one JSON object")
}

/// `bench --markdown`: the machine, the date and the exact command line,
/// then one Markdown table row per result.
#[test]
fn bench_markdown_is_headed_by_machine_date_and_command() {
    let args = [
        "bench",
        "--markdown",
        "--backend",
        "epoll",
        "--rounds",
        "1",
        "--scenario",
        "throughput",
        "--messages",
        "200",
        "--size",
        "4096",
    ];
    let out = shoal(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 9, "{stdout}");
    assert!(
        lines[0].starts_with("- machine: ") && lines[0].contains(" cores, "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("- date: ") && lines[1].ends_with(" UTC"),
        "{stdout}"
    );
    assert_eq!(lines[2], format!("- command: `shoal {}`", args.join(" ")));
    assert!(lines[3].starts_with("- method: loopback, 1 round, "));
    assert!(
        lines[4] == "- record cipher: ring" || lines[4].starts_with("- record cipher: ring < "),
        "{stdout}"
    );
    assert_eq!(lines[5], "");
    assert!(lines[6].starts_with("| scenario | backend | shards | size |"));
    assert_eq!(lines[7], "|:--|:--|--:|--:|--:|--:|--:|--:|--:|:--|");
    assert!(
        lines[8].starts_with("| throughput | epoll | 1 | 4096 | "),
        "{stdout}"
    );
    // One output format at a time.
    let out = shoal(&["bench", "--markdown", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `--cipher ring` forces ring and says so; the default names what runs on
/// this machine (ring, or ring below a threshold and OpenSSL from it).
#[test]
fn bench_json_names_the_record_cipher() {
    let args = [
        "--scenario",
        "throughput",
        "--messages",
        "200",
        "--size",
        "16384",
    ];
    let mut ring = args.to_vec();
    ring.extend_from_slice(&["--cipher", "ring"]);
    let v = bench_json(&ring);
    assert_eq!(v["cipher"], "ring", "{v}");
    assert_eq!(v["delivered"], v["messages"]);
    let mut auto = args.to_vec();
    auto.extend_from_slice(&["--cipher", "auto", "--cipher-threshold", "1024"]);
    let v = bench_json(&auto);
    let cipher = v["cipher"].as_str().unwrap_or_default().to_string();
    assert!(
        cipher == "ring" || cipher == "ring < 1024 B <= openssl",
        "{v}"
    );
    assert_eq!(v["delivered"], v["messages"]);
}

#[test]
fn bench_json_throughput_delivers_everything() {
    let v = bench_json(&[
        "--scenario",
        "throughput",
        "--messages",
        "200",
        "--size",
        "4096",
    ]);
    for k in [
        "scenario",
        "backend",
        "shards",
        "size",
        "messages",
        "delivered",
        "seconds",
        "msgs_per_sec",
        "bytes_per_sec",
        "latency_us",
    ] {
        assert!(v.get(k).is_some(), "key {k} missing: {v}");
    }
    assert_eq!(v["scenario"], "throughput");
    assert_eq!(v["backend"], "epoll");
    assert_eq!(v["size"], 4096);
    assert_eq!(v["messages"], 200);
    assert_eq!(v["delivered"], v["messages"]);

    // Handed over in batches of 64 (the last one short).
    let v = bench_json(&[
        "--scenario",
        "throughput",
        "--messages",
        "1000",
        "--size",
        "64",
        "--batch",
        "64",
    ]);
    assert_eq!(
        (v["batch"].as_u64(), v["delivered"].as_u64()),
        (Some(64), Some(1000))
    );
}

#[test]
fn bench_json_rpc_and_fanout() {
    let dir = TempDir::new("bench");
    let plot = dir.path("p.svg");
    let v = bench_json(&[
        "--scenario",
        "rpc",
        "--inflight",
        "4",
        "--messages",
        "300",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(v["scenario"], "rpc");
    assert_eq!(v["inflight"], 4);
    assert_eq!(v["delivered"], 300);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][k].is_number(), "latency_us.{k}: {v}");
    }
    let svg = fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    let v = bench_json(&[
        "--scenario",
        "fanout",
        "--peers",
        "2",
        "--messages",
        "50",
        "--size",
        "1024",
    ]);
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["peers"], 2);
    assert_eq!(v["messages"], 100, "50 sends to each of 2 peers");
    assert_eq!(v["delivered"], 100);

    // Large messages also get the raw sealed TCP stream baseline.
    let v = bench_json(&[
        "--scenario",
        "throughput",
        "--messages",
        "30",
        "--size",
        "65536",
    ]);
    assert_eq!(v["delivered"], 30);
    assert!(v["sealed_stream"].as_f64().unwrap() > 0.0, "{v}");

    // The request API against an in-shard echo handler.
    let v = bench_json(&["--scenario", "request", "--messages", "200"]);
    assert_eq!(v["scenario"], "request");
    assert_eq!(v["delivered"], 200);
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    // Its raw TCP baseline waited the way the engine's waiters did.
    assert_eq!(v["wait_spin_us"], 100, "{v}");
    // Round trips between in-shard handlers: every echo checked, no
    // application thread on either side.
    let v = bench_json(&["--scenario", "shard-rtt", "--messages", "200"]);
    assert_eq!(v["scenario"], "shard-rtt");
    assert_eq!(v["delivered"], 200, "{v}");
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["baseline"].as_f64().unwrap() > 0.0, "{v}");
    // The same with quiet authenticated peers on the hub's shard.
    let v = bench_json(&[
        "--scenario",
        "shard-rtt",
        "--messages",
        "100",
        "--crowd",
        "20",
    ]);
    assert_eq!(
        (v["delivered"].as_u64(), v["crowd"].as_u64()),
        (Some(100), Some(20)),
        "{v}"
    );
    let v = bench_json(&[
        "--scenario",
        "latency",
        "--messages",
        "200",
        "--wait-spin-us",
        "0",
    ]);
    assert_eq!(
        (v["delivered"].as_u64(), v["wait_spin_us"].as_u64()),
        (Some(200), Some(0))
    );
}

/// A listen address already in use is a startup error naming the field
/// and the address.
#[test]
fn a_listen_address_in_use_is_named() {
    let dir = TempDir::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let p = dir.path("n.toml");
    fs::write(
        &p,
        format!("preset = \"local\"\n[listen]\naddress = \"{addr}\"\n"),
    )
    .unwrap();
    let out = shoal(&["node", "--config", p.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("`listen.address` = {addr}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `shoal node`'s echo service with one authorized peer that floods and
/// never reads: the other peer's echoes keep coming while that peer's queue
/// is full, the echoes that did not fit are counted
/// (`shoal_echo_unsent_total{reason="full"}`), and the node resets the
/// non-reader after its `write_timeout` (`closes{reason="write_timeout"}`).
#[test]
fn one_peer_that_never_reads_does_not_stall_the_echo_for_another() {
    let dir = TempDir::new("slowpeer");
    let k1 = keygen(&dir.path("n1.key"));
    let me = Arc::new(Ed25519Signer::generate());
    let my_key = hex(shoal::crypto::Signer::public_key(&*me));
    let attacker = Arc::new(Ed25519Signer::generate());
    let attacker_key = hex(shoal::crypto::Signer::public_key(&*attacker));
    let (a1, m1, a_me) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let mut toml = node_toml("n1.key", a1, m1, &[(&my_key, a_me)]);
    toml.push_str(&format!("\n[[peers]]\nkey = \"{attacker_key}\"\n"));
    // Before the tables: top-level dotted keys.
    let toml = format!("timeouts.write_timeout = \"2s\"\nlimits.peer_send_bytes = 1048576\n{toml}");
    fs::write(dir.path("n1.toml"), toml).unwrap();
    let c1 = dir.path("n1.toml");
    let n1 = Proc::spawn(
        &["node", "--config", c1.to_str().unwrap()],
        dir.path("n1.err"),
    );
    let pk1 = parse_key(&k1);
    let mut cfg = Config::local(Some(a_me)).with_identity(me.clone());
    cfg.io.backend = Backend::Epoll;
    let (mut net, oracle) = Network::new(cfg).unwrap();
    let (tx, rx) = net
        .register(ChannelConfig::new(ECHO).max_size(1 << 20).capacity(64))
        .unwrap();
    oracle.register(0, vec![pk1.clone()]);
    oracle.add_address(pk1.clone(), a1);
    let handle = net.start().unwrap();
    assert!(
        handle.wait_peers(WAIT, |p| p.len() == 1),
        "the node connects"
    );
    let echo = |i: u64| {
        let payload = Bytes::from(format!("honest {i}"));
        tx.send_wait(&pk1, payload.clone(), Priority::Low)
            .blocking()
            .result()
            .unwrap();
        let (_, got) = rx
            .recv_timeout(WAIT)
            .unwrap()
            .expect("an echo within the deadline");
        assert_eq!(got, payload);
    };
    echo(0);

    let (mut s, mut session) =
        shoal_testkit::raw_client::dial(a1, &pk1, attacker, &Config::local(None), WAIT)
            .expect("the attacker's handshake");
    let metric = |name: &str| -> u64 {
        let (_, body) = http_get(m1, "/metrics");
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Flood, never reading, until the node resets us (a write fails) or
    // the test is done: bounded in count (1 GiB) and time.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || {
            let payload = vec![0x5Au8; 256 << 10];
            let deadline = Instant::now() + WAIT;
            s.set_write_timeout(Some(WAIT)).unwrap();
            for id in 1..=4096 {
                if stop.load(std::sync::atomic::Ordering::Acquire) || Instant::now() > deadline {
                    break;
                }
                for f in common::message_frames(&mut session.sealer, ECHO, id, &payload) {
                    if s.write_all(&f).is_err() {
                        return;
                    }
                }
            }
            // Done flooding but still never reading: hold the socket open
            // (closing it with unread data would reset the node's end
            // before its write timeout could).
            while !stop.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let wait_metric = |name: &str, cond: &dyn Fn(u64) -> bool| {
            let deadline = Instant::now() + WAIT;
            while !cond(metric(name)) {
                assert!(
                    Instant::now() < deadline,
                    "{name} never moved; metrics:\n{}\nstderr:\n{}",
                    http_get(m1, "/metrics").1,
                    n1.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // The node's echoes back to the flooder stop fitting its queue...
        wait_metric("shoal_echo_unsent_total{reason=\"full\"}", &|v| v > 0);
        // ...while the honest echoes keep flowing...
        for i in 1..=20 {
            echo(i);
        }
        // ...and once its output has stalled for write_timeout, it is reset.
        wait_metric("shoal_closes_total{reason=\"write_timeout\"}", &|v| v == 1);
        stop.store(true, std::sync::atomic::Ordering::Release);
    });
    echo(21);
    handle.shutdown(Duration::from_millis(100));
}

/// `shoal node` (default bounds) with one authorized peer that floods
/// 256 KiB messages on the echo channel and never reads, for 15 s: prints
/// the longest wait for an honest peer's echo meanwhile. Uses nothing but
/// the CLI and the public API, so it measures any build.
#[test]
#[ignore = "a measurement (15 s): run with --ignored --nocapture"]
fn measure_the_echo_gap_beside_a_non_reader() {
    let dir = TempDir::new("echogap");
    let k1 = keygen(&dir.path("n1.key"));
    let me = Arc::new(Ed25519Signer::generate());
    let my_key = hex(shoal::crypto::Signer::public_key(&*me));
    let attacker = Arc::new(Ed25519Signer::generate());
    let attacker_key = hex(shoal::crypto::Signer::public_key(&*attacker));
    let (a1, m1, a_me) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let mut toml = node_toml("n1.key", a1, m1, &[(&my_key, a_me)]);
    toml.push_str(&format!("\n[[peers]]\nkey = \"{attacker_key}\"\n"));
    fs::write(dir.path("n1.toml"), toml).unwrap();
    let c1 = dir.path("n1.toml");
    let _n1 = Proc::spawn(
        &["node", "--config", c1.to_str().unwrap()],
        dir.path("n1.err"),
    );
    let pk1 = parse_key(&k1);
    let mut cfg = Config::local(Some(a_me)).with_identity(me.clone());
    cfg.io.backend = Backend::Epoll;
    let (mut net, oracle) = Network::new(cfg).unwrap();
    let (tx, rx) = net
        .register(ChannelConfig::new(ECHO).max_size(1 << 20).capacity(64))
        .unwrap();
    oracle.register(0, vec![pk1.clone()]);
    oracle.add_address(pk1.clone(), a1);
    let handle = net.start().unwrap();
    assert!(
        handle.wait_peers(WAIT, |p| p.len() == 1),
        "the node connects"
    );
    let (mut s, mut session) =
        shoal_testkit::raw_client::dial(a1, &pk1, attacker, &Config::local(None), WAIT)
            .expect("the attacker's handshake");
    let window = Duration::from_secs(15);
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let payload = vec![0x5Au8; 256 << 10];
            s.set_write_timeout(Some(window)).unwrap();
            for id in 1..=8192 {
                if start.elapsed() > window {
                    break;
                }
                for f in common::message_frames(&mut session.sealer, ECHO, id, &payload) {
                    if s.write_all(&f).is_err() {
                        return;
                    }
                }
            }
        });
        let (mut longest, mut n, mut lost) = (Duration::ZERO, 0u64, 0u64);
        while start.elapsed() < window {
            let t = Instant::now();
            let payload = Bytes::from(format!("honest {n}"));
            if tx
                .send_wait(&pk1, payload.clone(), Priority::Low)
                .blocking()
                .result()
                .is_err()
            {
                break;
            }
            loop {
                match rx.recv_timeout(window) {
                    Ok(Some((_, got))) if got == payload => break,
                    Ok(Some(_)) => continue,
                    _ => {
                        lost += 1;
                        break;
                    }
                }
            }
            longest = longest.max(t.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "echo gap beside a non-reader: {n} honest echoes in {window:?}, longest {} ms, \
             {lost} lost",
            longest.as_millis()
        );
    });
    handle.shutdown(Duration::from_millis(100));
}

/// The stream scenario with its receiver in a child process, and the
/// gossip scenario beside flooding: every byte and every message arrives,
/// and the JSON carries the scenario's figures.
#[test]
fn bench_json_stream_and_gossip() {
    let v = bench_json(&["--scenario", "stream", "--size", "8MiB"]);
    assert_eq!(v["scenario"], "stream");
    assert_eq!(v["size"], 8 << 20);
    assert!(v["bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["sealed_stream"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["rss_growth_mib"].is_number(), "{v}");

    let v = bench_json(&[
        "--scenario",
        "gossip",
        "--nodes",
        "6",
        "--degree",
        "2",
        "--messages",
        "30",
    ]);
    assert_eq!(v["scenario"], "gossip");
    assert_eq!(
        (v["peers"].as_u64(), v["degree"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(v["delivered"], 30 * 5, "{v}");
    assert_eq!(v["delivered_fraction"], 1.0, "{v}");
    assert!(v["duplicates_per_message"].as_f64().unwrap() >= 0.0, "{v}");
    assert_eq!(v["flooding"]["delivered_fraction"], 1.0, "{v}");
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
}
