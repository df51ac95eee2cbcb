"""Tracing through the whole path: one request gives the gateway's span and the worker's queue-wait
and execution spans in one trace, each worker span a child of the gateway's, which continues the
client's `traceparent`. Gateway and worker run in this process (the `stack` fixture), each with its
own tracer provider, both exporting to the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import otel
from core.settings import Settings
from gateway.calls import CALLS
from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
POOL = "groq-realtime"


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Every process's spans, kept in memory instead of sent over OTLP."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(otel, "exporter_for", lambda settings: exporter)
    yield exporter
    exporter.clear()


async def traced_stack(stack: StartStack, make_settings: Callable[..., Settings], **tracing: object) -> Stack:
    settings = make_settings(tracing__enabled=True, **{f"tracing__{k}": v for k, v in tracing.items()})
    return await stack(settings, pools=[POOL])  # type: ignore[no-any-return]


def flush(s: Stack) -> None:
    """Export what both sides have ended (the SDK exports from a thread of its own, in batches)."""
    tracing = s.server.app[CALLS].tracing
    assert tracing is not None
    tracing.flush()
    worker_tracing = s.workers[POOL][0].executor.tracing
    assert worker_tracing is not None
    worker_tracing.flush()


def ids(context: object) -> tuple[int, int]:
    """(trace id, span id) of a span context, local or received (`is_remote` aside)."""
    return (context.trace_id, context.span_id)  # type: ignore[attr-defined]


def by_name(spans: tuple[ReadableSpan, ...], request_id: str) -> dict[str, ReadableSpan]:
    mine = [span for span in spans if (span.attributes or {}).get("tiergate.request_id") == request_id]
    assert len(mine) == len({span.name for span in mine}), mine
    return {span.name: span for span in mine}


async def ask(s: Stack, text: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"model": "sim-echo", "input": text, "tier": "realtime"}
    async with s.http.post(f"{s.url}/v1/infer", json=body, headers=headers or {}) as response:
        answer: dict[str, Any] = await response.json()
        assert (response.status, answer["output"]) == (200, text[::-1]), answer
        return answer


async def test_one_request_gives_linked_spans_from_the_gateway_and_the_worker(
    stack: StartStack, make_settings: Callable[..., Settings], exported: InMemorySpanExporter
) -> None:
    s = await traced_stack(stack, make_settings)
    client = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    answer = await ask(s, "follow me", client)
    flush(s)
    spans = by_name(exported.get_finished_spans(), answer["id"])
    assert set(spans) == {otel.REQUEST_SPAN, otel.QUEUE_SPAN, otel.EXECUTE_SPAN}
    gateway, queue, execute = spans[otel.REQUEST_SPAN], spans[otel.QUEUE_SPAN], spans[otel.EXECUTE_SPAN]
    assert gateway.resource.attributes["service.name"] == "tiergate-gateway"
    assert queue.resource.attributes["service.name"] == execute.resource.attributes["service.name"] == "tiergate-worker"
    # one trace, the client's: the gateway's span is its child, the worker's spans the gateway's
    assert {format(span.context.trace_id, "032x") for span in spans.values()} == {CLIENT_TRACE}  # type: ignore[union-attr]
    assert gateway.parent is not None and format(gateway.parent.span_id, "016x") == CLIENT_SPAN
    assert ids(queue.parent) == ids(execute.parent) == ids(gateway.context)
    assert (execute.attributes or {})["tiergate.pool"] == answer["pool"] == POOL
    assert (gateway.attributes or {})["tiergate.worker"] == (execute.attributes or {})["tiergate.worker"]
    # the queue wait ends where the execution starts, and both lie within the gateway's span
    assert queue.start_time is not None and queue.end_time == execute.start_time
    assert gateway.start_time is not None and gateway.end_time is not None and execute.end_time is not None
    slack_ns = 5_000_000  # two clocks (Redis's, this host's) meet here: within a few ms
    assert gateway.start_time - slack_ns <= queue.start_time and execute.end_time <= gateway.end_time + slack_ns


async def test_a_request_without_a_traceparent_starts_a_trace_of_its_own(
    stack: StartStack, make_settings: Callable[..., Settings], exported: InMemorySpanExporter
) -> None:
    s = await traced_stack(stack, make_settings)
    answers = [await ask(s, f"question {i}") for i in range(2)]
    flush(s)
    finished = exported.get_finished_spans()
    traces = []
    for answer in answers:
        spans = by_name(finished, answer["id"])
        gateway = spans[otel.REQUEST_SPAN]
        assert gateway.parent is None
        assert ids(spans[otel.EXECUTE_SPAN].parent) == ids(spans[otel.QUEUE_SPAN].parent) == ids(gateway.context)
        traces.append(gateway.context.trace_id)  # type: ignore[union-attr]
    assert len(set(traces)) == 2


async def test_a_trace_sampled_out_records_nothing_anywhere(
    stack: StartStack, make_settings: Callable[..., Settings], exported: InMemorySpanExporter
) -> None:
    s = await traced_stack(stack, make_settings, sample_ratio=0.0)
    await ask(s, "unseen")
    await ask(s, "unseen either", {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"})  # the client's: not sampled
    flush(s)
    assert exported.get_finished_spans() == ()
