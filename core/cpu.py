"""The CPU priority of a tiergate process: its `nice` value and its Linux scheduling class.

- `latency`: the shortest time slice Linux grants (EEVDF, Linux 6.12 and later): a process that
  wakes with a short slice has an early deadline and preempts a long-slice one at once, instead of
  waiting up to a slice (about a millisecond) for a core. For the gateway and realtime pools,
  whose every request is a chain of wake-ups.
- `batch` (`SCHED_BATCH`): its wake-ups never preempt a running process.
- `idle` (`SCHED_IDLE`): it runs only on a core nothing else wants.
- `realtime` (`SCHED_FIFO` at the lowest real-time priority, 1): its wake-ups preempt every
  fair-class process at once and nothing of theirs preempts it, so a deterministic pool's
  service time is not stretched by a busy core. It needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`
  of at least 1, and belongs only to a pool that blocks between requests (Linux's real-time
  throttling still leaves the other processes 5 % of each core).

The other classes only lower a process's claim on the CPU or shorten its slice, which needs no
privileges. Where the platform lacks one, or a sandbox refuses it, the process says so in a
warning and runs as `normal`: priority shapes latency, never correctness.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import sys
from typing import Literal

log = logging.getLogger(__name__)

CpuPolicy = Literal["normal", "latency", "batch", "idle", "realtime"]
CPU_POLICIES: tuple[CpuPolicy, ...] = ("normal", "latency", "batch", "idle", "realtime")
REALTIME_PRIORITY = 1  # the lowest SCHED_FIFO priority: above every fair-class process, below the kernel's threads

SHORTEST_SLICE_NS = 100_000  # the kernel's floor for a fair task's slice (0.1 ms)
SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}  # syscall numbers: Python has no sched_setattr
# struct sched_attr (linux/sched/types.h, version 1): size, policy, flags, nice, priority,
# runtime (a fair task's slice), deadline, period, util_min, util_max.
SCHED_ATTR = struct.Struct("IIQiIQQQII")


def lower_priority(nice: int, policy: CpuPolicy) -> None:
    """Apply `nice` (0-19) and the scheduling class `policy` to this process."""
    if nice:
        os.nice(nice)
    try:
        _apply(policy)
    except OSError as exc:
        log.warning("cpu_policy %s not applied: %s", policy, exc)


def _apply(policy: CpuPolicy) -> None:
    if policy == "normal":
        return
    if not sys.platform.startswith("linux"):
        raise OSError(f"Linux only, this is {sys.platform}")
    if policy == "batch":
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    elif policy == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif policy == "realtime":
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    else:
        set_slice_ns(SHORTEST_SLICE_NS)


def set_slice_ns(slice_ns: int) -> None:
    """Ask for a time slice of `slice_ns` for this process under SCHED_OTHER (sched_setattr with
    `sched_runtime`; kernels before EEVDF accept and ignore it)."""
    number = SCHED_SETATTR.get(platform.machine())
    if number is None:
        raise OSError(f"no sched_setattr syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # sched_setattr sets it too: keep the one it has
    attr = SCHED_ATTR.pack(SCHED_ATTR.size, os.SCHED_OTHER, 0, nice, 0, slice_ns, 0, 0, 0, 0)
    if libc.syscall(number, 0, ctypes.create_string_buffer(attr, SCHED_ATTR.size), 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sched_setattr: {os.strerror(errno)}")


def slice_ns(pid: int = 0) -> int:
    """The time slice of a SCHED_OTHER process (the kernel's default unless it asked for one; 0
    where it cannot be read)."""
    number = SCHED_SETATTR.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(SCHED_ATTR.size)
    if libc.syscall(number + 1, pid, buf, SCHED_ATTR.size, 0) != 0:  # sched_getattr follows sched_setattr
        return 0
    return int(SCHED_ATTR.unpack(buf.raw)[5])
