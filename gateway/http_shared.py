"""What the gateway's HTTP dialects share (the native API, the OpenAI-compatible one, the
dashboard's and the OpenAPI document's routes): decoding request bodies, JSON responses, and the
headers more than one dialect reads or writes. No I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from core.errors import InvalidRequest
from core.protocol import OPEN_GRANT, Grant

IDEMPOTENCY_HEADER = "Idempotency-Key"
QUEUE_INFO_HEADER = "X-Tiergate-Queue-Info"  # a client sends it (any value) to learn its queue position
REPLAYED_HEADER = "Idempotent-Replayed"
GATEWAY_HEADER = "X-Tiergate-Gateway"  # on every answer: the id of the gateway process that gave it

# Where an authenticated request keeps its key's `Grant` (a typed key: aiohttp warns on a string one).
GRANT: web.RequestKey[Grant] = web.RequestKey("grant", Grant)

_json = msgspec.json.Encoder()


def grant_of(request: web.Request) -> Grant:
    """The `Grant` of the key that sent `request`; `OPEN_GRANT` where none was checked."""
    try:
        return request[GRANT]  # `Mapping.get` would cost a Python call more
    except KeyError:
        return OPEN_GRANT


def placement(grant: Grant, region: str | None, sensitivity: str | None) -> tuple[str | None, str | None]:
    """A request's data region and class: those it names, else its key's (None: the gateway's
    region, the lowest class)."""
    return region or grant.region or None, sensitivity or grant.sensitivity or None


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def decode_json(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    """Decode a request body, its errors as `InvalidRequest` with msgspec's text (`- at $.field`).

    A whole number written with a fraction (`2564.0`) is an integer to JSON Schema, and so to the
    published OpenAPI document; msgspec refuses it for an `int` field, so such a body is decoded
    again with its whole floats as ints. Only refused bodies pay for that second pass.
    """
    try:
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if "got `float`" not in str(exc):
                raise
            return msgspec.convert(_whole(msgspec.json.decode(raw)), decoder.type, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def idempotency_key(request: web.Request) -> str | None:
    """The request's `Idempotency-Key`, when it sent one (1 to 255 characters)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest(f"the {IDEMPOTENCY_HEADER} header must be 1 to 255 characters, not {len(key)}")
    return key
