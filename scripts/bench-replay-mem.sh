#!/usr/bin/env bash
# `make bench-replay-mem`: warrant-replay's memory follows the instances, not
# the events. Two logs over the same INSTANCES instances (default 142858, the
# instances of 1M events of the realistic mix), of SMALL (default 1M) and
# LARGE (default 10M) events, each read in the same run by
#   1. kcat -C -e reading the whole topic raw               (the baseline)
#   2. warrant-replay --format none  (fold, summary only)   (what --verify keeps
#                                                            is the same, plus
#                                                            32 bytes an instance)
# and the wall-clock time and peak RSS of each (/usr/bin/time), then the
# ratios: replay's time to kcat's, and LARGE's peak RSS to SMALL's (goal: at
# most 1.20, flat). The larger log's instances get their extra events as
# policy signals reported again while authorized (warrant-loadgen
# --instances), which do not grow the state, so only the events differ.
#
# The topics are deleted at the end (KEEP_TOPICS=1 keeps them; their names
# are printed). LARGE events take ~4 GB of broker disk while they exist.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SMALL="${SMALL:-1000000}"
LARGE="${LARGE:-10000000}"
INSTANCES="${INSTANCES:-142858}"
RUNS="${RUNS:-1}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$REPO/.cache/bench-replay-mem"

command -v kcat >/dev/null || { echo "bench-replay-mem: kcat is missing (apt-get install kcat)" >&2; exit 2; }

echo "== building release binaries"
cargo build --release --quiet -p warrant-testkit -p warrant-replay
bash deploy/kafka.sh start >/dev/null

stamp="mem-$(date +%s)"
topics=()
cleanup() {
  if [[ "${KEEP_TOPICS:-}" == 1 ]]; then
    echo "== kept topics: ${topics[*]}"
  elif ((${#topics[@]} > 0)); then
    bash deploy/kafka.sh delete-topics "${topics[@]}" >/dev/null 2>&1 ||
      echo "bench-replay-mem: could not delete topics ${topics[*]}" >&2
  fi
}
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK"

# time_run LABEL CMD... -> appends "seconds maxrss_kb" to $WORK/LABEL
time_run() {
  local label=$1
  shift
  /usr/bin/time -f '%e %M' -o "$WORK/$label.last" "$@" >/dev/null 2>"$WORK/$label.stderr"
  cat "$WORK/$label.last" >>"$WORK/$label"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for events in "$SMALL" "$LARGE"; do
  topic="$stamp-$events"
  flags=(--log-topic "$topic.log" --proposals-topic "$topic.proposals" --signals-topic "$topic.signals"
         --dead-letter-topic "$topic.dead-letter" --rulesets-topic "$topic.rulesets")
  topics+=("$topic.log" "$topic.proposals" "$topic.signals" "$topic.dead-letter" "$topic.rulesets")
  echo "== producing $events events over $INSTANCES instances to $topic.log"
  "$BIN/warrant-loadgen" --events "$events" --instances "$INSTANCES" "${flags[@]}"
  for run in $(seq 1 "$RUNS"); do
    time_run "kcat-$events" kcat -C -b 127.0.0.1:9092 -t "$topic.log" -e -q -o beginning
    time_run "replay-$events" "$BIN/warrant-replay" --quiet --format none "${flags[@]}"
    tail -n 2 "$WORK/replay-$events.stderr" | sed 's/^/   /'
    for label in "kcat-$events" "replay-$events"; do
      printf '   %-15s %7.2f s  peak RSS %7.1f MiB\n' "$label" \
        "$(cut -d' ' -f1 "$WORK/$label.last")" "$(awk '{print $2/1024}' "$WORK/$label.last")"
    done
  done
done

echo
echo "== medians over $RUNS run(s), $INSTANCES instances"
for events in "$SMALL" "$LARGE"; do
  kcat_s=$(cut -d' ' -f1 "$WORK/kcat-$events" | median)
  replay_s=$(cut -d' ' -f1 "$WORK/replay-$events" | median)
  replay_rss=$(cut -d' ' -f2 "$WORK/replay-$events" | median)
  awk -v e="$events" -v k="$kcat_s" -v r="$replay_s" -v m="$replay_rss" 'BEGIN {
    printf "%9d events: kcat %6.2f s, warrant-replay %6.2f s (%8.0f events/s, %.2fx kcat), peak RSS %6.1f MiB (%.0f bytes an event)\n",
      e, k, r, e / r, r / k, m / 1024, m * 1024 / e
  }'
done
small_rss=$(cut -d' ' -f2 "$WORK/replay-$SMALL" | median)
large_rss=$(cut -d' ' -f2 "$WORK/replay-$LARGE" | median)
awk -v s="$small_rss" -v l="$large_rss" -v a="$SMALL" -v b="$LARGE" 'BEGIN {
  printf "peak RSS %d events / %d events: %.2f (goal <= 1.20)\n", b, a, l / s
}'
