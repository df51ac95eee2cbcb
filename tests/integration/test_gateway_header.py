"""Every answer names the gateway process that gave it (`X-Tiergate-Gateway`), whatever answered
it: a handler, the error rendering, a file, a stream sent before its handler returned."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.http_shared import GATEWAY_HEADER
from gateway.state import STATE
from tests.integration.conftest import Stack

pytestmark = pytest.mark.redis_server


async def test_every_answer_names_its_gateway(stack: Any) -> None:
    s: Stack = await stack(pools=["h100-interactive"])
    gateway_id = s.server.app[STATE].gateway_id
    infer = {"model": "sim-echo", "input": "hello", "tier": "interactive"}
    chat = {"model": "sim-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    asked = [
        ("POST", "/v1/infer", infer, 200),
        ("POST", "/v1/infer", {"model": "sim-echo"}, 400),  # no input
        ("GET", "/v1/requests/unknown", None, 404),
        ("GET", "/no/such/path", None, 404),
        ("DELETE", "/healthz", None, 405),
        ("GET", "/healthz", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/dashboard", None, 200),  # a file
        ("GET", "/static/dashboard.js", None, 200),
        ("GET", "/static/no-such.js", None, 404),
        ("POST", "/v1/chat/completions", chat, 200),  # a stream
    ]
    for method, path, body, status in asked:
        async with s.http.request(method, f"{s.url}{path}", json=body) as response:
            await response.read()
            assert (path, response.status) == (path, status)
            assert response.headers.get(GATEWAY_HEADER) == gateway_id, (method, path)
            if body is not None and body.get("stream"):
                assert response.headers["Content-Type"].startswith("text/event-stream")


async def test_unknown_paths_and_methods_are_answered_in_json(stack: Any) -> None:
    s: Stack = await stack(pools=["h100-interactive"])
    asked = [
        ("GET", "/no/such/path", 404, "not_found", None),
        ("GET", "/static/a/b.js", 404, "not_found", None),
        ("DELETE", "/healthz", 405, "method_not_allowed", {"GET", "HEAD"}),
        ("GET", "/v1/infer", 405, "method_not_allowed", {"POST"}),
        ("PUT", "/v1/requests/abc", 405, "method_not_allowed", {"GET", "HEAD", "DELETE"}),
    ]
    for method, path, status, code, allow in asked:
        async with s.http.request(method, f"{s.url}{path}") as response:
            body = await response.json()
            assert (path, response.status, body["error"]["type"]) == (path, status, code)
            assert method in body["error"]["message"] and path in body["error"]["message"]
            allowed = response.headers.get("Allow")
            assert (set(allowed.split(",")) if allowed else None) == allow, path
