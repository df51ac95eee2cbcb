"""Requests through the OpenAI-compatible endpoints and native `wait: false` requests are counted
like waited native ones: after a known load, `/metrics` (parsed with prometheus-client's parser)
and `GET /v1/slo` agree with the latencies the clients saw, and a late reply counts once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from gateway.state import STATE
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until
from tests.integration.test_metrics import fast, scrape, total

StartStack = Callable[..., Any]
Seen = dict[str, list[float]]  # tier -> end-to-end latency (ms) of each counted request, as the client saw it


def sdk(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=20.0)


async def openai_load(s: Stack, client: openai.AsyncOpenAI) -> tuple[Seen, list[dict[str, Any]]]:
    """Three chats on realtime, three streamed chats and two two-input embeddings on interactive,
    three completions on batch: 13 requests. Returns the latencies seen and the chats' timings."""
    seen: Seen = {"realtime": [], "interactive": [], "batch": []}
    chats = []
    for i in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model="sim-echo",
            messages=[{"role": "user", "content": f"chat {i}"}],
            extra_headers={"X-Tiergate-Tier": "realtime"},
        )
        assert raw.parse().choices[0].message.content == f"{i} tahc"
        seen["realtime"].append(float(raw.headers["X-Tiergate-Total-Ms"]))
        chats.append(raw.parse().model_extra["tiergate"])  # type: ignore[index]
    for i in range(3):
        stream = await client.chat.completions.create(
            model="sim-echo", messages=[{"role": "user", "content": f"streamed {i}"}], stream=True
        )
        text, timings = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            timings = (chunk.model_extra or {}).get("tiergate", timings)
        assert text == f"{i} demaerts"
        assert timings is not None and timings["tier"] == "interactive"
        seen["interactive"].append(timings["total_ms"])  # until the final Result
    for i in range(2):
        raw_embed = await client.embeddings.with_raw_response.create(model="sim-embed", input=[f"a{i}", f"b{i}"])
        assert len(raw_embed.parse().data) == 2
        seen["interactive"] += [float(raw_embed.headers["X-Tiergate-Total-Ms"])] * 2  # each input is a request
    for i in range(3):
        raw_text = await client.completions.with_raw_response.create(
            model="sim-echo", prompt=f"complete {i}", extra_headers={"X-Tiergate-Tier": "batch"}
        )
        assert raw_text.parse().choices[0].text == f"{i} etelpmoc"
        assert raw_text.headers["X-Tiergate-Tier"] == "batch"
        seen["batch"].append(float(raw_text.headers["X-Tiergate-Total-Ms"]))
    return seen, chats


def assert_counted(s: Stack, m: dict[str, Any], seen: Seen) -> None:
    """Per tier: counts, latency sums, and SLO verdicts agree with the latencies the clients saw."""
    for tier, latencies in seen.items():
        n = len(latencies)
        objective_ms = s.settings.tiers[tier].slo.latency_ms
        met = sum(ms <= objective_ms for ms in latencies)
        assert total(m, "tiergate_requests_total", tier=tier, outcome="ok") == n, tier
        assert total(m, "tiergate_requests_total", tier=tier) == n
        assert total(m, "tiergate_request_duration_seconds_count", tier=tier) == n
        assert total(m, "tiergate_request_duration_seconds_sum", tier=tier) == pytest.approx(
            sum(latencies) / 1000.0, rel=1e-5, abs=1e-6
        )
        assert total(m, "tiergate_queue_wait_seconds_count", tier=tier) == n
        assert total(m, "tiergate_service_seconds_count", tier=tier) == n
        assert total(m, "tiergate_slo_met_total", tier=tier) == met
        assert total(m, "tiergate_slo_missed_total", tier=tier) == n - met
        within = total(m, "tiergate_request_duration_seconds_bucket", tier=tier, le=repr(objective_ms / 1000.0))
        assert within == met
        assert total(m, "tiergate_in_flight_requests", tier=tier) == 0


async def slo_counts(s: Stack, want: dict[str, int]) -> dict[str, Any] | None:
    """The /v1/slo report once its 1-minute counts per tier are `want`, else None."""
    status, report = await s.get("/v1/slo")
    assert status == 200
    counts = {tier: report["tiers"][tier]["windows"]["1m"]["count"] for tier in want}
    return report if counts == want else None


async def test_openai_sdk_requests_are_counted_like_native_ones(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(fast(make_settings, metrics__slo_cache_s=0))
    async with sdk(s) as client:
        seen, chats = await openai_load(s, client)
    m = await scrape(s.http, f"{s.url}/metrics")
    assert_counted(s, m, seen)
    assert total(m, "tiergate_time_to_first_token_seconds_count", tier="interactive") == 3  # the streamed chats
    # The realtime chats: labels, queue wait, energy and cost as each answer's `tiergate` object said.
    assert total(m, "tiergate_requests_total", tier="realtime", pool="groq-realtime", processor="groq-lpu") == 3
    assert total(m, "tiergate_queue_wait_seconds_sum", tier="realtime") == pytest.approx(
        sum(c["queue_ms"] for c in chats) / 1000.0, abs=1e-6
    )
    assert total(m, "tiergate_energy_joules_total", tier="realtime") == pytest.approx(sum(c["energy_j"] for c in chats))
    assert total(m, "tiergate_cost_usd_total", tier="realtime") == pytest.approx(sum(c["cost"] for c in chats))
    assert [c["total_ms"] for c in chats] == seen["realtime"]  # the body and the header agree

    want = {tier: len(latencies) for tier, latencies in seen.items()}
    await wait_until(lambda: slo_counts(s, want))
    report = await slo_counts(s, want)
    assert report is not None
    for tier, latencies in seen.items():
        w = report["tiers"][tier]["windows"]["1m"]
        objective_ms = s.settings.tiers[tier].slo.latency_ms
        assert (w["ok"], w["errors"]) == (len(latencies), 0)
        assert w["met"] == sum(ms <= objective_ms for ms in latencies)
        assert w["max_ms"] == pytest.approx(max(latencies), rel=1e-5)


async def poll_done(s: Stack, request_id: str) -> dict[str, Any]:
    """GET /v1/requests/{id} until it is done or failed (a waited request has no state before)."""
    answer: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal answer
        status, answer = await s.get(f"/v1/requests/{request_id}")
        return status == 200 and answer["status"] != "queued"

    await wait_until(finished)
    return answer


async def test_async_requests_are_counted_when_their_reply_arrives(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    s: Stack = await stack(fast(make_settings, metrics__slo_cache_s=0))
    plan = [("interactive", 4), ("batch", 3)]
    ids = []
    for tier, count in plan:
        for i in range(count):
            status, body = await s.infer(model="sim-echo", input=f"later {tier} {i}", tier=tier, wait=False)
            assert status == 202
            ids.append(body["id"])
    status, body = await s.infer(model="sim-echo", input="too late", tier="batch", deadline_ms=1, wait=False)
    assert status == 202
    refused = await poll_done(s, body["id"])  # the worker refuses it: its deadline passed before it started
    assert refused["error"]["type"] == "deadline_exceeded"
    seen: Seen = {"interactive": [], "batch": []}
    for request_id in ids:
        answer = await poll_done(s, request_id)
        assert answer["status"] == "done"
        seen[answer["tier"]].append(answer["timings"]["total_ms"])  # finished_at_ms - enqueued_at_ms

    async def all_counted() -> bool:
        m = await scrape(s.http, f"{s.url}/metrics")
        return total(m, "tiergate_requests_total") == len(ids) + 1

    await wait_until(all_counted)
    m = await scrape(s.http, f"{s.url}/metrics")
    assert total(m, "tiergate_deadline_exceeded_total", tier="batch") == 1
    assert total(m, "tiergate_requests_total", tier="batch", outcome="deadline_exceeded") == 1
    assert_counted(s, m, {"interactive": seen["interactive"]})
    # batch: three answered, whose latencies are counted, and the one refused by the worker
    assert total(m, "tiergate_requests_total", tier="batch", outcome="ok") == 3
    assert total(m, "tiergate_request_duration_seconds_count", tier="batch") == 3
    assert total(m, "tiergate_request_duration_seconds_sum", tier="batch") == pytest.approx(
        sum(seen["batch"]) / 1000.0, abs=1e-9
    )
    objective_ms = s.settings.tiers["batch"].slo.latency_ms
    assert total(m, "tiergate_slo_met_total", tier="batch") == sum(ms <= objective_ms for ms in seen["batch"])

    # The same reply read again (a worker that answered twice) is not counted again.
    client = aioredis.Redis.from_url(redis_url)
    stored: Any = await client.get(protocol.request_key(ids[0]))
    gateway_id = s.server.app[STATE].gateway_id
    await client.xadd(protocol.reply_key(gateway_id), {protocol.PAYLOAD_FIELD: stored})
    await client.aclose()
    status, body = await s.infer(model="sim-echo", input="after the duplicate", tier="interactive", wait=False)
    assert status == 202
    await poll_done(s, body["id"])  # the reader handles its reply after the duplicate's

    async def follow_up_counted() -> bool:
        m = await scrape(s.http, f"{s.url}/metrics")
        return total(m, "tiergate_requests_total", tier="interactive") == 5

    await wait_until(follow_up_counted)
    m = await scrape(s.http, f"{s.url}/metrics")
    assert total(m, "tiergate_requests_total") == len(ids) + 2
    await wait_until(lambda: slo_counts(s, {"interactive": 5, "batch": 4}))


async def test_a_504_and_its_late_reply_count_once(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = fast(make_settings, metrics__slo_cache_s=0, tiers__realtime__default_deadline_ms=300)
    s: Stack = await stack(settings, pools=[])  # nobody reads the realtime stream yet
    status, _ = await s.infer(model="sim-echo", input="native", tier="realtime")
    assert status == 504
    ask: list[Any] = [{"role": "user", "content": "openai"}]
    headers = {"X-Tiergate-Tier": "realtime"}
    async with sdk(s) as client:
        with pytest.raises(openai.APIStatusError) as chat_error:
            await client.chat.completions.create(model="sim-echo", messages=ask, extra_headers=headers)
        with pytest.raises(openai.APIStatusError) as stream_error:
            await client.chat.completions.create(model="sim-echo", messages=ask, extra_headers=headers, stream=True)
    assert chat_error.value.status_code == stream_error.value.status_code == 504
    redis = aioredis.Redis.from_url(redis_url)
    queued: Any = await redis.xrange(default_lane("realtime", "default").stream)
    await redis.aclose()
    ids = {protocol.envelope_decoder.decode(fields[protocol.PAYLOAD_FIELD]).id for _, fields in queued}
    assert len(ids) == 3
    # The gateway's failure lines carry the request id, to join them with the worker's lines.
    logged = {r.id for r in caplog.records if r.getMessage() == "request refused" and r.status == 504}  # type: ignore[attr-defined]
    assert logged == ids

    await s.start_workers(["groq-realtime"])  # each gets a late reply now: its deadline passed
    for request_id in ids:
        late = await poll_done(s, request_id)
        assert late["error"]["type"] == "deadline_exceeded"
    status, body = await s.infer(model="sim-echo", input="on time", tier="realtime", wait=False, deadline_ms=5000)
    assert status == 202
    await poll_done(s, body["id"])  # its reply follows the late ones on the reply stream

    async def follow_up_counted() -> bool:
        m = await scrape(s.http, f"{s.url}/metrics")
        return total(m, "tiergate_requests_total", tier="realtime", outcome="ok") == 1

    await wait_until(follow_up_counted)
    m = await scrape(s.http, f"{s.url}/metrics")
    assert total(m, "tiergate_requests_total", tier="realtime", outcome="deadline_exceeded") == 3
    assert total(m, "tiergate_deadline_exceeded_total", tier="realtime") == 3
    assert total(m, "tiergate_requests_total", tier="realtime") == 4
    assert total(m, "tiergate_in_flight_requests") == 0
    await wait_until(lambda: slo_counts(s, {"realtime": 4}))
    report = await slo_counts(s, {"realtime": 4})
    assert report is not None
    assert report["tiers"]["realtime"]["windows"]["1m"]["errors"] == 3
