#!/usr/bin/env bash
# The record-cipher A/B: `shoal bench --scenario throughput` with `--cipher ring`
# against `--cipher auto`, interleaved ($RUNS runs, default 5, of $ROUNDS rounds,
# default 3; each size, ring then auto), at 64 KiB, 16 KiB, 1 KiB and 64 B on
# io_uring, then $RUNS `--backend both` runs at 64 KiB with each cipher. One
# round is ~0.2 s at 64 KiB, so a single round swings with whatever else the
# machine does; the table takes the median over runs of each run's median
# round. JSON per run in $OUT (default /tmp/cipher-ab); the table:
#   OUT=/tmp/cipher-ab python3 scripts/cipher-table.py
# BIN is the shoal binary (default target/release/shoal). Run on a quiet machine.
set -euo pipefail
out=${OUT:-/tmp/cipher-ab}; bin=${BIN:-target/release/shoal}
runs=${RUNS:-5}; rounds=${ROUNDS:-3}
mkdir -p "$out"; rm -f "$out"/*.json
for i in $(seq "$runs"); do for size in 65536 16384 1024 64; do for c in ring auto; do
  "$bin" bench --scenario throughput --backend io-uring --size $size --cipher $c --rounds "$rounds" --json \
    > "$out/cipher-$c-$size-$i.json"
done; done; done
for i in $(seq "$runs"); do for c in auto ring; do
  "$bin" bench --scenario throughput --backend both --size 65536 --cipher $c --rounds "$rounds" --json > "$out/both-$c-$i.json"
done; done
