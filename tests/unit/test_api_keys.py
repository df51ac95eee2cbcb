"""API keys without a network: hashing, the Bearer header, what a Grant allows, the refusal of a
request over a limit, static keys from the config, and the per-gateway key cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from core.errors import ConfigError, Forbidden, Unauthorized
from core.protocol import Grant
from core.settings import AuthSettings, Settings
from gateway.auth import Authenticator, authorize, bearer_key, hash_key, new_key
from gateway.limits import over_limit

SHA = hashlib.sha256(b"tg-static").hexdigest()


def test_a_new_key_is_long_random_and_recognisable_and_only_its_hash_is_kept() -> None:
    (key, key_id), (other, other_id) = new_key(), new_key()
    assert key.startswith("tg-") and len(key) >= 43 and key != other and key_id != other_id
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest() and key not in hash_key(key)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "no API key: send it as 'Authorization: Bearer <key>'"),
        ("", "no API key: send it as 'Authorization: Bearer <key>'"),
        ("Basic dXNlcjpwdw==", "the Authorization header must be 'Bearer <key>'"),
        ("Bearer ", "the Authorization header must be 'Bearer <key>'"),
    ],
)
def test_a_missing_or_malformed_authorization_header_is_unauthorized(header: str | None, problem: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        bearer_key(header)
    assert refused.value.message == problem and refused.value.status == 401


def test_the_bearer_key_is_read_whatever_the_scheme_case() -> None:
    assert bearer_key("Bearer tg-abc") == bearer_key("bearer  tg-abc ") == "tg-abc"


GRANT = Grant(
    key_id="k1",
    tenant="acme",
    tiers=("interactive", "batch"),
    models=("sim-echo",),
    regions=("eu",),
    max_sensitivity="internal",
)


@pytest.mark.parametrize(
    ("tier", "model", "region", "sensitivity", "refused"),
    [
        ("interactive", "sim-echo", "eu", "internal", None),
        ("batch", "sim-echo", "eu", "", None),
        ("realtime", "sim-echo", "eu", "", "may not use the tier 'realtime' (it allows interactive, batch)"),
        ("batch", "sim-embed", "eu", "", "may not use the model 'sim-embed' (it allows sim-echo)"),
        ("batch", "sim-echo", "us", "public", "may not use the region 'us' (it allows eu)"),
        ("batch", "sim-echo", "eu", "restricted", "may not send 'restricted' data (its highest class is 'internal')"),
    ],
)
def test_a_grant_refuses_what_it_does_not_allow_naming_it(
    tier: str, model: str, region: str, sensitivity: str, refused: str | None
) -> None:
    if refused is None:
        authorize(GRANT, tier, model, region, sensitivity)
        return
    with pytest.raises(Forbidden) as error:
        authorize(GRANT, tier, model, region, sensitivity)
    assert error.value.message == f"this API key {refused}" and error.value.status == 403


def test_an_empty_list_allows_everything() -> None:
    authorize(Grant(key_id="k", tenant="t"), "realtime", "any-model", "anywhere", "restricted")


def test_over_a_limit_the_refusal_names_it_and_when_to_retry() -> None:
    grant = Grant(key_id="k", tenant="t", rpm=10, tpm=500, max_concurrency=2)
    at_45_s = 1_000 * 60_000 + 45_000  # 45 s into a minute: room again in 15 s
    rpm = over_limit(grant, "rpm", at_45_s)
    assert (rpm.status, rpm.code, rpm.retry_after_s) == (429, "rate_limited", 15)
    assert rpm.message == "this API key is over its limit of 10 requests a minute (rpm)"
    assert over_limit(grant, "tpm", at_45_s).message == "this API key is over its limit of 500 tokens a minute (tpm)"
    busy = over_limit(grant, "max_concurrency", at_45_s)
    assert busy.message == "this API key is over its limit of 2 requests at once (max_concurrency)"
    assert busy.retry_after_s == 1


def test_static_keys_in_the_config_become_grants(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(auth={"mode": "keys", "keys": {"ops": {"sha256": SHA, "tenant": "ops", "rpm": 5}}})
    grant = settings.auth.keys["ops"].grant("ops")
    assert grant == Grant(key_id="ops", tenant="ops", rpm=5)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ({"sha256": "abc", "tenant": "ops"}, "- at `$.auth.keys.ops.sha256`"),
        ({"sha256": SHA, "tenant": "ops", "tiers": ["fastest"]}, "auth.keys.ops.tiers: unknown tier 'fastest'"),
        ({"sha256": SHA, "tenant": "ops", "models": ["gpt-9"]}, "auth.keys.ops.models: unknown model 'gpt-9'"),
        (
            {"sha256": SHA, "tenant": "ops", "max_sensitivity": "secret"},
            "'secret' - at `$.auth.keys.ops.max_sensitivity`",
        ),
    ],
)
def test_a_bad_static_key_is_a_config_error_naming_it(
    make_settings: Callable[..., Settings], key: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        make_settings(auth={"mode": "keys", "keys": {"ops": key}})
    assert problem in str(error.value)


class FakeStore:
    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.lookups = 0
        self.at_version = 0

    async def lookup(self, sha256: str) -> Grant | None:
        self.lookups += 1
        return self.grants.get(sha256)

    async def version(self) -> int:
        return self.at_version


async def test_a_gateway_caches_keys_and_forgets_them_when_their_version_moves() -> None:
    store = FakeStore()
    store.grants[hash_key("tg-dyn")] = Grant(key_id="d", tenant="acme")
    auth = Authenticator(AuthSettings(keys={}), store)  # type: ignore[arg-type]
    await auth.refresh()
    assert (await auth.grant("tg-dyn")).tenant == "acme"
    assert (await auth.grant("tg-dyn")).tenant == "acme" and store.lookups == 1  # cached
    with pytest.raises(Unauthorized):
        await auth.grant("tg-unknown")
    with pytest.raises(Unauthorized):
        await auth.grant("tg-unknown")
    assert store.lookups == 2  # an unknown key is cached too
    del store.grants[hash_key("tg-dyn")]  # revoked
    await auth.refresh()
    assert (await auth.grant("tg-dyn")).tenant == "acme"  # the version did not move: still cached
    store.at_version = 1
    await auth.refresh()
    with pytest.raises(Unauthorized):
        await auth.grant("tg-dyn")


def test_exempt_paths_are_exact_or_prefixes_ending_in_a_slash() -> None:
    auth = Authenticator(AuthSettings(exempt_paths=("/healthz", "/static/")), FakeStore())  # type: ignore[arg-type]
    assert auth.exempt("/healthz") and auth.exempt("/static/app.js")
    assert not auth.exempt("/healthz/x") and not auth.exempt("/v1/infer") and not auth.exempt("/static")


def test_the_openapi_document_names_the_bearer_scheme_only_with_keys(make_settings: Callable[..., Settings]) -> None:
    from gateway.openapi import document

    keyed = document(make_settings(auth={"mode": "keys"}))
    assert keyed["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, method in (("/v1/infer", "post"), ("/v1/chat/completions", "post"), ("/v1/requests/{id}", "get")):
        operation = keyed["paths"][path][method]
        assert operation["security"] == [{"apiKey": []}] and "401" in operation["responses"]
    assert "403" in keyed["paths"]["/v1/infer"]["post"]["responses"]
    assert "security" not in keyed["paths"]["/healthz"]["get"]
    assert "securitySchemes" not in document(make_settings())["components"]


async def test_made_up_keys_cannot_grow_the_cache_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.auth.CACHE_MAX", 3)
    auth = Authenticator(AuthSettings(), FakeStore())  # type: ignore[arg-type]
    for i in range(10):
        with pytest.raises(Unauthorized):
            await auth.grant(f"tg-made-up-{i}")
        assert len(auth._cache) <= 3
