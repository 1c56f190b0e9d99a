"""A real Kannel on loopback for tests and the demo: bearerbox + smsbox + fakesmsc.

Free ports, a temporary directory, every process stopped by PID.  ``received()`` reads the
mobile-terminated SMS that reached the fake SMSC (concatenated parts joined, UCS-2 decoded);
``inject_mo(sender, receiver, text)`` makes the fake SMSC deliver an SMS to Kannel, which calls
the caller's ``get_url`` / ``post_url`` (see ../shared/notes/kannel.md for what Kannel does).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mup.testing.process import ServerProcess, free_port, require_binary, wait_for

__all__ = ["MT", "Kannel", "FAKESMSC", "require_kannel"]

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"


def require_kannel() -> None:
    """Skip (locally) or fail (CI=true) when Kannel is not installed."""
    require_binary(BEARERBOX, "kannel")
    require_binary(SMSBOX, "kannel")
    require_binary(FAKESMSC, "kannel-extras")


@dataclass(frozen=True)
class MT:
    """One SMS as the fake SMSC received it (parts of a concatenated SMS joined)."""

    sender: str
    receiver: str
    text: str
    parts: int = 1
    coding: str = "text"
    """``text`` (GSM/plain), ``ucs-2``, or ``udh`` for concatenated parts."""


_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\d+\] \[\d+\] ")
_GOT = re.compile(r"DEBUG: Got message \d+: <(.*)>$", re.S)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class Kannel:
    """bearerbox + smsbox + fakesmsc in ``directory`` (a new temporary one by default).

    ``get_url`` / ``post_url``: the sms-service URL Kannel calls for inbound SMS (Kannel
    placeholders such as ``%p`` allowed); ``service_options`` adds lines to that group, e.g.
    ``{"send-sender": "true"}``.
    """

    def __init__(self, directory: str | Path | None = None, get_url: str = "",
                 post_url: str = "", username: str = "mup", password: str = "secret",
                 max_messages: int = 10, service_options: dict[str, str] | None = None,
                 connect_smsc: bool = True) -> None:
        require_kannel()
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mup-kannel-"))
        self.get_url, self.post_url = get_url, post_url
        self.username, self.password = username, password
        self.max_messages = max_messages
        self.service_options = dict(service_options or {})
        self.connect_smsc = connect_smsc
        self.admin_password = "admin-" + password
        self.admin_port = free_port()
        self.smsbox_port = free_port()
        self.smsc_port = free_port()
        self.sendsms_port = free_port()
        self.bearerbox: ServerProcess | None = None
        self.smsbox: ServerProcess | None = None
        self.fakesmsc: ServerProcess | None = None
        self._smsc_logs: list[Path] = []
        self._injected_here = 0
        """MO sent by the current fakesmsc process (its log counts from 1)."""

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    def config(self) -> str:
        d = self.directory
        service = ["group = sms-service", "keyword = default", "catch-all = true",
                   "max-messages = 0", "omit-empty = true"]
        if self.get_url:
            service.append(f'get-url = "{_quote(self.get_url)}"')
        elif self.post_url:
            service.append(f'post-url = "{_quote(self.post_url)}"')
        else:
            service.append('text = ""')
        service += [f"{k} = {v}" for k, v in self.service_options.items()]
        return "\n".join([
            "group = core",
            f"admin-port = {self.admin_port}",
            "admin-interface = 127.0.0.1",
            f"admin-password = {self.admin_password}",
            f"smsbox-port = {self.smsbox_port}",
            "smsbox-interface = 127.0.0.1",
            "store-type = spool",
            f'store-location = "{d}/spool"',
            f'access-log = "{d}/access.log"',
            "",
            "group = smsc",
            "smsc = fake",
            "smsc-id = fake1",
            f"port = {self.smsc_port}",
            'connect-allow-ip = "127.0.0.1"',
            "",
            "group = smsbox",
            "bearerbox-host = 127.0.0.1",
            f"bearerbox-port = {self.smsbox_port}",
            f"sendsms-port = {self.sendsms_port}",
            "sendsms-interface = 127.0.0.1",
            "http-request-retry = 3",
            "http-queue-delay = 1",
            "mo-recode = true",
            "",
            "group = sendsms-user",
            f"username = {self.username}",
            f"password = {self.password}",
            f"max-messages = {self.max_messages}",
            "concatenation = true",
            "",
            *service,
            "",
        ])

    def start(self) -> Kannel:
        """Start bearerbox, smsbox and (unless ``connect_smsc=False``) the fake SMSC; return
        once sendsms answers and the SMSC is online."""
        (self.directory / "spool").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "kannel.conf"
        conf.write_text(self.config())
        self.bearerbox = ServerProcess([BEARERBOX, "-v", "1", str(conf)],
                                       self.directory / "bearerbox.log", cwd=self.directory)
        self.bearerbox.wait_for_port(self.smsbox_port)
        self.bearerbox.wait_for_port(self.admin_port)
        self.smsbox = ServerProcess([SMSBOX, "-v", "1", str(conf)],
                                    self.directory / "smsbox.log", cwd=self.directory)
        self.smsbox.wait_for_port(self.sendsms_port)
        wait_for(self.smsbox_connected, 15, "smsbox to connect to bearerbox", self.smsbox.alive)
        if self.connect_smsc:
            self.start_smsc()
        return self

    def status(self) -> str:
        """bearerbox's plain-text status page."""
        url = (f"http://127.0.0.1:{self.admin_port}/status.txt?"
               f"password={urllib.parse.quote(self.admin_password)}")
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode("utf-8", "replace")

    def smsbox_connected(self) -> bool:
        try:
            return "smsbox:" in self.status()
        except OSError:
            return False

    def smsc_online(self) -> bool:
        try:
            return bool(re.search(r"fake1\S*\s.*\(online", self.status()))
        except OSError:
            return False

    def start_smsc(self, timeout: float = 15.0) -> None:
        """Connect the fake SMSC (again); queued SMS then flow to it.  With no message
        arguments and no ``-m`` limit fakesmsc reads the SMS to inject from its stdin."""
        log = self.directory / f"fakesmsc-{len(self._smsc_logs)}.log"
        self._smsc_logs.append(log)
        self._injected_here = 0
        self.fakesmsc = ServerProcess(
            [FAKESMSC, "-H", "127.0.0.1", "-r", str(self.smsc_port), "-i", "0.01", "-m", "-1"],
            log, cwd=self.directory, stdin=subprocess.PIPE)
        wait_for(self.smsc_online, timeout, "the fake SMSC to be online",
                 self.fakesmsc.alive)

    def stop_smsc(self, timeout: float = 15.0) -> None:
        """Disconnect the fake SMSC: sendsms then answers ``3: Queued for later delivery``."""
        if self.fakesmsc is not None:
            self.fakesmsc.stop()
            self.fakesmsc = None
        wait_for(lambda: not self.smsc_online(), timeout, "the fake SMSC to go offline")

    def inject_mo(self, sender: str, receiver: str, text: str) -> None:
        """The fake SMSC delivers an SMS from ``sender`` to ``receiver`` (mobile-originated).
        Text outside plain ASCII goes as UCS-2; newlines cannot be injected."""
        if self.fakesmsc is None or self.fakesmsc.proc.stdin is None:
            raise RuntimeError("the fake SMSC is not running")
        if any(c in text for c in "\r\n"):
            raise ValueError("fakesmsc takes one line per SMS: no newlines")
        if text.isascii():
            line = f"{sender} {receiver} text {text}\n"
        else:
            line = f"{sender} {receiver} ucs2 {urllib.parse.quote(text.encode('utf-16-be'))}\n"
        # fakesmsc takes one line per read: write the next only once it sent the last.
        self.fakesmsc.proc.stdin.write(line.encode())
        self.fakesmsc.proc.stdin.flush()
        wanted = f"fakesmsc: sent message {self._injected_here + 1}"
        fakesmsc = self.fakesmsc
        wait_for(lambda: wanted in fakesmsc.output(), 10, "fakesmsc to send the MO",
                 fakesmsc.alive)
        self._injected_here += 1

    def received(self) -> list[MT]:
        """Every SMS the fake SMSC received so far, in order, concatenated parts joined."""
        entries: list[str] = []
        for log in self._smsc_logs:
            try:
                text = log.read_text("utf-8", errors="replace")
            except OSError:
                continue
            current: list[str] | None = None
            for line in text.split("\n"):
                if _ENTRY.match(line):
                    if current is not None:
                        entries.append("\n".join(current))
                    current = [line] if "DEBUG: Got message" in line else None
                elif current is not None:
                    current.append(line)
            if current is not None:
                entries.append("\n".join(current))
        out: list[MT] = []
        pending: dict[tuple[str, str, int], dict[int, bytes]] = {}
        for entry in entries:
            m = _GOT.search(entry)
            if not m:
                continue
            sender, receiver, kind, rest = (m.group(1).split(" ", 3) + ["", "", "", ""])[:4]
            if kind == "text":
                out.append(MT(sender, receiver, rest))
            elif kind in ("ucs-2", "ucs2"):
                out.append(MT(sender, receiver, _unquote(rest).decode("utf-16-be", "replace"),
                              coding="ucs-2"))
            elif kind == "udh":
                udh_text, _, data_text = rest.partition(" data ")
                udh = _unquote(udh_text)
                data = _unquote(data_text)
                if len(udh) >= 6 and udh[1] == 0x00:
                    ref, total, seq = udh[3], udh[4], udh[5]
                    key = (sender, receiver, ref)
                    pending.setdefault(key, {})[seq] = data
                    if len(pending[key]) == total:
                        parts = pending.pop(key)
                        joined = b"".join(parts[i] for i in sorted(parts))
                        out.append(MT(sender, receiver, _decode(joined), total, "udh"))
                else:
                    out.append(MT(sender, receiver, _decode(data), 1, "udh"))
        return out

    def wait_for_received(self, count: int, timeout: float = 15.0) -> list[MT]:
        """Wait until ``count`` SMS reached the fake SMSC; return them all."""
        wait_for(lambda: len(self.received()) >= count, timeout,
                 f"{count} SMS at the fake SMSC")
        return self.received()

    def stop(self) -> None:
        """Stop every process by PID; safe to call twice."""
        for proc in (self.fakesmsc, self.smsbox, self.bearerbox):
            if proc is not None:
                proc.stop()
        self.fakesmsc = None

    def __enter__(self) -> Kannel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unquote(text: str) -> bytes:
    return urllib.parse.unquote_to_bytes(text.replace("+", " "))


def _decode(data: bytes) -> str:
    """Concatenated parts come as raw bytes: UTF-16BE for UCS-2 (it has NULs for Latin text),
    the text itself otherwise."""
    if b"\x00" in data and len(data) % 2 == 0:
        return data.decode("utf-16-be", "replace")
    return data.decode("utf-8", "replace")

