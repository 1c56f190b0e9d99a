"""Twilio's Messages API: a form POST with Basic auth, a JSON answer, delivery by StatusCallback.

Twilio creates nothing when it answers 429 (or 503), so those are retried; after a timeout the
message list says whether the SMS was created, so it is retried only if it was not.  Its 4xx
error codes are turned into reasons a user can act on.
"""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime

from mup.gateway import SendResult
from mup.gateways import Answer, HTTPGateway
from mup.segments import count
from mup.text import clean_reason

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["ERRORS", "TwilioGateway"]

CLOCK_SKEW = 120.0
"""Seconds of difference between our clock and Twilio's tolerated when matching messages."""

ERRORS = {
    21211: "the number is not a valid phone number for the gateway",
    21408: "the gateway is not allowed to send to that country",
    21610: "the recipient has opted out of these SMS (they replied STOP; texting START "
           "to the gateway number undoes it)",
    21612: "the gateway cannot route SMS from our number to that number",
    21614: "that number cannot receive SMS (not a mobile)",
    21617: "the message is too long for the gateway",
    20003: "the SMS gateway refused mup's credentials; tell the bot's operator",
    20404: "the SMS gateway account was not found; tell the bot's operator",
    21606: "the gateway cannot send from the configured sender; tell the bot's operator",
    21212: "the configured sender is not a valid number; tell the bot's operator",
}
"""Twilio error codes, in words a user can act on."""


class TwilioGateway(HTTPGateway):
    """Sends with ``POST /2010-04-01/Accounts/{sid}/Messages.json``."""

    name = "twilio"

    def __init__(self, http: HTTPClient, clock: IReactorTime, account_sid: str, auth_token: str,
                 sender: str = "", messaging_service_sid: str = "",
                 api_url: str = "https://api.twilio.com", public_url: str = "",
                 timeout: float = 10.0, retries: int = 3, backoff: float = 1.0) -> None:
        super().__init__(http, clock, timeout, retries, backoff)
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.sender = sender
        self.messaging_service_sid = messaging_service_sid
        self.api_url = api_url.rstrip("/")
        self.public_url = public_url

    @property
    def messages_url(self) -> str:
        return (f"{self.api_url}/2010-04-01/Accounts/{quote(self.account_sid, safe='')}"
                "/Messages.json")

    def request(self, number: str, text: str, reference: str
                ) -> tuple[str, str, dict[str, Any]]:
        data = [("To", number), ("Body", text)]
        if self.messaging_service_sid:
            data.append(("MessagingServiceSid", self.messaging_service_sid))
        else:
            data.append(("From", self.sender))
        if self.public_url:
            data.append(("StatusCallback", f"{self.public_url.rstrip('/')}/twilio/status"))
        return "POST", self.messages_url, {
            "data": data, "auth": (self.account_sid, self._auth_token),
            "headers": {"Accept": "application/json"}}

    def parse(self, answer: Answer, text: str) -> SendResult:
        try:
            body = json.loads(answer.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if answer.code in (200, 201):
            sid = str(body.get("sid") or "")
            try:
                segments = int(body.get("num_segments") or 0)
            except (TypeError, ValueError):
                segments = 0
            segments = segments or max(count(text).segments, 1)
            status = body.get("status")
            if status in ("failed", "undelivered"):
                return SendResult("failed", self._explain(body.get("error_code"),
                                                          body.get("error_message")),
                                  message_id=sid, segments=segments)
            if status == "scheduled":
                return SendResult("queued", message_id=sid, segments=segments)
            return SendResult("accepted", message_id=sid, segments=segments)
        if answer.code == 401:
            return SendResult("failed", ERRORS[20003])
        return SendResult("failed", self._explain(body.get("code"), body.get("message"),
                                                  answer.code))

    async def lookup(self, number: str, text: str, since: float) -> SendResult | None:
        """Twilio lists the messages sent to a number: after a timeout, look for this one
        (same body, created since the first attempt, allowing for clock skew) before any
        retry, so a retry never sends it twice."""
        answer = await self._attempt("GET", self.messages_url, {
            "params": [("To", number), ("PageSize", "20")],
            "auth": (self.account_sid, self._auth_token),
            "headers": {"Accept": "application/json"}})
        if answer.code != 200:
            raise RuntimeError(f"listing messages answered HTTP {answer.code}")
        messages = json.loads(answer.body).get("messages") or []
        for message in messages:
            if message.get("body") != text:
                continue
            try:
                created = parsedate_to_datetime(message.get("date_created") or "").timestamp()
            except (TypeError, ValueError):
                continue
            if created >= since - CLOCK_SKEW:
                return self.parse(Answer(201, json.dumps(message).encode()), text)
        return None

    @staticmethod
    def _explain(code: Any, message: Any, http_code: int | None = None) -> str:
        try:
            code = int(code)
        except (TypeError, ValueError):
            code = None
        if code in ERRORS:
            return ERRORS[code]
        text = clean_reason(str(message or "")) or (f"HTTP {http_code}" if http_code else "")
        suffix = f" (Twilio error {code})" if code else ""
        return f"the SMS gateway refused it: {text}{suffix}"
