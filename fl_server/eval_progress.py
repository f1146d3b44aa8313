"""Progress of `fedmsr eval`: the stage running, steps done of all, time spent and left.

A full evaluation takes minutes (decoding footage, training several encoders, attacking
every representation), so it shows one ``rich.progress`` bar whose description is the
stage under way and whose ETA rich estimates from the steps done so far. Log lines
(``log``) print above the bar. On a terminal the bar redraws in place; into a pipe or a
file only the log lines and the final bar appear.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Stages"]


class Stages:
    """``with Stages(total, console) as st: st.start("training x"); ...; st.done()``."""

    def __init__(self, total: int, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console, transient=False)
        self._task: TaskID = self._progress.add_task("starting", total=total)
        self._stage = "starting"

    def __enter__(self) -> Stages:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self._progress.update(self._task, description="done")
        self._progress.stop()

    def start(self, stage: str, log: str | None = None) -> None:
        """Stage `stage` begins (shown on the bar); `log` is printed above it."""
        if log:
            self.console.print(log)
        self._stage = stage
        self._progress.update(self._task, description=stage)

    def sub_step(self, step: str) -> None:
        """A named part of the current stage begins (an attack of "evaluating blur"):
        shown on the bar after the stage, so a stage of minutes does not look stuck."""
        self._progress.update(self._task, description=f"{self._stage}: {step}")

    def done(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def log(self, text: str) -> None:
        self.console.print(text)
