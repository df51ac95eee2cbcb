"""The arrival schedule of a load test: when each request is meant to be sent, to which tier and
model, and how large its input is. Pure functions of their arguments (a seeded random generator);
no I/O. Open-loop: the schedule never depends on how the system under test answers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Arrivals = Literal["poisson", "constant"]


class ScheduleError(ValueError):
    """A schedule argument (mix, rate, size range) is not usable; the message says which."""


@dataclass(slots=True, frozen=True)
class Arrival:
    offset_s: float  # intended send time, seconds after the run starts
    tier: str
    model: str
    input_chars: int


def parse_mix(text: str, known_tiers: Sequence[str]) -> dict[str, float]:
    """`realtime=0.2,interactive=0.5,batch=0.3` -> weights normalised to sum to 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        tier, sep, value = part.partition("=")
        if not sep:
            raise ScheduleError(f"--mix: {part!r} is not tier=weight")
        if tier not in known_tiers:
            raise ScheduleError(f"--mix: unknown tier {tier!r} (expected one of {', '.join(known_tiers)})")
        try:
            weight = float(value)
        except ValueError:
            raise ScheduleError(f"--mix: weight {value!r} of {tier} is not a number") from None
        if weight < 0:
            raise ScheduleError(f"--mix: weight of {tier} is negative")
        weights[tier] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ScheduleError("--mix: the weights must add up to more than zero")
    return {tier: weight / total for tier, weight in weights.items() if weight > 0}


def parse_size(text: str) -> tuple[int, int]:
    """`64` (every input 64 characters) or `16-256` (uniform in that range)."""
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ScheduleError(f"--input-chars: {text!r} is not N or MIN-MAX") from None
    if lo < 1 or hi < lo:
        raise ScheduleError(f"--input-chars: {text!r} must be positive with MIN <= MAX")
    return lo, hi


def build(
    rate: float,
    duration_s: float,
    mix: dict[str, float],
    models: Sequence[str],
    arrivals: Arrivals = "poisson",
    input_chars: tuple[int, int] = (64, 64),
    seed: int | None = None,
) -> list[Arrival]:
    """Every arrival of a run at `rate` per second for `duration_s` seconds."""
    if rate <= 0 or duration_s <= 0:
        raise ScheduleError("the rate and the duration must be positive")
    if not models:
        raise ScheduleError("--models: at least one model is needed")
    rng = random.Random(seed)
    tiers, weights = list(mix), list(mix.values())
    schedule: list[Arrival] = []
    offset_s = 0.0
    while True:
        offset_s = offset_s + rng.expovariate(rate) if arrivals == "poisson" else (len(schedule) + 1) / rate
        if offset_s >= duration_s:
            return schedule
        tier = rng.choices(tiers, weights)[0]
        schedule.append(Arrival(offset_s, tier, rng.choice(list(models)), rng.randint(*input_chars)))


def share(schedule: Sequence[Arrival], index: int, parts: int) -> list[Arrival]:
    """The arrivals agent `index` of `parts` sends: every `parts`-th one, so each share keeps
    the whole run's mix and spread over time."""
    return list(schedule[index::parts])


def input_text(arrival_index: int, chars: int) -> str:
    """A deterministic input of exactly `chars` characters, distinct per request."""
    head = f"{arrival_index} loadtest request "
    return (head * (chars // len(head) + 1))[:chars]
