//! A hand-written SVG for `shoal bench --plot`: the latency percentile
//! curve of every latency/rpc series (left) and delivered msgs/s over time
//! of every series (right). No dependencies; the file opens in any browser.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// One line on the plot.
pub struct Series {
    pub label: String,
    /// (quantile in 0..1, µs); empty for pure throughput.
    pub curve: Vec<(f64, f64)>,
    /// Delivered msgs/s per bucket.
    pub timeline: Vec<f64>,
}

/// The deepest percentile drawn: 99.99 (x = 4 "nines").
const MAX_NINES: f64 = 4.0;
const POINTS: usize = 80;
const MAX_TIMELINE_POINTS: usize = 400;

/// (quantile, µs) at evenly spaced "nines" from p0 to p99.99, from a
/// histogram of nanoseconds.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=POINTS)
        .map(|k| {
            let nines = MAX_NINES * k as f64 / POINTS as f64;
            let q = 1.0 - 10f64.powf(-nines);
            (q, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const W: f64 = 1100.0;
const PW: f64 = 440.0;
const PH: f64 = 300.0;
const TOP: f64 = 50.0;
const LEFT1: f64 = 80.0;
const LEFT2: f64 = 620.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-12).log10()).clamp(0.0, MAX_NINES)
}

/// A compact number: 1.2k, 3.4M.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Averages `v` into at most `max` points.
fn downsample(v: &[f64], max: usize) -> (Vec<f64>, usize) {
    let group = v.len().div_ceil(max).max(1);
    (
        v.chunks(group)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect(),
        group,
    )
}

/// Renders the plot. `bucket_secs` is the width of one timeline bucket.
pub fn svg(series: &[Series], bucket_secs: f64) -> String {
    const PER_ROW: usize = 4;
    const COL: f64 = 250.0;
    let rows = series.len().div_ceil(PER_ROW).max(1);
    let legend_top = TOP + PH + 70.0;
    let h = legend_top + 18.0 * rows as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    latency_panel(&mut s, series);
    timeline_panel(&mut s, series, bucket_secs);
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let x = LEFT1 + COL * (i % PER_ROW) as f64;
        let y = legend_top + 18.0 * (i / PER_ROW) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{y}">{}</text>"#,
            y - 5.0,
            x + 18.0,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn frame(s: &mut String, left: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{TOP}" width="{PW}" height="{PH}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + PW / 2.0,
        TOP - 15.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + PW / 2.0,
        TOP + PH + 38.0,
        esc(xlabel)
    );
    let cy = TOP + PH / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{cy}" text-anchor="middle" transform="rotate(-90 {} {cy})">{}</text>"#,
        left - 55.0,
        left - 55.0,
        esc(ylabel)
    );
}

fn xtick(s: &mut String, x: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
        TOP + PH,
        TOP + PH + 16.0,
        esc(label)
    );
}

fn ytick(s: &mut String, left: f64, y: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        left + PW,
        left - 6.0,
        y + 4.0,
        esc(label)
    );
}

fn polyline(s: &mut String, pts: &[(f64, f64)], color: &str) {
    if pts.is_empty() {
        return;
    }
    let mut d = String::new();
    for (x, y) in pts {
        let _ = write!(d, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"/>"#,
        d.trim_end()
    );
}

fn latency_panel(s: &mut String, series: &[Series]) {
    frame(
        s,
        LEFT1,
        "Round-trip latency by percentile",
        "percentile",
        "µs (log scale)",
    );
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|se| se.curve.iter().map(|(_, v)| v.max(1.0)))
        .collect();
    if vals.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no latency series in this run</text>"##,
            LEFT1 + PW / 2.0,
            TOP + PH / 2.0
        );
        return;
    }
    let lo = vals
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .log10()
        .floor();
    let hi = vals
        .iter()
        .cloned()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let px = |n: f64| LEFT1 + PW * n / MAX_NINES;
    let py = |v: f64| TOP + PH - PH * (v.max(1.0).log10() - lo) / (hi - lo);
    for (n, label) in [
        (0.0, "p0"),
        (std::f64::consts::LOG10_2, "p50"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
    ] {
        xtick(s, px(n), label);
    }
    let mut e = lo;
    while e <= hi {
        let v = 10f64.powf(e);
        ytick(s, LEFT1, py(v), &si(v));
        e += 1.0;
    }
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = se
            .curve
            .iter()
            .map(|(q, v)| (px(nines(*q)), py(*v)))
            .collect();
        polyline(s, &pts, COLORS[i % COLORS.len()]);
    }
}

fn timeline_panel(s: &mut String, series: &[Series], bucket_secs: f64) {
    frame(
        s,
        LEFT2,
        "Delivered messages per second over time",
        "seconds since the first send",
        "msgs/s",
    );
    let lines: Vec<(Vec<f64>, usize)> = series
        .iter()
        .map(|se| downsample(&se.timeline, MAX_TIMELINE_POINTS))
        .collect();
    let t_max = series
        .iter()
        .map(|se| se.timeline.len() as f64 * bucket_secs)
        .fold(0.0, f64::max);
    let v_max = lines
        .iter()
        .flat_map(|(v, _)| v.iter().cloned())
        .fold(0.0, f64::max);
    if t_max <= 0.0 || v_max <= 0.0 {
        return;
    }
    let px = |t: f64| LEFT2 + PW * t / t_max;
    let py = |v: f64| TOP + PH - PH * v / (v_max * 1.05);
    for k in 0..=5 {
        let t = t_max * k as f64 / 5.0;
        xtick(s, px(t), &format!("{t:.2}"));
        let v = v_max * k as f64 / 5.0;
        ytick(s, LEFT2, py(v), &si(v));
    }
    for (i, (v, group)) in lines.iter().enumerate() {
        let w = bucket_secs * *group as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(j, r)| (px((j as f64 + 0.5) * w), py(*r)))
            .collect();
        polyline(s, &pts, COLORS[i % COLORS.len()]);
    }
}
