"""Serve a metric registry over HTTP on 127.0.0.1, with a clean start and stop.

prometheus-client's `start_http_server` returns the server and its thread; this wraps
them so a caller can ask for port 0 (the OS picks a free port, :attr:`port` says which)
and stop without leaking the thread or the listening socket. Only loopback: an
operator who wants Prometheus elsewhere puts a proxy in front, deliberately.
"""

from __future__ import annotations

import threading
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from privacy.checks import is_int

LOOPBACK = "127.0.0.1"


class MetricsExporter:
    """`/metrics` for one registry, on 127.0.0.1:`port` (0 = any free port)."""

    def __init__(self, registry: CollectorRegistry, port: int = 0) -> None:
        if not is_int(port) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be an integer in 0..65535, got {port!r}")
        self.registry = registry
        self.requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve in a daemon thread; return the port actually bound."""
        if self._server is not None:
            return self.port
        self._server, self._thread = start_http_server(
            self.requested_port, addr=LOOPBACK, registry=self.registry)
        return self.port

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the exporter is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
