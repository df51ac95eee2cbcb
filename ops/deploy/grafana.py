"""The Grafana dashboard: per tier p50/p99, SLO attainment, burn rate, queue depth and lag; per
processor throughput, batch size, utilisation, power and cost. Every query reads a metric the
gateway or a worker exports (a test scrapes both), or a rule of observability.py. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from .common import HEADER

RATE = "$__rate_interval"
ATTAINMENT = (
    "sum by (tier) (rate(tiergate_slo_met_total[5m])) "
    '/ sum by (tier) (rate(tiergate_requests_total{outcome!="cancelled"}[5m]))'
)


def _quantile(q: float) -> str:
    return f"histogram_quantile({q:g}, sum by (le, tier) (rate(tiergate_request_duration_seconds_bucket[{RATE}])))"


def _per_processor(metric: str, scale: str = "") -> str:
    return f"sum by (processor) (rate({metric}[{RATE}])){scale}"


def panels(burn_windows: list[str]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, unit, [(legend, PromQL)]) of each panel, in the order they are laid out."""
    batch = (
        f"sum by (processor) (rate(tiergate_worker_batch_size_sum[{RATE}])) "
        f"/ sum by (processor) (rate(tiergate_worker_batch_size_count[{RATE}]))"
    )
    utilisation = (
        f"sum by (pool) (rate(tiergate_worker_busy_seconds_total[{RATE}])) "
        "/ count by (pool) (tiergate_worker_in_flight_requests)"
    )
    return [
        ("Latency p50 by tier", "s", [("{{tier}}", _quantile(0.5))]),
        ("Latency p99 by tier", "s", [("{{tier}}", _quantile(0.99))]),
        ("SLO attainment by tier (5m)", "percentunit", [("{{tier}}", ATTAINMENT)]),
        (
            "Error budget burn rate",
            "none",
            [(f"{{{{tier}}}} {w}", f"tiergate:slo_burn_rate:{w}") for w in burn_windows],
        ),
        (
            "Queue depth by stream",
            "short",
            [("{{tier}} {{pools}}", "max by (tier, region, pools) (tiergate_queue_depth)")],
        ),
        (
            "Consumer group lag by stream",
            "short",
            [("{{tier}} {{pools}}", "max by (tier, region, pools) (tiergate_consumer_group_lag)")],
        ),
        (
            "Throughput by processor",
            "reqps",
            [("{{processor}}", _per_processor('tiergate_worker_requests_total{outcome="ok"}'))],
        ),
        ("Mean batch size by processor", "short", [("{{processor}}", batch)]),
        ("Utilisation by pool", "percentunit", [("{{pool}}", utilisation)]),
        ("Power by processor", "watt", [("{{processor}}", _per_processor("tiergate_worker_energy_joules_total"))]),
        (
            "Cost by processor",
            "currencyUSD",
            [("{{processor}} per hour", _per_processor("tiergate_worker_cost_usd_total", " * 3600"))],
        ),
    ]


def _panel(index: int, title: str, unit: str, queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(queries)
        ],
    }


def dashboard(burn_windows: list[str]) -> dict[str, Any]:
    """The panels are per label: which tiers, streams and pools appear is what the processes export."""
    datasource = {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
    return {
        "title": "tiergate",
        "uid": "tiergate",
        "description": HEADER,
        "tags": ["tiergate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [datasource]},
        "panels": [_panel(i, *spec) for i, spec in enumerate(panels(burn_windows))],
    }


def dashboard_json(burn_windows: list[str]) -> str:
    return json.dumps(dashboard(burn_windows), indent=2) + "\n"
