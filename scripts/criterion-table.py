#!/usr/bin/env python3
"""Markdown table of the record-cipher criterion bench, read from its output on
stdin:
  cargo bench --bench crypto -- --warm-up-time 1 --measurement-time 3 \
    | python3 scripts/criterion-table.py
One row per operation and size: the middle throughput estimate of each backend
(ring, openssl, raw-ring) and openssl / ring."""
import re, sys

UNIT = {"B/s": 1, "KiB/s": 2**10, "MiB/s": 2**20, "GiB/s": 2**30}
rate, name = {}, None
for line in sys.stdin:
    m = re.match(r"^(seal|open)/([\w-]+)/(\d+)\s", line)
    if m:
        name = (m.group(1), m.group(2), int(m.group(3)))
    t = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if t and name:
        rate[name] = float(t.group(1)) * UNIT[t.group(2)]
        name = None

def gib(x):
    return f"{x / 2**30:.2f} GiB/s" if x >= 2**30 else f"{x / 2**20:.0f} MiB/s"

print("| op | size | ring | openssl | raw ring | openssl / ring |")
print("|---|---|---|---|---|---|")
for op in ("seal", "open"):
    for size in sorted({s for (o, _, s) in rate if o == op}):
        r, o, raw = (rate.get((op, b, size)) for b in ("ring", "openssl", "raw-ring"))
        cells = [gib(x) if x else "-" for x in (r, o, raw)]
        ratio = f"**{o / r:.2f}×**" if r and o else "-"
        label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
        print(f"| {op} | {label} | {' | '.join(cells)} | {ratio} |")
