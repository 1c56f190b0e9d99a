"""``[log] level``: drop log events below the configured level, whoever emits them.

twistd starts its log observers after the service is built and offers no hook to filter them,
so this service wraps the observers already registered on the global publisher when it starts
(twistd has begun logging by then) and restores them when it stops.
"""

from __future__ import annotations

from typing import cast

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from zope.interface import implementer

__all__ = ["LevelFilterService", "quiet_chatter"]

_CHATTER = (
    # ClientService, for every reconnect attempt ("Scheduling retry N to connect ..."): the
    # IRC service logs the reason once per change instead.
    ("twisted.application", "Scheduling retry"),
    # Every outgoing HTTP connection (relay pulls and acks, gateway sends), opened and closed.
    ("twisted.web.client", "Starting factory"),
    ("twisted.web.client", "Stopping factory"),
)
"""(namespace prefix, format prefix) of Twisted's info lines that say nothing to operators."""


@implementer(ILogFilterPredicate)
class _QuietChatter:
    """Drop Twisted's routine lines in ``_CHATTER``; they are shown at ``debug``."""

    def __call__(self, event: LogEvent) -> object:
        if event.get("log_level") is LogLevel.info:
            namespace = str(event.get("log_namespace", ""))
            text = str(event.get("log_format", ""))
            if any(namespace.startswith(n) and text.startswith(f) for n, f in _CHATTER):
                return cast(object, PredicateResult.no)
        return cast(object, PredicateResult.maybe)


quiet_chatter = _QuietChatter()


class LevelFilterService(Service):
    """Filters every observer of ``publisher`` to events at ``level`` or above while running."""

    def __init__(self, level: str, publisher: LogPublisher = globalLogPublisher) -> None:
        self.level = LogLevel.levelWithName(level)
        self._publisher = publisher
        self._wrapped: list[tuple[ILogObserver, ILogObserver]] = []

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.level is LogLevel.debug:
            return
        predicates: list[ILogFilterPredicate] = [
            LogLevelFilterPredicate(defaultLogLevel=self.level), quiet_chatter]
        for observer in list(getattr(self._publisher, "_observers", [])):
            wrapper = FilteringLogObserver(observer, predicates)
            self._publisher.removeObserver(observer)
            self._publisher.addObserver(wrapper)
            self._wrapped.append((observer, wrapper))

    def stopService(self) -> None:
        for observer, wrapper in self._wrapped:
            self._publisher.removeObserver(wrapper)
            self._publisher.addObserver(observer)
        self._wrapped = []
        super().stopService()  # type: ignore[no-untyped-call]
