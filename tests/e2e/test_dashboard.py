"""The live dashboard in real headless Chromium against `tiergate up` under load: the page shows
the figures of the load that was sent, and refreshes. Also: `up` lists every /metrics URL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Proc

TIERS = ("realtime", "interactive", "batch")
PER_TIER = 30
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("TIERGATE_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not on PATH and TIERGATE_TEST_REQUIRE_BROWSER=1")
        pytest.skip("chromium is not on PATH (install Debian's chromium to run the dashboard test)")
    return CHROMIUM


def headless(binary: str, profile: Path, *args: str) -> str:
    argv = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,1000", *args,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True)
    return out.stdout


class Attributes(HTMLParser):
    """The data-* attributes of every element that has any, with its tag and class."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs if k.startswith("data-") or k in ("class", "id")}
        if any(k.startswith("data-") for k in data):
            self.elements.append({"tag": tag, **data})


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


async def send_load(url: str) -> list[dict[str, Any]]:
    bodies = [{"model": "sim-echo", "input": f"dash {t} {i}", "tier": t} for t in TIERS for i in range(PER_TIER)]
    async with aiohttp.ClientSession() as http:
        limit = asyncio.Semaphore(8)

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with limit, http.post(f"{url}/v1/infer", json=body) as response:
                assert response.status == 200
                return dict(await response.json())

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_up_lists_every_metrics_url(tiergate_up: Callable[..., Proc]) -> None:
    up = tiergate_up()
    urls = up.ready["metrics"]
    assert urls["gateway"] == f"{up.url}/metrics"
    assert set(urls) == {"gateway", "supervisor", *up.ready["pools"]}
    with urllib.request.urlopen(urls["supervisor"], timeout=10) as response:
        families = {f.name for f in text_string_to_metric_families(response.read().decode())}
    assert "tiergate_supervisor_restarts" in families
    for pool in up.ready["pools"]:
        (url,) = urls[pool]
        with urllib.request.urlopen(url, timeout=10) as response:
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert {"tiergate_worker_batches", "tiergate_worker_batch_size"} <= families


def test_dashboard_shows_the_live_load(tiergate_up: Callable[..., Proc], tmp_path: Path) -> None:
    binary = browser()
    up = tiergate_up()
    answers = asyncio.run(send_load(up.url))

    def settled() -> Any:  # every request counted, and its second complete in the per-second series
        report = get_json(f"{up.url}/v1/slo")
        done = all(
            report["tiers"][t]["windows"]["5m"]["count"] == PER_TIER and sum(report["series"][t]["count"]) == PER_TIER
            for t in TIERS
        )
        return report if done else None

    report = wait_for(settled)
    parser = Attributes()
    parser.feed(
        headless(binary, tmp_path / "profile", "--virtual-time-budget=3500", "--dump-dom", f"{up.url}/dashboard")
    )
    status = next(e for e in parser.elements if e.get("id") == "status")
    assert int(status["data-updates"]) >= 2  # it polled more than once: live, not a one-off render
    cards = {e["data-tier"]: e for e in parser.elements if e["tag"] == "article"}
    assert set(cards) == set(TIERS)
    for tier in TIERS:
        card, expected = cards[tier], report["tiers"][tier]["windows"]
        assert int(card["data-count5m"]) == PER_TIER
        assert int(card["data-series-requests"]) == PER_TIER
        assert float(card["data-p99-ms"]) == expected["1m"]["p99_ms"]
        mine = [a for a in answers if a["tier"] == tier]
        assert float(card["data-attainment5m"]) == pytest.approx(sum(a["slo_met"] for a in mine) / PER_TIER, abs=1e-6)
    charts = [e for e in parser.elements if e["tag"] == "svg" and "latency" in e.get("class", "")]
    assert len(charts) == 3 and all(int(c["data-points"]) >= 1 for c in charts)
    bars = [e for e in parser.elements if e["tag"] == "svg" and "throughput" in e.get("class", "")]
    assert sum(int(b["data-requests"]) for b in bars) == 3 * PER_TIER
    rows = {e["data-processor"]: e for e in parser.elements if e["tag"] == "tr" and "data-processor" in e}
    assert not [e for e in parser.elements if "data-batch-id" in e]  # the batches table: none was created
    assert sum(int(r["data-count1m"]) for r in rows.values()) == 3 * PER_TIER
    for processor in {a["processor"] for a in answers}:
        assert float(rows[processor]["data-energy-per1k"]) > 0
        assert float(rows[processor]["data-batch"]) >= 1
