"""One package per role, imports flowing one way: every module of every package is parsed and each
import (`import X`, `from X import`, relative ones resolved, inside functions too) checked against
the allowed arrows. Workers also never load aiohttp's server side, nor the gateway, at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

# package -> the packages of ours it may import (besides itself). bench/ and tests/ may import anything.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "gateway": frozenset({"core"}),
    "workers": frozenset({"core"}),
    "loadtest": frozenset({"core", "gateway"}),
    "ops": frozenset({"core", "gateway", "workers", "loadtest"}),
}
FREE = {"bench", "tests"}


def modules(root: Path, package: str) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every module under `root/package`."""
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        yield ".".join(parts), path


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in one module, relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module or "", node.lineno
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                yield ".".join([*base, node.module]), node.lineno
            else:  # `from . import a, b`: each name may be a module of its own
                for alias in node.names:
                    yield ".".join([*base, alias.name]), node.lineno


def forbidden_arrows(root: Path) -> list[str]:
    """Each import that crosses packages against ALLOWED, as 'importer -> imported (path:line)'."""
    found = []
    for package, allowed in ALLOWED.items():
        for module, path in modules(root, package):
            for target, line in imported(module, path):
                top = target.split(".")[0]
                if top in ALLOWED and top != package and top not in allowed:
                    found.append(f"{package} -> {top}: {module} imports {target} ({path.relative_to(root)}:{line})")
    return found


def test_every_import_between_packages_follows_an_allowed_arrow() -> None:
    assert forbidden_arrows(REPO) == []


def test_every_package_of_the_repository_is_checked() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages - FREE == set(ALLOWED)
    assert all(any(modules(REPO, package)) for package in ALLOWED)


def test_the_check_names_arrows_the_wrong_way(tmp_path: Path) -> None:
    files = {
        "core/__init__.py": "",
        "core/clock.py": "from gateway import app\n",
        "gateway/__init__.py": "",
        "gateway/app.py": "from core import clock\nfrom .queue import q\n",
        "gateway/queue.py": "def f() -> None:\n    import ops.cli\n",
        "workers/__init__.py": "",
        "workers/backends/__init__.py": "",
        "workers/backends/sim.py": "from ...gateway.slo import x\nfrom .. import consumer\n",
        "loadtest/__init__.py": "from gateway.results import Waiters\nfrom workers import process\n",
        "ops/__init__.py": "from loadtest import cli\nfrom workers import process\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    arrows = [line.split(":")[0] for line in forbidden_arrows(tmp_path)]
    assert arrows == ["core -> gateway", "gateway -> ops", "workers -> gateway", "loadtest -> workers"]


def test_worker_modules_do_not_import_the_http_server() -> None:
    code = (
        "import sys, workers.process, workers.executor, workers.consumer, workers.batcher, workers.backends.simulated\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'gateway', 'loadtest', 'ops'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_store_modules_of_the_gateway_talk_to_redis() -> None:
    """The gateway's Redis I/O lives in `queue.py` (the request path), `slo_store.py` (the SLO
    counters), `tenant_store.py` (API keys and their limits) and `batch_store.py` (the Batch API's
    files, batch records, line outcomes and leases, which the request path has no part in); `app.py`
    creates and closes the client and `state.py` holds it. Any other module may catch Redis's errors,
    never hold a client."""
    allowed = {
        "gateway.queue",
        "gateway.slo_store",
        "gateway.tenant_store",  # API key records and each key's limit counters (Lua scripts)
        "gateway.batch_store",  # the Batch API's files, batch records, line outcomes and leases
        "gateway.app",
        "gateway.state",
    }
    talking = set()
    for path in sorted((REPO / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("redis.asyncio", "redis.client")):
                talking.add(".".join(path.relative_to(REPO).with_suffix("").parts))
            if isinstance(node, ast.Import) and any(a.name.startswith("redis") for a in node.names):
                talking.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert talking <= allowed, f"gateway modules holding a Redis client: {sorted(talking - allowed)}"
