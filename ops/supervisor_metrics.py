"""The supervisor's own Prometheus metrics (restarts per child, children running), served by
prometheus-client's HTTP server on 127.0.0.1 and a free port; the URL goes into the ready line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.metrics_http import MetricsEndpoint

HOST = "127.0.0.1"


class SupervisorMetrics:
    def __init__(self, children: Sequence[str], running: Callable[[], float]) -> None:
        self.registry = r = CollectorRegistry()
        restarts = Counter(
            "tiergate_supervisor_restarts", "Times a child was started again after it exited", ["child"], registry=r
        )
        self._restarts = {name: restarts.labels(name) for name in children}  # each shows 0 from the start
        self._counts = dict.fromkeys(children, 0)
        Gauge("tiergate_supervisor_children", "Child processes supervised", registry=r).set(len(children))
        Gauge("tiergate_supervisor_children_running", "Child processes alive", registry=r).set_function(running)
        self._endpoint = MetricsEndpoint(self.registry)
        self.url = ""

    def restarted(self, child: str) -> None:
        self._restarts[child].inc()
        self._counts[child] += 1

    def restarts_of(self, child: str) -> int:
        return self._counts[child]

    def serve(self) -> str:
        """Start the /metrics HTTP server on a free port; returns its URL."""
        self.url = self._endpoint.serve(HOST, 0)
        return self.url

    def close(self) -> None:
        self._endpoint.close()
