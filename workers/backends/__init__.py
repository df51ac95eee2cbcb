"""The backend contract: something that runs one batch of requests on one processor.

A backend gets the whole batch in one call and answers one `Completion` per request, in order.
`make_backend` builds the backend a pool's settings name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from gateway.protocol import Envelope
from gateway.settings import Settings


class Completion(msgspec.Struct, frozen=True):
    output: str | list[float]
    energy_j: float
    cost: float


class Backend(Protocol):
    async def run(self, batch: Sequence[Envelope]) -> list[Completion]: ...

    async def close(self) -> None: ...


def make_backend(settings: Settings, pool_name: str) -> Backend:
    pool = settings.pools[pool_name]
    if pool.backend == "simulated":
        from .simulated import SimulatedBackend

        return SimulatedBackend(settings, pool_name)
    raise ValueError(f"pools.{pool_name}.backend: unknown backend {pool.backend!r}")
