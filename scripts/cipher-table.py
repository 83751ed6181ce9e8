#!/usr/bin/env python3
"""Markdown tables of scripts/cipher-ab.sh's runs (OUT, default /tmp/cipher-ab):
ring vs auto per size (medians of the rounds, and the ratio of the medians),
and io_uring vs epoll at 64 KiB with each cipher."""
import glob, json, os, statistics as st

out = os.environ.get("OUT", "/tmp/cipher-ab")

def load(path):
    with open(path) as f:
        d = json.load(f)
    return d["results"] if "results" in d else [d]

def fmt_rate(r, size):
    return f"{r / 1e6:.2f} M msg/s" if size < 16384 else f"{r * size / 2**20:.0f} MiB/s"

print("| size | ring | auto | auto / ring | auto / raw sealed stream (ring) | rounds (ring; auto) |")
print("|---|---|---|---|---|---|")
for size in (65536, 16384, 1024, 64):
    runs = {c: [load(p)[0] for p in sorted(glob.glob(f"{out}/cipher-{c}-{size}-*.json"))] for c in ("ring", "auto")}
    if not runs["ring"] or not runs["auto"]:
        continue
    med = {c: st.median(r["msgs_per_sec"] for r in runs[c]) for c in runs}
    streams = [r["sealed_stream"] for c in runs for r in runs[c] if r.get("sealed_stream")]
    vs_stream = "-"
    if streams:
        vs_stream = f"{med['auto'] * size / st.median(streams):.2f}×"
    each = "; ".join(", ".join(f"{r['msgs_per_sec'] / 1e3:.0f}k" for r in runs[c]) for c in ("ring", "auto"))
    print(f"| {size} B | {fmt_rate(med['ring'], size)} | {fmt_rate(med['auto'], size)} | "
          f"**{med['auto'] / med['ring']:.2f}×** | {vs_stream} | {each} |")

print()
print("| 64 KiB, `--backend both` | io_uring | epoll | io_uring / epoll (median of per-run ratios) |")
print("|---|---|---|---|")
for c in ("auto", "ring"):
    pairs = []
    for p in sorted(glob.glob(f"{out}/both-{c}-*.json")):
        rs = {r["backend"]: r["bytes_per_sec"] for r in load(p)}
        if "io_uring" in rs and "epoll" in rs:
            pairs.append((rs["io_uring"], rs["epoll"]))
    if not pairs:
        continue
    u = st.median(a for a, _ in pairs) / 2**20
    e = st.median(b for _, b in pairs) / 2**20
    ratio = st.median(a / b for a, b in pairs)
    each = ", ".join(f"{a / b:.2f}" for a, b in pairs)
    print(f"| `--cipher {c}` | {u:.0f} MiB/s | {e:.0f} MiB/s | **{ratio:.2f}×** ({each}) |")
