#!/usr/bin/env bash
# `make bench-fold`: the fold's cost per event (Avro decode + rules + hash
# chain) beside SHA-256 of the same records alone, in the same run. Goal:
# decode + fold + hash <= 3x SHA-256 alone, per event. criterion measures;
# this prints the ratio from its estimates (medians).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
GOAL_RATIO=3
cargo bench -p warrant-authority --bench fold -- "$@"

group="$TARGET/criterion/instance_of_7_events"
median_ns() { # bench directory -> median ns per iteration
  local dir
  dir=$(find "$group" -maxdepth 1 -type d -name "$1" | head -n 1)
  [ -n "$dir" ] && [ -f "$dir/new/estimates.json" ] || { echo "-"; return; }
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' "$dir/new/estimates.json"
}
events=7
pipeline=$(median_ns 'decode+fold+hash')
decode=$(median_ns 'decode_only')
fold=$(median_ns 'fold+hash (pre-decoded)')
hash=$(median_ns 'hash_only')
echo
echo "== per event (median of criterion's samples, $events events per instance)"
awk -v p="$pipeline" -v d="$decode" -v f="$fold" -v h="$hash" -v n="$events" -v g="$GOAL_RATIO" 'BEGIN {
  if (p == "-" || h == "-") { print "bench-fold: criterion estimates are missing"; exit 1 }
  printf "decode + fold + hash      %7.3f us\n", p / n / 1000
  if (d != "-") printf "  decode alone            %7.3f us\n", d / n / 1000
  if (f != "-") printf "  fold + hash, pre-decoded %6.3f us\n", f / n / 1000
  printf "SHA-256 alone (baseline)  %7.3f us\n", h / n / 1000
  printf "ratio %.1fx (goal <= %dx: %s)\n", p / h, g, (p / h <= g) ? "met" : "NOT met"
}'
