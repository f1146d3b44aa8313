"""Fleet-level metrics between runs, read from what persists: the runs directory (every
run's status, the latest run's last round) and the fleet registry where one is set up.

While a run is live its engine serves metrics (`fedmsr run --metrics-port`); when none
is, fleet and budget panels would go blank. `fedmsr monitor` serves the same metric names
from here. Every scrape re-reads the files and the database, so the figures are as
current as they are; nothing is cached between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from monitoring.metrics import FedmsrMetrics
    from monitoring.persisted import FleetSnapshot


def monitor_metrics(runs_dir: Path, db: str | None) -> FedmsrMetrics:
    """A metric set whose every scrape re-reads the runs directory and the registry."""
    from monitoring.metrics import FedmsrMetrics

    holder: list[FedmsrMetrics] = []
    registry = _refreshing_registry(lambda: refresh(holder[0], runs_dir, db))
    holder.append(FedmsrMetrics(registry, between_runs=True))
    return holder[0]


def refresh(metrics: FedmsrMetrics, runs_dir: Path, db: str | None) -> None:
    from monitoring.persisted import apply_runs, fleet_from_runs, read_runs

    runs = read_runs(runs_dir)
    apply_runs(metrics, runs)
    metrics.source_up.labels(source="runs").set(1 if runs_dir.is_dir() else 0)
    try:
        fleet = registry_snapshot(db)
        metrics.source_up.labels(source="registry").set(0 if fleet is None else 1)
    except Exception:  # noqa: BLE001 - an unreachable registry must not stop the scrape
        fleet = None
        metrics.source_up.labels(source="registry").set(0)
    fleet = fleet or fleet_from_runs(runs)
    if fleet is not None:
        fleet.apply(metrics)


def registry_snapshot(db: str | None) -> FleetSnapshot | None:
    """The registry's fleet (devices by status), or None where there is no registry.

    None when the registry package is not installed or no registry is configured here
    (no `--db`, no FEDMSR_DB, no local registry file). Per-device epsilon comes from the
    privacy ledger (`privacy_ledger.fleet_budgets`: each device not revoked, its reported
    epsilon and its RDP bound, at delta 1e-5 or the device's own delta cap); randomized-release epsilon too (reported,
    PLD at delta 1e-5, those devices' `randomized-release` events only).
    """
    try:
        from sqlalchemy import func, select

        from fl_server.registry import db as registry_db
        from fl_server.registry import models
    except ImportError:
        return None
    if db is None and not registry_db.registry_configured():
        return None
    from fl_server.information_ledger import fleet_bits
    from fl_server.privacy_ledger import fleet_budgets, kind_epsilons
    from monitoring.persisted import FleetSnapshot
    from privacy.accounting import EventKind

    url = registry_db.resolve_url(db)
    with registry_db.session_scope(url) as session:
        rows = session.execute(select(models.Device.status, func.count())
                               .group_by(models.Device.status)).all()
        bits = fleet_bits(session)  # information ledger (docs/representations.md)
        kept = session.scalars(select(models.Device.id).where(
            models.Device.status != models.DeviceStatus.REVOKED.value)).all()
        released = kind_epsilons(session, EventKind.RANDOMIZED_RELEASE, 1e-5, kept)
    return FleetSnapshot({str(status): int(count) for status, count in rows},
                         budgets=fleet_budgets(url, 1e-5), information_bits=bits,
                         release_epsilons=list(released.values()), from_registry=True)


def _refreshing_registry(refresh: Callable[[], None]) -> CollectorRegistry:
    """A CollectorRegistry that runs `refresh` before every collection (every scrape).

    prometheus-client is imported here, not at module level, so `fedmsr run` does not pay
    for it when it starts.
    """
    from prometheus_client import CollectorRegistry

    lock = threading.Lock()

    class Refreshing(CollectorRegistry):
        def collect(self) -> Iterator[Metric]:
            with lock:  # two concurrent scrapes must not interleave their refreshes
                refresh()
                collected = list(super().collect())
            yield from collected

    return Refreshing(auto_describe=True)
