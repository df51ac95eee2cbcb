"""The OpenAI Files and Batch APIs, as the official SDK sends and reads them: `/v1/files`
(upload, list, retrieve, content, delete) and `/v1/batches` (create, retrieve, list, cancel).
Handlers only translate: files and batch records are `BatchStore`'s, running a batch is
`BatchRunner`'s (gateway/batch_runner.py). Errors come back in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from msgspec import Meta

from core import protocol
from core.errors import InvalidRequest, NotFound, PayloadTooLarge, UploadsFull
from core.settings import BatchSettings

from .batch_metrics import BatchMetrics
from .batch_runner import CANCELLING, IN_PROGRESS, TERMINAL, VALIDATING, BatchRunner, window_s
from .batch_store import COMPLETED, FAILED, BatchStore, FileGone
from .http_shared import GATEWAY_HEADER, decode_json, grant_of, json_response
from .openai_api import openai_errors
from .state import STATE

log = logging.getLogger(__name__)
PREFIXES = ("/v1/files", "/v1/batches")  # the paths of this dialect: errors in OpenAI's shape
UPLOAD_PATH = "/v1/files"  # its body is read here, in parts, against the file size limit
STORE: web.AppKey[BatchStore] = web.AppKey("batch_store", BatchStore)
RUNNER: web.AppKey[BatchRunner] = web.AppKey("batch_runner", BatchRunner)  # where this gateway runs batches
PAGE_DEFAULT, PAGE_MAX = 20, 100
MULTIPART_SLACK_BYTES = 65_536  # a multipart body's own bytes beyond its file: boundaries, part headers, purpose
UPLOAD_CHUNK_BYTES = 262_144  # an upload is read this much at a time: 18 % less CPU than 64 KiB, no more with 1 MiB


# `24h`, or a shorter window in hours, minutes or seconds (1h .. 24h, 1m .. 1440m, 1s .. 86400s).
WINDOW_PATTERN = (
    r"^(?:(?:[1-9]|1[0-9]|2[0-4])h|(?:[1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m"
    r"|(?:[1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s)$"
)


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /v1/batches` (gateway/openapi_batch.py publishes its schema)."""

    input_file_id: Annotated[str, Meta(min_length=1, max_length=128)]
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Annotated[str, Meta(pattern=WINDOW_PATTERN)]
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None = None


_create = msgspec.json.Decoder(CreateBatch)


def _now_ms(request: web.Request) -> float:
    return request.app[STATE].clock.now_ms()


def _page(request: web.Request) -> tuple[str | None, int]:
    """`after` and `limit` of a list request."""
    raw = request.query.get("limit", str(PAGE_DEFAULT))
    if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
        raise InvalidRequest(f"limit must be a whole number from 1 to {PAGE_MAX}, not {raw!r} - at `$.limit`")
    return request.query.get("after") or None, int(raw)


def _listed(data: list[dict[str, Any]], more: bool) -> web.Response:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return json_response({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more})


# ---------------------------------------------------------------- files


def _file_object(record: protocol.FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


async def _own_file(request: web.Request) -> protocol.FileRecord:
    file_id = request.match_info["file_id"]
    record = await request.app[STORE].file(file_id)
    if record is None or record.tenant != grant_of(request).tenant:
        raise NotFound(f"no file with id {file_id!r}")
    return record


async def _read_part(
    part: BodyPartReader, limit: int, timeout_s: float, take: Callable[[int], None] = lambda _: None
) -> list[bytes]:
    """A part's content in the chunks it came in (a large file is never joined into one bytes
    object on the event loop), each chunk within `timeout_s` and given to `take` (the intake's
    count), refused once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        async with asyncio.timeout(timeout_s):
            chunk = await part.read_chunk(UPLOAD_CHUNK_BYTES)
        if not chunk:
            return chunks
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the file exceeds the limit of {limit} bytes")
        take(len(chunk))
        chunks.append(chunk)


async def _upload(request: web.Request, take: Callable[[int], None]) -> tuple[str, str, list[bytes]]:
    """(purpose, filename, content in parts) of a multipart upload; `take` counts the file's bytes."""
    settings = request.app[STATE].settings
    limit = _file_limit(settings.batches)
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload a file as multipart/form-data with the fields `file` and `purpose`")
    purpose, filename, data = "", "", None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("file", "purpose"):
                name = part.name if isinstance(part, BodyPartReader) else "a nested multipart"
                raise InvalidRequest(f"unexpected field {name!r}; an upload has only `file` and `purpose`")
            if part.name == "file":
                filename = os.path.basename(part.filename or "upload.jsonl")
                data = await _read_part(part, limit, settings.gateway.body_timeout_s, take)
            else:
                purpose = await _purpose(part, settings.gateway.body_timeout_s)
    except (HttpProcessingError, ValueError, AssertionError) as exc:  # aiohttp's parser on a malformed body
        raise InvalidRequest(f"the multipart body is malformed: {exc}") from exc
    if data is None:
        raise InvalidRequest("the upload has no `file` field - at `$.file`")
    if purpose != "batch":
        raise InvalidRequest(f"purpose is {purpose!r}; this gateway keeps files for `batch` only - at `$.purpose`")
    return purpose, filename, data


def _file_limit(limits: BatchSettings) -> int:
    if limits.storage == "redis":
        return min(limits.max_file_bytes, limits.redis_max_file_bytes)
    return limits.max_file_bytes


async def _purpose(part: BodyPartReader, timeout_s: float) -> str:
    """The `purpose` field, judged as soon as it is read (before a file that follows it)."""
    try:
        purpose = b"".join(await _read_part(part, 64, timeout_s)).decode(errors="replace")
    except PayloadTooLarge:
        raise InvalidRequest(
            "purpose is over 64 bytes; this gateway keeps files for `batch` only - at `$.purpose`"
        ) from None
    if purpose != "batch":
        raise InvalidRequest(f"purpose is {purpose!r}; this gateway keeps files for `batch` only - at `$.purpose`")
    return purpose


class Intake:
    """The bytes of file uploads a gateway holds in memory until each is stored, up to `limit`
    (`[batches] max_uploading_bytes`). An upload is let in if its declared size fits beside the
    bytes the others hold, and counts its own bytes as they arrive: one that says it is large
    and sends slowly holds only what it sent."""

    def __init__(self, limit: int, metrics: BatchMetrics) -> None:
        self.limit = limit
        self.held = 0
        self.metrics = metrics
        metrics.uploading.set_function(lambda: self.held)

    @contextlib.contextmanager
    def upload(self, declared: int) -> Iterator[Callable[[int], None]]:
        """Let an upload of `declared` bytes in, or raise `UploadsFull`; yields `take(n)`, to call
        as each `n` bytes arrive (it raises `UploadsFull` past the limit). Its bytes are let go at
        the end."""
        self._fits(declared)
        taken = 0

        def take(size: int) -> None:
            nonlocal taken
            self._fits(size)
            self.held += size
            taken += size

        try:
            yield take
        finally:
            self.held -= taken

    def _fits(self, size: int) -> None:
        if self.held + size > self.limit:
            self.metrics.uploads_refused.inc()
            raise UploadsFull(
                f"this gateway holds {self.held} bytes of uploads; {size} more would pass its limit of "
                f"{self.limit} (batches.max_uploading_bytes): retry after the Retry-After seconds"
            )


INTAKE: web.AppKey[Intake] = web.AppKey("upload_intake", Intake)


def _declared_size(request: web.Request) -> int:
    """What an upload counts against the intake: its Content-Length (413 at once if that alone
    passes the file size limit), or the limit where it has none (a chunked body)."""
    limit = _file_limit(request.app[STATE].settings.batches)
    declared = request.content_length
    if declared is not None and declared > limit + MULTIPART_SLACK_BYTES:
        raise PayloadTooLarge(f"the upload is {declared} bytes; a file exceeds the limit of {limit} bytes")
    return min(declared, limit + MULTIPART_SLACK_BYTES) if declared is not None else limit


@openai_errors
async def create_file(request: web.Request) -> web.StreamResponse:
    with request.app[INTAKE].upload(_declared_size(request)) as take:
        try:
            purpose, filename, parts = await _upload(request, take)
        except TimeoutError as exc:
            raise InvalidRequest("the upload stalled: no data arrived in time") from exc
        now_s = int(_now_ms(request) / 1000)
        size = sum(map(len, parts))
        record = protocol.FileRecord(
            f"file-{protocol.new_request_id()}", size, now_s, filename, purpose, grant_of(request).tenant
        )
        await request.app[STORE].put_file(record, parts)
    return json_response(_file_object(record))


@openai_errors
async def list_files(request: web.Request) -> web.StreamResponse:
    after, limit = _page(request)
    purpose = request.query.get("purpose")
    records, more = await request.app[STORE].list_files(grant_of(request).tenant, after, limit, purpose)
    return _listed([_file_object(r) for r in records], more)


@openai_errors
async def retrieve_file(request: web.Request) -> web.StreamResponse:
    return json_response(_file_object(await _own_file(request)))


@openai_errors
async def file_content(request: web.Request) -> web.StreamResponse:
    record = await _own_file(request)
    content = await request.app[STORE].content(record.id)
    if content is None:
        raise NotFound(f"the content of file {record.id!r} is no longer stored")
    gateway = request.app[STATE].gateway_id  # sent before the front (app.py) sees the answer
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", GATEWAY_HEADER: gateway})
    response.content_length = content.size
    await response.prepare(request)
    try:
        async for piece in content.pieces:  # sent as read: a large file is never whole in memory
            await response.write(piece)
    except FileGone:
        log.warning("file deleted while it was sent", extra={"file": record.id})
        response.force_close()  # the client sees a body shorter than its Content-Length
        return response
    await response.write_eof()
    return response


@openai_errors
async def delete_file(request: web.Request) -> web.StreamResponse:
    record = await _own_file(request)
    await request.app[STORE].delete_file(record)
    return json_response({"id": record.id, "object": "file", "deleted": True})


# ---------------------------------------------------------------- batches

_STAMPS = (
    "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip


def batch_object(record: protocol.BatchRecord, counts: dict[str, int], cancel_at: int) -> dict[str, Any]:
    """A batch as the SDK reads it; a cancel asked for and not yet acted on shows as `cancelling`."""
    status, stamps = record.status, {name: getattr(record, name) or None for name in _STAMPS}
    if cancel_at and status in (VALIDATING, IN_PROGRESS):
        status, stamps["cancelling_at"] = CANCELLING, stamps["cancelling_at"] or cancel_at
    errors = [msgspec.to_builtins(e) for e in record.errors]
    done, failed = counts.get(COMPLETED, 0), counts.get(FAILED, 0)
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": status,
        "output_file_id": record.output_file_id or None,
        "error_file_id": record.error_file_id or None,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        **stamps,
        "request_counts": {"total": record.total, "completed": done, "failed": failed},
        "metadata": record.metadata,
    }


async def _own_batch(request: web.Request) -> tuple[protocol.BatchRecord, dict[str, int], int]:
    batch_id = request.match_info["batch_id"]
    found = await request.app[STORE].batch(batch_id)
    if found is None or found[0].tenant != grant_of(request).tenant:
        raise NotFound(f"no batch with id {batch_id!r}")
    return found


@openai_errors
async def create_batch(request: web.Request) -> web.StreamResponse:
    body: CreateBatch = decode_json(_create, await request.read())
    seconds = window_s(body.completion_window)
    if seconds is None:  # the pattern allows only windows it reads
        message = f"completion_window is {body.completion_window!r}; `24h`, or a shorter `90m` or `30s`"
        raise InvalidRequest(f"{message} - at `$.completion_window`")
    tenant, store = grant_of(request).tenant, request.app[STORE]
    source = await store.file(body.input_file_id)
    if source is None or source.tenant != tenant:
        raise NotFound(f"no file with id {body.input_file_id!r} - at `$.input_file_id`")
    if source.purpose != "batch":
        raise InvalidRequest(f"file {source.id!r} has purpose {source.purpose!r}, not `batch` - at `$.input_file_id`")
    now_ms = _now_ms(request)
    now = int(now_ms / 1000)
    record = protocol.BatchRecord(
        id=f"batch_{protocol.new_request_id()}",
        endpoint=body.endpoint,
        input_file_id=source.id,
        completion_window=body.completion_window,
        status="validating",
        created_at=now,
        expires_at=now + seconds,
        metadata=body.metadata,
        tenant=tenant,
        grant=grant_of(request) if tenant else None,
    )
    await store.create(record)
    if (runner := request.app.get(RUNNER)) is not None:
        await runner.take(record.id)
    return json_response(batch_object(record, {}, 0))


@openai_errors
async def retrieve_batch(request: web.Request) -> web.StreamResponse:
    return json_response(batch_object(*await _own_batch(request)))


@openai_errors
async def list_batches(request: web.Request) -> web.StreamResponse:
    after, limit = _page(request)
    found, more = await request.app[STORE].list_batches(grant_of(request).tenant, after, limit)
    return _listed([batch_object(*item) for item in found], more)


@openai_errors
async def cancel_batch(request: web.Request) -> web.StreamResponse:
    record, counts, cancel_at = await _own_batch(request)
    if record.status in TERMINAL:
        return json_response(batch_object(record, counts, cancel_at))
    now = int(_now_ms(request) / 1000)
    await request.app[STORE].request_cancel(record.id, now)
    return json_response(batch_object(record, counts, cancel_at or now))


ROUTES = [
    web.post(UPLOAD_PATH, create_file),
    web.get("/v1/files", list_files),
    web.get("/v1/files/{file_id}", retrieve_file),
    web.get("/v1/files/{file_id}/content", file_content),
    web.delete("/v1/files/{file_id}", delete_file),
    web.post("/v1/batches", create_batch),
    web.get("/v1/batches", list_batches),
    web.get("/v1/batches/{batch_id}", retrieve_batch),
    web.post("/v1/batches/{batch_id}/cancel", cancel_batch),
]
