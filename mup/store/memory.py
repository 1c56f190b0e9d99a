"""A StateStore that keeps nothing across restarts: for ``[state] directory = ""`` and tests."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mup.store import StoreClosed

__all__ = ["MemoryStateStore"]


class MemoryStateStore:
    """Tables in a dict; every Deferred has fired when it is returned."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        self.closed = False

    def load(self, table: str) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(dict(self.tables.get(table, {})))

    def put(self, table: str, key: str, value: Any) -> defer.Deferred[None]:
        if self.closed:
            return defer.fail(StoreClosed("the state store is closed"))
        self.tables.setdefault(table, {})[key] = value
        return defer.succeed(None)

    def delete(self, table: str, key: str) -> defer.Deferred[None]:
        if self.closed:
            return defer.fail(StoreClosed("the state store is closed"))
        self.tables.get(table, {}).pop(key, None)
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)
