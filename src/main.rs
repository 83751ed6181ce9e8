//! The `shoal` command.
//!
//! `shoal bench` runs a local loopback cluster (the main job); see
//! `shoal bench --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "shoal: encrypted p2p networking for validators"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace). No logs unless given.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark a local loopback cluster (default: 64 KiB throughput and
    /// 64 B round trips, with same-run baselines).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(level) = &cli.log {
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.cmd {
        Command::Bench(args) => match bench::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoal bench: {e}");
                ExitCode::from(1)
            }
        },
    }
}
