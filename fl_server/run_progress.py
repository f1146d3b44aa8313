"""Progress of a simulated run on a terminal: the stage, rounds done, time spent and left.

Before its first round a run spends tens of seconds starting Ray (Flower's simulation
engine) and its actors, and each round then takes its own while; without a sign of life
that looks like a hang. On a terminal (stderr is one) the engine shows one
``rich.progress`` line: "starting Ray (simulation engine)" until Ray is up, then "round
k/N" with an estimate of the time left; the round lines print above it. Off a terminal
it shows nothing: the round lines are the record.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fl_server.config import RunConfig
from fl_server.observers import NullObserver
from fl_server.terminal import is_terminal
from privacy.wire.round_record import RoundRecord

STARTING_RAY = "starting Ray (simulation engine)"


class RunProgress(NullObserver):
    """``with RunProgress(cfg, console): run_simulation(...)``; also a round observer."""

    def __init__(self, cfg: RunConfig, console: Console, redirect_stdout: bool = True) -> None:
        self._rounds = cfg.rounds
        self._offset = 0  # rounds finished before this launch (a resume): not in the ETA
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
            TextColumn("left"), TimeRemainingColumn(), console=console, transient=True,
            redirect_stdout=redirect_stdout)
        self._task = self._progress.add_task(STARTING_RAY, total=cfg.rounds)
        self._ray_up = threading.Event()
        self._stop = threading.Event()
        self._flower_stream: TextIO | None = None

    @classmethod
    def for_terminal(cls, cfg: RunConfig, console: Console) -> RunProgress | None:
        """Shown only when stderr is a terminal; on `console` when that is one too (the
        round lines then print above the bar), else on stderr, leaving stdout alone (it
        goes to a file or a pipe: the round lines must land there, not on the bar's
        terminal)."""
        if not is_terminal(sys.stderr):
            return None
        if console.is_terminal:
            return cls(cfg, console)
        return cls(cfg, Console(stderr=True), redirect_stdout=False)

    def __enter__(self) -> RunProgress:
        from flwr.common.logger import console_handler

        self._progress.start()  # on a terminal sys.stderr now prints above the bar; Flower's
        self._flower_stream = console_handler.setStream(sys.stderr)  # log handler too
        threading.Thread(target=self._wait_for_ray, name="fedmsr-ray-start",
                         daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from flwr.common.logger import console_handler

        self._stop.set()
        self._progress.stop()
        if self._flower_stream is not None:
            console_handler.setStream(self._flower_stream)

    @property
    def description(self) -> str:
        """What the line says now ("starting Ray (simulation engine)", "round 2/5")."""
        return str(self._progress.tasks[0].description)

    def _wait_for_ray(self) -> None:
        import ray

        while not self._stop.wait(0.2):
            if ray.is_initialized():
                self._ray_up.set()
                self._progress.update(self._task, description=self._round_label())
                return

    def _round_label(self) -> str:
        done = self._offset + int(self._progress.tasks[0].completed)
        return f"round {min(done + 1, self._rounds)}/{self._rounds}"

    def run_started(self, cfg: RunConfig, resumed_after_round: int) -> None:
        self._offset = resumed_after_round
        self._progress.update(self._task, total=cfg.rounds - resumed_after_round)
        if self._ray_up.is_set():
            self._progress.update(self._task, description=self._round_label())

    def round_finished(self, cfg: RunConfig, record: RoundRecord) -> None:
        self._progress.update(self._task, completed=record.round - self._offset)
        if self._ray_up.is_set():
            self._progress.update(self._task, description=self._round_label())
