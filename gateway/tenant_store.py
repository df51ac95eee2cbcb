"""The Redis I/O of tenants at the gateway (and of `tiergate keys`): API key records, stored by
the SHA-256 of each key, their version counter, and each key's limits, kept by Lua scripts so
that every gateway process shares them atomically: requests and tokens per minute (fixed
one-minute windows on Redis's clock) and requests in flight (a sorted set scored by deadline).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from core import protocol
from core.errors import BackendUnavailable
from core.redis_client import Client

RATE_TTL_S = 120  # a minute's counters outlive it by a minute: a late settlement still finds them

# KEYS: requests this minute, tokens this minute, in flight. ARGV: rpm, tpm, max concurrency,
# now (ms), request id, its deadline (ms). Answers 0 (admitted, counted), or the limit it is
# over: 1 rpm, 2 tpm, 3 concurrency (nothing counted).
_ACQUIRE = """
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[3]) >= most then return 3 end
end
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tpm then return 2 end
if rpm > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return 1 end
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
if most > 0 then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('PEXPIREAT', KEYS[3], redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2] + 1000)
end
return 0
"""

# KEYS: in flight, tokens of the minute the request was admitted in. ARGV: request id, tokens.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 0
"""

OVER = {1: "rpm", 2: "tpm", 3: "max_concurrency"}  # what `TenantStore.acquire` answers, by name


@dataclass(frozen=True, slots=True)
class Held:
    """What a request admitted under its key's limits holds: released once, at its outcome."""

    key_id: str
    request_id: str
    epoch_min: int  # the minute it was admitted in: its tokens are counted there
    deadline_ms: int  # Redis's clock: its slot frees itself then, released or not


class TenantStore:
    """API key records and limit counters; every Redis error becomes `BackendUnavailable`."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    # ------------------------------------------------------------ keys

    async def lookup(self, sha256: str) -> protocol.Grant | None:
        """The Grant of the key whose SHA-256 is `sha256`; None when no such key exists."""
        try:
            raw = await self.redis.hget(protocol.api_keys_key(), sha256)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        return None if raw is None else protocol.key_record_decoder.decode(_bytes(raw)).grant

    async def version(self) -> int:
        raw = await self.redis.get(protocol.api_keys_version_key())
        return int(raw or 0)

    async def create(self, sha256: str, record: protocol.KeyRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(protocol.api_keys_key(), sha256, protocol.encoder.encode(record))
            pipe.incr(protocol.api_keys_version_key())
            await pipe.execute()

    async def records(self) -> dict[str, protocol.KeyRecord]:
        """Every stored key: its SHA-256 -> its record."""
        raw = await self.redis.hgetall(protocol.api_keys_key())
        return {_text(sha): protocol.key_record_decoder.decode(_bytes(value)) for sha, value in raw.items()}

    async def revoke(self, key_id: str) -> bool:
        """Delete the key with id `key_id`; False when there is none."""
        shas = [sha for sha, record in (await self.records()).items() if record.grant.key_id == key_id]
        if not shas:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(protocol.api_keys_key(), *shas)
            pipe.incr(protocol.api_keys_version_key())
            await pipe.execute()
        return True

    # ------------------------------------------------------------ limits

    async def acquire(self, grant: protocol.Grant, held: Held, now_ms: int) -> str | None:
        """Count a request against its key's limits; None when admitted, else the name of the
        limit it is over (then nothing is counted). A slot whose deadline is past `now_ms` is
        free again: its gateway died before releasing it."""
        key_id, minute = grant.key_id, held.epoch_min
        keys = (
            protocol.rate_key(key_id, "rpm", minute),
            protocol.rate_key(key_id, "tpm", minute),
            protocol.inflight_key(key_id),
        )
        args = (grant.rpm, grant.tpm, grant.max_concurrency, now_ms, held.request_id, held.deadline_ms, RATE_TTL_S)
        try:
            over = await self._acquire(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        return OVER.get(int(over))

    async def release(self, held: Held, tokens: int) -> None:
        """Free a request's slot and count the tokens it used."""
        keys = (protocol.inflight_key(held.key_id), protocol.rate_key(held.key_id, "tpm", held.epoch_min))
        await self._release(keys=keys, args=(held.request_id, tokens, RATE_TTL_S))


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
