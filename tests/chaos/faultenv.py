"""The one value every chaos fault receives.

Shared between the runner (chaos.py) and the fault modules (load_faults.py,
projector_faults.py) so that each module can be written and run on its own.
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class FaultEnv:
    # Kafka bootstrap of the chaos suite's own broker (never the shared one),
    # so a fault may stop or kill it.
    bootstrap: str
    # Directory holding the warrant-* binaries the fault starts.
    bin_dir: pathlib.Path
    # A fresh, empty directory owned by this one fault.
    work: pathlib.Path
    # "short" (seconds per fault, for CI) or "full" (`make chaos`).
    mode: str
    # Repository root, for deploy/kafka.sh, fixtures and the harness.
    repo: pathlib.Path
