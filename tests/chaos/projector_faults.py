"""The projector's faults: SIGKILLs during a catch-up, a full disk, a damaged sled view.

Each fault fills a fresh log topic with ``warrant-loadgen`` (whole instances
of the realistic mix, produced with acks=all), runs the real
``warrant-projector`` against it, breaks something, and checks the view
against a fold of the same log: the projector's checkpoint digest against a
clean projector's (fresh directory, nothing broken) and ``warrant-replay
--verify`` (entry by entry, then the digest) against the broken one.

The figures of the chaos table mean, for these faults: ``sent`` and
``acked`` the records produced to the log (every one acknowledged by
Kafka), ``lost`` the log records the projector's final checkpoint has not
folded (its offsets against the high watermarks), ``refused_503`` and
``applied_twice`` n/a (nothing goes through intake; an event folded twice
would change a head hash and so the digest, which ``verify`` compares).

Run on its own (starts a private broker on 29092/29093)::

    python tests/chaos/projector_faults.py --mode short [--only projector-kill]
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "harness"))

from faultenv import FaultEnv  # noqa: E402
from warrant_system import free_port, http_json  # noqa: E402

# Events per fault and kill points, by mode.
SIZES = {
    "short": {"kill_events": 50_000, "kills": 10, "kill_spread": 0.7, "kill_batch": 500, "enospc_events": 20_000, "corrupt_events": 20_000, "corrupt_trials": 2},
    "full": {"kill_events": 1_000_000, "kills": 100, "kill_spread": 0.8, "kill_batch": None, "enospc_events": 100_000, "corrupt_events": 100_000, "corrupt_trials": 5},
}
READY_TIMEOUT_S = {"short": 120.0, "full": 900.0}
# What /readyz must name while the disk is full: the OS error, as io::Error prints it.
STORAGE_ERROR = re.compile(r"no space left on device|no storage space|StorageFull", re.IGNORECASE)


class FaultFailed(RuntimeError):
    """A check of a fault did not hold."""


# -- processes ------------------------------------------------------------------


@dataclass
class ProjectorProcess:
    """One warrant-projector process on a data directory."""

    process: subprocess.Popen[bytes]
    url: str
    log: pathlib.Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM (a clean stop), SIGKILL after 30 s; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return int(self.process.returncode)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_projector(
    env: FaultEnv, topic: str, data_dir: pathlib.Path, log: pathlib.Path, *extra: str
) -> ProjectorProcess:
    port = free_port()
    args = [
        str(env.bin_dir / "warrant-projector"),
        f"--brokers={env.bootstrap}",
        f"--log-topic={topic}",
        f"--data-dir={data_dir}",
        f"--listen=127.0.0.1:{port}",
        # Small caches: the faults run next to other work on 2 cores.
        "--sled-cache-mb=64",
        "--progress-secs=1",
        *extra,
    ]
    with log.open("ab") as handle:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle)
    return ProjectorProcess(process, f"http://127.0.0.1:{port}", log)


def readyz(projector: ProjectorProcess) -> tuple[int, Any]:
    return http_json("GET", f"{projector.url}/readyz", timeout=5)


def folded(projector: ProjectorProcess) -> int:
    """Records the running projector has committed (sum of its offsets), -1 if it does not answer."""
    status, body = readyz(projector)
    if status in (200, 503) and isinstance(body, dict) and isinstance(body.get("offsets"), dict):
        return sum(int(v) for v in body["offsets"].values())
    return -1


def wait_ready(projector: ProjectorProcess, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not projector.alive():
            raise FaultFailed(f"the projector exited ({projector.process.returncode}):\n{projector.tail()}")
        status, body = readyz(projector)
        if status == 200:
            return dict(body)
        time.sleep(0.1)
    raise FaultFailed(f"the projector was not ready within {timeout:.0f} s:\n{projector.tail()}")


def checkpoint(projector: ProjectorProcess) -> dict[str, Any]:
    status, body = http_json("GET", f"{projector.url}/v1/checkpoint", timeout=60)
    if status != 200 or not isinstance(body, dict):
        raise FaultFailed(f"GET /v1/checkpoint answered {status}: {body}")
    return body


def wait_folded(projector: ProjectorProcess, end: int, timeout: float) -> dict[str, Any]:
    """Wait until the checkpoint has folded `end` records; the checkpoint."""
    deadline = time.monotonic() + timeout
    while True:
        if not projector.alive():
            raise FaultFailed(f"the projector exited ({projector.process.returncode}):\n{projector.tail()}")
        status, body = http_json("GET", f"{projector.url}/v1/checkpoint", timeout=60)
        if status == 200 and isinstance(body, dict):
            if sum(int(v) for v in body.get("partitions", {}).values()) >= end:
                return body
        if time.monotonic() > deadline:
            raise FaultFailed(f"the projector did not fold {end} records within {timeout:.0f} s:\n{projector.tail()}")
        time.sleep(0.2)


# -- the log --------------------------------------------------------------------


def fresh_topic(kind: str) -> str:
    return f"chaos.{kind}.{uuid.uuid4().hex[:12]}.log"


def fill_log(env: FaultEnv, topic: str, events: int, log: pathlib.Path) -> None:
    """Produce `events` whole-instance events (creates the topic, 3 partitions)."""
    with log.open("ab") as handle:
        completed = subprocess.run(
            [
                str(env.bin_dir / "warrant-loadgen"),
                f"--brokers={env.bootstrap}",
                f"--log-topic={topic}",
                f"--events={events}",
                "--partitions=3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            timeout=1800,
        )
    if completed.returncode != 0:
        raise FaultFailed(f"warrant-loadgen exited {completed.returncode} (see {log})")


def log_end(env: FaultEnv, topic: str) -> int:
    """The sum of the topic's high watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"{topic}-marks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def delete_topic(env: FaultEnv, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    for name, future in admin.delete_topics([topic], operation_timeout=30).items():
        try:
            future.result()
        except Exception as error:  # noqa: BLE001 - cleanup reports, never raises
            print(f"projector_faults: could not delete topic {name}: {error}", file=sys.stderr)


def replay_verify(env: FaultEnv, topic: str, projector: ProjectorProcess, log: pathlib.Path) -> tuple[str, str]:
    """`warrant-replay --verify` over the whole topic: ("equal"|"DIFFERENT", replay's digest line)."""
    completed = subprocess.run(
        [
            str(env.bin_dir / "warrant-replay"),
            f"--brokers={env.bootstrap}",
            f"--log-topic={topic}",
            "--quiet",
            f"--verify={projector.url}",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    with log.open("a") as handle:
        handle.write(completed.stdout)
        handle.write(completed.stderr)
    line = next((line for line in completed.stdout.splitlines() if line.startswith("checkpoint:")), "")
    if completed.returncode == 0 and "digest equal" in line:
        return "equal", line
    if not line:
        lines = completed.stdout.strip().splitlines() or completed.stderr.strip().splitlines() or [""]
        line = f"exit {completed.returncode}: {lines[-1][-300:]}"
    return "DIFFERENT", line


def clean_digest(env: FaultEnv, topic: str, end: int, name: str) -> str:
    """The checkpoint digest of a projector that folds the topic from a fresh directory, unbroken."""
    data = env.work / f"{name}-clean"
    projector = start_projector(env, topic, data, env.work / f"{name}-clean.log")
    try:
        return str(wait_folded(projector, end, READY_TIMEOUT_S[env.mode])["digest"])
    finally:
        projector.kill()
        shutil.rmtree(data, ignore_errors=True)


def row(name: str, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "fault": name,
        "sent": None,
        "acked": None,
        "refused_503": None,
        "lost": None,
        "applied_twice": None,
        "verify": "n/a",
        "ok": False,
        "detail": "",
    }
    base.update(figures)
    return base


@contextlib.contextmanager
def cleanup(env: FaultEnv, topic: str, processes: list[ProjectorProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for projector in processes:
            with contextlib.suppress(Exception):
                projector.kill()
        delete_topic(env, topic)


# -- projector-kill -------------------------------------------------------------


def projector_kill(env: FaultEnv) -> dict[str, Any]:
    """SIGKILL the projector at random points of a catch-up, restart it on the same directory each time."""
    name = "projector-kill"
    sizes = SIZES[env.mode]
    events, kills_wanted = sizes["kill_events"], sizes["kills"]
    topic = fresh_topic("kill")
    rng = random.Random(os.environ.get("WARRANT_CHAOS_SEED"))
    processes: list[ProjectorProcess] = []
    with cleanup(env, topic, processes):
        fill_log(env, topic, events, env.work / "loadgen.log")
        end = log_end(env, topic)
        data = env.work / "killed"
        log = env.work / "killed.log"
        kills = 0
        during_open = 0
        # Kill points are spread over the catch-up by progress, not time, so
        # that every run lands inside it whatever the machine's speed: run i
        # is killed once it has committed about spread * end/kills more
        # records (the batch in flight and the kill's delay add some, hence
        # a spread below 1), a random few milliseconds later (inside the next
        # fold, apply or flush). One run in five is killed while it opens
        # the view instead.
        step = max(1, int(end * sizes["kill_spread"] / kills_wanted))
        # Committed before the last kill (at least: more may have been
        # flushed after it was read). /readyz reports what this run
        # committed, which starts empty, so the base comes from here.
        committed = 0
        points: list[int] = []
        started = time.monotonic()
        # The short run's log is a few default batches long (100 ms of
        # folding each), too few for its kill points: smaller batches there.
        batch = [f"--batch-records={sizes['kill_batch']}"] if sizes["kill_batch"] else []
        while kills < kills_wanted:
            projector = start_projector(env, topic, data, log, *batch)
            processes.append(projector)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, 0.4))
                projector.kill()
                kills += 1
                during_open += 1
                continue
            deadline = time.monotonic() + READY_TIMEOUT_S[env.mode]
            target = committed + int(step * rng.uniform(0.3, 1.7))
            if committed >= end:
                # Caught up before this kill point: the remaining points
                # would not be inside a catch-up. Say so rather than count them.
                projector.kill()
                break
            while (now := folded(projector)) < min(target, end - 1):
                if readyz(projector)[0] == 200:
                    break
                if not projector.alive():
                    raise FaultFailed(f"the projector exited ({projector.process.returncode}):\n{projector.tail()}")
                if time.monotonic() > deadline:
                    raise FaultFailed(f"no progress towards {target} records:\n{projector.tail()}")
                time.sleep(0.01)
            if readyz(projector)[0] == 200:
                # The previous run finished the catch-up after its last
                # read: the remaining points would not be inside one.
                projector.kill()
                break
            committed = max(committed, now)
            points.append(now)
            time.sleep(rng.uniform(0.0, 0.02))
            projector.kill()
            kills += 1
        kill_seconds = time.monotonic() - started

        final = start_projector(env, topic, data, log)
        processes.append(final)
        wait_ready(final, READY_TIMEOUT_S[env.mode])
        killed_checkpoint = wait_folded(final, end, READY_TIMEOUT_S[env.mode])
        verify, verify_line = replay_verify(env, topic, final, env.work / "replay.log")
        final.kill()
        clean = clean_digest(env, topic, end, name)

        folded_end = sum(int(v) for v in killed_checkpoint["partitions"].values())
        digest = str(killed_checkpoint["digest"])
        problems = []
        if kills < kills_wanted:
            problems.append(f"only {kills} of {kills_wanted} kills landed inside the catch-up")
        if digest != clean:
            problems.append("digest differs from a clean fold's")
        if verify != "equal":
            problems.append(f"replay --verify: {verify_line}")
        detail = (
            f"{kills} kills ({during_open} while opening) in {kill_seconds:.0f} s, "
            f"the others at {100 * min(points, default=0) // end}%..{100 * max(points, default=0) // end}% of the log; "
            f"digest {digest[:12]} clean {clean[:12]}"
        )
        if problems:
            detail += "; " + "; ".join(problems)
        return row(
            name,
            sent=events,
            acked=end,
            lost=end - folded_end,
            verify=verify,
            ok=not problems and end == folded_end,
            detail=detail,
        )


# -- projector-enospc -----------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size_mb: int) -> Iterator[pathlib.Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        raise FaultFailed(f"cannot mount a {size_mb} MiB tmpfs on {path} (this fault needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a projector we failed to kill must not keep the mount forever.
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: pathlib.Path) -> int:
    """Write a filler file until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk)
            except OSError:
                # Fill the last partial MiB too, byte-block by byte-block.
                for size in (1 << 16, 1 << 12):
                    small = b"\0" * size
                    while True:
                        try:
                            written += handle.write(small)
                        except OSError:
                            break
                return written


def projector_enospc(env: FaultEnv) -> dict[str, Any]:
    """The view's filesystem fills up while events flow; space returns later."""
    name = "projector-enospc"
    events = SIZES[env.mode]["enospc_events"]
    topic = fresh_topic("enospc")
    processes: list[ProjectorProcess] = []
    mount = env.work / "tmpfs"
    # Room for the view of twice the events (sled's files run to ~1 KiB
    # an event here), so only the filler fills it.
    with cleanup(env, topic, processes), tmpfs(mount, 64 + events * 2 // 1024):
        fill_log(env, topic, events, env.work / "loadgen.log")
        projector = start_projector(env, topic, mount / "data", env.work / "projector.log")
        processes.append(projector)
        wait_ready(projector, READY_TIMEOUT_S[env.mode])
        pid = projector.process.pid

        filler = mount / "filler"
        filled = fill_disk(filler)
        # Events keep flowing onto the log while the disk is full.
        fill_log(env, topic, events, env.work / "loadgen.log")
        end = log_end(env, topic)

        reason = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not projector.alive():
                raise FaultFailed(f"the projector exited on a full disk ({projector.process.returncode}):\n{projector.tail()}")
            status, body = readyz(projector)
            if status == 503 and isinstance(body, dict) and body.get("storage_error"):
                reason = str(body["storage_error"])
                break
            time.sleep(0.2)
        stalled_at = folded(projector)
        time.sleep(3)
        still = folded(projector)
        alive_while_full = projector.alive()

        filler.unlink()
        resumed = wait_folded(projector, end, READY_TIMEOUT_S[env.mode])
        ready_after = readyz(projector)[0]
        verify, verify_line = replay_verify(env, topic, projector, env.work / "replay.log")
        same_process = projector.alive() and projector.process.pid == pid
        projector.kill()
        clean = clean_digest(env, topic, end, name)

        folded_end = sum(int(v) for v in resumed["partitions"].values())
        problems = []
        if not reason:
            problems.append("/readyz never named a storage error")
        elif not STORAGE_ERROR.search(reason):
            problems.append(f"/readyz reason does not name the storage error: {reason}")
        if not alive_while_full:
            problems.append("the projector died while the disk was full")
        if still != stalled_at or stalled_at >= end:
            problems.append(f"it kept applying on a full disk ({stalled_at} -> {still} of {end})")
        if not same_process:
            problems.append("it did not resume in the same process")
        if ready_after != 200:
            problems.append(f"/readyz answered {ready_after} after space returned")
        if resumed["digest"] != clean:
            problems.append("digest differs from a clean fold's")
        if verify != "equal":
            problems.append(f"replay --verify: {verify_line}")
        detail = (
            f"filler {filled >> 20} MiB; stalled at {stalled_at}/{end}; "
            f"readyz: ...{reason[-60:]}; digest {str(resumed['digest'])[:12]} clean {clean[:12]}"
        )
        if problems:
            detail += "; " + "; ".join(problems)
        return row(
            name,
            sent=2 * events,
            acked=end,
            lost=end - folded_end,
            verify=verify,
            ok=not problems and end == folded_end,
            detail=detail,
        )


# -- sled-corruption ------------------------------------------------------------


def sled_files(sled_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in sled_dir.rglob("*") if p.is_file() and p.stat().st_size > 0)


def truncate(path: pathlib.Path, rng: random.Random) -> str:
    size = path.stat().st_size
    keep = rng.randrange(0, size)
    os.truncate(path, keep)
    return f"truncated {path.name} {size}->{keep}"


def flip_bits(path: pathlib.Path, rng: random.Random) -> str:
    flips = rng.choice((1, 2, 8, 64))
    data = bytearray(path.read_bytes())
    at = []
    for _ in range(flips):
        offset = rng.randrange(len(data))
        data[offset] ^= 1 << rng.randrange(8)
        at.append(offset)
    path.write_bytes(bytes(data))
    return f"flipped {flips} bits of {path.name} ({len(data)} B)"


def sled_corruption(env: FaultEnv) -> dict[str, Any]:
    """Damage the stopped projector's sled files (truncate, flip bits), restart, compare with a clean fold."""
    name = "sled-corruption"
    sizes = SIZES[env.mode]
    events, trials = sizes["corrupt_events"], sizes["corrupt_trials"]
    topic = fresh_topic("corrupt")
    rng = random.Random(os.environ.get("WARRANT_CHAOS_SEED"))
    processes: list[ProjectorProcess] = []
    with cleanup(env, topic, processes):
        fill_log(env, topic, events, env.work / "loadgen.log")
        end = log_end(env, topic)
        clean = clean_digest(env, topic, end, name)

        # A view built to the end and stopped cleanly, kept as the template.
        template = env.work / "template"
        builder = start_projector(env, topic, template, env.work / "template.log")
        processes.append(builder)
        wait_folded(builder, end, READY_TIMEOUT_S[env.mode])
        if builder.stop() != 0:
            raise FaultFailed(f"the projector did not stop cleanly:\n{builder.tail()}")

        outcomes: list[str] = []
        problems: list[str] = []
        verdicts: list[str] = []
        # Log records missing from the worst damaged view once ready.
        lost = 0
        damages = [truncate, flip_bits]
        for trial in range(trials):
            for damage in damages:
                data = env.work / f"trial-{trial}-{damage.__name__}"
                shutil.copytree(template, data)
                (data / "projector.lock").unlink(missing_ok=True)
                files = sled_files(data / "sled")
                # The log file (`db`) holds nearly everything; the others
                # (conf, snapshots) get their share of damage too.
                target = data / "sled" / "db" if trial % 2 == 0 and (data / "sled" / "db").exists() else rng.choice(files)
                what = damage(target, rng)
                log = env.work / f"{data.name}.log"
                projector = start_projector(env, topic, data, log)
                processes.append(projector)
                try:
                    deadline = time.monotonic() + READY_TIMEOUT_S[env.mode]
                    body = None
                    while time.monotonic() < deadline:
                        if not projector.alive():
                            break
                        status, body = readyz(projector)
                        if status == 200:
                            break
                        time.sleep(0.1)
                    refused = ""
                    if not projector.alive():
                        # Stopping is allowed only with a clear error (sled
                        # found corrupt bytes after opening); the view is then
                        # marked, and the next start must rebuild it.
                        text = projector.tail(10)
                        if "corrupt" not in text.lower():
                            problems.append(f"{what}: exited without a clear error: {text[-300:]}")
                            continue
                        refused = "refused, then "
                        projector = start_projector(env, topic, data, log)
                        processes.append(projector)
                        wait_ready(projector, READY_TIMEOUT_S[env.mode])
                    # Ready: the view must already be the clean one.
                    got = checkpoint(projector)
                    folded_now = sum(int(v) for v in got["partitions"].values())
                    lost = max(lost, end - folded_now)
                    if folded_now != end or got["digest"] != clean:
                        problems.append(f"{what}: ready with a wrong view ({folded_now}/{end} folded, digest {str(got['digest'])[:12]})")
                    verdict, line = replay_verify(env, topic, projector, env.work / f"{data.name}-replay.log")
                    verdicts.append(verdict)
                    if verdict != "equal":
                        problems.append(f"{what}: replay --verify {line}")
                    text = log.read_text(errors="replace")
                    how = "rebuilt" if "rebuilding from offset 0" in text else "resumed"
                    outcomes.append(f"{what}: {refused}{how}")
                finally:
                    projector.kill()
                    shutil.rmtree(data, ignore_errors=True)
        (env.work / "outcomes.txt").write_text("\n".join(outcomes + problems) + "\n")
        rebuilt = sum(1 for o in outcomes if o.endswith("rebuilt"))
        resumed = sum(1 for o in outcomes if o.endswith("resumed"))
        refused = sum(1 for o in outcomes if "refused" in o)
        verify = "equal" if verdicts and all(v == "equal" for v in verdicts) and not problems else "DIFFERENT"
        detail = (
            f"{len(damages) * trials} damaged views: {rebuilt} rebuilt, {resumed} resumed, {refused} refused; "
            f"clean digest {clean[:12]}"
        )
        if problems:
            detail += "; " + "; ".join(problems)
        return row(
            name,
            sent=events,
            acked=end,
            lost=lost,
            verify=verify,
            ok=not problems,
            detail=detail,
        )


FAULTS: list[tuple[str, Callable[[FaultEnv], dict[str, Any]]]] = [
    ("projector-kill", projector_kill),
    ("projector-enospc", projector_enospc),
    ("sled-corruption", sled_corruption),
]


# -- standalone -----------------------------------------------------------------


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _main() -> int:
    import argparse

    # Stopped from outside (also when started in the background, where
    # SIGINT is ignored): unwind, so every fault's cleanup runs.
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("short", "full"), default="short")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--json")
    parser.add_argument("--bin-dir", default=None)
    args = parser.parse_args()

    repo = HERE.parents[1]
    bin_dir = pathlib.Path(
        args.bin_dir or os.environ.get("WARRANT_BIN_DIR") or pathlib.Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")) / "debug"
    )
    kafka = {
        **os.environ,
        "WARRANT_KAFKA_PORT": "29092",
        "WARRANT_KAFKA_CONTROLLER_PORT": "29093",
        "WARRANT_KAFKA_DATA": str(repo / ".cache" / "chaos-kafka"),
    }
    subprocess.run(["bash", str(repo / "deploy" / "kafka.sh"), "start"], env=kafka, check=True)
    rows = []
    root = repo / ".cache" / "chaos-work"
    for name, fault in FAULTS:
        if args.only and name not in args.only:
            continue
        work = root / f"{name}-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        env = FaultEnv(bootstrap="127.0.0.1:29092", bin_dir=bin_dir, work=work, mode=args.mode, repo=repo)
        started = time.monotonic()
        try:
            result = fault(env)
        except Exception as error:  # noqa: BLE001 - one failed fault must not hide the others
            result = row(name, detail=f"{type(error).__name__}: {error}")
        result["seconds"] = round(time.monotonic() - started, 1)
        rows.append(result)
        print(
            f"{result['fault']:<18} sent={result['sent']} acked={result['acked']} lost={result['lost']} "
            f"verify={result['verify']} ok={result['ok']} {result['seconds']}s  {result['detail']}",
            flush=True,
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(_main())
