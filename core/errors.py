"""The one error tree of tiergate; each class knows its HTTP status and its error code.

    TiergateError
    ├── ConfigError                 a config file is unreadable or invalid (not an HTTP error)
    ├── ListenError                 a gateway cannot listen on its host and port (not an HTTP error)
    ├── RedisAccessError            Redis refuses this process: credentials, TLS (not an HTTP error)
    └── RequestError                anything a client is told about
        ├── InvalidRequest          400 invalid_request
        │   └── PlacementRefused    422 placement_refused (no pool of its region and data class)
        ├── Unauthorized            401 unauthorized (no API key, or one unknown or revoked)
        ├── Forbidden               403 forbidden (the key does not allow a tier, model, region or class)
        ├── NotFound                404 not_found
        │   └── ModelNotFound       404 model_not_found
        ├── Conflict                409 conflict
        │   ├── Cancelled           409 cancelled (the request was cancelled before it ran)
        │   └── AlreadyFinished     409 already_finished (too late to cancel: it has its answer)
        ├── PayloadTooLarge         413 payload_too_large
        ├── TierNotServed           421 tier_not_served (a gateway dedicated to other tiers)
        ├── QueueFull               429 queue_full
        │   └── RateLimited         429 rate_limited (an API key's requests, tokens or concurrency)
        ├── BackendUnavailable      503 redis_unavailable
        ├── DeadlineExceeded        504 deadline_exceeded
        └── WorkerFailed            500 worker_error (the worker reported a failure)

The codes are also module constants (`DEADLINE_EXCEEDED`, ...): a worker's `Failure` and the
gateway's error bodies name them in one way. Foreign exceptions (redis, msgspec) are translated at
the boundary with `raise ... from exc`.
"""

from __future__ import annotations

from typing import ClassVar

# The codes: a client reads one as its error body's `type`; a worker puts one in a `Failure`.
# Every other module names a code through these constants, never as a string of its own.
INTERNAL_ERROR = "internal_error"
INVALID_REQUEST = "invalid_request"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
PLACEMENT_REFUSED = "placement_refused"
NOT_FOUND = "not_found"
MODEL_NOT_FOUND = "model_not_found"
CONFLICT = "conflict"
CANCELLED = "cancelled"
ALREADY_FINISHED = "already_finished"
TIER_NOT_SERVED = "tier_not_served"
PAYLOAD_TOO_LARGE = "payload_too_large"
QUEUE_FULL = "queue_full"
RATE_LIMITED = "rate_limited"
UPLOADS_FULL = "uploads_full"
REDIS_UNAVAILABLE = "redis_unavailable"
DEADLINE_EXCEEDED = "deadline_exceeded"
WORKER_ERROR = "worker_error"
NOT_READY = "not_ready"  # /readyz only: a pool of the config has no live worker yet


class TiergateError(Exception):
    """Base of every error tiergate raises on purpose."""


class ConfigError(TiergateError):
    """The configuration cannot be used; the message names the file, the key and the problem."""


class ListenError(TiergateError):
    """A gateway cannot listen; the message names the host, the port and why."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class RedisAccessError(TiergateError):
    """Redis answers but will not serve this process (wrong ACL user or password, a TLS
    certificate it cannot verify, TLS files without a `rediss://` URL): retrying cannot help."""


class RequestError(TiergateError):
    status: ClassVar[int] = 500
    code: ClassVar[str] = INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = ""  # set once the request was queued: the gateway's log line carries it

    def log_fields(self, path: str) -> dict[str, object]:
        """The fields of the gateway's "request refused" line; `id` joins it to the worker's lines."""
        fields: dict[str, object] = {"path": path, "status": self.status, "error": self.code}
        if self.request_id:
            fields["id"] = self.request_id
        return fields


class InvalidRequest(RequestError):
    status = 400
    code = INVALID_REQUEST


class Unauthorized(RequestError):
    """`[auth] mode = "keys"` and the request sent no API key, or one the gateway does not know."""

    status = 401
    code = UNAUTHORIZED


class Forbidden(RequestError):
    """The request's API key does not allow what it asked for; the message names it."""

    status = 403
    code = FORBIDDEN


class PlacementRefused(InvalidRequest):
    """No pool may run the request: none serves its model on its tier in its data region, or
    none there is cleared for its data class. It is refused, never sent elsewhere."""

    status = 422
    code = PLACEMENT_REFUSED


class NotFound(RequestError):
    status = 404
    code = NOT_FOUND


class ModelNotFound(NotFound):
    code = MODEL_NOT_FOUND


class Conflict(RequestError):
    """The request's state does not allow what was asked."""

    status = 409
    code = CONFLICT


class Cancelled(Conflict):
    """The request was cancelled (its client hung up, or `DELETE /v1/requests/{id}`) before a
    worker started it; also the code of the `Failure` stored as its answer."""

    code = CANCELLED


class AlreadyFinished(Conflict):
    """`DELETE /v1/requests/{id}` of a request that already has its answer."""

    code = ALREADY_FINISHED


class TierNotServed(RequestError):
    """The request's tier is not one this gateway serves: it is dedicated to other tiers."""

    status = 421
    code = TIER_NOT_SERVED


class PayloadTooLarge(RequestError):
    status = 413
    code = PAYLOAD_TOO_LARGE


class QueueFull(RequestError):
    """Refused by admission; `retry_after_s` becomes the Retry-After header."""

    status = 429
    code = QUEUE_FULL

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(QueueFull):
    """An API key is over one of its limits (requests or tokens a minute, requests at once);
    the message names the limit, `retry_after_s` says when it has room again."""

    code = RATE_LIMITED


class UploadsFull(QueueFull):
    """A gateway holds `[batches] max_uploading_bytes` of file uploads, or would with this one."""

    code = UPLOADS_FULL


class BackendUnavailable(RequestError):
    status = 503
    code = REDIS_UNAVAILABLE


class DeadlineExceeded(RequestError):
    status = 504
    code = DEADLINE_EXCEEDED


class WorkerFailed(RequestError):
    status = 500
    code = WORKER_ERROR


# Codes a worker may put in an ErrorReply, mapped back to the class the gateway raises.
BY_CODE: dict[str, type[RequestError]] = {
    cls.code: cls
    for cls in (InvalidRequest, PlacementRefused, ModelNotFound, QueueFull, DeadlineExceeded, WorkerFailed, Cancelled)
}


def from_code(code: str, message: str) -> RequestError:
    return BY_CODE.get(code, WorkerFailed)(message)


def for_request(error: RequestError, request_id: str) -> RequestError:
    """`error`, marked as the outcome of the queued request `request_id` (for the log)."""
    error.request_id = request_id
    return error
