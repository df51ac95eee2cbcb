"""`tiergate loadtest` against a running stack (gateway over HTTP, workers, the session's Redis):
counts add up, latencies agree with the gateway's own timings, tiny queues shed, direct mode
gets every request answered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings
from loadtest import runner
from loadtest.report import write_report
from loadtest.schedule import Arrival
from loadtest.stats import OUTCOMES, Recorder, summary
from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
MIX = {"realtime": 0.3, "interactive": 0.4, "batch": 0.3}


def load(rate: float = 20, duration_s: float = 1.5, mix: dict[str, float] | None = None) -> runner.Load:
    return runner.Load(rate, duration_s, mix or MIX, ("sim-echo", "sim-embed"), "poisson", (8, 64), seed=7)


def assert_counts_add_up(recorder: Recorder, arrivals: list[Arrival]) -> None:
    assert recorder.samples is not None
    assert sorted(s.index for s in recorder.samples) == list(range(len(arrivals)))
    for tier, stats in recorder.tiers.items():
        scheduled = sum(a.tier == tier for a in arrivals)
        assert stats.sent == scheduled == recorder.fired[tier]
        assert stats.sent == sum(stats.counts[o] for o in OUTCOMES)
    assert all(s.tier == arrivals[s.index].tier for s in recorder.samples)


async def test_http_run_counts_add_up_and_latencies_cover_the_gateways_timings(stack: StartStack) -> None:
    s: Stack = await stack()
    arrivals = load().build()
    recorder = await runner.play(s.settings, runner.Target(url=s.url), arrivals, 1.5)
    assert_counts_add_up(recorder, arrivals)
    assert recorder.samples is not None
    assert {sample.outcome for sample in recorder.samples} == {"ok"}
    for sample in recorder.samples:
        assert sample.server_ms is not None
        # measured from the intended send time, so never shorter than what the gateway saw
        assert sample.latency_ms >= sample.server_ms
    result = summary(recorder, runner.objectives(s.settings))
    assert result["sent"] == len(arrivals)
    for tier, row in result["tiers"].items():
        worst = max(x.latency_ms for x in recorder.samples if x.tier == tier)
        assert row["max_ms"] >= row["p99_ms"] >= row["p50_ms"] >= min(x.server_ms or 0 for x in recorder.samples)
        assert abs(row["max_ms"] - worst) <= worst * 0.01  # HDR keeps 3 significant figures


async def test_a_tiny_queue_without_workers_sheds_and_times_out(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(tiers__batch__max_queue=1, tiers__batch__default_deadline_ms=300)
    s: Stack = await stack(settings, pools=[])
    arrivals = load(rate=30, duration_s=1.0, mix={"batch": 1.0}).build()
    recorder = await runner.play(settings, runner.Target(url=s.url), arrivals, 1.0)
    assert_counts_add_up(recorder, arrivals)
    batch = recorder.tiers["batch"]
    assert batch.counts["ok"] == 0
    assert batch.counts["shed"] > 0  # 429 queue_full once the one slot is taken
    assert batch.counts["deadline"] > 0  # the admitted ones wait for a worker that never comes: 504
    assert summary(recorder, runner.objectives(settings))["tiers"]["batch"]["slo_attainment_pct"] == 0.0


async def test_direct_mode_gets_every_request_answered_by_the_workers(stack: StartStack, tmp_path: Path) -> None:
    s: Stack = await stack()
    arrivals = load(rate=30).build()
    recorder = await runner.play(s.settings, runner.Target(direct=s.redis_url), arrivals, 1.5)
    assert_counts_add_up(recorder, arrivals)
    assert recorder.samples is not None
    assert [x.outcome for x in recorder.samples] == ["ok"] * len(arrivals)
    assert all(x.server_ms is not None and x.latency_ms >= 0 for x in recorder.samples)
    # the queue depth of each tier was sampled from the same Redis while the run lasted
    assert set(recorder.depth) == {a.tier for a in arrivals}
    result = summary(recorder, runner.objectives(s.settings))
    page = write_report(tmp_path, s.settings, recorder, result, depth_known=True).read_text()
    pngs = ["latency_cdf.png", "throughput.png", "p99.png", "queue_depth.png"]
    assert all((tmp_path / png).read_bytes().startswith(b"\x89PNG") for png in pngs)
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert json.loads((tmp_path / "summary.json").read_text())["sent"] == len(arrivals)
