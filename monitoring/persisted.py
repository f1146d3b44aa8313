"""Metrics from what persists between runs: the runs directory and a fleet snapshot.

`fedmsr monitor` serves these so fleet and budget panels do not go blank when no run is
live. The runs directory is read as plain files (`run.json`, `status.json`,
`history.json` of each run), never through fl_server, which monitoring must not import.
The fleet snapshot (devices by status, per-device epsilon and information bits) comes from
the registry; fl_server builds it and hands it over as a :class:`FleetSnapshot`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.metrics import DEVICE_STATUSES, RUN_STATUSES, FedmsrMetrics
from privacy.accounting.fleet import FleetBudgets
from privacy.wire.round_record import RoundRecord


@dataclass(frozen=True)
class FleetSnapshot:
    """A fleet as plain numbers (no device ids): the registry's, or a run's own devices."""

    devices_by_status: dict[str, int]
    budgets: FleetBudgets = field(default_factory=FleetBudgets)
    information_bits: list[float] = field(default_factory=list)
    #: Each device's accumulated randomized-release epsilon (None: not read here).
    release_epsilons: list[float] | None = None
    #: True: the registry's whole fleet (exported under `fedmsr_registry_*`); False: the
    #: latest run's devices (the names a run exports).
    from_registry: bool = False

    def apply(self, metrics: FedmsrMetrics) -> None:
        registry = metrics.fleet_registry
        if self.from_registry and registry is None:
            raise ValueError("a registry snapshot needs FedmsrMetrics(between_runs=True)")
        gauge = registry.devices if self.from_registry and registry else metrics.devices
        for status in DEVICE_STATUSES:
            gauge.labels(status=status).set(self.devices_by_status.get(status, 0))
        metrics.set_budgets(self.budgets)
        metrics.set_information_bits(self.information_bits)
        if self.release_epsilons is not None:
            released = self.release_epsilons
            figures = (max(released, default=0.0),
                       sum(released) / len(released) if released else 0.0)
            if self.from_registry and registry:
                registry.set_release_epsilon(*figures)
            else:
                metrics.set_release_epsilon(*figures)


@dataclass(frozen=True)
class RunOnDisk:
    """One run directory's persisted state."""

    run_id: str
    config: dict[str, Any]
    status: dict[str, Any]
    history: list[RoundRecord]

    @property
    def updated(self) -> float:
        return float(self.status.get("updated_unix", 0.0))


def read_runs(runs_dir: Path) -> list[RunOnDisk]:
    """Every run in `runs_dir` with a readable run.json and status.json, oldest first.

    A run being written right now may have a half-visible file; it is skipped at this
    scrape and read at the next (the fl_server writers are atomic, so this is rare).
    """
    runs: list[RunOnDisk] = []
    if not runs_dir.is_dir():
        return runs
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            config = json.loads((run_dir / "run.json").read_text())
            status = json.loads((run_dir / "status.json").read_text())
            history_path = run_dir / "history.json"
            rows = json.loads(history_path.read_text()) if history_path.exists() else []
            history = [RoundRecord.from_json(row) for row in rows]
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # JSONDecodeError is a ValueError; a row that is no record: skipped
        if isinstance(config, dict) and isinstance(status, dict):
            runs.append(RunOnDisk(run_dir.name, config, status, history))
    return sorted(runs, key=lambda run: (run.updated, run.run_id))


def apply_runs(metrics: FedmsrMetrics, runs: list[RunOnDisk]) -> None:
    """Runs by status, and the latest run's last round, as the live exporter showed it."""
    counts = Counter(str(run.status.get("status")) for run in runs)
    for status in RUN_STATUSES:
        metrics.runs.labels(status=status).set(counts.get(status, 0))
    if not runs:
        return
    latest = runs[-1]
    if latest.status.get("status") in RUN_STATUSES:
        metrics.set_run_status(latest.status["status"])
    metrics.run_rounds_planned.set(latest.status.get("planned_rounds", 0))
    metrics.run_rounds_completed.set(latest.status.get("completed_rounds", 0))
    metrics.run_dp_sgd.set(1 if latest.config.get("dp_sgd") else 0)
    if latest.history:
        _apply_last_round(metrics, latest.history[-1], latest.updated)
    alert = latest.config.get("leakage_alert")
    if isinstance(alert, (int, float)):
        metrics.leakage_alert.set(float(alert))
    for record in latest.history:  # oldest first: the newest collection's figures stay
        metrics.set_collection(record)


def _apply_last_round(metrics: FedmsrMetrics, record: RoundRecord, when: float) -> None:
    metrics.set_round_quality(record)
    metrics.set_leakage("identity", {1: float(record.identity_acc)})
    for outcome, value in (("sampled", record.sampled), ("responded", record.responded),
                           ("dropped", record.failed)):
        metrics.round_devices.labels(outcome=outcome).set(value)
    metrics.client_train_max.set(record.client_train_s_max)
    metrics.last_round_time.set(when)


def fleet_from_runs(runs: list[RunOnDisk]) -> FleetSnapshot | None:
    """Without a registry: the latest run's simulated fleet (enrolled whole, none revoked)."""
    if not runs:
        return None
    latest = runs[-1]
    size = int(latest.config.get("devices", 0))
    active = {d for record in latest.history for d in record.devices}
    return FleetSnapshot({"enrolled": size - len(active), "active": len(active), "revoked": 0})
