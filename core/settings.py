"""The configuration tree: tiers, processors, models and pools as frozen msgspec Structs.

`load_settings(path, environ)` is the one entry point: it reads TOML, applies the documented
`TIERGATE_*` environment overrides (here and nowhere else) and validates the whole tree, raising
`ConfigError` with every problem found, each naming the file, the key and what is wrong.
`config_path` says which file that is; the default, core/default.toml, ships inside this package.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from . import protocol
from .cpu import CpuPolicy
from .errors import ConfigError

# The default config ships inside this package (package data), so an installed wheel finds it;
# `tiergate config init` writes a copy of it to edit. Packages are installed unzipped: a real file.
DEFAULT_CONFIG_PATH = Path(str(resources.files("core").joinpath("default.toml")))
TIER_NAMES = ("realtime", "interactive", "batch")
# Only a pool that serves the batch tier alone may run no worker at all (KEDA scales it to zero,
# ops/deploy/keda.py; /readyz does not wait for it): the first request of a stricter tier would
# wait for a worker to start, far past its deadline.
SCALE_TO_ZERO_TIERS = frozenset({"batch"})


def tier_rank(tier: str) -> int:
    """Strictness order: realtime 0, interactive 1, batch 2."""
    return TIER_NAMES.index(tier) if tier in TIER_NAMES else len(TIER_NAMES)


PositiveInt = Annotated[int, Meta(gt=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Percent = Annotated[float, Meta(gt=0, le=100)]
Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class RedisSettings(_Frozen, frozen=True):
    # Empty means "none given": `tiergate up` then starts a private server.
    url: str = ""
    max_connections: PositiveInt = 64
    socket_timeout_s: PositiveFloat = 5.0
    connect_timeout_s: PositiveFloat = 1.0
    # "auto": ask the server (`INFO cluster`) once at start; "yes"/"no" skip that question.
    cluster: Literal["auto", "yes", "no"] = "auto"
    # TLS (a `rediss://` URL): the CA that signed the server's certificate, and this client's
    # certificate and key where the server asks clients for one. Empty: the system's CAs, no client cert.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


class GatewaySettings(_Frozen, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    region: Name = "default"
    max_body_bytes: PositiveInt = 1_048_576
    max_input_chars: PositiveInt = 100_000
    result_ttl_s: PositiveInt = 3600
    reply_stream_maxlen: PositiveInt = 100_000
    shutdown_grace_s: NonNegativeFloat = 10.0
    # Limits on hostile input (docs/configuration.md): each is refused with a clear 4xx.
    max_tokens: PositiveInt = 32_768  # max_tokens / max_completion_tokens of the OpenAI API
    max_messages: PositiveInt = 1_000  # messages of one chat request
    max_header_bytes: PositiveInt = 8_190  # one request line or header field
    body_timeout_s: PositiveFloat = 10.0  # a body not received within this long gets 408
    keepalive_timeout_s: PositiveFloat = 15.0  # idle, or still sending its headers: then closed
    # Tier -> port: `tiergate up` also runs a gateway process on each port that serves only that
    # tier, so that another tier's traffic never shares its process (0: any free port).
    tier_ports: dict[str, Annotated[int, Meta(ge=0, le=65535)]] = msgspec.field(default_factory=dict)
    # Linux scheduling class of the gateway's processes (core/cpu.py): "latency" lets a request's
    # wake-up preempt a batch pool's work on a shared host.
    cpu_policy: CpuPolicy = "normal"


class SLO(_Frozen, frozen=True):
    latency_ms: PositiveFloat
    percentile: Percent = 99.0
    objective: Percent = 99.9


class PlacementWeights(_Frozen, frozen=True):
    """How much each figure of a pool counts when a tier's placement ranks its pools (lower wins)."""

    latency: NonNegativeFloat = 0.0  # the processor's typical service time of one request
    cost: NonNegativeFloat = 0.0  # its cost per FLOP
    energy: NonNegativeFloat = 0.0  # its energy per FLOP (1 / energy_efficiency)


PlacementPolicy = Literal["any", "fastest", "cheapest", "greenest"]


class TierSettings(_Frozen, frozen=True):
    slo: SLO
    default_deadline_ms: PositiveInt
    max_queue: PositiveInt
    # Which of several free pools eligible for a request takes it (core/placement.py): "any" (the
    # first to read it), a named policy, or weights. The others hold off reading a stream for
    # `placement_hold_ms` (default: a tenth of the SLO latency) per rank behind the preferred pool.
    placement: PlacementPolicy | PlacementWeights = "any"
    placement_hold_ms: NonNegativeFloat | None = None


class LatencyModel(_Frozen, frozen=True):
    """How long a processor takes for a batch of `n` requests.

    fixed: always `min_ms` (plus `per_item_ms` for each item past the first).
    variable: drawn between `min_ms` and `max_ms`, most often near `mode_ms`.
    batch_optimised: `min_ms` for the first item, then `per_item_ms` each: a large batch costs
    little more than a small one.
    """

    kind: Literal["fixed", "variable", "batch_optimised"]
    min_ms: PositiveFloat
    max_ms: PositiveFloat | None = None
    mode_ms: PositiveFloat | None = None
    per_item_ms: NonNegativeFloat = 0.0
    # Generation: each output token of a text model takes this long after the time above (the
    # prefill); a batch generates its members' tokens side by side.
    per_token_ms: NonNegativeFloat = 0.0


class ProcessorSettings(_Frozen, frozen=True):
    latency: LatencyModel
    max_batch: PositiveInt
    energy_efficiency: PositiveFloat  # FLOPS per watt relative to an H100 (1.0)
    cost_per_flop: PositiveFloat  # relative to an H100 (1.0)
    description: str = ""


class ModelSettings(_Frozen, frozen=True):
    kind: Literal["echo", "embed"]
    params: PositiveInt  # parameter count, for FLOPs per token
    default_tier: str = "interactive"
    dimensions: PositiveInt = 16  # embed models only
    # Backend "local": the model a worker process runs for it (core/capabilities.py: LOCAL_MODELS).
    local: str = ""


class UpstreamSettings(_Frozen, frozen=True):
    """Where a pool with backend "openai" sends its requests: an OpenAI-compatible server."""

    base_url: str = ""  # e.g. "http://127.0.0.1:8000/v1"; required
    api_key_env: str = ""  # the NAME of the environment variable holding the API key; empty: none
    upstream_model: str = ""  # the model name upstream; empty: the tiergate model name
    connect_timeout_s: PositiveFloat = 5.0
    request_timeout_s: PositiveFloat = 60.0  # per upstream request, streaming included
    max_connections: PositiveInt = 64  # per worker process


class PoolSettings(_Frozen, frozen=True):
    processor: str
    tiers: list[str]
    models: list[str]
    region: Name = "default"
    replicas: PositiveInt = 1
    mode: Literal["deterministic", "batched"] = "batched"
    max_batch: PositiveInt = 1
    max_wait_ms: NonNegativeFloat = 0.0
    # Share of the slots a lower tier is guaranteed while a stricter tier of this pool keeps it busy.
    min_share: Annotated[float, Meta(ge=0, le=1)] = 0.1
    backend: Literal["simulated", "openai", "local"] = "simulated"
    upstream: UpstreamSettings | None = None  # backend "openai" only
    # Backend "local": CPU threads of each worker process's forward pass (replicas x threads <= cores).
    threads: PositiveInt = 1
    # CPU priority of its worker processes (nice 0-19): on a host shared with stricter tiers'
    # pools or a gateway, a batch pool's CPU work waits behind theirs instead of beside it.
    nice: Annotated[int, Meta(ge=0, le=19)] = 0
    # Linux scheduling class of its worker processes (core/cpu.py): "realtime" (SCHED_FIFO) for a
    # deterministic pool, "latency" for other realtime pools, "batch" or "idle" for pools whose
    # work may wait for a core.
    cpu_policy: CpuPolicy = "normal"
    # The highest data class (protocol.SENSITIVITY_CLASSES) this pool is cleared to run; a request
    # of a higher class never reaches it (docs/sovereignty.md).
    clearance: Literal["public", "internal", "restricted"] = "public"

    def scales_to_zero(self) -> bool:
        """Whether the pool may run no worker at all (it serves only `SCALE_TO_ZERO_TIERS`)."""
        return set(self.tiers) <= SCALE_TO_ZERO_TIERS


class AuditSettings(_Frozen, frozen=True):
    """The audit stream: one entry per request a worker answers, saying where it ran."""

    enabled: bool = True
    # Approximate bound of the stream (XADD MAXLEN ~) in stream entries: one per batch a worker answered.
    maxlen: PositiveInt = 1_000_000
    max_age_s: NonNegativeInt = 0  # entries older than this are trimmed too (XTRIM MINID ~); 0: no age bound


class UsageSettings(_Frozen, frozen=True):
    """Requests, tokens, energy and cost per tenant, tier and model (docs/sovereignty.md)."""

    # Tenants that get their own `tenant` label in the gateway's Prometheus metrics; every other
    # tenant's usage is counted under "other" (the tenant of an open gateway is "").
    tenants: list[str] = msgspec.field(default_factory=list)
    hourly_retention_h: PositiveInt = 192  # how long each hour's counts stay readable
    daily_retention_d: PositiveInt = 400  # how long each day's counts stay readable


class AccountingSettings(_Frozen, frozen=True):
    # An H100's sustained FLOPs per joule and price per PFLOP: the baseline the relative
    # figures of each processor scale.
    baseline_flops_per_joule: PositiveFloat = 1.0e12
    baseline_usd_per_pflop: PositiveFloat = 0.0006


class DeliverySettings(_Frozen, frozen=True):
    """Crash recovery and dead letters (docs/durability.md)."""

    max_deliveries: PositiveInt = 3  # an entry delivered this often without an answer is dead-lettered
    claim_idle_min_ms: PositiveInt = 2000  # floor of the idle time before a dead worker's entry is reclaimed
    claim_service_multiple: PositiveFloat = 4.0  # idle threshold: this many full batches, tokens included
    claim_token_budget: NonNegativeInt = 256  # output tokens a batch is assumed to generate, for that bound
    claim_interval_s: PositiveFloat = 1.0  # how often each worker looks for entries to reclaim
    dead_letter_maxlen: PositiveInt = 100_000  # approximate bound of each dead-letter stream
    reply_stream_ttl_s: PositiveInt = 600  # a reply stream no worker has written to this long expires


class MetricsSettings(_Frozen, frozen=True):
    # Each worker process serves Prometheus /metrics here; port 0 picks a free port per process.
    worker_host: str = "127.0.0.1"
    worker_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    queue_sample_interval_s: PositiveFloat = 1.0  # XINFO GROUPS of every tier stream
    slo_flush_interval_s: PositiveFloat = 1.0  # per-second SLO buckets pushed to Redis
    slo_cache_s: NonNegativeFloat = 0.5  # how long one process reuses a computed /v1/slo answer


class SupervisorSettings(_Frozen, frozen=True):
    """How `tiergate up` and `tiergate worker --replicas N` restart a child that exits."""

    restart_backoff_s: PositiveFloat = 0.5  # wait before the first restart; doubled for each next one
    restart_backoff_max_s: PositiveFloat = 30.0  # the cap of that wait
    restart_reset_s: PositiveFloat = 60.0  # a child that ran this long after its ready line: backoff starts over
    start_failures_max: PositiveInt = 5  # exits before the ready line, in a row, that stop the whole stack
    ready_timeout_s: PositiveFloat = 60.0  # a child not ready within this long is killed: a start failure


class TracingSettings(_Frozen, frozen=True):
    """OpenTelemetry tracing of each request through the gateway, its queue and its worker
    (docs/tracing.md). Enabled, it needs the `tiergate[otel]` extra."""

    enabled: bool = False
    # Where spans go over OTLP; empty: the exporter's own default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    # else http://localhost:4318/v1/traces for http/protobuf, localhost:4317 for grpc).
    endpoint: str = ""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: Name = "tiergate"  # the gateway reports as `<name>-gateway`, workers as `<name>-worker`
    # Share of new traces kept; a request that arrives with a `traceparent` follows its sampled flag.
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0


class BatchSettings(_Frozen, frozen=True):
    """The OpenAI Batch API (docs/batch.md): limits on its files, and how its runner feeds lines."""

    max_file_bytes: PositiveInt = 104_857_600  # an uploaded file's size limit
    # Bytes of file uploads one gateway holds in memory at once (an upload is held until stored):
    # one is let in if its Content-Length (max_file_bytes without one) fits, then counts what it sent.
    max_uploading_bytes: PositiveInt = 419_430_400
    max_lines: PositiveInt = 50_000  # lines of one batch's input file
    max_line_bytes: PositiveInt = 1_048_576  # one line of an input file
    # Where file contents are kept: "redis" (every gateway reads them; up to redis_max_file_bytes
    # each), "directory" (a directory every gateway shares, `directory`), or "s3" (an
    # S3-compatible bucket, `s3_bucket`; the tiergate[s3] extra; credentials as boto3 finds them).
    storage: Literal["redis", "directory", "s3"] = "redis"
    redis_max_file_bytes: PositiveInt = 104_857_600
    directory: str = ""
    s3_bucket: str = ""
    s3_endpoint_url: str = ""  # empty: AWS's own; else any S3-compatible server (MinIO, Ceph, ...)
    s3_region: str = ""
    s3_prefix: str = "tiergate/files/"  # file contents are kept under this prefix of the bucket
    max_in_flight_per_batch: PositiveInt = 256  # lines of one batch queued or running at once
    max_in_flight: PositiveInt = 1024  # lines of every batch one gateway runs, queued or running at once
    # Lines one gateway starts a second, all batches together (0: no bound). Each line costs the
    # gateway that runs it CPU that its realtime requests share (docs/batch.md).
    max_lines_per_s: NonNegativeFloat = 300.0
    # "adaptive": the pace rises while the gateway's event loop and its stricter tiers' latency stay
    # calm and falls when they rise, between min_lines_per_s and max_lines_per_s; "fixed": always
    # max_lines_per_s.
    pace: Literal["adaptive", "fixed"] = "adaptive"
    min_lines_per_s: PositiveFloat = 20.0  # the adaptive pace's floor: a batch always progresses
    pace_interval_s: PositiveFloat = 0.5  # how often the adaptive pace is judged and changed
    pace_step_lines_per_s: PositiveFloat = 25.0  # added to the pace after a calm interval
    pace_backoff: Annotated[float, Meta(gt=0, lt=1)] = 0.5  # the pace is multiplied by it after a busy one
    pace_max_loop_lag_ms: PositiveFloat = 5.0  # an interval is busy when the event loop ran this late
    # ... or when a stricter tier's median latency here exceeds this multiple of its calm one twice in a row.
    pace_max_latency_ratio: Annotated[float, Meta(gt=1)] = 1.25
    lease_ttl_s: PositiveFloat = 10.0  # a runner silent this long loses its batch to another gateway
    poll_interval_s: PositiveFloat = 1.0  # how often each gateway looks for a batch without a runner
    retry_after_max_s: PositiveFloat = 5.0  # the longest wait after a 429 before a line is offered again
    file_ttl_s: PositiveInt = 30 * 86_400  # how long files and batch records are kept


def _default_service_tiers() -> dict[str, str]:
    return {"priority": "realtime", "default": "interactive", "flex": "batch"}


class OpenAISettings(_Frozen, frozen=True):
    # The OpenAI API's `service_tier` values and the tier each one selects.
    service_tiers: dict[str, str] = msgspec.field(default_factory=_default_service_tiers)


Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Sensitivity = Literal["public", "internal", "restricted"]


class StaticKey(_Frozen, frozen=True):
    """An API key given in the config (`[auth.keys.ID]`): the SHA-256 of the key (hex), and what
    it allows, as `tiergate keys create` takes it (docs/tenants.md)."""

    sha256: Sha256
    tenant: Name
    tiers: tuple[str, ...] = ()  # empty: any
    models: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    max_sensitivity: Sensitivity = "restricted"
    rpm: NonNegativeInt = 0  # 0: no limit
    tpm: NonNegativeInt = 0
    max_concurrency: NonNegativeInt = 0
    weight: PositiveFloat = 1.0
    region: str = ""
    sensitivity: Literal["", "public", "internal", "restricted"] = ""

    def grant(self, key_id: str) -> protocol.Grant:
        fields = msgspec.structs.asdict(self)
        del fields["sha256"]
        return protocol.Grant(key_id=key_id, **fields)


def _default_exempt() -> tuple[str, ...]:
    return ("/healthz", "/readyz", "/metrics", "/dashboard", "/static/", "/v1/slo", "/openapi.json")


class AuthSettings(_Frozen, frozen=True):
    # "open": anyone who reaches the port may use everything; "keys": `Authorization: Bearer <key>`.
    mode: Literal["open", "keys"] = "open"
    # Paths (a prefix ending in "/", else the exact path) served without a key.
    exempt_paths: tuple[str, ...] = msgspec.field(default_factory=_default_exempt)
    key_cache_s: PositiveFloat = 10.0  # a gateway reuses a key it looked up this long (revocation: 1 s)
    # Fair shares: a tenant counts as active in a tier this long after its last admitted request.
    active_s: PositiveFloat = 5.0
    keys: dict[str, StaticKey] = msgspec.field(default_factory=dict)


class Settings(_Frozen, frozen=True):
    tiers: dict[str, TierSettings]
    processors: dict[str, ProcessorSettings]
    models: dict[str, ModelSettings]
    pools: dict[str, PoolSettings]
    redis: RedisSettings = RedisSettings()
    gateway: GatewaySettings = GatewaySettings()
    accounting: AccountingSettings = AccountingSettings()
    delivery: DeliverySettings = DeliverySettings()
    openai: OpenAISettings = OpenAISettings()
    metrics: MetricsSettings = MetricsSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    tracing: TracingSettings = TracingSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    usage: UsageSettings = UsageSettings()
    batches: BatchSettings = BatchSettings()

    def pools_for(self, tier: str, region: str) -> list[str]:
        return [name for name, pool in self.pools.items() if tier in pool.tiers and pool.region == region]

    def regions(self) -> list[str]:
        return sorted({pool.region for pool in self.pools.values()})

    def lanes(self) -> list[Lane]:
        """Every request stream of the config: for each tier and region, the (model, data class)
        pairs served there grouped by the exact set of pools eligible for them: those serving the
        model and cleared for the class. A request goes to its pair's lane, so it reaches only
        pools that serve its model, in its region, cleared for its data; two pools of one tier may
        serve different models or hold different clearances. With every pool at one clearance the
        lanes are one per group of pools serving the same models, as without data classes.
        Strictest tier first, then region, then pools."""
        lanes: list[Lane] = []
        for tier in sorted(self.tiers, key=tier_rank):
            for region in self.regions():
                by_pools: dict[tuple[str, ...], list[tuple[str, str]]] = {}
                candidates = self.pools_for(tier, region)
                for model in self.models:
                    for data_class in protocol.SENSITIVITY_CLASSES:
                        pools = tuple(sorted(p for p in candidates if self._eligible(p, model, data_class)))
                        if pools:
                            by_pools.setdefault(pools, []).append((model, data_class))
                lanes += [
                    Lane(tier, region, pools, tuple(dict.fromkeys(m for m, _ in carries)), tuple(carries))
                    for pools, carries in sorted(by_pools.items())
                ]
        return lanes

    def _eligible(self, pool_name: str, model: str, data_class: str) -> bool:
        pool = self.pools[pool_name]
        return model in pool.models and clears(pool.clearance, data_class)

    def lane_for(self, tier: str, region: str, model: str, sensitivity: str = "") -> Lane | None:
        """The lane a request for `model` of data class `sensitivity` ("": the lowest) on `tier`
        in `region` goes to; None when no pool may serve it."""
        wanted = (model, sensitivity or protocol.SENSITIVITY_CLASSES[0])
        return next((x for x in self.lanes() if (x.tier, x.region) == (tier, region) and wanted in x.carries), None)


def clears(clearance: str, sensitivity: str) -> bool:
    """Whether a pool cleared for `clearance` may run data of class `sensitivity` ("": the lowest)."""
    return sensitivity_rank(sensitivity) <= sensitivity_rank(clearance)


def sensitivity_rank(name: str) -> int:
    """public 0 < internal 1 < restricted 2; "" is the lowest. An unknown name ranks above all."""
    classes = protocol.SENSITIVITY_CLASSES
    return classes.index(name or classes[0]) if (name or classes[0]) in classes else len(classes)


@dataclass(slots=True, frozen=True)
class Lane:
    """One request stream: a tier and region, the models it carries and the pools that read it."""

    tier: str
    region: str
    pools: tuple[str, ...]  # sorted by name
    models: tuple[str, ...]
    # The (model, data class) pairs it carries: its pools are exactly those eligible for each.
    carries: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return protocol.lane_name(self.tier, self.region, self.pools)

    @property
    def stream(self) -> str:
        return protocol.stream_key(self.name)


# Environment variable -> (section, key, type). Documented in docs/configuration.md.
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "TIERGATE_REDIS_URL": ("redis", "url", str),
    "TIERGATE_REDIS_CLUSTER": ("redis", "cluster", str),
    "TIERGATE_REDIS_TLS_CA_FILE": ("redis", "tls_ca_file", str),
    "TIERGATE_REDIS_TLS_CERT_FILE": ("redis", "tls_cert_file", str),
    "TIERGATE_REDIS_TLS_KEY_FILE": ("redis", "tls_key_file", str),
    "TIERGATE_HOST": ("gateway", "host", str),
    "TIERGATE_PORT": ("gateway", "port", int),
    "TIERGATE_REGION": ("gateway", "region", str),
    # A container or host that runs one worker process gives it a fixed, reachable /metrics port.
    "TIERGATE_METRICS_HOST": ("metrics", "worker_host", str),
    "TIERGATE_METRICS_PORT": ("metrics", "worker_port", int),
}


def config_path(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to read: `path` if given, else $TIERGATE_CONFIG, else the packaged default."""
    environ = os.environ if environ is None else environ
    return Path(path or environ.get("TIERGATE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate a config file (see `config_path`); `ConfigError` lists every problem."""
    environ = os.environ if environ is None else environ
    path = config_path(path, environ)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_settings(raw, source=str(path), environ=environ)


def parse_settings(raw: dict[str, Any], source: str = "<config>", environ: Mapping[str, str] | None = None) -> Settings:
    _apply_env(raw, environ or {}, source)
    named = _check_named_sections(raw)
    if named:
        raise ConfigError("\n".join(f"{source}: {p}" for p in named))
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    from .settings_check import validate  # it reads this module's types: imported once they exist

    problems = validate(settings)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return settings


_NAMED_SECTIONS: dict[str, type[_Frozen]] = {  # and [auth.keys.*]
    "tiers": TierSettings,
    "processors": ProcessorSettings,
    "models": ModelSettings,
    "pools": PoolSettings,
}


def _check_named_sections(raw: dict[str, Any]) -> list[str]:
    """Validate each named entry alone, so an error names its key (`$.pools.h100`), which
    msgspec's path for a dict value (`$.pools[...]`) would not."""
    problems: list[str] = []
    auth = raw.get("auth")
    named = [(section, kind, raw.get(section)) for section, kind in _NAMED_SECTIONS.items()]
    named.append(("auth.keys", StaticKey, auth.get("keys") if isinstance(auth, dict) else None))
    for section, kind, entries in named:
        if not isinstance(entries, dict):
            continue
        for name, value in entries.items():
            try:
                msgspec.convert(value, kind, strict=True)
            except msgspec.ValidationError as exc:
                problems.append(str(exc).replace("`$", f"`$.{section}.{name}", 1))
    return problems


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    for var, (section, key, kind) in ENV_OVERRIDES.items():
        value = environ.get(var)
        if value is None:
            continue
        try:
            raw.setdefault(section, {})[key] = kind(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {var}={value!r} is not a valid {kind.__name__}") from exc
