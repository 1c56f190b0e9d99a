"""Fixtures and small fakes for the inbound tests (webhook, routing, delivery)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from mup.config import parse
from mup.directory import Person
from mup.store import Backlog, StoreClosed, StoreError
from mup.testing.ircclient import LineClient
from mup.testing.ngircd import Ngircd

__all__ = ["FakeDirectory", "FakeIRC", "FakeStore", "JEntry", "JOE", "NIEMEYER",
           "inbound_config", "make_config", "relay_bot_config", "watch_ops"]

KANNEL_TOKEN = "kannel-secret"
TWILIO_TOKEN = "12345"
PUBLIC_URL = "https://mup.example.com"


def make_config(**sections: dict) -> Any:
    """A validated config with the inbound secrets set; ``sections`` override tables."""
    data: dict = {
        "irc": {"nick": "mup", "channels": ["#ops", "#dev"]},
        "webhook": {"endpoint": "tcp:port=0:interface=127.0.0.1", "public_url": PUBLIC_URL,
                    "max_body": 2048},
        "sms": {"default_region": "GB"},
        "sms.kannel": {"inbound_token": KANNEL_TOKEN},
        "sms.twilio": {"auth_token": TWILIO_TOKEN},
        "inbound": {"default_channel": "#ops"},
    }
    for name, table in sections.items():
        data.setdefault(name.replace("__", "."), {}).update(table)
    nested: dict = {}
    for name, table in data.items():
        head, _, tail = name.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = table
        else:
            nested.setdefault(head, {}).update(table)
    return parse(nested, "<test>", environ={})


@pytest.fixture
def inbound_config() -> Any:
    return make_config()


@dataclass
class JEntry:
    seq: int
    key: str
    record: dict
    appended: float = 0.0


@dataclass
class FakeStore:
    """The MessageStore contract in memory: append dedupes keys; ``hold`` keeps appends
    unfired (as if the commit had not returned yet); ``broken`` makes them fail;
    ``unreadable`` makes ``backlog`` fail (a database that is down)."""

    entries: dict[str, JEntry] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    hold: bool = False
    broken: bool = False
    unreadable: bool = False
    is_writable: bool = True
    held: list[Deferred] = field(default_factory=list)
    subscribers: list[Any] = field(default_factory=list)
    epoch: str = "e1"
    clock: Any = None

    closed: bool = False

    def append(self, key: str, record: dict) -> Deferred:
        if self.closed:
            return fail(StoreClosed("the store was closed"))
        if self.broken:
            return fail(StoreError("database or disk is full"))
        if key in self.entries:
            return succeed(None)
        entry = JEntry(len(self.entries) + 1, key, record,
                       self.clock.seconds() if self.clock is not None else 0.0)
        self.entries[key] = entry
        if self.hold:
            d: Deferred = Deferred()
            self.held.append((d, entry))
            return d
        self._notify()
        return succeed(entry)

    def _notify(self) -> None:
        for callback in list(self.subscribers):
            callback()

    def release(self) -> None:
        held, self.held = self.held, []
        for d, entry in held:
            d.callback(entry)
        self._notify()

    def mark_done(self, seqs: Any) -> Deferred:
        self.done.update(seqs)
        return succeed(None)

    def _pending(self) -> list[JEntry]:
        held = {id(e) for _, e in self.held}
        return [e for e in sorted(self.entries.values(), key=lambda e: e.seq)
                if e.seq not in self.done and id(e) not in held]

    def pending(self, after: int = 0, limit: int | None = None) -> Deferred:
        entries = [e for e in self._pending() if e.seq > after]
        return succeed(entries if limit is None else entries[:limit])

    def lookup(self, keys: Any) -> Deferred:
        pending = {e.key: e.seq for e in self._pending()}
        return succeed({k: pending[k] for k in keys if k in pending})

    def backlog(self) -> Deferred:
        if self.unreadable:
            return fail(StoreError("connection refused"))
        pending = self._pending()
        return succeed(Backlog(len(pending), min((e.appended for e in pending), default=None)))

    def writable(self) -> bool:
        return self.is_writable

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


NIEMEYER = Person("niemeyer", "Gustavo Niemeyer", "n@example.com",
                  (("mobile", "+447911123456"),), "+447911123456", "")
JOE = Person("joe", "Joe Bloggs", "joe@example.com", (), "+447911654321", "")


class FakeDirectory:
    """The directory contract over a list of people; ``broken`` makes lookups fail."""

    def __init__(self, people: list[Person], broken: bool = False) -> None:
        self.people = people
        self.broken = broken

    def by_phone(self, number: str) -> Deferred:
        if self.broken:
            from mup.directory import DirectoryError

            return fail(DirectoryError("server down"))
        return succeed(next((p for p in self.people if p.mobile == number), None))

    def by_nick(self, nick: str) -> Deferred:
        if self.broken:
            return fail(RuntimeError("server down"))
        return succeed(next((p for p in self.people if p.nick.lower() == nick.lower()), None))


class NotDelivered(Exception):
    """Stands in for mup.irc.NotDelivered in unit tests."""


class FakeIRC:
    """The IRC contract: ``deliver`` records (target, lines) and answers per ``mode``:
    "confirm" at once, "hold" until ``confirm()``, "fail" with NotDelivered.  It refuses
    any line carrying CR, LF or NUL, as a real server connection would be broken by one."""

    def __init__(self, present: tuple[str, ...] = ()) -> None:
        self.connected = True
        self.mode = "confirm"
        self.present = set(present)
        self.attempts: list[tuple[str, list[str]]] = []
        self.shown: list[tuple[str, str]] = []
        self.held: list[tuple[Deferred, str, list[str]]] = []
        self._waiters: list[Deferred] = []

    def is_present(self, nick: str) -> bool:
        return nick.lower() in self.present

    def when_connected(self) -> Deferred:
        if self.connected:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def connect(self) -> None:
        self.connected = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def deliver(self, target: str, lines, notice: bool = False) -> Deferred:
        lines = [lines] if isinstance(lines, str) else list(lines)
        if not target or " " in target:
            return fail(ValueError(f"not an IRC target: {target!r}"))
        for line in lines:
            assert not any(c in line for c in "\r\n\0"), repr(line)
        self.attempts.append((target, lines))
        if not self.connected or self.mode == "fail":
            return fail(NotDelivered("no PONG"))
        if self.mode == "hold":
            d: Deferred = Deferred()
            self.held.append((d, target, lines))
            return d
        self.shown += [(target, line) for line in lines]
        return succeed(None)

    def confirm(self, n: int | None = None) -> None:
        take = self.held if n is None else self.held[:n]
        self.held = [] if n is None else self.held[n:]
        for d, target, lines in take:
            self.shown += [(target, line) for line in lines]
            d.callback(None)


def relay_bot_config(tmp_path: Path, ngircd: Ngircd, relay_url: str, token: str
                     ) -> dict[str, dict[str, Any]]:
    """A bot that pulls from a relay (or a load balancer of relays) into #ops, unthrottled."""
    return {
        "irc": {"endpoint": ngircd.endpoint, "nick": "mupbot", "channels": ["#ops"],
                "line_rate": 0.0},
        "webhook": {"journal": str(tmp_path / "bot-journal")},
        "inbound": {"default_channel": "#ops", "relay_url": relay_url, "relay_token": token,
                    "hint": False},
        "state": {"directory": str(tmp_path / "bot-state")},
    }


def watch_ops(irc_client: Callable[..., LineClient], ngircd: Ngircd) -> LineClient:
    """A client in #ops, to see what the bot shows there."""
    watcher = irc_client(ngircd.port, "watcher")
    watcher.join("#ops")
    return watcher
