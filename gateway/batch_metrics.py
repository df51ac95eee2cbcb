"""The Batch API's Prometheus metrics at one gateway: the batches it runs and how far each one
has come, the lines it recorded by outcome, the batches it ended by status, and the pace it feeds
lines at with the reason of each cut. No I/O.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

STATUSES = ("completed", "failed", "expired", "cancelled")


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.batches = Counter("tiergate_batches", "Batches this gateway ended, by status", ["status"], registry=r)
        self.batches_running = Gauge("tiergate_batches_running", "Batches this gateway runs now", registry=r)
        self.lines = Counter(
            "tiergate_batch_lines", "Batch lines this gateway recorded, by outcome", ["outcome"], registry=r
        )
        self.lines_total = Gauge(
            "tiergate_batch_lines_in_batch", "Lines of each batch this gateway runs", ["batch"], registry=r
        )
        self.lines_done = Gauge(
            "tiergate_batch_lines_done", "Lines of each batch this gateway runs with an outcome", ["batch"], registry=r
        )
        self.pace = Gauge(
            "tiergate_batch_pace_lines_per_s", "Lines a second this gateway starts now, all batches together",
            registry=r,
        )  # fmt: skip
        self.pace_cuts = Counter(
            "tiergate_batch_pace_cuts", "Cuts of the adaptive pace, by reason: loop_lag or a tier", ["reason"],
            registry=r,
        )  # fmt: skip
        self.deferrals = Counter(
            "tiergate_batch_lines_deferred", "Offers of a batch line refused (429) and made again later",
            registry=r,
        )  # fmt: skip
        self.loop_lag = Gauge(
            "tiergate_event_loop_lag_seconds", "The event loop's worst lateness in the last pace interval",
            registry=r,
        )  # fmt: skip
        self.uploading = Gauge(
            "tiergate_uploads_in_bytes", "Bytes of file uploads this gateway holds in memory, not yet stored",
            registry=r,
        )  # fmt: skip
        self.uploads_refused = Counter(
            "tiergate_uploads_refused", "File uploads refused because [batches] max_uploading_bytes was held",
            registry=r,
        )  # fmt: skip
        for status in STATUSES:
            self.batches.labels(status)
        for outcome in ("completed", "failed"):
            self.lines.labels(outcome)
        self._running: set[str] = set()

    def running(self, batch_id: str, total: int, done: int) -> None:
        """A batch this gateway now feeds: `done` of its `total` lines have their outcome."""
        self._running.add(batch_id)
        self.batches_running.set(len(self._running))
        self.lines_total.labels(batch_id).set(total)
        self.lines_done.labels(batch_id).set(done)

    def line_done(self, batch_id: str, failed: bool) -> None:
        self.lines.labels("failed" if failed else "completed").inc()
        if batch_id in self._running:
            self.lines_done.labels(batch_id).inc()

    def paced(self, lines_per_s: float, loop_lag_ms: float, cut: str | None) -> None:
        """The pace after an interval; `cut`: why it was cut then, if it was."""
        self.pace.set(lines_per_s)
        self.loop_lag.set(loop_lag_ms / 1000.0)
        if cut is not None:
            self.pace_cuts.labels(cut).inc()

    def deferred(self) -> None:
        self.deferrals.inc()

    def ended(self, status: str) -> None:
        self.batches.labels(status).inc()

    def stopped(self, batch_id: str) -> None:
        """The batch is no longer this gateway's: its series go."""
        if batch_id in self._running:
            self._running.discard(batch_id)
            self.batches_running.set(len(self._running))
            self.lines_total.remove(batch_id)
            self.lines_done.remove(batch_id)
