"""The SMS gateway interface: what the rest of mup knows of a gateway.

Each gateway (``mup.gateways.kannel``, ``.twilio``, ``.aql``) is one small class that sends an
SMS and says what happened; what gateways post back to us (inbound SMS, delivery reports) is
parsed and authenticated in ``mup.gateways.inbound`` into the records below.  This module is the
interface only; ``mup.gateways.factory`` builds the configured gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from twisted.internet.defer import Deferred

__all__ = ["DeliveryReport", "Gateway", "InboundSMS", "SendResult", "from_record", "to_record"]


@dataclass(frozen=True)
class SendResult:
    """What a gateway said about one outbound SMS."""

    status: str
    """``"accepted"`` (on its way), ``"queued"`` (the gateway holds it) or ``"failed"``."""
    reason: str = ""
    """For failures: a reason the user can act on."""
    message_id: str = ""
    """The gateway's id for the message, to match delivery reports, when it gives one."""
    segments: int = 1


@dataclass(frozen=True)
class InboundSMS:
    """An SMS someone sent to the gateway number, as a gateway posted it to us."""

    gateway: str
    """``"kannel"`` or ``"twilio"``: with ``message_id`` it is the dedupe key."""
    message_id: str
    sender: str
    """The phone number it came from, as the gateway wrote it."""
    recipient: str
    text: str
    received: float
    """Unix time it reached us (or the gateway, where it says)."""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryReport:
    """A gateway's word on an SMS we sent."""

    gateway: str
    message_id: str
    """Matches ``SendResult.message_id`` (or the reference mup put in the dlr-url)."""
    state: str
    """``"delivered"``, ``"failed"`` or ``"pending"`` (intermediate states)."""
    reason: str = ""


def to_record(item: InboundSMS | DeliveryReport, status: str = "") -> tuple[str, dict[str, Any]]:
    """The store key and record (plain JSON) for what a gateway posted.  An SMS is keyed
    ``<gateway>:<message id>``; a delivery report ``<gateway>:report:<id>:<status>``, so each
    state change is kept once however often it is posted."""
    if isinstance(item, InboundSMS):
        return f"{item.gateway}:{item.message_id}", {
            "kind": "sms", "gateway": item.gateway, "id": item.message_id,
            "from": item.sender, "to": item.recipient, "text": item.text,
            "received": item.received, "extra": dict(item.extra)}
    return f"{item.gateway}:report:{item.message_id}:{status}", {
        "kind": "report", "gateway": item.gateway, "id": item.message_id,
        "state": item.state, "reason": item.reason}


def from_record(record: Mapping[str, Any]) -> InboundSMS | DeliveryReport:
    """Read back a stored record written by :func:`to_record`; raises ``ValueError`` for
    a record that is not one."""
    try:
        if record["kind"] == "sms":
            return InboundSMS(str(record["gateway"]), str(record["id"]), str(record["from"]),
                              str(record.get("to", "")), str(record["text"]),
                              float(record["received"]),
                              {str(k): str(v) for k, v in dict(record.get("extra", {})).items()})
        if record["kind"] == "report":
            return DeliveryReport(str(record["gateway"]), str(record["id"]),
                                  str(record["state"]), str(record.get("reason", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an inbound record: {e!r}") from None
    raise ValueError(f"unknown record kind {record.get('kind')!r}")


class Gateway(Protocol):
    """Sends SMS.  ``send`` never errbacks: failures come back as ``SendResult("failed")``."""

    name: str

    def send(self, number: str, text: str, reference: str = "") -> Deferred[SendResult]:
        """Send ``text`` to ``number`` (E.164).  ``reference`` is mup's own id for the message,
        which the gateway echoes in delivery reports where it can."""
        ...
