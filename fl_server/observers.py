"""Round observers: how the registry, metrics and other sinks follow a run.

The federation loop knows nothing about databases or Prometheus; it calls these hooks
with plain data (the run config, the round's history record, the final status). A sink
that fails must not lose the round: the loop checkpoints before it notifies.
"""

from __future__ import annotations

from typing import Protocol

from fl_server.config import RunConfig
from fl_server.run_status import RunStatus
from privacy.wire.round_record import RoundRecord


class RoundObserver(Protocol):
    def run_started(self, cfg: RunConfig, resumed_after_round: int) -> None:
        """The run starts (0) or resumes after a finished round."""

    def round_finished(self, cfg: RunConfig, record: RoundRecord) -> None:
        """A round finished and is checkpointed; `record` is its history entry."""

    def run_finished(self, cfg: RunConfig, status: RunStatus) -> None:
        """The run completed or failed (`status.reason` says why)."""


class NullObserver:
    """Observes nothing (the base for sinks that care about some hooks only)."""

    def run_started(self, cfg: RunConfig, resumed_after_round: int) -> None:
        return None

    def round_finished(self, cfg: RunConfig, record: RoundRecord) -> None:
        return None

    def run_finished(self, cfg: RunConfig, status: RunStatus) -> None:
        return None
