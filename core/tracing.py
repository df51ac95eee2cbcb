"""Optional request tracing, the `tiergate[otel]` extra: what the gateway and the workers call.

`start` gives None while `[tracing]` is off: then nothing of OpenTelemetry is imported, and each
caller skips tracing on that None with one test. On, it loads `core.otel`, which makes the spans
and exports them over OTLP; the W3C `traceparent` of a request travels in its envelope. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .errors import ConfigError
from .protocol import Envelope, Reply
from .settings import TracingSettings

EXTRA = "tiergate[otel]"
TRACEPARENT_HEADER = "traceparent"  # W3C Trace Context: a client's trace, continued by the gateway


class RequestSpan(Protocol):
    """The gateway's span of one request, open from its `Call` to the call's one outcome."""

    def end(self, reply: Reply | None, error: BaseException | None) -> None: ...


class Tracing(Protocol):
    def request(self, traceparent: str, envelope: Envelope) -> tuple[RequestSpan, str]:
        """Start the gateway's span of `envelope` (a child of the client's `traceparent`, if any,
        else a new trace); the span, and its own traceparent for the envelope."""
        ...

    def worked(self, pool: str, worker: str, done: Sequence[tuple[Envelope, float, Reply]], now_ms: float) -> None:
        """Record, for each (envelope, queued at, reply) of a batch a worker answered, the request's
        queue wait and its execution as children of its gateway span. Times are on Redis's clock,
        `now_ms` its reading now."""
        ...

    def flush(self) -> None:
        """Export every span ended so far."""
        ...

    def close(self) -> None:
        """Export what is left and stop exporting."""
        ...


def start(settings: TracingSettings, service: str, attributes: dict[str, str]) -> Tracing | None:
    """The process's tracing, named `<service_name>-<service>`; None when tracing is off. Enabled
    without the extra installed, a `ConfigError` names it."""
    if not settings.enabled:
        return None
    require()
    from .otel import OtelTracing

    return OtelTracing(settings, service, attributes)


def require() -> None:
    """Raise `ConfigError` naming the extra when OpenTelemetry is not installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"[tracing] enabled = true needs OpenTelemetry, which is not installed ({exc.name}): pip install '{EXTRA}'"
        ) from exc
