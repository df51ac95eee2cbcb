"""Pure parts of the OpenAI-compatible API: settings validation, token-by-token simulated
generation, and the streaming waiters."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from core import protocol
from core.errors import ConfigError, DeadlineExceeded
from core.settings import Settings
from gateway.results import Waiters
from workers.backends.simulated import SimulatedBackend


def envelope(text: str, stream: bool = True, max_tokens: int = 0) -> protocol.Envelope:
    return protocol.Envelope(
        id=text,
        model="sim-echo",
        input=text,
        tier="batch",
        region="default",
        reply_to="gw",
        deadline_at_ms=2**62,
        stream=stream,
        max_tokens=max_tokens,
    )


def openai_pool(**upstream: Any) -> dict[str, Any]:
    pool = {"processor": "h100", "tiers": ["interactive"], "models": ["sim-echo"], "backend": "openai"}
    return pool | ({"upstream": upstream} if upstream else {})


def test_openai_pool_without_base_url_is_refused_naming_the_key(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"pools\.up\.upstream\.base_url: a pool with backend = \"openai\" needs"):
        make_settings(pools__up=openai_pool())
    with pytest.raises(ConfigError, match=r"pools\.up\.upstream\.base_url: 'localhost:8000' is not an http"):
        make_settings(pools__up=openai_pool(base_url="localhost:8000"))
    with pytest.raises(ConfigError, match=r"unknown field `timeout_s` - at `\$\.pools\.up\.upstream`"):
        make_settings(pools__up=openai_pool(base_url="http://x/v1", timeout_s=3))


def test_service_tier_map_must_name_known_tiers(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"openai\.service_tiers\.fast: unknown tier 'turbo'"):
        make_settings(openai__service_tiers={"fast": "turbo"})
    settings = make_settings()
    assert settings.openai.service_tiers["priority"] == "realtime"
    assert settings.processors["h100"].latency.per_token_ms > 0  # the shipped config generates per token


async def test_a_batch_streams_all_its_members_side_by_side(make_settings: Callable[..., Settings]) -> None:
    latency = {"kind": "fixed", "min_ms": 1, "per_token_ms": 1}
    settings = make_settings(**{"processors__cerebras-cs3__latency": latency})
    backend = SimulatedBackend(settings, "cerebras-batch", random.Random(1))
    seen: list[tuple[int, str]] = []
    batch = [envelope("aaaabbbbcccc"), envelope("ddddeeee", stream=False), envelope("ffffgggghhhh", max_tokens=2)]
    done = await backend.run(batch, lambda position, text: seen.append((position, text)))
    # Step by step, every streaming member gets its next token before any gets the one after.
    assert seen == [(0, "cccc"), (2, "hhhh"), (0, "bbbb"), (2, "gggg"), (0, "aaaa")]
    assert [(d.output, d.completion_tokens, d.finish_reason) for d in done] == [
        ("ccccbbbbaaaa", 3, "stop"),
        ("eeeedddd", 2, "stop"),
        ("hhhhgggg", 2, "length"),
    ]


async def test_streaming_waiter_gets_chunks_then_the_outcome() -> None:
    waiters = Waiters()
    events = waiters.add_stream("r1", timeout_s=10)
    assert waiters.push(protocol.Chunk(id="r1", seq=0, text="ab", produced_at_ms=1.0))
    assert not waiters.push(protocol.Chunk(id="other", seq=0, text="x", produced_at_ms=1.0))
    failure = protocol.Failure(id="r1", code="worker_error", message="boom")
    assert waiters.resolve(failure)
    assert (await events.get()).text == "ab"  # type: ignore[union-attr]
    assert await asyncio.wait_for(events.get(), 1) == failure
    assert not waiters.push(protocol.Chunk(id="r1", seq=1, text="late", produced_at_ms=2.0))
    expiring = waiters.add_stream("r2", timeout_s=0.01)
    assert isinstance(await asyncio.wait_for(expiring.get(), 5), DeadlineExceeded)
    assert len(waiters) == 0


async def test_chunks_of_a_rerun_request_reach_the_client_once() -> None:
    """A reclaimed streaming request runs again from its first token: the repeats are dropped."""
    waiters = Waiters()
    events = waiters.add_stream("r", timeout_s=60)

    def chunk(seq: int, text: str) -> protocol.Chunk:
        return protocol.Chunk(id="r", seq=seq, text=text, produced_at_ms=0.0)

    for piece in [chunk(0, "ab"), chunk(1, "cd"), chunk(0, "ab"), chunk(1, "cd"), chunk(2, "ef")]:
        assert waiters.push(piece)
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [c.text for c in got if isinstance(c, protocol.Chunk)] == ["ab", "cd", "ef"]
