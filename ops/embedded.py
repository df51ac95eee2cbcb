"""A private Redis for `tiergate up` when no Redis URL is given: a `redis-server` child on a
free port (nothing saved to disk) when that binary is on PATH, otherwise fakeredis's in-process
Redis-protocol TCP server, so the stack runs on any machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time


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


class EmbeddedRedis:
    def __init__(self) -> None:
        self.kind = ""
        self.url = ""
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._fake: object | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> str:
        port = free_port()
        binary = shutil.which("redis-server")
        if binary:
            self._dir = tempfile.TemporaryDirectory(prefix="tiergate-redis-")
            self._process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
            )
            self.kind = "redis-server"
        else:
            from fakeredis import TcpFakeServer

            server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
            threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
            self._fake = server
            self.kind = "fakeredis"
        wait_for_ping(port)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        return self.url

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
