"""Real `tiergate` processes for tests: start one, wait for its JSON ready line, always stop it.

Used by the end-to-end and process-level integration tests; the child's stdout and stderr are
pumped by threads so their lines can be read back, and `stop` sends SIGTERM, then SIGKILL after a
grace. `spawn` starts one without waiting for its ready line. Every process started is noted in
STARTED: tests/conftest.py shows their stderr when a test fails, and fails a test whose children
printed a Python traceback unless it is marked `expects_traceback`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Proc:
    process: subprocess.Popen[str]
    ready: dict = field(default_factory=dict)  # type: ignore[type-arg]
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # stderr lines
    pumps: list[threading.Thread] = field(default_factory=list)
    found: threading.Event = field(default_factory=threading.Event)  # the ready line was read

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 20) -> int:
        return self.process.wait(timeout=timeout_s)

    def logged(self, msg: str, timeout_s: float = 30, **fields: object) -> dict:  # type: ignore[type-arg]
        """The first JSON log line on stderr with this `msg` and these fields, waiting for it."""

        def record(line: str) -> dict:  # type: ignore[type-arg]
            if not line.startswith("{"):
                return {}
            try:
                return json.loads(line)  # type: ignore[no-any-return]
            except json.JSONDecodeError:
                raise AssertionError(f"a stderr line is not one whole JSON log line: {line[:300]!r}") from None

        def match(line: str) -> bool:
            found = record(line)
            return bool(found.get("msg") == msg and all(found.get(k) == v for k, v in fields.items()))

        deadline = time.monotonic() + timeout_s
        while True:
            found = next((record(line) for line in list(self.errors) if match(line)), None)
            if found is not None:
                return found  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {msg!r} log line with {fields} within {timeout_s} s")
            time.sleep(0.05)

    def tracebacks(self) -> list[str]:
        """Its stderr lines that hold a Python traceback (printed, or inside a JSON log line's `exc`)."""
        return [line for line in list(self.errors) if TRACEBACK in line]

    def describe(self, last_lines: int = 60) -> str:
        """Its command line, exit status and the last lines of its stderr, for a failure report."""
        argv = " ".join(str(a) for a in self.process.args[2:])  # type: ignore[index]
        tail = "".join(list(self.errors)[-last_lines:])
        return f"--- {argv} (pid {self.process.pid}, exit {self.process.poll()})\n{tail}"

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, wait, SIGKILL if it is still there; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.close()

    def close(self) -> None:
        """Once it has exited: read the rest of its output, close the pipes."""
        for pump in self.pumps:
            pump.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


STARTED: list[Proc] = []  # every process started, in order; tests/conftest.py reads it


def spawn(*args: str, env: dict[str, str] | None = None) -> Proc:
    """`python -m ops ARGS...` (the `tiergate` command), its output pumped into `lines` and
    `errors`; does not wait for anything."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ops", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env or os.environ.copy(),
    )  # fmt: skip
    proc = Proc(process)
    STARTED.append(proc)

    def on_stdout(line: str) -> None:
        if not proc.found.is_set() and line.startswith("{") and json.loads(line).get("event") == "ready":
            proc.ready.update(json.loads(line))
            proc.found.set()

    proc.pumps.append(_pump(process.stdout, proc.lines, on_stdout))
    proc.pumps.append(_pump(process.stderr, proc.errors, lambda line: None))
    return proc


def _pump(stream: object, into: list[str], each: Callable[[str], None]) -> threading.Thread:
    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            each(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def start(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Proc:
    """`python -m ops ARGS...` (the `tiergate` command), once its ready line is out."""
    proc = spawn(*args, env=env)
    if not proc.found.wait(timeout_s):
        proc.stop(timeout_s=5)
        said = "".join(proc.lines)[-2000:] + "".join(proc.errors)[-4000:]
        raise RuntimeError(f"tiergate {args[0]} was not ready: {said}")
    return proc


# The top of a config for fault tests: a dead worker's entries are reclaimed, and a dead child
# restarted, within about a second; every tier has a long deadline. Tests add processors and pools.
QUICK_RECOVERY = """
[gateway]
shutdown_grace_s = 5.0
[delivery]
claim_idle_min_ms = 300
claim_service_multiple = 1.0
claim_token_budget = 0
claim_interval_s = 0.2
[supervisor]
restart_backoff_s = 0.1
start_failures_max = 3
[tiers.realtime]
slo = { latency_ms = 1000 }
default_deadline_ms = 60000
max_queue = 10000
[tiers.interactive]
slo = { latency_ms = 1000 }
default_deadline_ms = 60000
max_queue = 10000
[tiers.batch]
slo = { latency_ms = 30000 }
default_deadline_ms = 60000
max_queue = 10000
"""


async def audit_tail(redis_url: str, *flags: str) -> list[dict[str, Any]]:
    """`tiergate audit tail` as a real process: its JSON lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", "audit", "tail", "--redis-url", redis_url, *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return [json.loads(row) for row in out.decode().splitlines()]
