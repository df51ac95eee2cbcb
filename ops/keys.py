"""`tiergate keys create|list|revoke`: the operator's API keys.

Its Redis I/O is `gateway.tenant_store.TenantStore`'s: a key is stored as the SHA-256 of the
key with its Grant; the key itself is printed once, by `create`, and never stored. A revoked
key is refused by every gateway within a second (they poll the keys' version counter).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import msgspec

from core import protocol, redis_client
from core.protocol import SENSITIVITY_CLASSES, Grant
from core.settings import Settings
from gateway.auth import hash_key, new_key
from gateway.tenant_store import TenantStore

_NAME = r"^[a-z0-9][a-z0-9._-]*$"


def grant_from(args: argparse.Namespace, settings: Settings, key_id: str) -> Grant:
    """The Grant `tiergate keys create`'s flags describe, or SystemExit naming a bad flag."""
    tiers, models, regions = (_list(flag) for flag in (args.tiers, args.models, args.regions))
    known = ", ".join(settings.tiers)
    problems = [f"--tiers: unknown tier {t!r} (configured: {known})" for t in tiers if t not in settings.tiers]
    problems += [f"--models: unknown model {m!r}" for m in models if m not in settings.models]
    for flag, value in (("--max-sensitivity", args.max_sensitivity), ("--sensitivity", args.sensitivity)):
        if value and value not in SENSITIVITY_CLASSES:
            problems.append(f"{flag}: {value!r} is not one of {', '.join(SENSITIVITY_CLASSES)}")
    if not (re.match(_NAME, args.tenant) and len(args.tenant) <= 64):
        problems.append(f"--tenant: {args.tenant!r} must be lower-case letters, digits, '.', '_' or '-'")
    if problems:
        raise SystemExit("tiergate keys create: " + "; ".join(problems))
    return Grant(
        key_id=key_id,
        tenant=args.tenant,
        tiers=tiers,
        models=models,
        regions=regions,
        max_sensitivity=args.max_sensitivity or "restricted",
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.max_concurrency,
        weight=args.weight,
        region=args.region or "",
        sensitivity=args.sensitivity or "",
    )


def _list(flag: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (flag or "").split(",") if part.strip())


def describe(records: list[tuple[str, Grant, str]]) -> list[str]:
    """One line per key (id, source, tenant, what it allows, its limits), never the key."""
    rows = [
        ("ID", "SOURCE", "TENANT", "TIERS", "MODELS", "REGIONS", "MAX_CLASS", "RPM", "TPM", "CONCURRENCY", "WEIGHT")
    ]
    for key_id, g, source in records:
        limits = (str(g.rpm or "-"), str(g.tpm or "-"), str(g.max_concurrency or "-"), f"{g.weight:g}")
        allowed = (",".join(g.tiers) or "*", ",".join(g.models) or "*", ",".join(g.regions) or "*")
        rows.append((key_id, source, g.tenant, *allowed, g.max_sensitivity, *limits))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


async def run(settings: Settings, redis_url: str, args: argparse.Namespace) -> int:
    redis = await redis_client.connect(settings.redis, redis_url)
    store = TenantStore(redis)
    try:
        if args.keys_command == "create":
            key, key_id = new_key()
            grant = grant_from(args, settings, key_id)
            await store.create(hash_key(key), protocol.KeyRecord(grant=grant, created_at_ms=int(time.time() * 1000)))
            print("the key is shown only this once: store it now", file=sys.stderr)
            print(msgspec.json.encode({"id": key_id, "tenant": grant.tenant, "key": key}).decode())
            return 0
        if args.keys_command == "list":
            stored = sorted((r.grant for r in (await store.records()).values()), key=lambda g: (g.tenant, g.key_id))
            configured = [key.grant(key_id) for key_id, key in settings.auth.keys.items()]
            rows = [(g.key_id, g, "config") for g in configured] + [(g.key_id, g, "redis") for g in stored]
            print("\n".join(describe(rows)))
            return 0
        if await store.revoke(args.key_id):
            print(f"key {args.key_id} revoked")
            return 0
        where = " (it is in the config: remove it there)" if args.key_id in settings.auth.keys else ""
        print(f"tiergate keys revoke: no key with id {args.key_id!r} in Redis{where}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
