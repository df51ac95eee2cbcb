"""Commands sent together as one Lua script run: one reply for them all.

A pipeline of N commands comes back as N replies, and redis-py reads each one in Python under a
timer of its own: for a worker publishing a batch (a reply XADD and a result SET per answer, then
the batch's XACK, XDEL, PEXPIRE and audit entry) that reading was a quarter of its CPU per answer,
and the gateway's per-tick pipeline of XADDs pays the same per request. `Writes` queues the same
commands and runs them as one script, in order, each with `redis.pcall`: every command runs even
when one before it failed, as in a pipeline, and `execute` gives each command's reply (an error
as a `ResponseError` in its place, or raised, as `Pipeline.execute` does). The script runs
atomically, which a pipeline does not promise and nothing here relies on. On a line of its owner
(core/redis_line.py), which reads each reply without redis-py's per-command overhead, a batch of
a few commands goes as they are: there the script's own cost in Redis outweighs it.

One server only: a cluster's commands go to many slots, which one script may not touch, so a
cluster client (or a server that refuses scripts, such as an ACL user without EVALSHA) gets a
pipeline from `ScriptedWrites.batch` instead. Each command names its key first after its name,
as every command queued here does; the keys are declared to the script as Redis asks. Replies
come back as Redis sends them, without redis-py's per-command conversions.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

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


# Up to this many commands go on a line as they are. A script costs Redis about 4 µs more per
# command than the command alone, and a line reads a reply in about as long: a worker's answer
# to one request (six commands) or a gateway's tick of a few requests costs both sides less as
# plain commands, a larger batch costs its client less as one script reply (bench/redis_line.py).
LINE_PIPELINE_MAX = 8


class Writes:
    """Commands queued as on a pipeline (`execute_command`, `xtrim`), sent by `execute` as one run
    of `RUN_COMMANDS`: ARGV holds each command as its length, then its arguments."""

    def __init__(self, owner: ScriptedWrites, script: AsyncScript) -> None:
        self._owner = owner
        self._script = script
        self._commands: list[tuple[Any, ...]] = []
        self._args: list[Any] = []
        self._keys: dict[Any, None] = {}

    def execute_command(self, *args: Any) -> None:
        self._commands.append(args)
        self._args += (len(args), *args)
        self._keys[args[1]] = None

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
            pipe = self._owner.client.pipeline(transaction=False)
            for command in self._commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=raise_on_error)
        if raise_on_error:
            error = next((reply for reply in replies if isinstance(reply, ResponseError)), None)
            if error is not None:
                raise error
        return replies

    async def _run(self) -> list[Any]:
        """The commands' replies: on one of the owner's lines where one is free, as they are when
        they are few (`LINE_PIPELINE_MAX`), else as the script's run; through the script object
        when no line is free, or to load the script into a server that does not hold it (NOSCRIPT)."""
        line = await self._owner.lines.take()
        if line is not None:
            try:
                if len(self._commands) <= LINE_PIPELINE_MAX:
                    return await line.run(self._commands)
                evalsha = ("EVALSHA", self._script.sha, len(self._keys), *self._keys, *self._args)
                (reply,) = await line.run([evalsha])
            finally:
                self._owner.lines.give(line)
            if not isinstance(reply, NoScriptError):
                if isinstance(reply, ResponseError):
                    raise reply
                return reply  # type: ignore[no-any-return]
        return await self._script(keys=list(self._keys), args=self._args)  # type: ignore[no-any-return]


class ScriptedWrites:
    """Where a client's batches of commands go: one script run on one server, else a pipeline."""

    def __init__(self, client: Client, lines: int = 0) -> None:
        """`lines`: how many batches may run at once on connections of their own (core/redis_line.py);
        more than that wait for the client's pool."""
        self.client = client
        self._script = None if is_cluster(client) else client.register_script(RUN_COMMANDS)
        self.lines = Lines(client, lines)

    @property
    def scripted(self) -> bool:
        return self._script is not None

    async def load(self) -> None:
        """Load the script (the first batch then needs no retry). The script object loads it
        again after a Redis restart or SCRIPT FLUSH (NOSCRIPT)."""
        if self._script is None:
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
        if self._script is not None:
            self._script = None
            log.warning("Redis refused the batch script: commands go as pipelines", extra={"error": str(exc)})

    def batch(self) -> Writes | AnyPipeline:
        return Writes(self, self._script) if self._script is not None else self.client.pipeline(transaction=False)


def _refused(exc: ResponseError) -> bool:
    """Whether Redis refused to run scripts at all, rather than a command of one."""
    return isinstance(exc, NoPermissionError) or str(exc).lower().startswith("unknown command")
