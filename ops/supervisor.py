"""Child-process supervision for `tiergate up` and `tiergate worker --replicas N`.

Each child prints one JSON ready line on stdout; the supervisor waits for it, forwards the rest of
the child's stdout and all of its stderr (keeping the last lines of stderr), and restarts a child
that exits, with backoff (ops/restarts.py). A child may start only after another is ready, with
a command line made at each start (the gateways sharing a port learn it from the first one's).
SIGTERM/SIGINT, or a child that cannot start, stops the gateways first, so in-flight requests
finish, then the workers. Serves its own /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

import msgspec

from core.settings import SupervisorSettings

from .restarts import GiveUp, RestartPolicy, last_error
from .supervisor_metrics import SupervisorMetrics

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 8192  # of each child's stderr, kept to quote its last error
STDERR_TAIL_LINES = 5
READ_CHUNK_BYTES = 65536
MAX_HELD_BYTES = 1 << 20  # of a child's stderr line not yet ended


class StartFailed(Exception):
    """A child exited, or was not ready in time, before its ready line."""


class Child:
    """One supervised process. `argv` is its command line, or a function that makes it at each
    start; a child `after` another starts once that one was first ready."""

    def __init__(
        self, name: str, argv: Sequence[str] | Callable[[], Sequence[str]], after: Child | None = None
    ) -> None:
        self.name = name
        self._argv = argv
        self.after = after
        self.process: asyncio.subprocess.Process | None = None
        self.ready: dict[str, object] = {}
        self._stderr_tail = b""
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def argv(self) -> list[str]:
        return list(self._argv() if callable(self._argv) else self._argv)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, ready_timeout_s: float = 60.0) -> dict[str, object]:
        """Start the process and wait for its ready line; raises `StartFailed` if it exits first,
        or is not ready within `ready_timeout_s` (it is then killed)."""
        argv = self.argv  # made while the last run's ready line is still known
        self.ready = {}
        self._stderr_tail = b""
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        self.process = process
        assert process.stderr is not None
        self._pumps = [asyncio.create_task(self._forward_stderr(process.stderr))]
        try:
            async with asyncio.timeout(ready_timeout_s):
                self.ready = await self._read_ready(process)
        except TimeoutError:
            await self.stop(grace_s=1.0)
            raise StartFailed(f"not ready within {ready_timeout_s:g} s") from None
        self._pumps.append(asyncio.create_task(self._forward_stdout(process)))
        return self.ready

    async def _read_ready(self, process: asyncio.subprocess.Process) -> dict[str, object]:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            with contextlib.suppress(msgspec.DecodeError):
                message = msgspec.json.decode(line)
                if isinstance(message, dict) and message.get("event") == "ready":
                    return message
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        code = await process.wait()
        await self._join_pumps()  # its last stderr lines say why
        raise StartFailed(f"exited with status {code} before it was ready")

    async def _forward_stdout(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    async def _forward_stderr(self, stream: asyncio.StreamReader) -> None:
        """Copy the child's stderr to ours as it comes, whole lines only (every child writes to
        the same stderr: a chunk cut mid-line would splice another child's line into this one's),
        keeping its last few KiB. A line longer than `MAX_HELD_BYTES` goes out in pieces."""
        partial = b""  # the end of the last chunk, after its last newline
        while chunk := await stream.read(READ_CHUNK_BYTES):
            self._stderr_tail = (self._stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
            end = chunk.rfind(b"\n") + 1
            if end == 0 and len(partial) + len(chunk) <= MAX_HELD_BYTES:
                partial += chunk
                continue
            if end == 0:
                end = len(chunk)
            sys.stderr.buffer.write(partial + chunk[:end])
            sys.stderr.flush()
            partial = chunk[end:]
        if partial:  # its last line, which it did not end
            sys.stderr.buffer.write(partial + b"\n")
            sys.stderr.flush()

    def stderr_tail(self) -> list[str]:
        """The last lines the child wrote to stderr (its current or last run)."""
        lines = self._stderr_tail.decode(errors="replace").splitlines()
        return lines[-STDERR_TAIL_LINES:]

    def last_error(self) -> str:
        return last_error(self.stderr_tail())

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        await self._join_pumps()
        return code

    async def _join_pumps(self, timeout_s: float = 1.0) -> None:
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=timeout_s)

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
        await self._join_pumps()
        return self.process.returncode


def _where(child: Child) -> dict[str, object]:
    """What a log line says about a ready child: its pid and the URLs of its ready line."""
    urls = {k: v for k, v in child.ready.items() if k in ("url", "metrics_url", "metrics_urls")}
    return {"child": child.name, "pid": child.pid, **urls}


class Supervisor:
    """Keeps `groups` of children running until a signal or a child that cannot start; then
    `stop` stops the groups in order (all of a group at once)."""

    def __init__(self, settings: SupervisorSettings, groups: Sequence[Sequence[Child]]) -> None:
        self.settings = settings
        self.groups = [list(group) for group in groups]
        self.children = [child for group in self.groups for child in group]
        self.metrics = SupervisorMetrics([c.name for c in self.children], self.running)
        self.reason = ""  # why it stopped: "signal", or the child that cannot start
        self._stopping = asyncio.Event()
        self._ready = {child.name: asyncio.Event() for child in self.children}
        self._keepers: list[asyncio.Task[None]] = []

    def running(self) -> int:
        return sum(child.running for child in self.children)

    async def run(self, on_ready: Callable[[], None]) -> str:
        """Start every child, call `on_ready` once all are ready, and keep them running until a
        signal or a child that cannot start; returns why ("signal" or the child's last error)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_for, "signal")
        self.metrics.serve()
        self._keepers = [asyncio.create_task(self._guard(child)) for child in self.children]
        all_ready = asyncio.create_task(self._all_ready())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([all_ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        all_ready.cancel()
        if not self._stopping.is_set():
            on_ready()
        await stopping
        return self.reason

    async def _all_ready(self) -> bool:
        for event in self._ready.values():
            await event.wait()
        return True

    def _stop_for(self, reason: str) -> None:
        if not self._stopping.is_set():
            self.reason = reason
            self._stopping.set()

    async def stop(self, grace_s: float) -> None:
        """Restart nothing more, then stop each group in order."""
        self._stop_for("stopped")
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        for group in self.groups:
            await asyncio.gather(*(child.stop(grace_s) for child in group))
        await asyncio.to_thread(self.metrics.close)

    async def _guard(self, child: Child) -> None:
        """`_keep`, stopping the stack rather than running on without `child` if it breaks."""
        try:
            await self._keep(child)
        except Exception as exc:
            log.exception("supervising a child failed", extra={"child": child.name})
            self._stop_for(f"{child.name}: supervising it failed: {exc!r}")

    async def _keep(self, child: Child) -> None:
        """Run `child`, and run it again each time it exits, until the policy gives up."""
        policy = RestartPolicy(self.settings)
        status: int | None = None  # the exit that this start follows
        if child.after is not None:
            await self._ready[child.after.name].wait()
        while True:
            ran_s = await self._run_once(child, status)
            status = child.returncode
            decision = policy.exited(ran_s)
            if isinstance(decision, GiveUp):
                self._give_up(child, decision.start_failures)
                return
            log.warning(
                "child exited, restarting",
                extra={"child": child.name, "status": status, "ran_s": ran_s, "restart_in_s": decision.delay_s,
                       "last_stderr": child.last_error()},
            )  # fmt: skip
            await asyncio.sleep(decision.delay_s)
            self.metrics.restarted(child.name)

    async def _run_once(self, child: Child, status: int | None) -> float | None:
        """Start `child` and wait for it to exit; how long it ran after its ready line (None: it
        never was ready)."""
        try:
            await child.start(self.settings.ready_timeout_s)
        except (StartFailed, OSError) as exc:  # OSError: it could not even be executed
            log.warning("child failed to start", extra={"child": child.name, "error": child.last_error() or str(exc)})
            return None
        loop = asyncio.get_running_loop()
        ready_at = loop.time()
        if status is None:
            log.info("child ready", extra=_where(child))
        else:
            restarts = self.metrics.restarts_of(child.name)
            log.warning("child restarted", extra={**_where(child), "status": status, "restarts": restarts})
        self._ready[child.name].set()
        await child.wait()
        return loop.time() - ready_at

    def _give_up(self, child: Child, start_failures: int) -> None:
        error = child.last_error() or f"exit status {child.returncode}"
        reason = f"{child.name} failed at start-up {start_failures} times in a row; last error: {error}"
        log.error("child cannot start", extra={"child": child.name, "status": child.returncode, "error": error})
        self._stop_for(reason)
