"""What the gateway's per-request metrics cost a saturated gateway, measured inside one gateway
process (`bench/inprocess.py`): its request path flips between the metrics it has (plain floats
changed only on the event loop: `core/loop_metrics.py`) and the same `GatewayMetrics` built on
prometheus-client's own Counter, Gauge and Histogram, which take a lock and a few checks on every
update. The gateway logs at WARNING, so that the log line does not dilute the difference.
Run: `python -m bench.metrics_cost [--segments 40] [--segment-s 2] [--connections 64]`. Needs `wrk`.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import prometheus_client
from aiohttp import web

from bench import inprocess
from gateway import metrics
from gateway.calls import CALLS
from gateway.metrics import METRICS, GatewayMetrics


def prometheus_clients(settings: object) -> GatewayMetrics:
    """The gateway's metrics, each family one of prometheus-client's own."""
    with (
        mock.patch.object(metrics, "LoopCounter", prometheus_client.Counter),
        mock.patch.object(metrics, "LoopGauge", prometheus_client.Gauge),
        mock.patch.object(metrics, "LoopHistogram", prometheus_client.Histogram),
    ):
        return GatewayMetrics(settings)  # type: ignore[arg-type]


def implementations(app: web.Application) -> tuple[dict[str, Callable[[], None]], Callable[[], float]]:
    calls, loop_only = app[CALLS], app[METRICS]
    locked = prometheus_clients(loop_only.settings)

    def use(chosen: GatewayMetrics) -> Callable[[], None]:
        def switch() -> None:
            calls.metrics = chosen

        return switch

    def count() -> float:
        by_prometheus = sum(bound.ok._value.get() for bound in locked._bound.values())  # type: ignore[attr-defined]
        return inprocess.answered(loop_only) + by_prometheus

    return {"loop-only metrics": use(loop_only), "prometheus-client metrics": use(locked)}, count


def main() -> None:
    args = inprocess.parser(__doc__).parse_args()
    inprocess.report(inprocess.measure(implementations, args, level="WARNING"), args, "metrics")


if __name__ == "__main__":
    main()
