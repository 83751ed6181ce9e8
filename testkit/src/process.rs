//! Readings of the running process.
//!
//! # Design
//! Linux only: values come from `/proc/self`. Callers that bound memory
//! (the adversarial tests) or measure it (the bench's idle scenario) read
//! the resident set before and after the work and compare.

use std::io;

/// This process's resident set in KiB (Linux `/proc/self/status`).
pub fn rss_kib() -> io::Result<u64> {
    std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}
