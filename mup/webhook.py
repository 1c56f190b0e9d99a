"""The webhook receiver: what SMS gateways post (inbound SMS, delivery reports), made durable.

Every post is checked in this order: body size (413), authentication (403, constant time),
content (400); then it is appended to the journal and answered 2xx only once the journal has
fsync'd it.  A post seen before is answered 2xx and not journaled again.  The receiver knows
nothing of IRC: whoever builds it passes ``on_accepted`` (the bot wakes its delivery, the relay
wakes its pullers) and ``health`` (extra checks for ``/healthz``).  The same class serves the
bot and mup-relay.
"""

from __future__ import annotations

import gc
import json
from typing import Any, Callable, Mapping

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mup import metrics
from mup.gateways import inbound
from mup.gateways.inbound import Posted, Refused
from mup.httpserver import GuardedSite, Limits
from mup.journal import JournalClosed

__all__ = ["Receiver", "WebhookService", "TWIML_EMPTY"]

log = Logger()

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
"""Twilio's answer that sends nothing back."""


class TooLarge(Refused):
    code = 413


class _Unavailable(Refused):
    code = 503


class Receiver:
    """The Klein app of the receiver.

    ``journal`` has ``append(key, record) -> Deferred[Entry | None]``, ``writable()`` and
    ``backlog``; ``on_accepted(entry)`` is called for each new (not duplicate) entry;
    ``health()`` returns extra ``/healthz`` fields (a false boolean makes it answer 503).
    Secrets come from ``[sms.kannel] inbound_token`` and ``[sms.twilio] auth_token``."""

    def __init__(self, config: Any, journal: Any, *,
                 on_accepted: Callable[[Any], object] | None = None,
                 health: Callable[[], Mapping[str, Any]] | None = None,
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.journal = journal
        self.on_accepted = on_accepted
        self.health = health or dict
        self.clock = clock
        self._closing_said = False
        # Label lookups once, not per request.
        self._accepted = {g: metrics.accepted.labels(g) for g in ("kannel", "twilio")}
        self._duplicates = {g: metrics.duplicates.labels(g) for g in ("kannel", "twilio")}
        self.max_body: int = config.webhook.max_body
        self.limits = Limits.from_config(config.webhook)
        self.public_url: str = config.webhook.public_url
        self.kannel_token: str = config.section("sms.kannel").inbound_token
        self.twilio_token: str = config.section("sms.twilio").auth_token
        if self.twilio_token and not self.public_url:
            log.warn("[sms.twilio] auth_token is set but [webhook] public_url is empty: Twilio "
                     "signs the URL it posts to, so every Twilio post will be refused (403)")
        self.app = app = Klein()
        app.route("/kannel/mo", methods=["GET", "POST"])(self.kannel_mo)
        app.route("/kannel/dlr", methods=["GET", "POST"])(self.kannel_dlr)
        app.route("/twilio/sms", methods=["POST"])(self.twilio_sms)
        app.route("/twilio/status", methods=["POST"])(self.twilio_status)
        app.route("/healthz", methods=["GET"])(self.healthz)
        app.route("/metrics", methods=["GET"])(self.metrics)

    def resource(self) -> IResource:
        return self.app.resource()

    def site(self) -> Site:
        """A Site that stops buffering a body at ``max_body`` and keeps no access log (URLs
        carry tokens and phone numbers)."""
        return _QuietSite(self.resource(), requestFactory=_limited_request(self.max_body),
                          limits=self.limits, reactor=self.clock)

    # Gateways

    def kannel_mo(self, request: Request) -> Deferred[bytes] | bytes:
        return self._accept(request, "kannel", b"",
                            lambda p: (inbound.kannel_mo(p, self.kannel_token, self._now()), ""))

    def kannel_dlr(self, request: Request) -> Deferred[bytes] | bytes:
        return self._accept(request, "kannel", b"",
                            lambda p: inbound.kannel_dlr(p, self.kannel_token))

    def twilio_sms(self, request: Request) -> Deferred[bytes] | bytes:
        return self._accept(request, "twilio", TWIML_EMPTY, lambda p: (
            inbound.twilio_sms(p, self.twilio_token, self.public_url, self._now()), ""))

    def twilio_status(self, request: Request) -> Deferred[bytes] | bytes:
        return self._accept(request, "twilio", b"", lambda p: inbound.twilio_status(
            p, self.twilio_token, self.public_url))

    def _now(self) -> float:
        return self.clock.seconds()

    def _accept(self, request: Request, gateway: str, answer: bytes,
                parse: Callable[[Posted], tuple[Any, str]]) -> Deferred[bytes] | bytes:
        """Check and parse synchronously (a refusal is answered at once), then answer once the
        journal made the record durable.  One Deferred per request: this path runs for every
        post a gateway makes, so it keeps to plain callbacks (no coroutine)."""
        try:
            item, status = parse(self._posted(request))
            key, record = inbound.journal_entry(item, status)
            if not self.journal.writable():
                raise _Unavailable("the journal is not writable; try again later")
        except Refused as e:
            return self._refuse(request, e)
        # ``out`` is what Klein waits on; it cancels it when the gateway hangs up, which must
        # leave the journal's write alone (the entry is delivered all the same).
        out: Deferred[bytes] = Deferred()
        self.journal.append(key, record).addCallbacks(
            self._appended, self._append_failed,
            callbackArgs=(request, gateway, key, answer, out), errbackArgs=(request, key, out))
        return out

    def _appended(self, entry: Any, request: Request, gateway: str, key: str, answer: bytes,
                  out: Deferred[bytes]) -> None:
        """The journal made it durable: count it, answer 2xx, then hand it on
        (``on_accepted``), so delivery's work on it does not delay the answer.  Hands on even
        when the gateway hung up meanwhile, as the entry must be delivered all the same."""
        if entry is None:
            self._duplicates[gateway].inc()
        else:
            self._accepted[gateway].inc()
        if not out.called:   # called: cancelled, the gateway hung up
            request.setHeader(b"content-type", b"text/xml; charset=utf-8" if answer
                              else b"text/plain; charset=utf-8")
            out.callback(answer)
        if entry is not None and self.on_accepted is not None:
            try:
                self.on_accepted(entry)
            except Exception:
                log.failure("on_accepted failed for {key} (it stays in the journal)", key=key)

    def _append_failed(self, failure: Failure, request: Request, key: str,
                       out: Deferred[bytes]) -> None:
        if failure.check(JournalClosed):
            # Shutting down: whatever is still arriving gets a 503 and is posted again later.
            # One line says so, not a traceback per post.
            reason = "mup is shutting down; try again later"
            if not self._closing_said:
                self._closing_said = True
                log.info("The journal is closed (shutting down): posts still arriving are "
                         "answered 503, and the gateway posts them again")
        else:
            reason = "the journal is not writable; try again later"
            log.failure("journal append failed for {key}", failure, key=key)
        if not out.called:
            out.callback(self._refuse(request, _Unavailable(reason), quiet=True))

    def _posted(self, request: Request) -> Posted:
        length = request.getHeader(b"content-length")
        if getattr(request, "too_large", False) or (
                length is not None and (not length.isdigit() or int(length) > self.max_body)):
            raise TooLarge(f"body over {self.max_body} bytes")
        request.content.seek(0)
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise TooLarge(f"body over {self.max_body} bytes")
        headers = {name.decode("latin-1").lower(): b",".join(values).decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        return Posted(request.method.decode("ascii", "replace"), request.uri, headers, body)

    def _refuse(self, request: Request, refused: Refused, quiet: bool = False) -> bytes:
        """Answer ``refused``; ``quiet``: its cause is logged already."""
        metrics.rejected.labels({400: "malformed", 403: "forbidden", 413: "too_large"}.get(
            refused.code, "unavailable")).inc()
        if not quiet:
            log.info("refused {method} {path}: {code} {reason}", method=request.method.decode(
                "ascii", "replace"), path=request.path.decode("latin-1")[:64],
                code=refused.code, reason=refused.reason)
        request.setResponseCode(refused.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if refused.code == 503:
            request.setHeader(b"retry-after", b"5")
        return refused.reason.encode("utf-8") + b"\n"

    # Operations

    def healthz(self, request: Request) -> bytes:
        status: dict[str, Any] = {"journal_writable": bool(self.journal.writable()),
                                  "backlog": int(self.journal.backlog)}
        try:
            status.update(self.health())
        except Exception:
            log.failure("health check failed")
            status["health_check"] = False
        ok = all(v for v in status.values() if isinstance(v, bool))
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status, sort_keys=True).encode("utf-8") + b"\n"

    def metrics(self, request: Request) -> bytes:
        metrics.backlog.set(self.journal.backlog)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(metrics.REGISTRY)


class _QuietSite(GuardedSite):
    def log(self, request: Request) -> None:
        """No access log: URLs carry tokens and phone numbers."""


class _LimitedRequest(Request):
    """Stops buffering a body past ``max_body`` bytes and marks itself ``too_large``."""

    max_body = 65536
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)


def _limited_request(max_body: int) -> type[Request]:
    return type("LimitedRequest", (_LimitedRequest,), {"max_body": max_body})


_frozen = False


def _freeze_start_up_heap() -> None:
    """Once per process, when the receiver starts listening: move what start-up built (modules,
    the journal's recovered backlog) out of the cyclic collector's reach (``gc.freeze``).  It
    lives as long as the process, yet every full collection, which the accept path's
    allocations trigger now and then, would walk it again: tens of milliseconds with the
    reactor stopped, the receiver's p99.  Frozen objects are still freed by reference count."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


class WebhookService(Service):
    """Listens on a Twisted server endpoint string (``tcp:port=8080:interface=127.0.0.1``,
    ``ssl:...``) with ``site``; ``listening`` fires with the port (tests read the number)."""

    def __init__(self, endpoint: str, site: Site, reactor: Any) -> None:
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self.reactor, self.endpoint).listen(self.site)
        failure = []

        def listened(port: IListeningPort) -> None:
            self.port = port
            _freeze_start_up_heap()
            log.info("webhook receiver listening on {address}", address=port.getHost())
            self.listening.callback(port)

        def failed(f: Any) -> None:
            failure.append(f)
            log.error("webhook receiver cannot listen on {endpoint}: {why}",
                      endpoint=self.endpoint, why=f.getErrorMessage())
            self.listening.errback(f)

        d.addCallbacks(listened, failed)
        if failure:
            self.listening.addErrback(lambda f: None)
            # twistd gives up on this exception, but threads started before (the journal's
            # writer) would keep the process alive: run the shutdown triggers that stop them.
            if not getattr(self.reactor, "running", True):
                try:
                    self.reactor.fireSystemEvent("shutdown")
                except NotImplementedError:   # a test's MemoryReactor
                    pass
            failure[0].raiseException()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
