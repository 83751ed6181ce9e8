#!/usr/bin/env bash
# Regenerates the results table in documentation files from one run of
# `shoal bench --markdown`.
#
#   scripts/bench-table.sh README.md benches/README.md
#   BENCH_FLAGS="--rounds 5" scripts/bench-table.sh README.md
#   MARKER=vs BENCH_FLAGS="--scenario throughput --backend io-uring --vs commonware" \
#     scripts/bench-table.sh benches/README.md
#
# Builds `shoal` (release), runs `shoal bench --markdown $BENCH_FLAGS` once,
# and replaces everything between the lines `<!-- bench:begin -->` and
# `<!-- bench:end -->` (`<!-- $MARKER:begin -->` ... with MARKER set) in each FILE with its output (machine, date, exact
# command, the table). A file without both markers is an error and nothing
# is written. Run it on a quiet machine: the whole table takes ~35 s on 2
# cores and every other process on them shows in the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  echo "usage: scripts/bench-table.sh FILE..." >&2
  exit 2
fi
marker=${MARKER:-bench}
begin="<!-- $marker:begin -->"
end="<!-- $marker:end -->"
for f in "$@"; do
  if ! grep -qxF "$begin" "$f" || ! grep -qxF "$end" "$f"; then
    echo "$f: no $begin / $end lines" >&2
    exit 2
  fi
done

table="$(mktemp)"
trap 'rm -f "$table"' EXIT
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
cargo run --release --quiet --bin shoal -- bench --markdown ${BENCH_FLAGS:-} > "$table"

for f in "$@"; do
  awk -v table="$table" -v begin="$begin" -v end="$end" '
    $0 == begin { print; while ((getline l < table) > 0) print l; close(table); print ""; skip = 1; next }
    $0 == end   { skip = 0 }
    !skip { print }
  ' "$f" > "$f.new"
  mv "$f.new" "$f"
  echo "updated $f"
done
