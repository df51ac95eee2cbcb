"""Run `tiergate up` as a real process: wait for its ready line, always stop it afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import REPO


@dataclass
class Up:
    process: subprocess.Popen[str]
    ready: dict  # type: ignore[type-arg]
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            if self.pump is not None:
                self.pump.join(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()


def start_up(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Up:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up", "--port", "0", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env or os.environ.copy(),
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    ready: dict = {}  # type: ignore[type-arg]
    found = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if not found.is_set() and line.startswith("{") and json.loads(line).get("event") == "ready":
                ready.update(json.loads(line))
                found.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not found.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            thread.join(timeout=5)
            process.stdout.close()
            raise RuntimeError(f"tiergate up was not ready (exit {process.poll()}): {''.join(lines)[-2000:]}")
    return Up(process, ready, lines, thread)


@pytest.fixture
def tiergate_up() -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Up:
        up = start_up(*args, env=env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
