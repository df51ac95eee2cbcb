"""A batch of commands in one round trip, with one reply each, read at a fraction of what a
redis-py pipeline costs.

A pipeline of N commands comes back as N replies, and redis-py reads each one in Python under a
timer of its own: for a worker publishing a batch (a reply XADD and a result SET per answer, then
the batch's XACK, XDEL, PEXPIRE and audit entry) that reading was a quarter of its CPU per answer,
and the gateway's per-tick pipeline of XADDs pays the same per request. `Writes` queues the same
commands and sends them on a line of its owner (core/redis_line.py), which parses every reply in
one pass. Where every line is in use, they go as one run of a Lua script (one reply for them
all), each with `redis.pcall`, and where Redis refuses scripts (an ACL user without EVALSHA) as a
pipeline. Every way, every command runs even when one before it failed, and `execute` gives each
command's reply (an error as a `ResponseError` in its place, or raised, as `Pipeline.execute`
does). On a line they are not sent as the script: there it would cost Redis about 2 µs a command
more and save its client nothing (bench/redis_line.py). The script runs atomically, which a
pipeline does not promise and nothing here relies on.

One server only: a cluster's commands go to many slots, which one connection or script may not
serve, so a cluster client gets a pipeline from `ScriptedWrites.batch` instead. Each command names
its key first after its name, as every command queued here does; the keys are declared to the
script as Redis asks. Replies come back as Redis sends them, without redis-py's per-command
conversions.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from .redis_client import AnyPipeline, Client, is_cluster
from .redis_line import Lines

log = logging.getLogger(__name__)

RUN_COMMANDS = """
local replies = {}
local i = 1
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  replies[#replies + 1] = redis.pcall(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
return replies
"""


class Writes:
    """Commands queued as on a pipeline (`execute_command`, `xtrim`), sent by `execute` on a line,
    or as one run of `RUN_COMMANDS`: ARGV holds each command as its length, then its arguments."""

    def __init__(self, owner: ScriptedWrites) -> None:
        self._owner = owner
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self._commands.append(args)

    def xtrim(self, name: str, minid: Any, approximate: bool = True) -> None:
        self.execute_command("XTRIM", name, "MINID", *(("~",) if approximate else ()), minid)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Each command's reply, in order; with `raise_on_error`, the first error is raised. A
        server that refuses the script itself (nothing ran) gets them as a pipeline, now and from
        then on."""
        if not self._commands:
            return []
        try:
            replies = await self._run()
        except ResponseError as exc:
            if not _refused(exc):
                raise
            self._owner.refused(exc)
            return await self._pipeline(raise_on_error)
        if raise_on_error:
            error = next((reply for reply in replies if isinstance(reply, ResponseError)), None)
            if error is not None:
                raise error
        return replies

    async def _run(self) -> list[Any]:
        """The commands' replies: as they are on one of the owner's lines where one is free, else
        as one run of the script through its object (which loads it into a server that does not
        hold it), else as a pipeline."""
        line = await self._owner.lines.take()
        if line is not None:
            try:
                return await line.run(self._commands)
            finally:
                self._owner.lines.give(line)
        script = self._owner.script
        if script is None:
            return await self._pipeline(raise_on_error=False)
        keys = list(dict.fromkeys(command[1] for command in self._commands))
        args = [arg for command in self._commands for arg in (len(command), *command)]
        return await script(keys=keys, args=args)  # type: ignore[no-any-return]

    async def _pipeline(self, raise_on_error: bool) -> list[Any]:
        pipe = self._owner.client.pipeline(transaction=False)
        for command in self._commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=raise_on_error)


class ScriptedWrites:
    """Where a client's batches of commands go: on one server a `Writes` (a line, else the
    script), on a cluster a pipeline."""

    def __init__(self, client: Client, lines: int = 0) -> None:
        """`lines`: how many batches may run at once on connections of their own (core/redis_line.py);
        more than that go through the client's pool."""
        self.client = client
        self._cluster = is_cluster(client)
        self.script = None if self._cluster else client.register_script(RUN_COMMANDS)
        self.lines = Lines(client, lines)

    async def load(self) -> None:
        """Load the script (the first batch then needs no retry). The script object loads it
        again after a Redis restart or SCRIPT FLUSH (NOSCRIPT)."""
        if self.script is None:
            return
        assert isinstance(self.client, Redis)
        try:
            await self.client.script_load(RUN_COMMANDS)
        except ResponseError as exc:
            if not _refused(exc):
                raise
            self.refused(exc)

    def refused(self, exc: ResponseError) -> None:
        """Redis will not run the script (an ACL user without scripts, scripting left out): a
        warning, and pipelines from now on."""
        if self.script is not None:
            self.script = None
            log.warning("Redis refused the batch script: commands go as pipelines", extra={"error": str(exc)})

    def batch(self) -> Writes | AnyPipeline:
        return self.client.pipeline(transaction=False) if self._cluster else Writes(self)


def _refused(exc: ResponseError) -> bool:
    """Whether Redis refused to run scripts at all, rather than a command of one."""
    return isinstance(exc, NoPermissionError) or str(exc).lower().startswith("unknown command")
