#!/usr/bin/env bash
# Interleaved A/B of builds where memory is in question: /tmp/shoal-$v for
# each v in $VARIANTS (default "A B"), io_uring, 3 rounds of: throughput at
# 64 B and 64 KiB, rpc, stream (1 GiB, receiver in its own process) and idle
# (fresh process). Output in $OUT (default /tmp/ab-memory); prints one line
# per run.
out=${OUT:-/tmp/ab-memory}; mkdir -p $out; rm -f $out/*
vs=${VARIANTS:-A B}
for i in 1 2 3; do
  for v in $vs; do
    b=/tmp/shoal-$v
    $b bench --scenario throughput --size 64 --backend io-uring > $out/t64-$v-$i.txt 2>&1
    $b bench --scenario throughput --size 65536 --backend io-uring > $out/t64k-$v-$i.txt 2>&1
    $b bench --scenario rpc --backend io-uring > $out/rpc-$v-$i.txt 2>&1
    $b bench --scenario stream --backend io-uring > $out/stream-$v-$i.txt 2>&1
    $b bench --scenario idle --rounds 1 --backend io-uring > $out/idle-$v-$i.txt 2>&1
  done
done
uptime > $out/DONE
for f in $out/*-*.txt; do
  echo "$(basename $f .txt): $(grep -E '^(throughput|rpc|stream|idle) ' $f | sed 's/  */ /g')"
done
