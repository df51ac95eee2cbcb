"""Cost- and energy-aware placement: the order in which the pools of one request stream (a lane)
should take its requests under their tier's policy, from the config alone. Pure; the workers
use it to hold off reading a stream while a pool ranked before them may be free.
"""

from __future__ import annotations

from .settings import Lane, LatencyModel, PlacementWeights, Settings

POLICIES = {
    "fastest": PlacementWeights(latency=1.0),
    "cheapest": PlacementWeights(cost=1.0),
    "greenest": PlacementWeights(energy=1.0),
}
HOLD_SHARE = 0.1  # placement_hold_ms defaults to this share of the tier's SLO latency


def typical_ms(latency: LatencyModel) -> float:
    """A processor's usual service time of one request: its mode, else its minimum."""
    return latency.mode_ms if latency.mode_ms is not None else latency.min_ms


def weights(settings: Settings, tier: str) -> PlacementWeights | None:
    """The tier's placement weights; None for "any" (no preference)."""
    policy = settings.tiers[tier].placement
    if isinstance(policy, PlacementWeights):
        return policy
    return POLICIES.get(policy)


def preference(settings: Settings, lane: Lane) -> tuple[str, ...]:
    """The lane's pools, preferred first: those whose typical service time meets the tier's SLO
    latency before those that do not, then by the weighted sum of latency, cost per FLOP and
    energy per FLOP, each relative to the largest among the lane's pools; then by name. With
    "any" the lane's own order (by name): no pool waits for another."""
    chosen = weights(settings, lane.tier)
    if chosen is None:
        return lane.pools
    slo_ms = settings.tiers[lane.tier].slo.latency_ms
    figures = {}
    for name in lane.pools:
        processor = settings.processors[settings.pools[name].processor]
        figures[name] = (typical_ms(processor.latency), processor.cost_per_flop, 1.0 / processor.energy_efficiency)
    top = [max(f[i] for f in figures.values()) or 1.0 for i in range(3)]

    def rank(name: str) -> tuple[bool, float, str]:
        lat, cost, energy = (figures[name][i] / top[i] for i in range(3))
        score = chosen.latency * lat + chosen.cost * cost + chosen.energy * energy
        return figures[name][0] > slo_ms, round(score, 9), name

    return tuple(sorted(lane.pools, key=rank))


def hold_ms(settings: Settings, tier: str) -> float:
    """How long a pool ranked one behind holds off reading a stream of `tier`."""
    spec = settings.tiers[tier]
    return spec.placement_hold_ms if spec.placement_hold_ms is not None else spec.slo.latency_ms * HOLD_SHARE


def holds(settings: Settings, pool: str) -> dict[str, float]:
    """Each stream `pool` reads where a pool ranked before it may take requests first -> how long
    (seconds) it waits between reads of that stream: `hold_ms` times its rank."""
    found = {}
    for lane in settings.lanes():
        if pool not in lane.pools or weights(settings, lane.tier) is None:
            continue
        rank = preference(settings, lane).index(pool)
        if rank > 0:
            found[lane.stream] = rank * hold_ms(settings, lane.tier) / 1000.0
    return found
