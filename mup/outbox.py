"""The SMS mup sent and who asked: turns a gateway's delivery report into a line for the sender.

Each SMS the gateway took is recorded under mup's reference and the gateway's message id
(Kannel's dlr-url carries the reference; Twilio's StatusCallback carries the MessageSid), with
the nick that asked and the recipient's nick.  Records are appended to
``<[state] directory>/sms-outbox.jsonl`` so a report arriving after a restart still finds its
sender, and dropped once a final report came or after ``keep`` seconds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mup.eventlog import EventLog
from mup.gateway import DeliveryReport
from mup.text import clean_reason

__all__ = ["Outbox", "Sent"]

FILENAME = "sms-outbox.jsonl"


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
        self._log = EventLog(os.path.join(state_directory, FILENAME)) if state_directory \
            else None
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
        self._write({"sent": asdict(sent)})
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
        self._write({"done": sent.reference})
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

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.append(record)
            if self._log.lines > 2 * len(self._records) + 1000:
                self._compact()
        except OSError as e:
            # The SMS went out all the same; only its delivery report may go unannounced.
            from twisted.logger import Logger

            Logger().error("SMS outbox {path} cannot be written: {error}",
                           path=self._log.path, error=e)

    def _compact(self) -> None:
        assert self._log is not None
        self._expire()
        self._log.compact({"sent": asdict(s)} for s in self._records.values())

    def _load(self) -> None:
        if self._log is None:
            return
        try:
            entries = self._log.read()
        except OSError as e:
            from twisted.logger import Logger

            Logger().error("SMS outbox {path} unreadable ({error}); delivery reports for "
                           "earlier SMS will not be announced", path=self._log.path, error=e)
            self._log = None
            return
        for entry in entries:
            try:
                if "sent" in entry:
                    sent = Sent(**entry["sent"])
                    self._records[sent.reference] = sent
                elif "done" in entry:
                    self._records.pop(str(entry["done"]), None)
            except (TypeError, ValueError):
                continue
        self._expire()
        if self._log.lines > len(self._records):
            self._compact()
