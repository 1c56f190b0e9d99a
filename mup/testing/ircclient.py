"""A blocking IRC line client for tests and benchmarks: register, join, send, expect a line."""

from __future__ import annotations

import base64
import re
import socket
import time
from typing import Callable

from mup.ircmsg import decode

__all__ = ["LineClient"]


class LineClient:
    """One plain-socket IRC connection.  Answers server PINGs while it waits for lines."""

    def __init__(self, port: int, nick: str, host: str = "127.0.0.1",
                 timeout: float = 10.0) -> None:
        self.nick = nick
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.lines: list[bytes] = []
        """Every raw line received (without CR LF), in order."""

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.sock.sendall(data + b"\r\n")

    def read_raw(self, timeout: float = 10.0) -> bytes | None:
        """The next raw line with its CR LF, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError(f"{self.nick}: server closed the connection")
            self._buffer += data
        raw, _, self._buffer = self._buffer.partition(b"\n")
        raw += b"\n"
        self.lines.append(raw.rstrip(b"\r\n"))
        if raw.startswith(b"PING "):
            self.sock.sendall(b"PONG " + raw[5:])
        return raw

    def expect_raw(self, pattern: str | bytes, timeout: float = 10.0) -> bytes:
        """Read until a raw line (CR LF included) matches ``pattern``; return it."""
        regex = re.compile(pattern if isinstance(pattern, bytes) else pattern.encode("utf-8"))
        return self._read_until(regex.search, pattern, timeout)

    def expect(self, pattern: str, timeout: float = 10.0) -> str:
        """Read until a line matches the regex ``pattern``; return it decoded, without CR LF."""
        regex = re.compile(pattern)
        raw = self._read_until(lambda raw: regex.search(decode(raw.rstrip(b"\r\n"))),
                               pattern, timeout)
        return decode(raw.rstrip(b"\r\n"))

    def _read_until(self, matches: Callable[[bytes], object], pattern: str | bytes,
                    timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            raw = self.read_raw(deadline - time.monotonic())
            if raw is None:
                recent = b"\n".join(self.lines[-10:]).decode("utf-8", "replace")
                raise TimeoutError(f"{self.nick}: no line matching {pattern!r} within "
                                   f"{timeout}s; last lines:\n{recent}")
            if matches(raw):
                return raw

    def register(self, caps: tuple[str, ...] = (), sasl: tuple[str, str] | None = None,
                 timeout: float = 10.0) -> str:
        """NICK/USER (with CAP REQ and SASL PLAIN if asked); return the 001 line."""
        wanted = list(caps) + (["sasl"] if sasl else [])
        if wanted:
            self.send("CAP LS 302")
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :{self.nick} test client")
        if wanted:
            self.expect(r" CAP \S+ LS ", timeout)
            self.send("CAP REQ :" + " ".join(wanted))
            self.expect(r" CAP \S+ ACK ", timeout)
            if sasl:
                self.send("AUTHENTICATE PLAIN")
                self.expect(r"^AUTHENTICATE", timeout)
                user, password = sasl
                token = base64.b64encode(f"{user}\0{user}\0{password}".encode()).decode()
                self.send(f"AUTHENTICATE {token}")
                self.expect(r" (903|904) ", timeout)
            self.send("CAP END")
        return self.expect(r"^:\S+ 001 ", timeout)

    def join(self, channel: str, timeout: float = 10.0) -> None:
        self.send(f"JOIN {channel}")
        self.expect(rf" 366 \S+ {re.escape(channel)} ", timeout)

    def privmsg(self, target: str, text: str) -> None:
        self.send(f"PRIVMSG {target} :{text}")

    def ask(self, bot: str, text: str, timeout: float = 10.0) -> str:
        """Send ``bot`` a private message; return the text of its next PRIVMSG or NOTICE."""
        self.privmsg(bot, text)
        line = self.expect(rf"^:{re.escape(bot)}!\S+ (?:PRIVMSG|NOTICE) ", timeout)
        return line.split(" :", 1)[1]

    def close(self) -> None:
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        self.sock.close()
