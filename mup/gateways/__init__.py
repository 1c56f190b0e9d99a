"""What every HTTP gateway shares: one request with a timeout, bounded retries with backoff.

A retry happens only when the gateway told us it did not take the SMS (HTTP 429 or 503) or we
never reached it (connection refused, DNS failure).  A timeout or a connection lost after the
request went out is ambiguous: where the gateway can say what it took (Twilio lists messages,
``lookup``) it is asked, and the SMS retried only if it is not there; elsewhere (Kannel, AQL)
it is reported as possibly sent, never sent twice.
4xx answers are explained by the gateway class, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup import metrics
from mup.gateway import SendResult
from mup.phone import MaskedNumber
from mup.text import clean_reason

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["Answer", "HTTPGateway", "Unknowable", "real_http_client"]

log = Logger()

MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Answer:
    """A gateway's HTTP answer, read whole."""

    code: int
    body: bytes
    retry_after: float | None = None
    location: str = ""
    """Where a redirect points (``Location``), credentials and query left out."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()


def real_http_client(reactor: Any) -> HTTPClient:
    """A treq client with a persistent connection pool; HTTPS certificates are verified.
    It keeps no cookies: no gateway needs them, and nothing should carry from one SMS to the
    next.  ``reactor``: the whole reactor, which the agent connects through."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    # treq takes any CookieJar at run time; its annotation names its own subclass.
    return HTTPClient(Agent(reactor, pool=pool), cookiejar=_NoCookies())  # type: ignore[arg-type]


class _NoCookies(CookieJar):
    """A cookie jar that never sends or keeps a cookie."""

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


_NOT_SENT = (net_error.ConnectError, net_error.DNSLookupError)
"""Failures that prove the request never reached the gateway: safe to retry."""


class HTTPGateway:
    """Base of the HTTP gateways: subclasses build the request and read the answer."""

    name = "http"

    def __init__(self, http: HTTPClient, clock: IReactorTime, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 1.0) -> None:
        self._http = http
        self._clock = clock
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.debug_numbers = False
        """Log full numbers (at debug level); only with ``[log] level = "debug"``, since
        nothing guarantees that debug events are filtered out otherwise."""

    def send(self, number: str, text: str, reference: str = "") -> Deferred[SendResult]:
        """Send ``text`` to ``number`` (E.164); never errbacks."""
        d = Deferred.fromCoroutine(self._send(number, text, reference))

        def unexpected(failure: Failure) -> SendResult:
            log.failure("{gateway}: sending failed unexpectedly", failure, gateway=self.name)
            return SendResult("failed", "an internal error in mup; it has been logged")

        return d.addErrback(unexpected)

    async def _send(self, number: str, text: str, reference: str) -> SendResult:
        method, url, kwargs = self.request(number, text, reference)
        result = await self._with_retries(method, url, kwargs,
                                          lambda answer: self.parse(answer, text), number, text)
        masked = MaskedNumber(number)
        if self.debug_numbers:
            log.debug("{gateway}: SMS {reference} to {number}: {status} {reason}",
                      gateway=self.name, reference=reference, number=number,
                      status=result.status, reason=result.reason)
        if result.status == "failed":
            metrics.sms_failed.labels(self.name).inc()
            log.warn("{gateway}: SMS {reference} to {number} failed: {reason}",
                     gateway=self.name, reference=reference, number=masked, reason=result.reason)
        else:
            metrics.sms_sent.labels(self.name).inc()
            log.info("{gateway}: SMS {reference} to {number} {status} ({segments} part(s))",
                     gateway=self.name, reference=reference, number=masked,
                     status=result.status, segments=result.segments)
        return result

    # Subclasses fill these in.

    def request(self, number: str, text: str, reference: str
                ) -> tuple[str, str, dict[str, Any]]:
        """The HTTP method, URL and treq keyword arguments for one SMS."""
        raise NotImplementedError

    def parse(self, answer: Answer, text: str) -> SendResult:
        """What the gateway's (non-429, non-503) answer means."""
        raise NotImplementedError

    # The machinery.

    async def _once(self, method: str, url: str, kwargs: dict[str, Any]) -> Answer:
        # A redirect is never followed: no gateway sends one for an SMS, and following it
        # would replay the credentials (and the text) to wherever it points.
        response = await self._http.request(method, url, allow_redirects=False, **kwargs)
        body = await response.content()
        retry_after = None
        values = response.headers.getRawHeaders(b"retry-after") or []
        if values:
            try:
                retry_after = float(values[0])
            except ValueError:
                retry_after = None
        location = (response.headers.getRawHeaders(b"location") or [b""])[0]
        return Answer(response.code, body, retry_after, _where(location))

    def _attempt(self, method: str, url: str, kwargs: dict[str, Any]) -> Deferred[Answer]:
        d = Deferred.fromCoroutine(self._once(method, url, kwargs))
        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=_timed_out)
        return d

    async def lookup(self, number: str, text: str, since: float) -> SendResult | None:
        """After an ambiguous failure: ask the gateway whether it took this SMS since
        ``since``.  The result if it did, None if it surely did not (so a retry cannot send
        it twice); raise :class:`Unknowable` where the gateway gives no way to tell."""
        raise Unknowable()

    async def _with_retries(self, method: str, url: str, kwargs: dict[str, Any],
                            parse: Callable[[Answer], SendResult], number: str = "",
                            text: str = "") -> SendResult:
        reason = ""
        started = self._clock.seconds()
        for attempt in range(self.retries + 1):
            delay = min(self.backoff * 2 ** attempt, MAX_BACKOFF)
            try:
                answer = await self._attempt(method, url, kwargs)
            except _NOT_SENT as e:
                reason = f"could not reach the SMS gateway ({type(e).__name__})"
            except Exception as e:
                if _tls_failure(e):
                    return SendResult("failed", "could not verify the SMS gateway's TLS "
                                      "certificate; tell the bot's operator")
                what = ("did not answer in time" if isinstance(e, TimeoutError)
                        else "connection broke")
                log.warn("{gateway}: {what} ({error}); the SMS may or may not be sent",
                         gateway=self.name, what=what, error=type(e).__name__)
                try:
                    found = await self.lookup(number, text, started)
                except Exception as unknown:
                    if not isinstance(unknown, Unknowable):
                        log.warn("{gateway}: could not check whether the SMS went out: "
                                 "{error}", gateway=self.name, error=type(unknown).__name__)
                    subject = ("the SMS gateway did not answer in time" if what.startswith("did")
                               else "the connection to the SMS gateway broke")
                    return SendResult("failed", f"{subject}; the SMS may still arrive, so "
                                      "check before sending it again")
                if found is not None:
                    log.info("{gateway}: the SMS went out after all ({id})", gateway=self.name,
                             id=found.message_id)
                    return found
                reason = f"the SMS gateway {what}"
            else:
                if 300 <= answer.code < 400:
                    log.error("{gateway}: the gateway answered HTTP {code}, a redirect to "
                              "{location}; mup does not follow redirects (they would replay "
                              "its credentials): set its URL in the config to the new one",
                              gateway=self.name, code=answer.code,
                              location=answer.location or "nowhere")
                    return SendResult("failed", "the SMS gateway's address has changed (it "
                                      "answered with a redirect); tell the bot's operator")
                if answer.code not in (429, 503):
                    return parse(answer)
                reason = ("the SMS gateway is busy (HTTP 429)" if answer.code == 429
                          else "the SMS gateway is temporarily unavailable (HTTP 503)")
                if answer.retry_after is not None:
                    delay = min(max(answer.retry_after, 0.0), MAX_BACKOFF)
            if attempt < self.retries:
                log.info("{gateway}: {reason}; retrying in {delay}s", gateway=self.name,
                         reason=reason, delay=delay)
                await deferLater(self._clock, delay)
        tries = self.retries + 1
        return SendResult("failed", f"{reason}; tried {tries} time{'s' if tries > 1 else ''}, "
                          "try again later")


def _where(location: bytes) -> str:
    """A redirect's target for the log: scheme, host, port and path (no user, password or
    query: a gateway may echo the request's own, secrets included)."""
    try:
        parts = urlsplit(location.decode("latin-1"))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unreadable address"
    if not host:
        return clean_reason(parts.path, 100) or ""
    return clean_reason(f"{parts.scheme}://{host}{port}{parts.path}", 200)


class Unknowable(Exception):
    """The gateway gives no way to tell whether it took an SMS."""


def _timed_out(result: Any, timeout: float) -> None:
    """Whatever cancelling gave (the agent wraps it in its own errors), it was our timeout."""
    raise TimeoutError(f"no answer in {timeout} seconds")


def _tls_failure(e: BaseException) -> bool:
    reasons = getattr(e, "reasons", None) or []
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover
        return False
    return any(getattr(r, "check", lambda *_: False)(SSL.Error) for r in reasons)
