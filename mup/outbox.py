"""The SMS mup sent and who asked: turns a gateway's delivery report into a line for the sender.

Each SMS the gateway took is recorded under mup's reference and the gateway's message id
(Kannel's dlr-url carries the reference; Twilio's StatusCallback carries the MessageSid), with
the nick that asked and the recipient's nick.  Records are kept in
``<[state] directory>/sms-outbox.json`` so a report arriving after a restart still finds its
sender, and dropped once a final report came or after ``keep`` seconds.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mup.gateway import DeliveryReport
from mup.gateways import clean_reason

__all__ = ["Outbox", "Sent"]

FILENAME = "sms-outbox.json"


@dataclass(frozen=True)
class Sent:
    """One SMS the gateway took."""

    reference: str
    gateway: str
    message_id: str
    requester: str
    """The IRC nick that asked for it: who hears about its delivery."""
    recipient: str
    """The recipient's directory nick, as named in the report line."""
    sent: float


class Outbox:
    """Sent SMS by reference and by gateway message id."""

    def __init__(self, state_directory: str, clock: IReactorTime, keep: float = 7 * 86400
                 ) -> None:
        self._path = os.path.join(state_directory, FILENAME) if state_directory else ""
        self._clock = clock
        self.keep = keep
        self._records: dict[str, Sent] = {}
        self._load()

    @classmethod
    def from_config(cls, config: Any, clock: IReactorTime) -> Outbox:
        return cls(config.resolve_path(config.section("state").directory), clock)

    def record(self, reference: str, gateway: str, message_id: str, requester: str,
               recipient: str) -> Sent:
        """Remember an SMS the gateway accepted or queued."""
        sent = Sent(reference, gateway, message_id or "", requester, recipient,
                    self._clock.seconds())
        self._records[reference] = sent
        self._expire()
        self._save()
        return sent

    def find(self, gateway: str, message_id: str) -> Sent | None:
        """The SMS a report is about: ``message_id`` is mup's reference or the gateway's id."""
        sent = self._records.get(message_id)
        if sent is not None and sent.gateway == gateway:
            return sent
        for sent in self._records.values():
            if sent.gateway == gateway and sent.message_id and sent.message_id == message_id:
                return sent
        return None

    def report(self, report: DeliveryReport) -> tuple[str, str] | None:
        """``(nick_to_tell, line)`` for a final delivery report of an SMS we sent; None for
        intermediate states, unknown messages and repeated reports."""
        sent = self.find(report.gateway, report.message_id)
        if sent is None or report.state not in ("delivered", "failed"):
            return None
        del self._records[sent.reference]
        self._save()
        if report.state == "delivered":
            return sent.requester, f"SMS to {sent.recipient} delivered."
        reason = clean_reason(report.reason) or "the network gave no reason"
        return sent.requester, f"SMS to {sent.recipient} could not be delivered: {reason}"

    def __len__(self) -> int:
        return len(self._records)

    def _expire(self) -> None:
        cutoff = self._clock.seconds() - self.keep
        for reference in [r for r, s in self._records.items() if s.sent < cutoff]:
            del self._records[reference]

    def _load(self) -> None:
        if not self._path:
            return
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
            self._records = {r["reference"]: Sent(**r) for r in data}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError):
            from twisted.logger import Logger

            Logger().failure("SMS outbox {path} unreadable; delivery reports for earlier SMS "
                             "will not be announced", path=self._path)
            self._records = {}
        self._expire()

    def _save(self) -> None:
        if not self._path:
            return
        directory = os.path.dirname(self._path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sms-outbox.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump([asdict(s) for s in self._records.values()], f)
            os.replace(tmp, self._path)
        except BaseException:
            os.unlink(tmp)
            raise
