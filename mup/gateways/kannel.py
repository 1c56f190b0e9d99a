"""Kannel's sendsms interface (smsbox): one GET per SMS, delivery reports through a dlr-url.

Kannel answers ``202 0: Accepted for delivery`` or ``202 3: Queued for later delivery`` (no SMSC
connected), ``403`` for a wrong login, ``400`` for a bad request and ``503`` when it is busy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from twisted.internet.interfaces import IReactorTime

from mup.gateway import SendResult
from mup.gateways import Answer, HTTPGateway
from mup.segments import UCS2, count
from mup.text import clean_reason

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["DLR_MASK", "KannelGateway", "dlr_url"]

DLR_MASK = 1 | 2 | 16
"""Delivery reports wanted: delivered (1), not delivered (2), rejected by the SMSC (16)."""


def dlr_url(public_url: str, reference: str, token: str) -> str:
    """The URL Kannel calls with a delivery report for SMS ``reference``; Kannel replaces
    ``%d`` with the report type (1 delivered, 2 failed, 4 queued, 8 SMSC ack, 16 SMSC reject)."""
    return (f"{public_url.rstrip('/')}/kannel/dlr?ref={quote(reference, safe='')}"
            f"&status=%d&token={quote(token, safe='')}")


class KannelGateway(HTTPGateway):
    """Sends through Kannel's smsbox ``/cgi-bin/sendsms``."""

    name = "kannel"

    def __init__(self, http: HTTPClient, clock: IReactorTime, sendsms_url: str, username: str,
                 password: str, sender: str = "", smsc: str = "", public_url: str = "",
                 inbound_token: str = "", timeout: float = 10.0, retries: int = 3,
                 backoff: float = 1.0) -> None:
        super().__init__(http, clock, timeout, retries, backoff)
        self.sendsms_url = sendsms_url
        self._username = username
        self._password = password
        self.sender = sender
        self.smsc = smsc
        self.public_url = public_url
        self._inbound_token = inbound_token

    def request(self, number: str, text: str, reference: str
                ) -> tuple[str, str, dict[str, Any]]:
        params = [("username", self._username), ("password", self._password),
                  ("to", number), ("text", text), ("charset", "UTF-8"),
                  ("coding", "2" if count(text).encoding == UCS2 else "0")]
        if self.sender:
            params.append(("from", self.sender))
        if self.smsc:
            params.append(("smsc", self.smsc))
        if self.public_url and reference:
            params += [("dlr-mask", str(DLR_MASK)),
                       ("dlr-url", dlr_url(self.public_url, reference, self._inbound_token))]
        # The query is encoded here, once (as treq would: form encoding, UTF-8).
        separator = "&" if "?" in self.sendsms_url else "?"
        return "GET", f"{self.sendsms_url}{separator}{urlencode(params)}", {}

    def parse(self, answer: Answer, text: str) -> SendResult:
        segments = max(count(text).segments, 1)
        body = answer.text
        if answer.code in (200, 202):
            if body.startswith("3:"):
                return SendResult("queued", segments=segments)
            return SendResult("accepted", segments=segments)
        if answer.code in (401, 403):
            return SendResult("failed", "the SMS gateway refused mup's login; tell the bot's "
                              "operator (check [sms.kannel] username and password)")
        if 400 <= answer.code < 500:
            return SendResult("failed", f"the SMS gateway refused the message: "
                              f"{clean_reason(body) or answer.code}")
        return SendResult("failed", f"the SMS gateway had an error (HTTP {answer.code}); "
                          "try again later")
