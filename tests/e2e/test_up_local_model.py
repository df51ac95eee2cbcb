"""`tiergate up --config config/local.toml` as a user runs it: the minilm worker process loads the
real model before its ready line, the gateway turns ready once it heartbeats, and the official
`openai` SDK gets the model's own embeddings of a list of inputs. Skipped without the
`tiergate[local]` extra, unless CI requires it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from tests.conftest import LOCAL_CONFIG
from tests.integration.conftest import wait_until
from tests.processes import Proc

pytestmark = pytest.mark.redis_server

TEXTS = ["A red bicycle leans against the fence.", "The meeting moved to Thursday afternoon.", "Ciao!"]


async def test_up_with_the_local_config_serves_the_models_own_embeddings(
    tiergate_up: Callable[..., Proc], local_model: Any
) -> None:
    proc = tiergate_up("--config", str(LOCAL_CONFIG))
    assert proc.ready["pools"]["minilm"] == 1

    async def ready() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/readyz") as response:
            return response.status == 200

    await wait_until(ready, timeout_s=15)
    client = openai.AsyncOpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0, timeout=30)
    try:
        answer = await client.embeddings.create(model="minilm", input=TEXTS)
    finally:
        await client.close()
    got = np.array([d.embedding for d in answer.data])
    expected = local_model.encode(TEXTS, normalize_embeddings=True, show_progress_bar=False)
    assert got.shape == (3, 384)
    assert min(float(c) for c in np.sum(got * expected, axis=1)) > 0.9999
