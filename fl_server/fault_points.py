"""Test-only crash points of the server: SIGKILL the engine at a named step of a round.

The fault-injection suite (docs/fault-injection.md) proves that a server killed anywhere
in a round resumes to the same model and never loses or doubles a privacy-ledger row.
"Anywhere" has to be reachable on purpose, so the federation loop and the checkpoint
writer call :func:`fault_point` at the steps that matter, and the environment variable
``FEDMSR_FAULT_POINT=NAME[:ROUND]`` picks one (no ROUND: the first round that reaches
NAME). Unset -- always, outside tests -- each call is one dictionary lookup.

``FEDMSR_FAULT_HOLD=NAME[:ROUND]`` stops the server there instead, for good (until it is
killed): a test that kills something else (the launcher) while the server is inside a
given round needs the round held there, not a race against how fast the machine is.

The kill is a real ``SIGKILL``: nothing runs after it (no ``finally``, no status write),
exactly like a power cut or the OOM killer. In the engine process of ``fedmsr run``
(a process-group leader: the launcher starts it in a session of its own) the whole group
goes -- Flower's simulation runtime and Ray with it -- and the launcher, which survives,
reports the run failed. Anywhere else (a ServerApp process a SuperLink spawned, a test
running the federation in its own process) only the calling process is killed, never a
group it merely belongs to.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from typing import Any

ENV = "FEDMSR_FAULT_POINT"
HOLD_ENV = "FEDMSR_FAULT_HOLD"

#: The steps of one round, in order (what each means: docs/fault-injection.md).
POINTS = (
    "checkin",     # devices checked in; nothing reserved, no train message sent
    "reserved",    # the ledger reserved the round's releases; no train message sent yet
    "mid-round",   # train messages pushed, replies pending
    "aggregate",   # replies in and screened, the new model not yet computed
    "checkpoint",  # the round's checkpoint .npz written, its .json not yet
    "commit",      # the checkpoint complete, the ledger's reservations not yet committed
)


def armed(name: str, server_round: int, variable: str = ENV) -> bool:
    """Whether ``FEDMSR_FAULT_POINT`` (or `variable`) names `name` in `server_round`.

    A misspelt point must not make a crash test pass by never crashing: an unknown name
    raises, naming the variable and the valid points.
    """
    spec = os.environ.get(variable, "")
    if not spec:
        return False
    point, _, round_text = spec.partition(":")
    if point not in POINTS or (round_text and not round_text.isdigit()):
        raise ValueError(f"{variable}={spec!r}: expected NAME[:ROUND] with NAME one of "
                         f"{', '.join(POINTS)}")
    return point == name and (not round_text or int(round_text) == server_round)


def fault_point(name: str, server_round: int) -> None:
    """SIGKILL this server here, or hold it here for good, if a test asked for it (see the
    module docstring)."""
    if armed(name, server_round):
        _kill()
    if armed(name, server_round, HOLD_ENV):
        threading.Event().wait()  # never set: the holder kills this process


def killing_after_push(grid: Any, server_round: int) -> Any:
    """`grid`, or -- when ``mid-round`` is armed for `server_round` -- a view of it whose
    `push_messages` kills the server right after the messages went out."""
    return _KillAfterPush(grid, server_round) if armed("mid-round", server_round) else grid


class _KillAfterPush:
    """A grid whose push is followed by the kill (train messages out, replies pending)."""

    def __init__(self, grid: Any, server_round: int) -> None:
        self._grid, self._round = grid, server_round

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        ids = self._grid.push_messages(messages)
        fault_point("mid-round", self._round)
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _kill() -> None:
    if os.getpgrp() == os.getpid():  # the engine: its group is the whole server
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
