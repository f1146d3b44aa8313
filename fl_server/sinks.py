"""Which observers follow a run (registry, metrics, ...), built from its configuration.

One place to add a sink, so the ServerApp entry points (`fedmsr run`, `flwr run .`)
always get the same set.
"""

from __future__ import annotations

from fl_server.config import RunConfig
from fl_server.observers import RoundObserver
from fl_server.registry_observer import registry_observers
from monitoring.observer import MetricsObserver


def observers_for(cfg: RunConfig) -> list[RoundObserver]:  # noqa: ARG001 - sinks read cfg
    """The sinks of a run, in the order they are notified."""
    metrics = [MetricsObserver.for_config(cfg)] if cfg.metrics_port >= 0 else []
    return [*registry_observers(cfg), *metrics]
