"""What each form of `tiergate loadtest` does once its flags are checked: a single run (optionally
recorded or replayed), a capacity ramp, an agent, or a leader of agents; then the output. Redis
I/O for coordination and recordings is in `coordinate`; HTTP and stream I/O in the drivers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core import redis_client
from core.settings import Settings

from . import coordinate, runner
from .console import print_result
from .coordinate import CoordinationError
from .runner import Load, Target
from .schedule import Arrival
from .stats import Recorder, summary

__all__ = ["CoordinationError", "Load", "Target", "dispatch", "finish"]


async def dispatch(args: argparse.Namespace, settings: Settings, target: Target, load: Load) -> dict[str, Any]:
    if args.agent:
        await _agent(args, settings, target)
        return {}
    if args.find_capacity:
        ramp = runner.Ramp(args.start_rate, args.step_factor, args.step_duration, args.max_rate)
        return await runner.find_capacity(settings, target, load, ramp)
    arrivals, duration_s = await _arrivals(args, settings, target, load)
    if args.agents:
        recorder = await _lead(args, settings, target, arrivals, duration_s)
    else:
        progress = sys.stdout.isatty() and not args.json
        recorder = await runner.play(settings, target, arrivals, duration_s, progress=progress)
    result = summary(recorder, runner.objectives(settings))
    if args.report:
        result["report"] = str(_report(args.report, settings, recorder, result, target))
    return result


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    print_result(result, args.json)


async def _arrivals(
    args: argparse.Namespace, settings: Settings, target: Target, load: Load
) -> tuple[list[Arrival], float]:
    """The run's schedule: built from the load flags, or replayed; recorded when asked."""
    if not (args.record or args.replay):
        return load.build(), load.duration_s
    redis = await redis_client.connect(settings.redis, str(target.redis_url))
    try:
        if args.replay:
            arrivals, duration_s = await coordinate.load_recording(redis, args.replay)
        else:
            arrivals, duration_s = load.build(), load.duration_s
        if args.record:
            await coordinate.save_recording(redis, args.record, arrivals, duration_s)
        return arrivals, duration_s
    finally:
        await redis.aclose()


async def _lead(
    args: argparse.Namespace, settings: Settings, target: Target, arrivals: list[Arrival], duration_s: float
) -> Recorder:
    redis = await redis_client.connect(settings.redis, str(target.redis_url))
    try:
        led = await coordinate.lead(redis, target, arrivals, duration_s, args.agents, args.agent_wait, settings)
        return led.merged
    finally:
        await redis.aclose()


async def _agent(args: argparse.Namespace, settings: Settings, target: Target) -> None:
    redis = await redis_client.connect(settings.redis, str(target.redis_url))
    try:
        await coordinate.serve_agent(redis, settings, once=args.once)
    finally:
        await redis.aclose()


def _report(directory: Path, settings: Settings, recorder: Recorder, result: dict[str, Any], target: Target) -> Path:
    from .report import write_report  # matplotlib: imported only when a report is asked for

    return write_report(directory, settings, recorder, result, depth_known=bool(target.redis_url))
