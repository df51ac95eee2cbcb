"""Usage per tenant, pure parts: the hourly counts, the query of `GET /v1/usage` and its rows."""

from __future__ import annotations

import pytest

from core import protocol
from core.errors import InvalidRequest, NotFound
from gateway.usage import Counts, UsageCounts, parse_query, rows

NOW_S = 1_767_225_600 + 5 * 3600 + 120  # 2026-01-01T05:02:00Z


def test_counts_are_kept_per_hour_and_put_back_after_a_failed_flush() -> None:
    counts = UsageCounts()
    counts.add(NOW_S, ("acme", "interactive", "sim-echo"), 10, 0.5, 0.001)
    counts.add(NOW_S + 1, ("acme", "interactive", "sim-echo"), 6, 0.25, 0.002)
    counts.add(NOW_S + 3600, ("beta", "batch", "sim-echo"), 1, 0.0, 0.0)
    drained = counts.drain()
    hour = NOW_S // 3600
    assert drained == {
        hour: {("acme", "interactive", "sim-echo"): Counts(2, 16, 0.75, 0.003)},
        hour + 1: {("beta", "batch", "sim-echo"): Counts(1, 1, 0.0, 0.0)},
    }
    assert counts.drain() == {}
    counts.add(NOW_S, ("acme", "interactive", "sim-echo"), 4, 0.25, 0.0)
    counts.restore(drained)
    assert counts.drain()[hour][("acme", "interactive", "sim-echo")] == Counts(3, 20, 1.0, 0.003)


def test_a_query_defaults_to_the_last_day_of_hours_and_is_bounded() -> None:
    query = parse_query({}, NOW_S, "")
    assert (query.period, query.last - query.first + 1, query.tenant) == ("hour", 24, None)
    day = parse_query({"period": "day", "from": "2026-01-01", "to": "2026-01-03T12:00:00Z"}, NOW_S, "")
    assert (day.first, day.last) == (1_767_225_600 // 86_400, 1_767_225_600 // 86_400 + 2)
    with pytest.raises(InvalidRequest, match="a query reads at most 744 hours, not 745"):
        parse_query({"from": str(NOW_S - 744 * 3600)}, NOW_S, "")
    with pytest.raises(InvalidRequest, match="from must be an ISO 8601 time"):
        parse_query({"from": "last tuesday"}, NOW_S, "")
    with pytest.raises(InvalidRequest, match="is after to"):
        parse_query({"from": "2026-01-02", "to": "2026-01-01"}, NOW_S, "")


def test_a_tenant_reads_only_its_own_usage() -> None:
    assert parse_query({}, NOW_S, "acme").tenant == "acme"
    assert parse_query({"tenant": "acme"}, NOW_S, "acme").tenant == "acme"
    assert parse_query({"tenant": "beta"}, NOW_S, "").tenant == "beta"  # no tenant of its own: any
    with pytest.raises(NotFound, match="no usage of tenant 'beta' visible to this key"):
        parse_query({"tenant": "beta"}, NOW_S, "acme")


def test_rows_are_in_order_and_filtered() -> None:
    found = {
        20: {("b", "batch", "m"): Counts(1, 2, 3.0, 4.0), ("a", "batch", "m"): Counts(5, 6, 7.0, 8.0)},
        19: {("a", "batch", "m"): Counts(1, 1, 1.0, 1.0)},
    }
    assert [(r.start, r.tenant, r.requests) for r in rows("day", found, None)] == [
        ("1970-01-20T00:00:00Z", "a", 1),
        ("1970-01-21T00:00:00Z", "a", 5),
        ("1970-01-21T00:00:00Z", "b", 1),
    ]
    assert [r.tenant for r in rows("day", found, "b")] == ["b"]


def test_a_usage_field_keeps_a_tenant_name_holding_the_separator() -> None:
    field = protocol.usage_field("odd|name", "interactive", "sim-echo", "tokens")
    assert protocol.parse_usage_field(field) == ("odd|name", "interactive", "sim-echo", "tokens")
    assert protocol.parse_usage_field("|interactive|sim-echo|requests") == ("", "interactive", "sim-echo", "requests")
    assert protocol.parse_usage_field("nonsense") is None
    assert protocol.usage_hour_key(5) == "tg:{usage}:h:5" and protocol.usage_day_key(5) == "tg:{usage}:d:5"
