"""Routing picks tier, stream and deadline from the request and the config, or says why not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import InvalidRequest, ModelNotFound, TierNotServed
from core.settings import Settings, parse_settings
from gateway.routing import Router
from tests.conftest import default_raw


def test_model_default_tier_and_tier_default_deadline(make_settings: Callable[..., Settings]) -> None:
    route = Router(make_settings()).route("sim-echo", 5)
    interactive = "tg:{interactive.default.h100-interactive+inferentia-mixed+tpu-interactive}:requests"
    assert (route.tier, route.region, route.stream) == ("interactive", "default", interactive)
    assert route.deadline_ms == 10000


def test_explicit_tier_and_deadline(make_settings: Callable[..., Settings]) -> None:
    route = Router(make_settings()).route("sim-embed", 5, tier="realtime", deadline_ms=50)
    assert (route.tier, route.stream, route.deadline_ms) == (
        "realtime",
        "tg:{realtime.default.groq-realtime}:requests",
        50,
    )


def test_refusals_name_the_problem(make_settings: Callable[..., Settings]) -> None:
    router = Router(make_settings())
    with pytest.raises(ModelNotFound, match="model 'gpt-9' does not exist"):
        router.route("gpt-9", 5)
    with pytest.raises(InvalidRequest, match="unknown tier 'urgent'"):
        router.route("sim-echo", 5, tier="urgent")
    with pytest.raises(InvalidRequest, match="no pool serves model 'sim-echo' on tier 'batch' in region 'mars'"):
        router.route("sim-echo", 5, tier="batch", region="mars")
    with pytest.raises(InvalidRequest, match="input is 100001 characters; the limit is 100000"):
        router.route("sim-echo", 100_001)


def test_routing_table_lists_tiers_in_order(make_settings: Callable[..., Settings]) -> None:
    table = Router(make_settings()).table()
    assert [lane.tier for lane in table] == ["realtime", "interactive", "batch"]
    assert table[0].pools == ("groq-realtime",)


def test_a_tier_gateway_routes_only_its_tiers(make_settings: Callable[..., Settings]) -> None:
    router = Router(make_settings(), tiers=["realtime"])
    # sim-echo's own default (interactive) is not served here: the gateway's tier is the default
    route = router.route("sim-echo", 5)
    assert (route.tier, route.stream) == ("realtime", "tg:{realtime.default.groq-realtime}:requests")
    assert route.pools == ("groq-realtime",)
    with pytest.raises(TierNotServed, match="serves only the realtime tier; send batch requests") as refused:
        router.route("sim-echo", 5, tier="batch")
    assert (refused.value.status, refused.value.code) == (421, "tier_not_served")
    with pytest.raises(InvalidRequest, match="unknown tier 'urgent'"):
        router.route("sim-echo", 5, tier="urgent")
    assert [lane.tier for lane in router.table()] == ["realtime"]


def test_a_gateway_of_several_tiers_keeps_a_model_default_it_serves(make_settings: Callable[..., Settings]) -> None:
    router = Router(make_settings(), tiers=["batch", "interactive"])
    assert router.route("sim-echo", 5).tier == "interactive"  # the model's default, served here
    with pytest.raises(TierNotServed, match="serves only the batch and interactive tiers"):
        router.route("sim-echo", 5, tier="realtime")


def test_pools_of_one_tier_serving_different_models_get_a_stream_each() -> None:
    # tpu-interactive also serves sim-large, which the other interactive pools do not: sim-large's
    # requests reach only tpu-interactive, sim-echo's any of the three.
    raw = default_raw()
    raw["models"]["sim-large"] = {"kind": "echo", "params": 70_000_000_000}
    raw["pools"]["tpu-interactive"]["models"] = ["sim-echo", "sim-embed", "sim-large"]
    settings = parse_settings(raw)
    router = Router(settings)
    large = router.route("sim-large", 5)
    echo = router.route("sim-echo", 5)
    assert large.pools == ("tpu-interactive",)
    assert set(echo.pools) == {"h100-interactive", "tpu-interactive", "inferentia-mixed"}
    assert large.stream == "tg:{interactive.default.tpu-interactive}:requests"
    assert echo.stream == "tg:{interactive.default.h100-interactive+inferentia-mixed+tpu-interactive}:requests"
    assert router.route("sim-embed", 5).stream == echo.stream  # same pools, same stream
    interactive = [lane for lane in router.table() if lane.tier == "interactive"]
    assert sorted(lane.models for lane in interactive) == [("sim-echo", "sim-embed"), ("sim-large",)]
    with pytest.raises(InvalidRequest, match="no pool serves model 'sim-large' on tier 'batch'"):
        router.route("sim-large", 5, tier="batch")
