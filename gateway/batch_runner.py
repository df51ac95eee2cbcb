"""Runs batches: any gateway serving the batch tier takes a batch whose lease is free (a new one,
or one whose runner died), holds the lease while it runs it, validates its input, feeds its lines
as ordinary batch-tier requests (at most `max_in_flight_per_batch` of a batch and `max_in_flight`
of all at once, taken in turn by the batches waiting, at the pace `PaceController` sets), records
each line's one outcome, and assembles the output and error files. Its Redis I/O is `BatchStore`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence

import msgspec

from core import protocol
from core.errors import BackendUnavailable, QueueFull

from . import batch_lines
from .batch_lines import Line
from .batch_metrics import BatchMetrics
from .batch_pace import HELD, Observation, PaceController, stricter_tiers
from .batch_store import OUTCOMES_WRITTEN_AT_ONCE, BatchStore, FileGone
from .calls import Calls
from .loop_lag import LoopLag

log = logging.getLogger(__name__)

VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})
_WINDOW = re.compile(r"^([1-9][0-9]*)([smh])$")
MAX_WINDOW_S = 86_400
RETRY_S = 0.2  # the wait before a line's outcome is recorded again after Redis refused it


def window_s(window: str) -> int | None:
    """The seconds of a completion window (`24h`, or a shorter `90m`, `30s`); None when invalid."""
    match = _WINDOW.fullmatch(window)  # not `$`: it would let a trailing newline through
    if match is None:
        return None
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    return seconds if seconds <= MAX_WINDOW_S else None


class Pace:
    """At most `per_s` starts a second, spaced evenly (0: no bound); shared by every batch of a
    gateway, so a batch's lines cannot take the CPU the stricter tiers' requests need."""

    def __init__(self, per_s: float) -> None:
        self.gap_s = 0.0
        self.next_at = 0.0
        self.set(per_s)

    def set(self, per_s: float) -> None:
        """Start lines at `per_s` a second from the next one on."""
        self.gap_s = 1.0 / per_s if per_s > 0 else 0.0

    async def wait(self) -> None:
        if not self.gap_s:
            return
        now = asyncio.get_running_loop().time()
        start_at = max(now, self.next_at)
        self.next_at = start_at + self.gap_s
        if start_at > now:
            await asyncio.sleep(start_at - now)


class BatchRunner:
    def __init__(self, calls: Calls, store: BatchStore, metrics: BatchMetrics) -> None:
        self.calls = calls
        self.store = store
        self.metrics = metrics
        self.settings = store.settings
        self.owner = calls.state.gateway_id
        # One waiter per batch at a time, served first come first served: batches take turns.
        self.slots = asyncio.Semaphore(self.settings.max_in_flight)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.controller = PaceController(self.settings)
        adaptive = self.settings.pace == "adaptive"
        self.pace = Pace(self.controller.lines_per_s if adaptive else self.settings.max_lines_per_s)
        self.metrics.paced(self.pace_lines_per_s(), 0.0, None)
        self.recent = calls.metrics.recent
        if adaptive and batch_lines.BATCH_TIER in calls.state.router.tiers:  # a gateway that runs batches
            self.recent.watch(stricter_tiers(calls.state.settings, batch_lines.BATCH_TIER))
        self.loop_lag = LoopLag()
        self.stopping = asyncio.Event()  # the gateway is shutting down: start no new line

    def pace_lines_per_s(self) -> float:
        return 1.0 / self.pace.gap_s if self.pace.gap_s else 0.0

    async def steer(self) -> None:
        """Judge the last interval and set the pace for the next (the adaptive pace's loop step)."""
        lag_ms = self.loop_lag.take_ms()
        medians_ms, answered = self.recent.take()
        seen = Observation(lag_ms, medians_ms, answered, feeding=bool(self.running))
        self.pace.set(self.controller.observe(seen))
        cut = self.controller.reason if self.controller.reason not in ("calm", "idle", HELD) else None
        self.metrics.paced(self.pace_lines_per_s(), lag_ms, cut)

    def now_s(self) -> int:
        return int(self.calls.state.clock.now_ms() / 1000)

    async def look(self) -> None:
        """Take every active batch whose lease is free (the background loop's step); with Redis
        away, the next step tries again."""
        with contextlib.suppress(BackendUnavailable):
            for batch_id in await self.store.active():
                await self._take(batch_id)

    async def take(self, batch_id: str) -> None:
        """Start a batch just created through this gateway now, rather than at the next look
        (up to `poll_interval_s` later), if its lease is free; with Redis away, a look takes it."""
        with contextlib.suppress(BackendUnavailable):
            await self._take(batch_id)

    async def _take(self, batch_id: str) -> None:
        if self.stopping.is_set() or batch_id in self.running:
            return
        if await self.store.acquire(batch_id, self.owner):
            self._start(batch_id)

    def _start(self, batch_id: str) -> None:
        task = asyncio.create_task(self._hold(batch_id))
        self.running[batch_id] = task
        task.add_done_callback(lambda _: self.running.pop(batch_id, None))

    async def close(self, grace_s: float) -> None:
        """Stop every batch this gateway runs: start no new line, let the started ones finish and
        record their outcomes for up to `grace_s`, then hand the batches back at once (another
        gateway takes them up at its next look rather than after the leases' TTL)."""
        self.stopping.set()
        held = dict(self.running)
        if held:
            await asyncio.wait(held.values(), timeout=grace_s)
        for task in held.values():
            task.cancel()
        await asyncio.gather(*held.values(), return_exceptions=True)
        for batch_id in held:  # another gateway takes them up at its next look, not after the lease's TTL
            await self.store.release(batch_id, self.owner)

    async def _hold(self, batch_id: str) -> None:
        """Run a batch while renewing its lease; a lease lost (another gateway took it) stops it."""
        drive = asyncio.create_task(self._drive(batch_id))
        renew_s = self.settings.lease_ttl_s / 3
        try:
            while not drive.done():
                await asyncio.wait([drive], timeout=renew_s)
                if not drive.done() and not await self._renewed(batch_id):
                    log.warning("batch lease lost", extra={"batch": batch_id})
                    break
        finally:
            if not drive.done():
                drive.cancel()
            await asyncio.gather(drive, return_exceptions=True)
            self.metrics.stopped(batch_id)
        if not drive.cancelled() and drive.exception() is not None:
            log.error("batch runner failed", exc_info=drive.exception(), extra={"batch": batch_id})
            await self.store.release(batch_id, self.owner)

    async def _renewed(self, batch_id: str) -> bool:
        try:
            return await self.store.renew(batch_id, self.owner)
        except BackendUnavailable:
            return True  # Redis is away: keep going; the lease may lapse and the line records stay once

    async def _drive(self, batch_id: str) -> None:
        found = await self.store.batch(batch_id)
        if found is None:  # its record expired: nothing left to run
            await self.store.forget(batch_id, self.owner)
            return
        if found[0].status in TERMINAL:
            await self.store.finish(found[0], self.owner)
            return
        record, _, cancel = found
        state = self.calls.state
        try:
            content = await self.store.content(record.input_file_id)
            if content is None:
                raise FileGone
            lines, errors = await batch_lines.parse(state.settings, state.router, record.endpoint, content.pieces)
        except FileGone:
            lines = []
            errors = [protocol.BatchError("file_not_found", f"input file {record.input_file_id} no longer exists")]
        if record.status == VALIDATING:
            if cancel or errors:
                record = msgspec.structs.replace(record, cancelling_at=cancel)
                await self._end(record, lines, CANCELLED if cancel else FAILED, errors)
                return
            record = msgspec.structs.replace(record, status=IN_PROGRESS, in_progress_at=self.now_s(), total=len(lines))
            await self.store.save(record)
            log.info("batch in progress", extra={"batch": batch_id, "lines": len(lines)})
        if record.status == IN_PROGRESS:
            record = await self._feed(record, lines)
            if record.status == IN_PROGRESS and self.stopping.is_set():
                return  # handed back unfinished: another gateway goes on with it
        await self._end(record, lines, _ending(record), ())

    async def _feed(self, record: protocol.BatchRecord, lines: list[Line]) -> protocol.BatchRecord:
        """Run every line without an outcome until all have one, or the batch is cancelled or its
        window ends; lines already started finish. The record as the batch then stands."""
        recorded = await self.store.recorded(record.id)
        pending = [line for line in lines if line.custom_id not in recorded]
        self.metrics.running(record.id, record.total, record.total - len(pending))
        own = asyncio.Semaphore(self.settings.max_in_flight_per_batch)
        started: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(record, stop))
        try:
            for line in pending:
                await own.acquire()
                await self.slots.acquire()
                await self.pace.wait()
                if stop.is_set() or self.stopping.is_set():
                    self.slots.release()
                    break
                task = asyncio.create_task(self._line(record, line, stop))
                started.add(task)
                task.add_done_callback(self._freed(started, own))
            await asyncio.gather(*started)
        finally:
            watcher.cancel()
            for task in started:
                task.cancel()
        return await self._current(record)

    def _freed(self, started: set[asyncio.Task[None]], own: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        """What a finished line gives back: its place among its batch's lines and among all."""

        def free(task: asyncio.Task[None]) -> None:
            started.discard(task)
            own.release()
            self.slots.release()

        return free

    async def _watch(self, record: protocol.BatchRecord, stop: asyncio.Event) -> None:
        """Set `stop` once the batch is cancelled or its window has ended."""
        while True:
            cancelled = False
            with contextlib.suppress(BackendUnavailable):
                found = await self.store.batch(record.id)
                cancelled = found is not None and found[2] > 0
            if cancelled or self.now_s() >= record.expires_at:
                stop.set()
                return
            await asyncio.sleep(self.settings.poll_interval_s / 2)

    async def _current(self, record: protocol.BatchRecord) -> protocol.BatchRecord:
        """The record after feeding stopped: cancelling, or finalizing when every line has its outcome."""
        found = await self.store.batch(record.id)
        if found is not None and found[2] > 0:
            record = msgspec.structs.replace(record, status=CANCELLING, cancelling_at=found[2])
        elif len(await self.store.recorded(record.id)) >= record.total:
            record = msgspec.structs.replace(record, status=FINALIZING, finalizing_at=self.now_s())
        else:
            return record  # the window ended: expired
        await self.store.save(record)
        return record

    async def _line(self, record: protocol.BatchRecord, line: Line, stop: asyncio.Event) -> None:
        """Run one line until it has an outcome (a 429 or Redis away: wait, offer it again, unless
        the batch was stopped meanwhile), then record it; a line recorded elsewhere first keeps
        that outcome."""
        while True:
            try:
                outcome = await batch_lines.run(self.calls, record, line)
                break
            except QueueFull as exc:
                await asyncio.sleep(min(float(exc.retry_after_s), self.settings.retry_after_max_s))
            except BackendUnavailable:
                await asyncio.sleep(RETRY_S)
            if stop.is_set() or self.stopping.is_set():
                return  # never queued: it ends batch_cancelled or batch_expired
        while True:
            try:
                if await self.store.record(record.id, line.custom_id, outcome):
                    self.metrics.line_done(record.id, outcome.failed)
                return
            except BackendUnavailable:
                await asyncio.sleep(RETRY_S)

    async def _end(
        self, record: protocol.BatchRecord, lines: list[Line], status: str, errors: Sequence[protocol.BatchError]
    ) -> None:
        """Give every line without an outcome its batch_expired or batch_cancelled one, close the
        batch, write its output and error files, and store its final record."""
        now = self.now_s()
        if status in (EXPIRED, CANCELLED) and record.total:
            recorded = await self.store.recorded(record.id)
            missing = [line for line in lines if line.custom_id not in recorded]
            ending = batch_lines.expired if status == EXPIRED else batch_lines.cancelled
            for start in range(0, len(missing), OUTCOMES_WRITTEN_AT_ONCE):  # the loop serves others between parts
                part = missing[start : start + OUTCOMES_WRITTEN_AT_ONCE]
                await self.store.record_many(record.id, [(line.custom_id, ending(line)) for line in part])
        outcomes = await self.store.close(record.id)
        output_id, error_id = await self._files(record, outcomes, now)
        stamps = {
            f"{status}_at": now,
            **({"cancelling_at": record.cancelling_at or now} if status == CANCELLED else {}),
        }
        final = msgspec.structs.replace(
            record, status=status, output_file_id=output_id, error_file_id=error_id, errors=tuple(errors), **stamps
        )
        await self.store.finish(final, self.owner)
        self.metrics.ended(status)
        log.info("batch ended", extra={"batch": record.id, "status": status, "lines": len(outcomes)})

    async def _files(
        self, record: protocol.BatchRecord, outcomes: list[protocol.LineOutcome], now: int
    ) -> tuple[str, str]:
        """Write the output and error files (each only when it has lines); their ids. A file id is
        the batch's own, so a runner finishing a batch again writes the same files."""
        ids = []
        for kind, failed in (("output", False), ("error", True)):
            parts = [part for o in outcomes if o.failed == failed for part in (o.json, b"\n")]
            if not parts:
                ids.append("")
                continue
            file_id = f"file-{record.id.removeprefix('batch_')}-{kind}"
            name = f"{record.id}_{kind}.jsonl"
            file = protocol.FileRecord(file_id, sum(map(len, parts)), now, name, "batch_output", record.tenant)
            await self.store.put_file(file, parts)
            ids.append(file_id)
        return ids[0], ids[1]


def _ending(record: protocol.BatchRecord) -> str:
    """How a batch whose feeding stopped ends: as it was cancelled, done, or out of time."""
    if record.status == CANCELLING:
        return CANCELLED
    if record.status == FINALIZING:
        return COMPLETED
    return EXPIRED
