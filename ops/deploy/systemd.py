"""systemd: a unit for each gateway process and a template unit for workers, instantiated per pool
(`tiergate-worker@POOL.service`), restarted on failure and given the config's shutdown grace to
stop. One environment file per pool gives its worker a /metrics port of its own. Pure; no I/O.
"""

from __future__ import annotations

from core.settings import Settings

from .common import CONFIG_DIR, CONFIG_FILE, CONFIG_PATH, HEADER, comment, gateway_args, gateways, stop_grace_s

EXEC_PATH = "/opt/tiergate/bin/tiergate"  # a virtual environment with tiergate installed
USER = "tiergate"
ENV_FILE = f"{CONFIG_DIR}/tiergate.env"  # TIERGATE_REDIS_URL=redis://... (not rendered: it holds a password)
FIRST_WORKER_PORT = 9101  # pool i of the config serves its /metrics on this port + i


def render(settings: Settings, config_text: str, exec_path: str = EXEC_PATH) -> dict[str, str]:
    files = {f"systemd/{CONFIG_FILE}": config_text}
    for gw in gateways(settings):
        description = f"tiergate {gw.name}" + (f" (tier {gw.tier} only)" if gw.tier else "")
        argv = " ".join([exec_path, *gateway_args(gw)])
        files[f"systemd/tiergate-{gw.name}.service"] = _unit(settings, description, argv, [ENV_FILE])
    worker_argv = f"{exec_path} worker --config {CONFIG_PATH} --pool %i --replicas 1"
    worker_env = [ENV_FILE, f"{CONFIG_DIR}/worker-%i.env"]
    # LimitRTPRIO lets a pool with cpu_policy = "realtime" take SCHED_FIFO without root (core/cpu.py).
    worker_unit = _unit(settings, "tiergate worker of pool %i", worker_argv, worker_env, ("LimitRTPRIO=1",))
    files["systemd/tiergate-worker@.service"] = worker_unit
    for index, pool in enumerate(settings.pools):
        lines = ["TIERGATE_METRICS_HOST=0.0.0.0", f"TIERGATE_METRICS_PORT={FIRST_WORKER_PORT + index}"]
        files[f"systemd/worker-{pool}.env"] = comment([HEADER]) + "".join(f"{line}\n" for line in lines)
    return files


def _unit(
    settings: Settings, description: str, exec_start: str, env_files: list[str], limits: tuple[str, ...] = ()
) -> str:
    service = [
        "Type=exec",
        f"User={USER}",
        f"Group={USER}",
        *(f"EnvironmentFile=-{path}" for path in env_files),
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=1s",
        "KillSignal=SIGTERM",
        # SIGTERM lets in-flight requests finish within gateway.shutdown_grace_s; then SIGKILL.
        f"TimeoutStopSec={stop_grace_s(settings)}s",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        *limits,
    ]
    sections = {
        "Unit": [
            f"Description={description}",
            "Wants=network-online.target",
            "After=network-online.target redis-server.service",
        ],
        "Service": service,
        "Install": ["WantedBy=multi-user.target"],
    }
    body = "\n".join(f"[{name}]\n" + "".join(f"{line}\n" for line in lines) for name, lines in sections.items())
    return comment([HEADER]) + body
