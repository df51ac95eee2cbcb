"""Docker Compose: Redis with AOF, the gateway (and one per `[gateway] tier_ports` entry), and one
service per pool with its replicas, each with a healthcheck and a restart policy. The config is
mounted from the copy rendered beside compose.yaml. Pure: settings in, text out.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings

from .common import (
    CONFIG_FILE,
    CONFIG_PATH,
    IMAGE,
    REDIS_DURABLE_ARGS,
    REDIS_IMAGE,
    REDIS_PORT,
    dns_name,
    dump_yaml,
    gateway_args,
    gateways,
    stop_grace_s,
    worker_args,
    worker_metrics_port,
)
from .container import HEALTH_URL_ENV, health_probe

REDIS_URL = f"redis://redis:{REDIS_PORT}/0"
NOTES = (
    "Run: docker compose -f deploy/compose/compose.yaml up (image from deploy/Dockerfile, or $TIERGATE_IMAGE).",
    "Redis keeps an append-only file with appendfsync always: no request answered 202 is lost (docs/durability.md).",
)


def render(settings: Settings, config_text: str) -> dict[str, str]:
    return {"compose/compose.yaml": dump_yaml([document(settings)], NOTES), f"compose/{CONFIG_FILE}": config_text}


def document(settings: Settings) -> dict[str, Any]:
    services: dict[str, Any] = {"redis": _redis()}
    for gw in gateways(settings):
        services[gw.name] = _gateway(settings, gw.port, gateway_args(gw))
    for name in settings.pools:
        services[f"worker-{dns_name(name)}"] = _worker(settings, name)
    return {"name": "tiergate", "services": services, "volumes": {"redis-data": {}}}


def _redis() -> dict[str, Any]:
    return {
        "image": REDIS_IMAGE,
        "command": ["redis-server", *REDIS_DURABLE_ARGS],
        "volumes": ["redis-data:/data"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"], **_timing()},
        "restart": "unless-stopped",
    }


def _timing() -> dict[str, Any]:
    return {"interval": "10s", "timeout": "3s", "retries": 3, "start_period": "30s"}


def _tiergate(settings: Settings, command: list[str], health_url: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "image": f"${{TIERGATE_IMAGE:-{IMAGE}}}",
        "command": command,
        "environment": {"TIERGATE_REDIS_URL": REDIS_URL, HEALTH_URL_ENV: health_url, **env},
        "volumes": [{"type": "bind", "source": f"./{CONFIG_FILE}", "target": CONFIG_PATH, "read_only": True}],
        "depends_on": {"redis": {"condition": "service_healthy"}},
        "healthcheck": {"test": ["CMD", "python", "-c", health_probe(health_url)], **_timing()},
        "stop_grace_period": f"{stop_grace_s(settings)}s",
        "restart": "unless-stopped",
    }


def _gateway(settings: Settings, port: int, command: list[str]) -> dict[str, Any]:
    service = _tiergate(settings, command, f"http://127.0.0.1:{port}/healthz", {})
    service["ports"] = [f"{port}:{port}"]
    return service


def _worker(settings: Settings, pool: str) -> dict[str, Any]:
    port = worker_metrics_port(settings)
    env = {"TIERGATE_METRICS_HOST": "0.0.0.0", "TIERGATE_METRICS_PORT": str(port)}
    service = _tiergate(settings, worker_args(pool), f"http://127.0.0.1:{port}/healthz", env)
    service["deploy"] = {"replicas": settings.pools[pool].replicas}
    if settings.pools[pool].cpu_policy == "realtime":  # SCHED_FIFO without root (core/cpu.py)
        service["ulimits"] = {"rtprio": 1}
    return service
