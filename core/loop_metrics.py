"""Prometheus counters, gauges and histograms for values that only the event loop's thread
changes and reads (the gateway's per-request series, scraped by a handler on the same loop):
plain floats with no lock, rendered as metric families when the registry is collected. No I/O.

prometheus-client's own metrics take a lock and a few checks on every update, about 1 µs each;
a request updates a dozen of them. These keep its series, names and `_created` samples.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

INF = float("inf")


class CounterValue:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount})")
        self.value += amount


class GaugeValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramValue:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: one increment per observation
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # `le`: the first bound >= value
        self.sum += value


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


class _Family(Collector, Generic[V, F]):
    """A metric family of one kind; `labels(*values)` gives (and keeps) the child of those values,
    and a collection renders each child's samples into the family (`_add`)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], V] = {}
        registry.register(self)

    def labels(self, *values: str) -> V:
        values = tuple(str(value) for value in values)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new()
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._empty()

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for values, child in self._children.items():  # on the loop's thread: nothing changes meanwhile
            self._add(family, values, child)
        yield family

    def _new(self) -> V:
        raise NotImplementedError

    def _empty(self) -> F:
        raise NotImplementedError

    def _add(self, family: F, values: tuple[str, ...], child: V) -> None:
        raise NotImplementedError


class LoopCounter(_Family[CounterValue, CounterMetricFamily]):
    def _new(self) -> CounterValue:
        return CounterValue()

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: CounterMetricFamily, values: tuple[str, ...], child: CounterValue) -> None:
        family.add_metric(values, child.value, created=child.created)


class LoopGauge(_Family[GaugeValue, GaugeMetricFamily]):
    def _new(self) -> GaugeValue:
        return GaugeValue()

    def _empty(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: GaugeMetricFamily, values: tuple[str, ...], child: GaugeValue) -> None:
        family.add_metric(values, child.value)


class LoopHistogram(_Family[HistogramValue, HistogramMetricFamily]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        self.bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        self._le: tuple[str, ...] = tuple(floatToGoString(b) for b in self.bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: HistogramMetricFamily, values: tuple[str, ...], child: HistogramValue) -> None:
        cumulative, buckets = 0, []
        for le, count in zip(self._le, child.counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(values, buckets, child.sum)
        labels = dict(zip(self.labelnames, values, strict=True))
        family.samples.append(Sample(f"{self.name}_created", labels, child.created))
