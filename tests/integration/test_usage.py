"""Usage per tenant against a real Redis: two tenants' requests through a gateway (their grants
set by a test middleware, where an authenticating middleware puts them) are counted per tenant,
tier and model, hourly and daily, in `GET /v1/usage`, in `tiergate usage` and in the Prometheus
metrics, whose tenant label names only configured tenants.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from core.protocol import Grant
from core.settings import Settings
from gateway.app import build_app
from tests.integration import test_sovereignty
from tests.integration.conftest import Stack, wait_until
from tests.integration.test_sovereignty import TENANT_HEADER, grants_by_header

pytestmark = pytest.mark.redis_server

RUN = secrets.token_hex(3)
ACME, BETA = f"acme-{RUN}", f"beta-{RUN}"  # fresh names: the usage hashes outlive each test


@pytest.fixture
async def usage_stack(redis_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    settings: Settings = make_settings(usage__tenants=[ACME])
    grants = {ACME: Grant(key_id="k1", tenant=ACME), BETA: Grant(key_id="k2", tenant=BETA)}
    monkeypatch.setattr(test_sovereignty, "GRANTS", grants)
    app = build_app(grants_by_header(settings, monkeypatch), redis_url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    s = Stack(settings, redis_url, server, aiohttp.ClientSession())
    try:
        await s.start_workers(["h100-interactive"])
        yield s
    finally:
        await s.stop_workers()
        await s.http.close()
        await server.close()


async def call(s: Stack, method: str, path: str, tenant: str | None = None, **body: Any) -> tuple[int, Any]:
    headers = {TENANT_HEADER: tenant} if tenant else {}
    async with s.http.request(method, f"{s.url}{path}", json=body or None, headers=headers) as response:
        return response.status, await (response.json() if "json" in response.content_type else response.text())


def totals(rows: list[dict[str, Any]], tenant: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["tier"], r["model"]): r for r in rows if r["tenant"] == tenant}


async def test_usage_is_counted_per_tenant_tier_and_model(usage_stack: Stack) -> None:
    s = usage_stack
    sent = [(ACME, "sim-echo")] * 3 + [(BETA, "sim-echo")] * 2 + [(BETA, "sim-embed")]
    answers = await asyncio.gather(*(call(s, "POST", "/v1/infer", t, model=m, input="count me") for t, m in sent))
    assert [status for status, _ in answers] == [200] * len(sent)
    status, queued = await call(s, "POST", "/v1/infer", ACME, model="sim-echo", input="later", wait=False)
    assert status == 202
    await wait_until(lambda: _done(s, queued["id"]), timeout_s=10)

    async def acme_counted() -> bool:
        _, report = await call(s, "GET", f"/v1/usage?tenant={ACME}")
        return sum(r["requests"] for r in report["usage"]) == 4

    await wait_until(acme_counted, timeout_s=10)
    _, report = await call(s, "GET", "/v1/usage")  # no tenant: every tenant's
    acme, beta = totals(report["usage"], ACME), totals(report["usage"], BETA)
    assert set(acme) == {("interactive", "sim-echo")} and acme["interactive", "sim-echo"]["requests"] == 4
    assert {key: row["requests"] for key, row in beta.items()} == {
        ("interactive", "sim-echo"): 2,
        ("interactive", "sim-embed"): 1,
    }
    answered = [answer for (tenant, _), (_, answer) in zip(sent, answers, strict=True) if tenant == BETA]
    assert sum(row["energy_j"] for row in beta.values()) == pytest.approx(sum(a["energy_j"] for a in answered))
    assert sum(row["cost"] for row in beta.values()) == pytest.approx(sum(a["cost"] for a in answered))
    assert all(row["tokens"] > 0 for row in (*acme.values(), *beta.values()))

    _, daily = await call(s, "GET", "/v1/usage?period=day")
    assert {k: r["requests"] for k, r in totals(daily["usage"], BETA).items()} == {
        k: r["requests"] for k, r in beta.items()
    }
    assert daily["period"] == "day" and daily["from"].endswith("T00:00:00Z")


async def _done(s: Stack, request_id: str) -> bool:
    _, body = await call(s, "GET", f"/v1/requests/{request_id}")
    return bool(body.get("status") == "done")


async def test_a_tenant_sees_only_its_own_usage_and_metrics_bound_tenant_labels(
    usage_stack: Stack, redis_url: str
) -> None:
    s = usage_stack
    for tenant in (ACME, BETA):
        status, _ = await call(s, "POST", "/v1/infer", tenant, model="sim-echo", input="mine")
        assert status == 200

    async def counted() -> bool:
        _, report = await call(s, "GET", "/v1/usage")
        return {r["tenant"] for r in report["usage"]} >= {ACME, BETA}

    await wait_until(counted, timeout_s=10)
    _, own = await call(s, "GET", "/v1/usage", BETA)
    assert {r["tenant"] for r in own["usage"]} == {BETA}
    status, refused = await call(s, "GET", f"/v1/usage?tenant={ACME}", BETA)
    assert (status, refused["error"]["type"]) == (404, "not_found")
    status, bad = await call(s, "GET", "/v1/usage?period=week")
    assert (status, bad["error"]["message"]) == (400, "period must be hour or day, not 'week'")

    _, metrics = await call(s, "GET", "/metrics")
    assert f'tiergate_tenant_requests_total{{model="sim-echo",tenant="{ACME}",tier="interactive"}} 1.0' in metrics
    assert BETA not in metrics  # not a configured tenant: counted as "other"
    assert 'tiergate_tenant_requests_total{model="sim-echo",tenant="other",tier="interactive"} 1.0' in metrics

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", "usage", "--redis-url", redis_url, "--tenant", ACME, "--period", "day",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    header, *rows = out.decode().splitlines()
    assert header.split() == ["START", "TENANT", "TIER", "MODEL", "REQUESTS", "TOKENS", "ENERGY_J", "COST_USD"]
    assert [row.split()[1:5] for row in rows] == [[ACME, "interactive", "sim-echo", "1"]]
