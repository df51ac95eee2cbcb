"""The OpenAI-compatible endpoints take the client's deadline from its headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
CHAT = {"model": "sim-echo", "messages": [{"role": "user", "content": "hello"}]}


async def post(s: Stack, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with s.http.post(f"{s.url}/v1/chat/completions", json=CHAT, headers=headers) as response:
        return response.status, await response.json()


async def test_an_explicit_deadline_header_is_the_deadline(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])  # no worker: only the deadline can end the request
    status, body = await post(s, {"X-Tiergate-Deadline-Ms": "150"})
    assert status == 504
    assert body["error"]["code"] == "deadline_exceeded"
    assert "within its deadline of 150 ms" in body["error"]["message"]


async def test_the_sdks_read_timeout_shortens_the_tiers_deadline_but_never_lengthens_it(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])
    status, body = await post(s, {"X-Stainless-Read-Timeout": "0.2"})
    assert (status, "within its deadline of 200 ms" in body["error"]["message"]) == (504, True)
    # The SDK's default of 600 s is longer than realtime's default deadline of 1 s, which stays.
    status, body = await post(s, {"X-Stainless-Read-Timeout": "600", "X-Tiergate-Tier": "realtime"})
    assert (status, "within its deadline of 1000 ms" in body["error"]["message"]) == (504, True)


async def test_a_bad_deadline_header_is_400_naming_it(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])
    for headers, name in (({"X-Tiergate-Deadline-Ms": "soon"}, "X-Tiergate-Deadline-Ms"),
                          ({"X-Stainless-Read-Timeout": "-1"}, "X-Stainless-Read-Timeout")):  # fmt: skip
        status, body = await post(s, headers)
        assert status == 400
        assert f"the {name} header must be" in body["error"]["message"]
