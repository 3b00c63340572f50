#!/usr/bin/env bash
# `make demo`: the whole system on this machine, driven as its users would:
# agents, policy engines and executors with curl, reviewers with the
# `warrant` command line. Starts Kafka (unless running), the projector and
# intake; two SREs make their own Ed25519 keys (`warrant keygen`), which are
# registered in the demo's copy of the principals file; an agent proposes a
# production restart; OPA allows; an executor's early claim is refused
# (paused); the SREs see it in `warrant queue` and approve with `warrant
# approve`, each signing with their own key; a claim for another action is
# refused; the right claim gets a grant; the executor reports; and the
# auditors' replay rebuilds the record from the log and verifies it against
# the projector by hash, and both signatures offline.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

DEMO="$REPO/.cache/demo"
INTAKE="http://127.0.0.1:${WARRANT_DEMO_INTAKE_PORT:-8080}"
PROJECTOR="http://127.0.0.1:${WARRANT_DEMO_PROJECTOR_PORT:-8081}"
NOTIFIER="http://127.0.0.1:${WARRANT_DEMO_NOTIFIER_PORT:-8082}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"

# The example principals (deploy/examples/principals.yaml). Example tokens only.
SERVICE_TOKEN="example-service-remediator-token-0001"
POLICY_TOKEN="example-policy-opa-token-0001"
EXECUTOR_TOKEN="example-executor-deployer-token-0001"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '   %s\n' "$*"; }

pids=()
started_kafka=0
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_kafka" = 1 ]; then bash deploy/kafka.sh stop >/dev/null || true; fi
}
trap cleanup EXIT

wait_for() { # url, what
  for _ in $(seq 1 150); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "demo: $2 did not come up at $1; see $DEMO/*.log" >&2
  exit 1
}

# POST JSON with a bearer token; prints the status line and body.
post() { # path, token, json
  curl -sS -o "$DEMO/body.json" -w '%{http_code}' -X POST "$INTAKE$1" \
    -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d "$3"
}

# A reviewer at the command line, with their own key file.
warrant() { # reviewer, args...
  local who="$1"
  shift
  WARRANT_INTAKE_URL="$INTAKE" WARRANT_KEY_FILE="$DEMO/$who.key" "$BIN/warrant" "$@"
}

expect() { # got, want, what
  if [ "$1" != "$2" ]; then
    echo "demo: $3: expected HTTP $2, got $1: $(cat "$DEMO/body.json")" >&2
    exit 1
  fi
  show "$3 -> $1 $(jq -c . "$DEMO/body.json")"
}

rm -rf "$DEMO" && mkdir -p "$DEMO"

say "building warrant-intake, warrant-projector, warrant-replay, warrant, warrant-notifier (release)"
cargo build --release --quiet -p warrant-intake -p warrant-projector -p warrant-replay -p warrant-cli -p warrant-notifier

say "alice and bob (role sre) make their own keys: warrant keygen"
for who in alice bob; do
  "$BIN/warrant" keygen --out "$DEMO/$who.key" --principal "$who" --json >"$DEMO/$who.keygen.json"
  show "$who: key $(jq -r .key_id "$DEMO/$who.keygen.json") in $DEMO/$who.key ($(ls -l "$DEMO/$who.key" | cut -c1-10))"
done
# The demo's copy of the example principals, with each public key added to
# its reviewer's entry (the line `warrant keygen` prints), under the roles.
awk -v alice="$(jq -r .principals_entry "$DEMO/alice.keygen.json")" \
    -v bob="$(jq -r .principals_entry "$DEMO/bob.keygen.json")" '
  { print }
  /^  - principal: / { who = $3 }
  /^    roles: / && (who == "alice" || who == "bob") {
    printf "    keys: [\"%s\"]\n", (who == "alice" ? alice : bob)
    who = ""
  }' deploy/examples/principals.yaml >"$DEMO/principals.yaml"
if [ "$(grep -c '^    keys: \["ed25519:' "$DEMO/principals.yaml")" != 2 ]; then
  echo "demo: could not add the keys to $DEMO/principals.yaml (did the example change shape?)" >&2
  exit 1
fi
show "registered in $DEMO/principals.yaml:"
grep -B2 '^    keys:' "$DEMO/principals.yaml" | grep -v '^--$' | sed 's/^/     /'

say "starting kafka (deploy/kafka.sh)"
bash deploy/kafka.sh status >/dev/null 2>&1 || started_kafka=1
bash deploy/kafka.sh start

# A fresh log per demo run, so the replayed record is this run's alone.
run="demo-$(date +%s)"
export WARRANT_LOG_TOPIC="$run.log" WARRANT_PROPOSALS_TOPIC="$run.proposals"
export WARRANT_SIGNALS_TOPIC="$run.signals" WARRANT_DEAD_LETTER_TOPIC="$run.dead-letter"
export WARRANT_RULESETS_TOPIC="$run.rulesets" WARRANT_PRINCIPALS_TOPIC="$run.principals"
WARRANT_LOG_TOPIC="$WARRANT_LOG_TOPIC" bash deploy/kafka.sh topics >/dev/null

say "starting the projector ($PROJECTOR) and intake ($INTAKE)"
"$BIN/warrant-projector" --data-dir "$DEMO/projector" --listen "${PROJECTOR#http://}" \
  >"$DEMO/projector.log" 2>&1 &
pids+=($!)
"$BIN/warrant-intake" --listen "${INTAKE#http://}" --projector-url "$PROJECTOR" \
  --ruleset deploy/examples/ruleset.yaml --principals "$DEMO/principals.yaml" \
  >"$DEMO/intake.log" 2>&1 &
pids+=($!)
wait_for "$PROJECTOR/healthz" "the projector"
wait_for "$INTAKE/readyz" "intake"

# The example channels (deploy/examples/notifier.yaml) post to 127.0.0.1:9101,
# where warrant-notify-receiver prints each notification (example secrets).
say "starting the notifier ($NOTIFIER) and a receiver that prints what it sends"
"$BIN/warrant-notify-receiver" --secret example-sre-webhook-secret \
  --secret example-ic-webhook-secret --secret example-remediator-webhook-secret \
  >"$DEMO/notifications.log" 2>"$DEMO/receiver.log" &
pids+=($!)
SRE_WEBHOOK_SECRET=example-sre-webhook-secret IC_WEBHOOK_SECRET=example-ic-webhook-secret \
REMEDIATOR_WEBHOOK_SECRET=example-remediator-webhook-secret \
SLACK_WEBHOOK_URL=http://127.0.0.1:9101/hooks/slack \
  "$BIN/warrant-notifier" --channels deploy/examples/notifier.yaml --data-dir "$DEMO/notifier" \
  --listen "${NOTIFIER#http://}" --intake-url "$INTAKE" >"$DEMO/notifier.log" 2>&1 &
pids+=($!)
wait_for "$NOTIFIER/readyz" "the notifier"

say "an agent proposes restarting prod/payments/api"
code=$(post /v1/proposals "$SERVICE_TOKEN" '{
  "action": {"kind": "service.restart", "target": "prod/payments/api",
             "parameters": {"strategy": "rolling", "reason": "heap grows 40 MB/min"}},
  "proposer": {"kind": "AGENT", "model": "ops-model-7"},
  "context_refs": [{"uri": "https://grafana.example/d/payments", "note": "p99 latency panel"}],
  "rationale": "a restart resets the leak until the fix ships"}')
expect "$code" 202 "POST /v1/proposals"
instance=$(jq -r .instance_id "$DEMO/body.json")
digest=$(jq -r .action_digest "$DEMO/body.json")

say "OPA reports ALLOW"
code=$(post "/v1/instances/$instance/signals" "$POLICY_TOKEN" \
  '{"verdict": "ALLOW", "reasons": ["restart within change window"], "policy_ref": {"id": "restarts.rego", "version": "17"}}')
expect "$code" 202 "POST signals"

say "the executor tries to run before anyone approved: paused, refused"
code=$(post "/v1/instances/$instance/executions" "$EXECUTOR_TOKEN" "{\"action_digest\": \"$digest\"}")
expect "$code" 409 "POST executions"

say "alice looks at what awaits a decision: warrant queue"
for _ in $(seq 1 100); do
  warrant alice queue --json | jq -e --arg id "$instance" '.instances[] | select(.instance_id == $id)' \
    >/dev/null && break
  sleep 0.1
done
warrant alice queue

say "alice and bob approve, each signing with their own key: warrant approve --yes"
warrant alice approve "$instance" --yes --justification "heap profile confirms the leak" \
  --constraint strategy=rolling
echo
warrant bob approve "$instance" --yes --justification "ok for the rolling restart"

say "a claim for a different action is refused"
code=$(post "/v1/instances/$instance/executions" "$EXECUTOR_TOKEN" \
  '{"action_digest": "0000000000000000000000000000000000000000000000000000000000000000"}')
expect "$code" 409 "POST executions (wrong digest)"

say "the right claim gets a grant"
code=$(post "/v1/instances/$instance/executions" "$EXECUTOR_TOKEN" "{\"action_digest\": \"$digest\"}")
expect "$code" 201 "POST executions"
grant=$(jq -r .grant_id "$DEMO/body.json")

say "the executor reports success"
code=$(post "/v1/instances/$instance/reports" "$EXECUTOR_TOKEN" \
  "{\"grant_id\": \"$grant\", \"outcome\": \"SUCCEEDED\", \"detail\": \"3/3 pods restarted\"}")
expect "$code" 202 "POST reports"

# Wait until the projector has folded the report.
for _ in $(seq 1 100); do
  status=$(curl -fsS "$PROJECTOR/v1/instances/$instance" | jq -r .status)
  [ "$status" = COMPLETED ] && break
  sleep 0.1
done
show "projector: instance $instance is $status"

say "what the notifier told people about it (warrant-notify-receiver)"
# The last one is the proposer's COMPLETED outcome.
for _ in $(seq 1 100); do
  grep -q "outcome COMPLETED $instance" "$DEMO/notifications.log" && break
  sleep 0.1
done
if ! grep -q "outcome COMPLETED $instance" "$DEMO/notifications.log"; then
  echo "demo: the notifier sent no COMPLETED outcome for $instance (see $DEMO/notifier.log)" >&2
  exit 1
fi
grep -F "$instance" "$DEMO/notifications.log" | sed 's/^/   /'

say "the auditors' replay: rebuild the record from the log and verify it by hash"
"$BIN/warrant-replay" --quiet --instance "$instance" --format text --verify "$PROJECTOR"
