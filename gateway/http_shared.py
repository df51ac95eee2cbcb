"""What the gateway's HTTP dialects share (the native API, the OpenAI-compatible one, the
dashboard's and the OpenAPI document's routes): JSON responses, and the headers more than one
dialect reads or writes. No I/O.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from core.errors import InvalidRequest

IDEMPOTENCY_HEADER = "Idempotency-Key"
QUEUE_INFO_HEADER = "X-Tiergate-Queue-Info"  # a client sends it (any value) to learn its queue position
REPLAYED_HEADER = "Idempotent-Replayed"

_json = msgspec.json.Encoder()


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def idempotency_key(request: web.Request) -> str | None:
    """The request's `Idempotency-Key`, when it sent one (1 to 255 characters)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest(f"the {IDEMPOTENCY_HEADER} header must be 1 to 255 characters, not {len(key)}")
    return key
