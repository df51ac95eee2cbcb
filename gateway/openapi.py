"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.

Request schemas are generated from the msgspec Structs the handlers decode with, so the document
cannot drift from what the gateway accepts; the gateway's limits from the settings are added as
`maxLength`/`maximum`/`maxItems`, and so are the checks made after decoding (the served models,
tiers and regions; the OpenAI options tiergate refuses), so that every request the document allows
is accepted and every other one refused. Built once per application; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

from core import capabilities
from core.protocol import SENSITIVITY_CLASSES
from core.settings import Settings, sensitivity_rank

from . import openapi_batch
from .handlers import InferBody, ResultBody
from .http_shared import json_response
from .openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest

REF = "#/components/schemas/{name}"
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_STATUS_TEXT = {
    400: "invalid request (the message names the field and the limit)",
    404: "unknown model or request id",
    409: "the request already has its answer: too late to cancel",
    421: "this gateway serves only other tiers",
    422: "no pool of the request's data region cleared for its data class may run it",
    408: "the body did not arrive within the body timeout",
    413: "the body exceeds max_body_bytes",
    401: 'no API key, or one unknown or revoked ([auth] mode = "keys")',
    403: "the API key does not allow this tier, model, region or data class",
    429: "the tier's queue is full, or the API key is over a limit; see Retry-After",
    500: "a worker reported a failure",
    503: "Redis is unreachable",
    504: "no result within the request's deadline",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": _STATUS_TEXT[s],
            "content": {"application/json": {"schema": {"$ref": REF.format(name="Error")}}},
        }
        for s in statuses
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _streamed(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """JSON, or Server-Sent Events when the body asks for `"stream": true`."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    content = {"application/json": {"schema": schema}, "text/event-stream": {"schema": event}}
    return {"description": description, "content": content}


def _post(
    name: str, summary: str, ok: dict[str, Any], *statuses: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name[0].lower() + name[1:],
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}},
            },
            "responses": {**ok, **(extra or {}), **_errors(400, 404, 408, 413, 421, 422, 429, 500, 503, 504)},
        }
    }


def _options(prop: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The alternatives of a generated property schema that have JSON type `kind`."""
    return [option for option in prop.get("anyOf", [prop]) if option.get("type") == kind]


def _restrict(props: dict[str, Any], key: str, kind: str, **constraint: Any) -> None:
    for option in _options(props[key], kind):
        option.update(constraint)


def _nullable_enum(values: Sequence[str]) -> dict[str, Any]:
    return {"anyOf": [{"enum": list(values)}, {"type": "null"}], "default": None}


def _served(settings: Settings, tiers: Sequence[str]) -> list[str]:
    """The models some pool serves on one of this gateway's tiers in its region."""
    region = settings.gateway.region
    return sorted(
        {m for pool in settings.pools.values() if pool.region == region and set(pool.tiers) & set(tiers)
         for m in pool.models}
    )  # fmt: skip


def _cleared(settings: Settings, tiers: Sequence[str]) -> list[str]:
    """The data classes some pool of this gateway's tiers is cleared for (lowest first)."""
    highest = max(
        (sensitivity_rank(p.clearance) for p in settings.pools.values() if set(p.tiers) & set(tiers)), default=0
    )
    return list(SENSITIVITY_CLASSES[: highest + 1])


def _routing(schemas: dict[str, Any], settings: Settings, tiers: Sequence[str]) -> None:
    """Models, tiers and regions a request may name; another model is a 404, anything else a 400."""
    served = _served(settings, tiers)
    infer = schemas["InferBody"]["properties"]
    infer["model"] = {"enum": served}
    infer["tier"] = _nullable_enum(tiers)
    infer["region"] = _nullable_enum(settings.regions())
    infer["sensitivity"] = _nullable_enum(_cleared(settings, tiers))
    embed = [m for m in served if settings.models[m].kind == "embed"]
    text = [m for m in served if m not in embed]
    service_tiers = [name for name, tier in settings.openai.service_tiers.items() if tier in tiers]
    for name in ("ChatRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"enum": text}
        schemas[name]["properties"]["service_tier"] = _nullable_enum(["auto", *service_tiers])
    schemas["EmbeddingRequest"]["properties"]["model"] = {"enum": embed}
    schemas["EmbeddingRequest"]["allOf"] = [
        {
            "if": {"properties": {"model": {"const": m}}},
            "then": {"properties": {"dimensions": _nullable_const(settings.models[m].dimensions)}},
        }
        for m in embed
    ]


def _nullable_const(value: int) -> dict[str, Any]:
    return {"anyOf": [{"const": value}, {"type": "null"}]}


# What a request may send for an option no pool of the config can use: only the values that ask
# for nothing (core.capabilities.fields_used), or null. (schema, property, capability, values)
_REFUSABLE: list[tuple[str, str, str, tuple[Any, ...]]] = [
    *((name, "n", "n", (1,)) for name in ("ChatRequest", "CompletionRequest")),
    ("ChatRequest", "logprobs", "logprobs", (False,)),
    ("ChatRequest", "top_logprobs", "top_logprobs", ()),
    ("ChatRequest", "tools", "tools", ()),
    ("ChatRequest", "tool_choice", "tool_choice", ()),
    ("ChatRequest", "functions", "functions", ()),
    ("ChatRequest", "function_call", "function_call", (False,)),
    ("ChatRequest", "response_format", "response_format", ({"type": "text"},)),
    ("ChatRequest", "modalities", "modalities", (["text"],)),
    ("ChatRequest", "audio", "audio", (False,)),
    ("ChatRequest", "web_search_options", "web_search_options", (False,)),
    ("CompletionRequest", "echo", "echo", (False,)),
    ("CompletionRequest", "best_of", "best_of", (1,)),
    ("CompletionRequest", "suffix", "suffix", ()),
    ("CompletionRequest", "logprobs", "logprobs", ()),
    ("Message", "tool_calls", "messages.tool_calls", ()),
    ("Message", "tool_call_id", "messages.tool_call_id", ()),
    ("Message", "function_call", "messages.function_call", (False,)),
    ("Message", "audio", "messages.audio", (False,)),
    ("Message", "refusal", "messages.refusal", ()),
]


def _unsupported(schemas: dict[str, Any], supported: frozenset[str]) -> None:
    """The OpenAI options no pool of this gateway can use (core/capabilities.py), left only the
    values that ask for nothing; content parts only of the types some pool takes."""
    for schema, key, capability, values in _REFUSABLE:
        props = schemas[schema]["properties"]
        if capability not in supported and key in props:
            props[key] = {"anyOf": [*({"const": v} for v in values), {"type": "null"}], "default": None}
    part = schemas["ContentPart"]["properties"]["type"]
    part["enum"] = [t for t in part["enum"] if t == "text" or f"messages.content.{t}" in supported]


def _supported(settings: Settings, tiers: Sequence[str]) -> frozenset[str]:
    """What some pool serving one of `tiers` in the gateway's region can use."""
    region = settings.gateway.region
    backends = {p.backend for p in settings.pools.values() if p.region == region and set(p.tiers) & set(tiers)}
    return frozenset().union(*(capabilities.SUPPORTS[backend] for backend in backends))


def _limit(schemas: dict[str, Any], settings: Settings) -> None:
    """Write the configured limits into the generated schemas."""
    gw = settings.gateway
    schemas["InferBody"]["properties"]["input"]["maxLength"] = gw.max_input_chars
    for name in ("ChatRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        for key in ("max_tokens", "max_completion_tokens"):
            if key in props:
                for option in props[key].get("anyOf", [props[key]]):
                    if option.get("type") == "integer":
                        option["maximum"] = gw.max_tokens
    schemas["ChatRequest"]["properties"]["messages"]["maxItems"] = gw.max_messages


def document(settings: Settings, tiers: Sequence[str] | None = None) -> dict[str, Any]:
    """The document of a gateway with these settings, serving `tiers` (all when None)."""
    (_, schemas) = msgspec.json.schema_components(
        [InferBody, ResultBody, ChatRequest, CompletionRequest, EmbeddingRequest], ref_template=REF
    )
    _limit(schemas, settings)
    _routing(schemas, settings, list(tiers or settings.tiers))
    _unsupported(schemas, _supported(settings, tiers or list(settings.tiers)))
    schemas["Error"] = _ERROR
    schemas.update(openapi_batch.schemas())
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "tiergate", "version": "1", "description": "Tiered inference gateway over Redis Streams."},
        "paths": {**_paths(), **openapi_batch.paths()},
        "components": {"schemas": schemas},
    }
    if settings.auth.mode == "keys":
        _secure(doc, settings.auth.exempt_paths)
    return doc


def _secure(doc: dict[str, Any], exempt: Sequence[str]) -> None:
    """With API keys: the Bearer scheme on every operation but those of `exempt` paths, each of
    which may then answer 401, and 403 where it takes a request body."""
    doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, item in doc["paths"].items():
        if any(path.startswith(p) if p.endswith("/") else path == p for p in exempt):
            continue
        for method, operation in item.items():
            if method in ("get", "post", "delete"):
                operation["security"] = [{"apiKey": []}]
                operation["responses"].update(_errors(401, 403) if method == "post" else _errors(401))


def _native_paths() -> dict[str, Any]:
    """`POST /v1/infer` and the state and cancel of a queued request, linked from its 202."""
    obj = {"type": "object"}
    result = {"$ref": REF.format(name="ResultBody")}
    queued = {
        "type": "object",
        "required": ["id", "status_url"],
        "properties": {"id": {"type": "string"}, "status_url": {"type": "string"}},
    }
    # A fuzzer's stateful phase follows these from a queued request to its state and its cancel.
    links = {
        name: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
        for name, operation in (("GetRequest", "getRequest"), ("CancelRequest", "cancelRequest"))
    }
    cancelled = {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"const": "cancelled"}},
    }
    return {
        "/v1/infer": _post(
            "InferBody",
            "Run one inference request, or queue it (`wait: false`)",
            {"200": _json(result, "the result")},
            extra={"202": {**_json(queued, "queued; poll status_url"), "links": links}},
        ),
        "/v1/requests/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "getRequest",
                "summary": "A queued request's state, result or error",
                "responses": {"200": _json(obj, "queued, done, failed or cancelled"), **_errors(404, 503)},
            },
            "delete": {
                "operationId": "cancelRequest",
                "summary": "Cancel a request sent with `wait: false`: no worker starts it",
                "responses": {"200": _json(cancelled, "cancelled"), **_errors(404, 409, 503)},
            },
        },
    }


def _paths() -> dict[str, Any]:
    """Every path of the API with its operations and responses."""
    obj = {"type": "object"}
    return {
        **_native_paths(),
        "/v1/chat/completions": _post(
            "ChatRequest",
            "OpenAI chat completions",
            {"200": _streamed(obj, "a chat.completion, or SSE chunks when stream is true")},
        ),
        "/v1/completions": _post(
            "CompletionRequest", "OpenAI text completions", {"200": _streamed(obj, "a text_completion, or SSE chunks")}
        ),
        "/v1/embeddings": _post("EmbeddingRequest", "OpenAI embeddings", {"200": _json(obj, "a list of embeddings")}),
        "/v1/models": {"get": {"summary": "OpenAI model list", "responses": {"200": _json(obj, "the models")}}},
        "/healthz": {"get": {"summary": "Liveness: never touches Redis", "responses": {"200": _json(obj, "ok")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers and every pool has a live worker",
                "responses": {"200": _json(obj, "ready"), **_errors(503)},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json(obj, "OpenAPI 3.1")}}},
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


ROUTES = [web.get("/openapi.json", serve)]  # the document, set as `app[OPENAPI]` by the app's builder
