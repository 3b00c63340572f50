#!/usr/bin/env bash
# Every test Warrant has, from a fresh checkout: `make test` runs this and so
# does CI (.ci/run). It installs what the tests need (the Python check's
# packages, Chromium and Playwright for the console, the Kafka jars), starts
# a local Kafka for the end-to-end tests, and stops it again unless it was
# already running.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }

VENV="$REPO/.cache/venv"
step "python test environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# pip is quiet when the requirements are already satisfied.
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# The console's end-to-end test (tests/e2e/console.rs) drives Debian's
# Chromium with Playwright from PyPI; Playwright's own browser download is
# never used.
step "browser for the console test (/usr/bin/chromium, playwright)"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements-browser.txt

step "kafka (deploy/kafka.sh)"
started_kafka=0
if ! bash deploy/kafka.sh status >/dev/null 2>&1; then
  started_kafka=1
fi
stop_kafka() {
  if [ "$started_kafka" = 1 ]; then
    step "stopping the kafka this run started"
    bash deploy/kafka.sh stop || true
  fi
}
trap stop_kafka EXIT
bash deploy/kafka.sh start

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Every binary first: the end-to-end tests (Rust and Python) run the
# services as processes, and cargo test alone rebuilds only the binaries of
# packages that have integration tests, so a stale one could be tested.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test (unit, property, golden and end-to-end against the local broker)"
cargo test --workspace

# A few seconds per target: proves the targets build and still hold on their
# seeds and the corpus grown so far; `make fuzz` is the long run.
step "fuzz smoke (cargo fuzz, nightly; scripts/fuzz.sh)"
bash scripts/fuzz.sh 5

step "python: another team's fastavro reads and writes our wire format"
"$VENV/bin/python" -m pytest -q tests/python

# The SDK is installed the way users install it (pip install ./clients/python,
# not editable), so its packaging and shipped schemas are tested too. Its
# tests start the real intake and projector (the binaries just built) on
# fresh topics of the local broker.
step "python: the SDK and its LangGraph adapter against the real intake, projector and broker"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  -r clients/python/requirements-test.txt -r clients/python/requirements-langgraph.txt
"$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
WARRANT_BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug" "$VENV/bin/python" -m pytest -q clients/python/tests

# warrant-mcp between a real MCP client (the Python `mcp` package) and a
# small upstream MCP server, in front of the real intake and projector.
step "python: warrant-mcp between an MCP client and an upstream server, against the real system"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/mcp/requirements.txt
WARRANT_BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug" "$VENV/bin/python" -m pytest -q tests/mcp

# Schemathesis against the OpenAPI document intake serves, with valid (and
# deliberately wrong) credentials for every kind of caller and decisions
# signed over the generated bodies: no 5xx, and every response as the
# document says. Bounded by examples per operation (WARRANT_FUZZ_EXAMPLES).
step "python: schemathesis against intake's OpenAPI document (tests/schemathesis)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/schemathesis/requirements.txt
WARRANT_BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug" "$VENV/bin/python" tests/schemathesis/run.py

# Each fault of tests/chaos for a few seconds (`make chaos` is the long
# run): on a broker of its own (ports 19092/19093), which the faults stop
# and kill, so the broker above is never touched.
step "chaos, short: every fault of tests/chaos for a few seconds, on a broker of its own"
"$VENV/bin/python" -m pytest -q tests/chaos/test_checks.py
WARRANT_BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug" "$VENV/bin/python" tests/chaos/chaos.py --mode short
