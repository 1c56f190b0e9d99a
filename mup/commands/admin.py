"""Commands for the bot's operators: channels, the ignore list, status, reload and SMS budgets.

Each is an ordinary :class:`~mup.commands.Command` marked ``admin=True``: the framework checks
that the sender is an operator (``[admin] accounts`` or ``hostmasks``) before running it, so
the functions here only do their job.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Awaitable, Protocol

from mup.admin import ChannelControl, Channels, IgnoreList, to_mask
from mup.commands import Command, Reply, Request, UsageError
from mup.config import parse_duration

__all__ = ["BudgetKeeper", "Reloader", "StatusSource", "admin_commands"]

_CHANNEL = re.compile(r"^[#&+!][^\x00-\x20,\x07]{1,49}$")


class StatusSource(Protocol):
    """What ``status`` shows: one short line per part of the bot."""

    def status(self) -> Awaitable[list[str]]: ...


class Reloader(Protocol):
    """Re-reads the config file and the embedded directory; the reply lines say what changed,
    what needs a restart, or why the new config was refused."""

    def reload(self) -> Awaitable[list[str]]: ...


class BudgetKeeper(Protocol):
    """The SMS budget, as operators see it (:class:`mup.quota.Quota`)."""

    def describe(self, sender: str) -> str: ...

    def reset(self, sender: str) -> None: ...


def admin_commands(*, control: ChannelControl, channels: Channels, ignores: IgnoreList,
                   status: StatusSource, reloader: Reloader,
                   budget: BudgetKeeper | None = None) -> list[Command]:
    """The admin commands over the bot's parts (each given as the seam it needs)."""

    def join(request: Request) -> str:
        channel, _, key = request.args.partition(" ")
        if not _CHANNEL.match(channel):
            raise UsageError(f"{channel!r} is not a channel." if channel else "")
        channels.joined(channel, key.strip() or None)
        control.join(channel, key.strip() or None)
        return f"Joining {channel} (kept across restarts)."

    def part(request: Request) -> str:
        channel, _, reason = request.args.partition(" ")
        if not _CHANNEL.match(channel):
            raise UsageError(f"{channel!r} is not a channel." if channel else "")
        channels.parted(channel)
        control.part(channel, reason.strip() or None)
        return f"Leaving {channel} (kept across restarts)."

    def ignore(request: Request) -> str:
        who, _, duration = request.args.partition(" ")
        if not who:
            raise UsageError("")
        seconds: float | None = None
        if duration.strip():
            try:
                seconds = parse_duration(duration.strip())
            except ValueError as e:
                raise UsageError(str(e) + ".") from None
        mask = to_mask(who)
        if request.hostmask and _matches(mask, request.hostmask):
            return f"{mask} matches you; I won't ignore you."
        entry = ignores.add(who, seconds, request.account or request.nick)
        return f"Ignoring {entry.mask} " + (f"for {duration.strip()}." if seconds is not None
                                            else "until unignored.")

    def unignore(request: Request) -> str:
        if not request.args:
            raise UsageError("")
        entry = ignores.remove(request.args.split()[0])
        if entry is None:
            return f"{to_mask(request.args.split()[0])} is not on the ignore list."
        return f"No longer ignoring {entry.mask}."

    def list_ignores(request: Request) -> str:
        entries = ignores.entries()
        if not entries:
            return "Nobody is ignored."
        return "Ignored: " + ", ".join(e.mask for e in entries) + "."

    async def run_status(request: Request) -> Reply:
        return list(await status.status())

    async def run_reload(request: Request) -> Reply:
        return list(await reloader.reload())

    commands = [
        Command("join", "join #channel [key]", "Joins a channel (and stays across restarts).",
                join, admin=True),
        Command("part", "part #channel [reason]", "Leaves a channel (and stays out across "
                "restarts).", part, admin=True),
        Command("ignore", "ignore <nick|mask> [duration]", "Ignores someone (no answers, no "
                "SMS) for a while (e.g. 2h) or until unignored.", ignore, admin=True),
        Command("unignore", "unignore <nick|mask>", "Takes someone off the ignore list.",
                unignore, admin=True),
        Command("ignores", "ignores", "Lists who is ignored.", list_ignores, admin=True),
        Command("status", "status", "Shows the IRC connection, directory, gateway, inbound "
                "backlog, relay and SMS sent today.", run_status, admin=True),
        Command("reload", "reload", "Re-reads the config file and the directory's LDIF without "
                "leaving IRC.", run_reload, admin=True),
    ]
    if budget is not None:
        def quota(request: Request) -> str:
            words = request.args.split()
            if len(words) == 2 and words[0].lower() == "reset":
                budget.reset(words[1])
                return f"{words[1]}'s SMS budget is reset. " + budget.describe(words[1])
            if len(words) != 1:
                raise UsageError("")
            return budget.describe(words[0])

        commands.append(Command("quota", "quota <nick> | quota reset <nick>",
                                "Shows someone's SMS budget today, or resets it.", quota,
                                admin=True))
    return commands


def _matches(mask: str, hostmask: str) -> bool:
    return fnmatch.fnmatchcase(hostmask.lower(), mask)
