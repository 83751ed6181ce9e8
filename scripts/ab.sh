#!/usr/bin/env bash
# The table: OUT=... VARIANTS="A B" NAMES="before after" python3 scripts/ab-table.py
# Interleaved A/B of builds: /tmp/shoal-$v for each v in $VARIANTS (default "A B").
# Output in $OUT (default /tmp/ab). Rounds: 3 of `bench` (all scenarios, each itself
# medians of 3 rounds), 3 of throughput at 1 KiB and 64 B, 5 of idle (fresh process each).
out=${OUT:-/tmp/ab}; mkdir -p $out; rm -f $out/*
vs=${VARIANTS:-A B}
for i in 1 2 3; do
  for v in $vs; do /tmp/shoal-$v bench > $out/all-$v-$i.txt 2>&1; done
done
for i in 1 2 3; do
  for v in $vs; do
    /tmp/shoal-$v bench --scenario throughput --size 1024 > $out/t1k-$v-$i.txt 2>&1
    /tmp/shoal-$v bench --scenario throughput --size 64 > $out/t64-$v-$i.txt 2>&1
  done
done
for i in 1 2 3 4 5; do
  for v in $vs; do /tmp/shoal-$v bench --scenario idle --rounds 1 > $out/idle-$v-$i.txt 2>&1; done
done
uptime > $out/DONE
