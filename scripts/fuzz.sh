#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer), on the nightly
# toolchain that machines of this kind carry beside the pinned stable; the
# product itself never builds on nightly.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (make fuzz, make fuzz-smoke)
#
# Targets live in fuzz/fuzz_targets/; their seeds (small, committed) in
# fuzz/seeds/<target>/. What a run discovers goes to .cache/fuzz/corpus/
# (kept between runs, never committed); a crash or failed assertion leaves
# its input in .cache/fuzz/artifacts/<target>/ and makes this script fail.
# Each target prints one line: executions, coverage, corpus size, crashes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(envelope ingress_records fold ruleset principals intake_bodies)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED — no nightly toolchain on this machine (rustup toolchain list); cargo fuzz needs one" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked --quiet
fi

# Its own target directory: nightly with sanitizer flags would otherwise
# invalidate the stable build's cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}-fuzz}"
WORK="$REPO/.cache/fuzz"
mkdir -p "$WORK"

echo "fuzz: building ${#TARGETS[@]} targets (nightly, release, address sanitizer)"
cargo +nightly fuzz build --fuzz-dir fuzz
status=0
for target in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$target"
  artifacts="$WORK/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log="$WORK/$target.log"
  started=$(date +%s)
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -artifact_prefix="$artifacts/" \
    -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  crashes=$(find "$artifacts" -type f | wc -l)
  printf 'fuzz %-16s %4ss  executions %-10s coverage %-6s features %-6s corpus %-5s crashes %s\n' \
    "$target" "$elapsed" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$(find "$corpus" -type f | wc -l)" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    echo "fuzz: $target FAILED (exit $rc); its log: $log; inputs: $artifacts" >&2
    grep -m 20 -E 'panicked|ERROR|SUMMARY|assert' "$log" >&2 || true
    status=1
  fi
done
exit "$status"
