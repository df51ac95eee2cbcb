"""Redis servers some tests start beside the session's: a three-master Redis Cluster, a server
with an ACL user, one that speaks only TLS. Each is a `redis-server` child on free loopback ports
(nothing saved), run by the binary the session's fixture chose; stopped by `stop`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ops.embedded import free_port, wait_for_ping

SLOTS = 16384
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # quick to make, unlike RSA


@dataclass
class Servers:
    binary: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, port: int, *args: str) -> None:
        """A redis-server on `port` (its TCP port, or with `--port 0` its TLS port) with `args`."""
        argv = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.directory), "--loglevel", "warning", *args]
        self.processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        self.processes.clear()

    def failure(self) -> str:
        """What a server that exited at once printed (its stderr), or ""."""
        for process in self.processes:
            if process.poll() is not None and process.stderr is not None:
                return process.stderr.read().decode(errors="replace").strip()
        return ""


def start_cluster(servers: Servers, masters: int = 3, timeout_s: float = 20.0) -> list[int]:
    """A Redis Cluster of `masters` nodes, no replicas, the slots split evenly; its ports, once
    every node says `cluster_state:ok`. Slots are assigned and nodes met with CLUSTER commands,
    as `redis-cli --cluster create` does, so no redis-cli is needed."""
    ports = [_node_port() for _ in range(masters)]
    for port in ports:
        servers.start(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf")
    for port in ports:
        wait_for_ping(port)
    clients = [redis.Redis(port=port) for port in ports]
    try:
        share = SLOTS // masters
        for i, client in enumerate(clients):
            last = SLOTS if i == masters - 1 else (i + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, last))
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + timeout_s
        while not all(_ready(client, masters) for client in clients):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster on {ports} did not reach cluster_state:ok in {timeout_s} s")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return ports


def _node_port() -> int:
    """A free port whose cluster bus port (10000 above it, as Redis 6.2 fixes it) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ready(client: redis.Redis, masters: int) -> bool:
    info = client.cluster("info")
    return bool(info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == masters)


def flush_cluster(ports: list[int]) -> None:
    for port in ports:
        with contextlib.closing(redis.Redis(port=port)) as client:
            client.flushall()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost, made with the openssl CLI:
    paths of `ca`, `cert` and `key`, and of `other_ca` (a CA that signed nothing here)."""
    names = ("ca", "ca_key", "cert", "key", "csr", "other_ca", "other_key")
    paths = {name: directory / f"{name}.pem" for name in names}
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca, key in (("ca", "ca_key"), ("other_ca", "other_key")):
        _openssl("req", "-x509", *NEW_KEY, "-nodes", "-days", "2", "-subj", f"/CN=tiergate test {ca}",
                 "-keyout", str(paths[key]), "-out", str(paths[ca]))  # fmt: skip
    _openssl("req", *NEW_KEY, "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(paths["key"]), "-out", str(paths["csr"]))  # fmt: skip
    _openssl("x509", "-req", "-in", str(paths["csr"]), "-CA", str(paths["ca"]), "-CAkey", str(paths["ca_key"]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(paths["cert"]))  # fmt: skip
    return paths


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)
