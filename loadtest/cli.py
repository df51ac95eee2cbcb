"""`tiergate loadtest`: parse the flags, run the load (a single run, a capacity ramp, an agent or
a leader of agents), then print the table or JSON and write the HTML report. The process entry
point of the load tester; `ops.cli` hands it every argument after `loadtest`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from core.errors import ConfigError, RedisAccessError
from core.settings import Settings, config_path, load_settings

from .schedule import ScheduleError, parse_mix, parse_size

DEFAULT_MIX = "realtime=0.2,interactive=0.5,batch=0.3"


def duration_s(text: str) -> float:
    """`30`, `30s`, `500ms` or `2m` -> seconds."""
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0))
    for suffix, scale in units:
        if text.endswith(suffix) and not (suffix == "s" and text.endswith("ms")):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tiergate loadtest", description="Open-loop load tests of a tiergate deployment, with SLO reports."
    )
    p.add_argument("--config", type=Path, default=None, help="config file: tiers, SLOs, models (default: as tiergate)")
    where = p.add_argument_group("target")
    where.add_argument("--url", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    where.add_argument("--direct", metavar="REDIS_URL", help="inject straight into the tier streams of this Redis")
    where.add_argument("--redis", metavar="REDIS_URL", help="Redis to sample queue depths from and coordinate through")
    where.add_argument("--stream", action="store_true", help="stream chat completions (SSE) and measure TTFT")
    where.add_argument("--deadline-ms", type=int, default=None, help="deadline of every request (default: tier's)")
    load = p.add_argument_group("load")
    load.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    load.add_argument("--duration", type=duration_s, default=10.0, help="30, 30s, 500ms or 2m (default 10 s)")
    load.add_argument("--mix", default=DEFAULT_MIX, help=f"tier weights (default {DEFAULT_MIX})")
    load.add_argument(
        "--models", default="sim-echo", help="comma-separated models, picked at random (default sim-echo)"
    )
    load.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    load.add_argument("--input-chars", default="64", help="input size: N or MIN-MAX characters (default 64)")
    load.add_argument("--seed", type=int, default=None, help="seed of the arrival schedule")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument("--report", type=Path, metavar="DIR", help="write report.html and PNG plots into DIR")
    cap = p.add_argument_group("capacity search")
    cap.add_argument("--find-capacity", action="store_true", help="ramp the rate until some tier misses its SLO")
    cap.add_argument("--start-rate", type=float, default=5.0, help="first step's rate (default 5)")
    cap.add_argument("--step-factor", type=float, default=1.5, help="each step's rate over the last (default 1.5)")
    cap.add_argument("--step-duration", type=duration_s, default=5.0, help="length of each step (default 5 s)")
    cap.add_argument("--max-rate", type=float, default=1000.0, help="stop ramping above this rate (default 1000)")
    dist = p.add_argument_group("distributed load and replay (need --redis or --direct)")
    dist.add_argument("--agent", action="store_true", help="wait for a leader's plan, send its share, report back")
    dist.add_argument("--agents", type=int, default=0, help="lead N agents: publish the plan, merge their results")
    dist.add_argument(
        "--agent-wait", type=duration_s, default=30.0, help="how long a leader waits for its agents (default 30 s)"
    )
    dist.add_argument("--once", action="store_true", help="an agent exits after one plan")
    dist.add_argument("--record", metavar="NAME", help="store this run's arrival schedule under NAME")
    dist.add_argument("--replay", metavar="NAME", help="play the arrival schedule recorded under NAME")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    path = config_path(args.config)
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise SystemExit(f"tiergate loadtest: {exc}") from None


def _check(args: argparse.Namespace, settings: Settings) -> None:
    coordinated = args.agent or args.agents or args.record or args.replay
    if coordinated and not (args.redis or args.direct):
        raise SystemExit("tiergate loadtest: --agent, --agents, --record and --replay need --redis or --direct")
    if not args.agent and not (args.url or args.direct):
        raise SystemExit("tiergate loadtest: give the target: --url URL or --direct REDIS_URL")
    unknown = [m for m in args.models.split(",") if m not in settings.models]
    if unknown:
        raise SystemExit(
            f"tiergate loadtest: unknown model(s) {', '.join(unknown)} (known: {', '.join(settings.models)})"
        )
    if args.stream and args.direct:
        raise SystemExit("tiergate loadtest: --stream measures the HTTP API; it cannot be combined with --direct")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = _settings(args)
    _check(args, settings)
    try:
        mix = parse_mix(args.mix, list(settings.tiers))
        input_chars = parse_size(args.input_chars)
    except ScheduleError as exc:
        raise SystemExit(f"tiergate loadtest: {exc}") from None
    from . import commands  # heavy imports (aiohttp, redis, rich, hdrh) only past argument checks

    load = commands.Load(
        args.rate, args.duration, mix, tuple(args.models.split(",")), args.arrivals, input_chars, args.seed
    )
    target = commands.Target(args.url, args.direct, args.redis, args.stream, args.deadline_ms)
    try:
        result: dict[str, Any] = _run(commands.dispatch(args, settings, target, load))
    except (commands.CoordinationError, RedisAccessError) as exc:
        raise SystemExit(f"tiergate loadtest: {exc}") from None
    if result:
        commands.finish(result, args)
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    except KeyboardInterrupt:
        sys.stderr.write("tiergate loadtest: interrupted\n")
        raise SystemExit(130) from None
