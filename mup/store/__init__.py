"""What mup keeps: the interface its storage backends implement, and the types they share.

Two kinds of storage sit behind these seams:

* a :class:`MessageStore`: inbound messages accepted from a gateway (or pulled from a relay),
  durable before the gateway's 2xx, deduplicated by key, handed out in order and deleted once
  delivered.  The webhook receiver appends, delivery and the relay read and mark done.
* a :class:`StateStore`: small tables of key/value state (SMS budget, reply routes, outbox,
  channels joined, ignores), written behind the caller's back and read once at start-up.

Backends: :mod:`mup.store.sqlite` (one process per database file) and
:mod:`mup.store.postgres` (any number of relays on one database).  Every method that touches
the disk or the network returns a Deferred and runs off the reactor thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from twisted.internet.defer import Deferred

__all__ = [
    "Backlog",
    "Entry",
    "MessageStore",
    "StateStore",
    "StoreClosed",
    "StoreError",
    "StoreOpenError",
]


class StoreError(Exception):
    """The store could not make a record durable now (disk full, database gone): answer 503
    and let the sender retry; the store recovers by itself once the cause is gone."""


class StoreClosed(StoreError):
    """The store was closed (shutting down) before the record was written."""


class StoreOpenError(Exception):
    """The store cannot be opened at all: not writable, not a database, a newer schema, held by
    another process.  The message is one line naming the path (or key) and what is wrong; the
    caller prints it and exits 1, never a traceback."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted message: its place in the store, dedupe key, content and accept time.

    ``seq`` grows in commit order within one store (an entry with a smaller ``seq`` never
    becomes visible after a larger one was handed out), so ``pending(after=seq)`` is a cursor."""

    seq: int
    key: str
    record: dict[str, Any]
    appended: float


@dataclass(frozen=True, slots=True)
class Backlog:
    """How much is waiting: messages accepted and not yet done, and the oldest one's time."""

    count: int
    oldest: float | None


@runtime_checkable
class MessageStore(Protocol):
    """A durable, deduplicating, ordered queue of inbound messages."""

    epoch: str
    """Names this store's sequence space; a cursor from another store (or from before the store
    was recreated) carries a different epoch.  Kept in the store, not drawn per process."""

    def append(self, key: str, record: dict[str, Any]) -> Deferred[Entry | None]:
        """Store ``record`` under ``key``; fire with its Entry once it is committed, or with None
        when the key was stored before within the dedupe window (pending, or done and not yet
        expired).  Fails with StoreError when it cannot be made durable now."""

    def pending(self, after: int = 0, limit: int | None = None) -> Deferred[list[Entry]]:
        """Entries not yet done with ``seq > after``, in ``seq`` order, at most ``limit``."""

    def lookup(self, keys: Iterable[str]) -> Deferred[dict[str, int]]:
        """The ``seq`` of each of ``keys`` that is pending (keys done or never seen are left
        out): the relay acknowledges by key."""

    def mark_done(self, seqs: Iterable[int]) -> Deferred[None]:
        """Record that these entries were delivered; they leave ``pending()`` for good.  Their
        dedupe keys stay for the dedupe window."""

    def backlog(self) -> Deferred[Backlog]:
        """Entries not yet done, and the oldest one's accept time."""

    def writable(self) -> bool:
        """False while appends would fail (disk full, database gone): the receiver answers 503
        without trying.  Comes back by itself."""

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the reactor thread) soon after any writer, in this process or
        another, committed new entries.  Returns a function that unsubscribes."""

    def close(self) -> Deferred[None]:
        """Stop: appends not yet committed fail with StoreClosed; release the database."""


@runtime_checkable
class StateStore(Protocol):
    """Small named tables of JSON values, for state that must survive a restart."""

    def load(self, table: str) -> Deferred[dict[str, Any]]:
        """Every key and value in ``table`` (empty if it has none)."""

    def put(self, table: str, key: str, value: Any) -> Deferred[None]:
        """Set ``key`` to ``value`` (JSON-able) in ``table``; fires once committed."""

    def delete(self, table: str, key: str) -> Deferred[None]:
        """Remove ``key`` from ``table`` (no error if absent); fires once committed."""

    def close(self) -> Deferred[None]:
        """Commit what is queued and release the database."""
