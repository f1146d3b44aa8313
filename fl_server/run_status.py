"""The run's status file, the one place that says whether a run succeeded.

`flwr run` exits 0 even when the run failed (docs/architecture.md), and Flower's simulation engine
swallows some ServerApp failures; the launcher therefore decides its exit code from what
the ServerApp itself wrote here, not from the engine's return.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from privacy.atomic_write import write_text_atomic

#: budget-exhausted: the run stopped cleanly because too few devices could afford another
#: round's DP release (`strategies.budget_selection`); its last model is the final model.
STATUSES = ("running", "completed", "failed", "budget-exhausted")


@dataclass(frozen=True)
class RunStatus:
    status: str
    planned_rounds: int
    completed_rounds: int = 0
    reason: str = ""
    updated_unix: float = field(default_factory=time.time)
    #: `reason` in one short line for a terminal, where the reason is long (a
    #: budget-exhausted run's reason names every device and its cap); else empty.
    summary: str = ""


def write_status(run_dir: Path, status: RunStatus) -> None:
    if status.status not in STATUSES:
        raise ValueError(f"unknown run status {status.status!r}")
    write_text_atomic(run_dir / "status.json", json.dumps(asdict(status), indent=2) + "\n")


def read_status(run_dir: Path) -> RunStatus | None:
    path = run_dir / "status.json"
    if not path.exists():
        return None
    return RunStatus(**json.loads(path.read_text()))
