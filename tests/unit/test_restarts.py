"""The supervisor's restart policy, driven with plain numbers: doubling delays up to the cap, a
fresh start after a long run, and giving up on a child that cannot start; and the error quoted."""

from __future__ import annotations

import msgspec
import pytest

from core.errors import ConfigError
from core.settings import SupervisorSettings, parse_settings
from ops.restarts import GiveUp, Restart, RestartPolicy, last_error
from tests.conftest import default_raw

SETTINGS = SupervisorSettings(
    restart_backoff_s=0.5, restart_backoff_max_s=4.0, restart_reset_s=60.0, start_failures_max=3
)


def test_the_delay_doubles_with_each_restart_up_to_the_cap() -> None:
    policy = RestartPolicy(SETTINGS)
    delays = [policy.exited(ran_s=1.0) for _ in range(6)]
    assert delays == [Restart(0.5), Restart(1.0), Restart(2.0), Restart(4.0), Restart(4.0), Restart(4.0)]


def test_a_child_that_ran_long_enough_starts_over_at_the_first_delay() -> None:
    policy = RestartPolicy(SETTINGS)
    for _ in range(4):
        policy.exited(ran_s=1.0)
    assert policy.exited(ran_s=60.0) == Restart(0.5)
    assert policy.exited(ran_s=59.0) == Restart(1.0)


def test_start_failures_in_a_row_give_up() -> None:
    policy = RestartPolicy(SETTINGS)
    assert policy.exited(ran_s=None) == Restart(0.5)
    assert policy.exited(ran_s=None) == Restart(1.0)
    assert policy.exited(ran_s=None) == GiveUp(start_failures=3)


def test_a_child_that_got_ready_in_between_is_not_given_up_on() -> None:
    policy = RestartPolicy(SETTINGS)
    policy.exited(ran_s=None)
    policy.exited(ran_s=None)
    assert policy.exited(ran_s=0.1) == Restart(2.0)  # it did start: deaths after start never give up
    assert policy.exited(ran_s=None) == Restart(4.0)
    assert policy.exited(ran_s=None) == Restart(4.0)
    assert policy.exited(ran_s=None) == GiveUp(start_failures=3)


def test_the_delay_never_overflows_after_many_restarts() -> None:
    policy = RestartPolicy(SETTINGS)
    for _ in range(5000):
        decision = policy.exited(ran_s=1.0)
    assert decision == Restart(4.0)


def test_the_last_error_is_the_last_line_said() -> None:
    plain = ["starting", "tiergate gateway: cannot listen on 127.0.0.1:8081: address already in use", ""]
    assert last_error(plain) == "tiergate gateway: cannot listen on 127.0.0.1:8081: address already in use"
    logged = msgspec.json.encode({"level": "error", "msg": "redis unreachable", "error": "Connection refused"})
    assert last_error(["noise", logged.decode()]) == "redis unreachable: Connection refused"
    traceback = msgspec.json.encode({"msg": "unhandled", "exc": "Traceback ...\n  line 1\nRuntimeError: boom"})
    assert last_error([traceback.decode()]) == "unhandled: RuntimeError: boom"
    assert last_error([]) == ""


def test_supervisor_settings_have_defaults_and_are_checked() -> None:
    assert parse_settings(default_raw()).supervisor == SupervisorSettings()
    raw = default_raw()
    raw["supervisor"] = {"restart_backoff_s": 5.0, "restart_backoff_max_s": 1.0}
    with pytest.raises(ConfigError, match=r"supervisor\.restart_backoff_max_s: 1 is below restart_backoff_s"):
        parse_settings(raw)
    raw["supervisor"] = {"start_failures_max": 0}
    with pytest.raises(ConfigError, match=r"at `\$.supervisor.start_failures_max`"):
        parse_settings(raw)
