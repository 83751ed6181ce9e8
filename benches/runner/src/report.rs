//! What a run prints: the table (as text, as Markdown or as one JSON
//! object), the shortfall warnings and the optional SVG plot.
//!
//! # Design
//! Reporting reads finished [`RunResult`]s only; nothing here measures. The
//! table's last column states each figure against its same-run baseline in
//! the scenario's own terms (x raw seal, x raw TCP p50, KiB per connection,
//! µs per send), since only same-run ratios mean anything on a shared
//! machine. A result that delivered less than it should is printed as it
//! is, with a warning on stderr.

use crate::args::BenchArgs;
use crate::markdown;
use crate::plot;
use crate::result::RunResult;
use crate::traffic::{BUCKET, STALL};

/// Writes the plot (`--plot`), warns of shortfalls and prints `results` as
/// JSON (`--json`), as a Markdown table headed by its provenance
/// (`--markdown`) or as the text table.
pub(crate) fn report(results: &[RunResult], args: &BenchArgs, rounds: usize) -> Result<(), String> {
    if let Some(path) = &args.plot {
        let series: Vec<plot::Series> = results
            .iter()
            .map(|r| plot::Series {
                label: format!("{} {} {} B", r.scenario, r.backend, r.size),
                curve: r.curve.clone(),
                timeline: r.timeline.clone(),
            })
            .collect();
        let svg = plot::svg(&series, BUCKET.as_secs_f64());
        std::fs::write(path, svg)
            .map_err(|e| format!("cannot write the plot {}: {e}", path.display()))?;
        if !args.json {
            eprintln!("plot written to {}", path.display());
        }
    }
    for r in results {
        if r.delivered != r.messages {
            eprintln!(
                "warning: {} {}: {} of {} messages delivered (a receiver stalled for {} s)",
                r.scenario,
                r.backend,
                r.delivered,
                r.messages,
                STALL.as_secs()
            );
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
    } else if args.markdown {
        print!(
            "{}",
            markdown::render(results, rounds, &markdown::Provenance::current())
        );
    } else {
        print_table(results, rounds);
    }
    Ok(())
}

/// The line above the table: where and how the figures were taken.
pub(crate) fn title(rounds: usize) -> String {
    format!("shoal bench — loopback, medians of {rounds} interleaved rounds")
}

/// The table's column headings, in order.
pub(crate) const COLUMNS: [&str; 10] = [
    "scenario",
    "backend",
    "shards",
    "size",
    "msgs/s",
    "MiB/s",
    "p50 µs",
    "p99 µs",
    "max µs",
    "vs same-run baseline",
];

/// One row's cells, in [`COLUMNS`] order, formatted once for both the text
/// and the Markdown table.
pub(crate) fn cells(r: &RunResult) -> [String; 10] {
    let (p50, p99, max) = r
        .latency_us
        .as_ref()
        .map_or(("-".into(), "-".into(), "-".into()), |l| {
            (
                format!("{:.1}", l.p50),
                format!("{:.1}", l.p99),
                format!("{:.1}", l.max),
            )
        });
    [
        row_label(r),
        r.backend.clone(),
        r.shards.to_string(),
        r.size.to_string(),
        format!("{:.0}", r.msgs_per_sec),
        format!("{:.1}", r.bytes_per_sec / (1 << 20) as f64),
        p50,
        p99,
        max,
        versus_baseline(r),
    ]
}

fn print_table(results: &[RunResult], rounds: usize) {
    println!("{}", title(rounds));
    println!("record cipher: {}", markdown::ciphers(results));
    let line = |c: &[String; 10]| {
        format!(
            "{:<11} {:<8} {:>6} {:>8} {:>12} {:>11} {:>9} {:>9} {:>9} {:>22}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
        )
    };
    println!("{}", line(&COLUMNS.map(String::from)));
    for r in results {
        println!("{}", line(&cells(r)));
    }
}

/// The last column: `r` against its same-run baseline, in the scenario's
/// own terms.
fn versus_baseline(r: &RunResult) -> String {
    match r.scenario {
        "scale" => format!(
            "{:.2}x 1 shard ({:.0} MiB/s)",
            r.ratio,
            r.baseline / (1 << 20) as f64
        ),
        "idle" => format!(
            "{:.1} KiB RSS/conn ({} conns)",
            r.rss_per_connection_kib.unwrap_or(0.0),
            r.delivered
        ),
        "send" => format!(
            "{:.2} µs/op enq, {:.2} delivered",
            r.enqueue_seconds.unwrap_or(0.0) * 1e6 / r.messages.max(1) as f64,
            r.seconds * 1e6 / r.messages.max(1) as f64
        ),
        "gossip" => {
            let mut v = format!(
                "{:.1} % delivered, {:.2} dup/msg ({} nodes, degree {})",
                r.delivered_fraction.unwrap_or(0.0) * 100.0,
                r.duplicates_per_message.unwrap_or(0.0),
                r.peers.unwrap_or(0),
                r.degree.unwrap_or(0),
            );
            if let Some(f) = &r.flooding {
                v.push_str(&format!(
                    "; {:.2}x flooding's p50 time to all: {:.1} % delivered, {:.2} dup/msg, p50 {:.0} µs, p99 {:.0} µs",
                    r.ratio,
                    f.delivered_fraction * 100.0,
                    f.duplicates_per_message,
                    f.p50_us,
                    f.p99_us
                ));
            }
            v
        }
        "stream" => format!(
            "{:.2}x raw sealed TCP stream ({:.0} MiB/s), RSS +{:.0} MiB",
            r.ratio,
            r.baseline / (1 << 20) as f64,
            r.rss_growth_mib.unwrap_or(0.0)
        ),
        "throughput" | "fanout" => {
            let mut vs = format!(
                "{:.2}x raw seal ({:.0} MiB/s)",
                r.ratio,
                r.baseline / (1 << 20) as f64
            );
            if let Some(st) = r.sealed_stream.filter(|st| *st > 0.0) {
                vs.push_str(&format!(
                    ", {:.2}x raw sealed TCP stream ({:.0} MiB/s)",
                    r.bytes_per_sec / st,
                    st / (1 << 20) as f64
                ));
            }
            if let (Some(cw), Some(rt)) = (r.commonware_msgs_per_sec, r.commonware_runtime) {
                vs.push_str(&format!(
                    ", {:.2}x commonware ({:.0} msgs/s, {rt})",
                    r.msgs_per_sec / cw.max(1e-9),
                    cw
                ));
            }
            vs
        }
        "rpc" if r.baseline <= 0.0 => "n/a (too much to pipeline)".to_string(),
        "shard-rtt" if r.busy_poll => format!(
            "{:.2}x raw TCP p50 ({:.1} µs, both busy-poll)",
            r.ratio, r.baseline
        ),
        _ => match r.wait_spin_us.filter(|us| *us > 0) {
            Some(us) => format!(
                "{:.2}x raw TCP p50 ({:.1} µs, both spin {us} µs)",
                r.ratio, r.baseline
            ),
            None => format!("{:.2}x raw TCP p50 ({:.1} µs)", r.ratio, r.baseline),
        },
    }
}

/// The first column: the scenario and the parameter that sets it apart
/// (batch, in-flight count, peers, busy-poll, crowd).
fn row_label(r: &RunResult) -> String {
    let label = scenario_label(r);
    if r.tasks {
        format!("{label} tasks")
    } else {
        label
    }
}

fn scenario_label(r: &RunResult) -> String {
    match (r.batch, r.inflight, r.peers) {
        (Some(b), _, _) => format!("{} b{b}", r.scenario),
        (_, Some(n), _) if r.scenario == "rpc" => format!("rpc x{n}"),
        (_, _, Some(n)) if r.scenario == "scale" => format!("scale x{n}"),
        (_, _, Some(n)) if r.scenario == "gossip" => format!("gossip x{n}"),
        (_, _, Some(n)) => format!("fanout x{n}"),
        _ if r.scenario == "shard-rtt" && r.crowd.is_some() => format!(
            "rtt{} +{}",
            if r.busy_poll { " busy" } else { "" },
            r.crowd.unwrap_or(0)
        ),
        _ if r.scenario == "shard-rtt" && r.busy_poll => "rtt busy".to_string(),
        _ => r.scenario.to_string(),
    }
}
