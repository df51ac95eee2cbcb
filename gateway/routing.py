"""Routing decisions as a pure function of the settings: which tier, region and stream a
request goes to, and its deadline budget. No I/O; unit tests drive it with plain values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidRequest, ModelNotFound, PlacementRefused, TierNotServed
from core.protocol import SENSITIVITY_CLASSES
from core.settings import Lane, Settings, TierSettings, sensitivity_rank


@dataclass(slots=True, frozen=True)
class Route:
    tier: str
    region: str
    stream: str
    deadline_ms: int  # budget from now
    max_queue: int
    lane: str = ""  # the stream's lane name (core.protocol.lane_name)
    pools: tuple[str, ...] = ()  # the pools that may receive the request: those serving its model
    sensitivity: str = SENSITIVITY_CLASSES[0]  # its data class: only pools cleared for it read the stream


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
        # (tier, region, model, data class) -> the route's fixed part; only the deadline varies.
        self._routes = {
            (lane.tier, lane.region, model, data_class): _template(lane, settings.tiers[lane.tier], data_class)
            for lane in self.lanes
            for model, data_class in lane.carries
        }

    def route(
        self,
        model: str,
        input_chars: int,
        tier: str | None = None,
        region: str | None = None,
        deadline_ms: int | None = None,
        sensitivity: str | None = None,
    ) -> Route:
        """The route of a request; `region` and `sensitivity` (its data class) default to the
        gateway's region and the lowest class. A request no pool may serve in its region at its
        class is refused (`PlacementRefused`), never routed elsewhere."""
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
        data_class = sensitivity or SENSITIVITY_CLASSES[0]
        if data_class not in SENSITIVITY_CLASSES:
            known = ", ".join(SENSITIVITY_CLASSES)
            raise InvalidRequest(f"unknown sensitivity {data_class!r} (expected one of {known}) - at $.sensitivity")
        found = self._routes.get((tier, region, model, data_class))
        if found is None:
            raise PlacementRefused(self._refusal(model, tier, region, data_class))
        budget = deadline_ms if deadline_ms is not None else found.deadline_ms
        return found if budget == found.deadline_ms else dataclasses.replace(found, deadline_ms=budget)

    def _refusal(self, model: str, tier: str, region: str, data_class: str) -> str:
        """Why no pool may take a request, naming the rule it would break."""
        serving = [p for p in self.settings.pools_for(tier, region) if model in self.settings.pools[p].models]
        if not serving:
            elsewhere = sorted({lane.region for lane in self.lanes if lane.tier == tier and model in lane.models})
            where = f" (it is served in {', '.join(elsewhere)})" if elsewhere else ""
            return (
                f"no pool serves model {model!r} on tier {tier!r} in region {region!r}{where}; "
                "a request runs only in its data region"
            )
        best = max((self.settings.pools[p].clearance for p in serving), key=sensitivity_rank)
        return (
            f"no pool serves model {model!r} on tier {tier!r} in region {region!r} cleared for {data_class} data "
            f"(the highest clearance there is {best}); a request runs only on pools cleared for its data class"
        )

    def table(self) -> list[Lane]:
        """Every stream this gateway routes to, for `tiergate config check` and the queue sampler."""
        return self.lanes


def _template(lane: Lane, tier: TierSettings, data_class: str) -> Route:
    return Route(
        lane.tier, lane.region, lane.stream, tier.default_deadline_ms, tier.max_queue, lane.name, lane.pools, data_class
    )
