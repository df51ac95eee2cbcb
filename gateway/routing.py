"""Routing decisions as a pure function of the settings: which tier, region and stream a
request goes to, and its deadline budget. No I/O; unit tests drive it with plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidRequest, ModelNotFound, TierNotServed
from core.protocol import stream_key
from core.settings import TIER_NAMES, Settings, TierSettings


@dataclass(slots=True, frozen=True)
class Route:
    tier: str
    region: str
    stream: str
    deadline_ms: int  # budget from now
    max_queue: int


class Router:
    """`tiers` restricts a gateway to some tiers (a tier's dedicated front door, which keeps
    other tiers' traffic out of its process): a request without a tier then gets the first of
    them unless its model's default is among them, and one naming another tier is refused."""

    def __init__(self, settings: Settings, tiers: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.tiers = tuple(tiers) if tiers else tuple(settings.tiers)
        self.region = settings.gateway.region
        self.max_input_chars = settings.gateway.max_input_chars
        # (tier, region) pairs some pool serves, and the models served there.
        self._served = {
            (tier, pool.region): set(pool.models) for pool in settings.pools.values() for tier in pool.tiers
        }
        self._routes: dict[tuple[str, str], tuple[str, TierSettings]] = {
            key: (stream_key(*key), settings.tiers[key[0]]) for key in self._served if key[0] in self.tiers
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
        found = self._routes.get((tier, region))
        if found is None or model not in self._served[(tier, region)]:
            raise InvalidRequest(f"no pool serves model {model!r} on tier {tier!r} in region {region!r}")
        stream, tier_settings = found
        budget = deadline_ms if deadline_ms is not None else tier_settings.default_deadline_ms
        return Route(tier, region, stream, budget, tier_settings.max_queue)

    def table(self) -> list[tuple[str, str, str, list[str]]]:
        """(tier, region, stream, pools) rows, for `tiergate config check`."""
        return [
            (tier, region, stream, self.settings.pools_for(tier, region))
            for (tier, region), (stream, _) in sorted(self._routes.items(), key=_tier_order)
        ]


def _tier_order(item: tuple[tuple[str, str], object]) -> tuple[int, str]:
    (tier, region), _ = item
    return (TIER_NAMES.index(tier) if tier in TIER_NAMES else len(TIER_NAMES), region)
