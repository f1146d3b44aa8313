"""`fedmsr monitor`: serve fleet-level metrics between runs (Prometheus, 127.0.0.1 only),
from what persists (:mod:`fl_server.persisted_metrics`)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail

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
    """Serve fleet metrics between runs (Prometheus, 127.0.0.1)."""
    from prometheus_client import generate_latest

    from fl_server.persisted_metrics import monitor_metrics
    from monitoring.exporter import MetricsExporter

    if not 0 <= port <= 65535:
        fail("--port", f"must be in 0..65535 (0: any free port), got {port}")
    if not Path(runs_dir).is_dir():
        fail("--runs-dir", f"{runs_dir} is not a directory; point it at where `fedmsr run` "
             "writes runs (--runs-dir of the run)")
    metrics = monitor_metrics(Path(runs_dir), db)
    if once:
        sys.stdout.write(generate_latest(metrics.registry).decode())
        return
    exporter = MetricsExporter(metrics.registry, port)
    try:
        exporter.start()
    except OSError as exc:
        fail("--port", f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another "
             "port, or 0 for any free port")
    print(f"monitor: serving {exporter.url} (runs: {runs_dir})", flush=True)
    try:
        _wait_for_signal()
    finally:
        exporter.stop()


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (the operator's Ctrl-C or a service manager's stop).

    Both are handled here, as the launcher and the shuffler handle them, rather than left
    to Python's KeyboardInterrupt: Python installs that only when SIGINT was not ignored
    at start, and a monitor started as a background job of a script inherits SIGINT
    ignored, so it would never stop on it.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
