"""The metrics sink of a run: turns the federation's round records into Prometheus metrics.

It follows `fl_server.observers.RoundObserver` by shape only (monitoring must not import
fl_server; fl_server wires it in `sinks.py`). It reads from the run configuration only
`devices`, `rounds`, `dp_sgd`, `leakage_alert`, `metrics_port`, `metrics_linger_s` and
`run_dir()`, and each round's typed history record (`privacy.wire.round_record.RoundRecord`).

The exporter lives as long as the run: started in `run_started`, stopped in
`run_finished` after `metrics_linger_s` seconds, so a scraper that polls every few
seconds still sees the final state of a short run. While it is up, `metrics.json` in the
run directory says where (port 0 asks for any free port; that file is how a caller
learns which). Beside it, `<runs-dir>/prometheus-targets/<run-id>.json` is a Prometheus
`file_sd_configs` target group (labels `job`, `run`), so Prometheus finds every live run
whatever its port, and stops scraping it when the file goes with the exporter.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monitoring.exporter import MetricsExporter
from monitoring.metrics import FedmsrMetrics
from privacy.accounting.fleet import FleetBudgets
from privacy.atomic_write import write_text_atomic
from privacy.wire.round_record import DeviceDpEvent, RoundRecord

ENDPOINT_FILE = "metrics.json"
#: Prometheus file-based service discovery: `<runs-dir>/prometheus-targets/<run-id>.json`
#: names the live run's exporter (any port, `--metrics-port 0` included) while it is up.
TARGETS_DIR = "prometheus-targets"
#: The scrape job the target files declare (monitoring/prometheus/prometheus.yml).
RUN_JOB = "fedmsr-run"
#: () -> every tracked device's spend, RDP bound and cap, for FedmsrMetrics.set_budgets.
BudgetSource = Callable[[], FleetBudgets]
#: The round record's attribute for each timed phase (SecAgg+ adds its own stages).
PHASE_ATTRIBUTES = {"checkin": "checkin_s", "train": "train_phase_s",
                    "aggregate": "aggregate_s", "evaluate": "eval_s"}


class MetricsObserver:
    """Updates a :class:`FedmsrMetrics` from a run's hooks and serves it while the run lives."""

    def __init__(self, metrics: FedmsrMetrics | None = None, port: int = -1,
                 linger_s: float = 0.0, budgets: BudgetSource | None = None) -> None:
        self.metrics = metrics or FedmsrMetrics()
        #: Reads every tracked device's (epsilon, cap) from the privacy ledger; fl_server
        #: supplies it for registry-backed runs (monitoring must not import fl_server).
        self.budgets = budgets
        self.exporter = MetricsExporter(self.metrics.registry, port) if port >= 0 else None
        self.linger_s = max(0.0, float(linger_s))
        self._endpoint_file: Path | None = None
        self._target_file: Path | None = None
        self._stop_linger = threading.Event()
        self._active: set[int] = set()
        self._fleet_size = 0

    @classmethod
    def for_config(cls, cfg: Any, budgets: BudgetSource | None = None) -> MetricsObserver:
        return cls(port=int(getattr(cfg, "metrics_port", -1)),
                   linger_s=float(getattr(cfg, "metrics_linger_s", 0.0)), budgets=budgets)

    # -- RoundObserver hooks ----------------------------------------------------------

    def run_started(self, cfg: Any, resumed_after_round: int) -> None:
        m = self.metrics
        m.set_run_status("running")
        m.run_rounds_planned.set(cfg.rounds)
        m.run_rounds_completed.set(resumed_after_round)
        m.run_dp_sgd.set(1 if cfg.dp_sgd else 0)
        m.run_start_time.set(time.time())
        m.leakage_alert.set(float(getattr(cfg, "leakage_alert", math.nan)))
        self._fleet_size = int(cfg.devices)
        self._set_devices()
        self._set_budgets()
        if self.exporter is not None:
            self._serve(cfg)

    def round_finished(self, cfg: Any, record: RoundRecord) -> None:
        m = self.metrics
        m.rounds.labels(status="completed").inc()
        m.run_rounds_completed.set(record.round)
        m.last_round_time.set(time.time())
        m.round_duration.observe(record.wall_s)
        for phase, attribute in PHASE_ATTRIBUTES.items():
            m.phase_duration.labels(phase=phase).observe(getattr(record, attribute))
        if record.secagg is not None:
            for stage, seconds in record.secagg.phases_s.items():
                m.phase_duration.labels(phase=f"secagg_{stage}").observe(seconds)
            m.secagg_dropouts.inc(record.secagg.dropouts)
        self._devices(record)
        self._quality(record)
        m.set_collection(record)
        bits = record.collection.get("information_bits")
        if bits:  # a collection round: every run device's bits
            m.set_information_bits(list(bits.values()))
        self._dp_events(record.dp_events)
        self._set_budgets()
        m.client_train_seconds.inc(record.client_train_s_sum)
        m.client_train_max.set(record.client_train_s_max)
        m.sent_bytes.inc(record.bytes_sent)
        m.received_bytes.inc(record.bytes_received)
        m.ledger_disagreements.inc(record.budget.ledger_disagreements)
        for reason, count in record.rejected.items():
            m.updates_rejected.labels(reason=reason).inc(count)

    def run_finished(self, cfg: Any, status: Any) -> None:
        m = self.metrics
        m.set_run_status(status.status)
        m.run_rounds_completed.set(status.completed_rounds)
        if status.status == "failed" and status.completed_rounds < status.planned_rounds:
            m.rounds.labels(status="failed").inc()  # the round that was under way
        if self.exporter is not None and self.exporter.running:
            self._stop_linger.wait(self.linger_s)
            self.stop()

    # -- serving ----------------------------------------------------------------------

    def _serve(self, cfg: Any) -> None:
        assert self.exporter is not None
        try:
            self.exporter.start()
        except OSError as exc:
            raise RuntimeError(f"metrics_port: cannot listen on 127.0.0.1:"
                               f"{self.exporter.requested_port} ({exc.strerror}); "
                               "choose another --metrics-port, or 0 for any free port") from None
        self._endpoint_file = Path(cfg.run_dir()) / ENDPOINT_FILE
        write_text_atomic(self._endpoint_file, json.dumps(
            {"url": self.exporter.url, "port": self.exporter.port, "pid": os.getpid()},
            indent=2) + "\n")
        run_dir = Path(cfg.run_dir())
        self._target_file = run_dir.parent / TARGETS_DIR / f"{run_dir.name}.json"
        self._target_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self._target_file, json.dumps(
            [{"targets": [f"127.0.0.1:{self.exporter.port}"],
              "labels": {"job": RUN_JOB, "run": run_dir.name}}], indent=2) + "\n")
        print(f"metrics: {self.exporter.url}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Stop serving now (ends a linger early); remove the endpoint and target files."""
        self._stop_linger.set()
        if self.exporter is not None:
            self.exporter.stop()
        for path in (self._endpoint_file, self._target_file):
            if path is not None:
                path.unlink(missing_ok=True)
        self._endpoint_file = self._target_file = None

    # -- record -> metrics ------------------------------------------------------------

    def _devices(self, record: RoundRecord) -> None:
        m = self.metrics
        sampled, responded, failed = record.sampled, record.responded, record.failed
        for outcome, value in (("sampled", sampled), ("responded", responded),
                               ("dropped", failed)):
            m.round_devices.labels(outcome=outcome).set(value)
        m.devices_sampled.inc(sampled)
        m.devices_responded.inc(responded)
        m.devices_dropped.inc(failed)
        self._active.update(record.devices)
        self._set_devices()

    def _set_devices(self) -> None:
        """A simulated fleet is enrolled whole and never revokes (the registry says more).

        As in the registry, a device is `active` once it has taken part (here: in this
        run) and `enrolled` until then.
        """
        m = self.metrics
        m.devices.labels(status="active").set(len(self._active))
        m.devices.labels(status="enrolled").set(self._fleet_size - len(self._active))
        m.devices.labels(status="revoked").set(0)

    def _quality(self, record: RoundRecord) -> None:
        m = self.metrics
        m.set_round_quality(record)
        # The identity probe on single clips is PL(1); leakage tracking adds k > 1.
        curves = record.collection.get("leakage") or {"identity": {1: record.identity_acc}}
        for attack, curve in curves.items():
            m.set_leakage(attack, {int(k): float(v) for k, v in curve.items()})

    def _set_budgets(self) -> None:
        """The ledger after this round's reservations (the whole fleet, one snapshot)."""
        if self.budgets is not None:
            self.metrics.set_budgets(self.budgets())

    def _dp_events(self, events: Sequence[DeviceDpEvent]) -> None:
        m = self.metrics
        for event in events:
            m.dp_events.inc()
            m.dp_sampling.observe(event.sample_rate)
            m.dp_noise.observe(event.noise_multiplier)
            m.dp_steps.observe(event.steps)
