"""The simulated processors: latency models from the seed's table, real outputs, energy and cost."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from core.protocol import Envelope
from core.settings import LatencyModel, Settings
from workers import models
from workers.backends.simulated import SimulatedBackend, service_time_ms


def test_fixed_latency_is_constant_and_under_a_millisecond(make_settings: Callable[..., Settings]) -> None:
    groq = make_settings().processors["groq-lpu"].latency
    rng = random.Random(1)
    times = {service_time_ms(groq, 1, rng) for _ in range(100)}
    assert times == {0.8}


@pytest.mark.parametrize(("processor", "low", "high"), [("h100", 5, 50), ("inferentia2", 2, 10), ("tpu-v5e", 3, 15)])
def test_variable_latency_stays_within_the_seed_range(
    make_settings: Callable[..., Settings], processor: str, low: float, high: float
) -> None:
    latency = make_settings().processors[processor].latency
    rng = random.Random(2)
    samples = [service_time_ms(latency, 1, rng) for _ in range(2000)]
    assert low <= min(samples) and max(samples) <= high
    assert len(set(samples)) > 100  # it does vary


def test_batch_optimised_costs_little_more_for_a_large_batch(make_settings: Callable[..., Settings]) -> None:
    cerebras = make_settings().processors["cerebras-cs3"].latency
    one = service_time_ms(cerebras, 1, random.Random())
    many = service_time_ms(cerebras, 256, random.Random())
    assert many / one < 1.5  # 256x the work for under 1.5x the time
    per_item_h100 = service_time_ms(LatencyModel(kind="fixed", min_ms=10, per_item_ms=0.25), 256, random.Random())
    assert many < per_item_h100


def test_models_compute_checkable_outputs() -> None:
    assert models.embed("abc", 16) == models.embed("abc", 16)
    assert models.embed("abc", 16) != models.embed("abd", 16)
    assert abs(sum(v * v for v in models.embed("abc", 16)) - 1.0) < 1e-4


async def test_backend_runs_a_batch_and_apportions_energy_by_flops(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    backend = SimulatedBackend(settings, "cerebras-batch", random.Random(3))
    batch = [
        Envelope(
            id="1", model="sim-echo", input="abcd" * 10, tier="batch", region="default", reply_to="g", deadline_at_ms=0
        ),
        Envelope(
            id="2", model="sim-embed", input="xyz", tier="batch", region="default", reply_to="g", deadline_at_ms=0
        ),
    ]
    done = await backend.run(batch)
    assert done[0].output == ("abcd" * 10)[::-1]
    assert done[1].output == models.embed("xyz", 16)
    echo_flops = models.flops(settings.models["sim-echo"], batch[0].input, done[0].output)
    embed_flops = models.flops(settings.models["sim-embed"], batch[1].input, done[1].output)
    assert done[0].energy_j / done[1].energy_j == pytest.approx(echo_flops / embed_flops)
    joules_per_flop = 1 / (1.75 * settings.accounting.baseline_flops_per_joule)
    assert done[0].energy_j + done[1].energy_j == pytest.approx((echo_flops + embed_flops) * joules_per_flop)
