"""What every deploy target shares: names, ports, the image, the header each artifact opens
with, and deterministic YAML. Pure functions of the settings; no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import yaml

from core.settings import Settings

VERSION = metadata.version("tiergate")
IMAGE = f"tiergate:{VERSION}"  # built from deploy/Dockerfile; an overlay or $TIERGATE_IMAGE renames it
CONFIG_FILE = "tiergate.toml"  # the config each target ships beside its artifacts
CONFIG_DIR = "/etc/tiergate"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
WORKER_METRICS_PORT = 9100  # a worker container's /metrics (TIERGATE_METRICS_PORT), when the config says 0
REDIS_PORT = 6379
REDIS_IMAGE = "redis:7.2.5"  # 7+: the consumer-group lag that KEDA scales on
# What an accepted request's durability needs of Redis: every write in the AOF before it answers,
# and no key ever evicted.
REDIS_DURABLE_ARGS = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--maxmemory-policy",
    "noeviction",
]
# A stopping process gets the config's grace and this much more before SIGKILL, as `tiergate up` gives.
STOP_MARGIN_S = 5
HEADER = "Rendered by `tiergate deploy render` from the tiergate config. Do not edit: render again."


@dataclass(slots=True, frozen=True)
class Gateway:
    """One gateway process kind: the main one (every tier) or one of `[gateway] tier_ports`."""

    name: str  # a service / unit name
    port: int
    tier: str | None  # None: every tier


def gateways(settings: Settings) -> list[Gateway]:
    """The main gateway and one per `tier_ports` entry (port 0 there: the main port, in its own container)."""
    main = settings.gateway.port or 8080
    extra = [Gateway(f"gateway-{dns_name(t)}", p or main, t) for t, p in sorted(settings.gateway.tier_ports.items())]
    return [Gateway("gateway", main, None), *extra]


def gateway_args(gw: Gateway) -> list[str]:
    args = ["gateway", "--config", CONFIG_PATH, "--host", "0.0.0.0", "--port", str(gw.port)]
    return [*args, "--tiers", gw.tier] if gw.tier else args


def worker_args(pool: str) -> list[str]:
    """One worker process per container or unit instance: the orchestrator runs the replicas."""
    return ["worker", "--config", CONFIG_PATH, "--pool", pool, "--replicas", "1"]


def worker_metrics_port(settings: Settings) -> int:
    return settings.metrics.worker_port or WORKER_METRICS_PORT


def stop_grace_s(settings: Settings) -> int:
    """Seconds a stopping process may take: the gateway's shutdown grace and a margin."""
    return math.ceil(settings.gateway.shutdown_grace_s) + STOP_MARGIN_S


def dns_name(name: str) -> str:
    """A config name as a DNS-1123 label (Kubernetes objects, compose services): `.` and `_` become `-`."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63]


def comment(lines: Iterable[str], mark: str = "#") -> str:
    return "".join(f"{mark} {line}".rstrip() + "\n" for line in lines)


def dump_yaml(docs: list[dict[str, Any]], notes: Iterable[str] = ()) -> str:
    """YAML documents in insertion order (deterministic), under the header and any notes."""
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=1000, explicit_start=True)
    return comment([HEADER, *notes]) + body
