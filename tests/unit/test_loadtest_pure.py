"""The load tester's pure parts: arrival schedules, flag parsing, SSE lines, histogram merging."""

from __future__ import annotations

import pytest

from loadtest import schedule
from loadtest.cli import duration_s
from loadtest.http_driver import chunk_has_token, outcome_of, parse_sse_line
from loadtest.stats import Recorder, Sample, summary

TIERS = ["realtime", "interactive", "batch"]


def test_mix_is_normalised_and_bad_mixes_are_named() -> None:
    assert schedule.parse_mix("realtime=1,batch=3", TIERS) == {"realtime": 0.25, "batch": 0.75}
    with pytest.raises(schedule.ScheduleError, match="unknown tier 'gold'"):
        schedule.parse_mix("gold=1", TIERS)
    with pytest.raises(schedule.ScheduleError, match="not tier=weight"):
        schedule.parse_mix("realtime", TIERS)


def test_constant_arrivals_are_evenly_spaced_and_seeded_poisson_repeats() -> None:
    constant = schedule.build(10, 1.0, {"batch": 1.0}, ["sim-echo"], "constant")
    assert [round(a.offset_s, 6) for a in constant] == [round(0.1 * i, 6) for i in range(1, 10)]
    one = schedule.build(50, 2.0, {"realtime": 0.5, "batch": 0.5}, ["a", "b"], "poisson", (4, 9), seed=3)
    assert one == schedule.build(50, 2.0, {"realtime": 0.5, "batch": 0.5}, ["a", "b"], "poisson", (4, 9), seed=3)
    assert all(0 < a.offset_s < 2.0 and 4 <= a.input_chars <= 9 for a in one)
    assert {a.tier for a in one} == {"realtime", "batch"} and {a.model for a in one} == {"a", "b"}


def test_shares_partition_the_schedule() -> None:
    arrivals = schedule.build(40, 1.0, {"batch": 1.0}, ["m"], seed=1)
    shares = [schedule.share(arrivals, i, 3) for i in range(3)]
    assert sorted((a for s in shares for a in s), key=lambda a: a.offset_s) == arrivals
    assert len(schedule.input_text(7, 100)) == 100 and schedule.input_text(7, 5) != schedule.input_text(8, 5)


def test_durations_and_sizes_parse() -> None:
    assert [duration_s(t) for t in ("30", "30s", "500ms", "2m")] == [30.0, 30.0, 0.5, 120.0]
    assert schedule.parse_size("16-256") == (16, 256) and schedule.parse_size("8") == (8, 8)
    with pytest.raises(schedule.ScheduleError):
        schedule.parse_size("9-3")


def test_sse_lines_and_statuses() -> None:
    assert parse_sse_line(b'data: {"a": 1}\r\n') == '{"a": 1}'
    assert parse_sse_line(b"data: [DONE]\n") == "[DONE]"
    assert parse_sse_line(b": comment\n") is None and parse_sse_line(b"\n") is None
    assert not chunk_has_token({"choices": [{"delta": {"role": "assistant"}}]})
    assert chunk_has_token({"choices": [{"delta": {"content": "x"}}]})
    assert [outcome_of(s) for s in (200, 429, 504, 500, 0)] == ["ok", "shed", "deadline", "errors", "errors"]


def test_wire_round_trip_and_merge_add_up() -> None:
    parts = []
    for offset in (0, 1):
        recorder = Recorder({"realtime": 10.0})
        for i in range(20):
            outcome = "ok" if i % 4 else "shed"
            recorder.sent("realtime")
            recorder.add(Sample(i, "realtime", outcome, latency_ms=float(i + offset * 20), done_s=i / 10))
        recorder.duration_s = 2.0
        parts.append(Recorder.from_wire(recorder.to_wire()))
    total = Recorder({}, keep_samples=False)
    for part in parts:
        total.merge(part)
    row = summary(total, {"realtime": 99.9})["tiers"]["realtime"]
    assert (row["sent"], row["ok"], row["shed"]) == (40, 30, 10)
    assert row["max_ms"] == pytest.approx(39.0, rel=0.01)
    # ok and within 10 ms: latencies 1, 2, 3, 5, 6, 7, 9, 10 of the first part
    assert row["slo_attainment_pct"] == pytest.approx(100 * 8 / 40) and row["slo_met"] is False
    assert parts[0].tiers["realtime"].sent == 20  # merging leaves the parts as they were
