"""Workers never import aiohttp's server side: they depend on the protocol and settings only."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_worker_modules_do_not_import_the_http_server() -> None:
    code = (
        "import sys, workers.process, workers.executor, workers.consumer, workers.batcher, workers.backends.simulated\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'gateway.app', 'gateway.handlers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
