"""How long each process of a running stack waited for a CPU, per phase of a benchmark.

Linux keeps, for every thread, its time on a CPU, its time runnable but waiting for one (the run
queue delay), and how many times it was put on a CPU (`/proc/PID/task/TID/schedstat`). Read
before and after a phase, they say what each wake-up of the gateway, Redis or a worker cost in
waiting alone: the part of a request's latency that no code of the stack can shorten, and that
steal time (the hypervisor's share) does not show. Linux only; elsewhere every read is empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Counters:
    on_cpu_ns: int
    waited_ns: int
    runs: int  # times put on a CPU: a wake-up, or a return after being preempted


@dataclass(frozen=True, slots=True)
class Wait:
    """One process over one phase."""

    name: str
    on_cpu_ms: float
    runs: int
    waited_ms: float

    @property
    def per_run_us(self) -> float:
        return self.waited_ms * 1000.0 / self.runs if self.runs else 0.0


def stack_processes(root_pid: int, proc: Path = PROC) -> dict[int, str]:
    """Every process under `root_pid` (`tiergate up`), named for its role: `gateway`, a pool's
    name (its `--pool`), `redis-server`; the root itself is `supervisor`."""
    parents: dict[int, int] = {}
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat:
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    named = {root_pid: "supervisor"}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != root_pid:
            ancestor = parents.get(ancestor)
        if ancestor == root_pid:
            named[pid] = _role(_read(proc / str(pid) / "cmdline").split("\0"))
    return named


def _role(argv: list[str]) -> str:
    if "--pool" in argv[:-1]:
        return argv[argv.index("--pool") + 1]
    if "gateway" in argv:
        return "gateway"
    program = argv[0].split(" ")[0] if argv and argv[0] else "?"  # Redis rewrites its title: "path host:port"
    return Path(program).name


def read(pids: dict[int, str], proc: Path = PROC) -> dict[int, Counters]:
    """The counters of each process, summed over its threads (a process that has exited: none)."""
    counters = {}
    for pid in pids:
        tasks = proc / str(pid) / "task"
        total = [0, 0, 0]
        try:
            threads = list(tasks.iterdir())
        except OSError:
            continue
        for thread in threads:
            fields = _read(thread / "schedstat").split()
            if len(fields) == 3:
                total = [a + int(b) for a, b in zip(total, fields, strict=True)]
        counters[pid] = Counters(*total)
    return counters


def waits(names: dict[int, str], before: dict[int, Counters], after: dict[int, Counters]) -> list[Wait]:
    """What each process spent between two reads, by name (the replicas of a pool added up)."""
    summed: dict[str, list[int]] = {}
    for pid, end in after.items():
        start = before.get(pid)
        if start is None:
            continue
        total = summed.setdefault(names[pid], [0, 0, 0])
        total[0] += end.on_cpu_ns - start.on_cpu_ns
        total[1] += end.waited_ns - start.waited_ns
        total[2] += end.runs - start.runs
    return [Wait(name, cpu / 1e6, runs, waited / 1e6) for name, (cpu, waited, runs) in summed.items()]


def combine(phase_waits: list[Wait]) -> list[Wait]:
    """Several phases' waits added up, by name (rounds of the same phase pooled)."""
    summed: dict[str, Wait] = {}
    for w in phase_waits:
        seen = summed.get(w.name)
        summed[w.name] = (
            w
            if seen is None
            else Wait(w.name, seen.on_cpu_ms + w.on_cpu_ms, seen.runs + w.runs, seen.waited_ms + w.waited_ms)
        )
    return list(summed.values())


def line(phase_waits: list[Wait], only: tuple[str, ...] = ()) -> str:
    """`name µs/wake-up (wake-ups)` for each process (of `only`, in its order, when given)."""
    by_name = {w.name: w for w in phase_waits}
    order = [name for name in only if name in by_name] if only else sorted(by_name)
    return ", ".join(f"{name} {by_name[name].per_run_us:.0f} µs ({by_name[name].runs})" for name in order)


def available() -> bool:
    return os.path.exists(PROC / "self" / "schedstat")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
