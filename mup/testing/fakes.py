"""Local fakes of the SMS providers' HTTP APIs, errors included, for mup's tests and yours.

Each fake is a ``twisted.web`` resource: serve it on a loopback port with :func:`listen`, or hand it
to ``treq.testing.StubTreq`` for tests that run without a network.  They implement the
documented requests and answers (Twilio's Messages API, AQL's HTTP gateway), keep what was sent
in ``.messages``, and can be told to fail the next requests (``fail_next``).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import phonenumbers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mup.segments import count

__all__ = ["FakeAQL", "FakeTwilio", "listen"]


@dataclass
class _Failure:
    code: int
    body: bytes
    content_type: bytes
    retry_after: str | None = None


class _Fake(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.messages: list[dict[str, Any]] = []
        self.requests = 0
        """Every request seen, failed or not."""
        self._failures: list[_Failure] = []

    def _arg(self, request: Request, name: str) -> str | None:
        values = (request.args or {}).get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    def _failure(self, request: Request) -> bytes | None:
        self.requests += 1
        if not self._failures:
            return None
        f = self._failures.pop(0)
        request.setResponseCode(f.code)
        request.setHeader(b"content-type", f.content_type)
        if f.retry_after is not None:
            request.setHeader(b"retry-after", f.retry_after.encode())
        return f.body


def _valid(number: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


class FakeTwilio(_Fake):
    """Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.

    Answers 201 with the message JSON, 401 (20003) for a wrong login, 400 with 21211 for an
    invalid ``To``, 21610 for a number in ``opted_out``, 21602 for an empty body, 21603 for a
    missing sender, 21617 for a body over 1600 characters.  ``GET`` on the same URL lists the
    messages (``To`` filter, newest first), as Twilio's list API does; ``stall_next`` makes a
    POST never answer, before or after creating the message.
    """

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "secret-token",
                 clock: Any = None) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.opted_out: set[str] = set()
        self.clock = clock
        """Anything with ``seconds()`` (e.g. ``task.Clock``) for ``date_created``; default
        the wall clock."""
        self._stall: list[bool] = []

    def stall_next(self, after_create: bool) -> None:
        """Never answer the next POST (the client times out); create the message first if
        ``after_create``, as when an answer is lost on the way back."""
        self._stall.append(after_create)

    def fail_next(self, status: int, code: int | None = None, times: int = 1,
                  retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with HTTP ``status`` (and Twilio ``code``)."""
        body = json.dumps({"code": code or (20429 if status == 429 else status),
                           "message": "Too Many Requests" if status == 429 else "Error",
                           "status": status}).encode()
        for _ in range(times):
            self._failures.append(_Failure(status, body, b"application/json", retry_after))

    def _error(self, request: Request, status: int, code: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"code": code, "message": message, "status": status,
                           "more_info": f"https://www.twilio.com/docs/errors/{code}"}).encode()

    def render(self, request: Request) -> bytes | int:
        failed = self._failure(request)
        if failed is not None:
            return failed
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json".encode()
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode())
        auth = request.getHeader(b"authorization") or b""
        if not secrets.compare_digest(auth, b"Basic " + expected):
            return self._error(request, 401, 20003, "Authenticate")
        if request.path != path:
            return self._error(request, 404, 20404, "The requested resource was not found")
        if request.method == b"GET":
            return self._list(request)
        if request.method != b"POST":
            return self._error(request, 405, 20004, "Method not allowed")
        stall = self._stall.pop(0) if self._stall else None
        if stall is False:
            return NOT_DONE_YET
        to, body = self._arg(request, "To") or "", self._arg(request, "Body")
        sender = self._arg(request, "From")
        service = self._arg(request, "MessagingServiceSid")
        if not to or not _valid(to):
            return self._error(request, 400, 21211,
                               f"The 'To' number {to} is not a valid phone number.")
        if not sender and not service:
            return self._error(request, 400, 21603, "A 'From' phone number is required.")
        if not body:
            return self._error(request, 400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(request, 400, 21617,
                               "The concatenated message body exceeds the 1600 character limit.")
        if to in self.opted_out:
            return self._error(request, 400, 21610,
                               "Attempt to send to unsubscribed recipient")
        message = {
            "sid": "SM" + secrets.token_hex(16), "account_sid": self.account_sid,
            "to": to, "from": sender, "messaging_service_sid": service, "body": body,
            "status": "accepted" if service else "queued",
            "num_segments": str(count(body).segments), "direction": "outbound-api",
            "error_code": None, "error_message": None,
            "status_callback": self._arg(request, "StatusCallback"),
            "date_created": formatdate(self.clock.seconds() if self.clock else time.time(),
                                       usegmt=False),
        }
        self.messages.append(message)
        if stall:
            return NOT_DONE_YET
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(message).encode()


    def _list(self, request: Request) -> bytes:
        """``GET Messages.json?To=...``: the account's messages, newest first."""
        to = self._arg(request, "To")
        found = [m for m in reversed(self.messages) if to is None or m["to"] == to]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"messages": found[:int(self._arg(request, "PageSize") or 50)],
                           "page": 0}).encode()


class FakeAQL(_Fake):
    """AQL's gateway: a form POST of username, password, destination, message, originator.

    Answers ``0:<credits> SMS successfully queued``, ``2:0 Authentication error``,
    ``3:0 Destination number(s) error`` or ``5:0 Insufficient credit``.
    """

    def __init__(self, username: str = "mup", password: str = "secret", credit: int = 100
                 ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.credit = credit

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with HTTP ``status``."""
        for _ in range(times):
            self._failures.append(_Failure(status, b"Service unavailable", b"text/plain",
                                           retry_after))

    def render(self, request: Request) -> bytes | int:
        failed = self._failure(request)
        if failed is not None:
            return failed
        request.setHeader(b"content-type", b"text/plain")
        if request.method != b"POST":
            request.setResponseCode(405)
            return b"POST only"
        user, password = self._arg(request, "username"), self._arg(request, "password")
        if user != self.username or password is None or not secrets.compare_digest(
                password.encode(), self.password.encode()):
            return b"2:0 Authentication error"
        destination = self._arg(request, "destination") or ""
        message = self._arg(request, "message") or ""
        if not destination.isdigit() or not _valid("+" + destination):
            return b"3:0 Destination number(s) error"
        credits = max(count(message).segments, 1)
        if credits > self.credit:
            return b"5:0 Insufficient credit or invalid number of msg/destination"
        self.credit -= credits
        self.messages.append({"destination": destination, "message": message,
                              "originator": self._arg(request, "originator")})
        return f"0:{credits} SMS successfully queued".encode()


def listen(resource: Resource, reactor: Any, port: int = 0, interface: str = "127.0.0.1"
           ) -> Any:
    """Serve ``resource`` over HTTP on loopback; returns the listening port
    (``.getHost().port``, ``.stopListening()``)."""
    return reactor.listenTCP(port, Site(resource), interface=interface)
