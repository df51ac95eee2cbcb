"""Which streams a busy worker of a pool serving several tiers reads ahead: its lowest tier, and
a stricter one only while entries of several tenants came from it in the last MIXED_S (so that
its batcher can take them tenant by tenant). Plain values, no Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import pytest

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


class Reads:
    """A consumer that records each read (streams, block) and hands out `first` on the first."""

    def __init__(self, worker: WorkerProcess, first: list[object]) -> None:
        self.worker, self.first = worker, first
        self.calls: list[tuple[list[str], int | None]] = []

    async def read(self, count: int, block_ms: int | None, streams: list[str] | None = None) -> list[object]:
        self.calls.append((list(streams or []), block_ms))
        if len(self.calls) > 1:
            self.worker.stopping.set()
            return []
        return self.first

    async def drain(self) -> list[object]:
        return []


async def test_a_worker_that_emptied_its_streams_reads_again_when_its_batch_ends_not_at_once(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = WorkerProcess(make_settings(), "inferentia-mixed", "redis://127.0.0.1:1")
    (batch,) = (s for s, rank in worker.priority.items() if rank == 1)
    reads = Reads(worker, [SimpleNamespace(stream=batch)])  # one entry, of the many asked for
    worker.consumer = reads  # type: ignore[assignment]  # made once Redis answers, which it never does here
    loop = asyncio.get_running_loop()

    def batch_ended() -> None:
        worker.metrics.running = 0
        worker.batch_done.set()

    async def admit(deliveries: list[object]) -> None:
        if deliveries:  # its batch starts; it ends once the read loop waits for something
            worker.metrics.running = len(deliveries)
            loop.call_soon(batch_ended)

    monkeypatch.setattr(worker, "_admit", admit)
    await asyncio.wait_for(worker._read_loop(), timeout=10)
    every = sorted(worker.priority)
    # the streams were empty, so no instant read of the lowest tier while the batch ran: the next
    # read is the blocking one of every stream, once it ended
    assert [(sorted(streams), block is not None) for streams, block in reads.calls] == [(every, True), (every, True)]
