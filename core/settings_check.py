"""The checks of a configuration tree that msgspec's types cannot express: names that must
refer to one another (a pool's processor, models and tiers), routes every tier and model needs,
backends' own settings and static API keys. Pure: `validate` returns every problem it finds, and
`core.settings.parse_settings` raises them together as one `ConfigError`.
"""

from __future__ import annotations

from .capabilities import LOCAL_MODELS
from .settings import TIER_NAMES, BatchSettings, LatencyModel, PoolSettings, Settings


def validate(s: Settings) -> list[str]:
    """Cross-reference checks msgspec's types cannot express; returns the problems found."""
    problems: list[str] = []
    unknown = set(s.tiers) - set(TIER_NAMES)
    problems += [f"tiers.{t}: unknown tier (expected one of {', '.join(TIER_NAMES)})" for t in unknown]
    problems += [f"tiers.{t}: missing" for t in TIER_NAMES if t not in s.tiers]
    problems += [
        f"processors.{n}.latency: {p}" for n, proc in s.processors.items() for p in _check_latency(proc.latency)
    ]
    for name, model in s.models.items():
        if model.default_tier not in s.tiers:
            problems.append(f"models.{name}.default_tier: unknown tier {model.default_tier!r}")
    for name, pool in s.pools.items():
        problems += [f"pools.{name}.{p}" for p in _check_pool(pool, s)]
        problems += [f"pools.{name}.{p}" for p in _check_upstream(pool)]
        problems += [f"pools.{name}.{p}" for p in _check_local(pool, s)]
    problems += _check_gateway(s)
    problems += [
        f"openai.service_tiers.{key}: unknown tier {tier!r}"
        for key, tier in s.openai.service_tiers.items()
        if tier not in s.tiers
    ]
    if s.supervisor.restart_backoff_max_s < s.supervisor.restart_backoff_s:
        problems.append(
            f"supervisor.restart_backoff_max_s: {s.supervisor.restart_backoff_max_s:g} is below "
            f"restart_backoff_s ({s.supervisor.restart_backoff_s:g})"
        )
    problems += _check_batches(s.batches)
    problems += _check_routing(s)
    problems += _check_keys(s)
    return problems


def _check_batches(b: BatchSettings) -> list[str]:
    problems = []
    if b.storage == "directory" and not b.directory:
        problems.append('batches.directory: storage = "directory" needs the directory files are kept in')
    if b.storage == "s3" and not b.s3_bucket:
        problems.append('batches.s3_bucket: storage = "s3" needs the bucket files are kept in')
    if b.pace == "adaptive" and b.max_lines_per_s and b.min_lines_per_s > b.max_lines_per_s:
        problems.append(
            f"batches.min_lines_per_s: {b.min_lines_per_s:g} is above max_lines_per_s ({b.max_lines_per_s:g}), "
            "the adaptive pace's ceiling"
        )
    if b.max_uploading_bytes < b.max_file_bytes:
        problems.append(
            f"batches.max_uploading_bytes: {b.max_uploading_bytes} is below max_file_bytes ({b.max_file_bytes}): "
            "a file of the largest size could never be uploaded"
        )
    return problems


def _check_gateway(s: Settings) -> list[str]:
    """Its tier ports name configured tiers and never collide; its CPU class is one a gateway may take."""
    problems = [
        f"gateway.tier_ports.{tier}: unknown tier (expected one of {', '.join(s.tiers)})"
        for tier in s.gateway.tier_ports
        if tier not in s.tiers
    ]
    fixed = [port for port in (s.gateway.port, *s.gateway.tier_ports.values()) if port]
    problems += [
        f"gateway.tier_ports.{tier}: port {port} is already taken by another gateway of this config"
        for tier, port in s.gateway.tier_ports.items()
        if port and fixed.count(port) > 1
    ]
    if s.gateway.cpu_policy == "realtime":
        problems.append(
            "gateway.cpu_policy: 'realtime' is for a pool that blocks between requests; a gateway under "
            "a flood would starve its own workers and Redis (use 'latency')"
        )
    return problems


def _check_latency(m: LatencyModel) -> list[str]:
    if m.kind == "variable":
        if m.max_ms is None:
            return ["a variable latency needs max_ms"]
        if m.max_ms < m.min_ms:
            return [f"max_ms ({m.max_ms:g}) is below min_ms ({m.min_ms:g})"]
        if m.mode_ms is not None and not m.min_ms <= m.mode_ms <= m.max_ms:
            return [f"mode_ms ({m.mode_ms:g}) is outside min_ms..max_ms"]
    return []


def _check_pool(pool: PoolSettings, s: Settings) -> list[str]:
    problems: list[str] = []
    processor = s.processors.get(pool.processor)
    if processor is None:
        problems.append(f"processor: unknown processor {pool.processor!r} (known: {', '.join(sorted(s.processors))})")
    if not pool.tiers:
        problems.append("tiers: a pool must serve at least one tier")
    problems += [f"tiers: unknown tier {t!r}" for t in pool.tiers if t not in s.tiers]
    if not pool.models:
        problems.append("models: a pool must serve at least one model")
    problems += [f"models: unknown model {m!r}" for m in pool.models if m not in s.models]
    if pool.mode == "deterministic":
        if pool.max_batch != 1 or pool.max_wait_ms != 0:
            problems.append("mode: deterministic pools run one request at a time (max_batch = 1, max_wait_ms = 0)")
        if processor is not None and processor.latency.kind != "fixed":
            problems.append(
                f"mode: deterministic needs a fixed-latency processor; {pool.processor!r} is {processor.latency.kind}"
            )
    if processor is not None and pool.max_batch > processor.max_batch:
        problems.append(f"max_batch: {pool.max_batch} exceeds {pool.processor}'s max_batch of {processor.max_batch}")
    return problems


def _check_upstream(pool: PoolSettings) -> list[str]:
    if pool.backend != "openai":
        return ['upstream: only a pool with backend = "openai" takes an upstream'] if pool.upstream else []
    if pool.upstream is None or not pool.upstream.base_url:
        return ['upstream.base_url: a pool with backend = "openai" needs the base URL of its upstream server']
    if not pool.upstream.base_url.startswith(("http://", "https://")):
        return [f"upstream.base_url: {pool.upstream.base_url!r} is not an http:// or https:// URL"]
    return []


def _check_local(pool: PoolSettings, s: Settings) -> list[str]:
    """A local pool's models must each name a model the worker can run, of its kind and size."""
    if pool.backend != "local":
        return []
    problems: list[str] = []
    for name in pool.models:
        model = s.models.get(name)
        if model is None:
            continue  # reported by _check_pool
        known = LOCAL_MODELS.get(model.local)
        if known is None:
            choices = ", ".join(sorted(LOCAL_MODELS))
            problems.append(f"models: model {name!r} names no local model (local = {model.local!r}; known: {choices})")
        elif (model.kind, model.dimensions) != known:
            problems.append(
                f"models: model {name!r} runs {model.local}, which is kind = {known[0]!r} with "
                f"dimensions = {known[1]} (the config says {model.kind!r}, {model.dimensions})"
            )
    return problems


def _check_routing(s: Settings) -> list[str]:
    """Every tier must reach a pool in the gateway's region, and every model its default tier.
    Pools of one tier may serve different models: each model's requests get their own stream."""
    problems: list[str] = []
    region = s.gateway.region
    for tier in s.tiers:
        if region in (s.regions() or ["default"]) and not s.pools_for(tier, region):
            problems.append(f"tiers.{tier}: no pool serves this tier in region {region!r}")
    for name, model in s.models.items():
        if model.default_tier in s.tiers and not any(
            name in s.pools[p].models for p in s.pools_for(model.default_tier, s.gateway.region)
        ):
            problems.append(f"models.{name}: no pool serves it on its default tier {model.default_tier!r}")
    return problems


def _check_keys(s: Settings) -> list[str]:
    """Static keys name known tiers and models."""
    problems: list[str] = []
    for name, key in s.auth.keys.items():
        problems += [f"auth.keys.{name}.tiers: unknown tier {t!r}" for t in key.tiers if t not in s.tiers]
        problems += [f"auth.keys.{name}.models: unknown model {m!r}" for m in key.models if m not in s.models]
    return problems
