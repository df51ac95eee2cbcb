"""KEDA autoscaling of the worker Deployments: one ScaledObject per pool with a `redis-streams`
trigger per request stream the pool reads (`Settings.lanes()`), scaled on the consumer group's
lag, and one TriggerAuthentication for Redis's address and password. Pure; no I/O.
"""

from __future__ import annotations

from typing import Any

from core.protocol import GROUP
from core.settings import Settings

from .common import dns_name

MAX_SCALE = 10  # a pool scales up to this many times its configured replicas
NOTES = (
    "One ScaledObject per pool, one redis-streams trigger per request stream the pool reads (its consumer",
    f"group is {GROUP!r}), scaled on the group's lag: entries no worker has read yet. Lag needs Redis 7 or",
    "later (XINFO GROUPS reports no lag before 7.0) and is the only redis-streams signal that allows scaling",
    "to zero: lagCount is the lag one replica is expected to absorb (its pool's max_batch); activationLagCount 0",
    "wakes a pool at zero on its first entry. HPA takes the largest replica count the triggers ask for.",
)


def worker_deployment(pool: str) -> str:
    return f"tiergate-worker-{dns_name(pool)}"


def objects(settings: Settings, secret: str) -> list[dict[str, Any]]:
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "tiergate-redis"},
        "spec": {
            "secretTargetRef": [
                {"parameter": "address", "name": secret, "key": "address"},
                {"parameter": "password", "name": secret, "key": "password"},
            ]
        },
    }
    return [auth, *(scaled_object(settings, pool) for pool in settings.pools)]


def triggers(settings: Settings, pool: str) -> list[dict[str, Any]]:
    """A redis-streams trigger for each stream `pool` reads, in the lanes' order."""
    lag = str(settings.pools[pool].max_batch)
    return [
        {
            "type": "redis-streams",
            "metadata": {
                "stream": lane.stream,
                "consumerGroup": GROUP,
                "lagCount": lag,
                "activationLagCount": "0",
                "databaseIndex": "0",
            },
            "authenticationRef": {"name": "tiergate-redis"},
        }
        for lane in settings.lanes()
        if pool in lane.pools
    ]


def scaled_object(settings: Settings, pool: str) -> dict[str, Any]:
    p = settings.pools[pool]
    minimum = 0 if p.scales_to_zero() else p.replicas
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": worker_deployment(pool)},
        "spec": {
            "scaleTargetRef": {"name": worker_deployment(pool)},
            "minReplicaCount": minimum,
            "maxReplicaCount": p.replicas * MAX_SCALE,
            "triggers": triggers(settings, pool),
        },
    }
