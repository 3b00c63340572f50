#!/usr/bin/env bash
# `make bench-intake`: intake's latency on the local broker (acks=all), with
# the baselines measured in the same run:
#   1. the claim round trip: POST /executions -> append -> fold -> 201 grant,
#      one client at a time (goal: p99 <= 3x a Kafka produce's p99, one
#      client, same run), then a few clients at once;
#   2. signed APPROVE decisions on the reviewers' webhook at a fixed offered
#      rate, open loop (goal: p99 <= 2x a Kafka produce's p99 at the same
#      rate, same run).
# Goals are ratios to a baseline of the same run: absolute milliseconds
# differ by 2-3x between machines of one kind.
#   3. baselines: GET /healthz on intake and a raw Kafka produce with
#      Warrant's producer (acks=all), sequential and at the same rate.
# Starts Kafka if it is not running (and stops it after), fresh topics for
# the run, a projector and two intakes (release builds, free ports): one sets
# the instances up, the measured one has never seen them, so it looks each
# one up in the projector as it would for an instance proposed long ago.
# The summary also gives the Kafka broker's JVM GC pauses during the run
# (jstat; a pause holds every append) and how busy the machine was before and
# after: both move the tails on a small shared machine.
# Figures come from warrant-intakebench (crates/warrant-testkit); knobs:
# RATE DURATION CLAIMS CLAIM_CLIENTS DECISION_INSTANCES BASELINE_SECS, and
# TIMELINE_MS=100 to print the open-loop latency per 100 ms (a stall or a trend).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$REPO/.cache/bench-intake"
RATE="${RATE:-2000}"
DURATION="${DURATION:-10}"
CLAIMS="${CLAIMS:-1000}"
CLAIM_CLIENTS="${CLAIM_CLIENTS:-4}"
BASELINE_SECS="${BASELINE_SECS:-5}"
GOAL_CLAIM_RATIO=3
GOAL_DECISION_RATIO=2

for tool in jq curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-intake: $tool is missing" >&2; exit 2; }
done

pids=()
started_kafka=0
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_kafka" = 1 ]; then bash deploy/kafka.sh stop >/dev/null || true; fi
}
trap cleanup EXIT

# Percent of all cores busy over one second (/proc/stat): the bench shares
# the machine with whatever else runs, so the summary says how busy it was.
cpu_busy() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # url, what
  for _ in $(seq 1 150); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "bench-intake: $2 did not come up at $1; see $WORK/*.log" >&2
  exit 1
}

echo "== building release binaries"
cargo build --release --quiet -p warrant-intake -p warrant-projector -p warrant-testkit
bash deploy/kafka.sh status >/dev/null 2>&1 || started_kafka=1
bash deploy/kafka.sh start >/dev/null

rm -rf "$WORK" && mkdir -p "$WORK"
run="bench-intake-$(date +%s)"
export WARRANT_LOG_TOPIC="$run.log" WARRANT_PROPOSALS_TOPIC="$run.proposals"
export WARRANT_SIGNALS_TOPIC="$run.signals" WARRANT_DEAD_LETTER_TOPIC="$run.dead-letter"
export WARRANT_RULESETS_TOPIC="$run.rulesets"
bash deploy/kafka.sh topics >/dev/null

projector="127.0.0.1:$(free_port)"
setup_intake="127.0.0.1:$(free_port)"
intake="127.0.0.1:$(free_port)"
echo "== topics $run.*; projector $projector, setup intake $setup_intake, measured intake $intake"
"$BIN/warrant-projector" --data-dir "$WORK/projector" --listen "$projector" \
  >"$WORK/projector.log" 2>&1 &
pids+=($!)
intake_flags=(--projector-url "http://$projector" --ruleset deploy/examples/ruleset.yaml
              --principals deploy/examples/principals.yaml)
"$BIN/warrant-intake" --listen "$setup_intake" "${intake_flags[@]}" --ingress=false --sweeper=false \
  --ingress-group "$run.setup" >"$WORK/setup-intake.log" 2>&1 &
pids+=($!)
"$BIN/warrant-intake" --listen "$intake" "${intake_flags[@]}" --ingress-group "$run.intake" \
  >"$WORK/intake.log" 2>&1 &
pids+=($!)
wait_for "http://$projector/healthz" "the projector"
wait_for "http://$setup_intake/readyz" "the setup intake"
wait_for "http://$intake/readyz" "intake"

busy_before=$(cpu_busy)
# A pause of the broker's JVM holds every append: sample its GC time every
# 100 ms during the run (jstat, when the JDK has it) to report the pauses.
broker_pid=$(bash deploy/kafka.sh status 2>/dev/null | sed -n 's/.*pid \([0-9]*\).*/\1/p')
jstat_pid=
if [ -n "$broker_pid" ] && command -v jstat >/dev/null; then
  jstat -gc "$broker_pid" 100 >"$WORK/broker-gc.txt" 2>/dev/null &
  jstat_pid=$!
  pids+=("$jstat_pid")
fi
cmd=("$BIN/warrant-intakebench" --intake-url "http://$intake" --setup-intake-url "http://$setup_intake"
     --projector-url "http://$projector" --baseline-topic "$run.baseline"
     --rate "$RATE" --duration-secs "$DURATION" --claims "$CLAIMS" --claim-clients "$CLAIM_CLIENTS"
     ${DECISION_INSTANCES:+--decision-instances "$DECISION_INSTANCES"} --baseline-secs "$BASELINE_SECS" --json "$WORK/result.json"
     ${TIMELINE_MS:+--timeline-ms "$TIMELINE_MS"})
echo "== ${cmd[*]#"$REPO/"}"
"${cmd[@]}"
if [ -n "$jstat_pid" ]; then kill "$jstat_pid" 2>/dev/null || true; wait "$jstat_pid" 2>/dev/null || true; fi
busy_after=$(cpu_busy) # services idle again: what is left is someone else

# The summary: each goal beside the baselines measured in the same run.
phase() { # name, field -> value, or "-" if the phase did not run
  jq -r --arg n "$1" --arg k "$2" \
    '[.phases[] | select(.name == $n) | .[$k]] | if length == 0 then "-" else .[0] end' "$WORK/result.json"
}
# met P99 BASE RATIO ERRORS [ACHIEVED OFFERED]: the p99 is within RATIO x the
# baseline's p99, no answer was an error and (open loop) at least 99% of the
# offered rate went through.
met() {
  awk -v p="$1" -v b="$2" -v g="$3" -v e="$4" -v a="${5:-0}" -v r="${6:-0}" 'BEGIN {
    if (p == "-" || b == "-" || b <= 0) { print "not measured"; exit }
    printf "%.1fx %s", p / b, (p <= g * b && e == 0 && a >= 0.99 * r) ? "met" : "NOT met"
    if (e > 0) printf " (%d errors)", e
    if (a < 0.99 * r) printf " (%.0f/s achieved)", a
    print ""
  }'
}
row() { # label, phase, goal text
  printf '%-40s %8s %8s %8s %7s  %s\n' "$1" "$(phase "$2" p50_ms)" "$(phase "$2" p99_ms)" \
    "$(phase "$2" per_sec)" "$(phase "$2" errors)" "$3"
}
claim_goal=$(met "$(phase claims_sequential p99_ms)" "$(phase kafka_sequential p99_ms)" \
  "$GOAL_CLAIM_RATIO" "$(phase claims_sequential errors)")
decision_goal=$(met "$(phase decisions_open_loop p99_ms)" "$(phase kafka_open_loop p99_ms)" \
  "$GOAL_DECISION_RATIO" "$(phase decisions_open_loop errors)" "$(phase decisions_open_loop per_sec)" "$RATE")
echo
echo "== summary: $(nproc) cores, Kafka acks=all, decisions offered at $RATE/s for $DURATION s"
printf '%-40s %8s %8s %8s %7s  %s\n' "" "p50 ms" "p99 ms" "per s" "errors" "goal"
row "claim round trip, 1 client" claims_sequential "p99 <= ${GOAL_CLAIM_RATIO}x produce p99: $claim_goal"
row "claim round trip, $CLAIM_CLIENTS clients" claims_concurrent ""
row "  baseline: Kafka produce, 1 client" kafka_sequential ""
row "  baseline: GET /healthz, 1 client" healthz_sequential ""
row "decisions, open loop at $RATE/s" decisions_open_loop "p99 <= ${GOAL_DECISION_RATIO}x produce p99 at $RATE/s: $decision_goal"
row "  baseline: Kafka produce at $RATE/s" kafka_open_loop ""
row "  baseline: GET /healthz at $RATE/s" healthz_open_loop ""
if [ -s "$WORK/broker-gc.txt" ]; then # GCT, the last column, grows by each pause
  awk '$NF ~ /^[0-9.]+$/ { if (seen && $NF > last) { d = 1000 * ($NF - last); n++; sum += d; if (d > max) max = d }
    last = $NF; seen = 1 }
    END { printf "Kafka broker JVM during the run: %d GC pauses, %.0f ms in all, the longest %.0f ms\n", n, sum, max }' \
    "$WORK/broker-gc.txt"
fi
echo "Machine CPU busy just before the run ${busy_before}%, just after ${busy_after}%: other work"
echo "on these $(nproc) cores skews the tails. Figures: $WORK/result.json; logs: $WORK/*.log"
