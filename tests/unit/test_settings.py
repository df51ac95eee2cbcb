"""The config loader accepts the default config and refuses bad ones, naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings, parse_settings
from tests.conftest import default_raw


def test_default_config_loads_with_five_processors_and_every_tier_routed() -> None:
    settings = load_settings(environ={})
    assert set(settings.processors) == {"h100", "groq-lpu", "cerebras-cs3", "inferentia2", "tpu-v5e"}
    assert settings.tiers["realtime"].slo.latency_ms == 10
    assert settings.tiers["interactive"].slo.latency_ms == 250
    assert settings.tiers["batch"].slo.latency_ms == 30000
    assert settings.pools_for("realtime", "default") == ["groq-realtime"]
    assert set(settings.pools_for("batch", "default")) == {"inferentia-mixed", "cerebras-batch"}


def refused(raw: dict, source: str = "cfg.toml") -> str:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, source=source)
    return str(info.value)


def test_unknown_processor_is_named_with_its_key() -> None:
    raw = default_raw()
    raw["pools"]["h100-interactive"]["processor"] = "a100"
    message = refused(raw)
    assert "cfg.toml: pools.h100-interactive.processor: unknown processor 'a100'" in message


def test_a_tier_no_pool_serves_is_refused() -> None:
    raw = default_raw()
    del raw["pools"]["groq-realtime"]
    assert "tiers.realtime: no pool serves this tier" in refused(raw)


def test_deterministic_mode_needs_a_fixed_latency_processor() -> None:
    raw = default_raw()
    raw["pools"]["h100-interactive"].update(mode="deterministic", max_batch=1, max_wait_ms=0)
    assert "deterministic needs a fixed-latency processor; 'h100' is variable" in refused(raw)


def test_impossible_values_are_refused() -> None:
    raw = default_raw()
    raw["processors"]["h100"]["latency"]["max_ms"] = 1
    assert "processors.h100.latency: max_ms (1) is below min_ms (5)" in refused(raw)
    raw = default_raw()
    raw["tiers"]["batch"]["max_queue"] = 0
    assert "Expected `int` >= 1 - at `$.tiers.batch.max_queue`" in refused(raw)
    raw = default_raw()
    raw["pools"]["cerebras-batch"]["max_batch"] = 10_000
    assert "pools.cerebras-batch.max_batch: 10000 exceeds cerebras-cs3's max_batch of 512" in refused(raw)


def test_unknown_keys_are_refused() -> None:
    raw = default_raw()
    raw["gateway"]["prot"] = 1
    assert "Object contains unknown field `prot` - at `$.gateway`" in refused(raw)


def test_pools_of_one_tier_may_serve_different_models_each_on_its_own_lane() -> None:
    raw = default_raw()
    raw["pools"]["tpu-interactive"]["models"] = ["sim-echo"]
    lanes = [lane for lane in parse_settings(raw).lanes() if lane.tier == "interactive"]
    assert [(lane.pools, lane.models) for lane in lanes] == [
        (("h100-interactive", "inferentia-mixed"), ("sim-embed",)),
        (("h100-interactive", "inferentia-mixed", "tpu-interactive"), ("sim-echo",)),
    ]


def test_environment_overrides_apply(tmp_path: Path) -> None:
    settings = load_settings(environ={"TIERGATE_REDIS_URL": "redis://example:1/0", "TIERGATE_PORT": "9999"})
    assert settings.redis.url == "redis://example:1/0"
    assert settings.gateway.port == 9999
    with pytest.raises(ConfigError, match="TIERGATE_PORT='x' is not a valid int"):
        load_settings(environ={"TIERGATE_PORT": "x"})


def test_worker_metrics_address_from_the_environment() -> None:
    # A container runs one worker process: its /metrics on a fixed port that Prometheus can reach.
    settings = load_settings(environ={"TIERGATE_METRICS_HOST": "0.0.0.0", "TIERGATE_METRICS_PORT": "9100"})
    assert (settings.metrics.worker_host, settings.metrics.worker_port) == ("0.0.0.0", 9100)


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read"):
        load_settings(missing, environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiers\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
        load_settings(broken, environ={})


def test_tier_ports_name_configured_tiers_and_valid_ports() -> None:
    raw = default_raw()
    raw["gateway"]["tier_ports"] = {"urgent": 8081}
    assert "gateway.tier_ports.urgent: unknown tier (expected one of realtime, interactive, batch)" in refused(raw)
    raw["gateway"]["tier_ports"] = {"realtime": 70000}
    assert "Expected `int` <= 65535 - at `$.gateway.tier_ports[...]`" in refused(raw)
    raw["gateway"]["tier_ports"] = {"realtime": 8081}
    assert parse_settings(raw).gateway.tier_ports == {"realtime": 8081}


def test_tier_ports_may_not_collide_with_another_gateway() -> None:
    raw = default_raw()
    raw["gateway"]["tier_ports"] = {"realtime": raw["gateway"]["port"]}
    assert "gateway.tier_ports.realtime: port 8080 is already taken by another gateway of this config" in refused(raw)
    raw["gateway"]["tier_ports"] = {"realtime": 0, "batch": 0}  # free ports never collide
    assert parse_settings(raw).gateway.tier_ports == {"realtime": 0, "batch": 0}


def test_a_pools_cpu_priority_is_a_nice_value() -> None:
    assert load_settings(environ={}).pools["cerebras-batch"].nice == 10
    raw = default_raw()
    raw["pools"]["cerebras-batch"]["nice"] = -5  # raising priority needs privileges a pool never has
    assert "pools.cerebras-batch" in refused(raw) and "nice" in refused(raw)


def test_the_adaptive_batch_pace_is_checked() -> None:
    raw = default_raw()
    raw["batches"]["min_lines_per_s"] = 500.0
    assert "batches.min_lines_per_s: 500 is above max_lines_per_s (300), the adaptive pace's ceiling" in refused(raw)
    raw["batches"]["pace"] = "fixed"  # the floor is the adaptive pace's only
    assert parse_settings(raw).batches.min_lines_per_s == 500.0
    raw = default_raw()
    raw["batches"]["pace_backoff"] = 1.0
    assert "Expected `float` < 1.0 - at `$.batches.pace_backoff`" in refused(raw)
    raw = default_raw()
    raw["batches"]["pace_max_latency_ratio"] = 1.0
    assert "Expected `float` > 1.0 - at `$.batches.pace_max_latency_ratio`" in refused(raw)
    raw = default_raw()
    raw["batches"]["pace"] = "fast"
    assert "Invalid enum value 'fast' - at `$.batches.pace`" in refused(raw)


def test_the_realtime_cpu_policy_is_for_pools_not_the_gateway() -> None:
    raw = default_raw()
    raw["gateway"]["cpu_policy"] = "realtime"
    assert "gateway.cpu_policy: 'realtime' is for a pool that blocks between requests" in refused(raw)
    raw["gateway"]["cpu_policy"] = "latency"
    raw["pools"]["groq-realtime"]["cpu_policy"] = "realtime"
    assert parse_settings(raw).pools["groq-realtime"].cpu_policy == "realtime"
    raw["pools"]["groq-realtime"]["cpu_policy"] = "fifo"
    assert "Invalid enum value 'fifo' - at `$.pools.groq-realtime.cpu_policy`" in refused(raw)
