"""Every kind of answer of the OpenAI-compatible API, from a real gateway on a real port with
in-process workers, validated with `jsonschema` against OpenAI's published component schemas
(vendored in tests/schemas/openai/, where their origin and licence are recorded): chat and text
completions streamed and not, embeddings as floats and as base64, the model list, error bodies.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
SPEC = Path(__file__).parents[1] / "schemas" / "openai" / "openapi-2.3.0.json"
POOLS = ["h100-interactive", "groq-realtime", "cerebras-batch"]
ASK = [{"role": "user", "content": "check my shape"}]


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is JSON Schema's "or null"."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


@cache
def components() -> dict[str, Any]:
    schemas: dict[str, Any] = as_json_schema(json.loads(SPEC.read_text())["components"]["schemas"])
    # Two places where the published schema is narrower than what OpenAI's API itself sends, and
    # what its SDK reads; tiergate sends what the API sends, and these two exceptions are all:
    # - a text completion stream's chunks share CreateCompletionResponse, whose finish_reason has
    #   no null; every chunk before the last carries `"finish_reason": null`.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [reason, {"type": "null"}]}
    schemas["tiergate.CompletionChunk"] = chunk
    # - with `encoding_format: "base64"` each `embedding` is a base64 string, not a list of floats.
    b64 = copy.deepcopy(schemas["Embedding"])
    b64["properties"]["embedding"] = {"type": "string", "contentEncoding": "base64"}
    schemas["tiergate.Base64Embedding"] = b64
    listed = copy.deepcopy(schemas["CreateEmbeddingResponse"])
    listed["properties"]["data"]["items"] = {"$ref": "#/components/schemas/tiergate.Base64Embedding"}
    schemas["tiergate.Base64EmbeddingResponse"] = listed
    return schemas


def check(name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": components()}}
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft202012Validator(schema).iter_errors(body)
    ]
    assert errors == [], f"{name}: {json.dumps(body)[:400]}"


async def post(s: Stack, path: str, body: dict[str, Any], status: int = 200) -> Any:
    async with s.http.post(f"{s.url}{path}", json=body) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def events(s: Stack, path: str, body: dict[str, Any]) -> list[Any]:
    """The JSON payloads of an SSE answer, up to its `[DONE]`."""
    async with s.http.post(f"{s.url}{path}", json={**body, "stream": True}) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        text = await response.text()
    data = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_the_vendored_schemas_reject_what_they_should() -> None:
    """The check is not vacuous: the answer shape tiergate used to send (`system_fingerprint: null`)
    fails, as does a service_tier outside the enum and a missing required field."""
    good = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x", "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
    }  # fmt: skip
    check("CreateChatCompletionResponse", good)
    for bad in ({"system_fingerprint": None}, {"service_tier": "priority"}, {"object": "chat.completion.chunk"}):
        with pytest.raises(AssertionError):
            check("CreateChatCompletionResponse", good | bad)
    with pytest.raises(AssertionError):
        check("ErrorResponse", {"error": {"type": "queue_full", "message": "full"}})


async def test_chat_answers_and_chunks_match_the_published_schemas(stack: StartStack) -> None:
    s: Stack = await stack(pools=POOLS)
    for service_tier in (None, "default", "priority", "flex", "auto"):
        extra = {} if service_tier is None else {"service_tier": service_tier}
        answer = await post(s, "/v1/chat/completions", {"model": "sim-echo", "messages": ASK, **extra})
        check("CreateChatCompletionResponse", answer)
        assert answer["choices"][0]["message"]["content"] == "epahs ym kcehc"
        assert answer.get("service_tier") == ("default" if service_tier in (None, "default", "auto") else None)
    short = await post(s, "/v1/chat/completions", {"model": "sim-echo", "messages": ASK, "max_tokens": 1})
    check("CreateChatCompletionResponse", short)
    assert short["choices"][0]["finish_reason"] == "length"
    for options in ({}, {"stream_options": {"include_usage": True}, "service_tier": "flex"}):
        chunks = await events(s, "/v1/chat/completions", {"model": "sim-echo", "messages": ASK, **options})
        for chunk in chunks:
            check("CreateChatCompletionStreamResponse", chunk)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "epahs ym kcehc"
        assert ("usage" in chunks[-1]) == bool(options)


async def test_text_completions_streamed_and_not_match_the_published_schema(stack: StartStack) -> None:
    s: Stack = await stack(pools=POOLS)
    for extra in ({}, {"max_tokens": 1}):
        answer = await post(s, "/v1/completions", {"model": "sim-echo", "prompt": "abcdefgh", **extra})
        check("CreateCompletionResponse", answer)
    chunks = await events(
        s, "/v1/completions", {"model": "sim-echo", "prompt": "abcdefgh", "stream_options": {"include_usage": True}}
    )
    for chunk in chunks:
        check("tiergate.CompletionChunk", chunk)
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finished) == 1
    check("CreateCompletionResponse", finished[0])  # the last one is a full answer, by the book
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "hgfedcba"


async def test_embeddings_and_the_model_list_match_the_published_schemas(stack: StartStack) -> None:
    s: Stack = await stack(pools=POOLS)
    floats = await post(s, "/v1/embeddings", {"model": "sim-embed", "input": ["one", "two"]})
    check("CreateEmbeddingResponse", floats)
    packed = await post(s, "/v1/embeddings", {"model": "sim-embed", "input": "one", "encoding_format": "base64"})
    check("tiergate.Base64EmbeddingResponse", packed)
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 4 * len(floats["data"][0]["embedding"])
    async with s.http.get(f"{s.url}/v1/models") as response:
        listed = await response.json()
    check("ListModelsResponse", listed)
    assert {m["id"] for m in listed["data"]} == {"sim-echo", "sim-embed"}


async def test_error_bodies_match_the_published_schema(stack: StartStack, make_settings: Any) -> None:
    s: Stack = await stack(settings=make_settings(gateway__max_body_bytes=4096), pools=[])
    refused = [
        ("/v1/chat/completions", {"model": "sim-echo", "messages": ASK, "colour": "blue"}, 400),
        ("/v1/chat/completions", {"model": "no-such-model", "messages": ASK}, 404),
        ("/v1/chat/completions", {"model": "sim-echo", "messages": ASK, "service_tier": "scale"}, 400),
        ("/v1/completions", {"model": "sim-echo", "prompt": ""}, 400),
        ("/v1/embeddings", {"model": "sim-echo", "input": "x"}, 400),
        ("/v1/embeddings", {"model": "sim-embed", "input": "x" * 5000}, 413),
    ]
    for path, body, status in refused:
        error = await post(s, path, body, status)
        check("ErrorResponse", error)
    async with s.http.get(f"{s.url}/v1/chat/completions") as response:
        assert response.status == 405
        check("ErrorResponse", await response.json())
