"""The adaptive batch pace, driven with plain values: it climbs by a step while the gateway is calm,
is cut when the event loop runs late or a stricter tier's median latency rises, and stays between
its floor and `max_lines_per_s`; the medians it judges by are collected per watched tier."""

from __future__ import annotations

import msgspec
import pytest

from core.settings import BatchSettings, load_settings
from gateway.batch_pace import HELD, LOOP_LAG, MIN_ANSWERS, Observation, PaceController, RecentLatencies, stricter_tiers

SETTINGS = BatchSettings(
    max_lines_per_s=300.0,
    min_lines_per_s=20.0,
    pace_step_lines_per_s=25.0,
    pace_backoff=0.5,
    pace_max_loop_lag_ms=5.0,
    pace_max_latency_ratio=1.25,
)


def calm(realtime_ms: float = 6.0, lag_ms: float = 1.0) -> Observation:
    return Observation(loop_lag_ms=lag_ms, medians_ms={"realtime": realtime_ms}, answered=50, feeding=True)


def idle(realtime_ms: float) -> Observation:
    return Observation(loop_lag_ms=1.0, medians_ms={"realtime": realtime_ms}, answered=50, feeding=False)


def test_the_pace_starts_at_its_floor_and_climbs_a_step_per_calm_interval_up_to_the_ceiling() -> None:
    pace = PaceController(SETTINGS)
    assert pace.lines_per_s == 20.0
    assert [pace.observe(calm()) for _ in range(3)] == [45.0, 70.0, 95.0]
    for _ in range(20):
        pace.observe(calm())
    assert pace.lines_per_s == 300.0
    assert pace.reason == "calm"


def test_a_late_event_loop_halves_the_pace_but_never_below_the_floor() -> None:
    pace = PaceController(SETTINGS)
    for _ in range(8):
        pace.observe(calm())
    assert pace.lines_per_s == 220.0
    assert pace.observe(calm(lag_ms=12.0)) == 110.0  # at once: a late loop delays every request on it
    assert pace.reason == LOOP_LAG
    for _ in range(5):
        pace.observe(calm(lag_ms=12.0))
    assert pace.lines_per_s == 20.0


def test_a_late_event_loop_delays_nobody_while_no_stricter_request_is_answered() -> None:
    pace = PaceController(SETTINGS)
    alone = Observation(loop_lag_ms=12.0, medians_ms={}, answered=0, feeding=True)
    assert [pace.observe(alone) for _ in range(2)] == [45.0, 70.0]
    few = Observation(loop_lag_ms=12.0, medians_ms={}, answered=2, feeding=True)  # too few for a median
    assert pace.observe(few) == 35.0


def test_a_stricter_tiers_median_over_its_calm_median_cuts_the_pace_and_names_the_tier() -> None:
    pace = PaceController(SETTINGS)
    for ms in (5.0, 6.0, 7.0):
        pace.observe(idle(ms))
    assert pace.calm_ms("realtime") == 6.0
    for _ in range(8):
        pace.observe(calm(realtime_ms=6.0))
    assert pace.observe(calm(realtime_ms=7.4)) == 245.0  # within 1.25 x 6 ms: still calm
    assert pace.observe(calm(realtime_ms=8.0)) == 245.0  # over once: held, it may be chance
    assert pace.reason == HELD
    assert pace.observe(calm(realtime_ms=8.0)) == 122.5  # twice in a row: cut
    assert pace.reason == "realtime"
    assert pace.observe(calm(realtime_ms=8.0)) == 61.25  # and on while it stays over
    assert pace.observe(calm(realtime_ms=6.0)) == 86.25
    assert pace.observe(calm(realtime_ms=8.0)) == 86.25  # a new run of slow intervals: held first


def test_only_intervals_without_a_batch_or_at_the_floor_set_the_calm_median() -> None:
    pace = PaceController(SETTINGS)
    pace.observe(idle(4.0))
    for _ in range(5):
        pace.observe(calm(realtime_ms=4.5))  # the first at the floor counts, the rest ran a batch faster
    assert pace.calm_ms("realtime") == 4.25
    assert pace.observe(calm(realtime_ms=6.0)) == 145.0  # over 1.25 x 4.25 ms: held
    assert pace.observe(calm(realtime_ms=6.0)) == 72.5  # and again: halved
    assert pace.calm_ms("realtime") == 4.25


def test_a_tier_seen_for_the_first_time_is_no_reason_to_cut() -> None:
    pace = PaceController(SETTINGS)
    first = Observation(loop_lag_ms=0.5, medians_ms={"interactive": 40.0}, answered=20, feeding=True)
    assert pace.observe(first) == 45.0
    assert pace.calm_ms("interactive") == 40.0  # at the floor: calm
    assert pace.calm_ms("realtime") is None


def test_with_no_batch_fed_the_pace_rests_at_its_floor() -> None:
    pace = PaceController(SETTINGS)
    for _ in range(4):
        pace.observe(calm())
    assert pace.observe(idle(5.0)) == 20.0
    assert pace.reason == "idle"
    assert pace.observe(calm(realtime_ms=8.0)) == 20.0  # 8 > 1.25 x 5.5 ms
    assert pace.observe(calm(realtime_ms=8.0)) == 20.0  # cut, and held at the floor
    assert pace.reason == "realtime"


def test_with_no_ceiling_the_pace_keeps_climbing() -> None:
    pace = PaceController(msgspec.structs.replace(SETTINGS, max_lines_per_s=0.0))
    for _ in range(100):
        pace.observe(calm())
    assert pace.lines_per_s == 20.0 + 100 * 25.0


def test_recent_latencies_give_each_watched_tiers_median_once_it_has_enough_answers() -> None:
    recent = RecentLatencies()
    recent.add("realtime", 3.0)  # nothing watched yet: not kept
    recent.watch(["realtime", "interactive"])
    for ms in (5.0, 6.0, 7.0, 100.0, 6.5):
        recent.add("realtime", ms)
    for ms in range(MIN_ANSWERS - 1):
        recent.add("interactive", float(ms))
    recent.add("batch", 1.0)
    assert recent.take() == ({"realtime": 6.5}, 5 + MIN_ANSWERS - 1)  # interactive: too few for a median
    assert recent.take() == ({}, 0)


@pytest.mark.parametrize(
    ("batch_tier", "stricter"), [("batch", ["realtime", "interactive"]), ("interactive", ["realtime"])]
)
def test_the_stricter_tiers_are_those_with_a_tighter_latency_objective(batch_tier: str, stricter: list[str]) -> None:
    assert stricter_tiers(load_settings(environ={}), batch_tier) == stricter
