"""The simulated backend: waits as the processor's latency model says, computes real outputs.

Each batch costs the energy and money its FLOPs cost on this processor (relative efficiency and
cost per FLOP against the H100 baseline), apportioned to each request by its share of the FLOPs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from gateway.protocol import Envelope
from gateway.settings import LatencyModel, Settings

from .. import models
from . import Completion


def service_time_ms(latency: LatencyModel, batch_size: int, rng: random.Random) -> float:
    """The simulated service time of one batch, in ms (pure, seeded by `rng`)."""
    extra = latency.per_item_ms * (batch_size - 1)
    if latency.kind == "variable":
        high = latency.max_ms if latency.max_ms is not None else latency.min_ms
        mode = latency.mode_ms if latency.mode_ms is not None else latency.min_ms
        return rng.triangular(latency.min_ms, high, mode) + extra
    return latency.min_ms + extra


class SimulatedBackend:
    def __init__(self, settings: Settings, pool_name: str, rng: random.Random | None = None) -> None:
        pool = settings.pools[pool_name]
        self.processor = settings.processors[pool.processor]
        self.models = settings.models
        self._rng = rng or random.Random()
        accounting = settings.accounting
        self._joules_per_flop = 1.0 / (self.processor.energy_efficiency * accounting.baseline_flops_per_joule)
        self._usd_per_flop = self.processor.cost_per_flop * accounting.baseline_usd_per_pflop / 1e15

    async def run(self, batch: Sequence[Envelope]) -> list[Completion]:
        delay_ms = service_time_ms(self.processor.latency, len(batch), self._rng)
        loop = asyncio.get_running_loop()
        done_at = loop.time() + delay_ms / 1000.0
        outputs = [models.compute(self.models[env.model], env.input) for env in batch]
        work = [models.flops(self.models[env.model], env.input, out) for env, out in zip(batch, outputs, strict=True)]
        total_flops = sum(work)
        batch_j = total_flops * self._joules_per_flop
        batch_usd = total_flops * self._usd_per_flop
        await asyncio.sleep(max(0.0, done_at - loop.time()))
        return [
            Completion(output=out, energy_j=batch_j * f / total_flops, cost=batch_usd * f / total_flops)
            for out, f in zip(outputs, work, strict=True)
        ]

    async def close(self) -> None:
        return None
