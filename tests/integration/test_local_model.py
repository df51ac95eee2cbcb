"""A real model behind a worker (backend "local", config/local.toml): all-MiniLM-L6-v2's embeddings
through the whole gateway equal the model's own, alone or sharing a batch, natively and through
the official `openai` SDK; the model loads before the worker joins its group, and /readyz waits
for it. Skipped without the `tiergate[local]` extra, unless CI requires it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import numpy as np
import openai
import redis.asyncio as aioredis

from core.settings import Settings, load_settings
from tests.conftest import LOCAL_CONFIG
from tests.integration.conftest import Stack, wait_until
from workers.process import WorkerProcess

StartStack = Any
TEXTS = [
    "The cat sat on the mat.",
    "Quarterly revenue grew by twelve percent on strong cloud demand.",
    "Wie spät ist es?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A short one",
    "The 2026 final went to extra time after a late equaliser in the ninetieth minute.",
    "Redis streams keep entries until they are acknowledged and deleted.",
    "I'd like two coffees and a croissant, please.",
]


def local_settings(**pool: object) -> Settings:
    """config/local.toml with the `minilm` pool's keys replaced by `pool`."""
    settings = load_settings(LOCAL_CONFIG)
    minilm = msgspec.structs.replace(settings.pools["minilm"], **pool)
    return msgspec.structs.replace(settings, pools={**settings.pools, "minilm": minilm})


def own(model: Any, texts: list[str]) -> Any:
    """The model's own normalised embeddings of `texts`, one at a time (no batch to share)."""
    return np.stack([model.encode([t], normalize_embeddings=True, show_progress_bar=False)[0] for t in texts])


def cosines(got: list[list[float]], expected: Any) -> list[float]:
    vectors = np.array(got)
    return [float(c) for c in np.sum(vectors * expected, axis=1) / np.linalg.norm(vectors, axis=1)]


async def test_an_embedding_through_the_gateway_is_the_models_own(stack: StartStack, local_model: Any) -> None:
    s: Stack = await stack(local_settings(), pools=["minilm"])
    status, body = await s.infer(model="minilm", input=TEXTS[1])
    assert status == 200, body
    assert body["pool"] == "minilm" and len(body["output"]) == 384
    assert cosines([body["output"]], own(local_model, [TEXTS[1]]))[0] > 0.9999
    # The worker's metrics time the forward pass, beside the process's own CPU time.
    worker = s.workers["minilm"][0]
    async with s.http.get(worker.metrics.url) as response:
        exposition = await response.text()
    model_s = _sample(exposition, "tiergate_worker_model_seconds_total")
    assert 0 < model_s < _sample(exposition, "process_cpu_seconds_total")


async def test_a_batch_of_many_texts_gives_each_text_its_own_vector(stack: StartStack, local_model: Any) -> None:
    # A long batching window: the requests sent together share one forward pass.
    s: Stack = await stack(local_settings(max_batch=len(TEXTS), max_wait_ms=500), pools=["minilm"])
    answers = await asyncio.gather(*(s.infer(model="minilm", input=text) for text in TEXTS))
    assert [status for status, _ in answers] == [200] * len(TEXTS), answers
    assert max(body["batch_size"] for _, body in answers) > 1  # they did share a batch
    expected = own(local_model, TEXTS)
    got = [body["output"] for _, body in answers]
    assert min(cosines(got, expected)) > 0.9999
    # Each vector is its own text's: against any other text's embedding it is far from equal.
    for i, vector in enumerate(got):
        others = np.delete(expected, i, axis=0)
        assert max(cosines([vector] * len(others), others)) < 0.99


async def test_the_openai_sdk_embeds_a_list_of_inputs(stack: StartStack, local_model: Any) -> None:
    s: Stack = await stack(local_settings(max_wait_ms=50), pools=["minilm"])
    client = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=30)
    try:
        answer = await client.embeddings.create(model="minilm", input=TEXTS)  # the SDK asks for base64
        floats = await client.embeddings.create(model="minilm", input=TEXTS[:2], encoding_format="float")
    finally:
        await client.close()
    assert [d.index for d in answer.data] == list(range(len(TEXTS)))
    assert answer.model == "minilm" and answer.usage.prompt_tokens > len(TEXTS)
    assert min(cosines([d.embedding for d in answer.data], own(local_model, TEXTS))) > 0.9999
    assert min(cosines([d.embedding for d in floats.data], own(local_model, TEXTS[:2]))) > 0.9999


async def test_the_model_loads_before_the_worker_joins_its_consumer_group(redis_url: str, local_model: Any) -> None:
    settings = local_settings()
    lane = settings.lane_for("interactive", "default", "minilm")
    assert lane is not None
    ready = asyncio.Event()
    worker = WorkerProcess(settings, "minilm", redis_url, ready=lambda **_: ready.set())
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert getattr(worker.backend, "model", None) is local_model  # loaded, once per process
        assert await client.exists(lane.stream) == 0  # and no group (nor stream) yet
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(ready.wait(), 10)
        groups = await client.xinfo_groups(lane.stream)
        assert [g["name"] for g in groups] == [b"workers"]
        worker.stop()
        await asyncio.wait_for(task, 15)
    finally:
        await client.aclose()


async def test_readyz_waits_for_the_model_pools_worker(stack: StartStack, local_model: Any) -> None:
    s: Stack = await stack(local_settings(), pools=[])
    await wait_until(lambda: _readyz_says(s, "no live worker yet in pools"))
    status, body = await s.get("/readyz")
    assert status == 503 and body["error"]["type"] == "not_ready"
    assert body["error"]["message"].endswith(", minilm, tpu-interactive")  # the model's pool among them
    await s.start_workers(s.settings.pools)
    await wait_until(lambda: _readyz_says(s, ""), timeout_s=15)


async def _readyz_says(s: Stack, message: str) -> bool:
    status, body = await s.get("/readyz")
    return (status == 200) if not message else message in body.get("error", {}).get("message", "")


async def test_a_pool_with_two_threads_gives_the_same_answer(stack: StartStack, local_model: Any) -> None:
    s: Stack = await stack(local_settings(threads=2), pools=["minilm"])
    status, body = await s.infer(model="minilm", input=TEXTS[3])
    assert status == 200 and cosines([body["output"]], own(local_model, [TEXTS[3]]))[0] > 0.9999


def _sample(exposition: str, name: str) -> float:
    """The value of the one sample of `name` in a Prometheus exposition."""
    return next(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(name))
