"""The SMS mup sent and who asked: turns a gateway's delivery report into a line for the sender.

Each SMS the gateway took is recorded under mup's reference and the gateway's message id
(Kannel's dlr-url carries the reference; Twilio's StatusCallback carries the MessageSid), with
the nick that asked and the recipient's nick.  Each record is a row of the state store's
``outbox`` table (written behind), so a report arriving after a restart still finds its sender;
it is dropped once a final report came or after ``keep`` seconds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.config import Config
from mup.gateway import DeliveryReport
from mup.store import StateStore
from mup.store.table import StateTable, import_file, read_json_lines
from mup.text import clean_reason

__all__ = ["Outbox", "Sent"]

log = Logger()

TABLE = "outbox"
LEGACY_FILENAME = "sms-outbox.jsonl"
"""The JSON-lines file of sent SMS before the state store: imported at start-up."""


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
    """Sent SMS by reference and by gateway message id.

    With a ``legacy_directory``, an ``sms-outbox.jsonl`` left there by an older mup is
    imported."""

    def __init__(self, store: StateStore, clock: IReactorTime, keep: float = 7 * 86400,
                 legacy_directory: str = "") -> None:
        self._table = StateTable(store, TABLE, "SMS outbox")
        self._clock = clock
        self.keep = keep
        self._records: dict[str, Sent] = {}
        """By reference, in the order sent."""
        self._legacy = os.path.join(legacy_directory, LEGACY_FILENAME) if legacy_directory \
            else ""
        self._table.load().addCallbacks(self._loaded, self._load_failed)

    @classmethod
    def from_config(cls, config: Config, clock: IReactorTime, store: StateStore) -> Outbox:
        return cls(store, clock,
                   legacy_directory=config.resolve_path(config.section("state").directory))

    def record(self, reference: str, gateway: str, message_id: str, requester: str,
               recipient: str) -> Sent:
        """Remember an SMS the gateway accepted or queued."""
        sent = Sent(reference, gateway, message_id or "", requester, recipient,
                    self._clock.seconds())
        self._records.pop(reference, None)
        self._records[reference] = sent
        self._table.put(reference, asdict(sent))
        self._expire()
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
        self._table.delete(sent.reference)
        if report.state == "delivered":
            return sent.requester, f"SMS to {sent.recipient} delivered."
        reason = clean_reason(report.reason) or "the network gave no reason"
        return sent.requester, f"SMS to {sent.recipient} could not be delivered: {reason}"

    def __len__(self) -> int:
        return len(self._records)

    def _expire(self) -> None:
        """Forget SMS older than ``keep`` (oldest first: the records are in time order)."""
        cutoff = self._clock.seconds() - self.keep
        while self._records:
            reference, sent = next(iter(self._records.items()))
            if sent.sent >= cutoff:
                break
            del self._records[reference]
            self._table.delete(reference)

    def _apply(self, rows: dict[str, Any]) -> None:
        records = dict(self._records)
        for reference, row in rows.items():
            try:
                records[reference] = sent = Sent(**row)
                float(sent.sent)
            except (TypeError, ValueError):
                log.warn("SMS outbox: the row for {reference} is unreadable; ignored",
                         reference=reference)
        self._records = dict(sorted(records.items(), key=lambda item: item[1].sent))

    def _loaded(self, rows: dict[str, Any]) -> None:
        self._apply(rows)
        if self._legacy:
            import_file(self._table, self._legacy, _read_legacy, self._apply)
        self._expire()

    def _load_failed(self, failure: Failure) -> None:
        log.error("SMS outbox cannot be read ({error}); delivery reports for earlier SMS will "
                  "not be announced", error=failure.getErrorMessage())


def _read_legacy(path: str) -> dict[str, Any]:
    """The old ``sms-outbox.jsonl`` (``{"sent": {...}}`` and ``{"done": reference}`` lines) as
    rows: the SMS still waiting for a report."""
    rows: dict[str, Any] = {}
    for entry in read_json_lines(path):
        try:
            if "sent" in entry:
                sent = Sent(**entry["sent"])
                rows[sent.reference] = asdict(sent)
            elif "done" in entry:
                rows.pop(str(entry["done"]), None)
        except (TypeError, ValueError):
            continue
    return rows
