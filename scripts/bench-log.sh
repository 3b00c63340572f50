#!/usr/bin/env bash
# `make bench-log`: the log benchmarks of "The log is the truth", side by side
# in one run on one topic of EVENTS events (default 1M) on the local broker:
#   1. kcat -C -e reading the whole topic raw          (the baseline)
#   2. warrant-replay folding the same range           (goal: <= 1.0x kcat's time,
#                                                         peak RSS <= 256 MiB)
#   3. warrant-projector catching up from empty, every
#      batch flushed to sled, then exiting             (goal: >= 0.8x kcat's rate,
#                                                         peak RSS <= 512 MiB)
# The time goals are ratios to kcat in the same run: machines differ.
# Each reader runs RUNS times (default 3); every run is printed, then the
# median. Figures are wall-clock seconds from /usr/bin/time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
EVENTS="${EVENTS:-1000000}"
RUNS="${RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$REPO/.cache/bench-log"

command -v kcat >/dev/null || { echo "bench-log: kcat is missing (apt-get install kcat)" >&2; exit 2; }

echo "== building release binaries"
cargo build --release --quiet -p warrant-testkit -p warrant-replay -p warrant-projector
bash deploy/kafka.sh start >/dev/null

topic="bench-$(date +%s)"
flags=(--log-topic "$topic.log" --proposals-topic "$topic.proposals" --signals-topic "$topic.signals"
       --dead-letter-topic "$topic.dead-letter" --rulesets-topic "$topic.rulesets")
echo "== producing $EVENTS events (the realistic mix) to $topic.log"
"$BIN/warrant-loadgen" --events "$EVENTS" "${flags[@]}"
rm -rf "$WORK" && mkdir -p "$WORK"

# time_run LABEL CMD... -> appends "seconds maxrss_kb" to $WORK/LABEL
time_run() {
  local label=$1
  shift
  /usr/bin/time -f '%e %M' -o "$WORK/$label.last" "$@" >/dev/null 2>"$WORK/$label.stderr"
  cat "$WORK/$label.last" >>"$WORK/$label"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for run in $(seq 1 "$RUNS"); do
  echo "== run $run/$RUNS"
  time_run kcat kcat -C -b 127.0.0.1:9092 -t "$topic.log" -e -q -o beginning
  time_run replay "$BIN/warrant-replay" --quiet --format none "${flags[@]}"
  rm -rf "$WORK/projector-data"
  time_run projector "$BIN/warrant-projector" --exit-at-end --data-dir "$WORK/projector-data" \
    --listen 127.0.0.1:0 "${flags[@]}"
  for label in kcat replay projector; do
    printf '   %-9s %6.2f s  peak RSS %7.1f MiB\n' "$label" \
      "$(cut -d' ' -f1 "$WORK/$label.last")" "$(awk '{print $2/1024}' "$WORK/$label.last")"
  done
done

kcat_s=$(cut -d' ' -f1 "$WORK/kcat" | median)
replay_s=$(cut -d' ' -f1 "$WORK/replay" | median)
projector_s=$(cut -d' ' -f1 "$WORK/projector" | median)
projector_rss=$(cut -d' ' -f2 "$WORK/projector" | median)
echo
echo "== medians over $RUNS runs, $EVENTS events"
replay_rss=$(cut -d' ' -f2 "$WORK/replay" | median)
awk -v e="$EVENTS" -v k="$kcat_s" -v r="$replay_s" -v p="$projector_s" -v m="$projector_rss" -v rm="$replay_rss" 'BEGIN {
  printf "kcat -C -e (baseline)   %6.2f s  %9.0f events/s\n", k, e / k
  printf "warrant-replay          %6.2f s  %9.0f events/s  time ratio %.2f (goal <= 1.00: %s)\n", r, e / r, r / k, (r / k <= 1.0) ? "met" : "NOT met"
  printf "warrant-replay peak RSS %6.1f MiB (goal <= 256: %s)\n", rm / 1024, (rm / 1024 <= 256) ? "met" : "NOT met"
  printf "projector catch-up      %6.2f s  %9.0f events/s  rate ratio %.2f (goal >= 0.80: %s)\n", p, e / p, k / p, (k / p >= 0.8) ? "met" : "NOT met"
  printf "projector peak RSS      %6.1f MiB (goal <= 512: %s)\n", m / 1024, (m / 1024 <= 512) ? "met" : "NOT met"
}'
