"""The status report: probes run together, a slow or broken one does not hold up the rest."""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from mup.status import Status, pack


def test_probes_in_order_with_failures_and_timeouts():
    clock = Clock()
    never: Deferred[str] = Deferred()

    async def backlog() -> str:
        return "3 waiting, oldest 2 min"

    def broken() -> str:
        raise RuntimeError("database is locked")

    status = Status([("IRC", lambda: "connected to irc:6667 as mup"), ("inbound", backlog),
                     ("directory", lambda: never), ("gateway", broken)], clock, timeout=5)
    out: list[list[str]] = []
    ensureDeferred(status.status()).addCallback(out.append)
    assert out == []
    clock.advance(5)
    assert out == [["IRC: connected to irc:6667 as mup; inbound: 3 waiting, oldest 2 min; "
                    "directory: no answer in 5 s; gateway: error (database is locked)"]]


def test_pack_splits_long_reports():
    parts = ["x" * 200, "y" * 150, "z" * 100]
    assert pack(parts, width=380) == ["x" * 200 + "; " + "y" * 150, "z" * 100]
