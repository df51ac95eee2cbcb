"""`tiergate dlq list` and `tiergate dlq replay`: the operator's view of dead letters.

An operator command with its own Redis I/O: it lists the dead-letter streams of every configured
request stream (tier, region and pools), and replays chosen letters into their request streams with a fresh deadline, so
their results land under `GET /v1/requests/{id}` as usual.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import msgspec

from core import protocol, redis_client
from core.clock import RedisClock
from core.redis_client import Client
from core.settings import Lane, Settings


@dataclass(slots=True, frozen=True)
class Letter:
    lane: Lane  # the request stream it came from
    entry_id: str  # in the dead-letter stream
    letter: protocol.DeadLetter


def dead_letter_lanes(settings: Settings, tier: str | None, region: str | None) -> list[Lane]:
    return [
        lane
        for lane in settings.lanes()
        if (tier is None or lane.tier == tier) and (region is None or lane.region == region)
    ]


async def list_letters(
    redis: Client, settings: Settings, tier: str | None = None, region: str | None = None
) -> list[Letter]:
    letters: list[Letter] = []
    for lane in dead_letter_lanes(settings, tier, region):
        entries: protocol.StreamEntries = await redis.xrange(protocol.dead_letter_key(lane.name))  # type: ignore[assignment]
        for entry_id, fields in entries:
            try:
                letter = protocol.dead_letter_decoder.decode(fields[protocol.PAYLOAD_FIELD])
            except (msgspec.DecodeError, KeyError):
                continue
            letters.append(Letter(lane, entry_id.decode(), letter))
    return letters


async def replay(redis: Client, settings: Settings, letters: list[Letter]) -> tuple[list[str], list[str]]:
    """Re-queue each letter's request with a fresh deadline; returns (replayed, refused) messages."""
    clock = RedisClock()
    await clock.sync(redis)
    replayed: list[str] = []
    refused: list[str] = []
    pipe = redis.pipeline(transaction=False)
    for item in letters:
        try:
            envelope = protocol.envelope_decoder.decode(item.letter.payload)
        except msgspec.DecodeError:
            refused.append(
                f"{item.entry_id}: the payload is not a request and cannot be replayed ({item.letter.reason})"
            )
            continue
        now_ms = clock.now_ms()
        deadline_at_ms = int(now_ms) + settings.tiers[envelope.tier].default_deadline_ms
        fresh = msgspec.structs.replace(envelope, deadline_at_ms=deadline_at_ms, sent_at_ms=round(now_ms, 3))
        accepted = protocol.Accepted(
            id=fresh.id,
            model=fresh.model,
            tier=fresh.tier,
            deadline_at_ms=deadline_at_ms,
            region=item.lane.region,
            lane=item.lane.name,
        )
        pipe.delete(protocol.request_key(fresh.id))  # the dead-letter failure, so the new answer can land
        pipe.set(protocol.accepted_key(fresh.id), protocol.encoder.encode(accepted), ex=settings.gateway.result_ttl_s)
        pipe.xadd(item.letter.stream, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(fresh)})
        pipe.xdel(protocol.dead_letter_key(item.lane.name), item.entry_id)
        replayed.append(f"{item.entry_id}: request {fresh.id} queued again on {item.letter.stream}")
    await pipe.execute()
    return replayed, refused


def describe(letters: list[Letter]) -> list[str]:
    """One line per letter, for `tiergate dlq list`."""
    rows = [("TIER", "REGION", "POOLS", "ENTRY", "REQUEST", "DELIVERIES", "REASON")]
    for item in letters:
        letter, lane = item.letter, item.lane
        request = letter.request_id or "(undecodable)"
        pools = "+".join(lane.pools)
        rows.append((lane.tier, lane.region, pools, item.entry_id, request, str(letter.deliveries), letter.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)), row[6]]) for row in rows]


async def run(
    settings: Settings, redis_url: str, action: str, tier: str | None, region: str | None, ids: list[str]
) -> int:
    """`tiergate dlq list|replay`: print the letters, or replay those named (all with `--all`)."""
    redis = await redis_client.connect(settings.redis, redis_url)
    try:
        letters = await list_letters(redis, settings, tier, region)
        if action == "list":
            if not letters:
                print("no dead letters")
                return 0
            print("\n".join(describe(letters)))
            return 0
        chosen = letters if not ids else [item for item in letters if item.entry_id in ids]
        missing = sorted(set(ids) - {item.entry_id for item in chosen})
        replayed, refused = await replay(redis, settings, chosen)
        for line in replayed:
            print(line)
        for line in [*refused, *(f"{entry}: no such dead letter" for entry in missing)]:
            print(line, file=sys.stderr)
        return 1 if refused or missing else 0
    finally:
        await redis.aclose()
