"""Which observers follow a run (registry, metrics, ...), built from its configuration.

One place to add a sink, so the ServerApp entry points (`fedmsr run`, `flwr run .`)
always get the same set.
"""

from __future__ import annotations

from fl_server.config import RunConfig
from fl_server.observers import RoundObserver


def observers_for(cfg: RunConfig) -> list[RoundObserver]:  # noqa: ARG001 - sinks read cfg
    """The sinks of a run, in the order they are notified."""
    return []
