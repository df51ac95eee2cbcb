"""The backend contract: something that runs one batch of requests on one processor.

A backend gets the whole batch in one call and answers one `Completion` per request, in order;
a request it could not run gets a Completion with `error` set. With a `TokenSink` it reports
each piece of output as it is made. `started_s` is the `time.perf_counter()` instant the caller
measures the batch's service time from (None: when `run` is called). Each backend's `supports` is
its row of the capability table (core/capabilities.py), which the gateway checks requests against
before queueing them. `make_backend` builds the backend a pool's settings name. A backend that
runs a model in the worker process (local) is also a `ModelClock`: its forward passes' time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from core.errors import WORKER_ERROR
from core.protocol import Envelope
from core.settings import Settings


class Completion(msgspec.Struct, frozen=True):
    output: str | list[float]
    energy_j: float
    cost: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str = ""  # set: this request failed; the message names the cause
    error_code: str = WORKER_ERROR  # an errors.RequestError code, when `error` is set
    choices: bytes = b""  # JSON array: an upstream's own OpenAI choices, when more than one text


class TokenSink(Protocol):
    """Called with (position of the request in the batch, text) for each piece of output; an
    upstream's streamed choices that hold more than text (`Chunk.choices`) come as `choices`."""

    def __call__(self, position: int, text: str, choices: bytes = b"") -> None: ...


class Backend(Protocol):
    async def run(
        self, batch: Sequence[Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]: ...

    async def close(self) -> None: ...


@runtime_checkable
class ModelClock(Protocol):
    """A backend that runs a model in this process says how long its forward passes took."""

    def model_seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds (of the thread that ran them) of every forward pass so far."""
        ...


def make_backend(settings: Settings, pool_name: str) -> Backend:
    pool = settings.pools[pool_name]
    if pool.backend == "simulated":
        from .simulated import SimulatedBackend

        return SimulatedBackend(settings, pool_name)
    if pool.backend == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(settings, pool_name)
    if pool.backend == "local":
        from .local import LocalBackend

        return LocalBackend(settings, pool_name)
    raise ValueError(f"pools.{pool_name}.backend: unknown backend {pool.backend!r}")
