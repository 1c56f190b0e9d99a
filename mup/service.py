"""The composition root: builds every part of mup from a config, on one reactor.

Data flows one way:  IRC line -> command -> directory/gateway -> reply;
gateway POST -> message store -> delivery -> IRC.  Only this module knows all the parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import MultiService

from mup.commands import Commands, Dispatcher
from mup.commands.basic import echo
from mup.config import Config
from mup.store import Entry, StateStore

if TYPE_CHECKING:
    from mup.adminwiring import InboundParts
    from mup.directory import Directory
    from mup.irc import IRCService
    from mup.outbox import Outbox

__all__ = ["make_service"]


def make_service(config: Config, reactor: Any = None) -> MultiService:
    """The whole bot as one service: IRC client, directory, SMS sender, webhook receiver.

    ``reactor`` (the global one by default) is handed to every part, each of which takes the
    interface it needs (IReactorTime, IReactorThreads, ...): Twisted has no one static type
    for all of them, hence ``Any`` here."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    top = MultiService()
    from mup.store.table import ClosingService

    state = _state_store(config, reactor)
    ClosingService(state).setServiceParent(top)
    # Operators and the ignore list ([admin], kept in the state store): the commands' gate.
    from mup.admin import Channels, Gate, IgnoreList, Operators

    ignores, channels = IgnoreList(reactor, state), Channels(config.irc.channels, state)
    ignores.load()
    channels.load()
    gate = Gate(Operators.from_config(config), ignores)
    commands = Commands([echo()], gate=gate)
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
    from mup.gateways.factory import gateway_from_config
    from mup.outbox import Outbox
    from mup.quota import Quota

    sms_sent: list[Callable[[str, str], None]] = []
    outbox = Outbox.from_config(config, reactor, state)
    gateway = gateway_from_config(config, reactor)
    quota = None
    if gateway is not None and directory is not None:
        def on_sent(number: str, nick: str) -> None:
            for hook in sms_sent:
                hook(number, nick)

        quota = Quota.from_config(config, reactor, state)
        commands.add(sms(directory, gateway, quota, config, on_sent=on_sent, outbox=outbox))
    elif gateway is not None:
        from twisted.logger import Logger

        Logger().warn("[sms] gateway is set but there is no directory ([ldap] url or ldif): "
                      "the sms command is off")
    from mup.irc import IRCService

    irc = IRCService(config, Dispatcher.from_config(commands, config, reactor), reactor)
    irc.set_channels(channels.wanted())
    irc.setServiceParent(top)
    # Inbound SMS ([webhook] endpoint and/or [inbound] relay_url): gateway POST (or relay pull)
    # -> message store -> delivery -> IRC; reply routes fed by the sms command's on_sent.
    inbound: InboundParts = {}
    if config.webhook.endpoint or config.inbound.relay_url:
        inbound = _inbound(config, reactor, top, irc, directory, outbox, sms_sent, state)
    # The operators' commands: channels, ignores, status, reload (also on SIGHUP), quota.
    from mup.adminwiring import admin_parts

    reloader, status = admin_parts(config, reactor, irc=irc, gate=gate, channels=channels,
                                   directory=directory, gateway=gateway, quota=quota,
                                   inbound=inbound)
    from mup.commands.admin import admin_commands

    for command in admin_commands(control=irc, channels=channels, ignores=ignores,
                                  status=status, reloader=reloader, budget=quota):
        commands.add(command)
    from mup.reload import SighupService

    SighupService(reactor, reloader.reload).setServiceParent(top)
    return top


def _state_store(config: Config, reactor: Any) -> StateStore:
    """The StateStore of ``[state] directory`` (kept in memory when it is ""), opened and read
    now, before the reactor runs; a service closes it last.  StoreOpenError: one line, exit 1."""
    from mup.store.memory import MemoryStateStore
    from mup.store.sqlitestate import SQLiteStateStore

    directory = config.resolve_path(config.state.directory) if config.state.directory else ""
    return SQLiteStateStore.open(directory, reactor) if directory else MemoryStateStore()


def _inbound(config: Config, reactor: Any, top: MultiService, irc: IRCService,
             directory: Directory | None, outbox: Outbox,
             sms_sent: list[Callable[[str, str], None]], state: StateStore) -> InboundParts:
    """Builds the inbound path; returns its parts the status report looks at."""
    from mup.config import ConfigError, parse_duration
    from mup.delivery import Delivery
    from mup.inboundrouter import Router
    from mup.replyroutes import ReplyRoutes
    from mup.store.sqlite import SQLiteMessageStore
    from mup.webhook import Receiver, WebhookService

    window = parse_duration(config.inbound.reply_window)
    routes = ReplyRoutes(state, window, reactor,
                         legacy_directory=config.resolve_path(config.state.directory))
    sms_sent.append(routes.record)
    try:
        router = Router(channels=config.irc.channels,
                        default_channel=config.inbound.default_channel,
                        unknown_senders=config.inbound.unknown_senders,
                        region=config.sms.default_region, directory=directory, routes=routes,
                        is_present=irc.is_present, own_nick=lambda: irc.nick)
    except ValueError as e:
        raise ConfigError(f"{config.path}: {e}") from None
    if config.inbound.relay_url:
        from mup.relayclient import check_settings

        check_settings(config)  # before the store is opened
    store = SQLiteMessageStore.open(config.resolve_path(config.webhook.journal), reactor)
    delivered_hooks: list[Callable[[Entry], None]] = []
    parts: InboundParts = {"store": store}

    def on_delivered(entry: Entry) -> None:
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
        parts["puller"] = puller
    if config.webhook.endpoint:
        receiver = Receiver(config, store, on_accepted=delivery.accept,
                            health=lambda: {"irc_connected": bool(irc.connected)}, clock=reactor)
        WebhookService(config.webhook.endpoint, receiver.site(), reactor).setServiceParent(top)
    return parts
