"""The one way every process connects to Redis: one server or a Redis Cluster (asked once with
`INFO cluster`, or fixed by `redis.cluster`), ACL credentials from the URL, TLS files from
`[redis]`; and what a cluster changes for callers: keys grouped by hash slot, XREAD/XREADGROUP
sent straight to their slot's node, streams of several slots read at once. I/O: the start-up
question, and the reads it is given.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from . import protocol
from .errors import RedisAccessError
from .settings import RedisSettings

log = logging.getLogger(__name__)

Client: TypeAlias = Redis | RedisCluster
AnyPipeline: TypeAlias = Pipeline | ClusterPipeline


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


URL_SCHEMES = ("redis", "rediss", "unix")
WRITE_PASSES = 3  # event-loop passes after a command or pipeline starts by which redis-py 8 has written it


def check_url(url: str) -> str:
    """`url`, if it is a Redis URL; else a `RedisAccessError` naming what is wrong with it."""
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        raise RedisAccessError(f"{url!r} is not a Redis URL: it must start with redis://, rediss:// or unix://")
    return url


def where(url: str) -> str:
    """A URL without its password, to name a server in messages."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.hostname}:{parts.port or 6379}"


def _options(settings: RedisSettings, url: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_connections": settings.max_connections,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "health_check_interval": 30,
    }
    files = {
        "ssl_ca_certs": settings.tls_ca_file,
        "ssl_certfile": settings.tls_cert_file,
        "ssl_keyfile": settings.tls_key_file,
    }
    chosen = {option: path for option, path in files.items() if path}
    if chosen and urlsplit(url).scheme != "rediss":
        raise RedisAccessError(f"redis.tls_* files are set, but the Redis URL {where(url)} is not rediss:// (TLS)")
    return options | chosen


def single_node(settings: RedisSettings, url: str) -> Redis:
    """A client of one Redis server; no I/O until its first command. With every pooled connection
    busy, a command waits for one (up to `socket_timeout_s`) instead of failing: a burst of work
    at once (a load generator dropping all its connections cancels every request it had) must
    not turn a concurrent request into a 503."""
    pool = BlockingConnectionPool.from_url(url, timeout=settings.socket_timeout_s, **_options(settings, url))
    pool.connection_class = _packed_by_hiredis(pool.connection_class)
    return Redis.from_pool(pool)


# redis-py's own packer, which sends a large value as it is: its asyncio connection's pack_command
# up to 8.0, `_pack_command_python` once hiredis became its default.
_PACKED_IN_PYTHON = getattr(AbstractConnection, "_pack_command_python", AbstractConnection.pack_command)


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's sync client packs them: its asyncio client
    packs in Python, at three times the CPU per command (bench/redis_packing.py). An argument hiredis
    does not take (a bool) goes to redis-py's own packer, which names the problem. So does a
    command whose last argument is a memoryview (a large value, as a piece of a stored file):
    hiredis copies a value at about 0.4 GB/s, on the event loop; redis-py's packer sends it as it is."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if type(args[-1]) is memoryview:
            return _PACKED_IN_PYTHON(self, *args)  # type: ignore[arg-type]
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc,no-any-return]


def _packed_by_hiredis(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain, TLS or Unix socket, as the URL chose) with `_HiredisPacking`."""
    return type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})


def cluster_client(settings: RedisSettings, url: str) -> RedisCluster:
    """A Redis Cluster client that starts from the node at `url`; it learns the others on its
    first command."""
    return RedisCluster.from_url(url, **_options(settings, url))


async def connect(settings: RedisSettings, url: str, *, assume_single: bool = False) -> Client:
    """The client for `url`, as `settings.cluster` says: "auto" asks the server whether it is a
    cluster node. An unreachable server raises redis's ConnectionError, unless `assume_single`
    (then a one-server client comes back, with a warning); refused credentials or TLS raise
    `RedisAccessError`."""
    check_url(url)
    if settings.cluster == "no":
        return single_node(settings, url)
    if settings.cluster == "yes":
        return cluster_client(settings, url)
    client = single_node(settings, url)
    try:
        clustered = await _clustered(client, url)
    except (RedisError, OSError) as exc:
        await client.aclose()
        access = access_error(exc, url)
        if access is not None:
            raise access from exc
        if not assume_single:
            raise
        log.warning(
            "Redis unreachable at start: taken for one server, not a cluster (set redis.cluster to be sure)",
            extra={"redis": where(url), "error": str(exc)},
        )
        return single_node(settings, url)
    if not clustered:
        return client
    await client.aclose()
    log.info("Redis is a cluster", extra={"redis": where(url)})
    return cluster_client(settings, url)


async def _clustered(client: Redis, url: str) -> bool:
    """Whether the server is a cluster node. One that will not say (an ACL user without INFO, a
    server without the cluster section) is taken for one server."""
    try:
        info: dict[str, Any] = await client.info("cluster")
    except ResponseError as exc:
        log.warning(
            "Redis did not say whether it is a cluster: taken for one server (set redis.cluster to be sure)",
            extra={"redis": where(url), "error": str(exc)},
        )
        return False
    return bool(info.get("cluster_enabled"))


def access_error(exc: BaseException, url: str) -> RedisAccessError | None:
    """A `RedisAccessError` naming the problem when `exc` is one retrying cannot fix: refused
    credentials, a command the ACL user may not run, or a failed TLS handshake."""
    if isinstance(exc, AuthenticationError):
        return RedisAccessError(f"Redis at {where(url)} refused the credentials: {exc}")
    if isinstance(exc, NoPermissionError):
        return RedisAccessError(f"Redis at {where(url)}: the ACL user may not do this: {exc}")
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError) or isinstance(exc, ssl.SSLError):
        return RedisAccessError(f"Redis at {where(url)}: TLS failed: {cause or exc}")
    if isinstance(cause, FileNotFoundError) and urlsplit(url).scheme == "rediss":
        return RedisAccessError(f"Redis at {where(url)}: a TLS file cannot be read: {cause}")
    return None


def slot_groups(client: Client, keys: Iterable[str]) -> list[list[str]]:
    """`keys` in groups one command may name together: all of them on one server, those of one
    hash slot in a cluster."""
    if not isinstance(client, RedisCluster):
        return [list(keys)]
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return list(groups.values())


async def _on_slot_node(client: RedisCluster, key: str, *args: Any) -> Any:
    """Run a command on the node serving `key`'s slot. Naming the node spares redis-py a
    COMMAND GETKEYS round trip for commands whose keys it cannot place itself (XREAD...)."""
    await client.initialize()  # returns at once once the slots are known
    node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
    return await client.execute_command(*args, target_nodes=node)


async def xread(
    client: Client, streams: Mapping[str, bytes | str], count: int | None, block_ms: int | None
) -> protocol.StreamReply | None:
    """XREAD of streams of one hash slot."""
    if not isinstance(client, RedisCluster):
        wanted: dict[Any, Any] = dict(streams)
        reply: protocol.StreamReply | None = await client.xread(wanted, count=count, block=block_ms)  # type: ignore[assignment]
        return reply
    return await _on_slot_node(client, next(iter(streams)), "XREAD", *read_args(streams, count, block_ms))  # type: ignore[no-any-return]


async def xreadgroup(
    client: Client, group: str, consumer: str, streams: Mapping[str, bytes | str], count: int, block_ms: int | None
) -> protocol.StreamReply | None:
    """XREADGROUP of streams of one hash slot."""
    if not isinstance(client, RedisCluster):
        wanted: dict[Any, Any] = dict(streams)
        reply: protocol.StreamReply | None = await client.xreadgroup(
            group, consumer, wanted, count=count, block=block_ms
        )  # type: ignore[assignment]
        return reply
    args = ("XREADGROUP", "GROUP", group, consumer, *read_args(streams, count, block_ms))
    return await _on_slot_node(client, next(iter(streams)), *args)  # type: ignore[no-any-return]


def read_args(streams: Mapping[str, bytes | str], count: int | None, block_ms: int | None) -> list[Any]:
    """The arguments of an XREAD or XREADGROUP after its name (and group): COUNT, BLOCK, STREAMS."""
    args: list[Any] = []
    if count is not None:
        args += ["COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return [*args, "STREAMS", *streams, *streams.values()]


SlotRead = Callable[[list[str], int, "int | None"], Coroutine[Any, Any, "protocol.StreamReply | None"]]


class SlotReads:
    """Reads of streams in several hash slots, which no one command may name together: one read
    per slot, all in flight at once. A call answers as soon as one slot answered; the reads still
    waiting stay in flight and a later call collects them, so no entry Redis handed over is lost."""

    def __init__(self, read: SlotRead) -> None:
        self._read = read
        self._waiting: dict[int, asyncio.Task[protocol.StreamReply | None]] = {}

    async def read(self, groups: list[list[str]], count: int, block_ms: int | None) -> protocol.StreamReply:
        """Up to `count` entries of each stream of `groups` (`slot_groups`), waiting up to
        `block_ms` for the first (None: not at all)."""
        started = []
        for group in groups:
            slot = key_slot(group[0].encode())
            if slot not in self._waiting:
                self._waiting[slot] = asyncio.create_task(self._read(group, count, block_ms))
                started.append(self._waiting[slot])
        if block_ms is None:
            if started:
                await asyncio.wait(started)
        elif self._waiting:
            await asyncio.wait(self._waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect()

    async def drain(self) -> protocol.StreamReply:
        """Wait for the reads in flight (each ends by its block time) and return what they read."""
        if self._waiting:
            await asyncio.wait(self._waiting.values())
        return self._collect()

    def _collect(self) -> protocol.StreamReply:
        """The entries of every finished read; an error is raised only when no read succeeded."""
        done = {slot: task for slot, task in self._waiting.items() if task.done()}
        for slot in done:
            del self._waiting[slot]
        reply: protocol.StreamReply = []
        errors: list[BaseException] = []
        for task in done.values():
            error = None if task.cancelled() else task.exception()
            if error is not None:
                errors.append(error)
            elif not task.cancelled():
                reply += task.result() or []
        if errors and not reply:
            raise errors[0]
        for error in errors:
            log.warning("a stream read failed; it is read again next time", extra={"error": str(error)})
        return reply
