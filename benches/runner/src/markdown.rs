//! `--markdown`: the results table as Markdown, headed by what produced it.
//!
//! # Design
//! The tables in README.md and benches/README.md are pasted from this
//! output, never typed. A figure means something only with its provenance,
//! so the table is headed by the machine (CPU model, cores, kernel), the
//! date in UTC and the exact command line, which is also how to produce the
//! table again. [`render`] is a pure function of the results and a
//! [`Provenance`]; only [`Provenance::current`] reads the machine
//! (`/proc/cpuinfo`, `/proc/sys/kernel/{ostype,osrelease}`, the clock and
//! the process's arguments). The cells are the text table's
//! ([`report::cells`]), so the two forms cannot disagree. A shortfall (a
//! receiver that stalled) is printed under the table as well as on stderr,
//! so a pasted table cannot hide it.
//!
//! Not provided: a store of past runs or any comparison between runs; a
//! comparison is two runs of the same command, read side by side.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::{self, COLUMNS};
use crate::result::RunResult;

/// Where and when a table was measured, and the command that measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Provenance {
    /// CPU model (`model name` in `/proc/cpuinfo`).
    pub(crate) cpu: String,
    /// Cores this process may run on.
    pub(crate) cores: usize,
    /// Kernel as `uname -srm` prints it: name, release, machine.
    pub(crate) kernel: String,
    /// Start of the report, `YYYY-MM-DD HH:MM UTC`.
    pub(crate) date: String,
    /// The command line, shell-quoted, program name without its directory.
    pub(crate) command: String,
}

impl Provenance {
    /// This machine, now, and this process's command line.
    pub(crate) fn current() -> Provenance {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| cpu_model(&info))
            .unwrap_or_else(|| "unknown CPU".to_string());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        let kernel = format!(
            "{} {} {}",
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
            std::env::consts::ARCH
        );
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let args: Vec<String> = std::env::args().collect();
        Provenance {
            cpu,
            cores,
            kernel,
            date: utc_minute(secs),
            command: command_line(&args),
        }
    }
}

/// The Markdown report: provenance list, the table, then any shortfall.
pub(crate) fn render(results: &[RunResult], rounds: usize, p: &Provenance) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "- machine: {}, {} cores, {}\n",
        p.cpu, p.cores, p.kernel
    ));
    out.push_str(&format!("- date: {}\n", p.date));
    out.push_str(&format!("- command: {}\n", code_span(&p.command)));
    let rounds = match rounds {
        1 => "1 round".to_string(),
        n => format!("medians of {n} interleaved rounds"),
    };
    out.push_str(&format!(
        "- method: loopback, {rounds}, each ratio against a baseline measured \
         in the same run\n"
    ));
    out.push_str(&format!("- record cipher: {}\n\n", ciphers(results)));
    out.push_str(&row(&COLUMNS.map(String::from)));
    // Labels and the baseline column left, figures right.
    out.push_str("|:--|:--|--:|--:|--:|--:|--:|--:|--:|:--|\n");
    for r in results {
        out.push_str(&row(&report::cells(r)));
    }
    let short: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.delivered != r.messages)
        .collect();
    if !short.is_empty() {
        out.push('\n');
        for r in short {
            out.push_str(&format!(
                "**Shortfall:** {} {}: {} of {} messages delivered (a receiver stalled).\n",
                report::cells(r)[0],
                r.backend,
                r.delivered,
                r.messages
            ));
        }
    }
    out
}

/// The record cipher(s) of `results`, each named once in order of first
/// appearance (`ring`, `ring < 4096 B <= openssl`).
pub(crate) fn ciphers(results: &[RunResult]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for r in results {
        if !seen.contains(&r.cipher.as_str()) {
            seen.push(&r.cipher);
        }
    }
    seen.join("; ")
}

fn row(cells: &[String; 10]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// `s` as inline code; a longer fence when `s` itself holds a backtick.
fn code_span(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// The first `model name` in `/proc/cpuinfo`'s text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// `args` as one shell command: the program's file name without its
/// directory (`target/release/shoal` prints as `shoal`), each argument
/// quoted only where the shell would split or expand it.
fn command_line(args: &[String]) -> String {
    let mut words = Vec::with_capacity(args.len());
    if let Some(program) = args.first() {
        let name = std::path::Path::new(program)
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
        words.push(shell_word(&name));
    }
    words.extend(args.iter().skip(1).map(|a| shell_word(a)));
    words.join(" ")
}

fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc_minute(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let rest = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Proleptic Gregorian (year, month, day) of `days` since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Latency;

    fn provenance() -> Provenance {
        Provenance {
            cpu: "Intel(R) Xeon(R) Processor".into(),
            cores: 2,
            kernel: "Linux 6.18.44 x86_64".into(),
            date: "2026-12-06 13:44 UTC".into(),
            command: "shoal bench --markdown".into(),
        }
    }

    fn throughput() -> RunResult {
        let mut r = RunResult::new("throughput", "io_uring".into(), 1, 65536);
        r.cipher = "ring < 4096 B <= openssl".into();
        r.finish(4000, 4000, 0.25, 4000 * 65536);
        r.baseline = 1811.0 * (1 << 20) as f64;
        r.ratio = 0.55;
        r.sealed_stream = Some(939.0 * (1 << 20) as f64);
        r
    }

    fn latency() -> RunResult {
        let mut r = RunResult::new("latency", "epoll".into(), 1, 64);
        r.cipher = "ring < 4096 B <= openssl".into();
        r.finish(5000, 5000, 0.1, 5000 * 64);
        r.latency_us = Some(Latency {
            p50: 14.9,
            p90: 30.0,
            p99: 57.6,
            p999: 200.0,
            max: 297.0,
        });
        r.baseline = 6.3;
        r.ratio = 2.38;
        r.wait_spin_us = Some(100);
        r
    }

    #[test]
    fn renders_provenance_then_the_table() {
        let text = render(&[throughput(), latency()], 3, &provenance());
        let expected = "\
- machine: Intel(R) Xeon(R) Processor, 2 cores, Linux 6.18.44 x86_64
- date: 2026-12-06 13:44 UTC
- command: `shoal bench --markdown`
- method: loopback, medians of 3 interleaved rounds, each ratio against a baseline measured in the same run
- record cipher: ring < 4096 B <= openssl

| scenario | backend | shards | size | msgs/s | MiB/s | p50 µs | p99 µs | max µs | vs same-run baseline |
|:--|:--|--:|--:|--:|--:|--:|--:|--:|:--|
| throughput | io_uring | 1 | 65536 | 16000 | 1000.0 | - | - | - | 0.55x raw seal (1811 MiB/s), 1.06x raw sealed TCP stream (939 MiB/s) |
| latency | epoll | 1 | 64 | 50000 | 3.1 | 14.9 | 57.6 | 297.0 | 2.38x raw TCP p50 (6.3 µs, both spin 100 µs) |
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_shortfall_is_printed_under_the_table() {
        let mut r = throughput();
        r.delivered = 3000;
        let text = render(&[r], 1, &provenance());
        assert!(text.ends_with(
            "|\n\n**Shortfall:** throughput io_uring: 3000 of 4000 messages delivered (a receiver stalled).\n"
        ));
    }

    #[test]
    fn cells_with_pipes_are_escaped() {
        assert_eq!(
            row(&["a|b", "", "", "", "", "", "", "", "", ""].map(String::from)),
            "| a\\|b |  |  |  |  |  |  |  |  |  |\n"
        );
    }

    #[test]
    fn the_command_line_is_shell_quoted_without_the_directory() {
        let args = [
            "target/release/shoal",
            "bench",
            "--config",
            "my bench.toml",
            "it's",
        ]
        .map(String::from);
        assert_eq!(
            command_line(&args),
            r"shoal bench --config 'my bench.toml' 'it'\''s'"
        );
        assert_eq!(code_span("a`b"), "`` a`b ``");
    }

    #[test]
    fn the_cpu_model_is_the_first_model_name() {
        let info =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }

    #[test]
    fn dates_are_utc_to_the_minute() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minute(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc_minute(1_798_761_599), "2026-12-31 23:59 UTC");
    }
}
