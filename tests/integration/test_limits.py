"""Hostile input against a real `tiergate gateway` process over real sockets: every limit answers a
clear 4xx naming it, a slow body gets 408, a client dribbling its headers is cut off, and the
gateway serves others meanwhile. Also the OpenAPI document at /openapi.json."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from core.settings import DEFAULT_CONFIG_PATH, load_settings
from tests.conftest import RedisServer
from tests.processes import start

LIMITS = "max_body_bytes = 4096\nmax_input_chars = 100\nmax_tokens = 64\nmax_messages = 4\nmax_header_bytes = 1024\n"
TIMEOUTS = "body_timeout_s = 0.5\nkeepalive_timeout_s = 1.0\n"


def gateway_config(tmp_path: Path) -> Path:
    ours = {line.split(" =")[0] for line in (LIMITS + TIMEOUTS).splitlines()}
    lines = [line for line in DEFAULT_CONFIG_PATH.read_text().splitlines(True) if line.split(" =")[0] not in ours]
    text = "".join(lines).replace("[gateway]\n", f"[gateway]\n{LIMITS}{TIMEOUTS}", 1)
    path = tmp_path / "tiergate.toml"
    path.write_text(text)
    load_settings(path)  # valid
    return path


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gateway process for the module (no workers: nothing here reaches one); its base URL."""
    config = gateway_config(tmp_path_factory.mktemp("limits"))
    proc = start("gateway", "--port", "0", "--config", str(config), "--redis-url", redis_server.url, timeout_s=30)
    try:
        yield proc.url
    finally:
        assert proc.stop(timeout_s=20) == 0


CHAT = "/v1/chat/completions"


def chat(messages: int = 1, **extra: object) -> dict[str, object]:
    return {"model": "sim-echo", "messages": [{"role": "user", "content": "hi"}] * messages, **extra}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/infer", {"model": "sim-echo", "input": "x" * 101}, 400, "input is 101 characters; the limit is 100"),
        ("/v1/infer", {"model": "sim-echo", "input": "x" * 5000}, 413, "the body exceeds the limit of 4096 bytes"),
        (CHAT, chat(max_tokens=65), 400, "max_tokens is 65; the limit is 64 - at `$.max_tokens`"),
        (CHAT, chat(max_completion_tokens=99), 400, "max_completion_tokens is 99; the limit is 64"),
        (CHAT, chat(messages=5), 400, "messages holds 5 messages; the limit is 4 - at `$.messages`"),
        ("/v1/completions", {"model": "sim-echo", "prompt": "p", "max_tokens": 65}, 400, "the limit is 64"),
    ],
)
async def test_each_limit_is_a_clear_4xx_naming_it(
    gateway: str, path: str, body: dict[str, object], status: int, message: str
) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{gateway}{path}", json=body) as r:
        assert r.status == status
        assert message in (await r.json())["error"]["message"]


async def test_oversized_header_is_400_naming_the_limit(gateway: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway}/healthz", headers={"X-Big": "a" * 2000}) as r:
        assert r.status == 400
        assert "Got more than 1024 bytes" in await r.text()


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


async def healthy(url: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
        return r.status == 200


async def test_a_body_that_never_arrives_gets_408_and_others_are_served(gateway: str) -> None:
    sock = raw(gateway)
    try:
        head = "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b'{"model": "sim-')  # and then nothing
        assert await healthy(gateway)  # the stalled body ties up nobody else
        answer = await asyncio.to_thread(_read_response, sock)
    finally:
        sock.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body == {"error": {"type": "request_timeout", "message": "the body did not arrive within 0.5 s"}}


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


async def test_a_client_dribbling_its_headers_is_cut_off_while_others_are_served(gateway: str) -> None:
    sock = raw(gateway)
    closed = threading.Event()

    def dribble() -> None:
        """One header byte every 50 ms, for up to 10 s, until the server hangs up."""
        line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        try:
            for byte in line:
                sock.sendall(bytes([byte]))
                if closed.wait(0.05):
                    return
        except OSError:
            closed.set()

    def watch() -> None:
        try:
            if sock.recv(1) == b"":
                closed.set()
        except OSError:
            closed.set()

    writer, reader = threading.Thread(target=dribble), threading.Thread(target=watch)
    writer.start()
    reader.start()
    try:
        served = [await healthy(gateway) for _ in range(5)]
        assert served == [True] * 5
        assert await asyncio.to_thread(closed.wait, 10), "the server kept a dribbling client"
    finally:
        closed.set()
        sock.close()
        writer.join(timeout=5)
        reader.join(timeout=5)


async def test_openapi_document_describes_both_apis_with_the_limits(gateway: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {
        "/v1/infer", "/v1/requests/{id}", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
        "/v1/models", "/healthz", "/readyz", "/openapi.json",
    }  # fmt: skip
    schemas = doc["components"]["schemas"]
    infer = schemas["InferBody"]
    assert infer["required"] == ["model", "input"] and infer["properties"]["input"]["maxLength"] == 100
    assert schemas["ChatRequest"]["properties"]["messages"]["maxItems"] == 4
    ref = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert ref == {"$ref": "#/components/schemas/ChatRequest"}
