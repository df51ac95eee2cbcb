"""Batch API files kept in a real Redis a piece at a time: what is read back is what was stored,
cut into pieces of FILE_PIECE_BYTES; a write that fails leaves nothing behind; a file deleted while
it is read says so instead of ending short. On one Redis server and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core import protocol, redis_client
from core.redis_client import Client
from core.settings import BatchSettings, RedisSettings
from gateway import batch_store
from gateway.batch_store import BatchStore, FileGone

pytestmark = [pytest.mark.redis_server, pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)]

PIECE = 1000


@pytest.fixture
async def store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BatchStore]:
    monkeypatch.setattr(batch_store, "FILE_PIECE_BYTES", PIECE)
    client = await redis_client.connect(RedisSettings(), redis_url)
    yield BatchStore(client, BatchSettings())
    await client.aclose()


def new_record(size: int) -> protocol.FileRecord:
    return protocol.FileRecord(f"file-{protocol.new_request_id()}", size, 0, "in.jsonl", "batch", "tenant-a")


async def partial_keys(redis: Client, record: protocol.FileRecord) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"*{{file.{record.id}}}:partial*")]


async def test_a_file_comes_back_whole_in_pieces_of_the_set_size(store: BatchStore) -> None:
    parts = [bytes([n]) * size for n, size in enumerate([10, 2_500, 0, 990, 1, 3_000, 999])]
    whole = b"".join(parts)
    record = new_record(len(whole))
    await store.put_file(record, parts)
    content = await store.content(record.id)
    assert content is not None and content.size == len(whole)
    pieces = [piece async for piece in content.pieces]
    assert b"".join(pieces) == whole
    assert [len(piece) for piece in pieces] == [PIECE] * 7 + [len(whole) - 7 * PIECE]
    assert await partial_keys(store.redis, record) == []
    ttl = await store.redis.ttl(protocol.file_data_key(record.id))
    assert batch_store.UPLOAD_TTL_S < ttl <= store.ttl_s  # the files' lifetime, not the upload's
    assert await store.file(record.id) == record


async def test_an_empty_file_is_stored_and_read_as_empty(store: BatchStore) -> None:
    record = new_record(0)
    await store.put_file(record, [])
    content = await store.content(record.id)
    assert content is not None and content.size == 0
    assert [piece async for piece in content.pieces] == []
    assert await store.content("file-never-stored") is None


async def test_a_file_deleted_while_it_is_read_raises_file_gone(store: BatchStore) -> None:
    record = new_record(3 * PIECE)
    await store.put_file(record, [b"x" * (3 * PIECE)])
    content = await store.content(record.id)
    assert content is not None
    assert await anext(content.pieces) == b"x" * PIECE
    await store.delete_file(record)
    with pytest.raises(FileGone, match=f"at byte {PIECE}"):
        await anext(content.pieces)


async def test_a_write_that_fails_part_way_leaves_no_content_and_no_record(store: BatchStore) -> None:
    record = new_record(2_500)

    class Unreadable:  # memoryview() of it fails: the write stops after its first piece
        pass

    with pytest.raises(TypeError):
        await store.put_file(record, [b"y" * 1_500, Unreadable()])  # type: ignore[list-item]
    assert await partial_keys(store.redis, record) == []
    assert await store.redis.exists(protocol.file_data_key(record.id), protocol.file_key(record.id)) == 0


async def test_two_writers_of_one_file_never_mix_their_pieces(store: BatchStore) -> None:
    record = new_record(5 * PIECE)
    first, second = [b"a" * (5 * PIECE)], [b"b" * (5 * PIECE)]
    await asyncio.gather(store.put_file(record, first), store.put_file(record, second))
    content = await store.content(record.id)
    assert content is not None
    assert b"".join([piece async for piece in content.pieces]) in (first[0], second[0])
