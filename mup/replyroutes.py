"""Reply routes: who last sent an SMS to a number through mup, so its answer reaches them.

``joe`` runs ``@sms niemeyer ...``; when niemeyer's phone answers within ``reply_window`` the
answer goes to joe privately.  The table is small: kept in memory, read from the state store's
``routes`` table at start-up and written behind each ``record`` (nothing on the sending path
waits for the disk).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.store import StateStore
from mup.store.table import StateTable, import_file

__all__ = ["ReplyRoutes"]

log = Logger()

TABLE = "routes"
LEGACY_FILENAME = "reply-routes.json"
"""The JSON file of routes before the state store: imported at start-up."""


class ReplyRoutes:
    """``record(number, nick)`` when mup sent ``number`` an SMS for ``nick``;
    ``lookup(number)`` gives that nick while the window holds.  Numbers are E.164.

    With a ``legacy_directory``, a ``reply-routes.json`` left there by an older mup is
    imported."""

    def __init__(self, store: StateStore, window: float, clock: IReactorTime,
                 legacy_directory: str = "") -> None:
        self._table = StateTable(store, TABLE, "reply routes")
        self.window = window
        self.clock = clock
        self._routes: dict[str, tuple[str, float]] = {}
        self._legacy = os.path.join(legacy_directory, LEGACY_FILENAME) if legacy_directory \
            else ""
        self._table.load().addCallbacks(self._loaded, self._load_failed)

    def record(self, number: str, nick: str) -> None:
        now = self.clock.seconds()
        self._routes.pop(number, None)  # to the end: the table stays in time order
        self._routes[number] = (nick, now)
        self._table.put(number, [nick, now])
        self._prune()

    def lookup(self, number: str) -> str | None:
        route = self._routes.get(number)
        if route is None or self.clock.seconds() - route[1] > self.window:
            return None
        return route[0]

    def _prune(self) -> None:
        """Forget routes past the window (oldest first: they are kept in time order)."""
        now = self.clock.seconds()
        while self._routes:
            number, (_, t) = next(iter(self._routes.items()))
            if now - t <= self.window:
                break
            del self._routes[number]
            self._table.delete(number)

    def _apply(self, rows: dict[str, Any]) -> None:
        routes = dict(self._routes)
        for number, row in rows.items():
            try:
                nick, t = row
                route = (str(nick), float(t))
            except (TypeError, ValueError):
                log.warn("reply route for {number} is unreadable; ignored", number=number)
                continue
            if number not in routes or routes[number][1] <= route[1]:
                routes[number] = route
        self._routes = dict(sorted(routes.items(), key=lambda item: item[1][1]))

    def _loaded(self, rows: dict[str, Any]) -> None:
        self._apply(rows)
        if self._legacy:
            import_file(self._table, self._legacy, _read_legacy, self._apply)
        self._prune()

    def _load_failed(self, failure: Failure) -> None:
        log.error("reply routes cannot be read ({error}); starting afresh",
                  error=failure.getErrorMessage())


def _read_legacy(path: str) -> dict[str, Any]:
    """The old ``reply-routes.json``: ``{number: [nick, time]}``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return {str(number): row for number, row in data.items()}
