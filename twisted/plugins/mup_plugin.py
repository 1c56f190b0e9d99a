"""twistd plugins: ``twistd mup --config FILE`` (the bot) and ``twistd mup-relay --config FILE``
(the buffering relay for inbound SMS)."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Callable

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

if TYPE_CHECKING:
    from mup.config import Config


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path to the TOML configuration file (required)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def _make(name: str, path: str, make: Callable[[Config], MultiService]) -> MultiService:
    """Load the config and build the service; a config problem, found while loading or while
    building (a bad LDIF, say), is one line on stderr and exit status 1, never a traceback."""
    from mup.config import ConfigError, load
    from mup.logfilter import LevelFilterService
    from mup.store import StoreOpenError

    try:
        config = load(path)
        service = make(config)
        LevelFilterService(config.log.level).setServiceParent(service)
    except (ConfigError, StoreOpenError) as e:  # the store: locked, unwritable, not a database
        sys.stderr.write(f"{name}: {e}\n")
        raise SystemExit(1) from None
    top = _StartOrExit(name)
    service.setServiceParent(top)
    return top


class _StartOrExit(MultiService):
    """A port that cannot be opened at start (already in use, no permission) is one line on
    stderr and exit status 1, like a config error, not a traceback."""

    def __init__(self, name: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._name = name

    def startService(self) -> None:
        from twisted.internet.error import CannotListenError

        try:
            super().startService()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            # twistd has redirected sys.stderr into the log by now: write to the real one.
            (sys.__stderr__ or sys.stderr).write(f"{self._name}: {e}\n")
            raise SystemExit(1) from None
        # Take what start-up built (modules, config, the directory, phone metadata) out of the
        # garbage collector's walks.  A busy receiver keeps each post alive across reactor
        # turns until its commit, so the collector runs full passes often, and each walked the
        # whole start-up heap: bench/webhook.py at 16 connections measured 35 ms a pass and a
        # saturated p99 of ~40 ms, 5.5 ms and ~10 ms with this.  Reference counting still frees
        # frozen objects.
        gc.freeze()


@implementer(IServiceMaker, IPlugin)
class MupServiceMaker:
    tapname = "mup"
    description = "mup: the IRC bot that bridges a company directory (LDAP) and SMS."
    options = Options

    def makeService(self, options: Options) -> MultiService:
        from mup.service import make_service

        return _make(self.tapname, options["config"], make_service)


serviceMaker = MupServiceMaker()


@implementer(IServiceMaker, IPlugin)
class MupRelayServiceMaker:
    tapname = "mup-relay"
    description = ("mup-relay: the always-up receiver that keeps inbound SMS while the bot is "
                   "down; the bot pulls them ([inbound] relay_url).")
    options = Options

    def makeService(self, options: Options) -> MultiService:
        from mup.relay import make_relay_service

        return _make(self.tapname, options["config"], make_relay_service)


relayServiceMaker = MupRelayServiceMaker()
