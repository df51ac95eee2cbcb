"""A retried OpenAI-compatible call with the same Idempotency-Key gets the first call's answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI

from tests.integration.conftest import Stack

StartStack = Callable[..., Any]


async def test_a_retry_with_the_same_key_gets_the_first_answer(stack: StartStack) -> None:
    s: Stack = await stack(pools=["groq-realtime", "h100-interactive", "tpu-interactive", "inferentia-mixed"])
    client = AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
    try:
        messages: Any = [{"role": "user", "content": "charge my card once"}]
        calls = [
            await client.chat.completions.with_raw_response.create(
                model="sim-echo", messages=messages, extra_headers={"Idempotency-Key": key}
            )
            for key in ("payment-7", "payment-7", "payment-8")
        ]
        first, retry, other = (call.parse() for call in calls)
        assert first.id == retry.id != other.id
        assert first.choices[0].message.content == retry.choices[0].message.content == "ecno drac ym egrahc"
        assert calls[1].headers.get("Idempotent-Replayed") == "true"
        assert calls[0].headers.get("Idempotent-Replayed") is None
    finally:
        await client.close()
