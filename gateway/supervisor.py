"""Child-process supervision for `tiergate up` and `tiergate worker --replicas N`.

Each child prints one JSON ready line on stdout; the supervisor waits for it, forwards the
rest of the child's stdout, and on SIGTERM/SIGINT (or a child dying) stops the gateway first,
so in-flight requests finish, then the workers; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import msgspec

log = logging.getLogger(__name__)


class Child:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.process: asyncio.subprocess.Process | None = None
        self.ready: dict[str, object] = {}
        self._forward: asyncio.Task[None] | None = None

    async def start(self, ready_timeout_s: float = 60.0) -> dict[str, object]:
        """Start the process and wait for its ready line; raises if it exits first."""
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        async with asyncio.timeout(ready_timeout_s):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    code = await self.process.wait()
                    raise RuntimeError(f"{self.name} exited with status {code} before it was ready")
                with contextlib.suppress(msgspec.DecodeError):
                    message = msgspec.json.decode(line)
                    if isinstance(message, dict) and message.get("event") == "ready":
                        self.ready = message
                        break
                sys.stdout.buffer.write(line)
        self._forward = asyncio.create_task(self._forward_stdout())
        return self.ready

    async def _forward_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                log.warning("child did not stop in time, killing it", extra={"child": self.name})
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._forward is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._forward, 1.0)
        return self.process.returncode


async def wait_for_stop(children: Sequence[Child]) -> str:
    """Block until SIGTERM/SIGINT or until any child exits; say which."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.create_task(c.process.wait()): c for c in children if c.process is not None}
    signalled = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([signalled, *waits], return_when=asyncio.FIRST_COMPLETED)
    for task in [signalled, *waits]:
        task.cancel()
    if signalled in done:
        return "signal"
    exited = next(waits[t] for t in done if t in waits)
    return f"{exited.name} exited with status {exited.process.returncode if exited.process else '?'}"


async def stop_all(groups: Sequence[Sequence[Child]], grace_s: float) -> None:
    """Stop each group in order (all of a group at once)."""
    for group in groups:
        await asyncio.gather(*(c.stop(grace_s) for c in group))
