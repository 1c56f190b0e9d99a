"""The ``status`` command's report: one short part per piece of the bot, gathered at once.

The composition root gives a list of named probes (each returns its text, or a Deferred or
coroutine of it); a probe that fails or takes too long says so instead of holding up the rest.
"""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable, Sequence, Union

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Probe", "Status", "pack"]

log = Logger()

Probe = tuple[str, Callable[[], Union[str, Awaitable[str]]]]
"""A name (``"IRC"``) and a function giving that part's state in a few words."""


def pack(parts: Sequence[str], width: int = 380) -> list[str]:
    """Parts joined with ``; `` into as few lines as fit in ``width`` characters each."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            lines.append(part[:width])
    return lines


class Status:
    """Runs every probe concurrently, each bounded by ``timeout`` seconds."""

    def __init__(self, probes: Sequence[Probe], clock: IReactorTime,
                 timeout: float = 5.0) -> None:
        self.probes = list(probes)
        self._clock = clock
        self._timeout = timeout

    async def status(self) -> list[str]:
        parts = await gatherResults([self._one(name, probe) for name, probe in self.probes])
        return pack(parts)

    def _one(self, name: str, probe: Callable[[], str | Awaitable[str]]) -> Deferred[str]:
        async def run() -> str:
            result = probe()
            if inspect.isawaitable(result):
                result = await result
            return f"{name}: {result}"

        d = ensureDeferred(run())
        d.addTimeout(self._timeout, self._clock)

        def failed(failure: Failure) -> str:
            from twisted.internet.defer import TimeoutError

            if failure.check(TimeoutError):
                return f"{name}: no answer in {self._timeout:g} s"
            log.failure("status probe {name} failed", failure, name=name)
            return f"{name}: error ({failure.getErrorMessage()[:80]})"

        return d.addErrback(failed)
