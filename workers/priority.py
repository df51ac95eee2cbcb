"""The CPU priority of a pool's worker process: its `nice` value and its Linux scheduling class.
Both only ever lower the process's claim on the CPU, which needs no privileges, so a pool that
must wait never takes a core from a stricter tier's process on the same host.
"""

from __future__ import annotations

import logging
import os

from core.settings import PoolSettings

log = logging.getLogger(__name__)

POLICIES = {"batch": "SCHED_BATCH", "idle": "SCHED_IDLE"}


def lower_priority(pool: PoolSettings) -> None:
    """Apply the pool's `nice` and `cpu_policy` to this process."""
    if pool.nice:
        os.nice(pool.nice)
    set_cpu_policy(pool.cpu_policy)


def set_cpu_policy(name: str) -> None:
    """Move this process to the scheduling class `name` ("normal" leaves it). A class the platform
    lacks (not Linux) is logged and left as it is: the process still runs, at normal priority."""
    if name == "normal":
        return
    policy = getattr(os, POLICIES[name], None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        log.warning("cpu_policy not applied: this platform has no %s", POLICIES[name])
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # a sandbox that forbids it (a seccomp profile): run, and say so
        log.warning("cpu_policy not applied: %s refused: %s", POLICIES[name], exc)
