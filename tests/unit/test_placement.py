"""Data regions and classes in routing: a request's lane holds only the pools of its region
cleared for its class, and one no pool may serve is refused naming the rule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.clock import RedisClock
from core.errors import ConfigError, InvalidRequest, PlacementRefused, from_code
from core.protocol import Envelope, Failure
from core.settings import Settings, parse_settings
from gateway.routing import Router
from ops.audit import follow, since_ms
from tests.conftest import default_raw
from workers.backends import Completion
from workers.consumer import Delivery
from workers.executor import Executor


def sovereign_raw() -> dict[str, Any]:
    """The default config plus an EU region: an h100 pool cleared for restricted data and a tpu
    pool for internal, both interactive."""
    raw = default_raw()
    raw["pools"]["h100-interactive"]["clearance"] = "restricted"
    raw["pools"]["h100-eu"] = {
        "processor": "h100", "tiers": ["interactive"], "models": ["sim-echo"], "region": "eu",
        "clearance": "restricted", "max_batch": 8,
    }  # fmt: skip
    raw["pools"]["tpu-eu"] = {
        "processor": "tpu-v5e", "tiers": ["interactive"], "models": ["sim-echo"], "region": "eu",
        "clearance": "internal", "max_batch": 8,
    }  # fmt: skip
    return raw


def sovereign() -> Settings:
    return parse_settings(sovereign_raw())


def test_a_lane_holds_only_the_pools_of_its_region_cleared_for_its_class() -> None:
    router = Router(sovereign())
    public = router.route("sim-echo", 5, region="eu")
    internal = router.route("sim-echo", 5, region="eu", sensitivity="internal")
    restricted = router.route("sim-echo", 5, region="eu", sensitivity="restricted")
    assert public.pools == internal.pools == ("h100-eu", "tpu-eu")
    assert public.stream == internal.stream == "tg:{interactive.eu.h100-eu+tpu-eu}:requests"
    assert restricted.pools == ("h100-eu",)
    assert restricted.stream == "tg:{interactive.eu.h100-eu}:requests"
    assert (public.sensitivity, restricted.sensitivity) == ("public", "restricted")
    home = router.route("sim-echo", 5, sensitivity="restricted")
    assert (home.region, home.pools) == ("default", ("h100-interactive",))


def test_the_default_config_keeps_its_streams() -> None:
    # Every pool at the default clearance: one lane per group of pools, named as before.
    settings = parse_settings(default_raw())
    names = [lane.name for lane in settings.lanes()]
    assert names == [
        "realtime.default.groq-realtime",
        "interactive.default.h100-interactive+inferentia-mixed+tpu-interactive",
        "batch.default.cerebras-batch+inferentia-mixed",
    ]
    lane = settings.lane_for("interactive", "default", "sim-echo")
    assert lane is not None and ("sim-echo", "public") in lane.carries
    assert settings.lane_for("interactive", "default", "sim-echo", "internal") is None


def test_a_pool_cleared_for_more_reads_the_shared_lane_and_its_own() -> None:
    settings = sovereign()
    eu = [lane for lane in settings.lanes() if lane.region == "eu"]
    assert {lane.pools: sorted({c for _, c in lane.carries}) for lane in eu} == {
        ("h100-eu", "tpu-eu"): ["internal", "public"],
        ("h100-eu",): ["restricted"],
    }


def test_a_request_no_pool_may_serve_is_refused_naming_the_rule() -> None:
    router = Router(sovereign())
    with pytest.raises(PlacementRefused) as refused:
        router.route("sim-embed", 5, region="eu")
    assert (refused.value.status, refused.value.code) == (422, "placement_refused")
    assert refused.value.message == (
        "no pool serves model 'sim-embed' on tier 'interactive' in region 'eu' (it is served in default); "
        "a request runs only in its data region"
    )
    raw = sovereign_raw()
    raw["pools"]["h100-eu"]["clearance"] = "internal"
    with pytest.raises(
        PlacementRefused, match="cleared for restricted data \\(the highest clearance there is internal\\)"
    ):
        Router(parse_settings(raw)).route("sim-echo", 5, region="eu", sensitivity="restricted")
    with pytest.raises(
        InvalidRequest, match="unknown sensitivity 'secret' \\(expected one of public, internal, restricted\\)"
    ):
        Router(sovereign()).route("sim-echo", 5, sensitivity="secret")


def test_an_unknown_clearance_is_a_config_error() -> None:
    raw = default_raw()
    raw["pools"]["h100-interactive"]["clearance"] = "secret"
    with pytest.raises(ConfigError, match=r"pools\.h100-interactive\.clearance"):
        parse_settings(raw)


def test_audit_since_takes_a_duration_or_a_time() -> None:
    now_ms = 1_800_000_000_000.0
    assert since_ms("90s", now_ms) == now_ms - 90_000
    assert since_ms("2h", now_ms) == now_ms - 7_200_000
    assert since_ms("2026-01-31T12:00:00Z", now_ms) == 1_769_860_800_000
    assert since_ms("2026-01-31T12:00:00", now_ms) == 1_769_860_800_000  # UTC unless it says otherwise
    with pytest.raises(ValueError, match="--since 'yesterday' is neither a duration"):
        since_ms("yesterday", now_ms)


async def test_a_worker_never_runs_a_request_its_region_or_clearance_forbids() -> None:
    # A gateway with another config may queue what this pool must not run: it is refused unrun.
    settings = sovereign()
    ran: list[str] = []

    class Backend:
        async def run(self, batch: list[Envelope], *_: object, **__: object) -> list[Completion]:
            ran.extend(env.id for env in batch)
            return [Completion(output=env.input[::-1], energy_j=0.0, cost=0.0) for env in batch]

        async def close(self) -> None:
            return None

    clock = RedisClock()
    executor = Executor(settings, "tpu-eu", "w1", Backend(), clock)  # eu, cleared for internal

    def delivery(request_id: str, region: str, sensitivity: str) -> Delivery:
        env = Envelope(
            id=request_id, model="sim-echo", input="x", tier="interactive", region=region, reply_to="gw",
            deadline_at_ms=int(clock.now_ms()) + 60_000, sensitivity=sensitivity,
        )  # fmt: skip
        return Delivery("tg:{interactive.eu.h100-eu+tpu-eu}:requests", b"1-0", env)

    batch = [delivery("ok", "eu", "internal"), delivery("us", "default", ""), delivery("secret", "eu", "restricted")]
    replies = {d.envelope.id: reply for d, reply in await executor.execute(batch)}
    assert ran == ["ok"]
    for request_id in ("us", "secret"):
        failure = replies[request_id]
        assert isinstance(failure, Failure) and failure.code == "placement_refused", failure
        assert "pool tpu-eu (region 'eu', cleared for internal) may not run request" in failure.message
    assert isinstance(from_code("placement_refused", "m"), PlacementRefused)


def test_the_direct_load_driver_uses_the_lowest_class_lane() -> None:
    import fakeredis

    from loadtest.direct import DirectDriver

    raw = default_raw()
    raw["pools"]["tpu-interactive"]["clearance"] = "restricted"  # its own lane sorts after the shared one
    driver = DirectDriver(fakeredis.FakeAsyncRedis(), parse_settings(raw))
    assert driver.streams["interactive", "sim-echo"] == (
        "tg:{interactive.default.h100-interactive+inferentia-mixed+tpu-interactive}:requests"
    )


async def test_audit_follow_ends_on_its_stop_even_when_a_cancel_is_absorbed() -> None:
    # On Python 3.11 redis-py sends each command under asyncio.wait_for, which absorbs a cancel
    # that lands as the send completes: the command's reply then comes back as if none was sent.
    class Absorbing:
        reads = 0
        absorbing = True
        reading = asyncio.Event()

        async def xread(self, streams: dict[str, str], count: int, block: int) -> list[Any]:
            self.reads += 1
            self.reading.set()
            try:
                await asyncio.sleep(block / 1000)
            except asyncio.CancelledError:
                if not self.absorbing:
                    raise
            return []

    client = Absorbing()
    stop = asyncio.Event()

    async def follow_all() -> list[Any]:
        return [entry async for entry in follow(client, "0-0", stop=stop)]  # type: ignore[arg-type]

    following = asyncio.create_task(follow_all())
    await asyncio.wait_for(client.reading.wait(), 5)
    stop.set()
    following.cancel()  # absorbed, as above
    done, _ = await asyncio.wait({following}, timeout=5)
    client.absorbing = False  # a follower that missed its stop is cancelled for good, then fails
    following.cancel()
    assert done == {following}, "follow went on reading after its stop was set"
    assert following.result() == []
    assert client.reads == 1
