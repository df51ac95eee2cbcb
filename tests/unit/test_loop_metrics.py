"""The loop-only metric families expose exactly what prometheus-client's own metrics expose for the
same updates: names, labels, bucket counts, sums and `_created` samples."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.25, 1.0)
# On a bound, between bounds, below the first, above the last, zero.
OBSERVED = (0.001, 0.0049, 0.005, 0.0051, 0.0, 0.3, 1.0, 7.5, 0.0001, 0.25)


def exposed(registry: CollectorRegistry) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float | str]:
    """Every sample as (family type, sample name, labels): value; `_created` as "set" (a time)."""
    samples: dict[tuple[str, str, tuple[tuple[str, str], ...]], float | str] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            key = (family.type, sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = "set" if sample.name.endswith("_created") and sample.value > 0 else round(sample.value, 12)
    return samples


def test_a_histogram_exposes_what_prometheus_clients_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("t_latency_seconds", "Latency", ["tier", "pool"], ours, buckets=BUCKETS)
    reference = Histogram("t_latency_seconds", "Latency", ["tier", "pool"], registry=theirs, buckets=BUCKETS)
    for i, value in enumerate(OBSERVED):
        labels = ("realtime", "a") if i % 3 else ("batch", "b")
        mine.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)

    assert exposed(ours) == exposed(theirs)
    assert (
        exposed(ours)[("histogram", "t_latency_seconds_bucket", (("le", "0.005"), ("pool", "a"), ("tier", "realtime")))]
        == 4
    )


def test_a_counter_and_a_gauge_expose_what_prometheus_clients_do() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter, gauge = (
        LoopCounter("t_requests", "Requests", ["tier"], ours),
        LoopGauge("t_in_flight", "In flight", ["tier"], ours),
    )
    ref_counter = Counter("t_requests", "Requests", ["tier"], registry=theirs)
    ref_gauge = Gauge("t_in_flight", "In flight", ["tier"], registry=theirs)
    for tier, amount in (("realtime", 1.0), ("batch", 2.5), ("realtime", 0.25)):
        counter.labels(tier).inc(amount)
        ref_counter.labels(tier).inc(amount)
        gauge.labels(tier).inc()
        ref_gauge.labels(tier).inc()
    gauge.labels("batch").dec(3)
    ref_gauge.labels("batch").dec(3)
    gauge.labels("idle").set(7)
    ref_gauge.labels("idle").set(7)

    assert exposed(ours) == exposed(theirs)
    assert exposed(ours)[("counter", "t_requests_total", (("tier", "realtime"),))] == 1.25


def test_misuse_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("t_requests", "Requests", ["tier"], registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("realtime").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("realtime", "extra")
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("t_requests", "Again", ["tier"], registry=registry)
