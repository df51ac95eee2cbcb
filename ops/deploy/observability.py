"""Observability: Prometheus scrape config (for the compose stack), ServiceMonitor and PodMonitor (for
the Prometheus Operator), and the burn-rate rules of `GET /v1/slo` as a rules file and a
PrometheusRule, built from gateway/slo.py's windows and alerts and each tier's objective. Pure.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings
from gateway import slo

from . import grafana
from .common import dns_name, dump_yaml, gateways, worker_metrics_port

SCRAPE_INTERVAL = "15s"
RULES_FILE = "tiergate-rules.yml"
# Bad events are the requests that reached an outcome and missed the objective, as /v1/slo counts:
# every outcome but a cancellation (a client's choice), good ones answered within latency_ms.
TOTAL = 'sum by (tier) (rate(tiergate_requests_total{{tier="{tier}",outcome!="cancelled"}}[{window}]))'
GOOD = 'sum by (tier) (rate(tiergate_slo_met_total{{tier="{tier}"}}[{window}]))'
SEVERITY = {"fast_burn": "page", "slow_burn": "ticket"}


def burn_rate_record(window: str) -> str:
    return f"tiergate:slo_burn_rate:{window}"


def render(settings: Settings, config_text: str) -> dict[str, str]:
    del config_text  # the rules come from the config's tiers; the processes' copy ships with the others
    groups = rule_groups(settings)
    operator = [*_monitors(settings), _prometheus_rule(groups)]
    return {
        "observability/prometheus.yml": dump_yaml([_scrape_config(settings)], _SCRAPE_NOTES),
        f"observability/{RULES_FILE}": dump_yaml([{"groups": groups}], _RULE_NOTES),
        "observability/prometheus-operator.yaml": dump_yaml(operator, _RULE_NOTES),
        "observability/grafana-dashboard.json": grafana.dashboard_json(windows()),
    }


_SCRAPE_NOTES = ("Scrapes the compose stack (deploy/compose): the gateway, and every replica of each pool by DNS.",)
_RULE_NOTES = (
    "The multi-window burn-rate alerts of GET /v1/slo (gateway/slo.py BURN_ALERTS): burn rate = the share",
    "of requests that missed the tier's latency objective, over the share its objective allows.",
)


def windows() -> list[str]:
    """The burn-rate windows the alerts read, shortest first."""
    used = {w for a in slo.BURN_ALERTS for w in (a.long_window, a.short_window)}
    return sorted(used, key=slo.WINDOW_S.__getitem__)


def rule_groups(settings: Settings) -> list[dict[str, Any]]:
    records = []
    for tier, tier_settings in settings.tiers.items():
        allowed = f"{1.0 - tier_settings.slo.objective / 100.0:.6g}"
        for window in windows():
            total, good = TOTAL.format(tier=tier, window=window), GOOD.format(tier=tier, window=window)
            expr = f"(1 - ({good}) / ({total})) / {allowed}"
            records.append({"record": burn_rate_record(window), "expr": expr, "labels": {"tier": tier}})
    alerts = [_alert(a) for a in slo.BURN_ALERTS]
    return [{"name": "tiergate-slo-burn-rate", "rules": records}, {"name": "tiergate-slo-alerts", "rules": alerts}]


def _alert(alert: slo.BurnAlert) -> dict[str, Any]:
    long, short = burn_rate_record(alert.long_window), burn_rate_record(alert.short_window)
    name = "Tiergate" + "".join(part.title() for part in alert.name.split("_"))
    return {
        "alert": name,
        "expr": f"{long} > {alert.threshold:g} and on (tier) {short} > {alert.threshold:g}",
        "labels": {"severity": SEVERITY.get(alert.name, "ticket")},
        "annotations": {
            "summary": f"{{{{ $labels.tier }}}} tier: error budget burning over {alert.threshold:g}x",
            "description": (
                f"The {{{{ $labels.tier }}}} tier's burn rate is over {alert.threshold:g} in both the "
                f"{alert.long_window} and {alert.short_window} windows (GET /v1/slo alerts.{alert.name})."
            ),
        },
    }


def _scrape_config(settings: Settings) -> dict[str, Any]:
    port = worker_metrics_port(settings)
    gateway_targets = [f"{gw.name}:{gw.port}" for gw in gateways(settings)]
    worker_names = [f"worker-{dns_name(pool)}" for pool in settings.pools]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [RULES_FILE],
        "scrape_configs": [
            {"job_name": "tiergate-gateway", "static_configs": [{"targets": gateway_targets}]},
            {
                "job_name": "tiergate-worker",
                "dns_sd_configs": [{"names": worker_names, "type": "A", "port": port}],
            },
        ],
    }


def _monitors(settings: Settings) -> list[dict[str, Any]]:
    selector = {"app.kubernetes.io/name": "tiergate"}
    service_monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "tiergate-gateway", "labels": selector},
        "spec": {
            "selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "gateway"}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }
    pod_monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "tiergate-worker", "labels": selector},
        "spec": {
            "selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "worker"}},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }
    return [service_monitor, pod_monitor]


def _prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tiergate-slo", "labels": {"app.kubernetes.io/name": "tiergate"}},
        "spec": {"groups": groups},
    }
