"""Fair shares of a busy tier between tenants, at one gateway: pure arithmetic and an in-memory
tally, no I/O. While more than one tenant is active on a request stream, a tenant admitted at
less than its weighted share of the workers' capacity and holding less than all the requests in
flight that keep them busy (a light one) is never held back; the others (heavy ones) share, by
weight and max-min fairly, what the light ones leave of the requests in flight that keep the
stream's workers busy. So a tenant flooding a tier is refused (429) before it builds the queue a
lighter tenant's requests would wait behind, and still gets what is left of the capacity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.errors import QueueFull

from .admission import Capacity

# Requests in flight that keep a stream's workers busy: their batch slots (capacity x service
# time) twice, for the batch running and the one that waits to start (the requests on their way
# and the replies not yet back among them). More only queues: workers take a tier's entries
# tenant by tenant, but only those they hold; a partial next batch lets a light tenant's request
# join it rather than wait for one that is already full (docs/benchmarks.md, "Fair shares").
HEADROOM = 2.0
RATE_S = 1.0  # the time constant of each tenant's admitted rate (an exponentially decaying count)


def budget(capacity: Capacity | None) -> int | None:
    """The requests in flight a stream's workers need to stay busy; None when no worker is known."""
    if capacity is None or capacity.per_s <= 0:
        return None
    return max(1, math.ceil(capacity.per_s * capacity.service_ms / 1000.0 * HEADROOM))


def fair_cap(tenant: str, in_flight: Mapping[str, int], weights: Mapping[str, float], total: float) -> float:
    """How many of `total` requests in flight `tenant` may hold, with every tenant of `weights`
    active: its weighted share, plus what the others leave of theirs (max-min fairness)."""
    weight_sum = sum(weights.values())
    share = {name: total * weight / weight_sum for name, weight in weights.items()}
    used_by_others = sum(min(in_flight.get(name, 0), share[name]) for name in weights if name != tenant)
    return max(share[tenant], total - used_by_others)


@dataclass(slots=True)
class _Stream:
    in_flight: dict[str, int] = field(default_factory=dict)  # tenant -> requests admitted, not yet ended
    seen_at: dict[str, float] = field(default_factory=dict)  # tenant -> when it was last admitted
    weights: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # tenant -> admitted a second, at seen_at

    def heavy(self, tenant: str, share: float, per_s: float, total: int, now_s: float) -> bool:
        """Whether `tenant` is admitted at its `share` of the capacity or more, or holds the whole
        in-flight budget: a flood that starts is held as soon as it fills the queue the workers
        need, not only once its rate has grown past its share (which takes a second's requests)."""
        return self.rate(tenant, now_s) >= per_s * share or self.in_flight.get(tenant, 0) >= total

    def rate(self, tenant: str, now_s: float) -> float:
        """`tenant`'s admitted requests a second, decayed to `now_s`."""
        if tenant not in self.rates:
            return 0.0
        return self.rates[tenant] * math.exp(-(now_s - self.seen_at[tenant]) / RATE_S)


class Shares:
    """One gateway's tally of requests in flight per stream and tenant. Requests of no tenant
    (an open gateway) are neither counted nor held to a share."""

    def __init__(self, active_s: float) -> None:
        self.active_s = active_s
        self._streams: dict[str, _Stream] = {}
        self._async: dict[str, tuple[str, str, float]] = {}  # request id -> stream, tenant, forget at

    def check(
        self, stream: str, tier: str, tenant: str, weight: float, capacity: Capacity | None, now_s: float
    ) -> None:
        """Raise `QueueFull` when `tenant` holds its fair share of `stream` and others are active."""
        state = self._streams.get(stream) if tenant else None
        total = budget(capacity) if state is not None else None
        if state is None or total is None:
            return
        weights = {
            name: weight
            for name, weight in state.weights.items()
            if name == tenant or now_s - state.seen_at[name] <= self.active_s
        }
        weights[tenant] = weight
        if len(weights) < 2 or capacity is None:
            return
        weight_sum = sum(weights.values())
        heavy = {
            name: w for name, w in weights.items() if state.heavy(name, w / weight_sum, capacity.per_s, total, now_s)
        }
        if tenant not in heavy:
            return  # light: below its share of the capacity
        room = total - sum(state.in_flight.get(name, 0) for name in weights if name not in heavy)
        held = state.in_flight.get(tenant, 0)
        cap = fair_cap(tenant, state.in_flight, heavy, max(room, 0))
        if held + 1 > cap:
            raise QueueFull(
                f"the {tier} tier is busy and tenant {tenant!r} holds its fair share of it "
                f"({held} of the {total} requests its workers take at once, shared by {len(weights)} active tenants); "
                "retry later"
            )

    def admitted(self, stream: str, tenant: str, weight: float, now_s: float) -> None:
        if not tenant:
            return
        state = self._streams.setdefault(stream, _Stream())
        state.in_flight[tenant] = state.in_flight.get(tenant, 0) + 1
        state.rates[tenant] = state.rate(tenant, now_s) + 1.0 / RATE_S
        state.seen_at[tenant] = now_s
        state.weights[tenant] = weight

    def ended(self, stream: str, tenant: str) -> None:
        state = self._streams.get(stream)
        if not tenant or state is None:
            return
        state.in_flight[tenant] = max(0, state.in_flight.get(tenant, 0) - 1)

    def keep_async(self, request_id: str, stream: str, tenant: str, until_s: float) -> None:
        """A `wait: false` request stays in flight until `async_ended`, or `until_s` (its deadline)."""
        if tenant:
            self._async[request_id] = (stream, tenant, until_s)

    def async_ended(self, request_id: str) -> None:
        entry = self._async.pop(request_id, None)
        if entry is not None:
            self.ended(entry[0], entry[1])

    def sweep(self, now_s: float) -> None:
        """End the `wait: false` requests past their deadline with no reply here."""
        for request_id in [i for i, (_, _, until_s) in self._async.items() if until_s <= now_s]:
            self.async_ended(request_id)

    def in_flight(self, stream: str, tenant: str) -> int:
        state = self._streams.get(stream)
        return 0 if state is None else state.in_flight.get(tenant, 0)
