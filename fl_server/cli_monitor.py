"""`fedmsr monitor`: fleet-level metrics between runs, from what persists.

While a run is live its engine serves metrics (`fedmsr run --metrics-port`); when none
is, fleet and budget panels would go blank. This command serves the same metric names
from the runs directory (every run's status, the latest run's last round) and from the
fleet registry when one is set up here. Every scrape re-reads them, so the figures are as
current as the files and the database; nothing is cached between scrapes.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from monitoring.metrics import FedmsrMetrics
    from monitoring.persisted import FleetSnapshot

EXIT_BAD_INPUT = 2
DEFAULT_PORT = 9465


def monitor(
    runs_dir: Annotated[str, typer.Option(help="The runs directory to report on.")] = "runs",
    port: Annotated[int, typer.Option(help="Serve on 127.0.0.1:PORT (0: any free port).")]
    = DEFAULT_PORT,
    db: Annotated[str | None, typer.Option(help="Registry database URL (default: "
                                              "FEDMSR_DB or the local registry, if any).")]
    = None,
    once: Annotated[bool, typer.Option("--once", help="Print the metrics once and exit "
                                       "(e.g. for a textfile collector).")] = False,
) -> None:
    """Serve fleet-level metrics between runs (Prometheus, 127.0.0.1 only)."""
    from prometheus_client import generate_latest

    from monitoring.exporter import MetricsExporter

    if not 0 <= port <= 65535:
        _fail(f"--port: must be in 0..65535 (0: any free port), got {port}")
    if not Path(runs_dir).is_dir():
        _fail(f"--runs-dir: {runs_dir} is not a directory; point it at where `fedmsr run` "
              "writes runs (--runs-dir of the run)")
    metrics = monitor_metrics(Path(runs_dir), db)
    if once:
        sys.stdout.write(generate_latest(metrics.registry).decode())
        return
    exporter = MetricsExporter(metrics.registry, port)
    try:
        exporter.start()
    except OSError as exc:
        _fail(f"--port: cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another "
              "port, or 0 for any free port")
    print(f"monitor: serving {exporter.url} (runs: {runs_dir})", flush=True)
    try:
        _wait_for_signal()
    finally:
        exporter.stop()


def monitor_metrics(runs_dir: Path, db: str | None) -> FedmsrMetrics:
    """A metric set whose every scrape re-reads the runs directory and the registry."""
    from monitoring.metrics import FedmsrMetrics

    holder: list[FedmsrMetrics] = []
    registry = _refreshing_registry(lambda: refresh(holder[0], runs_dir, db))
    holder.append(FedmsrMetrics(registry))
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
    privacy ledger (`privacy_ledger.fleet_budgets`: the RDP bound of each device not revoked,
    at delta 1e-5 or the device's own delta cap).
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
    from fl_server.privacy_ledger import fleet_budgets
    from monitoring.persisted import FleetSnapshot

    url = registry_db.resolve_url(db)
    with registry_db.session_scope(url) as session:
        rows = session.execute(select(models.Device.status, func.count())
                               .group_by(models.Device.status)).all()
        bits = fleet_bits(session)  # information ledger (docs/representations.md)
    epsilons, caps = fleet_budgets(url, 1e-5)
    return FleetSnapshot({str(status): int(count) for status, count in rows},
                         epsilons=epsilons, epsilon_caps=caps, information_bits=bits)


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


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (the operator's Ctrl-C or a service manager's stop)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_INPUT)
