"""`tiergate deploy render`: the committed artifacts are a fresh render of the shipped config, and
each artifact passes its own tool's check (hadolint, the compose spec, Kubernetes' and KEDA's
schemas, systemd-analyze, promtool) and says what the config says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from core.protocol import GROUP
from core.settings import DEFAULT_CONFIG_PATH, Settings, load_settings
from gateway import slo
from ops import deploy
from ops.cli import main
from ops.deploy import observability, systemd

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
KEDA_CRD = ROOT / "tests" / "schemas" / "keda" / "keda.sh_scaledobjects.yaml"
K8S_CORE = ["k8s/base/gateway.yaml", "k8s/base/workers.yaml", "k8s/base/redis.yaml"]
K8S_CORE += ["k8s/overlays/example/namespace.yaml"]


def shipped() -> dict[str, str]:
    return deploy.render(load_settings(DEFAULT_CONFIG_PATH, environ={}), DEFAULT_CONFIG_PATH.read_text())


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)


def test_committed_artifacts_are_a_fresh_render_of_the_shipped_config() -> None:
    fresh = shipped()
    committed = {str(p.relative_to(DEPLOY)): p.read_text() for p in DEPLOY.rglob("*") if p.is_file()}
    redo = "deploy/ is stale: run `tiergate deploy render` (or `python -m ops deploy render`) and commit it"
    assert sorted(committed) == sorted(fresh), redo
    assert [path for path in fresh if committed[path] != fresh[path]] == [], redo


def test_the_command_renders_the_same_files_whatever_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIERGATE_PORT", "9999")  # overrides a process would apply; a render must not
    with pytest.raises(SystemExit) as stopped:
        main(["deploy", "render", "--out", str(tmp_path), "--config", str(DEFAULT_CONFIG_PATH)])
    assert stopped.value.code == 0
    written = {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == shipped()
    assert str(tmp_path / "Dockerfile") in capsys.readouterr().out.splitlines()


def test_the_command_names_a_bad_config_and_renders_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_CONFIG_PATH.read_text().replace('processor = "h100"', 'processor = "a100"'))
    with pytest.raises(SystemExit) as stopped:
        main(["deploy", "render", "--config", str(bad), "--out", str(tmp_path / "out"), "--target", "k8s"])
    assert stopped.value.code == 2
    assert "bad.toml: pools.h100-interactive.processor: unknown processor 'a100'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_target_renders_only_its_files(tmp_path: Path) -> None:
    files = deploy.render(load_settings(environ={}), "", ["systemd"])
    assert all(path.startswith("systemd/") for path in files)
    assert "systemd/tiergate-worker@.service" in files


def test_dockerfile_passes_hadolint_with_no_finding() -> None:
    result = run(BIN / "hadolint", DEPLOY / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_builds_a_wheel_and_runs_it_as_a_non_root_user_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("\nFROM python:3.11") == 2 and "slim" in text
    assert "pip wheel --no-cache-dir" in text
    assert "\nUSER 10001\n" in text
    assert "HEALTHCHECK" in text and "http://127.0.0.1:8080/healthz" in text


def test_compose_validates_against_the_compose_spec() -> None:
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose/compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_redis_with_aof_the_gateway_and_each_pool_with_its_replicas() -> None:
    settings = load_settings(environ={})
    (compose,) = docs((DEPLOY / "compose/compose.yaml").read_text())
    services = compose["services"]
    assert services["redis"]["command"][1:5] == ["--appendonly", "yes", "--appendfsync", "always"]
    assert services["gateway"]["command"][0] == "gateway"
    for pool, p in settings.pools.items():
        service = services[f"worker-{pool}"]
        assert service["command"][:1] + service["command"][-4:] == ["worker", "--pool", pool, "--replicas", "1"]
        assert service["deploy"]["replicas"] == p.replicas
        # SCHED_FIFO without root: a real-time priority limit for the pools that ask for it, none for the rest
        assert service.get("ulimits") == ({"rtprio": 1} if p.cpu_policy == "realtime" else None)
    assert any(p.cpu_policy == "realtime" for p in settings.pools.values())
    for service in services.values():
        assert service["restart"] == "unless-stopped" and service["healthcheck"]["test"]


def test_kubernetes_core_kinds_validate_strictly() -> None:
    result = run(BIN / "kubernetes-validate", "--strict", *(DEPLOY / path for path in K8S_CORE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rendered_kubernetes_object_is_validated_or_a_keda_object() -> None:
    base = DEPLOY / "k8s/base"
    kustomization = docs((base / "kustomization.yaml").read_text())[0]
    assert sorted(kustomization["resources"]) == ["gateway.yaml", "keda.yaml", "redis.yaml", "workers.yaml"]
    assert sorted(f"k8s/base/{name}" for name in kustomization["resources"] if name != "keda.yaml") == sorted(
        path for path in K8S_CORE if path.startswith("k8s/base/")
    )
    keda = docs((base / "keda.yaml").read_text())
    pools = load_settings(environ={}).pools
    assert [d["kind"] for d in keda] == ["TriggerAuthentication"] + ["ScaledObject"] * len(pools)
    assert {d["apiVersion"] for d in keda} == {"keda.sh/v1alpha1"}


def _keda_schema() -> dict[str, Any]:
    crd = docs(KEDA_CRD.read_text())[0]
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "ScaledObject"
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_scaled_objects_validate_against_kedas_crd_and_read_every_stream_of_their_pool() -> None:
    settings = load_settings(environ={})
    validator = jsonschema.Draft7Validator(_keda_schema())
    scaled = [d for d in docs((DEPLOY / "k8s/base/keda.yaml").read_text()) if d["kind"] == "ScaledObject"]
    assert len(scaled) == len(settings.pools)
    for obj, pool in zip(scaled, settings.pools, strict=True):
        assert [e.message for e in validator.iter_errors(obj)] == []
        streams = [t["metadata"]["stream"] for t in obj["spec"]["triggers"]]
        assert streams == [lane.stream for lane in settings.lanes() if pool in lane.pools]
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            assert trigger["metadata"]["consumerGroup"] == GROUP
            assert {"lagCount", "activationLagCount"} <= trigger["metadata"].keys()


def test_the_keda_schema_check_catches_a_broken_scaled_object() -> None:
    broken = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "spec": {"triggers": [{"metadata": {}}]}}
    assert list(jsonschema.Draft7Validator(_keda_schema()).iter_errors(broken))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: kustomize builds not checked")
def test_the_base_and_the_overlay_build_with_kustomize() -> None:
    for folder in ("k8s/base", "k8s/overlays/example"):
        result = run("kubectl", "kustomize", DEPLOY / folder)
        assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in docs(run("kubectl", "kustomize", DEPLOY / "k8s/overlays/example").stdout)]
    assert "StatefulSet" not in kinds and "ScaledObject" in kinds  # the overlay's Redis is external


def _grace_checks(settings: Settings) -> tuple[str, dict[str, Any], dict[str, Any]]:
    files = deploy.render(settings, "")
    unit = files["systemd/tiergate-gateway.service"]
    compose = docs(files["compose/compose.yaml"])[0]
    gateway = docs(files["k8s/base/gateway.yaml"])[0]
    return unit, compose, gateway


def test_stop_timeouts_follow_the_configs_shutdown_grace(make_settings: Callable[..., Settings]) -> None:
    unit, compose, gateway = _grace_checks(make_settings(gateway__shutdown_grace_s=42.0))
    assert "TimeoutStopSec=47s" in unit
    assert compose["services"]["gateway"]["stop_grace_period"] == "47s"
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 47 + 3  # + the preStop sleep


def _systemd_dir(tmp_path: Path) -> list[Path]:
    files = systemd.render(load_settings(environ={}), "", exec_path=str(BIN / "tiergate"))
    units = []
    for relative, text in files.items():
        if relative.endswith(".service"):
            (tmp_path / Path(relative).name).write_text(text)
    template = (tmp_path / "tiergate-worker@.service").read_text()
    units.append(tmp_path / "tiergate-gateway.service")
    units.append(tmp_path / "tiergate-worker@h100-interactive.service")
    units[-1].write_text(template)
    return units


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = _systemd_dir(tmp_path)
    result = run("systemd-analyze", "verify", *units)
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line or "tiergate" in line]
    assert (result.returncode, ours) == (0, [])


def test_systemd_units_restart_on_failure_and_take_a_pool_name() -> None:
    template = (DEPLOY / "systemd/tiergate-worker@.service").read_text()
    assert "--pool %i" in template and "Restart=on-failure" in template
    assert "LimitRTPRIO=1" in template.splitlines()  # a pool with cpu_policy = "realtime" may take SCHED_FIFO
    assert "Restart=on-failure" in (DEPLOY / "systemd/tiergate-gateway.service").read_text()


def test_burn_rate_alerts_are_the_ones_slo_computes() -> None:
    (rules,) = docs((DEPLOY / "observability/tiergate-rules.yml").read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) == len(slo.BURN_ALERTS)
    for rule, alert in zip(alerts, slo.BURN_ALERTS, strict=True):
        assert rule["expr"] == (
            f"tiergate:slo_burn_rate:{alert.long_window} > {alert.threshold:g} and on (tier) "
            f"tiergate:slo_burn_rate:{alert.short_window} > {alert.threshold:g}"
        )
    settings = load_settings(environ={})
    records = [r for group in rules["groups"] for r in group["rules"] if "record" in r]
    for record in records:
        objective = settings.tiers[record["labels"]["tier"]].slo.objective
        assert record["expr"].endswith(f") / {1 - objective / 100:.6g}")
        assert f"[{record['record'].rsplit(':', 1)[1]}]" in record["expr"]
    assert {r["record"] for r in records} == {f"tiergate:slo_burn_rate:{w}" for w in observability.windows()}


def test_the_operator_rule_holds_the_same_groups_as_the_rules_file() -> None:
    (rules,) = docs((DEPLOY / "observability/tiergate-rules.yml").read_text())
    operator = docs((DEPLOY / "observability/prometheus-operator.yaml").read_text())
    (rule,) = [d for d in operator if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == rules["groups"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    for args in (("check", "rules"), ("check", "config")):
        target = "tiergate-rules.yml" if args[1] == "rules" else "prometheus.yml"
        result = run("promtool", *args, DEPLOY / "observability" / target)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_a_panel_for_each_promised_view() -> None:
    dashboard = json.loads((DEPLOY / "observability/grafana-dashboard.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for wanted in ("p50", "p99", "attainment", "burn rate", "Queue depth", "lag", "Throughput", "batch size"):
        assert wanted.lower() in titles.lower()
    for wanted in ("Power", "Cost"):
        assert wanted in titles


def test_a_tier_with_a_port_of_its_own_gets_its_own_gateway_everywhere(make_settings: Callable[..., Settings]) -> None:
    files = deploy.render(make_settings(gateway__tier_ports={"realtime": 8081}), "")
    compose = docs(files["compose/compose.yaml"])[0]["services"]
    assert compose["gateway-realtime"]["command"][-2:] == ["--tiers", "realtime"]
    assert compose["gateway-realtime"]["ports"] == ["8081:8081"]
    k8s = {d["metadata"]["name"]: d for d in docs(files["k8s/base/gateway.yaml"]) if d["kind"] == "Service"}
    assert k8s["tiergate-gateway-realtime"]["spec"]["ports"][0]["port"] == 8081
    assert "--tiers realtime" in files["systemd/tiergate-gateway-realtime.service"]
    assert "gateway-realtime:8081" in files["observability/prometheus.yml"]
