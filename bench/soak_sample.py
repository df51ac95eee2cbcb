"""What bench/soak.py samples every second, and the arithmetic on it: the RSS of every process of
`tiergate up` (/proc/PID/status), Redis's used_memory and keyspace counts (INFO), the length of
every request and reply stream (XLEN, key names from core.protocol and `Settings.lanes()`), and
the host's CPU counters (/proc/stat, for steal). Reads /proc and Redis; writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from bench.scenarios import cpu_times, steal_pct
from core import protocol
from core.settings import Settings


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the field after the command, which may hold spaces


def descendants(root: int) -> list[int]:
    """Every process below `root`, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (parent := _ppid(int(name))) is not None:
            children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def label(pid: int) -> str | None:
    """`gateway`, `gateway:TIERS`, `worker POOL`, `redis-server` from a process's command line;
    None for anything else (a process that is not part of the stack)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if argv and "redis-server" in argv[0]:  # it rewrites its title to "redis-server HOST:PORT"
        return "redis-server"
    for role in ("gateway", "worker"):
        if role in argv[1:]:
            flag = "--pool" if role == "worker" else "--tiers"
            value = argv[argv.index(flag) + 1] if flag in argv else ""
            return f"{role} {value}" if role == "worker" else f"gateway:{value}" if value else "gateway"
    return None


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stack_processes(supervisor_pid: int) -> dict[str, int]:
    """The stack's processes by label: the supervisor (the `tiergate up` process) and its children."""
    found = {"supervisor": supervisor_pid}
    for pid in descendants(supervisor_pid):
        name = label(pid)
        if name is not None:
            found[name if name not in found else f"{name} [{pid}]"] = pid
    return found


def request_streams(settings: Settings) -> list[str]:
    return [lane.stream for lane in settings.lanes()]


@dataclass
class Series:
    """Every sample of one run: seconds since the start, and one list of values per measure."""

    t_s: list[float] = field(default_factory=list)
    rss_kib: dict[str, list[int | None]] = field(default_factory=dict)
    redis: dict[str, list[int]] = field(default_factory=dict)  # used_memory, keys, expires
    streams: dict[str, list[int]] = field(default_factory=dict)  # request streams
    replies: dict[str, list[int]] = field(default_factory=dict)  # reply streams
    steal_pct: list[float | None] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)  # "label: pid -> pid" for each process replaced


class Sampler:
    """Samples the stack once a second until stopped; `series` holds what it found."""

    def __init__(self, redis: Redis, settings: Settings, supervisor_pid: int, gateway_ids: list[str]) -> None:
        self.redis = redis
        self.supervisor_pid = supervisor_pid
        self.processes = stack_processes(supervisor_pid)
        self.streams = request_streams(settings)
        self.replies = [protocol.reply_key(gateway_id) for gateway_id in gateway_ids]
        self.series = Series()

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        started, cpu = time.monotonic(), cpu_times()
        while not stop.is_set():
            now_cpu = cpu_times()
            self.series.steal_pct.append(steal_pct(cpu, now_cpu) if self.series.t_s else None)
            cpu = now_cpu
            self.series.t_s.append(round(time.monotonic() - started, 3))
            self._sample_processes()
            await self._sample_redis()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s - (time.monotonic() - started) % interval_s)

    def _sample_processes(self) -> None:
        current = stack_processes(self.supervisor_pid)
        for name, pid in current.items():
            if name in self.processes and self.processes[name] != pid:
                self.series.restarts.append(f"{name}: {self.processes[name]} -> {pid} at {self.series.t_s[-1]:.0f} s")
                self.processes[name] = pid
        n = len(self.series.t_s)
        for name, pid in self.processes.items():
            column = self.series.rss_kib.setdefault(name, [None] * (n - 1))
            column.append(rss_kib(pid))

    async def _sample_redis(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("keyspace")
        for key in self.streams + self.replies:
            pipe.xlen(key)
        memory, keyspace, *lengths = await pipe.execute()
        db = next(iter(keyspace.values()), {"keys": 0, "expires": 0})
        for name, value in (("used_memory", memory["used_memory"]), ("keys", db["keys"]), ("expires", db["expires"])):
            self.series.redis.setdefault(name, []).append(int(value))
        for key, length in zip(self.streams + self.replies, lengths, strict=True):
            into = self.series.streams if key in self.streams else self.series.replies
            into.setdefault(key, []).append(int(length))


def slope_per_min(t_s: list[float], values: list[int | None], after_s: float) -> float | None:
    """The least-squares slope of `values` against time, per minute, over the samples from `after_s` on."""
    points = [(t, v) for t, v in zip(t_s, values, strict=True) if t >= after_s and v is not None]
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else None


def value_at(t_s: list[float], values: list[int | None], at_s: float) -> int | None:
    """The first sample at or after `at_s` (the baseline a slope is judged against)."""
    return next((v for t, v in zip(t_s, values, strict=True) if t >= at_s and v is not None), None)
