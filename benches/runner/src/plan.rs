//! What a bench run does, resolved from the flags, the config file and the
//! defaults.
//!
//! # Design
//! The `shoal` binary reads and checks the `--config` file (the same file
//! `shoal node` reads) and hands the runner a [`FileSettings`]: plain values,
//! no TOML. [`plan`] layers the flags over it, applies the bench's own
//! overrides (loopback listen address, no per-address admission limits, since
//! every node is on 127.0.0.1) and validates the resulting engine config
//! once, so every scenario starts from the same checked [`Plan`].

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use shoal_engine::config::RecordCipher;
use shoal_engine::{Backend, Config};

use crate::args::{BackendArg, BenchArgs, CipherArg, Scenario, Versus};
use crate::competitor::Commonware;
use crate::BenchError;

/// What a node config file gives the bench; the binary builds it from the
/// file named by [`BenchArgs::config`].
pub struct FileSettings {
    /// The engine config the file describes (its preset with every override
    /// applied, not validated). The bench replaces the listen address with
    /// a loopback one and the identity per node.
    pub engine: Config,
    /// The file's `io.backend`, if it sets one (otherwise both backends run).
    pub backend: Option<Backend>,
    /// The file's `io.shards`, if it sets it (otherwise 1 shard per node).
    pub shards: Option<usize>,
    /// The file's `[bench]` table (all unset when the file has none).
    pub bench: BenchSettings,
}

/// The `[bench]` table of the config file: defaults for the flags of the
/// same names (read by `shoal bench --config` only).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSettings {
    /// A scenario name as `--scenario` spells it (checked here).
    pub scenario: Option<String>,
    /// Message size, bytes (per-scenario default).
    pub size: Option<usize>,
    /// Messages (or round trips) per round.
    pub messages: Option<usize>,
    /// Interleaved rounds; the median is reported.
    pub rounds: Option<usize>,
    /// rpc: requests in flight.
    pub inflight: Option<usize>,
    /// fanout: receiving nodes.
    pub peers: Option<usize>,
}

/// Everything a run needs, resolved from flags, the config file and defaults.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) scenario: Scenario,
    pub(crate) size: Option<usize>,
    pub(crate) messages: Option<usize>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) shards: usize,
    pub(crate) rounds: usize,
    pub(crate) inflight: usize,
    pub(crate) peers: usize,
    pub(crate) batch: usize,
    /// shard-rtt: idle connections the hub holds beside the measured one.
    pub(crate) crowd: usize,
    /// rpc, request: also run both ends as shard tasks, in the same rounds.
    pub(crate) tasks: bool,
    /// `--vs commonware`: the harness run beside throughput.
    pub(crate) commonware: Option<Commonware>,
    /// Template for every node (listen and identity replaced per node).
    pub(crate) base: Config,
}

/// Resolves `args` over `file` (flags win) into a validated plan.
pub(crate) fn plan(args: &BenchArgs, file: Option<FileSettings>) -> Result<Plan, BenchError> {
    let bench = file.as_ref().map(|f| &f.bench);
    let scenario = match (args.scenario, bench.and_then(|b| b.scenario.as_deref())) {
        (Some(s), _) => s,
        (None, Some(s)) => Scenario::parse(s).map_err(BenchError::Config)?,
        (None, None) => Scenario::All,
    };
    let loopback = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let mut base = match &file {
        Some(f) => {
            let mut c = f.engine.clone();
            c.listen.address = loopback;
            c
        }
        None => {
            let mut c = Config::local(loopback);
            c.limits.peer_send_backlog = 8192;
            c.io.shards = 1;
            c
        }
    };
    let backends = match (args.backend, file.as_ref().and_then(|f| f.backend)) {
        (Some(BackendArg::Both), _) | (None, None) => vec![Backend::IoUring, Backend::Epoll],
        (Some(BackendArg::IoUring), _) => vec![Backend::IoUring],
        (Some(BackendArg::Epoll), _) => vec![Backend::Epoll],
        (Some(BackendArg::Auto), _) => vec![Backend::Auto],
        (None, Some(b)) => vec![b],
    };
    if let Some(s) = args.shards {
        base.io.shards = s;
    } else if file.as_ref().and_then(|f| f.shards).is_none() {
        base.io.shards = 1;
    }
    base.io.busy_poll |= args.busy_poll;
    // Every bench node is on 127.0.0.1: a per-address limit from a
    // `recommended` config file would refuse the cluster's own peers.
    base.admission.max_inbound_per_ip = 0;
    base.admission.accept_rate_per_ip = 0;
    if args.no_doorbell {
        base.io.uring.doorbell = false;
    }
    if let Some(us) = args.wait_spin_us {
        base.io.wait_spin = Duration::from_micros(us);
    }
    if let Some(us) = args.idle_spin_us {
        base.io.idle_spin = Duration::from_micros(us);
    }
    base.io.pin_cores |= args.pin;
    match args.cipher {
        Some(CipherArg::Auto) => base.io.cipher = RecordCipher::Auto,
        Some(CipherArg::Ring) => base.io.cipher = RecordCipher::Ring,
        None => {}
    }
    if let Some(t) = args.cipher_threshold {
        base.io.cipher_threshold = t;
    }
    base.validate().map_err(|error| BenchError::InvalidConfig {
        file: args.config.clone(),
        error,
    })?;
    let pick = |flag: Option<usize>, file: Option<usize>| flag.or(file);
    let inflight = pick(args.inflight, bench.and_then(|b| b.inflight)).unwrap_or(32);
    let peers = pick(args.peers, bench.and_then(|b| b.peers)).unwrap_or(3);
    let batch = args.batch.unwrap_or(1);
    if batch == 0 {
        return Err(BenchError::Config("`batch` must be > 0".into()));
    }
    if inflight == 0 {
        return Err(BenchError::Config("`inflight` must be > 0".into()));
    }
    if peers == 0 {
        return Err(BenchError::Config("`peers` must be > 0".into()));
    }
    let commonware = match args.vs {
        Some(Versus::Commonware) => {
            if !matches!(scenario, Scenario::Throughput | Scenario::All) {
                return Err(BenchError::Config(
                    "`--vs commonware` compares throughput: use it with --scenario throughput"
                        .into(),
                ));
            }
            if let Some(bin) = args.cw_bench.as_deref().filter(|b| !b.is_file()) {
                return Err(BenchError::Config(format!(
                    "`--cw-bench {}`: no such file",
                    bin.display()
                )));
            }
            Some(Commonware::locate(args.cw_bench.as_deref()).map_err(BenchError::Run)?)
        }
        None => None,
    };
    Ok(Plan {
        scenario,
        size: pick(args.size, bench.and_then(|b| b.size)),
        messages: pick(args.messages, bench.and_then(|b| b.messages)),
        backends,
        shards: base.shard_count(),
        rounds: pick(args.rounds, bench.and_then(|b| b.rounds))
            .unwrap_or(3)
            .max(1),
        inflight,
        peers,
        batch,
        crowd: args.crowd.unwrap_or(0),
        tasks: args.tasks,
        commonware,
        base,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(flags);
        Cli::parse_from(argv).args
    }

    fn file(bench: BenchSettings) -> FileSettings {
        let mut engine = Config::recommended(None);
        engine.io.shards = 4;
        FileSettings {
            engine,
            backend: Some(Backend::Epoll),
            shards: None,
            bench,
        }
    }

    #[test]
    fn without_a_file_every_scenario_runs_on_both_backends_with_one_shard() {
        let p = plan(&args(&[]), None).expect("a valid plan");
        assert_eq!(p.scenario, Scenario::All);
        assert_eq!(p.backends, vec![Backend::IoUring, Backend::Epoll]);
        assert_eq!(
            (p.shards, p.rounds, p.inflight, p.peers, p.batch),
            (1, 3, 32, 3, 1)
        );
        assert_eq!(
            p.base.listen.address.map(|a| a.ip()),
            Some(Ipv4Addr::LOCALHOST.into())
        );
    }

    #[test]
    fn the_file_sets_defaults_and_flags_override_them() {
        let bench = BenchSettings {
            scenario: Some("rpc".into()),
            rounds: Some(5),
            inflight: Some(8),
            ..BenchSettings::default()
        };
        let p = plan(&args(&[]), Some(file(bench.clone()))).expect("a valid plan");
        assert_eq!(p.scenario, Scenario::Rpc);
        assert_eq!(p.backends, vec![Backend::Epoll]);
        // The file names no shard count: one shard, not the preset's.
        assert_eq!((p.shards, p.rounds, p.inflight), (1, 5, 8));
        // A recommended preset's per-address limits would refuse the
        // loopback cluster's own peers.
        assert_eq!(p.base.admission.max_inbound_per_ip, 0);
        assert_eq!(p.base.admission.accept_rate_per_ip, 0);
        assert!(p.base.listen.address.is_some_and(|a| a.ip().is_loopback()));

        let flags = [
            "--scenario",
            "latency",
            "--rounds",
            "1",
            "--backend",
            "both",
        ];
        let p = plan(&args(&flags), Some(file(bench))).expect("a valid plan");
        assert_eq!(p.scenario, Scenario::Latency);
        assert_eq!(p.rounds, 1);
        assert_eq!(p.backends.len(), 2);
    }

    #[test]
    fn cipher_flags_set_the_record_cipher() {
        let p = plan(&args(&[]), None).expect("a valid plan");
        assert_eq!(p.base.io.cipher, RecordCipher::Auto);
        let p = plan(&args(&["--cipher", "ring"]), None).expect("a valid plan");
        assert_eq!(p.base.io.cipher, RecordCipher::Ring);
        assert_eq!(p.base.io.cipher_policy().label(), "ring");
        let p = plan(
            &args(&["--cipher", "auto", "--cipher-threshold", "4096"]),
            None,
        )
        .expect("a valid plan");
        assert_eq!(
            (p.base.io.cipher, p.base.io.cipher_threshold),
            (RecordCipher::Auto, 4096)
        );
        match plan(&args(&["--cipher-threshold", "1"]), None) {
            Err(BenchError::InvalidConfig { .. }) => {}
            _ => panic!("a threshold below its range fails the engine's validation"),
        }
    }

    #[test]
    fn vs_commonware_is_for_throughput_only() {
        match plan(
            &args(&["--scenario", "latency", "--vs", "commonware"]),
            None,
        ) {
            Err(BenchError::Config(e)) => assert!(e.contains("--scenario throughput"), "{e}"),
            _ => panic!("--vs with latency is a config error"),
        }
        // A given harness path that is not there fails before any run.
        let missing = ["--scenario", "throughput", "--vs", "commonware"];
        let mut flags = missing.to_vec();
        flags.extend(["--cw-bench", "/nonexistent/cw-bench"]);
        match plan(&args(&flags), None) {
            Err(BenchError::Config(e)) => assert!(e.contains("no such file"), "{e}"),
            _ => panic!("a missing --cw-bench is an error"),
        }
    }

    #[test]
    fn invalid_input_is_a_config_error() {
        let bad = BenchSettings {
            scenario: Some("warp".into()),
            ..BenchSettings::default()
        };
        match plan(&args(&[]), Some(file(bad))) {
            Err(BenchError::Config(e)) => assert!(e.contains("`bench.scenario`"), "{e}"),
            _ => panic!("an unknown scenario is a config error"),
        }
        match plan(&args(&["--batch", "0"]), None) {
            Err(BenchError::Config(e)) => assert!(e.contains("`batch`"), "{e}"),
            _ => panic!("a zero batch is a config error"),
        }
        match plan(&args(&["--shards", "100000"]), None) {
            Err(BenchError::InvalidConfig { file: None, .. }) => {}
            _ => panic!("too many shards fail the engine's validation"),
        }
    }
}
