"""Each CPU policy of core/cpu.py, applied in a process of its own (it cannot be undone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.cpu import SHORTEST_SLICE_NS, CpuPolicy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling classes only")

PROBE = """
import json, os, sys
from core.cpu import lower_priority, slice_ns
lower_priority(int(sys.argv[1]), sys.argv[2])
print(json.dumps([os.sched_getscheduler(0), slice_ns(), os.getpriority(os.PRIO_PROCESS, 0)]))
"""


def applied(nice: int, policy: CpuPolicy) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(nice), policy], capture_output=True, text=True, check=True)
    scheduler, slice_, niceness = json.loads(done.stdout)
    return scheduler, slice_, niceness


def test_batch_and_idle_are_their_scheduling_classes() -> None:
    assert applied(0, "batch")[0] == os.SCHED_BATCH
    assert applied(0, "idle")[0] == os.SCHED_IDLE
    assert applied(0, "normal")[0] == os.SCHED_OTHER


def test_latency_asks_for_the_shortest_slice_and_keeps_the_nice_value() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    scheduler, slice_, niceness = applied(3, "latency")
    assert scheduler == os.SCHED_OTHER
    assert slice_ == SHORTEST_SLICE_NS
    assert niceness == min(19, own + 3)
    assert applied(0, "normal")[1] > SHORTEST_SLICE_NS  # the kernel's default slice is longer


REALTIME_PROBE = """
import json, logging, os
from core.cpu import lower_priority
logging.basicConfig(level=logging.WARNING)
lower_priority(0, "realtime")
print(json.dumps([os.sched_getscheduler(0), os.sched_getparam(0).sched_priority]))
"""


def test_realtime_is_fifo_at_the_lowest_priority_or_a_warning_where_refused() -> None:
    done = subprocess.run([sys.executable, "-c", REALTIME_PROBE], capture_output=True, text=True, check=True)
    scheduler, priority = json.loads(done.stdout)
    if scheduler == os.SCHED_FIFO:
        assert priority == 1  # above fair-class processes, below every kernel thread with a real-time class
        assert "not applied" not in done.stderr
    else:  # no CAP_SYS_NICE and no RLIMIT_RTPRIO here: it runs as normal and says why
        assert scheduler == os.SCHED_OTHER
        assert "cpu_policy realtime not applied" in done.stderr
