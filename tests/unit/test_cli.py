"""The `tiergate` command line: what `up` hands its children, and how `--tiers` is checked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.settings import Settings
from ops import cli


def test_up_hands_its_log_level_to_every_child() -> None:
    args = cli.parser().parse_args(["up", "--log-level", "WARNING"])
    args.config = Path("tiergate.toml")
    argv = cli._child_argv(args, "gateway", "--port", "0")
    assert argv[1:4] == ["-m", "ops", "gateway"]
    assert argv[-2:] == ["--log-level", "WARNING"]
    assert argv[argv.index("--config") + 1] == "tiergate.toml"


def test_tiers_flag_is_checked_against_the_config(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert cli._tiers(None, settings) is None
    assert cli._tiers("realtime, interactive", settings) == ["realtime", "interactive"]
    with pytest.raises(SystemExit, match="--tiers 'realtime,urgent': unknown tier"):
        cli._tiers("realtime,urgent", settings)
