#!/usr/bin/env bash
# The record-cipher A/B: `shoal bench --scenario throughput` with `--cipher ring`
# against `--cipher auto`, interleaved (3 rounds; each size, ring then auto), at
# 64 KiB, 16 KiB, 1 KiB and 64 B on io_uring, then `--backend both` at 64 KiB with
# each cipher (3 rounds). JSON per run in $OUT (default /tmp/cipher-ab); the table:
#   OUT=/tmp/cipher-ab python3 scripts/cipher-table.py
# BIN is the shoal binary (default target/release/shoal). Run on a quiet machine.
set -euo pipefail
out=${OUT:-/tmp/cipher-ab}; bin=${BIN:-target/release/shoal}
mkdir -p "$out"; rm -f "$out"/*.json
for i in 1 2 3; do for size in 65536 16384 1024 64; do for c in ring auto; do
  "$bin" bench --scenario throughput --backend io-uring --size $size --cipher $c --rounds 1 --json \
    > "$out/cipher-$c-$size-$i.json"
done; done; done
for i in 1 2 3; do for c in auto ring; do
  "$bin" bench --scenario throughput --backend both --size 65536 --cipher $c --json > "$out/both-$c-$i.json"
done; done
