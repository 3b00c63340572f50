#!/usr/bin/env bash
# `make bench-scale`: Warrant at scale, in one run on one log of EVENTS
# events (default 10M) over INSTANCES instances (default 1M) in PARTITIONS
# partitions (default 12) on the local broker:
#   1. kcat -C -e reading the whole log raw                   (the baseline)
#   2. one projector (every partition) catching up from empty: time, rate
#      beside kcat's, peak RSS, bytes of sled per event
#   3. two projector shards (0/2 and 1/2) catching up at once: the same, for
#      each shard and for the pair (goal: >= 0.8x kcat's rate)
#   4. claims on instances of shard 0/2 while shard 1/2 catches up from
#      empty: the claim round trip's p99 beside a Kafka produce's, same run
#   5. warrant-replay --format none over the log: time beside kcat's, peak
#      RSS (goal: <= 1.0x kcat, RSS flat in the events: make bench-replay-mem)
# Figures are wall-clock seconds and peak RSS from /usr/bin/time. The log
# takes ~4 GB of broker disk per 10M events; it is deleted at the end
# (KEEP_TOPICS=1 keeps it). This is not part of make test.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
EVENTS="${EVENTS:-10000000}"
INSTANCES="${INSTANCES:-1000000}"
PARTITIONS="${PARTITIONS:-12}"
CLAIMS="${CLAIMS:-300}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$REPO/.cache/bench-scale"

for tool in kcat jq curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-scale: $tool is missing" >&2; exit 2; }
done

pids=()
topics=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "${KEEP_TOPICS:-}" == 1 ]]; then
    echo "== kept topics: ${topics[*]}"
  elif ((${#topics[@]} > 0)); then
    bash deploy/kafka.sh delete-topics "${topics[@]}" >/dev/null 2>&1 ||
      echo "bench-scale: could not delete topics ${topics[*]}" >&2
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # url, what
  for _ in $(seq 1 600); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "bench-scale: $2 did not come up at $1; see $WORK/*.log" >&2
  exit 1
}

echo "== building release binaries"
cargo build --release --quiet -p warrant-testkit -p warrant-replay -p warrant-projector -p warrant-intake
bash deploy/kafka.sh start >/dev/null
rm -rf "$WORK" && mkdir -p "$WORK"

run="scale-$(date +%s)"
topics=("$run.log" "$run.proposals" "$run.signals" "$run.dead-letter" "$run.rulesets" "$run.baseline")
export WARRANT_LOG_TOPIC="$run.log" WARRANT_PROPOSALS_TOPIC="$run.proposals"
export WARRANT_SIGNALS_TOPIC="$run.signals" WARRANT_DEAD_LETTER_TOPIC="$run.dead-letter"
export WARRANT_RULESETS_TOPIC="$run.rulesets"

echo "== producing $EVENTS events over $INSTANCES instances to $run.log ($PARTITIONS partitions)"
"$BIN/warrant-loadgen" --events "$EVENTS" --instances "$INSTANCES" --partitions "$PARTITIONS"

# time_run LABEL CMD... -> "seconds maxrss_kb" in $WORK/LABEL.time
time_run() {
  local label=$1
  shift
  /usr/bin/time -f '%e %M' -o "$WORK/$label.time" "$@" >/dev/null 2>"$WORK/$label.stderr" ||
    { echo "bench-scale: $label failed:" >&2; tail -5 "$WORK/$label.stderr" >&2; return 1; }
}
seconds() { cut -d' ' -f1 "$WORK/$1.time"; }
rss_mib() { awk '{printf "%.0f", $2 / 1024}' "$WORK/$1.time"; }
sled_bytes() { du -sb "$1" | cut -f1; }

echo "== kcat"
time_run kcat kcat -C -b 127.0.0.1:9092 -t "$run.log" -e -q -o beginning

echo "== one projector, every partition"
time_run one "$BIN/warrant-projector" --exit-at-end --data-dir "$WORK/one" --listen 127.0.0.1:0
one_bytes=$(sled_bytes "$WORK/one")
rm -rf "$WORK/one"

echo "== two shards at once"
time_run shard0 "$BIN/warrant-projector" --exit-at-end --partitions 0/2 --data-dir "$WORK/shard0" --listen 127.0.0.1:0 &
first=$!
time_run shard1 "$BIN/warrant-projector" --exit-at-end --partitions 1/2 --data-dir "$WORK/shard1" --listen 127.0.0.1:0
wait "$first"
two_bytes=$(( $(sled_bytes "$WORK/shard0") + $(sled_bytes "$WORK/shard1") ))

echo "== claims on shard 0/2 while shard 1/2 catches up from empty"
rm -rf "$WORK/shard1"
port0=$(free_port)
port1=$(free_port)
intake=127.0.0.1:$(free_port)
"$BIN/warrant-projector" --partitions 0/2 --data-dir "$WORK/shard0" --listen "127.0.0.1:$port0" \
  >"$WORK/shard0.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$port0/readyz" "shard 0/2"
"$BIN/warrant-projector" --partitions 1/2 --data-dir "$WORK/shard1" --listen "127.0.0.1:$port1" \
  >"$WORK/shard1.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$port1/healthz" "shard 1/2"
"$BIN/warrant-intake" --listen "$intake" \
  --projector-url "http://127.0.0.1:$port0,http://127.0.0.1:$port1" \
  --ruleset deploy/examples/ruleset.yaml --principals deploy/examples/principals.yaml \
  --ingress=false --sweeper=false --ingress-group "$run.intake" >"$WORK/intake.log" 2>&1 &
pids+=($!)
wait_for "http://$intake/healthz" "intake"
# Shard 0/2 owns the even partitions.
even=$(seq -s, 0 2 $((PARTITIONS - 1)))
"$BIN/warrant-intakebench" --intake-url "http://$intake" --projector-url "http://127.0.0.1:$port0" \
  --claims "$CLAIMS" --claim-clients 0 --duration-secs 0 --warmup-secs 0 --baseline-topic "$run.baseline" \
  --baseline-secs 0 --instance-partitions "$even" --log-partitions "$PARTITIONS" \
  --json "$WORK/claims.json" >"$WORK/claims.txt" 2>&1 ||
  { echo "bench-scale: warrant-intakebench failed:"; cat "$WORK/claims.txt"; exit 1; }
behind=$(curl -fsS "http://127.0.0.1:$port1/readyz" >/dev/null 2>&1 && echo "no (caught up before the claims ended)" || echo "yes")
phase() { jq -r --arg n "$1" --arg k "$2" \
  '[.phases[] | select(.name == $n) | .[$k]] | if length == 0 then "-" else .[0] end' "$WORK/claims.json"; }
claim_p99=$(phase claims_sequential p99_ms)
produce_p99=$(phase kafka_sequential p99_ms)

echo "== replay"
time_run replay "$BIN/warrant-replay" --quiet --format none

echo
echo "== $EVENTS events, $INSTANCES instances, $PARTITIONS partitions, $(nproc) cores"
awk -v e="$EVENTS" -v k="$(seconds kcat)" \
  -v o="$(seconds one)" -v om="$(rss_mib one)" -v ob="$one_bytes" \
  -v s0="$(seconds shard0)" -v m0="$(rss_mib shard0)" -v s1="$(seconds shard1)" -v m1="$(rss_mib shard1)" \
  -v tb="$two_bytes" -v r="$(seconds replay)" -v rm="$(rss_mib replay)" 'BEGIN {
  two = (s0 > s1) ? s0 : s1
  printf "kcat -C -e (baseline)        %7.1f s  %9.0f events/s\n", k, e / k
  printf "projector, 1 shard           %7.1f s  %9.0f events/s  rate %.2fx kcat  RSS %5d MiB  sled %.0f B/event\n", o, e / o, k / o, om, ob / e
  printf "projector, 2 shards at once  %7.1f s  %9.0f events/s  rate %.2fx kcat  RSS %d + %d MiB  sled %.0f B/event\n", two, e / two, k / two, m0, m1, tb / e
  printf "  shard 0/2                  %7.1f s\n", s0
  printf "  shard 1/2                  %7.1f s\n", s1
  printf "replay --format none         %7.1f s  %9.0f events/s  time %.2fx kcat  RSS %5d MiB\n", r, e / r, r / k, rm
}'
awk -v c="$claim_p99" -v p="$produce_p99" -v b="$behind" 'BEGIN {
  if (c == "-" || p == "-" || p <= 0) { print "claims: not measured"; exit }
  printf "claim p99, shard 0/2 while 1/2 catches up: %.1f ms; Kafka produce p99 %.1f ms (%.1fx); 1/2 still behind at the end: %s\n", c, p, c / p, b
}'
echo "Figures: $WORK"
