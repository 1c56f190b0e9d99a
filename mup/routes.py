"""Reply routes: who last sent an SMS to a number through mup, so its answer reaches them.

``joe`` runs ``@sms niemeyer ...``; when niemeyer's phone answers within ``reply_window`` the
answer goes to joe privately.  The table is small and persisted as JSON in the ``[state]``
directory (written to a temporary file, fsync'd and renamed, so a crash leaves the old or the
new table, never half of one).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import Logger

__all__ = ["ReplyRoutes"]

log = Logger()

FILENAME = "reply-routes.json"


class ReplyRoutes:
    """``record(number, nick)`` when mup sent ``number`` an SMS for ``nick``;
    ``lookup(number)`` gives that nick while the window holds.  Numbers are E.164."""

    def __init__(self, directory: str, window: float, clock: Any) -> None:
        self.path = os.path.join(directory, FILENAME) if directory else ""
        self.window = window
        self.clock = clock
        self._routes: dict[str, tuple[str, float]] = {}
        self._load()

    def record(self, number: str, nick: str) -> None:
        self._routes[number] = (nick, self.clock.seconds())
        self._prune()
        self._save()

    def lookup(self, number: str) -> str | None:
        route = self._routes.get(number)
        if route is None or self.clock.seconds() - route[1] > self.window:
            return None
        return route[0]

    def _prune(self) -> None:
        now = self.clock.seconds()
        for number in [n for n, (_, t) in self._routes.items() if now - t > self.window]:
            del self._routes[number]

    def _load(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            self._routes = {str(n): (str(nick), float(t)) for n, (nick, t) in data.items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warn("reply routes in {path} are unreadable, starting afresh: {error}",
                     path=self.path, error=e)
            self._routes = {}
        self._prune()

    def _save(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({n: [nick, t] for n, (nick, t) in self._routes.items()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot save reply routes to {path}: {error}", path=self.path, error=e)
