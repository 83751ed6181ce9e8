//! commonware-p2p in the same rounds (`--vs commonware`).
//!
//! # Design
//! The competitor is `benches/commonware/` (`cw-bench`), a crate of its own
//! outside the workspace: a program on commonware-p2p 2026.10 that sends
//! `--messages` of `--size` bytes between two peers on loopback and prints
//! one line with its `msgs/s` (see its crate doc for how it keeps every
//! message delivered: a window of unacknowledged messages). shoal does not
//! link it: its dependency tree is commonware's, and its build takes
//! minutes. The runner starts it as a child process, once per runtime
//! (commonware's io_uring and tokio runtimes) in every round, right after
//! shoal's own runs at the same size and count, and keeps the better of the
//! two runtimes per round: the figure a commonware user would pick.
//!
//! Where the binary comes from: `--cw-bench PATH`, or else
//! `benches/commonware/target/release/cw-bench` in this source tree, built
//! with `cargo build --release` there if it is missing (its crates come from
//! crates.io, the only network it needs).
//!
//! Not provided: latency or request comparisons (the harness measures
//! throughput only), or any check that the binary matches its source.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// commonware's runtimes, each run every round; the better one counts.
const RUNTIMES: [&str; 2] = ["iouring", "tokio"];

/// How long one harness run may take (it bounds its own loops at 60 s).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The harness binary, ready to run.
#[derive(Clone, Debug)]
pub(crate) struct Commonware {
    bin: PathBuf,
}

/// One round's figure: the better runtime's delivered messages per second.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Round {
    pub(crate) runtime: &'static str,
    pub(crate) msgs_per_sec: f64,
}

impl Commonware {
    /// The harness at `given`, or this tree's, built if it is missing.
    pub(crate) fn locate(given: Option<&Path>) -> Result<Commonware, String> {
        if let Some(bin) = given {
            return if bin.is_file() {
                Ok(Commonware { bin: bin.into() })
            } else {
                Err(format!("--cw-bench {}: no such file", bin.display()))
            };
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../commonware");
        let bin = dir.join("target/release/cw-bench");
        if bin.is_file() {
            return Ok(Commonware { bin });
        }
        eprintln!(
            "building the commonware-p2p harness once ({}; its crates come from crates.io)",
            dir.display()
        );
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo to build the commonware harness: {e}"))?;
        if !status.success() || !bin.is_file() {
            return Err(format!(
                "building the commonware harness failed ({status}); build it by hand with \
                 `cargo build --release --manifest-path {}` or pass --cw-bench PATH",
                dir.join("Cargo.toml").display()
            ));
        }
        Ok(Commonware { bin })
    }

    /// One round at `size` bytes × `messages`: every runtime once, the
    /// better one kept. A run that fails or falls short is an error, never
    /// a silently smaller figure.
    pub(crate) fn round(&self, size: usize, messages: usize) -> Result<Round, String> {
        let mut best: Option<Round> = None;
        for runtime in RUNTIMES {
            let msgs_per_sec = self.run(runtime, size, messages)?;
            match &best {
                Some(b) if b.msgs_per_sec >= msgs_per_sec => {}
                _ => {
                    best = Some(Round {
                        runtime,
                        msgs_per_sec,
                    })
                }
            }
        }
        best.ok_or_else(|| "no commonware runtime ran".to_string())
    }

    fn run(&self, runtime: &str, size: usize, messages: usize) -> Result<f64, String> {
        let mut child = Command::new(&self.bin)
            .args(["--runtime", runtime, "--size", &size.to_string()])
            .args(["--messages", &messages.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "commonware {runtime} {size} B did not finish in {} s",
                    RUN_LIMIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).map_err(|e| e.to_string())?;
        }
        if !status.success() {
            return Err(format!(
                "commonware {runtime} {size} B failed ({status}): {}",
                out.trim()
            ));
        }
        parse_rate(&out).ok_or_else(|| format!("commonware {runtime}: no rate in {out:?}"))
    }
}

/// The `msgs/s=` figure of the harness's result line, unless the line says
/// it fell short.
fn parse_rate(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("commonware-p2p "))?;
    if line.contains("SHORTFALL") {
        return None;
    }
    let rate = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("msgs/s="))?;
    rate.parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r > 0.0)
}

/// The round with the median rate.
pub(crate) fn median_round(mut rounds: Vec<Round>) -> Option<Round> {
    rounds.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
    let mid = rounds.len() / 2;
    rounds.into_iter().nth(mid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "commonware-p2p iouring size=1024 messages=100000 delivered=100000 \
        bad_len=0 secs=0.243 msgs/s=411522 MiB/s=401.9 (connect=0.21s sends_done=0.240s \
        rejected_retries=0 window_waits=12)";

    #[test]
    fn the_rate_is_read_from_the_result_line() {
        let out = format!("some log\n{LINE}\n");
        assert_eq!(parse_rate(&out), Some(411_522.0));
    }

    #[test]
    fn a_shortfall_or_a_missing_line_has_no_rate() {
        assert_eq!(parse_rate(&format!("{LINE} SHORTFALL)")), None);
        assert_eq!(parse_rate("A: peer never became ready\n"), None);
        assert_eq!(parse_rate("commonware-p2p tokio msgs/s=NaN"), None);
    }

    #[test]
    fn the_median_round_keeps_its_runtime() {
        let r = |runtime, msgs_per_sec| Round {
            runtime,
            msgs_per_sec,
        };
        let m = median_round(vec![r("tokio", 3.0), r("iouring", 1.0), r("iouring", 2.0)]);
        assert_eq!(m, Some(r("iouring", 2.0)));
        assert_eq!(median_round(Vec::new()), None);
    }
}
