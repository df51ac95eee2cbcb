"""Usage per tenant, tier and model: requests, tokens, energy (J) and cost, counted per hour as
each answer is recorded (`UsageCounts`), flushed to Redis by `gateway/slo_store.py` (`UsageStore`)
and served by `GET /v1/usage` (gateway/handlers.py) per hour or per day: the query's parsing and
the report's rows are here. No I/O.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import msgspec

from core.errors import InvalidRequest, NotFound

HOUR_S = 3600
DAY_S = 86_400
PERIOD_S = {"hour": HOUR_S, "day": DAY_S}
MAX_PERIODS = {"hour": 24 * 31, "day": 400}  # the most hours or days one query reads
DEFAULT_SPAN = {"hour": 24, "day": 30}  # periods read when `from` is not given

UsageKey = tuple[str, str, str]  # tenant, tier, model


@dataclass(slots=True)
class Counts:
    requests: int = 0
    tokens: int = 0
    energy_j: float = 0.0
    cost: float = 0.0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.energy_j += other.energy_j
        self.cost += other.cost


Hours = dict[int, dict[UsageKey, Counts]]  # epoch hour -> counts


class UsageCounts:
    """This process's usage since its last flush, per hour (pure; `UsageStore.flush` drains it)."""

    def __init__(self) -> None:
        self._hours: Hours = {}

    def add(self, epoch_s: int, key: UsageKey, tokens: int, energy_j: float, cost: float) -> None:
        """One answered request (on every answer: nothing is built unless its hour or key is new)."""
        hour = self._hours.get(epoch_s // HOUR_S)
        if hour is None:
            hour = self._hours[epoch_s // HOUR_S] = {}
        cell = hour.get(key)
        if cell is None:
            cell = hour[key] = Counts()
        cell.requests += 1
        cell.tokens += tokens
        cell.energy_j += energy_j
        cell.cost += cost

    def drain(self) -> Hours:
        hours, self._hours = self._hours, {}
        return hours

    def restore(self, hours: Hours) -> None:
        """Put back what a failed flush drained, merged with what was counted since."""
        for hour, cells in hours.items():
            mine = self._hours.setdefault(hour, {})
            for key, counts in cells.items():
                mine.setdefault(key, Counts()).add(counts)


class Row(msgspec.Struct):
    start: str  # the hour or day, ISO 8601 UTC
    tenant: str
    tier: str
    model: str
    requests: int
    tokens: int
    energy_j: float
    cost: float


@dataclass(slots=True, frozen=True)
class Query:
    period: str  # "hour" or "day"
    first: int  # the first period read (epoch hours or days)
    last: int
    tenant: str | None  # None: every tenant


def iso(epoch_s: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, name: str) -> int:
    """Epoch seconds from an ISO 8601 time or date (UTC unless it says otherwise) or a number of
    epoch seconds; InvalidRequest naming the parameter otherwise."""
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be an ISO 8601 time (2026-01-31T12:00:00Z) or epoch seconds, not {text!r}"
        ) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp())


def parse_query(params: dict[str, str], now_s: int, own_tenant: str) -> Query:
    """The periods and tenant of a usage query. `own_tenant` "" may read every tenant; another
    may read only its own, and naming another tenant is answered as if it had none (404)."""
    period = params.get("period", "hour")
    if period not in PERIOD_S:
        raise InvalidRequest(f"period must be hour or day, not {period!r}")
    size = PERIOD_S[period]
    end_s = parse_time(params["to"], "to") if "to" in params else now_s
    start_s = parse_time(params["from"], "from") if "from" in params else end_s - (DEFAULT_SPAN[period] - 1) * size
    first, last = start_s // size, end_s // size
    if last < first:
        raise InvalidRequest(f"from ({iso(start_s)}) is after to ({iso(end_s)})")
    if last - first + 1 > MAX_PERIODS[period]:
        raise InvalidRequest(f"a query reads at most {MAX_PERIODS[period]} {period}s, not {last - first + 1}")
    tenant = params.get("tenant")
    if own_tenant and tenant not in (None, own_tenant):
        raise NotFound(f"no usage of tenant {tenant!r} visible to this key")
    return Query(period, first, last, own_tenant or tenant)


def rows(period: str, found: dict[int, dict[UsageKey, Counts]], tenant: str | None) -> list[Row]:
    """The rows of a report: each period's counts of `tenant` (None: every tenant), in order."""
    size = PERIOD_S[period]
    return [
        Row(iso(index * size), *key, c.requests, c.tokens, c.energy_j, c.cost)
        for index in sorted(found)
        for key, c in sorted(found[index].items())
        if tenant is None or key[0] == tenant
    ]
