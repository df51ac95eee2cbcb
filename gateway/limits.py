"""An API key's limits at one gateway: holding a request's slot (its request and tokens per
minute and its place among the key's requests in flight, counted in Redis through `TenantStore`
so that every gateway shares them) from its admission to its outcome, and releasing it then,
in the background, with the tokens its Result used.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from core import protocol
from core.clock import RedisClock
from core.errors import RateLimited
from core.protocol import Grant

from .tenant_store import Held, TenantStore

log = logging.getLogger(__name__)


def over_limit(grant: Grant, over: str, now_ms: int) -> RateLimited:
    """The refusal of a request over `grant`'s limit `over`, naming it; a per-minute limit has
    room again when the minute (on Redis's clock) ends."""
    limit = getattr(grant, over)
    if over == "max_concurrency":
        return RateLimited(f"this API key is over its limit of {limit} requests at once (max_concurrency)")
    what = "requests" if over == "rpm" else "tokens"
    return RateLimited(
        f"this API key is over its limit of {limit} {what} a minute ({over})",
        retry_after_s=max(1, 60 - (now_ms // 1000) % 60),
    )


def has_limits(grant: Grant) -> bool:
    """Whether `grant`'s key is held to any limit (an open gateway's never is)."""
    return bool(grant.rpm or grant.tpm or grant.max_concurrency)


class Limits:
    def __init__(self, clock: RedisClock, store: TenantStore | None) -> None:
        self.clock = clock
        self.store = store  # None: no limits are kept (a unit test's gateway)
        self._held_async: dict[str, Held] = {}  # `wait: false` requests holding a slot, by id
        self._releases: set[asyncio.Task[None]] = set()

    async def hold(self, grant: Grant, envelope: protocol.Envelope) -> Held | None:
        """Count a request against its key's limits; None for a key without limits. Over one,
        `RateLimited` is raised and nothing is counted."""
        if self.store is None or not has_limits(grant):
            return None
        now_ms = int(self.clock.now_ms())
        held = Held(grant.key_id, envelope.id, now_ms // 60_000, envelope.deadline_at_ms)
        over = await self.store.acquire(grant, held, now_ms)
        if over is not None:
            raise over_limit(grant, over, now_ms)
        return held

    def release(self, held: Held, reply: protocol.Reply | None) -> None:
        """Free a request's slot and count the tokens its Result used, in the background."""
        if self.store is None:
            return
        tokens = reply.prompt_tokens + reply.completion_tokens if isinstance(reply, protocol.Result) else 0
        task = asyncio.create_task(self._release(self.store, held, tokens))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def keep_async(self, held: Held) -> None:
        """A `wait: false` request's slot: released when its reply reaches this gateway, else
        (another gateway got it, or none came) at its deadline."""
        self._held_async[held.request_id] = held

    def async_reply(self, reply: protocol.Reply) -> None:
        held = self._held_async.pop(reply.id, None)
        if held is not None:
            self.release(held, reply)

    def cancelled(self, request_id: str) -> None:
        """A `wait: false` request cancelled by `DELETE`: its slot is free now if this gateway
        holds it (else at its deadline, or when a worker answers it unrun)."""
        held = self._held_async.pop(request_id, None)
        if held is not None:
            self.release(held, None)

    def sweep(self) -> None:
        """Forget the `wait: false` slots past their deadline: Redis has freed them already."""
        now_ms = self.clock.now_ms()
        for request_id in [i for i, held in self._held_async.items() if held.deadline_ms < now_ms]:
            del self._held_async[request_id]

    async def drain(self) -> None:
        """Wait for the releases still in flight (at shutdown)."""
        await asyncio.gather(*self._releases, return_exceptions=True)

    @staticmethod
    async def _release(store: TenantStore, held: Held, tokens: int) -> None:
        try:
            await store.release(held, tokens)
        except (RedisError, OSError) as exc:  # the slot frees itself at the request's deadline
            log.warning("cannot release a limit slot", extra={"id": held.request_id, "error": str(exc)})
