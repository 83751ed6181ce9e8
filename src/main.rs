//! The `shoal` command.
//!
//! - `shoal keygen --out FILE [--force]`: a new Ed25519 identity.
//! - `shoal node --config FILE`: a long-running node (see `docs/operating.md`).
//! - `shoal bench`: a local loopback cluster; see `shoal bench --help`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid config or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The binary's allocator. Every received message is a buffer allocated on a
/// shard and freed on the application's thread; glibc's malloc returns such
/// cross-thread frees to the kernel and faults the pages in again (seen as
/// page faults and `munmap` in profiles of the throughput bench). mimalloc
/// 2.x, not 3.x: a receiving node kept 18–20 MiB more resident under 3.x
/// over a 1 GiB stream against 10–12 MiB under 2.x, and idle connections
/// varied from 11.4 to 17.8 KiB against 11.3–11.6 (`benches/README.md`,
/// "Allocator"). The library does not choose an allocator: embedders keep
/// theirs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod config_file;
mod gossip_probe;
mod node;
mod probe;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "shoal: encrypted p2p networking for validators"
)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or an
    /// EnvFilter directive such as `shoal_engine=debug`). No logs unless given.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new Ed25519 identity (mode 0600) and print its public key (hex).
    Keygen {
        /// Key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run a node from a TOML config until SIGINT or SIGTERM.
    Node {
        /// The node's TOML config (see docs/operating.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Benchmark a local loopback cluster: throughput, round trips,
    /// requests, fan-out, memory and shard scaling, each beside same-run
    /// baselines (see `--scenario`).
    Bench(Box<shoal_bench::BenchArgs>),
}

fn keygen(out: &std::path::Path, force: bool) -> ExitCode {
    let signer = shoal::Ed25519Signer::generate();
    match signer.save(out, force) {
        Ok(()) => {
            println!("{:#}", shoal::crypto::Signer::public_key(&signer));
            ExitCode::SUCCESS
        }
        Err(e @ shoal::crypto::IdentityError::AlreadyExists { .. }) => {
            eprintln!("shoal keygen: {e}; pass --force to replace it");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("shoal keygen: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(level) = &cli.log {
        let filter = match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("shoal: invalid --log {level:?}: {e}");
                return ExitCode::from(2);
            }
        };
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.cmd {
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Node { config } => node::run(&config),
        Command::Bench(args) => bench(*args),
    }
}

/// `shoal bench`: reads the `--config` file, if any, and hands its values
/// to the runner (`shoal-bench`).
fn bench(args: shoal_bench::BenchArgs) -> ExitCode {
    let file = match args.config() {
        Some(p) => match config_file::FileConfig::load(p) {
            Ok(f) => Some(bench_settings(&f)),
            Err(e) => {
                eprintln!("shoal bench: invalid config {}: {e}", p.display());
                return ExitCode::from(node::EXIT_CONFIG);
            }
        },
        None => None,
    };
    match shoal_bench::run(args, file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(shoal_bench::BenchError::Config(e)) => {
            eprintln!("shoal bench: {e}");
            ExitCode::from(node::EXIT_CONFIG)
        }
        Err(shoal_bench::BenchError::InvalidConfig { file, error }) => {
            let file = file.map(|p| format!(" {}", p.display()));
            eprintln!(
                "shoal bench: invalid config{}: {}",
                file.unwrap_or_default(),
                config_file::engine_error(error)
            );
            ExitCode::from(node::EXIT_CONFIG)
        }
        Err(shoal_bench::BenchError::Run(e)) => {
            eprintln!("shoal bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the bench takes from a node config file: the engine config it
/// describes, whether it picks the backend and the shard count, and its
/// `[bench]` table.
fn bench_settings(f: &config_file::FileConfig) -> shoal_bench::FileSettings {
    shoal_bench::FileSettings {
        engine: f.engine_config(),
        backend: f.sets("io.backend").then_some(f.io.backend),
        shards: f.sets("io.shards").then_some(f.io.shards),
        bench: f.bench.clone().unwrap_or_default(),
    }
}
