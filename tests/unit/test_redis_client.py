"""The connection factory's pure parts: which keys may share a command, reads of several hash
slots in flight at once, errors that retrying cannot fix, TLS options and their overrides."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, DataError
from redis.exceptions import ConnectionError as RedisConnectionError

from core import protocol, redis_client
from core.errors import RedisAccessError
from core.redis_client import SlotReads
from core.settings import RedisSettings, load_settings

A, B = protocol.stream_key("realtime.default.a"), protocol.stream_key("batch.default.a")


def test_one_server_takes_every_key_in_one_command_a_cluster_one_slot_each() -> None:
    single = Redis()
    cluster = RedisCluster(host="127.0.0.1", port=7000)
    same_slot = [protocol.request_key("x"), protocol.accepted_key("x")]
    assert redis_client.slot_groups(single, [A, B]) == [[A, B]]
    assert sorted(redis_client.slot_groups(cluster, [A, B])) == sorted([[A], [B]])
    assert redis_client.slot_groups(cluster, same_slot) == [same_slot]


def reply(stream: str, entry_id: bytes) -> protocol.StreamReply:
    return [(stream.encode(), [(entry_id, {protocol.PAYLOAD_FIELD: b""})])]


async def test_a_slot_read_still_waiting_is_collected_by_the_next_call() -> None:
    answers = {A: asyncio.Event(), B: asyncio.Event()}

    async def read(streams: list[str], count: int, block_ms: int | None) -> protocol.StreamReply | None:
        await answers[streams[0]].wait()
        return reply(streams[0], b"1-0")

    reads = SlotReads(read)
    answers[A].set()
    first = await reads.read([[A], [B]], 10, 500)
    assert first == reply(A, b"1-0")  # B's read still waits, in flight
    answers[B].set()
    assert await reads.read([[A], [B]], 10, None) == reply(B, b"1-0") + reply(A, b"1-0")
    assert await reads.drain() == []


async def test_a_failed_slot_read_is_raised_only_when_no_other_read_brought_entries() -> None:
    async def read(streams: list[str], count: int, block_ms: int | None) -> protocol.StreamReply | None:
        if streams[0] == B:
            raise RedisConnectionError("node down")
        return reply(A, b"1-0")

    reads = SlotReads(read)
    assert await reads.read([[A], [B]], 10, None) == reply(A, b"1-0")
    with pytest.raises(RedisConnectionError, match="node down"):
        await reads.read([[B]], 10, None)


def test_refused_credentials_and_tls_are_access_errors_and_name_no_password() -> None:
    url = "redis://alice:secret@db:6380/0"
    auth = redis_client.access_error(AuthenticationError("WRONGPASS nope"), url)
    assert str(auth) == "Redis at redis://alice@db:6380 refused the credentials: WRONGPASS nope"
    try:
        raise RedisConnectionError("Error connecting") from ssl.SSLError("certificate verify failed")
    except RedisConnectionError as exc:
        assert "TLS failed: " in str(redis_client.access_error(exc, url))
    assert redis_client.access_error(RedisConnectionError("refused"), url) is None  # retried instead


def test_tls_files_need_a_rediss_url() -> None:
    settings = RedisSettings(tls_ca_file="/etc/ca.pem")
    with pytest.raises(RedisAccessError, match=r"not rediss:// \(TLS\)"):
        redis_client.single_node(settings, "redis://db:6379/0")
    client = redis_client.single_node(settings, "rediss://db:6379/0")
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"


async def test_cluster_yes_builds_a_cluster_client_without_asking() -> None:
    client = await redis_client.connect(RedisSettings(cluster="yes"), "redis://127.0.0.1:1/0")
    assert redis_client.is_cluster(client)
    await client.aclose()


def test_redis_cluster_and_tls_files_can_come_from_the_environment() -> None:
    environ = {"TIERGATE_REDIS_CLUSTER": "yes", "TIERGATE_REDIS_TLS_CA_FILE": "/ca.pem"}
    settings = load_settings(environ=environ).redis
    assert (settings.cluster, settings.tls_ca_file) == ("yes", "/ca.pem")


@pytest.mark.parametrize(
    "url, kind",
    [
        ("redis://db:6379/0", Connection),
        ("rediss://db:6379/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_connections_pack_commands_as_redis_py_does_whatever_the_transport(url: str, kind: type) -> None:
    pool = redis_client.single_node(RedisSettings(), url).connection_pool
    packed, stock = pool.connection_class(**pool.connection_kwargs), kind(**pool.connection_kwargs)
    assert isinstance(packed, kind)
    commands = [
        ("XADD", A, "*", protocol.PAYLOAD_FIELD, b"\x00\xff" * 40_000),
        ("SET", "k", "é", "EX", 30),
        ("ZADD", "z", 0.1, "m", 1e20, "n"),
        ("CONFIG GET", "maxmemory"),
        (b"OBJECT ENCODING", memoryview(b"key")),
    ]
    for command in commands:
        assert b"".join(packed.pack_command(*command)) == b"".join(stock.pack_command(*command))
    for wrong in (True, None):
        with pytest.raises(DataError, match="Invalid input"):
            packed.pack_command("SET", "k", wrong)


def test_a_memoryview_value_is_sent_as_it_is_not_copied() -> None:
    pool = redis_client.single_node(RedisSettings(), "redis://db:6379/0").connection_pool
    packed = pool.connection_class(**pool.connection_kwargs)
    piece = memoryview(b"\x00\xff" * 500_000)
    parts = packed.pack_command("APPEND", "k", piece)
    assert any(part is piece for part in parts)
    assert b"".join(parts) == b"".join(packed.pack_command("APPEND", "k", piece.tobytes()))
