"""Cost- and energy-aware placement, pure parts: the pools' order under each policy, the holds
it gives the pools behind the first, and when a worker reads a held stream."""

from __future__ import annotations

from typing import Any

import pytest

from core import placement
from core.errors import ConfigError
from core.settings import Settings, parse_settings
from tests.conftest import default_raw
from workers.placement import Holds

INTERACTIVE = "tg:{interactive.default.h100-interactive+inferentia-mixed+tpu-interactive}:requests"
BATCH = "tg:{batch.default.cerebras-batch+inferentia-mixed}:requests"


def with_policy(policy: Any, tier: str = "interactive", **tier_keys: Any) -> Settings:
    raw = default_raw()
    raw["tiers"][tier]["placement"] = policy
    raw["tiers"][tier].update(tier_keys)
    return parse_settings(raw)


def order(settings: Settings, tier: str = "interactive") -> tuple[str, ...]:
    lane = next(lane for lane in settings.lanes() if lane.tier == tier)
    return placement.preference(settings, lane)


def test_each_policy_orders_the_pools_by_its_figure() -> None:
    # h100: 10 ms, cost 1.0, efficiency 1.0; tpu-v5e: 6 ms, 0.8, 2.0; inferentia2: 4 ms, 0.5, 2.25
    assert order(with_policy("cheapest")) == ("inferentia-mixed", "tpu-interactive", "h100-interactive")
    assert order(with_policy("greenest")) == ("inferentia-mixed", "tpu-interactive", "h100-interactive")
    assert order(with_policy("fastest")) == ("inferentia-mixed", "tpu-interactive", "h100-interactive")
    # cerebras-cs3: 40 ms, 0.9, 1.75: inferentia2 is greener as well
    assert order(with_policy("greenest", "batch"), "batch") == ("inferentia-mixed", "cerebras-batch")
    raw = default_raw()
    raw["tiers"]["interactive"]["placement"] = {"cost": 1.0}
    raw["processors"]["h100"]["cost_per_flop"] = 0.1
    assert order(parse_settings(raw)) == ("h100-interactive", "inferentia-mixed", "tpu-interactive")


def test_a_pool_that_cannot_meet_the_slo_comes_last() -> None:
    raw = default_raw()
    raw["tiers"]["interactive"]["placement"] = "cheapest"
    raw["processors"]["inferentia2"]["latency"] = {"kind": "fixed", "min_ms": 400}  # SLO: 250 ms
    assert order(parse_settings(raw))[-1] == "inferentia-mixed"


def test_any_keeps_every_pool_reading_at_once() -> None:
    settings = parse_settings(default_raw())
    assert all(placement.holds(settings, pool) == {} for pool in settings.pools)


def test_the_pools_behind_hold_by_rank() -> None:
    settings = with_policy("cheapest")  # interactive SLO 250 ms: a hold of 25 ms per rank
    assert placement.holds(settings, "inferentia-mixed") == {}
    assert placement.holds(settings, "tpu-interactive") == {INTERACTIVE: pytest.approx(0.025)}
    assert placement.holds(settings, "h100-interactive") == {INTERACTIVE: pytest.approx(0.05)}
    explicit = with_policy("cheapest", placement_hold_ms=5)
    assert placement.holds(explicit, "h100-interactive") == {INTERACTIVE: pytest.approx(0.01)}


def test_an_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tiers\.interactive"):
        with_policy("cheapskate")
    with pytest.raises(ConfigError, match=r"tiers\.interactive"):
        with_policy({"price": 1.0})


def test_a_held_stream_is_read_without_blocking_then_waits_its_hold_when_empty() -> None:
    holds = Holds({"held": 0.05})
    plan = holds.plan(["held", "free"], now=10.0)
    assert (plan.streams, plan.may_block, plan.wait_s) == (["held", "free"], False, None)
    holds.read(plan.streams, set(), now=10.0)  # nothing there
    plan = holds.plan(["held", "free"], now=10.01)
    assert (plan.streams, plan.may_block, plan.wait_s) == (["free"], True, pytest.approx(0.04))
    assert holds.plan(["held"], now=10.06).streams == ["held"]
    holds.read(["held"], {"held"}, now=10.06)  # it had entries: read again at once
    assert holds.plan(["held"], now=10.06).streams == ["held"]
