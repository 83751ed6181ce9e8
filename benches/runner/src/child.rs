//! Scenarios that measure one node's memory run it in a fresh child
//! process: this executable again, as `shoal bench`, with the flags that
//! shape a node's config passed through, so the child's node is configured
//! like the parent's.
//!
//! # Design
//! A process's resident set is the only honest memory figure, and it is
//! per process: with both nodes in one process, one node's growth cannot
//! be told from the other's, and memory an earlier run freed can hide a
//! later run's growth. The child speaks one JSON object per stdout line.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use shoal_engine::Backend;

use crate::args::{BenchArgs, CipherArg};

/// `shoal bench --scenario <scenario> --backend <backend>` with every flag
/// of `args` that changes a node's config; stdout piped, stderr inherited.
pub(crate) fn bench_command(
    args: &BenchArgs,
    scenario: &str,
    backend: Backend,
) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--scenario", scenario, "--rounds", "1"])
        .args([
            "--backend",
            match backend {
                Backend::IoUring => "io-uring",
                Backend::Epoll => "epoll",
                Backend::Auto => "auto",
            },
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(s) = args.shards {
        cmd.args(["--shards", &s.to_string()]);
    }
    // A connection's OpenSSL contexts are part of its memory.
    if let Some(c) = args.cipher {
        cmd.args([
            "--cipher",
            match c {
                CipherArg::Auto => "auto",
                CipherArg::Ring => "ring",
            },
        ]);
    }
    if let Some(t) = args.cipher_threshold {
        cmd.args(["--cipher-threshold", &t.to_string()]);
    }
    if let Some(us) = args.wait_spin_us {
        cmd.args(["--wait-spin-us", &us.to_string()]);
    }
    if let Some(us) = args.idle_spin_us {
        cmd.args(["--idle-spin-us", &us.to_string()]);
    }
    for (set, flag) in [
        (args.busy_poll, "--busy-poll"),
        (args.no_doorbell, "--no-doorbell"),
        (args.pin, "--pin"),
    ] {
        if set {
            cmd.arg(flag);
        }
    }
    Ok(cmd)
}

/// A running child, killed when dropped unless it was waited for.
pub(crate) struct ChildGuard(Option<Child>);

/// The child's stdout, a JSON object per line.
pub(crate) struct Lines(std::io::Lines<BufReader<ChildStdout>>);

impl ChildGuard {
    /// Starts `cmd` (stdout piped) and hands its stdout over.
    pub(crate) fn spawn(mut cmd: Command) -> Result<(ChildGuard, Lines), String> {
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run the child bench: {e}"))?;
        let out = child.stdout.take().ok_or("the child has no stdout")?;
        Ok((ChildGuard(Some(child)), Lines(BufReader::new(out).lines())))
    }

    /// Waits for the child to exit; an error unless it succeeded.
    pub(crate) fn wait(mut self) -> Result<(), String> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let status = child.wait().map_err(|e| format!("the child bench: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the child bench failed ({status})"))
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A parent that fails mid-run must not leave the child behind.
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Lines {
    /// The child's next line as JSON; an error when it ended first.
    pub(crate) fn next(&mut self) -> Result<serde_json::Value, String> {
        match self.0.next() {
            Some(Ok(line)) => {
                serde_json::from_str(&line).map_err(|e| format!("bad child output {line:?}: {e}"))
            }
            Some(Err(e)) => Err(format!("cannot read the child's output: {e}")),
            None => Err("the child bench ended early".into()),
        }
    }
}

/// Prints one JSON line for the parent (stdout is the pipe it reads).
pub(crate) fn say(v: serde_json::Value) {
    println!("{v}");
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not hex"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{hex, unhex};

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Ok(vec![0, 0xab, 0x10]));
        assert!(unhex("0").is_err());
        assert!(unhex("zz").is_err());
    }
}
