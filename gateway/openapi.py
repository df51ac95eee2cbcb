"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.

Request schemas are generated from the msgspec Structs the handlers decode with, so the document
cannot drift from what the gateway accepts; the gateway's limits from the settings are added as
`maxLength`/`maximum`/`maxItems`. Built once per application; no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from core.settings import Settings

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
    408: "the body did not arrive within the body timeout",
    413: "the body exceeds max_body_bytes",
    429: "the tier's queue is full; see Retry-After",
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


def _post(
    name: str, summary: str, ok: dict[str, Any], *statuses: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}},
            },
            "responses": {**ok, **(extra or {}), **_errors(400, 404, 408, 413, 429, 500, 503, 504)},
        }
    }


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


def document(settings: Settings) -> dict[str, Any]:
    (_, schemas) = msgspec.json.schema_components(
        [InferBody, ResultBody, ChatRequest, CompletionRequest, EmbeddingRequest], ref_template=REF
    )
    _limit(schemas, settings)
    schemas["Error"] = _ERROR
    return {
        "openapi": "3.1.0",
        "info": {"title": "tiergate", "version": "1", "description": "Tiered inference gateway over Redis Streams."},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


def _paths() -> dict[str, Any]:
    """Every path of the API with its operations and responses."""
    obj = {"type": "object"}
    result = {"$ref": REF.format(name="ResultBody")}
    queued = {"type": "object", "required": ["id", "status_url"], "properties": {"id": {"type": "string"}}}
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
            extra={"202": _json(queued, "queued; poll status_url")},
        ),
        "/v1/requests/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "summary": "A queued request's state, result or error",
                "responses": {"200": _json(obj, "queued, done, failed or cancelled"), **_errors(404, 503)},
            },
            "delete": {
                "summary": "Cancel a request sent with `wait: false`: no worker starts it",
                "responses": {"200": _json(cancelled, "cancelled"), **_errors(404, 409, 503)},
            },
        },
        "/v1/chat/completions": _post(
            "ChatRequest",
            "OpenAI chat completions",
            {"200": _json(obj, "a chat.completion, or SSE chunks when stream is true")},
        ),
        "/v1/completions": _post(
            "CompletionRequest", "OpenAI text completions", {"200": _json(obj, "a text_completion, or SSE chunks")}
        ),
        "/v1/embeddings": _post("EmbeddingRequest", "OpenAI embeddings", {"200": _json(obj, "a list of embeddings")}),
        "/v1/models": {"get": {"summary": "OpenAI model list", "responses": {"200": _json(obj, "the models")}}},
        "/healthz": {"get": {"summary": "Liveness: never touches Redis", "responses": {"200": _json(obj, "ok")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers",
                "responses": {"200": _json(obj, "ready"), **_errors(503)},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json(obj, "OpenAPI 3.1")}}},
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


def add_routes(app: web.Application, settings: Settings) -> None:
    app[OPENAPI] = document(settings)
    app.router.add_get("/openapi.json", serve)
