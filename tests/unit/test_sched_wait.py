"""The per-process CPU wait the benchmarks print (bench/sched_wait.py): a stack's processes found
and named by role, their counters summed over threads and compared between two reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench import sched_wait


def _process(proc: Path, pid: int, ppid: int, argv: list[str], threads: dict[int, str]) -> None:
    (proc / str(pid) / "task").mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (python3 x) S {ppid} 1 1 0 -1\n")
    (proc / str(pid) / "cmdline").write_text("\0".join(argv) + "\0")
    for tid, schedstat in threads.items():
        (proc / str(pid) / "task" / str(tid)).mkdir()
        (proc / str(pid) / "task" / str(tid) / "schedstat").write_text(schedstat)


def test_a_stacks_processes_are_named_for_their_roles_and_strangers_left_out(tmp_path: Path) -> None:
    _process(tmp_path, 10, 1, ["python", "-m", "ops", "up"], {10: "0 0 0"})
    _process(tmp_path, 11, 10, ["/usr/bin/redis-server 127.0.0.1:6400", "", ""], {11: "0 0 0"})
    _process(tmp_path, 12, 10, ["python", "-m", "ops", "gateway", "--port", "1"], {12: "0 0 0"})
    _process(tmp_path, 13, 10, ["python", "-m", "ops", "worker", "--pool", "groq-realtime"], {13: "0 0 0"})
    _process(tmp_path, 14, 13, ["python", "-m", "helper"], {14: "0 0 0"})  # a grandchild
    _process(tmp_path, 20, 1, ["python", "-m", "ops", "gateway"], {20: "0 0 0"})  # another stack's
    names = sched_wait.stack_processes(10, tmp_path)
    assert names == {10: "supervisor", 11: "redis-server", 12: "gateway", 13: "groq-realtime", 14: "python"}


def test_waits_add_up_threads_and_replicas_between_two_reads(tmp_path: Path) -> None:
    _process(tmp_path, 12, 1, ["gateway"], {12: "1000000 200000 10\n", 15: "500000 100000 5\n"})
    _process(tmp_path, 13, 1, ["w", "--pool", "p"], {13: "0 0 0\n"})
    _process(tmp_path, 14, 1, ["w", "--pool", "p"], {14: "0 0 0\n"})
    names = {12: "gateway", 13: "p", 14: "p", 99: "gone"}
    before = sched_wait.read(names, tmp_path)
    assert 99 not in before  # an exited process reads as nothing
    assert before[12] == sched_wait.Counters(1_500_000, 300_000, 15)
    (tmp_path / "12" / "task" / "12" / "schedstat").write_text("3000000 1200000 20\n")
    (tmp_path / "13" / "task" / "13" / "schedstat").write_text("2000000 300000 3\n")
    (tmp_path / "14" / "task" / "14" / "schedstat").write_text("1000000 100000 1\n")
    waits = {w.name: w for w in sched_wait.waits(names, before, sched_wait.read(names, tmp_path))}
    assert waits["gateway"] == sched_wait.Wait("gateway", 2.0, 10, 1.0)
    assert waits["gateway"].per_run_us == pytest.approx(100.0)
    assert waits["p"] == sched_wait.Wait("p", 3.0, 4, 0.4)
    assert waits["p"].per_run_us == pytest.approx(100.0)
    shown = sched_wait.line(list(waits.values()), only=("p", "missing", "gateway"))
    assert shown == "p 100 µs (4), gateway 100 µs (10)"


@pytest.mark.skipif(not sched_wait.available(), reason="no per-task scheduler statistics (Linux only)")
def test_this_process_reads_as_having_run() -> None:
    names = {os.getpid(): "me"}
    before = sched_wait.read(names)
    sum(i * i for i in range(200_000))
    time.sleep(0.01)  # blocked, then woken: put on a CPU again
    (wait,) = sched_wait.waits(names, before, sched_wait.read(names))
    assert wait.on_cpu_ms > 0 and wait.runs >= 1 and wait.waited_ms >= 0
