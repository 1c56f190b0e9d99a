"""Reload: re-read the config file (and what it points at) while the bot stays on IRC.

A new config is loaded and validated exactly as at start-up; a broken one is refused with the
same one-line error and the old one stays in force.  Each part of the bot that can take new
settings live registers an *applier*; every other key that changed is reported as needing a
restart.  ``reload`` from IRC and ``SIGHUP`` both come here.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Coroutine, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.logger import Logger

from mup.config import Config, ConfigError, load

__all__ = ["Applier", "Reload", "SighupService", "changed_keys", "install_sighup"]

log = Logger()


Commit = Callable[[], "str | None"]


@dataclass(frozen=True)
class Applier:
    """Takes the keys in ``keys`` (``"section.key"``) live, in two steps so a reload is all or
    nothing: ``prepare(new_config)`` checks and readies the change (reading files, say) and
    raises ConfigError (one line) to refuse the reload; it returns a function that makes the
    change and says what it did."""

    keys: frozenset[str]
    prepare: Callable[[Config], Any]


def changed_keys(old: Config, new: Config) -> list[str]:
    """``"section.key"`` for every key whose value differs between two configs."""
    out = []
    for name in sorted(set(old.sections) | set(new.sections)):
        empty: Mapping[str, Any] = {}
        a = old.sections.get(name) or empty
        b = new.sections.get(name) or empty
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{name}.{key}")
    return out


class Reload:
    """Reloads the config at ``config.path``; ``appliers`` are tried in order."""

    def __init__(self, config: Config, appliers: Iterable[Applier] = (),
                 reactor: IReactorThreads | None = None) -> None:
        self.config = config
        self.appliers = list(appliers)
        self._reactor = reactor
        self._running = False

    def add(self, applier: Applier) -> None:
        self.appliers.append(applier)

    async def reload(self) -> list[str]:
        """The reply: what was applied, what needs a restart, or why nothing changed."""
        if self._running:
            return ["A reload is already running."]
        self._running = True
        try:
            return await self._reload()
        finally:
            self._running = False

    async def _reload(self) -> list[str]:
        path = self.config.path
        try:
            if self._reactor is not None:
                new = await threads.deferToThreadPool(
                    self._reactor, self._reactor.getThreadPool(), load, path)
            else:
                new = load(path)
        except ConfigError as e:
            log.error("reload refused: {error}", error=str(e))
            return [f"Reload refused, the running config stays: {e}"]
        changed = changed_keys(self.config, new)
        live = frozenset().union(*(a.keys for a in self.appliers))
        commits: list[Commit] = []
        for applier in self.appliers:
            try:
                commit = applier.prepare(new)
                if hasattr(commit, "__await__"):
                    commit = await commit
            except ConfigError as e:
                log.error("reload refused: {error}", error=str(e))
                return [f"Reload refused, the running config stays: {e}"]
            commits.append(commit)
        done = []
        for commit in commits:
            said = commit()
            if said:
                done.append(said)
        self.config = new
        restart = [k for k in changed if k not in live]
        lines = ["Reloaded " + path + "." + (" " + " ".join(done) if done else "")]
        if restart:
            lines.append("Needs a restart to take effect: " + ", ".join(restart) + ".")
        log.info("reloaded {path}: {lines}", path=path, lines=" / ".join(lines))
        return lines


ReloadFunction = Callable[[], Coroutine[Any, Any, object]]
"""What SIGHUP runs (:meth:`Reload.reload`)."""


def install_sighup(reactor: IReactorFromThreads, reload: ReloadFunction) -> Callable[[], None]:
    """Reload on SIGHUP (``systemctl reload``); returns a function that puts the old handler
    back.  The signal only schedules the reload on the reactor thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(_run, reload)

    previous = signal.signal(signal.SIGHUP, handler)

    def uninstall() -> None:
        signal.signal(signal.SIGHUP, previous)

    return uninstall


def _run(reload: ReloadFunction) -> None:
    from twisted.internet.defer import ensureDeferred

    ensureDeferred(reload()).addErrback(lambda f: log.failure("reload failed", f))


class SighupService(Service):
    """Reloads on SIGHUP while running (``systemctl reload``, ``kill -HUP``)."""

    def __init__(self, reactor: IReactorFromThreads, reload: ReloadFunction) -> None:
        self._reactor = reactor
        self._reload = reload
        self._uninstall: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if hasattr(signal, "SIGHUP") and hasattr(self._reactor, "callFromThread"):
            self._uninstall = install_sighup(self._reactor, self._reload)

    def stopService(self) -> None:
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None
        super().stopService()  # type: ignore[no-untyped-call]
