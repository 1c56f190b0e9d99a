"""How each part of the bot is reloaded and reported: the ``reload`` appliers and ``status``
probes, built by the composition root from the parts it made.

Keys applied live: ``[admin] accounts`` and ``hostmasks``, ``[irc] channels``, the embedded
directory's LDIF (``[ldap] ldif``, re-read on every reload) and the SMS limits
(``[sms] sender_burst``, ``sender_rate``, ``sender_daily``, ``global_daily``).  Every other key
that changed is reported as needing a restart.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from twisted.internet.interfaces import IReactorTime

from mup.admin import Channels, Gate, Operators
from mup.config import Config, ConfigError
from mup.directory import Directory, DirectoryError
from mup.gateway import Gateway
from mup.reload import Applier, Reload
from mup.status import Probe, Status
from mup.store import MessageStore

if TYPE_CHECKING:   # the parts themselves: this module wires them, as the composition root
    from mup.irc import IRCService
    from mup.quota import Quota
    from mup.relayclient import RelayPuller

__all__ = ["LIVE_KEYS", "InboundParts", "admin_parts"]


Reactor = Any
"""The running reactor, handed on to parts that each need another of its interfaces (time,
threads); Twisted has no one static type for "all of them"."""


class InboundParts(TypedDict, total=False):
    """The inbound path's parts that ``status`` looks at (none when there is no inbound)."""

    store: MessageStore
    puller: RelayPuller

_SMS_LIMITS = ("sender_burst", "sender_rate", "sender_daily", "global_daily")
LIVE_KEYS = frozenset({"admin.accounts", "admin.hostmasks", "irc.channels", "ldap.ldif",
                       *(f"sms.{k}" for k in _SMS_LIMITS)})


def admin_parts(config: Config, reactor: Reactor, *, irc: IRCService, gate: Gate,
                channels: Channels, directory: Directory | None, gateway: Gateway | None,
                quota: Quota | None, inbound: InboundParts) -> tuple[Reload, Status]:
    """The reloader and the status report over the bot's parts (``inbound``: the inbound
    ``store`` and relay ``puller``, when there are)."""
    reload = Reload(config, reactor=reactor)
    reload.add(Applier(frozenset({"admin.accounts", "admin.hostmasks"}),
                       lambda new: _operators(gate, new)))
    reload.add(Applier(frozenset({"irc.channels"}), lambda new: _channels(irc, channels, new)))
    reload.add(Applier(frozenset({"ldap.ldif"}), lambda new: _ldif(directory, new)))
    if quota is not None:
        budget = quota
        reload.add(Applier(frozenset(f"sms.{k}" for k in _SMS_LIMITS),
                           lambda new: _limits(budget, new)))
    probes: list[Probe] = [("IRC", lambda: _irc(irc))]
    probes.append(("directory", lambda: _directory(directory, irc.nick)))
    probes.append(("gateway", lambda: gateway.name if gateway is not None else "none (no SMS)"))
    store = inbound.get("store")
    if store is not None:
        probes.append(("inbound", lambda: _backlog(store, reactor)))
    puller = inbound.get("puller")
    if puller is not None:
        probes.append(("relay", puller.describe))
    if quota is not None:
        today = quota
        probes.append(("SMS today", lambda: _sms_today(today)))
    return reload, Status(probes, reactor)


# -- reload appliers: check now, return the change -----------------------------------------------

def _operators(gate: Gate, new: Config) -> Callable[[], str]:
    operators = Operators.from_config(new)

    def commit() -> str:
        if (operators.accounts, operators.hostmasks) == (gate.operators.accounts,
                                                         gate.operators.hostmasks):
            return ""
        gate.operators = operators
        return (f"Operators: {len(operators.accounts)} accounts, "
                f"{len(operators.hostmasks)} hostmasks.")

    return commit


def _channels(irc: IRCService, channels: Channels, new: Config) -> Callable[[], str]:
    configured = list(new.irc.channels)

    def commit() -> str:
        if configured == channels.configured:
            return ""
        channels.configured = configured
        wanted = channels.wanted()
        irc.set_channels(wanted)
        return "Channels: " + (", ".join(wanted) or "none") + "."

    return commit


def _ldif(directory: Directory | None, new: Config) -> Callable[[], str] | None:
    from mup.ldif import LDIFDirectory, LDIFError

    if not isinstance(directory, LDIFDirectory) or not new.ldap.ldif:
        return None
    path = new.resolve_path(new.ldap.ldif)
    try:
        commit = directory.prepare_reload(path)
    except (LDIFError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{new.path}: [ldap] ldif: {path}: {reason}") from None
    return lambda: f"Directory: {commit()} entries from {path}."


def _limits(quota: Quota, new: Config) -> Callable[[], str]:
    sms = new.sms

    def commit() -> str:
        before = (quota.sender_burst, quota.sender_rate, quota.sender_daily, quota.global_daily)
        quota.sender_burst = sms.sender_burst
        quota.sender_rate = sms.sender_rate / 3600.0
        quota.sender_daily = sms.sender_daily
        quota.global_daily = sms.global_daily
        after = (quota.sender_burst, quota.sender_rate, quota.sender_daily, quota.global_daily)
        return "" if before == after else "SMS limits updated."

    return commit


# -- status probes ---------------------------------------------------------------------------------

def _irc(irc: IRCService) -> str:
    if not irc.connected:
        return f"not connected ({irc.where})"
    names = ", ".join(irc.channels) or "no channels"
    return f"connected to {irc.where} as {irc.nick}, in {names}"


async def _directory(directory: Directory | None, nick: str) -> str:
    if directory is None:
        return "none configured"
    start = time.monotonic()
    try:
        await directory.by_nick(nick)
    except DirectoryError as e:
        return f"not answering ({e.user_message})"
    return f"answering ({(time.monotonic() - start) * 1000:.0f} ms)"


async def _backlog(store: MessageStore, reactor: IReactorTime) -> str:
    backlog = await store.backlog()
    if not backlog.count:
        return "nothing waiting"
    age = max(reactor.seconds() - (backlog.oldest or reactor.seconds()), 0)
    return f"{backlog.count} waiting, the oldest for {_ago(age)}"


def _sms_today(quota: Quota) -> str:
    cap = f" of {quota.global_daily}" if quota.global_daily else ""
    return f"{quota.used_globally}{cap} segments sent"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
