"""Routing decisions as a pure function of the settings: which tier, region and stream a
request goes to, and its deadline budget. No I/O; unit tests drive it with plain values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidRequest, ModelNotFound, TierNotServed
from core.settings import Lane, Settings, TierSettings


@dataclass(slots=True, frozen=True)
class Route:
    tier: str
    region: str
    stream: str
    deadline_ms: int  # budget from now
    max_queue: int
    lane: str = ""  # the stream's lane name (core.protocol.lane_name)
    pools: tuple[str, ...] = ()  # the pools that may receive the request: those serving its model


class Router:
    """`tiers` restricts a gateway to some tiers (a tier's dedicated front door, which keeps
    other tiers' traffic out of its process): a request without a tier then gets the first of
    them unless its model's default is among them, and one naming another tier is refused."""

    def __init__(self, settings: Settings, tiers: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.tiers = tuple(tiers) if tiers else tuple(settings.tiers)
        self.region = settings.gateway.region
        self.max_input_chars = settings.gateway.max_input_chars
        self.lanes = [lane for lane in settings.lanes() if lane.tier in self.tiers]
        # (tier, region, model) -> the route's fixed part; only the deadline varies per request.
        self._routes = {
            (lane.tier, lane.region, model): _template(lane, settings.tiers[lane.tier])
            for lane in self.lanes
            for model in lane.models
        }

    def route(
        self,
        model: str,
        input_chars: int,
        tier: str | None = None,
        region: str | None = None,
        deadline_ms: int | None = None,
    ) -> Route:
        spec = self.settings.models.get(model)
        if spec is None:
            known = ", ".join(sorted(self.settings.models))
            raise ModelNotFound(f"model {model!r} does not exist (known models: {known})")
        if input_chars > self.max_input_chars:
            raise InvalidRequest(f"input is {input_chars} characters; the limit is {self.max_input_chars} - at $.input")
        tier = tier or (spec.default_tier if spec.default_tier in self.tiers else self.tiers[0])
        if tier not in self.settings.tiers:
            known = ", ".join(self.settings.tiers)
            raise InvalidRequest(f"unknown tier {tier!r} (expected one of {known}) - at $.tier")
        if tier not in self.tiers:
            served = " and ".join(self.tiers) + (" tier" if len(self.tiers) == 1 else " tiers")
            message = f"this gateway serves only the {served}; send {tier} requests to a gateway that serves it"
            raise TierNotServed(message)
        region = region or self.region
        found = self._routes.get((tier, region, model))
        if found is None:
            raise InvalidRequest(f"no pool serves model {model!r} on tier {tier!r} in region {region!r}")
        budget = deadline_ms if deadline_ms is not None else found.deadline_ms
        return found if budget == found.deadline_ms else dataclasses.replace(found, deadline_ms=budget)

    def table(self) -> list[Lane]:
        """Every stream this gateway routes to, for `tiergate config check` and the queue sampler."""
        return self.lanes


def _template(lane: Lane, tier: TierSettings) -> Route:
    return Route(lane.tier, lane.region, lane.stream, tier.default_deadline_ms, tier.max_queue, lane.name, lane.pools)
