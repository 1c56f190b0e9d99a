"""The composition root: builds every part of mup from a config, on one reactor.

Data flows one way:  IRC line -> command -> directory/gateway -> reply;
gateway POST -> message store -> delivery -> IRC.  Only this module knows all the parts.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from mup.commands import Commands
from mup.commands.basic import echo
from mup.config import Config

__all__ = ["make_service"]


def make_service(config: Config, reactor: Any = None) -> MultiService:
    """The whole bot as one service: IRC client, directory, SMS sender, webhook receiver."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    top = MultiService()
    commands = Commands([echo()])
    # Slots: each part adds itself below (directory, gateway, sms, store, webhook, relay).
    # Directory: LDAP server or embedded LDIF ([ldap]); None when neither is configured.
    from mup.commands.poke import poke
    from mup.ldap import directory_from_config

    directory = None
    found = directory_from_config(config, reactor)
    if found is not None:
        directory, directory_service = found
        if directory_service is not None:
            directory_service.setServiceParent(top)
        commands.add(poke(directory, reactor))
    # SMS ([sms] gateway): the sms command, its budget and the outbox of sent SMS ([state]).
    # Later slots use `outbox.report` for delivery reports and append to `sms_sent` to hear of
    # each SMS the gateway took: hook(number_e164, requester_nick), e.g. reply routes.
    from mup.commands.sms import sms
    from mup.gateway import gateway_from_config
    from mup.outbox import Outbox
    from mup.quota import Quota

    sms_sent: list[Any] = []
    outbox = Outbox.from_config(config, reactor)
    gateway = gateway_from_config(config, reactor)
    if gateway is not None and directory is not None:
        def on_sent(number: str, nick: str) -> None:
            for hook in sms_sent:
                hook(number, nick)

        commands.add(sms(directory, gateway, Quota.from_config(config, reactor), config,
                         on_sent=on_sent, outbox=outbox))
    elif gateway is not None:
        from twisted.logger import Logger

        Logger().warn("[sms] gateway is set but there is no directory ([ldap] url or ldif): "
                      "the sms command is off")
    from mup.irc import IRCService

    irc = IRCService(config, commands, reactor)
    irc.setServiceParent(top)
    # Inbound SMS ([webhook] endpoint and/or [inbound] relay_url): gateway POST (or relay pull)
    # -> message store -> delivery -> IRC; reply routes fed by the sms command's on_sent.
    if config.webhook.endpoint or config.inbound.relay_url:
        _inbound(config, reactor, top, irc, directory, outbox, sms_sent)
    return top


def _inbound(config: Config, reactor: Any, top: MultiService, irc: Any, directory: Any,
             outbox: Any, sms_sent: list[Any]) -> None:
    from mup.config import ConfigError, parse_duration
    from mup.delivery import Delivery
    from mup.routes import ReplyRoutes
    from mup.routing import Router
    from mup.store.sqlite import SQLiteMessageStore
    from mup.webhook import Receiver, WebhookService

    window = parse_duration(config.inbound.reply_window)
    routes = ReplyRoutes(config.resolve_path(config.state.directory), window, reactor)
    sms_sent.append(routes.record)
    try:
        router = Router(channels=config.irc.channels,
                        default_channel=config.inbound.default_channel,
                        unknown_senders=config.inbound.unknown_senders,
                        region=config.sms.default_region, directory=directory, routes=routes,
                        is_present=irc.is_present)
    except ValueError as e:
        raise ConfigError(f"{config.path}: {e}") from None
    if config.inbound.relay_url:
        from mup.relayclient import check_settings

        check_settings(config)  # before the store is opened
    store = SQLiteMessageStore.open(config.resolve_path(config.webhook.journal), reactor)
    delivered_hooks: list[Any] = []

    def on_delivered(entry: Any) -> None:
        for hook in delivered_hooks:
            hook(entry)

    delivery = Delivery(store, irc, router, clock=reactor, reports=outbox.report,
                        on_delivered=on_delivered, hint=config.inbound.hint,
                        prefix=config.irc.prefix, hint_window=window)
    delivery.setServiceParent(top)
    if config.inbound.relay_url:
        from mup.relayclient import make_puller

        puller = make_puller(config, store, delivery.wake, reactor)
        delivered_hooks.append(puller.delivered)
        puller.setServiceParent(top)
    if config.webhook.endpoint:
        receiver = Receiver(config, store, on_accepted=delivery.accept,
                            health=lambda: {"irc_connected": bool(irc.connected)}, clock=reactor)
        WebhookService(config.webhook.endpoint, receiver.site(), reactor).setServiceParent(top)
