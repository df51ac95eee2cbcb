"""Prometheus histogram bounds that the gateway's and the workers' /metrics share: one latency set
for every tier, with each tier's objective added, and the batch-size set. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

# Prometheus buckets (seconds): one set for every tier, 0.1 ms .. 300 s, roughly 1-2.5-5 steps,
# with each tier's own latency objective added so `le="<objective>"` counts exactly what met it.
BASE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def latency_buckets_s(objectives_ms: Iterable[float]) -> tuple[float, ...]:
    return tuple(sorted(set(BASE_BUCKETS_S) | {round(ms / 1000.0, 6) for ms in objectives_ms}))
