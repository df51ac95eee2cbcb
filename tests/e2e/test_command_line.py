"""The `tiergate` command as users type it: `config check` on good and bad files, the environment
overrides (TIERGATE_CONFIG, TIERGATE_HOST, TIERGATE_REGION) taking effect in a running stack, and
`tiergate loadtest` with `--report`, `--stream`, `--direct`, `--find-capacity` and `--agents`
against a real `tiergate up` (short runs, low rates, local only), and a Ctrl-C of a command
waiting on Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core import cpu
from core.settings import DEFAULT_CONFIG_PATH
from tests.conftest import REPO
from tests.processes import Proc, spawn, start

# Two regions, each with a pool serving every tier; the gateway's region picks which one answers.
CONFIG = """
[gateway]
shutdown_grace_s = 2.0
[tiers.realtime]
slo = { latency_ms = 5000, objective = 50.0 }
default_deadline_ms = 10000
max_queue = 10000
[tiers.interactive]
slo = { latency_ms = 5000, objective = 50.0 }
default_deadline_ms = 10000
max_queue = 10000
[tiers.batch]
slo = { latency_ms = 5000, objective = 50.0 }
default_deadline_ms = 10000
max_queue = 10000
[processors.quick]
latency = { kind = "fixed", min_ms = 1, per_token_ms = 1 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.near]
processor = "quick"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 1
[pools.far]
processor = "quick"
region = "eu"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 1
"""
OVERRIDES = ("TIERGATE_CONFIG", "TIERGATE_HOST", "TIERGATE_PORT", "TIERGATE_REGION", "TIERGATE_REDIS_URL")


def environ(**overrides: str) -> dict[str, str]:
    """This process's environment without any TIERGATE_ override, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    return env | overrides


def tiergate(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `tiergate ARGS...` to its end (`python -m ops`, the same entry point)."""
    argv = [sys.executable, "-m", "ops", *args]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env or environ(), timeout=timeout_s)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "two-regions.toml"
    path.write_text(CONFIG)
    return path


# ---------------------------------------------------------------- tiergate config check


def test_config_check_prints_the_routing_table_of_a_good_file(config: Path) -> None:
    done = tiergate("config", "check", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "TIER", "REGION", "STREAM", "POOLS", "(processor,", "mode)"]
    assert [line.split()[:5] for line in lines[1:7]] == [
        ["sim-echo", tier, region, f"tg:{{{tier}.{region}.{pool}}}:requests", pool]
        for tier in ("realtime", "interactive", "batch")
        for region, pool in (("default", "near"), ("eu", "far"))
    ]
    assert lines[-1] == f"{config}: ok (2 pools, 1 processors, 1 models)"


def test_config_check_refuses_a_bad_file_naming_the_file_and_the_key(tmp_path: Path) -> None:
    unknown = tmp_path / "typo.toml"
    unknown.write_text(CONFIG.replace("[gateway]\n", '[gateway]\nhots = "0.0.0.0"\n'))
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n")
    typo, syntax = tiergate("config", "check", str(unknown)), tiergate("config", "check", str(broken))
    assert (typo.returncode, typo.stdout) == (2, "")
    assert typo.stderr.strip() == f"{unknown}: Object contains unknown field `hots` - at `$.gateway`"
    assert (syntax.returncode, syntax.stdout) == (2, "")
    assert syntax.stderr.startswith(f"{broken}: not valid TOML")


def test_config_check_reads_TIERGATE_CONFIG_without_a_path(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.x]\nprocessor = 3\n")
    chosen = tiergate("config", "check", env=environ(TIERGATE_CONFIG=str(config)))
    assert chosen.returncode == 0 and chosen.stdout.splitlines()[-1].startswith(f"{config}: ok")
    refused = tiergate("config", "check", env=environ(TIERGATE_CONFIG=str(bad)))
    assert refused.returncode == 2 and refused.stderr.startswith(f"{bad}: ")
    default = tiergate("config", "check")
    assert default.stdout.splitlines()[-1].startswith(f"{DEFAULT_CONFIG_PATH}: ok")


@pytest.mark.parametrize("command", [("up", "--port", "0"), ("worker", "--pool", "near"), ("dlq", "list")])
def test_a_url_that_is_not_redis_is_refused_in_one_line(config: Path, command: tuple[str, ...]) -> None:
    result = tiergate(*command, "--config", str(config), "--redis-url", "bogus://x")
    assert result.returncode == 1 and result.stdout == ""
    expected = (
        f"tiergate {command[0]}: 'bogus://x' is not a Redis URL: it must start with redis://, rediss:// or unix://"
    )
    assert result.stderr.strip().splitlines()[-1] == expected and "Traceback" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling classes only")
def test_a_worker_and_a_gateway_run_at_their_cpu_priority(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "priorities.toml"
    text = CONFIG.replace("[pools.far]", 'nice = 5\ncpu_policy = "batch"\n[pools.far]')
    path.write_text(text.replace("[gateway]\n", '[gateway]\ncpu_policy = "latency"\n'))
    worker = start("worker", "--config", str(path), "--pool", "near", "--redis-url", redis_url, env=environ())
    gateway = start("gateway", "--config", str(path), "--port", "0", "--redis-url", redis_url, env=environ())
    try:
        pid = worker.process.pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH
        assert os.sched_getscheduler(gateway.process.pid) == os.SCHED_OTHER
        assert cpu.slice_ns(gateway.process.pid) == cpu.SHORTEST_SLICE_NS
    finally:
        gateway.stop()
        worker.stop()


# ---------------------------------------------------------------- environment overrides in a running stack


@pytest.fixture(scope="module")
def stack(config: Path) -> Iterator[Proc]:
    """`tiergate up` configured only through the environment: the file, the host and the region."""
    env = environ(TIERGATE_CONFIG=str(config), TIERGATE_HOST="127.0.0.2", TIERGATE_REGION="eu")
    up = start("up", "--port", "0", env=env)
    try:
        yield up
    finally:
        up.stop()


def test_the_environment_picks_the_config_the_host_and_the_region(stack: Proc) -> None:
    assert stack.url.startswith("http://127.0.0.2:")  # TIERGATE_HOST
    assert stack.ready["pools"] == {"near": 1, "far": 1}  # TIERGATE_CONFIG: pools only that file has
    status, body = _infer(stack.url, {"model": "sim-echo", "input": "where am I", "tier": "interactive"})
    assert (status, body["output"]) == (200, "I ma erehw")
    assert body["pool"] == "far"  # TIERGATE_REGION: routed to the eu pool, not the default region's
    status, body = _infer(stack.url, {"model": "sim-echo", "input": "home", "tier": "batch", "region": "default"})
    assert (status, body["pool"]) == (200, "near")  # the request's own region still wins


def _infer(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async def post() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/infer", json=body) as response:
            return response.status, await response.json()

    return asyncio.run(post())


# ---------------------------------------------------------------- tiergate loadtest against the stack


def loadtest(config: Path, *args: str) -> dict[str, Any]:
    done = tiergate("loadtest", "--config", str(config), *args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _all_ok(result: dict[str, Any]) -> None:
    rows = result["tiers"]
    assert result["sent"] > 0
    assert {tier: row["ok"] for tier, row in rows.items()} == {tier: row["sent"] for tier, row in rows.items()}


def test_loadtest_over_http_writes_its_report(stack: Proc, config: Path, tmp_path: Path) -> None:
    result = loadtest(config, "--url", stack.url, "--rate", "20", "--duration", "1", "--report", str(tmp_path))
    _all_ok(result)
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") >= 1
    assert json.loads((tmp_path / "summary.json").read_text())["sent"] == result["sent"]
    assert [p for p in tmp_path.iterdir() if p.suffix == ".png"] != []


def test_loadtest_stream_measures_time_to_first_token(stack: Proc, config: Path) -> None:
    result = loadtest(config, "--url", stack.url, "--stream", "--rate", "10", "--duration", "1",
                      "--mix", "interactive=1", "--input-chars", "32")  # fmt: skip
    _all_ok(result)
    row = result["tiers"]["interactive"]
    assert 0 < row["ttft_p50_ms"] <= row["p50_ms"]


def test_loadtest_direct_is_answered_by_the_workers(stack: Proc, config: Path) -> None:
    # Straight into the tier streams of the config's own region (the load tester is not given
    # TIERGATE_REGION): the stack's gateway takes no part, the `near` pool answers.
    result = loadtest(config, "--direct", stack.ready["redis"], "--rate", "20", "--duration", "1")
    _all_ok(result)


def test_loadtest_find_capacity_ramps_through_its_steps(stack: Proc, config: Path) -> None:
    found = loadtest(config, "--url", stack.url, "--find-capacity", "--start-rate", "5", "--step-factor", "2",
                     "--step-duration", "1", "--max-rate", "10", "--mix", "batch=1", "--seed", "7")  # fmt: skip
    assert [step["rate"] for step in found["steps"]] == [5, 10], found
    assert all(step["summary"]["slo_met"] for step in found["steps"]), found
    assert found["capacity_rate"] == 10


def test_loadtest_agents_split_the_load_and_merge_their_parts(stack: Proc, config: Path) -> None:
    redis_url = stack.ready["redis"]
    agents = [spawn("loadtest", "--config", str(config), "--agent", "--once", "--redis", redis_url,
                    env=environ()) for _ in range(2)]  # fmt: skip
    try:
        result = loadtest(config, "--url", stack.url, "--redis", redis_url, "--agents", "2", "--rate", "20",
                          "--duration", "1", "--seed", "3", "--agent-wait", "20")  # fmt: skip
        assert [agent.wait(timeout_s=30) for agent in agents] == [0, 0]
    finally:
        for agent in agents:
            agent.stop()
    _all_ok(result)


def test_ctrl_c_of_a_command_waiting_on_redis_exits_130_without_a_traceback(config: Path) -> None:
    """`tiergate dlq list` against a server that accepts and never answers, interrupted."""
    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        argv = [sys.executable, "-m", "ops", "dlq", "list", "--config", str(config)]
        argv += ["--redis-url", f"redis://127.0.0.1:{port}"]
        process = subprocess.Popen(
            argv, cwd=REPO, env=environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            mute.settimeout(30)
            connection, _ = mute.accept()
            with connection:
                connection.settimeout(30)
                assert connection.recv(4096)  # its first command: it now waits for an answer
                process.send_signal(signal.SIGINT)
                _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "tiergate dlq: interrupted" and "Traceback" not in stderr
