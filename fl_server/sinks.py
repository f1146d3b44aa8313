"""Which observers follow a run (registry, metrics, ...), built from its configuration.

One place to add a sink, so the ServerApp entry points (`fedmsr run`, `flwr run .`)
always get the same set.
"""

from __future__ import annotations

from fl_server.config import RunConfig
from fl_server.observers import RoundObserver
from fl_server.privacy_ledger import fleet_budgets
from fl_server.registry.db import resolve_url
from fl_server.registry_observer import registry_observers
from monitoring.observer import BudgetSource, MetricsObserver


def observers_for(cfg: RunConfig) -> list[RoundObserver]:
    """The sinks of a run, in the order they are notified."""
    metrics = [MetricsObserver.for_config(cfg, budgets=_budget_source(cfg))] \
        if cfg.metrics_port >= 0 else []
    return [*registry_observers(cfg), *metrics]


def _budget_source(cfg: RunConfig) -> BudgetSource | None:
    """Registry-backed runs: the metrics read the fleet's spend from the privacy ledger."""
    if cfg.device_indices is None:
        return None
    url = resolve_url()
    return lambda: fleet_budgets(url, cfg.delta, cfg.epsilon_cap)
