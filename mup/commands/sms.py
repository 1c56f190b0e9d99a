"""``sms <nick> <message>``: text a colleague's mobile from IRC, as a verified sender, in budget.

The name in the SMS (``joe> text``, ``#chan joe> text`` in a channel) is the sender's directory
nick, found through their services account, never the IRC nick, which anyone can take.  Where
a network has no accounts, ``[sms] require_account = false`` trusts ``allowed_hostmasks``
instead.  The text is counted in segments and refused, never cut, beyond ``max_segments``.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from typing import Callable, Protocol, Sequence

from twisted.logger import Logger

from mup.commands import Command, Request, UsageError
from mup.config import Config
from mup.directory import Directory
from mup.gateway import Gateway
from mup.phone import InvalidNumber, MaskedNumber, mask_number, normalise
from mup.segments import count
from mup.text import one_line

__all__ = ["SMSBudget", "SentRecorder", "sms"]

log = Logger()

_NICK = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]*$")


class _NotAllowed(Exception):
    """The sender may not send SMS (no account, host not allowed): the reply ends the
    command."""


class SMSBudget(Protocol):
    """The per-sender SMS budget the command spends from (:class:`mup.quota.Quota`)."""

    def reserve(self, sender: str, segments: int) -> str | None:
        """Take ``segments`` from ``sender``'s budget; or the refusal to show them."""
        ...

    def refund(self, sender: str, segments: int) -> None:
        """Give back what a failed send had reserved."""
        ...

    def describe(self, sender: str, you: bool = False) -> str:
        """``sender``'s budget in a sentence (``you``: addressed to them)."""
        ...


class SentRecorder(Protocol):
    """Remembers the SMS sent, for their delivery reports (:class:`mup.outbox.Outbox`)."""

    def record(self, reference: str, gateway: str, message_id: str, requester: str,
               recipient: str) -> object:
        ...


def sms(directory: Directory, gateway: Gateway, quota: SMSBudget, config: Config,
        on_sent: Callable[[str, str], None] | None = None,
        outbox: SentRecorder | None = None) -> Command:
    """The ``sms`` command.

    ``directory`` is a :class:`mup.directory.Directory` (``find_all`` finds both people);
    ``gateway`` is a :class:`mup.gateway.Gateway`; ``quota`` a :class:`mup.quota.Quota`;
    ``on_sent(number_e164, requester_nick)`` is called once the gateway took an SMS;
    ``outbox`` (:class:`mup.outbox.Outbox`) remembers it for delivery reports.
    """
    settings = config.section("sms")
    require_account: bool = settings.require_account
    hostmasks: Sequence[str] = [m.lower() for m in settings.allowed_hostmasks]
    region: str = settings.default_region
    max_segments: int = settings.max_segments

    def sender_key(request: Request) -> tuple[str, str]:
        """How the directory knows the sender: their services account, or (trusting the
        host) their nick; refuses anyone else."""
        if require_account:
            if not request.account:
                raise _NotAllowed(
                    "You need to be logged in to a services account to send SMS: the "
                    "message carries your name, and a nick alone proves nothing.")
            return ("account", request.account)
        host = request.hostmask.lower()
        if not host or not any(fnmatch.fnmatchcase(host, m) for m in hostmasks):
            raise _NotAllowed("You may not send SMS from here (your host is not on the "
                              "allowed list).")
        return ("nick", request.nick)

    async def budget(request: Request) -> str:
        """``sms`` alone: the sender's budget, as the quota knows them (their directory
        nick), and how to send."""
        try:
            kind, who = sender_key(request)
        except _NotAllowed as e:
            return str(e)
        try:
            [sender] = await directory.find_all([(kind, who)])
        except Exception as e:
            return _directory_error(e)
        if sender is None:
            return f"{who} is not in the directory, so you cannot send SMS from here."
        return (quota.describe(sender.nick, you=True)
                + f" Usage: {request.how}sms <nick> <message>")

    async def run(request: Request) -> str:
        target, _, message = request.args.partition(" ")
        # Control characters (IRC colours, CR/LF) become spaces, bidi overrides and other
        # invisible characters go, undecodable bytes become U+FFFD (mup.text.one_line).
        message = one_line(message)
        if not target:
            return await budget(request)
        if not message:
            raise UsageError("")
        if not _NICK.match(target):
            raise UsageError(f"{target!r} is not a nick.")
        try:
            kind, who = sender_key(request)
        except _NotAllowed as e:
            return str(e)
        # Sender and recipient in one directory search: one round trip, not two.
        try:
            sender, recipient = await directory.find_all([(kind, who), ("nick", target)])
        except Exception as e:
            return _directory_error(e)
        if sender is None:
            if kind == "account":
                return (f"Your account {who} is not in the directory, so I can't put your "
                        "name on an SMS.")
            return f"{who} is not in the directory, so I can't put your name on an SMS."
        if recipient is None:
            return f"I can't find {target} in the directory."
        if not getattr(recipient, "mobile", ""):
            return f"{recipient.nick} has no mobile number in the directory."
        try:
            number = normalise(recipient.mobile, region)
        except InvalidNumber as e:
            return (f"{recipient.nick}'s mobile number in the directory "
                    f"({mask_number(recipient.mobile)}) can't be used: {e}.")
        prefix = f"{one_line(request.channel)} " if request.channel else ""
        text = f"{prefix}{one_line(sender.nick)}> {message}"
        counted = count(text)
        over = counted.over_by(max_segments)
        if over:
            return (f"That SMS is too long by {over} character{'s' if over > 1 else ''} "
                    f"(at most {max_segments} SMS part{'s' if max_segments > 1 else ''}, "
                    f"and '{prefix}{sender.nick}> ' counts).")
        refusal = quota.reserve(sender.nick, counted.segments)
        if refusal:
            return refusal
        reference = uuid.uuid4().hex
        result = await gateway.send(number, text, reference)
        if result.status == "failed":
            quota.refund(sender.nick, counted.segments)
            return f"SMS delivery failed: {result.reason}"
        log.info("SMS {reference} from {sender} to {recipient} ({number}): {status}",
                 reference=reference, sender=sender.nick, recipient=recipient.nick,
                 number=MaskedNumber(number), status=result.status)
        if outbox is not None:
            outbox.record(reference, gateway.name, result.message_id or reference,
                          request.nick, recipient.nick)
        if on_sent is not None:
            try:
                on_sent(number, request.nick)
            except Exception:
                log.failure("on_sent failed for SMS {reference}", reference=reference)
        if result.status == "queued":
            return "SMS queued by the gateway."
        parts = max(result.segments, counted.segments)
        return "SMS is on the way!" + (f" ({parts} parts)" if parts > 1 else "")

    return Command("sms", "sms <nick> <message>",
                   "Sends an SMS to someone's mobile from the directory, signed with your "
                   "directory nick.", run, needs_account=require_account)


def _directory_error(e: Exception) -> str:
    message = getattr(e, "user_message", None)
    if message:
        return str(message)
    log.failure("directory lookup failed", None)
    return "The directory is not answering right now; try again soon."
