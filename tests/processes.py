"""Real `tiergate` processes for tests: start one, wait for its JSON ready line, always stop it.

Used by the end-to-end and process-level integration tests; the child's stdout is pumped by a
thread so its lines can be read back, and `stop` sends SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from tests.conftest import REPO


@dataclass
class Proc:
    process: subprocess.Popen[str]
    ready: dict = field(default_factory=dict)  # type: ignore[type-arg]
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 20) -> int:
        return self.process.wait(timeout=timeout_s)

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
            if self.pump is not None:
                self.pump.join(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()


def start(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Proc:
    """`python -m gateway ARGS...` (the `tiergate` command), once its ready line is out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env or os.environ.copy(),
    )  # fmt: skip
    proc = Proc(process)
    found = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            proc.lines.append(line)
            if not found.is_set() and line.startswith("{") and json.loads(line).get("event") == "ready":
                proc.ready.update(json.loads(line))
                found.set()

    proc.pump = threading.Thread(target=pump, daemon=True)
    proc.pump.start()
    if not found.wait(timeout_s):
        proc.stop(timeout_s=5)
        raise RuntimeError(f"tiergate {args[0]} was not ready: {''.join(proc.lines)[-2000:]}")
    return proc
