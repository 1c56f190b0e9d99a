"""mup-relay: the always-up receiver that keeps inbound SMS while the bot is down.

The relay runs the very same webhook receiver and message store as the bot (``mup.webhook``,
``mup.store``) and adds the pull protocol the bot uses to fetch what was accepted:

* ``GET /relay/pull?cursor=C&timeout=S&limit=N`` answers at once with the pending messages
  after cursor ``C``, or after ``S`` seconds (capped by ``[relay] poll_timeout``) with none;
* ``POST /relay/ack`` with ``{"ids": [...]}`` marks those messages done in the store: the
  relay deletes only what was acknowledged.

A cursor is ``<epoch>-<seq>``: the store's sequence number of the last message handed out, and
the store's epoch.  The relay keeps nothing of its own: every pull reads the store
(``pending(after=seq)``), a waiting pull wakes when the store says something was committed, and
an acknowledgement looks the ids up in the store, so several relays may share one store.  A
cursor from another store (or from before it was recreated) is refused as expired (400) and
the bot pulls again from the start: every unacknowledged message is offered again, and the bot
drops the ones it already has by message id.  See ``docs/relay-protocol.md``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from klein import Klein
from prometheus_client import Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from mup import metrics
from mup.config import Config, ConfigError
from mup.store import Backlog, Entry, MessageStore, StoreError

__all__ = ["CursorError", "Relay", "format_cursor", "make_relay_service", "parse_cursor"]

MAX_LIMIT = 1000
"""Most messages one pull answers with."""
DEFAULT_LIMIT = 100

_pulls = Counter("mup_relay_pulls", "Pull requests the relay answered", ["result"],
                 registry=metrics.REGISTRY)
_handed_out = Counter("mup_relay_handed_out", "Messages the relay handed to the bot (again, "
                      "after a restart of either side)", registry=metrics.REGISTRY)
_acked = Counter("mup_relay_acked", "Messages the bot acknowledged and the relay deleted",
                 registry=metrics.REGISTRY)
_backlog = Gauge("mup_relay_backlog", "Messages accepted by the relay and not yet acknowledged",
                 registry=metrics.REGISTRY)
_oldest = Gauge("mup_relay_oldest_undelivered_age_seconds", "Age of the oldest message not yet "
                "acknowledged (0 when none)", registry=metrics.REGISTRY)
_last_pull = Gauge("mup_relay_last_pull_timestamp_seconds", "Unix time of the bot's last pull "
                   "(0: none since the relay started)", registry=metrics.REGISTRY)


@runtime_checkable
class Listening(Protocol):
    """A store shared by several relays that hears of their commits on a connection of its
    own (PostgreSQL's LISTEN); ``listening()`` is false while that connection is down."""

    def listening(self) -> bool: ...


class CursorError(ValueError):
    """A cursor the relay cannot use; the message is the one-line reason sent with the 400."""


def format_cursor(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_cursor(text: str, epoch: str) -> int:
    """The sequence number after which to hand out messages, for a cursor from a pull.

    ``""`` (or absent) means from the start.  A cursor of another epoch is expired; anything
    else that is not one of ours is garbled."""
    if text == "":
        return 0
    head, sep, tail = text.rpartition("-")
    if not sep or not head or not tail.isdigit() or len(tail) > 19:
        raise CursorError(f"garbled cursor {text[:40]!r}: expected <epoch>-<seq> from a pull")
    if not hmac.compare_digest(head.encode("utf-8", "replace"), epoch.encode()):
        raise CursorError("expired cursor: the relay's store is not the one it was issued by; "
                          "pull again from the start (no cursor)")
    return int(tail)


class Relay:
    """The pull protocol over one :class:`mup.store.MessageStore`: pulls (long-polled, woken
    by the store's ``subscribe``), acknowledgements, and the relay's health."""

    app = Klein()
    log = Logger()

    def __init__(self, store: MessageStore, token: str, poll_timeout: float,
                 reactor: Any) -> None:
        if not token:
            raise ConfigError("[relay] token must be set: the bot authenticates with it")
        self._store = store
        self._token = token.encode("utf-8")
        self._poll_timeout = poll_timeout
        self._reactor = reactor
        self._waiters: set[Deferred[None]] = set()
        self.last_pull: float | None = None
        store.subscribe(self._committed)
        _last_pull.set_function(lambda: self.last_pull or 0.0)

    @property
    def epoch(self) -> str:
        return self._store.epoch

    def _committed(self) -> None:
        """The store has new messages: answer the waiting pulls."""
        waiters, self._waiters = self._waiters, set()
        for d in waiters:
            d.callback(None)

    def health(self) -> Deferred[dict[str, Any]]:
        """What the relay adds to the receiver's ``/healthz`` (and refreshes its gauges, as
        the receiver asks before ``/metrics`` too)."""
        d = self._store.backlog().addCallbacks(self._health, self._no_backlog)
        return d.addCallback(self._listening)

    def _no_backlog(self, failure: Any) -> dict[str, Any]:
        """The store cannot be read now (the database is gone): the receiver says so already
        (``journal_writable`` false, logged once per outage), no traceback on top."""
        failure.trap(StoreError)
        return {"relay_backlog": None}

    def _listening(self, status: dict[str, Any]) -> dict[str, Any]:
        """A shared store without its LISTEN connection: a waiting pull would not hear of
        other relays' commits, so the relay is not healthy (503, out of the rotation)."""
        if isinstance(self._store, Listening):
            status["store_listening"] = self._store.listening()
        return status

    def _health(self, backlog: Backlog) -> dict[str, Any]:
        now = self._reactor.seconds()
        oldest = 0.0 if backlog.oldest is None else max(0.0, now - backlog.oldest)
        _backlog.set(backlog.count)
        _oldest.set(oldest)
        return {
            "relay_backlog": backlog.count,
            "oldest_undelivered_age": round(oldest, 3),
            "last_pull_age": None if self.last_pull is None else round(now - self.last_pull, 3),
        }

    # -- HTTP ----------------------------------------------------------------------------------

    def _refuse(self, request: IRequest, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if code == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="mup-relay"')
        elif code == 503:
            request.setHeader(b"Retry-After", b"5")
        return reason.encode("utf-8") + b"\n"

    def _authorized(self, request: IRequest) -> bool:
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        # compare_digest on the whole token: the time does not depend on where it differs.
        ok = hmac.compare_digest(token.strip(), self._token)
        return ok and scheme.lower() == b"bearer"

    def _json(self, request: IRequest, body: dict[str, Any]) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @app.route("/relay/pull", methods=["GET"])
    def pull(self, request: IRequest) -> Any:
        if not self._authorized(request):
            _pulls.labels("unauthorized").inc()
            return self._refuse(request, 401, "missing or wrong bearer token")
        self.last_pull = self._reactor.seconds()
        try:
            after = parse_cursor(_arg(request, b"cursor", ""), self.epoch)
            timeout = _number(request, b"timeout", self._poll_timeout, float)
            limit = _number(request, b"limit", DEFAULT_LIMIT, int)
        except CursorError as e:
            _pulls.labels("bad_cursor").inc()
            return self._refuse(request, 400, str(e))
        except ValueError as e:
            _pulls.labels("bad_request").inc()
            return self._refuse(request, 400, str(e))
        timeout = min(max(timeout, 0.0), self._poll_timeout)
        limit = min(max(limit, 1), MAX_LIMIT)
        # Waiting before reading, so a commit between the read and the wait is not missed.
        woken = self._wait(timeout) if timeout > 0 else None

        def read(entries: list[Entry]) -> Any:
            if entries or woken is None:
                self._stop_waiting(woken)
                return self._pull_answer(request, after, entries)
            # Read again once woken (at once if a commit came while this read ran).
            return woken.addCallback(lambda _: self._store.pending(after=after, limit=limit))

        d = self._store.pending(after=after, limit=limit).addCallback(read)
        d.addErrback(self._pull_failed, woken)
        d.addCallback(lambda entries: entries if isinstance(entries, bytes)
                      else self._pull_answer(request, after, entries))
        return d

    @staticmethod
    def _stop_waiting(woken: Deferred[None] | None) -> None:
        if woken is not None and not woken.called:
            woken.addErrback(lambda f: None)
            woken.cancel()

    def _pull_failed(self, failure: Any, woken: Deferred[None] | None) -> Any:
        self._stop_waiting(woken)
        return failure

    def _pull_answer(self, request: IRequest, after: int, entries: list[Entry]) -> bytes:
        """The messages read, and the cursor past them."""
        last = entries[-1].seq if entries else after
        _pulls.labels("messages" if entries else "empty").inc()
        _handed_out.inc(len(entries))
        return self._json(request, {
            "cursor": format_cursor(self.epoch, last),
            "messages": [{"id": e.key, "seq": e.seq, "accepted": e.appended,
                          "record": e.record} for e in entries],
        })

    def _wait(self, timeout: float) -> Deferred[None]:
        """Fires on the store's next commit of new messages or after ``timeout``."""

        def cancel(d: Deferred[None]) -> None:
            self._waiters.discard(d)
            if timer.active():
                timer.cancel()

        d: Deferred[None] = Deferred(cancel)

        def expired() -> None:
            self._waiters.discard(d)
            d.callback(None)

        timer = self._reactor.callLater(timeout, expired)
        d.addBoth(_cancel_timer, timer)
        self._waiters.add(d)
        return d

    @app.route("/relay/ack", methods=["POST"])
    def ack(self, request: IRequest) -> Any:
        if not self._authorized(request):
            return self._refuse(request, 401, "missing or wrong bearer token")
        try:
            body = json.loads(request.content.read())
            ids = body["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return self._refuse(request, 400, 'expected a JSON body {"ids": ["<id>", ...]}')
        if len(ids) > 10 * MAX_LIMIT:
            return self._refuse(request, 400, f"at most {10 * MAX_LIMIT} ids per ack")
        d = self.acknowledge(ids)
        d.addCallback(lambda result: self._json(request, result))
        return d

    def acknowledge(self, ids: Iterable[str]) -> Deferred[dict[str, list[str]]]:
        """Mark the pending messages with these ids done in the store; fires when that is
        durable.  Ids the store does not hold as pending (already acknowledged, or never seen)
        are reported back as unknown: acknowledging twice is harmless."""
        return Deferred.fromCoroutine(self._acknowledge(list(dict.fromkeys(ids))))

    async def _acknowledge(self, ids: list[str]) -> dict[str, list[str]]:
        found = await self._store.lookup(ids) if ids else {}
        unknown = [key for key in ids if key not in found]
        if found:
            try:
                await self._store.mark_done(found.values())
            except StoreError as e:
                self.log.error("relay: could not record an acknowledgement: {why}", why=e)
                raise AckFailed(list(found)) from None
        _acked.inc(len(found))
        return {"acked": [key for key in ids if key in found], "unknown": unknown}

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(AckFailed):
            return self._refuse(request, 503, "could not record the acknowledgement; retry")
        if failure.check(StoreError):
            return self._refuse(request, 503, "the relay's store is unavailable; retry")
        self.log.failure("relay: error answering {uri}", failure, uri=request.uri)
        return self._refuse(request, 500, "internal error")

    def resource(self, fallback: IResource | None = None) -> IResource:
        """The pull protocol's resource; every other path goes to ``fallback`` (the receiver's
        resource: gateway posts, ``/healthz``, ``/metrics``)."""
        if fallback is None:
            return self.app.resource()
        return _Beside(self.app.resource(), fallback)


class AckFailed(Exception):
    """The store could not record some acknowledgements."""


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def _arg(request: IRequest, name: bytes, default: str) -> str:
    values: list[bytes] | None = request.args.get(name)
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def _number(request: IRequest, name: bytes, default: Any, kind: Callable[[str], Any]) -> Any:
    text = _arg(request, name, "")
    if text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name.decode()}={text[:20]!r} is not a number") from None
    if value != value or value < 0:
        raise ValueError(f"{name.decode()}={text[:20]!r} must be a number >= 0")
    return value


class _Beside(Resource):
    """``/relay/...`` goes to the pull protocol, every other path to the receiver, each seeing
    the whole path as if it were the root."""

    def __init__(self, relay: IResource, fallback: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._relay = relay
        self._fallback = fallback

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._relay if path == b"relay" else self._fallback

    def render(self, request: IRequest) -> Any:
        return self._fallback.render(request)


def open_store(config: Config, reactor: Any) -> MessageStore:
    """The relay's store, before the reactor runs: ``[relay] store`` empty is the local SQLite
    journal in ``[webhook] journal``; a libpq connection string is PostgreSQL, shared with any
    other relay given the same one.  A store that cannot be opened (a bad or unreachable URL,
    a journal held by another process) is a one-line StoreOpenError naming the key or path."""
    if config.relay.store.strip():
        from mup.store.postgres import PostgresMessageStore

        return PostgresMessageStore.open(config.relay.store, reactor,
                                         where=f"{config.path}: [relay] store")
    from mup.store.sqlite import SQLiteMessageStore

    return SQLiteMessageStore.open(config.resolve_path(config.webhook.journal), reactor)


def make_relay_service(config: Config, reactor: Any = None) -> MultiService:
    """``twistd mup-relay``: the webhook receiver and message store, plus the pull protocol."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if not config.webhook.endpoint:
        raise ConfigError(f"{config.path}: [webhook] endpoint must be set for mup-relay")
    if not config.relay.token:
        raise ConfigError(f"{config.path}: [relay] token must be set for mup-relay (the bot "
                          "presents it as [inbound] relay_token)")
    from mup.webhook import Receiver, WebhookService

    store = open_store(config, reactor)
    relay = Relay(store, config.relay.token, config.relay.poll_timeout, reactor)
    store.backlog().addCallbacks(lambda backlog: Relay.log.info(
        "mup-relay: {n} messages kept for the bot; pulls wait up to {t:g} s",
        n=backlog.count, t=config.relay.poll_timeout), lambda f: None)
    receiver = Receiver(config, store, health=relay.health, clock=reactor)
    # The receiver's own Site (body limit, no access log), with the pull protocol beside it.
    site = receiver.site()
    site.resource = relay.resource(site.resource)
    top = MultiService()
    WebhookService(config.webhook.endpoint, site, reactor).setServiceParent(top)
    return top
