"""What a load test measured: per tier, outcome counts, an HDR histogram of latencies (and of
time to first token), SLO attainment and per-second timelines; merging and a wire form for
combining agents' parts. No I/O.

Latencies run from each request's intended send time to its answer, in microseconds inside the
histograms and milliseconds everywhere else. The latency percentiles cover `ok` answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

OUTCOMES = ("ok", "shed", "deadline", "errors")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_LOWEST_US, _HIGHEST_US = 1, 3_600_000_000  # 1 µs .. 1 h


def new_histogram(significant_figures: int = 3) -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, significant_figures)


def _record(histogram: HdrHistogram, value_ms: float) -> None:
    histogram.record_value(min(_HIGHEST_US, max(_LOWEST_US, round(value_ms * 1000.0))))


@dataclass(slots=True)
class Sample:
    """One request's end: which arrival, its outcome and its latency from the intended send time."""

    index: int
    tier: str
    outcome: str  # one of OUTCOMES
    latency_ms: float
    done_s: float  # when the answer came, seconds after the run started
    server_ms: float | None = None  # the gateway's own total_ms, when it reported one
    ttft_ms: float | None = None  # time to first token, streams only
    status: int = 0  # HTTP status, 0 when none


@dataclass(slots=True)
class Window:
    """One second of one tier: answers of every outcome, and the `ok` latencies."""

    answered: int = 0
    ok: int = 0
    histogram: HdrHistogram = field(default_factory=lambda: new_histogram(2))


class TierStats:
    def __init__(self, slo_ms: float) -> None:
        self.slo_ms = slo_ms
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.within_slo = 0
        self.latency = new_histogram()
        self.ttft = new_histogram()
        self.timeline: dict[int, Window] = {}

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    def add(self, sample: Sample) -> None:
        self.counts[sample.outcome] += 1
        window = self.timeline.setdefault(int(sample.done_s), Window())
        window.answered += 1
        if sample.outcome != "ok":
            return
        window.ok += 1
        _record(self.latency, sample.latency_ms)
        _record(window.histogram, sample.latency_ms)
        if sample.ttft_ms is not None:
            _record(self.ttft, sample.ttft_ms)
        if sample.latency_ms <= self.slo_ms:
            self.within_slo += 1

    def merge(self, other: TierStats) -> None:
        for outcome in OUTCOMES:
            self.counts[outcome] += other.counts[outcome]
        self.within_slo += other.within_slo
        self.latency.add(other.latency)
        self.ttft.add(other.ttft)
        for second, theirs in other.timeline.items():
            mine = self.timeline.setdefault(second, Window())
            mine.answered += theirs.answered
            mine.ok += theirs.ok
            mine.histogram.add(theirs.histogram)

    def percentile_ms(self, percentile: float, histogram: HdrHistogram | None = None) -> float | None:
        h = self.latency if histogram is None else histogram
        return h.get_value_at_percentile(percentile) / 1000.0 if h.get_total_count() else None

    def to_wire(self) -> dict[str, Any]:
        return {
            "slo_ms": self.slo_ms,
            "counts": self.counts,
            "within_slo": self.within_slo,
            "latency": self.latency.encode(),
            "ttft": self.ttft.encode(),
            "timeline": {s: [w.answered, w.ok, w.histogram.encode()] for s, w in self.timeline.items()},
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> TierStats:
        stats = cls(float(wire["slo_ms"]))
        stats.counts = {outcome: int(wire["counts"][outcome]) for outcome in OUTCOMES}
        stats.within_slo = int(wire["within_slo"])
        stats.latency = HdrHistogram.decode(wire["latency"])
        stats.ttft = HdrHistogram.decode(wire["ttft"])
        for second, (answered, ok, encoded) in wire["timeline"].items():
            stats.timeline[int(second)] = Window(int(answered), int(ok), HdrHistogram.decode(encoded))
        return stats


class Recorder:
    """Every tier's stats for one run, plus the queue depths sampled while it ran."""

    def __init__(self, slo_ms: Mapping[str, float], keep_samples: bool = True) -> None:
        self.tiers = {tier: TierStats(ms) for tier, ms in slo_ms.items()}
        self.fired = dict.fromkeys(slo_ms, 0)  # requests sent so far, answered or not
        self.samples: list[Sample] | None = [] if keep_samples else None
        self.depth: dict[str, list[tuple[float, int]]] = {}  # tier -> [(seconds, XLEN)]
        self.duration_s = 0.0

    def sent(self, tier: str) -> None:
        self.fired[tier] += 1

    def add(self, sample: Sample) -> None:
        self.tiers[sample.tier].add(sample)
        if self.samples is not None:
            self.samples.append(sample)

    def merge(self, other: Recorder) -> None:
        for tier, stats in other.tiers.items():
            self.tiers.setdefault(tier, TierStats(stats.slo_ms)).merge(stats)  # never alias a part
            self.fired[tier] = self.fired.get(tier, 0) + other.fired.get(tier, 0)
        self.duration_s = max(self.duration_s, other.duration_s)

    def to_wire(self) -> dict[str, Any]:
        return {
            "tiers": {tier: stats.to_wire() for tier, stats in self.tiers.items()},
            "fired": self.fired,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Recorder:
        recorder = cls({}, keep_samples=False)
        recorder.tiers = {tier: TierStats.from_wire(t) for tier, t in wire["tiers"].items()}
        recorder.fired = {tier: int(n) for tier, n in wire["fired"].items()}
        recorder.duration_s = float(wire["duration_s"])
        return recorder


def attainment_pct(stats: TierStats) -> float | None:
    """Share of sent requests answered ok within the tier's SLO latency, in percent."""
    return 100.0 * stats.within_slo / stats.sent if stats.sent else None


def summary(recorder: Recorder, objectives: Mapping[str, float]) -> dict[str, Any]:
    """The end-of-run numbers, per tier (tiers nothing was sent to are left out)."""
    tiers: dict[str, Any] = {}
    for tier, stats in recorder.tiers.items():
        if not stats.sent:
            continue
        attained = attainment_pct(stats)
        row: dict[str, Any] = {"sent": stats.sent, **stats.counts}
        row.update({f"p{p:g}_ms": stats.percentile_ms(p) for p in PERCENTILES})
        row["max_ms"] = stats.latency.get_max_value() / 1000.0 if stats.latency.get_total_count() else None
        if stats.ttft.get_total_count():
            row["ttft_p50_ms"] = stats.percentile_ms(50.0, stats.ttft)
            row["ttft_p99_ms"] = stats.percentile_ms(99.0, stats.ttft)
        row["slo_latency_ms"] = stats.slo_ms
        row["slo_objective_pct"] = objectives.get(tier)
        row["slo_attainment_pct"] = attained
        row["slo_met"] = attained is not None and attained >= objectives.get(tier, 100.0)
        tiers[tier] = row
    sent = sum(row["sent"] for row in tiers.values())
    duration_s = recorder.duration_s
    return {
        "duration_s": round(duration_s, 3),
        "sent": sent,
        "achieved_rate": round(sent / duration_s, 3) if duration_s else None,
        "slo_met": bool(tiers) and all(row["slo_met"] for row in tiers.values()),
        "tiers": tiers,
    }


def merged(parts: Iterable[Recorder]) -> Recorder:
    total = Recorder({}, keep_samples=False)
    for part in parts:
        total.merge(part)
    return total
