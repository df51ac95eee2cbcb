"""The Files and Batch APIs' part of the OpenAPI document (gateway/openapi.py): their paths,
the schema of `POST /v1/batches` generated from the Struct its handler decodes with, and the
links a fuzzer's stateful phase follows from a created file or batch. No I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .batch_api import PAGE_MAX, CreateBatch

REF = "#/components/schemas/{name}"
_ERROR = {"$ref": REF.format(name="Error")}
_TEXT = {
    400: "invalid request (the message names the field)",
    404: "no such file or batch (for a list: `after` names none it holds)",
    405: "method not allowed",
    408: "the body did not arrive within the body timeout",
    413: "the body or file exceeds its limit",
    429: "the gateway holds [batches] max_uploading_bytes of uploads (uploads_full); Retry-After says when to retry",
    503: "Redis is unreachable",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _TEXT[s], "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


def _object(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object"],
        "properties": {"id": {"type": "string"}, "object": {"const": kind}},
    }


def _ok(schema: dict[str, Any], description: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {"200": {**answer, **({"links": links} if links else {})}}


def _links(**operations: str) -> dict[str, Any]:
    """Links from an answer's `id` to operations taking it as the path parameter `parameter`."""
    return {
        name: {"operationId": operation.split(":")[0], "parameters": {operation.split(":")[1]: "$response.body#/id"}}
        for name, operation in operations.items()
    }


def _id(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def _page(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    limit = {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": 20}
    return [
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "required": False, "schema": limit},
        *extra,
    ]


def _list(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {"data": {"type": "array", "items": _object(kind)}},
    }


def schemas() -> dict[str, Any]:
    """The request schemas these paths refer to."""
    (_, found) = msgspec.json.schema_components([CreateBatch], ref_template=REF)
    return found


def _upload() -> dict[str, Any]:
    form = {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"const": "batch"}},
        "additionalProperties": False,
    }
    links = _links(GetFile="retrieveFile:file_id", GetContent="fileContent:file_id", DeleteFile="deleteFile:file_id")
    return {
        "operationId": "createFile",
        "summary": "Upload a batch input file (multipart: `file`, `purpose=batch`)",
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
        "responses": {**_ok(_object("file"), "the File object", links), **_errors(400, 408, 413, 429, 503)},
    }


def _files() -> dict[str, Any]:
    purpose = {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}}
    content = {
        "description": "the file's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    deleted = {
        "type": "object",
        "required": ["id", "deleted"],
        "properties": {"id": {"type": "string"}, "deleted": {"const": True}},
    }
    return {
        "/v1/files": {
            "post": _upload(),
            "get": {
                "operationId": "listFiles",
                "summary": "The caller's files, newest first",
                "parameters": _page(purpose),
                "responses": {**_ok(_list("file"), "a page of File objects"), **_errors(400, 404, 503)},
            },
        },
        "/v1/files/{file_id}": {
            "parameters": _id("file_id"),
            "get": {
                "operationId": "retrieveFile",
                "summary": "A File object",
                "responses": {**_ok(_object("file"), "the File object"), **_errors(404, 503)},
            },
            "delete": {
                "operationId": "deleteFile",
                "summary": "Delete a file",
                "responses": {**_ok(deleted, "deleted"), **_errors(404, 503)},
            },
        },
        "/v1/files/{file_id}/content": {
            "parameters": _id("file_id"),
            "get": {
                "operationId": "fileContent",
                "summary": "A file's content",
                "responses": {"200": content, **_errors(404, 503)},
            },
        },
    }


def _batches() -> dict[str, Any]:
    batch = _object("batch")
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name="CreateBatch")}}}}
    links = _links(GetBatch="retrieveBatch:batch_id", CancelBatch="cancelBatch:batch_id")
    return {
        "/v1/batches": {
            "post": {
                "operationId": "createBatch",
                "summary": "Create a batch from an uploaded file; it runs on the batch tier",
                "requestBody": body,
                "responses": {**_ok(batch, "the Batch object, validating", links), **_errors(400, 404, 408, 413, 503)},
            },
            "get": {
                "operationId": "listBatches",
                "summary": "The caller's batches, newest first",
                "parameters": _page(),
                "responses": {**_ok(_list("batch"), "a page of Batch objects"), **_errors(400, 404, 503)},
            },
        },
        "/v1/batches/{batch_id}": {
            "parameters": _id("batch_id"),
            "get": {
                "operationId": "retrieveBatch",
                "summary": "A Batch object",
                "responses": {**_ok(batch, "the Batch object"), **_errors(404, 503)},
            },
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": _id("batch_id"),
            "post": {
                "operationId": "cancelBatch",
                "summary": "Stop feeding a batch",
                "responses": {**_ok(batch, "the Batch object, cancelling"), **_errors(404, 503)},
            },
        },
    }


def paths() -> dict[str, Any]:
    """Every path of the Files and Batch APIs."""
    return {**_files(), **_batches()}
