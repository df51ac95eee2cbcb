"""The simulated backend: waits as the processor's latency model says, computes real outputs.

Each batch costs the energy and money its FLOPs cost on this processor (relative efficiency and
cost per FLOP against the H100 baseline), apportioned to each request by its share of the FLOPs.
Text models generate token by token: the first token after the latency model's time, each next
one `per_token_ms` later, all members of a batch side by side; a `TokenSink` sees each as it comes.
Times count from the instant the caller measures service time from, and outputs are computed
within them. A `deterministic` pool waits precisely (workers/precise.py), others on the event loop.
Outputs stop at the request's first stop sequence; sampling settings (`temperature`, `seed`, ...)
leave them as they are, and a request asking for more than text is refused (core/capabilities.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from core.capabilities import SUPPORTS, envelope_fields, unsupported
from core.errors import INVALID_REQUEST
from core.protocol import Envelope
from core.settings import LatencyModel, Settings

from .. import models, precise
from . import Completion, TokenSink

TOKEN_CHARS = 4  # one simulated token is four characters, as `models.tokens` counts


def service_time_ms(latency: LatencyModel, batch_size: int, rng: random.Random) -> float:
    """The simulated service time of one batch, in ms (pure, seeded by `rng`)."""
    extra = latency.per_item_ms * (batch_size - 1)
    if latency.kind == "variable":
        high = latency.max_ms if latency.max_ms is not None else latency.min_ms
        mode = latency.mode_ms if latency.mode_ms is not None else latency.min_ms
        return rng.triangular(latency.min_ms, high, mode) + extra
    return latency.min_ms + extra


class SimulatedBackend:
    supports = SUPPORTS["simulated"]

    def __init__(
        self, settings: Settings, pool_name: str, rng: random.Random | None = None, wait: precise.Wait | None = None
    ) -> None:
        pool = settings.pools[pool_name]
        self.pool_name = pool_name
        self._precise = pool.mode == "deterministic"
        self._wait: precise.Wait = wait or (precise.wait_until if self._precise else precise.wait_loosely)
        if self._precise:
            precise.lower_timer_slack()
        self.processor = settings.processors[pool.processor]
        self.models = settings.models
        self._rng = rng or random.Random()
        accounting = settings.accounting
        self._joules_per_flop = 1.0 / (self.processor.energy_efficiency * accounting.baseline_flops_per_joule)
        self._usd_per_flop = self.processor.cost_per_flop * accounting.baseline_usd_per_pflop / 1e15

    async def run(
        self, batch: Sequence[Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]:
        refusals = [self._refusal(env) for env in batch]
        if any(refusals):
            return await self._run_some(batch, refusals, sink, started_s)
        start_s = time.perf_counter() if started_s is None else started_s
        latency = self.processor.latency
        first_at = start_s + service_time_ms(latency, len(batch), self._rng) / 1000.0
        per_token_s = latency.per_token_ms / 1000.0
        outputs = [_stopped(models.compute(self.models[env.model], env.input), env) for env in batch]
        tokens = [
            _pieces(out, env.max_tokens) if isinstance(out, str) else []
            for env, out in zip(batch, outputs, strict=True)
        ]
        done = self._completions(batch, outputs, tokens)  # within the service time, not after it
        steps = max((len(t) for t in tokens), default=0)
        if sink is None or not any(env.stream for env in batch):
            await self._wait(first_at + max(0, steps - 1) * per_token_s)
            return done
        for step in range(steps):
            await self._wait(first_at + step * per_token_s)
            for position, (env, pieces) in enumerate(zip(batch, tokens, strict=True)):
                if env.stream and step < len(pieces):
                    sink(position, pieces[step])
            if self._precise and step < steps - 1:
                await asyncio.sleep(0)  # the chunk publisher sends them while the next token is made
        return done

    def _completions(
        self, batch: Sequence[Envelope], outputs: list[models.Output], tokens: list[list[str]]
    ) -> list[Completion]:
        answers: list[models.Output] = [
            "".join(pieces) if isinstance(out, str) else out for out, pieces in zip(outputs, tokens, strict=True)
        ]
        work = [models.flops(self.models[env.model], env.input, out) for env, out in zip(batch, answers, strict=True)]
        total_flops = sum(work)
        batch_j = total_flops * self._joules_per_flop
        batch_usd = total_flops * self._usd_per_flop
        return [
            Completion(
                output=answer,
                energy_j=batch_j * f / total_flops,
                cost=batch_usd * f / total_flops,
                prompt_tokens=_prompt_tokens(env),
                completion_tokens=len(pieces),
                finish_reason="length" if answer != out else "stop",
            )
            for env, out, answer, pieces, f in zip(batch, outputs, answers, tokens, work, strict=True)
        ]

    def _refusal(self, env: Envelope) -> Completion | None:
        """The error of a request asking for what this backend cannot do (the gateway refuses
        such requests before queueing them; this is the worker's own word)."""
        if env.generation is None and not any(
            m.parts or m.tool_calls or m.tool_call_id or m.extra for m in env.messages
        ):
            return None
        missing = unsupported("simulated", envelope_fields(env))
        if missing is None:
            return None
        name, path = missing
        message = f"pool {self.pool_name}: {name} is not supported by a simulated model - at `$.{path}`"
        return Completion(output="", energy_j=0.0, cost=0.0, error=message, error_code=INVALID_REQUEST)

    async def _run_some(
        self,
        batch: Sequence[Envelope],
        refusals: list[Completion | None],
        sink: TokenSink | None,
        started_s: float | None,
    ) -> list[Completion]:
        """Run the requests of `batch` not refused, answering the others with their refusals."""
        keep = [i for i, refusal in enumerate(refusals) if refusal is None]

        def relay(position: int, text: str, choices: bytes = b"") -> None:
            assert sink is not None
            sink(keep[position], text, choices)

        done = iter(await self.run([batch[i] for i in keep], relay if sink else None, started_s) if keep else [])
        return [refusal if refusal is not None else next(done) for refusal in refusals]

    async def close(self) -> None:
        return None


def _stopped(output: models.Output, env: Envelope) -> models.Output:
    """The output up to the first of the request's stop sequences, which is left out."""
    if not isinstance(output, str) or env.generation is None:
        return output
    cuts = [i for stop in env.generation.stops() if (i := output.find(stop)) >= 0]
    return output[: min(cuts)] if cuts else output


def _pieces(text: str, max_tokens: int) -> list[str]:
    """The tokens a simulated text model generates, cut at `max_tokens` (0: no limit)."""
    pieces = [text[i : i + TOKEN_CHARS] for i in range(0, len(text), TOKEN_CHARS)]
    return pieces[:max_tokens] if max_tokens > 0 else pieces


def _prompt_tokens(env: Envelope) -> int:
    if env.messages:
        return sum(models.tokens(m.content) for m in env.messages)
    return models.tokens(env.input)
