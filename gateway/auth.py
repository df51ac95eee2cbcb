"""API keys at the front door: with `[auth] mode = "keys"`, the front (`app.py`) turns each request's
`Authorization: Bearer <key>` into its key's `Grant` (kept at `request[GRANT]`) or a 401, and
`authorize` refuses (403) a tier, model, region or data class the Grant does not allow. Keys are
known by their SHA-256 only: from the config, or looked up through `TenantStore` and cached, the
cache dropped whenever the keys' version counter in Redis moves (polled each second).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

from aiohttp import web

from core.errors import Forbidden, Unauthorized
from core.protocol import SENSITIVITY_CLASSES, Grant
from core.settings import AuthSettings

from .http_shared import GRANT
from .tenant_store import TenantStore

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often each gateway checks whether a key was created or revoked
CACHE_MAX = 10_000  # keys cached per gateway: past it the cache starts again (a flood of made-up keys)
KEY_PREFIX = "tg-"  # every key tiergate makes starts with it: recognisable in a config or a leak scan
OPEN_WARNING = (
    '[auth] mode = "open": anyone who can reach this port may use every tier, model and region, '
    'and read any request by id; set [auth] mode = "keys" to require API keys'
)


def new_key() -> tuple[str, str]:
    """A new API key and its id: 256 random bits, and a short id that names it in lists and logs."""
    return KEY_PREFIX + secrets.token_urlsafe(32), "key_" + secrets.token_hex(6)


def hash_key(key: str) -> str:
    """The SHA-256 (hex) of a key: all that is ever stored of it."""
    return hashlib.sha256(key.encode()).hexdigest()


def authorize(grant: Grant, tier: str, model: str, region: str, sensitivity: str = "") -> None:
    """Raise `Forbidden` naming the first thing `grant` does not allow (an empty list allows all)."""
    limits = (("tier", tier, grant.tiers), ("model", model, grant.models), ("region", region, grant.regions))
    for what, value, allowed in limits:
        if allowed and value not in allowed:
            raise Forbidden(f"this API key may not use the {what} {value!r} (it allows {', '.join(allowed)})")
    if sensitivity and _RANKS.get(sensitivity, _UNKNOWN_RANK) > _RANKS.get(grant.max_sensitivity, _UNKNOWN_RANK):
        raise Forbidden(
            f"this API key may not send {sensitivity!r} data (its highest class is {grant.max_sensitivity!r})"
        )


_RANKS = {name: rank for rank, name in enumerate(SENSITIVITY_CLASSES)}
_UNKNOWN_RANK = len(SENSITIVITY_CLASSES)  # an unknown class ranks above every known one


def bearer_key(header: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header, or `Unauthorized` saying what is wrong."""
    if not header:
        raise Unauthorized("no API key: send it as 'Authorization: Bearer <key>'")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return key.strip()


class Authenticator:
    """One gateway process's view of the API keys: the config's, and Redis's cached for
    `key_cache_s` (unknown keys too, so a flood of bad keys costs one lookup each per period);
    `refresh` drops the cache when a key was created or revoked anywhere."""

    def __init__(self, settings: AuthSettings, store: TenantStore) -> None:
        self.settings = settings
        self.store = store
        self._static = {key.sha256: key.grant(key_id) for key_id, key in settings.keys.items()}
        self._cache: dict[str, tuple[Grant | None, float]] = {}
        self._version: int | None = None

    async def grant(self, key: str) -> Grant:
        """The Grant of `key`, or `Unauthorized`."""
        sha = hash_key(key)
        grant = self._static.get(sha)
        if grant is None:
            cached = self._cache.get(sha)
            now = time.monotonic()
            if cached is None or cached[1] <= now:
                cached = (await self.store.lookup(sha), now + self.settings.key_cache_s)
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[sha] = cached
            grant = cached[0]
        if grant is None:
            raise Unauthorized("unknown or revoked API key")
        return grant

    async def refresh(self) -> None:
        """Forget every cached key when the keys' version moved (a key created or revoked)."""
        version = await self.store.version()
        if version != self._version:
            self._cache.clear()
            self._version = version

    def exempt(self, path: str) -> bool:
        return any(path.startswith(p) if p.endswith("/") else path == p for p in self.settings.exempt_paths)


AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)


async def attach_grant(request: web.Request) -> None:
    """Give the request its key's Grant, or refuse it with 401 (paths in `exempt_paths` keep the
    open Grant the front gave them)."""
    auth = request.app[AUTH]
    if not auth.exempt(request.path):
        request[GRANT] = await auth.grant(bearer_key(request.headers.get("Authorization")))


def warn_if_open(settings: AuthSettings) -> None:
    """The start-up warning of an open gateway."""
    if settings.mode == "open":
        log.warning(OPEN_WARNING)
