"""The Batch API's Redis I/O: files (their records, and their content in Redis, a shared
directory or an S3-compatible bucket), batch records, each line's one recorded outcome, cancel
requests and the runner's lease. Every key is named in `core/protocol.py`; one batch's keys share a hash tag, so its
scripts run on Redis Cluster too. Redis errors come out as `BackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from core import protocol
from core.errors import BackendUnavailable, ConfigError, NotFound
from core.redis_client import Client
from core.settings import BatchSettings

# A line's outcome is recorded once: not after the batch was closed (finalizing), and never over
# an earlier outcome; only a new one is counted. KEYS: outcomes, counts. ARGV: custom_id, outcome,
# the count to increment ("completed" or "failed").
OUTCOMES_READ_AT_ONCE = 1000  # a batch's outcomes read in one step when it is closed
OUTCOMES_WRITTEN_AT_ONCE = 100  # outcomes recorded in one pipeline (an expired or cancelled batch's rest)
FILES_READ_AT_ONCE = 100  # index entries read in one step while a listing looks past skipped ones
# A file's content goes to and comes from Redis this much a command. One 100 MB value in one
# command held the event loop for 0.2 s to pack it and as long to parse it (bench/batch_upload.py).
FILE_PIECE_BYTES = 1 << 20
UPLOAD_TTL_S = 3600  # a piece-by-piece write a dead gateway left unfinished is dropped after this
_RECORD = """
if redis.call('HEXISTS', KEYS[2], 'closed') == 1 then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1
"""
# The lease holder's renewal (ARGV: owner, ttl in ms) and release (ARGV: owner).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A file's content, whole, takes its place and the files' lifetime. KEYS: the writer's own key,
# the content's key. ARGV: the lifetime in seconds.
_PLACE = """
redis.call('RENAME', KEYS[1], KEYS[2])
return redis.call('EXPIRE', KEYS[2], ARGV[1])
"""
# A new member of a tenant's index, placed after every earlier one whatever the gateways' clocks
# say. KEYS: the index, its counter. ARGV: the member.
_INDEX = """
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1])
return 1
"""
COMPLETED, FAILED, CLOSED = "completed", "failed", "closed"


class FileGone(Exception):
    """A file's content was deleted while it was being read."""


@dataclass(frozen=True, slots=True)
class Content:
    """A stored file's content: its size, and its bytes in pieces of at most FILE_PIECE_BYTES,
    read as they are taken (`FileGone` if the file is deleted meanwhile)."""

    size: int
    pieces: AsyncIterator[bytes]


@contextlib.asynccontextmanager
async def _redis(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BackendUnavailable(f"Redis is unreachable, {what}: {exc}") from exc


class BatchStore:
    def __init__(self, redis: Client, settings: BatchSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.ttl_s = settings.file_ttl_s
        self._record = redis.register_script(_RECORD)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._place = redis.register_script(_PLACE)
        self.bucket = Bucket(settings) if settings.storage == "s3" else None

    # ------------------------------------------------------------ files

    async def put_file(self, record: protocol.FileRecord, parts: Sequence[bytes]) -> None:
        """Keep a file (its content in `parts`, in order): its content first, then its record and
        its place in the tenant's list."""
        if self.settings.storage == "directory":
            await asyncio.to_thread(_write, Path(self.settings.directory) / record.id, parts)
        elif self.bucket is not None:
            await self.bucket.put(record.id, parts)
        async with _redis("the file was not stored"):
            if self.settings.storage == "redis":
                await self._put_content(record.id, parts)
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(protocol.file_key(record.id), protocol.encoder.encode(record), ex=self.ttl_s)
            keys = (protocol.file_index_key(record.tenant), protocol.file_sequence_key(record.tenant))
            pipe.eval(_INDEX, 2, *keys, record.id)
            await pipe.execute()

    async def _put_content(self, file_id: str, parts: Sequence[bytes]) -> None:
        """Store a file's content a piece at a time under a key of this writer's own, then rename
        it into place whole: a second writer of the same file (a runner finishing a batch again)
        replaces it, never mixes with it. The key gets the file's whole size first and each piece
        is copied into place: APPENDing would make Redis grow, and copy, the value at every piece.
        Each piece goes as a memoryview, which the client sends as it is (core/redis_client.py)."""
        partial = protocol.file_upload_key(file_id, protocol.new_request_id())
        size = sum(map(len, parts))
        await self.redis.set(partial, b"", ex=UPLOAD_TTL_S)
        try:
            if size:
                await self.redis.setrange(partial, size - 1, b"\0")
            offset = 0
            for piece in _pieces(parts):
                await self.redis.setrange(partial, offset, piece)
                offset += len(piece)
            await self._place(keys=[partial, protocol.file_data_key(file_id)], args=[self.ttl_s])
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(partial)
            raise

    async def file(self, file_id: str) -> protocol.FileRecord | None:
        async with _redis("the file was not read"):
            raw = await self.redis.get(protocol.file_key(file_id))
        return None if raw is None else protocol.file_decoder.decode(_bytes(raw))

    async def content(self, file_id: str) -> Content | None:
        """A file's content, or None where it is no longer stored."""
        data: bytes | None = None
        if self.bucket is not None:
            data = await self.bucket.get(file_id)
        elif self.settings.storage == "directory":
            path = Path(self.settings.directory) / file_id
            with contextlib.suppress(FileNotFoundError):
                data = await asyncio.to_thread(path.read_bytes)
        else:
            key = protocol.file_data_key(file_id)
            async with _redis("the file was not read"):
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(key)
                pipe.strlen(key)
                exists, size = await pipe.execute()
            return Content(size, self._ranges(key, size)) if exists else None
        return None if data is None else Content(len(data), _sliced(data))

    async def _ranges(self, key: str, size: int) -> AsyncIterator[bytes]:
        for start in range(0, size, FILE_PIECE_BYTES):
            end = min(start + FILE_PIECE_BYTES, size)
            async with _redis("the file was not read"):
                piece = _bytes(await self.redis.getrange(key, start, end - 1))
            if len(piece) != end - start:
                raise FileGone(f"the file was deleted while it was read, at byte {start}")
            yield piece

    async def delete_file(self, record: protocol.FileRecord) -> None:
        async with _redis("the file was not deleted"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(protocol.file_key(record.id), protocol.file_data_key(record.id))
            pipe.zrem(protocol.file_index_key(record.tenant), record.id)
            await pipe.execute()
        if self.settings.storage == "directory":
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread((Path(self.settings.directory) / record.id).unlink)
        elif self.bucket is not None:
            await self.bucket.delete(record.id)

    async def list_files(
        self, tenant: str, after: str | None, limit: int, purpose: str | None = None
    ) -> tuple[list[protocol.FileRecord], bool]:
        """Up to `limit` of a tenant's files (of `purpose`, if given), newest first, after the one
        named `after`; and whether more follow."""

        async def load(ids: list[str]) -> list[protocol.FileRecord | None]:
            async with _redis("the files were not read"):
                raws = await asyncio.gather(*(self.redis.get(protocol.file_key(i)) for i in ids))
            return [None if raw is None else protocol.file_decoder.decode(_bytes(raw)) for raw in raws]

        index, at_once = protocol.file_index_key(tenant), max(limit, FILES_READ_AT_ONCE)
        return await self._listing(index, after, limit, at_once, load, lambda r: purpose in (None, r.purpose))

    async def _listing(
        self, index: str, after: str | None, limit: int, at_once: int,
        load: Callable[[list[str]], Awaitable[list[Any]]], keep: Callable[[Any], bool] = lambda _: True,
    ) -> tuple[list[Any], bool]:  # fmt: skip
        """Up to `limit` of an index's members as `load` gives them (`at_once` at a time), newest
        first, after the one named `after`, skipping those `keep` refuses; and whether more follow.
        The index is read on past skipped members and those whose record expired (which it drops,
        so it does not grow forever): a page is short only at the end. `NotFound` if `after` is not
        listed."""
        below = await self._place_of(index, after)
        found: list[Any] = []
        while True:  # until one member beyond the page is found, or the index ends
            async with _redis("the list was not read"):
                raw: list[Any] = await self.redis.zrevrangebyscore(
                    index, f"({below}", "-inf", start=0, num=at_once + 1, withscores=True
                )
            more = len(raw) > at_once
            page = raw[:at_once]
            ids = [_text(member) for member, _ in page]
            loaded = await load(ids)
            if gone := [i for i, item in zip(ids, loaded, strict=True) if item is None]:
                async with _redis("the list was not pruned"):
                    await self.redis.zrem(index, *gone)
            found += [item for item in loaded if item is not None and keep(item)]
            if len(found) > limit or not more:
                return found[:limit], len(found) > limit
            below = page[-1][1]  # by place, not by id: the member may have just been dropped

    async def _place_of(self, index: str, after: str | None) -> float | str:
        """The place in `index` that a page after `after` starts below ("+inf": from the newest)."""
        if not after:
            return "+inf"
        async with _redis("the list was not read"):
            place = await self.redis.zscore(index, after)
        if place is None:
            raise NotFound(f"after is {after!r}, which is not in this list (deleted, or expired) - at `$.after`")
        return float(place)

    # ------------------------------------------------------------ batches

    async def create(self, record: protocol.BatchRecord) -> None:
        """Store a new batch, listed after its tenant's earlier ones, and as active: a runner
        will take it up."""
        async with _redis("the batch was not created"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(protocol.batch_key(record.id), protocol.encoder.encode(record), ex=self.ttl_s)
            keys = (protocol.batch_index_key(record.tenant), protocol.batch_sequence_key(record.tenant))
            pipe.eval(_INDEX, 2, *keys, record.id)
            pipe.sadd(protocol.batch_active_key(), record.id)
            await pipe.execute()

    async def batch(self, batch_id: str) -> tuple[protocol.BatchRecord, dict[str, int], int] | None:
        """A batch's record, its counts of recorded outcomes, and when a cancel was asked for (0: never)."""
        async with _redis("the batch was not read"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(protocol.batch_key(batch_id))
            pipe.hgetall(protocol.batch_counts_key(batch_id))
            pipe.get(protocol.batch_cancel_key(batch_id))
            raw, counts, cancel = await pipe.execute()
        if raw is None:
            return None
        cancel_at = int(cancel) if cancel is not None else 0
        return protocol.batch_decoder.decode(raw), {_text(k): int(v) for k, v in counts.items()}, cancel_at

    async def list_batches(self, tenant: str, after: str | None, limit: int) -> tuple[list[Any], bool]:
        """A tenant's batches as `batch` gives each, newest first, after `after`; whether more follow."""

        async def load(ids: list[str]) -> list[Any]:
            return list(await asyncio.gather(*(self.batch(i) for i in ids)))

        # one beyond the page: whether more follow, as a rule without a second step
        return await self._listing(protocol.batch_index_key(tenant), after, limit, limit + 1, load)

    async def save(self, record: protocol.BatchRecord) -> None:
        async with _redis("the batch was not saved"):
            await self.redis.set(protocol.batch_key(record.id), protocol.encoder.encode(record), ex=self.ttl_s)

    async def request_cancel(self, batch_id: str, at_s: int) -> None:
        """Ask a batch's runner to stop feeding it; the first ask's time stays."""
        async with _redis("the batch was not cancelled"):
            await self.redis.set(protocol.batch_cancel_key(batch_id), at_s, ex=self.ttl_s, nx=True)

    async def active(self) -> list[str]:
        async with _redis("the active batches were not read"):
            members = await self.redis.smembers(protocol.batch_active_key())
        return sorted(_text(member) for member in members)

    # ------------------------------------------------------------ lines

    async def recorded(self, batch_id: str) -> set[str]:
        """The custom_ids of a batch whose outcome is recorded."""
        async with _redis("the batch's outcomes were not read"):
            keys = await self.redis.hkeys(protocol.batch_outcomes_key(batch_id))
        return {_text(key) for key in keys}

    async def record(self, batch_id: str, custom_id: str, outcome: protocol.LineOutcome) -> bool:
        """Record a line's outcome unless it has one (or the batch is closed); whether it was new."""
        keys = [protocol.batch_outcomes_key(batch_id), protocol.batch_counts_key(batch_id)]
        args: list[bytes | str] = [custom_id, protocol.encoder.encode(outcome), FAILED if outcome.failed else COMPLETED]
        async with _redis("the line's outcome was not recorded"):
            return bool(await self._record(keys=keys, args=args))

    async def record_many(self, batch_id: str, outcomes: list[tuple[str, protocol.LineOutcome]]) -> None:
        """Record outcomes of lines (custom_id, outcome) that have none, OUTCOMES_WRITTEN_AT_ONCE
        to a pipeline: Redis serves other clients' commands between two."""
        keys = [protocol.batch_outcomes_key(batch_id), protocol.batch_counts_key(batch_id)]
        for start in range(0, len(outcomes), OUTCOMES_WRITTEN_AT_ONCE):
            async with _redis("the lines' outcomes were not recorded"):
                pipe = self.redis.pipeline(transaction=False)
                for custom_id, outcome in outcomes[start : start + OUTCOMES_WRITTEN_AT_ONCE]:
                    pipe.eval(_RECORD, 2, *keys, custom_id, protocol.encoder.encode(outcome), FAILED)
                await pipe.execute()

    async def close(self, batch_id: str) -> list[protocol.LineOutcome]:
        """Close a batch to new outcomes and read the ones it holds (in input order), a part at a
        time: a large batch's outcomes in one reply would hold Redis and this event loop for long
        enough to delay the requests beside it."""
        outcomes: dict[int, protocol.LineOutcome] = {}  # by line: HSCAN may give one twice
        async with _redis("the batch's outcomes were not read"):
            await self.redis.hset(protocol.batch_counts_key(batch_id), CLOSED, 1)
            cursor = 0
            while True:
                scanned: Any = await self.redis.hscan(
                    protocol.batch_outcomes_key(batch_id), cursor, count=OUTCOMES_READ_AT_ONCE
                )
                cursor, part = scanned
                for raw in part.values():
                    outcome = protocol.outcome_decoder.decode(_bytes(raw))
                    outcomes[outcome.line] = outcome
                if not cursor:
                    break
        return [outcomes[line] for line in sorted(outcomes)]

    async def finish(self, record: protocol.BatchRecord, owner: str) -> None:
        """Store a batch's final record and drop what running it needed."""
        batch_id = record.id
        async with _redis("the batch was not finished"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(protocol.batch_key(batch_id), protocol.encoder.encode(record), ex=self.ttl_s)
            pipe.expire(protocol.batch_counts_key(batch_id), self.ttl_s)
            # UNLINK: Redis frees a large batch's outcomes in the background, not while others wait
            pipe.unlink(protocol.batch_outcomes_key(batch_id), protocol.batch_cancel_key(batch_id))
            pipe.srem(protocol.batch_active_key(), batch_id)
            await pipe.execute()
            await self._release(keys=[protocol.batch_lease_key(batch_id)], args=[owner])

    async def forget(self, batch_id: str, owner: str) -> None:
        """Drop a batch whose record is gone from the active ones."""
        async with _redis("the batch was not forgotten"):
            await self.redis.srem(protocol.batch_active_key(), batch_id)
        await self.release(batch_id, owner)

    # ------------------------------------------------------------ the runner's lease

    async def acquire(self, batch_id: str, owner: str) -> bool:
        ttl_ms = int(self.settings.lease_ttl_s * 1000)
        async with _redis("the lease was not taken"):
            return bool(await self.redis.set(protocol.batch_lease_key(batch_id), owner, nx=True, px=ttl_ms))

    async def renew(self, batch_id: str, owner: str) -> bool:
        ttl_ms = int(self.settings.lease_ttl_s * 1000)
        async with _redis("the lease was not renewed"):
            return bool(await self._renew(keys=[protocol.batch_lease_key(batch_id)], args=[owner, ttl_ms]))

    async def release(self, batch_id: str, owner: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[protocol.batch_lease_key(batch_id)], args=[owner])


class Bucket:
    """File contents in an S3-compatible bucket (`storage = "s3"`), through boto3 (the
    tiergate[s3] extra) in a thread; credentials as boto3 finds them (environment, profile, role)."""

    def __init__(self, settings: BatchSettings) -> None:
        try:
            import boto3  # the tiergate[s3] extra, loaded only where it is used
        except ImportError as exc:
            raise ConfigError('batches.storage = "s3" needs boto3: pip install "tiergate[s3]"') from exc
        options = {"endpoint_url": settings.s3_endpoint_url or None, "region_name": settings.s3_region or None}
        self.client = boto3.client("s3", **options)
        self.name, self.prefix = settings.s3_bucket, settings.s3_prefix

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(getattr(self.client, method), Bucket=self.name, **kwargs)
        except Exception as exc:  # botocore's errors share no base class with a useful name
            if type(exc).__name__ == "NoSuchKey":
                return None
            raise BackendUnavailable(f"the file bucket {self.name!r} did not answer: {exc}") from exc

    async def put(self, file_id: str, parts: Sequence[bytes]) -> None:
        data = await asyncio.to_thread(b"".join, parts)  # a large join lets go of the GIL
        await self._call("put_object", Key=self.prefix + file_id, Body=data)

    async def get(self, file_id: str) -> bytes | None:
        found = await self._call("get_object", Key=self.prefix + file_id)
        if found is None:
            return None
        data: bytes = await asyncio.to_thread(found["Body"].read)
        return data

    async def delete(self, file_id: str) -> None:
        await self._call("delete_object", Key=self.prefix + file_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _pieces(parts: Sequence[bytes]) -> Iterator[memoryview]:
    """`parts` as consecutive pieces of FILE_PIECE_BYTES (the last one shorter), none copied
    where a part holds a whole piece; an empty file has none."""
    held: list[bytes] = []
    size = 0
    for part in parts:
        view = memoryview(part)
        while view:
            if not held and len(view) >= FILE_PIECE_BYTES:
                yield view[:FILE_PIECE_BYTES]
                view = view[FILE_PIECE_BYTES:]
                continue
            take = view[: FILE_PIECE_BYTES - size]
            held.append(take.tobytes())
            size += len(take)
            view = view[len(take) :]
            if size == FILE_PIECE_BYTES:
                yield memoryview(b"".join(held))
                held, size = [], 0
    if held:
        yield memoryview(b"".join(held))


async def _sliced(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), FILE_PIECE_BYTES):
        yield data[start : start + FILE_PIECE_BYTES]


def _write(path: Path, parts: Sequence[bytes]) -> None:
    """Write a file whole or not at all: to a temporary name, then renamed."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        out.writelines(parts)
    partial.replace(path)
