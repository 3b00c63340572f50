"""The chaos suite: each fault against the real binaries and a real broker, one line each.

    python tests/chaos/chaos.py --mode short|full [--only NAME ...] [--json FILE]

Starts its own single-node Kafka with deploy/kafka.sh on ports of its own
(19092/19093, data in .cache/chaos-kafka; WARRANT_CHAOS_KAFKA_PORT,
WARRANT_CHAOS_KAFKA_CONTROLLER_PORT, WARRANT_CHAOS_KAFKA_DATA override them,
WARRANT_KAFKA_CACHE names the jar cache), so faults may stop or kill it
without touching the development broker. Runs every fault on fresh topics
in a fresh directory, each bounded in time, and prints one line per fault:

    sent          requests (or records) sent
    acked         acknowledged: a 2xx, or a committed ingress record
    503           refused with 503 (and Retry-After)
    lost          acknowledged but not on the log
    twice         event ids with more than one applied history entry
    verify        warrant-replay --verify against the projector afterwards

then what each check saw. Exits 1 if any check of any fault failed, and
says why. ``--mode short`` (a few seconds per fault) is what scripts/test.sh
runs; ``make chaos`` runs ``--mode full``.

Faults come from load_faults.py (the broker and intake under load) and,
when present, projector_faults.py (the projector's kills, full disk and
damaged view); each module exposes ``FAULTS: list[(name, fn(FaultEnv) -> dict)]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from typing import Any, Callable

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from broker import ChaosBroker  # noqa: E402
from faultenv import FaultEnv  # noqa: E402

Fault = Callable[[FaultEnv], dict]

KEYS = ("fault", "sent", "acked", "refused_503", "lost", "applied_twice", "verify", "ok", "detail")

# Wall-clock bound of one fault (setup, load, recovery, checks, cleanup).
FAULT_TIMEOUT_S = {"short": 150, "full": 2400}


class FaultTimeout(Exception):
    """A fault ran past its wall-clock bound."""


def faults() -> list[tuple[str, Fault]]:
    import load_faults

    found: list[tuple[str, Fault]] = list(load_faults.FAULTS)
    try:
        import projector_faults
    except ModuleNotFoundError as error:
        if error.name != "projector_faults":
            raise
    else:
        found += list(projector_faults.FAULTS)
    return found


def target_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def binaries(profile: str, build: bool) -> pathlib.Path:
    if os.environ.get("WARRANT_BIN_DIR"):
        return pathlib.Path(os.environ["WARRANT_BIN_DIR"])
    if build:
        # The whole workspace, as scripts/test.sh builds it: the same
        # feature set, so neither build makes cargo rebuild the other's.
        flags = ["--release"] if profile == "release" else []
        print(f"chaos: cargo build {' '.join(flags)} --workspace --bins", file=sys.stderr)
        subprocess.run(["cargo", "build", *flags, "--workspace", "--bins"], cwd=REPO, check=True)
    return target_dir() / profile


def row(result: dict[str, Any]) -> str:
    def figure(value: Any) -> str:
        return "n/a" if value is None else str(value)

    return (
        f"{result['fault']:<18} {figure(result['sent']):>8} {figure(result['acked']):>8} "
        f"{figure(result['refused_503']):>6} {figure(result['lost']):>5} {figure(result['applied_twice']):>6} "
        f"{result['verify']:<9} {'ok' if result['ok'] else 'FAILED':<6} {result['detail']}"
    )


HEADER = (
    f"{'fault':<18} {'sent':>8} {'acked':>8} {'503':>6} {'lost':>5} {'twice':>6} "
    f"{'verify':<9} {'result':<6} detail"
)


def checked(name: str, result: Any) -> dict[str, Any]:
    """The fault's dict with every key, or a failed row saying what was missing."""
    if not isinstance(result, dict) or any(key not in result for key in KEYS):
        missing = [key for key in KEYS if not isinstance(result, dict) or key not in result]
        return failed(name, f"the fault returned no {', '.join(missing)}")
    return {key: result[key] for key in KEYS}


def failed(name: str, why: str) -> dict[str, Any]:
    return {
        "fault": name,
        "sent": None,
        "acked": None,
        "refused_503": None,
        "lost": None,
        "applied_twice": None,
        "verify": "n/a",
        "ok": False,
        "detail": why,
    }


def run_fault(name: str, fault: Fault, env: FaultEnv, timeout: int) -> dict[str, Any]:
    def expired(signum: int, frame: Any) -> None:
        raise FaultTimeout(f"{name} ran longer than {timeout} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(timeout)
    try:
        return checked(name, fault(env))
    except Exception as error:  # one fault's failure must not stop the others
        traceback.print_exc()
        return failed(name, f"error: {type(error).__name__}: {str(error)[:600]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("short", "full"), default="short")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these faults")
    parser.add_argument("--json", type=pathlib.Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--profile",
        choices=("debug", "release"),
        default="debug",
        help="which build's binaries to run (default debug; WARRANT_BIN_DIR overrides)",
    )
    parser.add_argument("--build", action="store_true", help="cargo build the binaries of --profile first")
    parser.add_argument(
        "--keep-broker",
        action="store_true",
        help="leave the suite's broker running (and its data) for the next run",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep each fault's directory (logs) even when it held")
    parser.add_argument("--fault-timeout", type=int, metavar="SECONDS", help="bound of each fault")
    parser.add_argument("--list", action="store_true", help="print the fault names and exit")
    args = parser.parse_args(argv)

    known = faults()
    if args.list:
        for name, _ in known:
            print(name)
        return 0
    selected = known
    if args.only:
        names = {name for name, _ in known}
        unknown = [name for name in args.only if name not in names]
        if unknown:
            parser.error(f"unknown fault {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        selected = [(name, fault) for name, fault in known if name in args.only]

    # SIGTERM (a CI step cancelled) must still stop the suite's broker and
    # the services of the fault in hand: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    bin_dir = binaries(args.profile, args.build)
    broker = ChaosBroker.from_environment(REPO)
    broker.export()
    run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    root = REPO / ".cache" / "chaos" / run
    timeout = args.fault_timeout or FAULT_TIMEOUT_S[args.mode]
    began = time.monotonic()
    results: list[dict[str, Any]] = []
    print(f"chaos: {args.mode} mode, binaries {bin_dir}, broker {broker.bootstrap}, work {root}", file=sys.stderr)
    try:
        if not args.keep_broker:
            broker.reset()  # a broker left over from an interrupted run, and its topics
        print(f"chaos: broker ready after {broker.start():.0f} s", file=sys.stderr)
        print(HEADER, flush=True)
        for name, fault in selected:
            work = root / name
            work.mkdir(parents=True)
            env = FaultEnv(bootstrap=broker.bootstrap, bin_dir=bin_dir, work=work, mode=args.mode, repo=REPO)
            try:
                broker.start()  # a previous fault may have left it stopped
            except Exception as error:
                result = failed(name, f"error: the broker did not start: {error}")
            else:
                fault_began = time.monotonic()
                result = run_fault(name, fault, env, timeout)
                result["detail"] = f"{time.monotonic() - fault_began:.0f}s; {result['detail']}"
            results.append(result)
            print(row(result), flush=True)
            if result["ok"] and not args.keep_work:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep_broker:
            try:
                broker.reset()
            except Exception as error:
                print(f"chaos: could not stop the broker: {error}", file=sys.stderr)
        if not any(root.iterdir() if root.exists() else []):
            shutil.rmtree(root, ignore_errors=True)

    total = time.monotonic() - began
    if args.json:
        args.json.write_text(
            json.dumps({"mode": args.mode, "seconds": round(total, 1), "results": results}, indent=2) + "\n"
        )
    bad = [result for result in results if not result["ok"]]
    print(f"chaos: {len(results) - len(bad)} of {len(results)} faults held in {total:.0f} s", file=sys.stderr)
    for result in bad:
        print(f"chaos: {result['fault']} FAILED: {result['detail']} (logs in {root / result['fault']})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
