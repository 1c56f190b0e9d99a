"""twistd plugins: ``twistd mup --config FILE`` (the bot) and ``twistd mup-relay --config FILE``
(the buffering relay for inbound SMS)."""

from __future__ import annotations

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path to the TOML configuration file (required)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def _load(path: str):
    from mup.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        sys.stderr.write(f"mup: {e}\n")
        raise SystemExit(1) from None


@implementer(IServiceMaker, IPlugin)
class MupServiceMaker:
    tapname = "mup"
    description = "mup: the IRC bot that bridges a company directory (LDAP) and SMS."
    options = Options

    def makeService(self, options: Options):
        from mup.service import make_service

        return make_service(_load(options["config"]))


serviceMaker = MupServiceMaker()


@implementer(IServiceMaker, IPlugin)
class MupRelayServiceMaker:
    tapname = "mup-relay"
    description = ("mup-relay: the always-up receiver that keeps inbound SMS while the bot is "
                   "down; the bot pulls them ([inbound] relay_url).")
    options = Options

    def makeService(self, options: Options):
        from mup.config import ConfigError
        from mup.relay import make_relay_service

        try:
            return make_relay_service(_load(options["config"]))
        except ConfigError as e:
            sys.stderr.write(f"mup-relay: {e}\n")
            raise SystemExit(1) from None


relayServiceMaker = MupRelayServiceMaker()
