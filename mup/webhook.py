"""The webhook receiver: what SMS gateways post (inbound SMS, delivery reports), made durable.

Every post is checked in this order: body size (413), authentication (403, constant time),
content (400); then it is appended to the message store and answered 2xx only once the store
committed it.  A post seen before is answered 2xx and not stored again.  The receiver knows
nothing of IRC: whoever builds it passes ``on_accepted`` (the bot hands the entry to its
delivery) and ``health`` (extra checks for ``/healthz``).  The same class serves the bot and
mup-relay (whose pulls hear of new entries from the store itself).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping, cast

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mup import metrics
from mup.config import Config
from mup.gateway import DeliveryReport, InboundSMS, to_record
from mup.gateways import inbound
from mup.gateways.inbound import Posted, PostRefused
from mup.httpserver import GuardedSite, Limits
from mup.store import Backlog, Entry, MessageStore, StoreClosed, StoreError

__all__ = ["Receiver", "WebhookService", "TWIML_EMPTY"]

log = Logger()

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
"""Twilio's answer that sends nothing back."""


Health = Mapping[str, Any] | Awaitable[Mapping[str, Any]]
"""Extra ``/healthz`` fields, now or later."""


class TooLarge(PostRefused):
    code = 413


class _Unavailable(PostRefused):
    code = 503


class Receiver:
    """The Klein app of the receiver.

    ``store`` is the :class:`mup.store.MessageStore`; ``on_accepted(entry)`` is called for each
    new (not duplicate) entry;
    ``health()`` returns extra ``/healthz`` fields, or a Deferred of them (a false boolean makes
    it answer 503; it is also called before ``/metrics``, to refresh its gauges).
    Secrets come from ``[sms.kannel] inbound_token`` and ``[sms.twilio] auth_token``."""

    def __init__(self, config: Config, store: MessageStore, *,
                 on_accepted: Callable[[Entry], object] | None = None,
                 health: Callable[[], Health] | None = None,
                 clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor  # the global reactor is typed as a module

            clock = cast(IReactorTime, reactor)
        self.store = store
        self.on_accepted = on_accepted
        self.health: Callable[[], Health] = health or dict
        self.clock = clock
        self._closing_said = False
        self._unreadable = False   # the backlog could not be read last time (said once)
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
                parse: Callable[[Posted], tuple[InboundSMS | DeliveryReport, str]]
                ) -> Deferred[bytes] | bytes:
        """Check and parse synchronously (a refusal is answered at once), then answer once the
        store committed the record.  One Deferred per request: this path runs for every
        post a gateway makes, so it keeps to plain callbacks (no coroutine)."""
        try:
            item, status = parse(self._posted(request))
            key, record = to_record(item, status)
            if not self.store.writable():
                raise _Unavailable("the journal is not writable; try again later")
        except PostRefused as e:
            return self._refuse(request, e)
        # ``out`` is what Klein waits on; it cancels it when the gateway hangs up, which must
        # leave the store's write alone (the entry is delivered all the same).
        out: Deferred[bytes] = Deferred()
        self.store.append(key, record).addCallbacks(
            self._appended, self._append_failed,
            callbackArgs=(request, gateway, key, answer, out), errbackArgs=(request, key, out))
        return out

    def _appended(self, entry: Entry | None, request: Request, gateway: str, key: str,
                  answer: bytes, out: Deferred[bytes]) -> None:
        """The store committed it: count it, answer 2xx, then hand it on
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
                log.failure("on_accepted failed for {key} (it stays in the store)", key=key)

    def _append_failed(self, failure: Failure, request: Request, key: str,
                       out: Deferred[bytes]) -> None:
        if failure.check(StoreClosed):
            # Shutting down: whatever is still arriving gets a 503 and is posted again later.
            # One line says so, not a traceback per post.
            reason = "mup is shutting down; try again later"
            if not self._closing_said:
                self._closing_said = True
                log.info("The store is closed (shutting down): posts still arriving are "
                         "answered 503, and the gateway posts them again")
        else:
            reason = "the journal is not writable; try again later"
            if not failure.check(StoreError):   # which the store logged, once, not per post
                log.failure("storing {key} failed", failure, key=key)
        if not out.called:
            out.callback(self._refuse(request, _Unavailable(reason), quiet=True))

    def _posted(self, request: Request) -> Posted:
        length = request.getHeader(b"content-length")
        if getattr(request, "too_large", False) or (
                length is not None and (not length.isdigit() or int(length) > self.max_body)):
            raise TooLarge(f"body over {self.max_body} bytes")
        content = request.content
        assert content is not None   # a Request has its body once it is handed to a resource
        content.seek(0)
        body = content.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise TooLarge(f"body over {self.max_body} bytes")
        headers = {name.decode("latin-1").lower(): b",".join(values).decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        return Posted(request.method.decode("ascii", "replace"), request.uri, headers, body)

    def _refuse(self, request: Request, refused: PostRefused, quiet: bool = False) -> bytes:
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

    def healthz(self, request: Request) -> Deferred[bytes]:
        """Whether the store takes messages, its backlog, and the ``health`` checks; 503 if a
        check fails (a store that cannot be read counts as not writable)."""
        return Deferred.fromCoroutine(self._healthz(request))

    async def _healthz(self, request: Request) -> bytes:
        status: dict[str, Any] = {"journal_writable": self.store.writable()}
        backlog = await self._backlog()
        if backlog is None:
            status.update(journal_writable=False, backlog=None)
        else:
            status["backlog"] = backlog.count
            status["oldest_waiting_age"] = None if backlog.oldest is None else round(
                max(0.0, self._now() - backlog.oldest), 3)
        try:
            status.update(await self._health())
        except Exception:
            log.failure("health check failed")
            status["health_check"] = False
        ok = all(v for v in status.values() if isinstance(v, bool))
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status, sort_keys=True).encode("utf-8") + b"\n"

    def metrics(self, request: Request) -> Deferred[bytes]:
        """Prometheus metrics, the backlog (and the ``health`` hook's gauges) read first."""
        return Deferred.fromCoroutine(self._metrics(request))

    async def _metrics(self, request: Request) -> bytes:
        backlog = await self._backlog()
        if backlog is not None:
            metrics.backlog.set(backlog.count)
        try:
            await self._health()
        except Exception:   # the figures are stale, the rest still useful
            log.failure("metrics: the health check failed")
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(metrics.REGISTRY)

    async def _backlog(self) -> Backlog | None:
        """The store's backlog, or None if it cannot be read: said once when that starts and
        once when it ends, as load balancers ask ``/healthz`` every second or two."""
        try:
            backlog = await self.store.backlog()
        except StoreError as e:
            if not self._unreadable:
                self._unreadable = True
                log.error("cannot read the store's backlog (answering 503 to /healthz until "
                          "it can): {why}", why=e)
            return None
        if self._unreadable:
            self._unreadable = False
            log.info("the store's backlog can be read again")
        return backlog

    async def _health(self) -> Mapping[str, Any]:
        """The ``health`` hook's fields, whether it answered now or later."""
        extra = self.health()
        return extra if isinstance(extra, Mapping) else await extra


class _QuietSite(GuardedSite):
    def log(self, request: HTTPRequest) -> None:
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
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]


def _limited_request(max_body: int) -> type[Request]:
    return type("LimitedRequest", (_LimitedRequest,), {"max_body": max_body})


class WebhookService(Service):
    """Listens on a Twisted server endpoint string (``tcp:port=8080:interface=127.0.0.1``,
    ``ssl:...``) with ``site``; ``listening`` fires with the port (tests read the number)."""

    def __init__(self, endpoint: str, site: Site, reactor: IReactorCore) -> None:
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = serverFromString(self.reactor, self.endpoint).listen(self.site)
        failure = []

        def listened(port: IListeningPort) -> None:
            self.port = port
            log.info("webhook receiver listening on {address}", address=port.getHost())
            self.listening.callback(port)

        def failed(f: Failure) -> None:
            failure.append(f)
            log.error("webhook receiver cannot listen on {endpoint}: {why}",
                      endpoint=self.endpoint, why=f.getErrorMessage())
            self.listening.errback(f)

        d.addCallbacks(listened, failed)
        if failure:
            self.listening.addErrback(lambda f: None)
            # twistd gives up on this exception, but threads started before (the store's
            # writer) would keep the process alive: run the shutdown triggers that stop them.
            if not getattr(self.reactor, "running", True):
                try:
                    self.reactor.fireSystemEvent("shutdown")
                except NotImplementedError:   # a test's MemoryReactor
                    pass
            failure[0].raiseException()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
