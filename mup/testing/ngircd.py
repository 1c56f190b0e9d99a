"""A real ngircd on 127.0.0.1 in a temp dir: start, stop, kill and restart on the same port.

ngircd's own flood control never drops a client: it handles at most 3 of its commands per
read pass (or 256 bytes a second) and then stops reading it for 1 s, so more than ~3 lines/s
sustained piles up in ngircd's socket buffer.  ``max_penalty_time=0`` turns that off
(benchmarks only: tests that prove mup's own flood control keep the default).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mup.testing.process import ServerProcess, free_port, require_binary

__all__ = ["NGIRCD", "Ngircd"]

NGIRCD = "/usr/sbin/ngircd"

_CONF = """\
[Global]
Name = {name}
Info = mup test server
Listen = 127.0.0.1
Ports = {port}
AdminInfo1 = mup tests
AdminInfo2 = loopback
AdminEMail = nobody@{name}
MotdPhrase = mup test server

[Limits]
MaxConnectionsIP = 0
PingTimeout = {ping_timeout}
PongTimeout = {pong_timeout}
MaxNickLength = 30
{penalty}
[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {dir}/conf.d
{ssl}"""

_SSL = """
[SSL]
CertFile = {cert}
KeyFile = {key}
Ports = {tls_port}
"""


class Ngircd:
    """One ngircd listening on ``port`` (a free one by default)."""

    def __init__(self, directory: Path | str, port: int | None = None, name: str = "irc.test",
                 max_penalty_time: int | None = None, ping_timeout: int = 120,
                 pong_timeout: int = 20, tls_cert: Path | str | None = None,
                 tls_key: Path | str | None = None, tls_port: int | None = None) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.name = name
        self.max_penalty_time = max_penalty_time
        self.ping_timeout = ping_timeout
        self.pong_timeout = pong_timeout
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_port = (tls_port or free_port()) if tls_cert else None
        """With ``tls_cert`` and ``tls_key`` (PEM): a TLS port beside the plain one."""
        self.process: ServerProcess | None = None
        self.conf = self.dir / "ngircd.conf"
        self._starts = 0

    @property
    def endpoint(self) -> str:
        """The Twisted client endpoint string for this server."""
        return f"tcp:host=127.0.0.1:port={self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _write_config(self) -> None:
        (self.dir / "conf.d").mkdir(parents=True, exist_ok=True)
        penalty = ("" if self.max_penalty_time is None
                   else f"MaxPenaltyTime = {self.max_penalty_time}\n")
        ssl = (_SSL.format(cert=self.tls_cert, key=self.tls_key, tls_port=self.tls_port)
               if self.tls_cert else "")
        self.conf.write_text(_CONF.format(
            name=self.name, port=self.port, dir=self.dir, penalty=penalty, ssl=ssl,
            ping_timeout=self.ping_timeout, pong_timeout=self.pong_timeout))

    def start(self, timeout: float = 10.0) -> Ngircd:
        """Start (or restart, on the same port) and wait until it listens."""
        binary = require_binary(NGIRCD, "ngircd")
        self._write_config()
        self._starts += 1
        self.process = ServerProcess([binary, "-n", "-f", str(self.conf)],
                                     self.dir / f"ngircd-{self._starts}.log")
        self.process.wait_for_output(f"Now listening on [127.0.0.1]:{self.port}", timeout)
        if self.tls_port:
            self.process.wait_for_output(f"Now listening on [127.0.0.1]:{self.tls_port}",
                                         timeout)
        return self

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL if it lingers); safe to call twice."""
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word (a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def processes(self) -> list[ServerProcess]:
        return [self.process] if self.process is not None else []

    def output(self) -> str:
        return self.process.output() if self.process is not None else ""

    def __enter__(self) -> Ngircd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
