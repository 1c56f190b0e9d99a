"""Who runs the bot and whom it ignores: operators, the ignore list and channels joined from IRC.

Operators are services accounts (``[admin] accounts``) or, on networks without services,
hostmasks (``[admin] hostmasks``).  The ignore list and the channels joined or parted with admin
commands are kept in the state store, so they survive a restart.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mup.commands import Sender
from mup.config import Config
from mup.store import StateStore

__all__ = ["ChannelControl", "Channels", "Gate", "Ignore", "IgnoreList", "Operators", "to_mask"]

log = Logger()

IGNORES = "ignores"
CHANNELS = "channels"


def to_mask(text: str) -> str:
    """A ``nick!user@host`` glob for ``text``: a bare nick ignores that nick from anywhere."""
    text = text.strip()
    if "!" in text or "@" in text:
        if "!" not in text:
            text = "*!" + text
        if "@" not in text:
            text = text + "@*"
        return text.lower()
    return f"{text}!*@*".lower()


class Operators:
    """Who may use admin commands: a services account in ``accounts`` or a ``nick!user@host``
    matching one of ``hostmasks``.  Nobody, by default."""

    def __init__(self, accounts: Iterable[str] = (), hostmasks: Iterable[str] = ()) -> None:
        self.accounts = frozenset(a.lower() for a in accounts)
        self.hostmasks = tuple(m.lower() for m in hostmasks)

    @classmethod
    def from_config(cls, config: Config) -> Operators:
        admin = config.section("admin")
        return cls(admin.accounts, admin.hostmasks)

    @property
    def needs_account(self) -> bool:
        """Whether checking someone means resolving their services account."""
        return bool(self.accounts)

    def allows(self, hostmask: str, account: str | None) -> bool:
        if account is not None and account.lower() in self.accounts:
            return True
        host = hostmask.lower()
        return bool(host) and any(fnmatch.fnmatchcase(host, m) for m in self.hostmasks)


@dataclass(frozen=True)
class Ignore:
    """One entry of the ignore list: a hostmask glob, until when (None: for ever), and who
    added it."""

    mask: str
    until: float | None
    by: str


class IgnoreList:
    """Hostmask globs whose commands get no answer and whose SMS are not sent.

    Kept in ``store`` (table ``ignores``) when one is given; expired entries are dropped as
    they are met."""

    def __init__(self, clock: IReactorTime, store: StateStore | None = None) -> None:
        self._clock = clock
        self._store = store
        self._entries: dict[str, Ignore] = {}

    def load(self) -> Deferred[None]:
        """Read the list kept in the store (once, at start-up)."""
        if self._store is None:
            return succeed(None)

        def loaded(rows: dict[str, Any]) -> None:
            for mask, value in rows.items():
                if not isinstance(value, dict):
                    continue
                until = value.get("until")
                self._entries[mask] = Ignore(
                    mask, float(until) if isinstance(until, (int, float)) else None,
                    str(value.get("by", "")))

        return self._store.load(IGNORES).addCallback(loaded)

    def add(self, mask: str, duration: float | None, by: str) -> Ignore:
        """Ignore ``mask`` (a nick or a glob) for ``duration`` seconds, or for ever."""
        mask = to_mask(mask)
        until = None if duration is None else self._clock.seconds() + duration
        entry = self._entries[mask] = Ignore(mask, until, by)
        self._save(entry)
        return entry

    def remove(self, mask: str) -> Ignore | None:
        entry = self._entries.pop(to_mask(mask), None)
        if entry is not None and self._store is not None:
            self._store.delete(IGNORES, entry.mask).addErrback(
                lambda f: log.failure("could not forget ignore {mask}", f, mask=entry.mask))
        return entry

    def entries(self) -> list[Ignore]:
        self._expire()
        return sorted(self._entries.values(), key=lambda e: e.mask)

    def matches(self, hostmask: str) -> bool:
        """Whether ``nick!user@host`` is ignored now."""
        if not self._entries:
            return False
        self._expire()
        host = hostmask.lower()
        return any(fnmatch.fnmatchcase(host, m) for m in self._entries)

    def _expire(self) -> None:
        now = self._clock.seconds()
        for entry in [e for e in self._entries.values()
                      if e.until is not None and e.until <= now]:
            self.remove(entry.mask)

    def _save(self, entry: Ignore) -> None:
        if self._store is not None:
            self._store.put(IGNORES, entry.mask, {"until": entry.until, "by": entry.by}
                            ).addErrback(lambda f: log.failure(
                                "could not keep ignore {mask}", f, mask=entry.mask))


class ChannelControl(Protocol):
    """What the channel commands need from IRC: join and part (the IRC service provides it)."""

    def join(self, channel: str, key: str | None = None) -> None: ...

    def part(self, channel: str, reason: str | None = None) -> None: ...


class Channels:
    """Channels joined and parted from IRC, on top of ``[irc] channels``, kept in ``store``
    (table ``channels``: ``{"joined": true, "key": ...}`` or ``{"joined": false}``)."""

    def __init__(self, configured: Iterable[str], store: StateStore | None = None) -> None:
        self.configured = [c for c in configured]
        self._store = store
        self._changes: dict[str, dict[str, Any]] = {}

    def load(self) -> Deferred[None]:
        if self._store is None:
            return succeed(None)

        def loaded(rows: dict[str, Any]) -> None:
            self._changes = {k.lower(): v for k, v in rows.items() if isinstance(v, dict)}

        return self._store.load(CHANNELS).addCallback(loaded)

    def wanted(self) -> dict[str, str | None]:
        """Every channel the bot should be in, with its key (None: no key)."""
        out: dict[str, str | None] = {c.lower(): None for c in self.configured}
        for channel, change in self._changes.items():
            if change.get("joined"):
                key = change.get("key")
                out[channel] = key if isinstance(key, str) and key else None
            else:
                out.pop(channel, None)
        return out

    def joined(self, channel: str, key: str | None) -> None:
        self._set(channel.lower(), {"joined": True, "key": key or ""})

    def parted(self, channel: str) -> None:
        self._set(channel.lower(), {"joined": False})

    def _set(self, channel: str, value: dict[str, Any]) -> None:
        self._changes[channel] = value
        if self._store is not None:
            self._store.put(CHANNELS, channel, value).addErrback(lambda f: log.failure(
                "could not remember channel {channel}", f, channel=channel))


class Gate:
    """The command framework's gate (:class:`mup.commands.Gate`): operators from ``[admin]``
    (swapped on reload), and the ignore list, which never applies to an operator."""

    def __init__(self, operators: Operators, ignores: IgnoreList) -> None:
        self.operators = operators
        self.ignores = ignores

    def is_operator(self, request: Sender) -> bool:
        return self.operators.allows(request.hostmask, request.account)

    def is_ignored(self, request: Sender) -> bool:
        return self.ignores.matches(request.hostmask) and not self.is_operator(request)
