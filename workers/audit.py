"""The audit entry of each request a worker answers: who sent it, the region and data class it
asked for, and where it ran (this pool, its region and clearance, this worker). Pure: the
`Consumer` appends a published batch's entries to the audit stream, as one stream entry, in the
pipeline of the replies.
"""

from __future__ import annotations

from collections.abc import Sequence

from core import protocol
from core.protocol import Envelope, Reply
from core.settings import Settings

DONE = "done"


class AuditTrail:
    """Builds the audit entries of one worker's replies, and the stream entry of a batch of them."""

    def __init__(self, settings: Settings, pool_name: str, worker: str) -> None:
        pool = settings.pools[pool_name]
        self.enabled = settings.audit.enabled
        self.maxlen = settings.audit.maxlen
        self.max_age_ms = settings.audit.max_age_s * 1000
        self.pool = pool_name
        self.pool_region = pool.region
        self.clearance = pool.clearance
        self.worker = worker

    def entry(self, envelope: Envelope, reply: Reply) -> protocol.AuditEntry:
        outcome = DONE if isinstance(reply, protocol.Result) else reply.code
        return protocol.AuditEntry(
            id=envelope.id,
            tier=envelope.tier,
            model=envelope.model,
            region=envelope.region,
            pool=self.pool,
            pool_region=self.pool_region,
            clearance=self.clearance,
            worker=self.worker,
            at_ms=reply.finished_at_ms,
            outcome=outcome,
            tenant=envelope.tenant,
            key_id=envelope.key_id,
            sensitivity=envelope.sensitivity,
        )

    def payload(self, answered: Sequence[tuple[Envelope, Reply]]) -> bytes:
        """One audit stream entry for the requests of a published batch: a lone request's bare
        `AuditEntry`, else the `AuditBatch` of them all (one command a batch, not one a request)."""
        entries = tuple(self.entry(envelope, reply) for envelope, reply in answered)
        return protocol.encoder.encode(entries[0] if len(entries) == 1 else protocol.AuditBatch(entries))

    def min_id(self, now_ms: int) -> str | None:
        """The oldest entry id to keep by age (XTRIM MINID), or None without an age bound."""
        return f"{now_ms - self.max_age_ms}-0" if self.max_age_ms and now_ms > self.max_age_ms else None
