"""Kubernetes: a kustomize base (gateway Deployment, Service and PodDisruptionBudget; one worker
Deployment per pool, pinned to its processor's nodes; Redis as a StatefulSet with AOF; the config
as a generated ConfigMap; the KEDA objects of keda.py) and one overlay that points at an external
Redis instead. Pure: settings in, {path: text} out.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings

from . import keda
from .common import (
    CONFIG_DIR,
    CONFIG_FILE,
    IMAGE,
    REDIS_DURABLE_ARGS,
    REDIS_IMAGE,
    REDIS_PORT,
    VERSION,
    Gateway,
    dns_name,
    dump_yaml,
    gateway_args,
    gateways,
    stop_grace_s,
    worker_args,
    worker_metrics_port,
)
from .container import USER_ID

BASE = "k8s/base"
OVERLAY = "k8s/overlays/example"
NAME = "tiergate"
PROCESSOR_LABEL = "tiergate.io/processor"  # node label and taint key of each processor type's nodes
GATEWAY_REPLICAS = 2
PRE_STOP_S = 3  # a gateway keeps serving while its endpoint leaves every Service's list
GATEWAY_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
WORKER_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
REDIS_SECRET = f"{NAME}-redis"  # keys: url (tiergate), address and password (KEDA, Redis itself)
EXAMPLE_PASSWORD = "change-me"


def render(settings: Settings, config_text: str) -> dict[str, str]:
    files = {
        f"{BASE}/kustomization.yaml": dump_yaml([_kustomization()]),
        f"{BASE}/{CONFIG_FILE}": config_text,
        f"{BASE}/gateway.yaml": dump_yaml([d for gw in gateways(settings) for d in _gateway(settings, gw)]),
        f"{BASE}/workers.yaml": dump_yaml([_worker(settings, pool) for pool in settings.pools], _WORKER_NOTES),
        f"{BASE}/redis.yaml": dump_yaml(_redis(), _REDIS_NOTES),
        f"{BASE}/keda.yaml": dump_yaml(keda.objects(settings, REDIS_SECRET), keda.NOTES),
        f"{OVERLAY}/kustomization.yaml": dump_yaml([_overlay()], _OVERLAY_NOTES),
        f"{OVERLAY}/namespace.yaml": dump_yaml([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAME}}]),
    }
    return files


_WORKER_NOTES = (
    f"Each pool runs on the nodes of its processor: label them {PROCESSOR_LABEL}=<processor> and taint them",
    f"{PROCESSOR_LABEL}=<processor>:NoSchedule. KEDA (keda.yaml) sets the replicas from the streams' lag.",
)
_REDIS_NOTES = (
    "AOF with appendfsync always: a request answered 202 survives a Redis restart (docs/durability.md).",
    "To use a Redis of your own instead, see the overlay example: it deletes these and replaces the Secret.",
)
_OVERLAY_NOTES = (
    "An example overlay: its own namespace and registry, and an external Redis instead of the StatefulSet.",
)


def labels(component: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": component, **extra}


def _kustomization() -> dict[str, Any]:
    redis_literals = [
        f"url=redis://:{EXAMPLE_PASSWORD}@{NAME}-redis:{REDIS_PORT}/0",
        f"address={NAME}-redis:{REDIS_PORT}",
        f"password={EXAMPLE_PASSWORD}",
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["gateway.yaml", "workers.yaml", "redis.yaml", "keda.yaml"],
        "configMapGenerator": [{"name": f"{NAME}-config", "files": [CONFIG_FILE]}],
        # KEDA's TriggerAuthentication names the Secret, and kustomize does not rewrite names in CRDs.
        "secretGenerator": [
            {"name": REDIS_SECRET, "literals": redis_literals, "options": {"disableNameSuffixHash": True}}
        ],
    }


def _overlay() -> dict[str, Any]:
    host = "redis.example.internal"
    delete = "$patch: delete\napiVersion: {api}\nkind: {kind}\nmetadata:\n  name: " + f"{NAME}-redis\n"
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAME,
        "resources": ["../../base", "namespace.yaml"],
        "images": [{"name": NAME, "newName": f"registry.example.com/{NAME}", "newTag": VERSION}],
        "secretGenerator": [
            {
                "name": REDIS_SECRET,
                "behavior": "replace",
                "literals": [
                    f"url=redis://:{EXAMPLE_PASSWORD}@{host}:{REDIS_PORT}/0",
                    f"address={host}:{REDIS_PORT}",
                    f"password={EXAMPLE_PASSWORD}",
                ],
                "options": {"disableNameSuffixHash": True},
            }
        ],
        "patches": [
            {"patch": delete.format(api="apps/v1", kind="StatefulSet")},
            {"patch": delete.format(api="v1", kind="Service")},
        ],
    }


def _env_redis_url() -> dict[str, Any]:
    return {"name": "TIERGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": "url"}}}


def _pod_spec(settings: Settings, container: dict[str, Any], grace_s: int) -> dict[str, Any]:
    """A tiergate pod: non-root, read-only root, the config mounted from the generated ConfigMap."""
    container["volumeMounts"] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "terminationGracePeriodSeconds": grace_s,
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID},
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": f"{NAME}-config"}}],
    }


def _deployment(name: str, selector: dict[str, str], replicas: int, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }


def _gateway(settings: Settings, gw: Gateway) -> list[dict[str, Any]]:
    name = f"{NAME}-{gw.name}"
    selector = labels("gateway", **{"tiergate.io/gateway": gw.name})
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2}
    container = {
        "name": "gateway",
        "image": IMAGE,
        "args": gateway_args(gw),
        "env": [_env_redis_url()],
        "ports": [{"name": "http", "containerPort": gw.port}],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_S)]}}},
        "resources": GATEWAY_RESOURCES,
    }
    pod = _pod_spec(settings, container, PRE_STOP_S + stop_grace_s(settings))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": selector},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": gw.port, "targetPort": "http"}]},
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": selector},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
    }
    return [_deployment(name, selector, GATEWAY_REPLICAS, pod), service, pdb]


def _worker(settings: Settings, pool_name: str) -> dict[str, Any]:
    pool = settings.pools[pool_name]
    port = worker_metrics_port(settings)
    selector = labels("worker", **{"tiergate.io/pool": dns_name(pool_name)})
    metrics_env = {"TIERGATE_METRICS_HOST": "0.0.0.0", "TIERGATE_METRICS_PORT": str(port)}
    container = {
        "name": "worker",
        "image": IMAGE,
        "args": worker_args(pool_name),
        "env": [_env_redis_url(), *({"name": k, "value": v} for k, v in metrics_env.items())],
        "ports": [{"name": "metrics", "containerPort": port}],
        # prometheus-client's server answers every path: up means the worker's loop started it.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10},
        "resources": WORKER_RESOURCES,
    }
    pod = _pod_spec(settings, container, stop_grace_s(settings))
    pod["nodeSelector"] = {PROCESSOR_LABEL: pool.processor}
    pod["tolerations"] = [
        {"key": PROCESSOR_LABEL, "operator": "Equal", "value": pool.processor, "effect": "NoSchedule"}
    ]
    return _deployment(keda.worker_deployment(pool_name), selector, pool.replicas, pod)


def _redis() -> list[dict[str, Any]]:
    name = f"{NAME}-redis"
    selector = labels("redis")
    password = {"secretKeyRef": {"name": REDIS_SECRET, "key": "password"}}
    args = [
        *REDIS_DURABLE_ARGS,
        "--requirepass",
        "$(REDIS_PASSWORD)",
    ]
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "args": args,
        "env": [{"name": "REDIS_PASSWORD", "valueFrom": password}, {"name": "REDISCLI_AUTH", "valueFrom": password}],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": [claim],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": selector},
        "spec": {"selector": selector, "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]},
    }
    return [statefulset, service]
