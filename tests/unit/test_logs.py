"""The JSON-lines log handler: every record becomes one JSON line with its `extra` fields; lines
below WARNING are written in batches within FLUSH_S, WARNING and above at once, the rest at close;
a per-request line written without a record is the same line."""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import threading
import time

import pytest

from core.logs import FLUSH_S, BatchedHandler, info_line


def _lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger("tests.logs")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_info_lines_are_written_together_and_carry_their_fields() -> None:
    stream = io.BytesIO()
    handler = BatchedHandler(stream, flush_s=3600)  # no timed flush during this test
    log = _logger(handler)
    try:
        for i in range(3):
            log.info("request done", extra={"id": f"r{i}", "total_ms": 0.5})
        assert stream.getvalue() == b""  # not one write per line
        handler.flush()
        lines = _lines(stream)
        assert [(line["msg"], line["id"], line["total_ms"], line["level"]) for line in lines] == [
            ("request done", f"r{i}", 0.5, "info") for i in range(3)
        ]
        assert str(lines[0]["ts"]).endswith("Z") and lines[0]["logger"] == "tests.logs"
    finally:
        handler.close()


def test_the_flusher_writes_info_lines_without_being_asked() -> None:
    stream = io.BytesIO()
    handler = BatchedHandler(stream)
    log = _logger(handler)
    try:
        log.info("on its way")
        deadline = time.monotonic() + 100 * FLUSH_S
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(FLUSH_S / 4)
        assert [line["msg"] for line in _lines(stream)] == ["on its way"]
    finally:
        handler.close()


def test_a_warning_is_written_at_once_with_what_was_buffered_before_it() -> None:
    stream = io.BytesIO()
    handler = BatchedHandler(stream)
    log = _logger(handler)
    try:
        log.info("first %s", "line")
        log.warning("then trouble", extra={"error": "boom"})
        assert [(line["msg"], line["level"]) for line in _lines(stream)] == [
            ("first line", "info"),
            ("then trouble", "warning"),
        ]
    finally:
        handler.close()


def test_close_writes_what_is_left() -> None:
    stream = io.BytesIO()
    handler = BatchedHandler(stream)
    _logger(handler).info("last words")
    handler.close()
    assert [line["msg"] for line in _lines(stream)] == ["last words"]


def test_info_line_writes_what_log_info_writes_without_a_record() -> None:
    """Through the root logger's batched handler (as `configure` leaves it), `info_line` writes
    the line `log.info(msg, extra=fields)` writes, in order with records; a logger below INFO
    writes nothing."""
    stream = io.BytesIO()
    handler = BatchedHandler(stream, flush_s=3600)
    root, log = logging.getLogger(), logging.getLogger("tests.lean_line")
    saved = root.handlers[:], root.level
    root.handlers[:], log.propagate = [handler], True
    root.setLevel(logging.INFO)
    fields = {"id": "r1", "tier": "realtime", "total_ms": 1.25, "batch_size": 3, "ids": ["a", "b"]}
    try:
        log.info("request done", extra=fields)
        info_line(log, "request done", fields)
        log.setLevel(logging.WARNING)
        info_line(log, "not written", fields)
        log.setLevel(logging.NOTSET)
        info_line(log, "after", {"id": "r2"})
        handler.flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        handler.close()
    by_record, lean, after = _lines(stream)
    assert {k: v for k, v in lean.items() if k != "ts"} == {k: v for k, v in by_record.items() if k != "ts"}
    assert lean["msg"] == "request done" and lean["logger"] == "tests.lean_line" and lean["ids"] == ["a", "b"]
    assert str(lean["ts"]).endswith("Z") and len(str(lean["ts"])) == len(str(by_record["ts"]))
    assert (after["msg"], after["id"]) == ("after", "r2")


def test_info_line_goes_through_logging_where_other_handlers_listen(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.captured_line")
    with caplog.at_level(logging.INFO):
        info_line(log, "request done", {"id": "r1", "total_ms": 0.5})
    [record] = [r for r in caplog.records if r.name == "tests.captured_line"]
    assert (record.getMessage(), record.id, record.total_ms) == ("request done", "r1", 0.5)  # type: ignore[attr-defined]


def blocked_signals(native_id: int) -> set[int]:
    """The signals a thread of this process blocks, from Linux's /proc."""
    with open(f"/proc/self/task/{native_id}/status") as status:
        mask = int(next(line for line in status if line.startswith("SigBlk:")).split()[1], 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_flusher_thread_leaves_ctrl_c_and_sigterm_to_the_main_thread() -> None:
    handler = BatchedHandler(io.BytesIO(), flush_s=0.01)
    native_id = handler._flusher.native_id
    assert native_id is not None
    deadline = time.monotonic() + 5
    while not {signal.SIGINT, signal.SIGTERM} <= blocked_signals(native_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {signal.SIGINT, signal.SIGTERM} <= blocked_signals(native_id)
    assert signal.SIGINT not in blocked_signals(threading.get_native_id())  # the main thread still takes them
    handler.close()
