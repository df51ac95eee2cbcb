"""The OpenTelemetry side of `core.tracing`, imported only when `[tracing] enabled = true`.

One `TracerProvider` per process (never the global one), sampling new traces at `sample_ratio` and
following a parent's flag otherwise; spans leave in batches, from the SDK's own thread, to an
OTLP exporter (HTTP or gRPC). The gateway's span is a request's root here (or a child of its
client's); a worker adds the queue wait and the execution, dated from Redis's clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import RequestError
from .protocol import Envelope, Failure, Reply, Result
from .settings import TracingSettings
from .tracing import TRACEPARENT_HEADER

REQUEST_SPAN = "tiergate.request"
QUEUE_SPAN = "tiergate.queue"
EXECUTE_SPAN = "tiergate.execute"
_propagator = TraceContextTextMapPropagator()


def exporter_for(settings: TracingSettings) -> SpanExporter:
    """The OTLP exporter `settings` name; an empty endpoint leaves the exporter its own default."""
    endpoint = settings.endpoint or None
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    exporter: SpanExporter = HttpExporter(endpoint=endpoint)
    return exporter


def _parent(traceparent: str) -> Context | None:
    """The context a `traceparent` names; None (a new trace) for an empty or malformed one."""
    if not traceparent:
        return None
    context = _propagator.extract({TRACEPARENT_HEADER: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _sampled(traceparent: str) -> bool:
    """Whether a `traceparent` (`00-<trace>-<span>-<flags>`) has its sampled flag set: a worker's
    quick test before it parses the context, which a sampled-out request need not have parsed."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


class _RequestSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, reply: Reply | None, error: BaseException | None) -> None:
        span = self._span
        if isinstance(reply, Result):
            span.set_attributes({"tiergate.pool": reply.pool, "tiergate.worker": reply.worker})
        elif isinstance(reply, Failure):
            span.set_status(Status(StatusCode.ERROR, reply.code))
            span.set_attribute("tiergate.error", reply.code)
        elif error is not None:
            code = error.code if isinstance(error, RequestError) else type(error).__name__
            span.set_status(Status(StatusCode.ERROR, code))
            span.set_attribute("tiergate.error", code)
        span.end()


class OtelTracing:
    """`core.tracing.Tracing` with OpenTelemetry's SDK; `exporter` replaces the configured one."""

    def __init__(
        self, settings: TracingSettings, service: str, attributes: dict[str, str], exporter: SpanExporter | None = None
    ) -> None:
        resource = Resource.create({"service.name": f"{settings.service_name}-{service}", **attributes})
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or exporter_for(settings)))
        self.tracer = self.provider.get_tracer("tiergate")

    def request(self, traceparent: str, envelope: Envelope) -> tuple[_RequestSpan, str]:
        attributes = {"tiergate.request_id": envelope.id, "tiergate.model": envelope.model}
        attributes["tiergate.tier"] = envelope.tier
        span = self.tracer.start_span(REQUEST_SPAN, _parent(traceparent), SpanKind.SERVER, attributes)
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, trace.set_span_in_context(span))
        return _RequestSpan(span), carrier.get(TRACEPARENT_HEADER, "")

    def worked(self, pool: str, worker: str, done: Sequence[tuple[Envelope, float, Reply]], now_ms: float) -> None:
        offset_ns = time.time_ns() - int(now_ms * 1e6)  # Redis's clock to this host's

        def ns(at_ms: float) -> int:
            return int(at_ms * 1e6) + offset_ns

        for envelope, queued_at_ms, reply in done:
            parent = _parent(envelope.traceparent) if _sampled(envelope.traceparent) else None
            if parent is None:  # untraced, or its gateway sampled it out: nothing to record
                continue
            common: dict[str, str | int] = {"tiergate.request_id": envelope.id, "tiergate.pool": pool}
            common["tiergate.worker"] = worker
            if isinstance(reply, Result):
                started_ms = queued_at_ms + reply.queue_ms
                self._span(QUEUE_SPAN, parent, common, ns(queued_at_ms), ns(started_ms), SpanKind.CONSUMER)
                running = {**common, "tiergate.batch_size": reply.batch_size, "tiergate.processor": reply.processor}
                self._span(EXECUTE_SPAN, parent, running, ns(started_ms), ns(started_ms + reply.service_ms))
            else:
                failed = {**common, "tiergate.error": reply.code}
                end_ms = max(queued_at_ms, float(reply.finished_at_ms))
                span = self._span(QUEUE_SPAN, parent, failed, ns(queued_at_ms), None, SpanKind.CONSUMER)
                span.set_status(Status(StatusCode.ERROR, reply.code))
                span.end(ns(end_ms))

    def _span(
        self,
        name: str,
        parent: Context,
        attributes: Mapping[str, str | int],
        start_ns: int,
        end_ns: int | None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span:
        """A span dated after the fact; ended at `end_ns` unless that is None."""
        span = self.tracer.start_span(name, parent, kind, attributes, start_time=start_ns)
        if end_ns is not None:
            span.end(end_ns)
        return span

    def flush(self) -> None:
        self.provider.force_flush()

    def close(self) -> None:
        self.provider.shutdown()
