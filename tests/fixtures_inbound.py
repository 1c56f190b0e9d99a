"""Fixtures and small fakes for the inbound tests (webhook, routing, delivery)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from mup.config import parse

__all__ = ["FakeJournal", "JEntry", "inbound_config", "make_config"]

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
class FakeJournal:
    """The journal contract in memory: append dedupes keys; ``hold`` keeps appends unfired
    (as if fsync had not returned yet); ``broken`` makes them fail."""

    entries: dict[str, JEntry] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    hold: bool = False
    broken: bool = False
    is_writable: bool = True
    held: list[Deferred] = field(default_factory=list)

    def append(self, key: str, record: dict) -> Deferred:
        if self.broken:
            return fail(OSError(28, "No space left on device"))
        if key in self.entries:
            return succeed(None)
        entry = JEntry(len(self.entries) + 1, key, record)
        self.entries[key] = entry
        if self.hold:
            d: Deferred = Deferred()
            self.held.append((d, entry))
            return d
        return succeed(entry)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, entry in held:
            d.callback(entry)

    def mark_done(self, seq: int) -> Deferred:
        self.done.add(seq)
        return succeed(None)

    def pending(self) -> list[JEntry]:
        return [e for e in sorted(self.entries.values(), key=lambda e: e.seq)
                if e.seq not in self.done]

    @property
    def backlog(self) -> int:
        return len(self.pending())

    def writable(self) -> bool:
        return self.is_writable
