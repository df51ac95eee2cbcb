"""Write commands sent together as one Lua script run: one reply for them all.

A pipeline of N commands comes back as N replies, and redis-py reads each one in Python under a
timer of its own: for a worker publishing a batch (a reply XADD and a result SET per answer, then
the batch's XACK, XDEL, PEXPIRE and audit entry) that reading was a quarter of its CPU per answer.
`Writes` queues the same commands and runs them as one script, in order, each with
`redis.pcall`: every command runs even when one before it failed, as in a pipeline, and the first
error is raised, as `Pipeline.execute` raises it. The script runs atomically, which a pipeline
does not promise and nothing here relies on.

One server only: a cluster's commands go to many slots, which one script may not touch, so a
cluster client (or a server that refuses scripts, such as an ACL user without EVALSHA) gets a
pipeline from `ScriptedWrites.batch` instead. Each command names its key first after its name,
as every command queued here does; the keys are declared to the script as Redis asks.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .redis_client import AnyPipeline, Client, is_cluster

log = logging.getLogger(__name__)

RUN_COMMANDS = """
local first_error
local i = 1
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + argc))
  if type(reply) == 'table' and reply.err and not first_error then
    first_error = reply.err
  end
  i = i + argc + 1
end
if first_error then
  return redis.error_reply(first_error)
end
return 0
"""


class Writes:
    """Commands queued as on a pipeline (`execute_command`, `xtrim`), sent by `execute` as one run
    of `RUN_COMMANDS`: ARGV holds each command as its length, then its arguments."""

    def __init__(self, script: AsyncScript) -> None:
        self._script = script
        self._args: list[Any] = []
        self._keys: dict[Any, None] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def execute_command(self, *args: Any) -> None:
        self._args += (len(args), *args)
        self._keys[args[1]] = None

    def xtrim(self, name: str, minid: Any, approximate: bool = True) -> None:
        self.execute_command("XTRIM", name, "MINID", *(("~",) if approximate else ()), minid)

    async def execute(self) -> None:
        if self._args:
            await self._script(keys=list(self._keys), args=self._args)


class ScriptedWrites:
    """Where a client's batches of writes go: one script run on one server, else a pipeline."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._script = None if is_cluster(client) else client.register_script(RUN_COMMANDS)

    @property
    def scripted(self) -> bool:
        return self._script is not None

    async def load(self) -> None:
        """Load the script (the first batch then needs no retry); a server that refuses it gets
        pipelines from now on, with a warning. The script object loads it again after a Redis
        restart or SCRIPT FLUSH (NOSCRIPT)."""
        if self._script is None:
            return
        assert isinstance(self.client, Redis)
        try:
            await self.client.script_load(RUN_COMMANDS)
        except ResponseError as exc:  # a permission refused, scripting disabled
            self._script = None
            log.warning("Redis refused the batch script: writes go as pipelines", extra={"error": str(exc)})

    def batch(self) -> Writes | AnyPipeline:
        return Writes(self._script) if self._script is not None else self.client.pipeline(transaction=False)
