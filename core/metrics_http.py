"""A Prometheus /metrics endpoint of its own for a process that has no web server (a worker, the
supervisor): prometheus-client's HTTP server in a thread, on a port (0: a free one), stopped once.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.url = ""
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> str:
        """Start serving `registry` on host:port; returns the /metrics URL with the real port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.url = f"http://{host}:{self._server.server_port}/metrics"
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
