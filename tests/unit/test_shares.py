"""Fair shares of a busy tier (gateway/shares.py) as plain arithmetic: the budget of requests in
flight a stream's workers need, each active tenant's max-min fair part of it by weight, and the
refusal of a tenant past its part only while another tenant is active."""

from __future__ import annotations

import pytest

from core.errors import QueueFull
from gateway.admission import Capacity
from gateway.shares import HEADROOM, Shares, budget, fair_cap

CAPACITY = Capacity(per_s=400.0, service_ms=50.0, workers=2)  # 20 batch slots: a budget of 40
STREAM = "tg:{interactive.default.h100}:requests"


def test_the_budget_is_the_workers_slots_with_headroom() -> None:
    assert budget(CAPACITY) == 20 * HEADROOM == 40
    assert budget(Capacity(per_s=10.0, service_ms=1.0, workers=1)) == 1  # never below one
    assert budget(None) is None


@pytest.mark.parametrize(
    ("in_flight", "weights", "caps"),
    [
        ({}, {"a": 1, "b": 1}, {"a": 30, "b": 30}),  # nothing in flight: either may take it all
        ({"a": 30, "b": 2}, {"a": 1, "b": 1}, {"a": 28, "b": 15}),  # a takes what b leaves
        ({"a": 30, "b": 20}, {"a": 1, "b": 1}, {"a": 15, "b": 15}),  # b busy too: halves
        ({"a": 30, "b": 30}, {"a": 3, "b": 1}, {"a": 22.5, "b": 7.5}),  # both busy: by weight
        ({"a": 5, "b": 5, "c": 5}, {"a": 1, "b": 1, "c": 1}, {"a": 20, "b": 20, "c": 20}),
    ],
)
def test_each_tenant_gets_its_weighted_share_and_what_the_others_leave(
    in_flight: dict[str, int], weights: dict[str, float], caps: dict[str, float]
) -> None:
    assert {t: fair_cap(t, in_flight, weights, 30) for t in weights} == pytest.approx(caps)


SMALL = Capacity(per_s=20.0, service_ms=500.0, workers=1)  # 10 slots: a budget of 20; 10/s each of two


def flood(shares: Shares, tenant: str, count: int, now_s: float, weight: float = 1.0) -> int:
    """Offer `count` requests of `tenant` at `now_s`; how many got in."""
    admitted = 0
    for _ in range(count):
        try:
            shares.check(STREAM, "interactive", tenant, weight, SMALL, now_s)
        except QueueFull:
            continue
        shares.admitted(STREAM, tenant, weight, now_s)
        admitted += 1
    return admitted


def test_a_tenant_alone_is_never_held_to_a_share() -> None:
    shares = Shares(active_s=5.0)
    assert flood(shares, "a", 500, now_s=0.0) == 500


def test_a_flooding_tenant_gets_what_a_light_one_leaves_and_the_light_one_always_gets_in() -> None:
    shares = Shares(active_s=5.0)
    assert flood(shares, "b", 2, now_s=0.0) == 2
    # a is light until it is admitted at its share of the capacity (10 a second), then heavy:
    # held to the budget of 20 less what the light b holds.
    assert flood(shares, "a", 500, now_s=1.0) == 18
    with pytest.raises(QueueFull) as refused:
        shares.check(STREAM, "interactive", "a", 1.0, SMALL, 1.0)
    assert refused.value.status == 429 and refused.value.message == (
        "the interactive tier is busy and tenant 'a' holds its fair share of it (18 of the 20 requests its "
        "workers take at once, shared by 2 active tenants); retry later"
    )
    assert flood(shares, "b", 5, now_s=1.5) == 5  # b is light: never held back
    assert flood(shares, "a", 5, now_s=1.5) == 0  # a is held to 20 - 7 = 13, and holds 18
    for _ in range(10):
        shares.ended(STREAM, "a")
    assert flood(shares, "a", 500, now_s=1.6) == 5  # 8 held: 5 more make 13
    assert (shares.in_flight(STREAM, "a"), shares.in_flight(STREAM, "b")) == (13, 7)


def test_heavy_tenants_converge_to_their_weighted_split_as_requests_end() -> None:
    shares = Shares(active_s=5.0)
    for _ in range(100):  # both flood from the start: whoever arrives takes the free room
        flood(shares, "a", 1, now_s=1.0, weight=3.0)
        flood(shares, "c", 1, now_s=1.0, weight=1.0)
    assert shares.in_flight(STREAM, "a") + shares.in_flight(STREAM, "c") >= 20
    for step in range(60):  # each finishes a request and offers another, both at once
        now_s = 1.0 + step / 20
        for tenant, weight in (("a", 3.0), ("c", 1.0)):
            shares.ended(STREAM, tenant)
            flood(shares, tenant, 1, now_s=now_s, weight=weight)
    assert (shares.in_flight(STREAM, "a"), shares.in_flight(STREAM, "c")) == (15, 5)  # 20 at 3:1


def test_a_tenant_idle_past_active_s_no_longer_holds_a_share() -> None:
    shares = Shares(active_s=5.0)
    flood(shares, "b", 1, now_s=0.0)
    shares.ended(STREAM, "b")
    assert flood(shares, "a", 100, now_s=1.0) == 20  # b active, holding nothing: a may take the budget
    assert flood(shares, "a", 100, now_s=6.5) == 100  # b idle for more than 5 s: a is alone


def test_requests_of_no_tenant_are_not_counted_nor_held() -> None:
    shares = Shares(active_s=5.0)
    flood(shares, "b", 1, now_s=0.0)
    assert flood(shares, "", 100, now_s=0.0) == 100 and shares.in_flight(STREAM, "") == 0


def test_an_accepted_request_stays_in_flight_until_its_reply_or_its_deadline() -> None:
    shares = Shares(active_s=5.0)
    flood(shares, "a", 2, now_s=0.0)
    shares.keep_async("r1", STREAM, "a", until_s=10.0)
    shares.keep_async("r2", STREAM, "a", until_s=20.0)
    shares.async_ended("r1")
    shares.sweep(now_s=15.0)
    assert shares.in_flight(STREAM, "a") == 1
    shares.sweep(now_s=25.0)
    assert shares.in_flight(STREAM, "a") == 0


def test_a_flood_that_starts_is_held_once_it_holds_the_budget_not_a_second_later() -> None:
    # 400 a second over two tenants: by its rate alone, a would count as heavy only after 200
    # requests; holding the whole budget (40) makes it heavy at once.
    shares = Shares(active_s=5.0)

    def flood_at(tenant: str, count: int) -> int:
        return sum(_admit(shares, tenant, CAPACITY) for _ in range(count))

    assert flood_at("b", 2) == 2
    assert flood_at("a", 500) == 40
    assert flood_at("b", 3) == 3  # b stays light: never held back
    assert flood_at("a", 10) == 0  # a is held to 40 less what b holds, and holds 40


def _admit(shares: Shares, tenant: str, capacity: Capacity) -> bool:
    try:
        shares.check(STREAM, "interactive", tenant, 1.0, capacity, 1.0)
    except QueueFull:
        return False
    shares.admitted(STREAM, tenant, 1.0, 1.0)
    return True
