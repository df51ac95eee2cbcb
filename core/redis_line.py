"""Connections kept apart from a client's pool, each used by one task at a time: the request
path's own commands (the gateway's per-tick writes and its reply reads, a worker's reads and
its batch publishes) go through one of these.

A command through redis-py's client takes a connection from the pool and gives it back (a lock
and a condition each way), checks the connection can still be read, runs under a retry policy
and writes under `asyncio.wait_for`: about 45 µs of CPU a command on top of the socket work, on
a host where the whole round trip of a PING costs 55 (bench/redis_line.py). A `Line` holds a
connection taken from the client's pool for good (the same address, credentials, TLS, database
and command packing), sends its commands in one write and reads their replies, all under one
timer. The commands are packed by hiredis in one pass, and the replies parsed by a hiredis reader
of the line's own, fed straight from the socket: redis-py's `read_response` adds a few µs a reply
to the parse itself (a timer's context, the text of its error messages, its checks), which a
worker's answer of six commands paid six times. As redis-py's connection does, a failed or
cancelled read or write drops the connection, and the next command connects again.

Only for one server: a cluster's commands go to the node of their slot, and stay with its
client. `Lines.take` returns None there, and when every line is in use: the caller then uses
the client as before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol
from .redis_client import Client

Command = tuple[Any, ...]
IDLE_CHECK_S = 1.0  # a line unused this long is checked before use: the server may have closed it
READ_SIZE = 65536  # bytes taken from the socket at once, as redis-py's connections read
_INCOMPLETE = object()  # what the reply parser gives until a whole reply is in (False is a RESP3 reply)


class Line:
    """One connection for one task at a time: `run` sends commands and reads their replies."""

    def __init__(self, connection: AbstractConnection, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        # No timer of redis-py's around each write and read: `run` times the whole call.
        connection.socket_timeout = None
        self._used_at = -math.inf
        # Replies as bytes (the request path's clients) are parsed here; a connection that
        # decodes them to str, or a fake one (fakeredis), reads through redis-py.
        self._direct = not connection.encoder.decode_responses
        self._stream: asyncio.StreamReader | None = None  # the socket the parser below reads
        self._parser: hiredis.Reader | None = None

    async def run(self, commands: Iterable[Command], extra_s: float = 0.0) -> list[Any]:
        """Each command's reply, in order; an error reply is a `ResponseError` in its place. A
        connection found closed when writing is opened again and the commands sent once more, as
        redis-py's own retry does; nothing is resent after they were written. The whole call may
        take the client's socket timeout, and `extra_s` more (a blocking read's own wait)."""
        commands = list(commands)
        packed = self._pack(commands)
        now = asyncio.get_running_loop().time()
        # Checked when idle for a while, or when the server is known to have closed it (its
        # reader saw the end: a restart, `CLIENT KILL`), before anything is written to it.
        reader = getattr(self._connection, "_reader", None)
        stale = now - self._used_at > IDLE_CHECK_S or (reader is not None and reader.at_eof())
        self._used_at = now
        wait_s = self._timeout_s + extra_s
        try:
            # One timer for the whole call, a connect included. What it cuts short drops the
            # connection, so no reply is left for the next command to take for its own (redis-py's
            # own read timeout, passed explicitly, would return None and keep the connection).
            async with asyncio.timeout(None if math.isinf(wait_s) else wait_s):
                if stale:
                    await self._check()
                try:
                    await self._connection.send_packed_command(packed, check_health=False)
                except RedisConnectionError:
                    await self._connection.send_packed_command(packed, check_health=False)
                replies = await self._read(len(commands))
        except TimeoutError:
            await self._connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"Redis did not reply within {wait_s:g} s") from None
        return replies

    def _pack(self, commands: list[Command]) -> bytes | list[bytes]:
        """The commands in Redis's protocol, packed by hiredis in one pass (each argument a word:
        no command name is split at its spaces here); what hiredis cannot pack (a bool) goes to
        redis-py's packer, which names the argument."""
        try:
            return b"".join([hiredis.pack_command(command) for command in commands])
        except TypeError:
            return self._connection.pack_commands(commands)

    async def _read(self, count: int) -> list[Any]:
        """`count` replies, parsed by this line's hiredis reader (an error reply as the exception
        redis-py would raise for it). Anything that cuts the read short drops the connection and
        what was read of it, as redis-py's `read_response` does."""
        connection = self._connection
        stream = connection._reader
        if not self._direct or not isinstance(stream, asyncio.StreamReader):  # or a fake's
            return await self._read_each(count)
        if stream is not self._stream or self._parser is None:  # connected again since
            self._stream = stream
            self._parser = hiredis.Reader(
                protocolError=InvalidResponse, replyError=connection._parser.parse_error, notEnoughData=_INCOMPLETE
            )
        parser = self._parser
        replies: list[Any] = []
        try:
            while len(replies) < count:
                reply = parser.gets()
                if reply is _INCOMPLETE:
                    data = await stream.read(READ_SIZE)
                    if not data:
                        raise RedisConnectionError("Connection closed by server.")
                    parser.feed(data)
                elif isinstance(reply, RedisConnectionError):  # LOADING: raised, as redis-py does
                    raise reply
                elif isinstance(reply, hiredis.PushNotification):
                    continue  # RESP3 pushes are not replies; a line subscribes to nothing
                else:
                    replies.append(reply)
        except BaseException as exc:
            self._parser = None
            await connection.disconnect(nowait=True)
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error while reading from Redis: {exc}") from exc
            raise
        return replies

    async def _read_each(self, count: int) -> list[Any]:
        """`count` replies, each read by redis-py's connection."""
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await self._connection.read_response(timeout=math.inf))
            except ResponseError as error:
                replies.append(error)
        return replies

    async def _check(self) -> None:
        """Drop the connection if the server closed it (or it holds a stray reply), as the pool
        does for each connection it hands out; the next write connects again."""
        connection = self._connection
        if not connection.is_connected:
            return
        try:
            stale = await connection.can_read()
        except (RedisConnectionError, OSError):
            stale = True
        if stale:
            await connection.disconnect()


class Lines:
    """Up to `size` lines of a one-server client, and at most a quarter of its pool. Their
    connections come from the client's pool and are never given back: they count against its
    `max_connections`, and closing the client closes them. `take` gives None for a cluster's
    client, or while every line is in use."""

    def __init__(self, client: Client, size: int) -> None:
        self._client = client if isinstance(client, Redis) else None
        # At most a quarter of the pool each: the client's other commands keep the rest.
        share = self._client.connection_pool.max_connections // 4 if self._client is not None else 0
        self._size = min(size, share)
        self._made = 0
        self._free: list[Line] = []

    async def take(self) -> Line | None:
        if self._free:
            return self._free.pop()
        if self._made >= self._size or self._client is None:
            return None
        self._made += 1  # before the wait for the pool: a second caller meanwhile uses the client
        try:
            pool = self._client.connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._made -= 1
            raise
        return Line(connection, pool.connection_kwargs.get("socket_timeout") or math.inf)

    def give(self, line: Line) -> None:
        self._free.append(line)


def stream_reply(raw: list[Any] | dict[Any, Any] | None) -> protocol.StreamReply | None:
    """An XREAD or XREADGROUP reply as it comes from the server (every stream as a pair of its
    name and its entries, or a map of them in RESP3; every entry's fields as a flat list) in the
    shape redis-py's client gives it: each entry's fields as a dict."""
    if raw is None:
        return None
    streams = raw.items() if isinstance(raw, dict) else raw
    return [(stream, [(entry_id, _fields(fields)) for entry_id, fields in entries]) for stream, entries in streams]


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes]:
    if not flat:
        return {}
    if len(flat) == 2:  # the request path's entries: one field
        return {flat[0]: flat[1]}
    it = iter(flat)
    return dict(zip(it, it, strict=True))
