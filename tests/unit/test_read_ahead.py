"""Which streams a busy worker of a pool serving several tiers reads ahead: its lowest tier, and
a stricter one only while entries of several tenants came from it in the last MIXED_S (so that
its batcher can take them tenant by tenant). Plain values, no Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from core.settings import Settings
from workers.process import MIXED_S, WorkerProcess


async def test_a_busy_worker_reads_a_stricter_tier_ahead_only_while_several_tenants_send_to_it(
    make_settings: Callable[..., Settings],
) -> None:
    worker = WorkerProcess(make_settings(), "inferentia-mixed", "redis://127.0.0.1:1")
    (interactive,) = (s for s, rank in worker.priority.items() if rank == 0)
    (batch,) = (s for s, rank in worker.priority.items() if rank == 1)
    full = 2 * worker.batcher.max_batch
    now = asyncio.get_running_loop().time()
    assert worker._rooms() == {interactive: full, batch: full}  # idle: every stream
    worker.metrics.running = 4  # a batch runs
    assert worker._rooms() == {interactive: 0, batch: full}
    worker.tenants_seen[interactive] = {"a": now, "": now - 2 * MIXED_S}
    assert worker._rooms() == {interactive: 0, batch: full}  # one tenant lately
    worker.tenants_seen[interactive]["b"] = now - MIXED_S / 2
    assert worker._rooms() == {interactive: full, batch: full}  # two: read it ahead
    worker.tenants_seen[interactive]["b"] = now - 2 * MIXED_S
    assert worker._rooms() == {interactive: 0, batch: full}  # b gone quiet
    assert worker.tenants_seen[interactive] == {"a": now}  # and forgotten
