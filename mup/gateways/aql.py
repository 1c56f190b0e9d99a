"""AQL's HTTP gateway, the one the original mup used: a form POST, a one-line answer.

The answer is ``<status>:<credits> <info>``; status 0 or 1 means accepted, anything else failed
with ``<info>``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from mup.gateway import SendResult
from mup.gateways import Answer, HTTPGateway
from mup.segments import count
from mup.text import clean_reason

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["AQLGateway", "STATUSES"]

STATUSES = {
    2: "the SMS gateway refused mup's login; tell the bot's operator",
    3: "the gateway says the destination number is not valid",
    5: "the SMS account is out of credit; tell the bot's operator",
}
"""AQL status codes, in words a user can act on."""

_ANSWER = re.compile(r"^\s*(\d+):(\d+)\s*(.*)$", re.S)


class AQLGateway(HTTPGateway):
    """Sends with a form POST of username, password, destination, message and originator."""

    name = "aql"

    def __init__(self, http: HTTPClient, clock: IReactorTime, url: str, username: str,
                 password: str, sender: str = "", timeout: float = 10.0, retries: int = 3,
                 backoff: float = 1.0) -> None:
        super().__init__(http, clock, timeout, retries, backoff)
        self.url = url
        self._username = username
        self._password = password
        self.sender = sender

    def request(self, number: str, text: str, reference: str
                ) -> tuple[str, str, dict[str, Any]]:
        data = [("username", self._username), ("password", self._password),
                ("destination", number.lstrip("+")), ("message", text)]
        if self.sender:
            data.append(("originator", self.sender))
        return "POST", self.url, {"data": data}

    def parse(self, answer: Answer, text: str) -> SendResult:
        segments = max(count(text).segments, 1)
        if answer.code in (401, 403):
            return SendResult("failed", STATUSES[2])
        if answer.code != 200:
            return SendResult("failed", f"the SMS gateway had an error (HTTP {answer.code})")
        m = _ANSWER.match(answer.text)
        if not m:
            return SendResult("failed", "the SMS gateway gave an answer mup does not understand")
        status, info = int(m.group(1)), clean_reason(m.group(3))
        if status in (0, 1):
            return SendResult("accepted", segments=segments)
        return SendResult("failed", STATUSES.get(status, f"the SMS gateway refused it: "
                                                         f"{info or status}"))
