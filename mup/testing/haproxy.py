"""A real haproxy on 127.0.0.1 in front of N HTTP backends (relays), for tests and benchmarks.

``haproxy -f FILE -db`` runs in the foreground as a child process, stopped by PID.  Backends
are health-checked with ``GET /healthz`` (a 503 takes one out of the rotation), and a stats
socket lets a test wait until a backend is UP or DOWN instead of sleeping.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Sequence

from mup.testing.process import ServerProcess, free_port, require_binary, wait_for

__all__ = ["HAPROXY", "Haproxy"]

HAPROXY = "/usr/sbin/haproxy"

_CONF = """\
global
  maxconn 1024
  stats socket {socket} mode 600 level admin
defaults
  mode http
  option http-keep-alive
  timeout connect 2s
  timeout client {timeout}
  timeout server {timeout}
  retries 2
  option redispatch
frontend in
  bind 127.0.0.1:{port}
  default_backend relays
backend relays
  balance roundrobin
  option httpchk GET {check}
  http-check expect status 200
{servers}
"""


class Haproxy:
    """haproxy on ``port`` balancing round-robin over ``backends`` (ports on 127.0.0.1),
    named ``r1``, ``r2``, ... in order."""

    def __init__(self, directory: Path | str, backends: Sequence[int], port: int | None = None,
                 check: str = "/healthz", timeout: str = "60s", inter: str = "200ms") -> None:
        self.dir = Path(directory)
        self.backends = list(backends)
        self.port = port or free_port()
        self.check = check
        self.timeout = timeout
        """Client and server timeouts: longer than the relay's longest pull."""
        self.inter = inter
        self.conf = self.dir / "haproxy.cfg"
        self.socket = self.dir / "haproxy.sock"
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def names(self) -> list[str]:
        return [f"r{i}" for i in range(1, len(self.backends) + 1)]

    def start(self, timeout: float = 10.0) -> Haproxy:
        binary = require_binary(HAPROXY, "haproxy")
        self.dir.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"  server {name} 127.0.0.1:{port} check inter {self.inter} fall 2 rise 1"
            for name, port in zip(self.names(), self.backends, strict=True))
        self.conf.write_text(_CONF.format(socket=self.socket, timeout=self.timeout,
                                          port=self.port, check=self.check, servers=servers))
        self.process = ServerProcess([binary, "-f", str(self.conf), "-db"],
                                     self.dir / "haproxy.log")
        self.process.wait_for_port(self.port, timeout)
        wait_for(self.socket.exists, timeout, "haproxy's stats socket", self.alive)
        return self

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ``disable server relays/r1``...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self) -> dict[str, str]:
        """Each backend server's state as haproxy sees it: ``UP``, ``DOWN``, ``UP 1/2``..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "relays" and row.get("svname") not in ("BACKEND", None):
                states[row["svname"]] = row["status"]
        return states

    def wait_for_status(self, server: str, status: str, timeout: float = 15.0) -> None:
        """Wait until haproxy's health checks put ``server`` in ``status`` (``UP``/``DOWN``)."""
        wait_for(lambda: self.status().get(server) == status, timeout,
                 f"haproxy to see {server} {status}", self.alive)

    def alive(self) -> bool:
        return bool(self.process and self.process.alive())

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
