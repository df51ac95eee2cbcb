"""Prometheus metrics after a known load, parsed with prometheus-client's own parser: the gateway's
and each worker's `/metrics` agree with what the clients were answered."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from tests.integration.conftest import Stack, wait_until

StartStack = Callable[..., Any]
TIERS = ("realtime", "interactive", "batch")
PER_TIER = 12


def fast(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    return make_settings(metrics__slo_flush_interval_s=0.05, metrics__queue_sample_interval_s=0.05, **overrides)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of one /metrics page."""
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


async def send_load(s: Stack) -> list[dict[str, Any]]:
    requests = [(tier, f"{tier} question {i}") for tier in TIERS for i in range(PER_TIER)]
    answers = await asyncio.gather(*(s.infer(model="sim-echo", input=text, tier=tier) for tier, text in requests))
    assert [status for status, _ in answers] == [200] * len(requests)
    return [body for _, body in answers]


async def test_gateway_metrics_count_what_clients_were_answered(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(fast(make_settings))
    bodies = await send_load(s)
    m = await scrape(s.http, f"{s.url}/metrics")
    for tier in TIERS:
        answered = [b for b in bodies if b["tier"] == tier]
        assert total(m, "tiergate_requests_total", tier=tier, outcome="ok") == PER_TIER
        assert total(m, "tiergate_request_duration_seconds_count", tier=tier) == PER_TIER
        client_sum_s = sum(b["timings"]["total_ms"] for b in answered) / 1000.0
        assert total(m, "tiergate_request_duration_seconds_sum", tier=tier) == pytest.approx(client_sum_s, abs=1e-5)
        assert total(m, "tiergate_queue_wait_seconds_sum", tier=tier) == pytest.approx(
            sum(b["timings"]["queue_ms"] for b in answered) / 1000.0, abs=1e-6
        )
        assert total(m, "tiergate_slo_met_total", tier=tier) == sum(b["slo_met"] for b in answered)
        assert total(m, "tiergate_slo_missed_total", tier=tier) == sum(not b["slo_met"] for b in answered)
        objective_s = s.settings.tiers[tier].slo.latency_ms / 1000.0
        within = total(m, "tiergate_request_duration_seconds_bucket", tier=tier, le=repr(objective_s))
        assert within == sum(b["slo_met"] for b in answered)  # the objective is a bucket bound
        assert total(m, "tiergate_in_flight_requests", tier=tier) == 0
        for pool, count in Counter(b["pool"] for b in answered).items():
            processor = s.settings.pools[pool].processor
            assert total(m, "tiergate_requests_total", tier=tier, pool=pool, processor=processor) == count
    assert total(m, "tiergate_energy_joules_total") == pytest.approx(sum(b["energy_j"] for b in bodies), rel=1e-9)
    assert total(m, "tiergate_cost_usd_total") == pytest.approx(sum(b["cost"] for b in bodies), rel=1e-9)
    # the time-to-first-token family exists for streamed answers; these were not streamed
    assert total(m, "tiergate_time_to_first_token_seconds_count") == 0


async def test_worker_metrics_count_batches_and_requests(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(fast(make_settings))
    bodies = await send_load(s)
    for pool, (worker, _) in s.workers.items():
        assert worker.metrics.url.startswith("http://127.0.0.1:")
        m = await scrape(s.http, worker.metrics.url)
        mine = [b for b in bodies if b["pool"] == pool]
        batches = round(sum(1 / b["batch_size"] for b in mine))  # every batch was ours alone
        assert total(m, "tiergate_worker_batches_total", pool=pool) == batches
        assert total(m, "tiergate_worker_batch_size_count", pool=pool) == batches
        assert total(m, "tiergate_worker_batch_size_sum", pool=pool) == len(mine)
        for tier, count in Counter(b["tier"] for b in mine).items():
            assert total(m, "tiergate_worker_requests_total", pool=pool, tier=tier, outcome="ok") == count
            assert total(m, "tiergate_worker_queue_wait_seconds_count", pool=pool, tier=tier) == count
        assert total(m, "tiergate_worker_energy_joules_total") == pytest.approx(sum(b["energy_j"] for b in mine))
        assert total(m, "tiergate_worker_in_flight_requests", pool=pool) == 0


async def test_shed_and_deadline_exceeded_are_counted(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(fast(make_settings, tiers__realtime__max_queue=2), pools=[])
    for i in range(2):  # fill the realtime queue (no worker reads it)
        status, _ = await s.infer(model="sim-echo", input=f"park {i}", tier="realtime", wait=False)
        assert status == 202
    shed = [await s.infer(model="sim-echo", input=f"shed {i}", tier="realtime") for i in range(3)]
    assert [status for status, _ in shed] == [429] * 3
    late = [await s.infer(model="sim-echo", input=f"late {i}", tier="batch", deadline_ms=30) for i in range(2)]
    assert [status for status, _ in late] == [504] * 2
    m = await scrape(s.http, f"{s.url}/metrics")
    assert total(m, "tiergate_shed_total", tier="realtime") == 3
    assert total(m, "tiergate_requests_total", tier="realtime", outcome="shed") == 3
    assert total(m, "tiergate_deadline_exceeded_total", tier="batch") == 2
    assert total(m, "tiergate_requests_total", tier="batch", outcome="deadline_exceeded") == 2
    assert total(m, "tiergate_in_flight_requests") == 0

    async def sampled() -> bool:
        m = await scrape(s.http, f"{s.url}/metrics")
        return (
            total(m, "tiergate_queue_depth", tier="realtime") == 2
            and total(m, "tiergate_queue_depth", tier="batch") == 2
        )

    await wait_until(sampled)


async def test_consumer_group_lag_is_sampled(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    s: Stack = await stack(fast(make_settings), pools=["cerebras-batch"])
    await s.stop_workers()  # the group exists now, and nobody reads it
    for i in range(5):
        status, _ = await s.infer(model="sim-echo", input=f"waiting {i}", tier="batch", wait=False)
        assert status == 202

    async def lagging() -> bool:
        m = await scrape(s.http, f"{s.url}/metrics")
        return (
            total(m, "tiergate_consumer_group_lag", tier="batch") == 5
            and total(m, "tiergate_queue_depth", tier="batch") == 5
        )

    await wait_until(lagging)


async def test_time_to_first_token_is_observed_for_streamed_answers(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(fast(make_settings), pools=["h100-interactive", "tpu-interactive", "inferentia-mixed"])
    ttfts = []
    for i in range(3):
        body = {"model": "sim-echo", "messages": [{"role": "user", "content": f"stream {i}"}], "stream": True}
        async with s.http.post(f"{s.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            ttfts.append(float(response.headers["X-Tiergate-TTFT-Ms"]))
            pool = response.headers["X-Tiergate-Pool"]
            assert (await response.text()).rstrip().endswith("data: [DONE]")
    m = await scrape(s.http, f"{s.url}/metrics")
    assert total(m, "tiergate_time_to_first_token_seconds_count", tier="interactive") == 3
    assert total(m, "tiergate_time_to_first_token_seconds_sum") == pytest.approx(sum(ttfts) / 1000.0, abs=1e-5)
    assert total(m, "tiergate_time_to_first_token_seconds_count", pool=pool) >= 1
