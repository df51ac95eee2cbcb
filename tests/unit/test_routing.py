"""Routing picks tier, stream and deadline from the request and the config, or says why not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import InvalidRequest, ModelNotFound, TierNotServed
from core.settings import Settings
from gateway.routing import Router


def test_model_default_tier_and_tier_default_deadline(make_settings: Callable[..., Settings]) -> None:
    route = Router(make_settings()).route("sim-echo", 5)
    assert (route.tier, route.region, route.stream) == ("interactive", "default", "tg:{interactive.default}:requests")
    assert route.deadline_ms == 10000


def test_explicit_tier_and_deadline(make_settings: Callable[..., Settings]) -> None:
    route = Router(make_settings()).route("sim-embed", 5, tier="realtime", deadline_ms=50)
    assert (route.tier, route.stream, route.deadline_ms) == ("realtime", "tg:{realtime.default}:requests", 50)


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
    assert [row[0] for row in table] == ["realtime", "interactive", "batch"]
    assert table[0][3] == ["groq-realtime"]


def test_a_tier_gateway_routes_only_its_tiers(make_settings: Callable[..., Settings]) -> None:
    router = Router(make_settings(), tiers=["realtime"])
    # sim-echo's own default (interactive) is not served here: the gateway's tier is the default
    route = router.route("sim-echo", 5)
    assert (route.tier, route.stream) == ("realtime", "tg:{realtime.default}:requests")
    with pytest.raises(TierNotServed, match="serves only the realtime tier; send batch requests") as refused:
        router.route("sim-echo", 5, tier="batch")
    assert (refused.value.status, refused.value.code) == (421, "tier_not_served")
    with pytest.raises(InvalidRequest, match="unknown tier 'urgent'"):
        router.route("sim-echo", 5, tier="urgent")
    assert [row[0] for row in router.table()] == ["realtime"]


def test_a_gateway_of_several_tiers_keeps_a_model_default_it_serves(make_settings: Callable[..., Settings]) -> None:
    router = Router(make_settings(), tiers=["batch", "interactive"])
    assert router.route("sim-echo", 5).tier == "interactive"  # the model's default, served here
    with pytest.raises(TierNotServed, match="serves only the batch and interactive tiers"):
        router.route("sim-echo", 5, tier="realtime")
