#!/bin/bash
# Same-run, interleaved comparison: commonware-p2p (cw-bench) vs shoal, loopback.
# Every benchmark command runs under `flock /tmp/shoal-bench.lock`.
# Before each command we wait (outside the lock, bounded) for the 2 cores to be
# mostly idle (other engineer's compiles/tests), then re-check inside the lock.
# Raw output is appended to results.txt here (or $OUT).
set -u
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
OUT=${OUT:-$PWD/results.txt}
CW=$PWD/target/release/cw-bench
SHOAL=$ROOT/target/release/shoal
# Build both (release) if missing: commonware crates come from crates.io.
[ -x "$CW" ] || cargo build --release --manifest-path "$PWD/Cargo.toml"
[ -x "$SHOAL" ] || cargo build --release --manifest-path "$ROOT/Cargo.toml"
ROUNDS=${ROUNDS:-3}
MIN_IDLE=${MIN_IDLE:-85}

log() { echo "$*" | tee -a "$OUT"; }

# run_one <label> <cmd...>: wait for quiet + shoal binary, then run under the lock.
run_one() {
  local label=$1; shift
  local attempt
  for attempt in $(seq 1 120); do
    # wait (bounded ~10 min) for quiet machine
    for _ in $(seq 1 300); do
      [ "$(./quiet.sh)" -ge "$MIN_IDLE" ] && break
      sleep 1
    done
    # shoal binary must exist and not be being written
    if [ ! -x "$SHOAL" ] || pgrep -f "crate-name shoal" >/dev/null; then sleep 5; continue; fi
    log "=== $label ($(date -u +%T)) :: $*"
    flock /tmp/shoal-bench.lock bash -c '
      idle=$(./quiet.sh)
      if [ "$idle" -lt '"$MIN_IDLE"' ]; then echo "busy (idle $idle%), retry"; exit 75; fi
      echo "idle-before=$idle%"
      ./measure.sh "$@"
    ' _ "$@" 2>&1 | tee -a "$OUT" > /tmp/cw-bench-last.txt
    if grep -q "^busy (idle" /tmp/cw-bench-last.txt; then sleep 2; continue; fi
    if grep -q "exit=126\|Text file busy" /tmp/cw-bench-last.txt; then sleep 10; continue; fi
    return 0
  done
  log "GAVE UP on $label"
}

log "##### run.sh start $(date -u) rounds=$ROUNDS"
log "cw-bench: $(ls -l --time-style=+%FT%T $CW | awk '{print $6}')  shoal: $(ls -l --time-style=+%FT%T $SHOAL | awk '{print $6}')"
for r in $(seq 1 "$ROUNDS"); do
  run_one "round $r: commonware 64KiB" $CW --size 65536 --messages 20000
  run_one "round $r: shoal 64KiB"      $SHOAL bench --scenario throughput --backend io-uring --rounds 1 --messages 20000
  run_one "round $r: commonware 1KiB"  $CW --size 1024 --messages 1000000
  run_one "round $r: shoal 1KiB"       $SHOAL bench --scenario throughput --size 1024 --messages 1000000 --backend io-uring --rounds 1
done
log "##### run.sh end $(date -u)"
