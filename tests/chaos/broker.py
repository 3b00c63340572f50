"""The chaos suite's own Kafka broker: started, stopped and killed through deploy/kafka.sh.

The suite never touches the development broker on 9092: the runner
(chaos.py) starts a second single-node broker on its own ports and data
directory and describes it in the environment (``WARRANT_CHAOS_KAFKA_*``),
and every fault that stops or kills a broker goes through ``ChaosBroker``,
which refuses to act on anything else.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

# Ports of the suite's broker unless the environment says otherwise: far
# from the development broker's 9092/9093.
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093


class BrokerError(RuntimeError):
    """deploy/kafka.sh failed, or the broker is not the suite's own."""


class ChaosBroker:
    def __init__(
        self,
        repo: pathlib.Path,
        port: int,
        controller_port: int,
        data: pathlib.Path,
        cache: pathlib.Path | None = None,
    ) -> None:
        if port == 9092 or controller_port == 9093:
            raise BrokerError("the chaos broker must not use the development broker's ports")
        if data.resolve() == (repo / ".cache" / "kafka-data").resolve():
            raise BrokerError("the chaos broker must not use the development broker's data dir")
        self.repo = repo
        self.port = port
        self.controller_port = controller_port
        self.data = data
        self.cache = cache

    @classmethod
    def from_environment(cls, repo: pathlib.Path) -> "ChaosBroker":
        """The broker the runner described in ``WARRANT_CHAOS_KAFKA_*`` (or the defaults)."""
        cache = os.environ.get("WARRANT_KAFKA_CACHE")
        return cls(
            repo,
            int(os.environ.get("WARRANT_CHAOS_KAFKA_PORT", DEFAULT_PORT)),
            int(os.environ.get("WARRANT_CHAOS_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)),
            pathlib.Path(
                os.environ.get("WARRANT_CHAOS_KAFKA_DATA", repo / ".cache" / "chaos-kafka")
            ),
            pathlib.Path(cache) if cache else None,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def export(self) -> None:
        """Describe this broker in os.environ, for fault modules and child processes."""
        os.environ["WARRANT_CHAOS_KAFKA_PORT"] = str(self.port)
        os.environ["WARRANT_CHAOS_KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        os.environ["WARRANT_CHAOS_KAFKA_DATA"] = str(self.data)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WARRANT_KAFKA_PORT"] = str(self.port)
        env["WARRANT_KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        env["WARRANT_KAFKA_DATA"] = str(self.data)
        if self.cache is not None:
            env["WARRANT_KAFKA_CACHE"] = str(self.cache)
        return env

    def _script(self, command: str, timeout: float = 180.0) -> str:
        completed = subprocess.run(
            ["bash", str(self.repo / "deploy" / "kafka.sh"), command],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if completed.returncode != 0 and command != "status":
            raise BrokerError(
                f"deploy/kafka.sh {command} exited {completed.returncode}:\n"
                + (completed.stdout + completed.stderr)[-4000:]
            )
        return completed.stdout + completed.stderr

    def start(self) -> float:
        """Start (no-op if running) and wait until it answers; the seconds it took."""
        began = time.monotonic()
        self._script("start")
        return time.monotonic() - began

    def stop(self) -> float:
        """A clean stop (SIGTERM, controlled shutdown); the seconds it took."""
        began = time.monotonic()
        self._script("stop")
        return time.monotonic() - began

    def reset(self) -> None:
        """Stop and delete the data dir (topics, offsets, cluster id)."""
        self._script("reset")

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """Pid of the suite's broker if alive, checked against its command line."""
        try:
            text = (self.data / "broker.pid").read_text().strip()
            pid = int(text)
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        config = str(self.data / "server.properties").encode()
        if b"kafka.Kafka" not in cmdline or config not in cmdline:
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL the broker (no controlled shutdown, no log flush) and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            raise BrokerError("the chaos broker is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pathlib.Path(f"/proc/{pid}").exists():
            # A zombie until kafka.sh's shell (long gone) is replaced by init's reaping.
            try:
                state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            except OSError:
                break
            if state == "Z" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
