"""The rendered Prometheus rules and Grafana dashboard query only metrics that a running gateway
and its workers really export: both are started against a real Redis, served some requests, and
their /metrics pages scraped; also, a worker's /metrics port answers the health URL its container
and pod probe."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from tests.integration.conftest import Stack

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\btiergate_[a-z0-9_]+")
RECORDED = re.compile(r"\btiergate:[a-z0-9_:]+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


async def exported(s: Stack, url: str) -> set[str]:
    """Every sample name the /metrics page at `url` can show, labelled children seen or not."""
    async with s.http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def queried() -> tuple[set[str], set[str], set[str]]:
    """Metric names the rules and the dashboard query; recording rules the dashboard reads; those recorded."""
    rules = (DEPLOY / "observability/tiergate-rules.yml").read_text()
    dashboard = json.loads((DEPLOY / "observability/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = set(METRIC.findall(rules)) | {m for e in exprs for m in METRIC.findall(e)}
    recorded = set(re.findall(r"record: (tiergate:[a-z0-9_:]+)", rules))
    return names, {m for e in exprs for m in RECORDED.findall(e)}, recorded


async def test_rules_and_dashboard_query_metrics_the_processes_export(
    stack: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(make_settings(metrics__queue_sample_interval_s=0.05))
    answers = await asyncio.gather(
        *(s.infer(model="sim-echo", input=f"q{i}", tier=tier) for i, tier in enumerate(s.settings.tiers))
    )
    assert [status for status, _ in answers] == [200] * len(s.settings.tiers)
    names = await exported(s, f"{s.url}/metrics")
    for worker, _ in s.workers.values():
        names |= await exported(s, worker.metrics.url)
    wanted, dashboard_records, recorded = queried()
    assert wanted, "no tiergate_ metric found in the rendered rules and dashboard"
    assert sorted(wanted - names) == []
    assert dashboard_records and dashboard_records <= recorded


async def test_a_workers_metrics_port_answers_its_health_url(
    stack: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(make_settings(), pools=["groq-realtime"])
    worker, _ = s.workers["groq-realtime"]
    async with s.http.get(worker.metrics.url.replace("/metrics", "/healthz")) as response:
        assert response.status == 200
