"""SLO arithmetic as pure functions: per-second accumulation of request outcomes, the hash fields
they become in Redis, merging those fields back, and the window report of `GET /v1/slo`
(percentiles, attainment, error budget, multi-window burn rates). No I/O: `slo_store` does it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core import protocol
from core.settings import SLO

# Latency histogram for percentiles: log buckets, each 4 % wider than the last, from 1 µs.
# Percentiles read from it are within 4 % of the true value (the bucket's upper bound, capped
# at the observed maximum).
BUCKET_RATIO = 1.04
BUCKET_MIN_MS = 0.001
_LOG_RATIO = math.log(BUCKET_RATIO)

FAST_BURN = 14.4  # Google SRE workbook: 2 % of a 30-day budget in 1 h (windows 1 h and 5 min)
SLOW_BURN = 6.0  # 5 % of a 30-day budget in 6 h (windows 6 h and 30 min)
NO_PROCESSOR = "none"  # requests that failed before any processor ran them

# ---------------------------------------------------------------- the windows
# Every window, in the order the report lists burn rates. Those up to SECOND_WINDOWS_S long are
# summed from per-second counts, those up to MINUTE_WINDOWS_S from whole per-minute counts, and
# longer ones from per-minute tier totals only (the slow-burn alert's 6 h needs no more).
WINDOW_S = {"1m": 60, "5m": 300, "30m": 1800, "1h": 3600, "6h": 6 * 3600}
REPORTED = ("1m", "5m", "1h")  # the windows `GET /v1/slo` reports in full
WINDOWS_S = {name: WINDOW_S[name] for name in REPORTED}
SECOND_WINDOWS_S = 300
MINUTE_WINDOWS_S = 3600
TOTALS_WINDOW = "6h"
SERIES_S = 60  # the per-second series of the dashboard


def bucket_index(latency_ms: float) -> int:
    if latency_ms <= BUCKET_MIN_MS:
        return 0
    return math.ceil(math.log(latency_ms / BUCKET_MIN_MS) / _LOG_RATIO - 1e-9)


def bucket_upper_ms(index: int) -> float:
    return BUCKET_MIN_MS * BUCKET_RATIO**index


@dataclass(slots=True)
class Cell:
    """The outcomes of one tier on one processor in some span of time."""

    n: int = 0  # every request that reached an outcome (shed and failed ones too)
    ok: int = 0  # answered with a result: these have a latency
    met: int = 0  # answered within the tier's latency objective
    sum_ms: float = 0.0
    max_ms: float = 0.0
    busy_ms: float = 0.0  # processor time: each request's batch service time / batch size
    batches: float = 0.0  # sum of 1 / batch size: the number of batches these requests rode in
    energy_j: float = 0.0
    cost: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, other: Cell) -> None:
        self.n += other.n
        self.ok += other.ok
        self.met += other.met
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)
        self.busy_ms += other.busy_ms
        self.batches += other.batches
        self.energy_j += other.energy_j
        self.cost += other.cost
        for index, count in other.hist.items():
            self.hist[index] = self.hist.get(index, 0) + count


Cells = dict[tuple[str, str], Cell]  # (tier, processor) -> Cell


class Accumulator:
    """What this process saw since the last flush, per second and (tier, processor)."""

    def __init__(self) -> None:
        self.seconds: dict[int, Cells] = {}

    def _cell(self, epoch_s: int, tier: str, processor: str) -> Cell:
        cells = self.seconds.get(epoch_s)
        if cells is None:
            cells = self.seconds[epoch_s] = {}
        cell = cells.get((tier, processor))
        if cell is None:
            cell = cells[(tier, processor)] = Cell()
        return cell

    def result(
        self,
        epoch_s: int,
        tier: str,
        processor: str,
        latency_ms: float,
        met: bool,
        service_ms: float,
        batch_size: int,
        energy_j: float,
        cost: float,
    ) -> None:
        cells = self.seconds.get(epoch_s)  # `_cell`, inlined: this runs on every answer
        cell = None if cells is None else cells.get((tier, processor))
        if cell is None:
            cell = self._cell(epoch_s, tier, processor)
        cell.n += 1
        cell.ok += 1
        cell.met += met
        cell.sum_ms += latency_ms
        cell.max_ms = max(cell.max_ms, latency_ms)
        cell.busy_ms += service_ms / batch_size
        cell.batches += 1.0 / batch_size
        cell.energy_j += energy_j
        cell.cost += cost
        index = bucket_index(latency_ms)
        cell.hist[index] = cell.hist.get(index, 0) + 1

    def failure(self, epoch_s: int, tier: str, processor: str = NO_PROCESSOR) -> None:
        self._cell(epoch_s, tier, processor).n += 1

    def restore(self, seconds: dict[int, Cells]) -> None:
        """Put drained counts back (a flush that failed), adding to what arrived since."""
        for epoch_s, cells in seconds.items():
            for (tier, processor), cell in cells.items():
                self._cell(epoch_s, tier, processor).add(cell)

    def drain(self) -> dict[int, Cells]:
        seconds, self.seconds = self.seconds, {}
        return seconds


# ---------------------------------------------------------------- Redis hash fields
# Counters are `protocol.slo_field(tier, processor, stat)`; the maximum lives in a sorted set
# beside the hash.


def increments(cell: Cell) -> tuple[dict[str, int], dict[str, float]]:
    """The HINCRBY and HINCRBYFLOAT amounts of one cell, fields without the tier|processor prefix."""
    ints = {"n": cell.n, "ok": cell.ok, "met": cell.met}
    ints.update({f"h{index}": count for index, count in cell.hist.items()})
    floats = {"sum": cell.sum_ms, "busy": cell.busy_ms, "bat": cell.batches, "e": cell.energy_j, "c": cell.cost}
    return {k: v for k, v in ints.items() if v}, {k: v for k, v in floats.items() if v}


_FLOAT_STATS = {"sum": "sum_ms", "busy": "busy_ms", "bat": "batches", "e": "energy_j", "c": "cost"}


def merge_hash(cells: Cells, fields: Mapping[bytes, bytes]) -> None:
    """Add one Redis hash of SLO fields into `cells`; unknown fields are ignored."""
    for raw_name, raw_value in fields.items():
        parsed = protocol.parse_slo_field(raw_name)
        if parsed is None or parsed[1] == protocol.SLO_TOTAL:
            continue
        tier, processor, stat = parsed
        cell = cells.get((tier, processor))
        if cell is None:
            cell = cells[(tier, processor)] = Cell()
        value = float(raw_value)
        if stat in ("n", "ok", "met"):
            setattr(cell, stat, getattr(cell, stat) + int(value))
        elif stat in _FLOAT_STATS:
            setattr(cell, _FLOAT_STATS[stat], getattr(cell, _FLOAT_STATS[stat]) + value)
        elif stat.startswith("h") and stat[1:].isdigit():
            index = int(stat[1:])
            cell.hist[index] = cell.hist.get(index, 0) + int(value)


def merge(hashes: Iterable[Mapping[bytes, bytes]]) -> Cells:
    cells: Cells = {}
    for fields in hashes:
        merge_hash(cells, fields)
    return cells


# ---------------------------------------------------------------- window report


def quantile_ms(hist: Mapping[int, int], q: float, max_ms: float) -> float | None:
    """The q-quantile (0..1) of a bucketed latency histogram, capped at the observed maximum."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return round(min(bucket_upper_ms(index), max_ms) if max_ms > 0 else bucket_upper_ms(index), 3)
    return round(max_ms, 3)


def burn_rate(total: int, good: int, objective_pct: float) -> float:
    """How fast the error budget burns: the bad fraction over the allowed bad fraction."""
    if total == 0:
        return 0.0
    return ((total - good) / total) / (1.0 - objective_pct / 100.0)


def summary(cell: Cell, window_s: float, slo: SLO | None = None, replicas: int = 0) -> dict[str, object]:
    """The report of one window for one tier, a processor of a tier (with `slo`), or a processor."""
    per_1k = 1000.0 / cell.ok if cell.ok else 0.0
    report: dict[str, object] = {
        "count": cell.n,
        "ok": cell.ok,
        "errors": cell.n - cell.ok,
        "met": cell.met,
        "throughput_rps": round(cell.n / window_s, 3),
        "p50_ms": quantile_ms(cell.hist, 0.50, cell.max_ms),
        "p95_ms": quantile_ms(cell.hist, 0.95, cell.max_ms),
        "p99_ms": quantile_ms(cell.hist, 0.99, cell.max_ms),
        "max_ms": round(cell.max_ms, 3) if cell.ok else None,
        "mean_ms": round(cell.sum_ms / cell.ok, 3) if cell.ok else None,
        "attainment": round(cell.met / cell.n, 6) if cell.n else None,
        "energy_j_per_1k": round(cell.energy_j * per_1k, 6),
        "cost_per_1k": round(cell.cost * per_1k, 9),
        "mean_batch_size": round(cell.ok / cell.batches, 3) if cell.batches else None,
    }
    if slo is not None:
        burn = burn_rate(cell.n, cell.met, slo.objective)
        report[f"p{slo.percentile:g}_ms"] = quantile_ms(cell.hist, slo.percentile / 100.0, cell.max_ms)
        report["error_budget_remaining"] = round(1.0 - burn, 6)
        report["burn_rate"] = round(burn, 4)
    if replicas:
        report["utilisation"] = round(min(1.0, cell.busy_ms / 1000.0 / (window_s * replicas)), 6)
    return report


def tier_totals(cells: Cells, tier: str) -> Cell:
    total = Cell()
    for (t, _), cell in cells.items():
        if t == tier:
            total.add(cell)
    return total


@dataclass(slots=True, frozen=True)
class BurnAlert:
    """One multi-window burn-rate alert: it fires while both windows burn faster than `threshold`.
    The rendered Prometheus rules (ops/deploy) are built from these too."""

    name: str
    long_window: str  # a key of WINDOW_S
    short_window: str
    threshold: float


BURN_ALERTS = (BurnAlert("fast_burn", "1h", "5m", FAST_BURN), BurnAlert("slow_burn", "6h", "30m", SLOW_BURN))


def alerts(burn: Mapping[str, float]) -> dict[str, bool]:
    """The SRE workbook's multi-window burn-rate alerts (long window and short window both over)."""
    return {
        a.name: burn.get(a.long_window, 0.0) > a.threshold and burn.get(a.short_window, 0.0) > a.threshold
        for a in BURN_ALERTS
    }


# ---------------------------------------------------------------- the /v1/slo document


@dataclass(slots=True)
class Snapshot:
    """Every gateway's counts around `now_s`, merged: what the report is built from."""

    now_s: int
    seconds: dict[int, Cells]  # recent seconds (at least the last 5 min), each merged on its own
    minutes: dict[int, Cells]  # the last 60 minutes
    tier_counts_6h: dict[str, tuple[int, int]]  # tier -> (requests, met) over the last 6 h


def combine(spans: Iterable[Cells]) -> Cells:
    total: Cells = {}
    for cells in spans:
        for key, cell in cells.items():
            into = total.get(key)
            if into is None:
                into = total[key] = Cell()
            into.add(cell)
    return total


def windows(snap: Snapshot) -> dict[str, Cells]:
    """The merged counts of each window but the tier-totals one (the 30 min burn-rate window too)."""
    now_min = snap.now_s // 60
    spans: dict[str, Cells] = {}
    for name, span_s in WINDOW_S.items():
        if span_s <= SECOND_WINDOWS_S:
            spans[name] = combine(c for s, c in snap.seconds.items() if s > snap.now_s - span_s)
        elif span_s <= MINUTE_WINDOWS_S:
            spans[name] = combine(c for m, c in snap.minutes.items() if m > now_min - span_s // 60)
    return spans


def tier_report(tier: str, slo: SLO, spans: Mapping[str, Cells], counts_6h: tuple[int, int]) -> dict[str, Any]:
    reported: dict[str, Any] = {}
    burn: dict[str, float] = {}
    for name, cells in spans.items():
        total = tier_totals(cells, tier)
        burn[name] = round(burn_rate(total.n, total.met, slo.objective), 4)
        if name not in WINDOWS_S:
            continue
        window = summary(total, WINDOWS_S[name], slo)
        window["processors"] = {
            processor: summary(cell, WINDOWS_S[name], slo)
            for (t, processor), cell in sorted(cells.items())
            if t == tier
        }
        reported[name] = window
    burn[TOTALS_WINDOW] = round(burn_rate(counts_6h[0], counts_6h[1], slo.objective), 4)
    return {
        "slo": {"latency_ms": slo.latency_ms, "percentile": slo.percentile, "objective": slo.objective},
        "windows": reported,
        "burn_rate": burn,
        "alerts": alerts(burn),
    }


def processor_report(spans: Mapping[str, Cells], replicas: Mapping[str, int]) -> dict[str, Any]:
    """Per processor across tiers: throughput, batch size, utilisation, energy and cost."""
    report: dict[str, Any] = {}
    for processor, count in replicas.items():
        report[processor] = {}
        for name, seconds in WINDOWS_S.items():
            total = Cell()
            for (_, p), cell in spans[name].items():
                if p == processor:
                    total.add(cell)
            report[processor][name] = summary(total, seconds, replicas=count)
    return report


def series(snap: Snapshot, tiers: Iterable[str]) -> dict[str, Any]:
    """Per-second count, p50 and p99 of each tier over the last complete SERIES_S seconds."""
    span = range(snap.now_s - SERIES_S, snap.now_s)
    out: dict[str, Any] = {"t": list(span)}
    for tier in tiers:
        rows = [tier_totals(snap.seconds.get(s, {}), tier) for s in span]
        out[tier] = {
            "count": [c.n for c in rows],
            "p50_ms": [quantile_ms(c.hist, 0.5, c.max_ms) for c in rows],
            "p99_ms": [quantile_ms(c.hist, 0.99, c.max_ms) for c in rows],
        }
    return out


def report(snap: Snapshot, tiers: Mapping[str, SLO], replicas: Mapping[str, int]) -> dict[str, Any]:
    spans = windows(snap)
    return {
        "now_ms": snap.now_s * 1000,
        "windows": list(WINDOWS_S),
        "tiers": {
            tier: tier_report(tier, slo, spans, snap.tier_counts_6h.get(tier, (0, 0))) for tier, slo in tiers.items()
        },
        "processors": processor_report(spans, replicas),
        "series": series(snap, tiers),
    }
