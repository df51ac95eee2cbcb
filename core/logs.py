"""JSON-lines logging for the process entry points (gateway, workers, `tiergate up`).

Only entry points call `configure`; modules log through `logging.getLogger(__name__)` with
structured fields in `extra=`, which land as top-level keys of each JSON line. Lines below WARNING
are written in batches by a flusher thread at most `FLUSH_S` after they were logged (a write and
a flush per line cost as much as the rest of a request's log line); WARNING and above, and a
full buffer, are written at once, and whatever is buffered is written at exit. The one INFO line
per request goes through `info_line`, which writes the same JSON without building a LogRecord.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

import msgspec

from .background import leave_signals_to_the_main_thread

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()

FLUSH_S = 0.1  # the longest an INFO line waits before it is written
MAX_BUFFERED = 512  # lines; a fuller buffer is written at once


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""  # the record's whole second, formatted once per second

    def format(self, record: logging.LogRecord) -> str:
        return self.encode(record).decode(errors="replace")

    def encode(self, record: logging.LogRecord) -> bytes:
        line = self.start(
            record.created, record.levelname, record.name, record.getMessage() if record.args else str(record.msg)
        )
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(line)

    def start(self, created_s: float, level: str, logger: str, message: str) -> dict[str, Any]:
        """A line's first four fields; its `extra` fields follow them."""
        second = int(created_s)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        msecs = int((created_s - second) * 1000)
        return {"ts": f"{self._stamp}.{msecs:03d}Z", "level": level.lower(), "logger": logger, "msg": message}


class BatchedHandler(logging.Handler):
    """Encodes each record at once and writes the lines in batches to a binary stream."""

    def __init__(self, stream: IO[bytes], flush_s: float = FLUSH_S) -> None:
        super().__init__()
        self.stream = stream
        self.flush_s = flush_s
        self._json = JsonFormatter()
        self._lines: list[bytes] = []
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, name="log-flusher", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._lines.append(self._json.encode(record))
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= MAX_BUFFERED:
            self._write()

    def info_line(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        """The line `emit` writes for an INFO record of `logger` with these `extra` fields."""
        line = self._json.start(time.time(), "INFO", logger, message)
        line.update(fields)
        encoded = _encoder.encode(line)
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._lines.append(encoded)
            if len(self._lines) >= MAX_BUFFERED:
                self._write()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()

    def _write(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            try:
                self.stream.write(b"\n".join(lines) + b"\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell it
                pass

    def _flush_every(self) -> None:
        leave_signals_to_the_main_thread()
        while not self._stop.wait(self.flush_s):
            self.flush()


def configure(level: str = "INFO") -> None:
    # The JSON lines carry none of these: gathering them costs time on every record.
    logging._srcfile = None  # the caller's file and line (logging HOWTO, "Optimization")
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    stream = getattr(sys.stderr, "buffer", None)  # None where stderr was replaced by a text-only object
    if stream is not None:
        handler: logging.Handler = BatchedHandler(stream)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """`logger.info(message, extra=fields)`, for the line a process writes per request: where
    the root logger's one handler is the batched one that `configure` installs, the same JSON line
    goes to it without a LogRecord (in the gateway a record, among a request's other work, costs
    several times what it costs alone: bench/log_cost.py); anywhere else, logging's own way."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = logging.getLogger().handlers
    batched = handlers[0] if len(handlers) == 1 else None
    own_way = logger.filters or not logger.propagate  # what only a LogRecord can go through
    if isinstance(batched, BatchedHandler) and batched.level <= logging.INFO and not (own_way or batched.filters):
        try:
            batched.info_line(logger.name, message, fields)
            return
        except Exception:  # a field JSON cannot hold: logging's own way reports it
            pass
    logger.info(message, extra=fields)
