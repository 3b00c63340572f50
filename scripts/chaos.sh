#!/usr/bin/env bash
# `make chaos`: every fault of tests/chaos at full length against the real
# binaries and a broker of its own (ports 19092/19093, data in
# .cache/chaos-kafka), one line per fault; exits 1 if any check failed.
#
#   CHAOS_PROFILE=debug|release  which build to run (default debug, what
#                                `make test` builds; release for timing)
#   extra arguments go to tests/chaos/chaos.py (e.g. --only broker-kill)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PROFILE="${CHAOS_PROFILE:-debug}"
VENV="$REPO/.cache/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

release=()
if [ "$PROFILE" = release ]; then release=(--release); fi
# Every binary, as scripts/test.sh builds them: the faults run intake, the
# projector, replay and warrant-loadgen, and building the same set with the
# same features keeps cargo from rebuilding dependencies between the two.
cargo build ${release[@]+"${release[@]}"} --workspace --bins

exec "$VENV/bin/python" tests/chaos/chaos.py --mode full --profile "$PROFILE" "$@"
