"""Data regions and classes against a real Redis: tenants of two regions and three data classes
overload the EU pools while the default region's pools have room; every request is answered by
a pool of its region cleared for its class or refused, never sent elsewhere, and the audit
stream shows where each one ran. The tenants' grants are taken from a test header, by a stand-in
for the key lookup (`auth.attach_grant`) of a gateway with keys on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis import asyncio as aioredis

from core import protocol
from core.protocol import Grant
from core.settings import Settings, clears, parse_settings
from gateway import auth
from gateway.app import build_app
from gateway.http_shared import GRANT
from ops import audit
from tests.integration.conftest import Stack, wait_until
from tests.processes import audit_tail
from tests.unit.test_placement import sovereign_raw

pytestmark = pytest.mark.redis_server

TENANT_HEADER = "X-Test-Tenant"
GRANTS = {
    "acme": Grant(key_id="k-acme", tenant="acme", region="eu", sensitivity="restricted"),
    "beta": Grant(key_id="k-beta", tenant="beta", region="eu", sensitivity="internal"),
    "gamma": Grant(key_id="k-gamma", tenant="gamma"),  # the gateway's region, public
    "delta": Grant(key_id="k-delta", tenant="delta", sensitivity="restricted"),
}
EU_DEADLINE_MS = 300  # far less than the EU pools need for the EU requests sent at once
PER_TENANT = 60


def overloaded_eu() -> Settings:
    raw = sovereign_raw()
    for pool in ("h100-eu", "tpu-eu"):
        raw["pools"][pool]["max_batch"] = 1
    return parse_settings(raw)


async def grant_by_header(request: web.Request) -> None:
    """`auth.attach_grant` for these tests: the Grant of the tenant named in TENANT_HEADER, or,
    with no header, the open one the front gave the request."""
    tenant = request.headers.get(TENANT_HEADER)
    if tenant:
        # GRANT is a plain string key, which aiohttp warns about (a web.RequestKey would not).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            request[GRANT] = GRANTS[tenant]


def grants_by_header(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` with keys on, each request's Grant taken from TENANT_HEADER instead of a key."""
    monkeypatch.setattr(auth, "attach_grant", grant_by_header)
    return msgspec.structs.replace(settings, auth=msgspec.structs.replace(settings.auth, mode="keys"))


async def forget_streams(redis_url: str, settings: Settings) -> None:
    """Delete the audit stream and every request stream of `settings`: entries an earlier test
    left unread would otherwise be answered by this test's workers, and audited, meanwhile."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete(protocol.audit_key(), *(lane.stream for lane in settings.lanes()))
    finally:
        await client.aclose()


@pytest.fixture
async def sovereign_stack(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    settings = grants_by_header(overloaded_eu(), monkeypatch)
    await forget_streams(redis_url, settings)
    app = build_app(settings, redis_url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    s = Stack(settings, redis_url, server, aiohttp.ClientSession())
    try:
        await s.start_workers(["h100-eu", "tpu-eu", "h100-interactive", "tpu-interactive", "inferentia-mixed"])
        yield s
    finally:
        await s.stop_workers()
        await s.http.close()
        await server.close()


async def infer_as(s: Stack, tenant: str, **body: object) -> tuple[int, dict[str, Any]]:
    async with s.http.post(f"{s.url}/v1/infer", json=body, headers={TENANT_HEADER: tenant}) as response:
        answer: dict[str, Any] = await response.json()
        return response.status, answer


def placed(tenant: str, body: dict[str, object]) -> tuple[str, str]:
    """The region and data class a request of `tenant` with `body` asks for."""
    grant = GRANTS[tenant]
    return str(body.get("region") or grant.region or "default"), str(
        body.get("sensitivity") or grant.sensitivity or "public"
    )


def allowed(settings: Settings, pool: str, region: str, data_class: str) -> bool:
    spec = settings.pools[pool]
    return spec.region == region and clears(spec.clearance, data_class)


async def test_under_overload_no_request_runs_outside_its_region_or_clearance(
    sovereign_stack: Stack, redis_url: str
) -> None:
    s = sovereign_stack
    asked: list[tuple[str, dict[str, object]]] = []
    for i in range(PER_TENANT):
        asked += [(tenant, {"model": "sim-echo", "input": f"{tenant} {i}"}) for tenant in GRANTS]
        # A body's own region and class win over its key's.
        asked.append(
            ("gamma", {"model": "sim-echo", "input": f"gamma-eu {i}", "region": "eu", "sensitivity": "internal"})
        )
    for tenant, body in asked:
        if placed(tenant, body)[0] == "eu":
            body["deadline_ms"] = EU_DEADLINE_MS
    answers = await asyncio.gather(*(infer_as(s, tenant, **body) for tenant, body in asked))

    expected = {}  # request id -> (tenant, region, class) of each answered request
    outcomes: dict[str, list[int]] = {"eu": [], "default": []}
    for (tenant, body), (status, answer) in zip(asked, answers, strict=True):
        region, data_class = placed(tenant, body)
        outcomes[region].append(status)
        if status != 200:
            assert (status, answer["error"]["type"]) in {(429, "queue_full"), (504, "deadline_exceeded")}, answer
            continue
        assert answer["output"] == str(body["input"])[::-1]
        assert allowed(s.settings, answer["pool"], region, data_class), (tenant, body, answer["pool"])
        expected[answer["id"]] = (tenant, region, data_class)
    # The EU pools were overloaded: some EU requests could not be served in time, and were
    # refused or failed rather than sent to the default region's pools, which served all theirs.
    assert 0 < outcomes["eu"].count(200) < len(outcomes["eu"]), outcomes["eu"]
    assert outcomes["default"] == [200] * 2 * PER_TENANT

    client = aioredis.Redis.from_url(redis_url)
    try:
        await wait_until(lambda: client.xlen(protocol.audit_key()), timeout_s=5)
        entries = await audit.since(client, 0)
    finally:
        await client.aclose()
    seen = {entry.id: entry for _, entry in entries}
    assert set(expected) <= set(seen)  # every answered request has its entry
    for entry in seen.values():
        assert allowed(s.settings, entry.pool, entry.region, entry.sensitivity or "public"), entry
        assert (entry.pool_region, entry.clearance) == (
            s.settings.pools[entry.pool].region,
            s.settings.pools[entry.pool].clearance,
        )
    for request_id, (tenant, region, data_class) in expected.items():
        entry = seen[request_id]
        assert (entry.tenant, entry.key_id, entry.region) == (tenant, GRANTS[tenant].key_id, region)
        assert (entry.sensitivity or "public", entry.outcome) == (data_class, "done")
    eu_pools = {entry.pool for entry in seen.values() if entry.region == "eu"}
    assert eu_pools <= {"h100-eu", "tpu-eu"}
    restricted_eu = {entry.pool for entry in seen.values() if (entry.region, entry.sensitivity) == ("eu", "restricted")}
    assert restricted_eu == {"h100-eu"}


async def test_a_request_no_pool_may_serve_is_refused_not_rerouted(sovereign_stack: Stack) -> None:
    s = sovereign_stack
    status, answer = await infer_as(s, "acme", model="sim-embed", input="no EU pool serves this model")
    assert status == 422
    assert answer["error"]["type"] == "placement_refused"
    assert "in region 'eu'" in answer["error"]["message"]
    assert "a request runs only in its data region" in answer["error"]["message"]
    status, answer = await infer_as(s, "gamma", model="sim-echo", input="x", sensitivity="secret")
    assert (status, answer["error"]["type"]) == (400, "invalid_request")
    assert "unknown sensitivity 'secret'" in answer["error"]["message"]


async def test_the_openai_api_takes_region_and_class_from_headers(sovereign_stack: Stack) -> None:
    s = sovereign_stack
    client = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=20)
    try:
        eu_restricted = {"X-Tiergate-Region": "eu", "X-Tiergate-Sensitivity": "restricted"}
        answer = await client.chat.completions.create(
            model="sim-echo", messages=[{"role": "user", "content": "hello"}], extra_headers=eu_restricted
        )
        assert answer.choices[0].message.content == "olleh"
        assert answer.model_extra is not None and answer.model_extra["tiergate"]["pool"] == "h100-eu"
        with pytest.raises(openai.UnprocessableEntityError, match="a request runs only in its data region"):
            await client.embeddings.create(model="sim-embed", input="x", extra_headers=eu_restricted)
    finally:
        await client.close()


tail = audit_tail


async def test_audit_tail_prints_a_tenants_entries(sovereign_stack: Stack, redis_url: str) -> None:
    s = sovereign_stack
    acme = [await infer_as(s, "acme", model="sim-echo", input=f"a{i}") for i in range(3)]
    gamma = [await infer_as(s, "gamma", model="sim-echo", input=f"g{i}") for i in range(2)]
    assert [status for status, _ in acme + gamma] == [200] * 5

    rows = await tail(redis_url, "--tenant", "acme", "--since", "10m")
    assert [row["id"] for row in rows] == [answer["id"] for _, answer in acme]
    assert {(row["region"], row["sensitivity"], row["pool"], row["key_id"]) for row in rows} == {
        ("eu", "restricted", "h100-eu", "k-acme")
    }
    assert all(row["time"].endswith("Z") and row["outcome"] == "done" for row in rows)
    last_two = await tail(redis_url, "--count", "2")
    assert [row["id"] for row in last_two] == [answer["id"] for _, answer in gamma]
    assert {row["tenant"] for row in last_two} == {"gamma"}
    assert {row["sensitivity"] for row in last_two} == {""}


async def test_audit_tail_follows_new_entries(sovereign_stack: Stack, redis_url: str) -> None:
    s = sovereign_stack
    status, first = await infer_as(s, "beta", model="sim-echo", input="before")
    assert status == 200
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "faulthandler", "-m", "ops", "audit", "tail", "--redis-url", redis_url,
        "--tenant", "beta", "--since", "10m", "--follow",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["id"] == first["id"]
        await infer_as(s, "gamma", model="sim-echo", input="another tenant's")
        status, second = await infer_as(s, "beta", model="sim-echo", input="after")
        assert status == 200
        followed = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert (followed["id"], followed["tenant"], followed["pool"] in ("h100-eu", "tpu-eu")) == (
            second["id"],
            "beta",
            True,
        )
    finally:
        await stops_cleanly(proc, signal.SIGINT)


async def test_audit_tail_follow_stops_on_sigterm(redis_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "faulthandler", "-m", "ops", "audit", "tail", "--redis-url", redis_url, "--follow",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    client = aioredis.Redis.from_url(redis_url)
    try:
        # Following: blocked in its XREAD on the (empty) audit stream, its signal handlers set.
        await wait_until(lambda: _blocked_in_xread(client), timeout_s=30)
    finally:
        await client.aclose()
        await stops_cleanly(proc, signal.SIGTERM)


async def _blocked_in_xread(client: aioredis.Redis) -> bool:
    clients: list[dict[str, Any]] = await client.client_list()  # type: ignore[assignment]
    return any(entry["cmd"] == "xread" and "b" in entry["flags"] for entry in clients)


async def stops_cleanly(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Send `sig` and expect exit status 0 within 30 s. One still running by then gets SIGABRT
    (faulthandler writes every thread's stack to stderr), then SIGKILL: never left running, and
    the failure carries its stderr."""
    proc.send_signal(sig)
    try:
        code: int | None = await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.send_signal(signal.SIGABRT)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        code = None
    stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr is not None else ""
    assert code == 0, f"audit tail --follow after {sig.name}: exit status {code}, stderr:\n{stderr[-4000:]}"
