"""The JSON-lines log handler: every record becomes one JSON line with its `extra` fields; lines
below WARNING are written in batches within FLUSH_S, WARNING and above at once, the rest at close."""

from __future__ import annotations

import io
import json
import logging
import time

from core.logs import FLUSH_S, BatchedHandler


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
