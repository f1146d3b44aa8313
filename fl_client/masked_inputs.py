"""The rounds this device has sent a masked input for: at most one per (run, round), ever.

Why: without DP-SGD a device's local round is deterministic given the global model and
the round, and a SecAgg sum only hides one update among the others. A server that runs
the same round twice over cohorts differing by one device gets that device's update as
the difference of the two sums. So the device refuses a second masked input for a round
it already contributed to, and remembers across restarts: the record lives in its own
state directory, next to its privacy ledgers, and is written (fsync, atomic rename)
before the masked input leaves the device. A crash between the record and the send
loses one contribution, never the guarantee.

A round is named twice, and either name already recorded refuses: by the train message's
round ticket (run id and round number, which also seed the local training) and by the
SecAgg setup's round context. A server that relabels a round gets a differently seeded
local round (and, with DP-SGD, fresh noise that the budget ledger charges).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from privacy.atomic_write import write_text_atomic

FILE_NAME = "secagg-masked-inputs.json"
LOCK_NAME = "secagg-masked-inputs.lock"


class AlreadyContributed(PermissionError):
    """This device already sent a masked input for the round: a re-run gets nothing."""


class MaskedInputLogError(ValueError):
    """The record of sent masked inputs is unreadable (refuse rather than forget)."""


def round_keys(config: Mapping[str, Any], round_context: bytes) -> tuple[str, ...]:
    """The names of this round: its ticket (run, round) when present, and its context."""
    keys = ["context:" + round_context.hex()]
    if "run-id" in config and "server-round" in config:
        keys.append(f"ticket:{config['run-id']}/{int(config['server-round'])}")
    return tuple(keys)


class MaskedInputLog:
    """The device's persisted set of rounds with a masked input sent."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._lock = Path(state_dir) / LOCK_NAME

    def rounds(self) -> frozenset[str]:
        if not self.path.exists():
            return frozenset()
        try:
            data = json.loads(self.path.read_text())
            return frozenset(str(k) for k in data["rounds"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MaskedInputLogError(f"{self.path} is unreadable ({type(exc).__name__}); "
                                      "refusing secure aggregation rather than forgetting "
                                      "which rounds this device contributed to") from None

    def refuse_repeat(self, keys: Iterable[str]) -> None:
        done = self.rounds() & set(keys)
        if done:
            raise AlreadyContributed(f"this device already sent a masked input for "
                                     f"{min(done)}; a round is never contributed twice")

    def record(self, keys: Iterable[str]) -> None:
        """Add `keys`, refusing if any is already there (checked again under the lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self.refuse_repeat(keys)
                rounds = sorted(self.rounds() | set(keys))
                write_text_atomic(self.path, json.dumps({"rounds": rounds}) + "\n")
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
