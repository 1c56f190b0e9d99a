"""mup-relay: the always-up receiver that keeps inbound SMS while the bot is down.

The relay runs the very same webhook receiver and journal as the bot (``mup.webhook``,
``mup.journal``) and adds the pull protocol the bot uses to fetch what was accepted:

* ``GET /relay/pull?cursor=C&timeout=S&limit=N`` answers at once with the pending messages
  after cursor ``C``, or after ``S`` seconds (capped by ``[relay] poll_timeout``) with none;
* ``POST /relay/ack`` with ``{"ids": [...]}`` marks those messages done in the journal: the
  relay deletes only what was acknowledged.

A cursor is ``<epoch>-<seq>``: the journal sequence number of the last message handed out, and
a random epoch drawn when this relay process started.  The durable state is the journal alone
(what is pending, what was acknowledged), so a cursor from an earlier relay process is refused
as expired (400) and the bot pulls again from the start: every unacknowledged message is
offered again, and the bot drops the ones it already has by message id.  See
``docs/relay-protocol.md``.
"""

from __future__ import annotations

import bisect
import hmac
import json
import secrets
from typing import Any, Callable, Iterable

from klein import Klein
from prometheus_client import Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from mup import metrics
from mup.config import Config, ConfigError

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


class CursorError(ValueError):
    """A cursor the relay cannot use; the message is the one-line reason sent with the 400."""


def format_cursor(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_cursor(text: str, epoch: str, highest: int) -> int:
    """The sequence number after which to hand out messages, for a cursor from a pull.

    ``""`` (or absent) means from the start.  A cursor from another relay process is expired;
    anything else that is not one of ours is garbled."""
    if text == "":
        return 0
    head, sep, tail = text.rpartition("-")
    if not sep or not head or not tail.isdigit() or len(tail) > 19:
        raise CursorError(f"garbled cursor {text[:40]!r}: expected <epoch>-<seq> from a pull")
    if not hmac.compare_digest(head.encode("utf-8", "replace"), epoch.encode()):
        raise CursorError("expired cursor: the relay restarted since it was issued; "
                          "pull again from the start (no cursor)")
    seq = int(tail)
    if seq > highest:
        raise CursorError(f"garbled cursor: {seq} is beyond the relay's last message {highest}")
    return seq


class Relay:
    """The pull protocol over one journal: pending index, long-poll waiters, acknowledgements.

    ``journal`` is a :class:`mup.journal.Journal` (``pending()``, ``mark_done(seq)``,
    ``backlog``, ``writable()``).  :meth:`accepted` is the receiver's ``on_accepted`` hook: it
    is called with each new journal entry once it is on disk."""

    app = Klein()
    log = Logger()

    def __init__(self, journal: Any, token: str, poll_timeout: float, reactor: Any,
                 epoch: str | None = None) -> None:
        if not token:
            raise ConfigError("[relay] token must be set: the bot authenticates with it")
        self._journal = journal
        self._token = token.encode("utf-8")
        self._poll_timeout = poll_timeout
        self._reactor = reactor
        self.epoch = epoch or secrets.token_hex(6)
        self._seqs: list[int] = []
        self._entries: dict[int, Any] = {}
        self._by_key: dict[str, int] = {}
        self._highest = 0
        self._handed_out_up_to = 0
        self._waiters: set[Deferred[None]] = set()
        self.last_pull: float | None = None
        for entry in journal.pending():
            self._add(entry)
        _backlog.set_function(lambda: len(self._seqs))
        _oldest.set_function(self.oldest_age)
        _last_pull.set_function(lambda: self.last_pull or 0.0)

    # -- the index of pending entries --------------------------------------------------------

    def _add(self, entry: Any) -> None:
        seq = entry.seq
        if seq in self._entries:
            return
        self._entries[seq] = entry
        self._by_key[entry.key] = seq
        if not self._seqs or seq > self._seqs[-1]:
            self._seqs.append(seq)
        else:
            bisect.insort(self._seqs, seq)
        if seq <= self._handed_out_up_to:
            # A cursor already went past this one: it would never be handed out in this
            # session.  A new epoch makes every cursor expire, so the bot pulls from the start.
            self.log.warn("relay: message {seq} became durable after a later one was handed "
                          "out; expiring cursors so it is not skipped", seq=seq)
            self.epoch = secrets.token_hex(6)
            self._handed_out_up_to = 0
        self._highest = max(self._highest, seq)

    def _remove(self, seq: int) -> None:
        entry = self._entries.pop(seq, None)
        if entry is None:
            return
        if self._by_key.get(entry.key) == seq:
            del self._by_key[entry.key]
        i = bisect.bisect_left(self._seqs, seq)
        if i < len(self._seqs) and self._seqs[i] == seq:
            del self._seqs[i]

    def _after(self, seq: int, limit: int) -> list[Any]:
        i = bisect.bisect_right(self._seqs, seq)
        return [self._entries[s] for s in self._seqs[i:i + limit]]

    def accepted(self, entry: Any) -> None:
        """A new message is on disk: index it and answer the waiting pulls."""
        self._add(entry)
        waiters, self._waiters = self._waiters, set()
        for d in waiters:
            d.callback(None)

    @property
    def backlog(self) -> int:
        return len(self._seqs)

    def oldest_age(self) -> float:
        if not self._seqs:
            return 0.0
        return max(0.0, self._reactor.seconds() - self._entries[self._seqs[0]].appended)

    def health(self) -> dict[str, Any]:
        """What the relay adds to the receiver's ``/healthz`` (journal writable, backlog)."""
        now = self._reactor.seconds()
        return {
            "relay_backlog": self.backlog,
            "oldest_undelivered_age": round(self.oldest_age(), 3),
            "last_pull_age": None if self.last_pull is None else round(now - self.last_pull, 3),
        }

    # -- HTTP ----------------------------------------------------------------------------------

    def _refuse(self, request: IRequest, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if code == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="mup-relay"')
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
            after = parse_cursor(_arg(request, b"cursor", ""), self.epoch, self._highest)
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
        if self._after(after, limit) or timeout == 0:
            return self._pull_answer(request, self.epoch, after, limit)
        d = self._wait(timeout)
        epoch = self.epoch
        d.addCallback(lambda _: self._pull_answer(request, epoch, after, limit))
        return d

    def _wait(self, timeout: float) -> Deferred[None]:
        """Fires on the next accepted message or after ``timeout``; cancelled (Klein does it)
        when the client goes away."""

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

    def _pull_answer(self, request: IRequest, epoch: str, after: int, limit: int) -> bytes:
        """The messages after ``after``, and the cursor past them.  ``epoch`` is the one the
        request's cursor was read in: if the epoch changed while the pull waited, the cursor
        keeps the old one, so the bot's next pull is refused and starts again."""
        entries = self._after(after, limit)
        last = entries[-1].seq if entries else after
        if epoch == self.epoch:
            self._handed_out_up_to = max(self._handed_out_up_to, last)
        _pulls.labels("messages" if entries else "empty").inc()
        _handed_out.inc(len(entries))
        return self._json(request, {
            "cursor": format_cursor(epoch, last),
            "messages": [{"id": e.key, "seq": e.seq, "accepted": e.appended,
                          "record": e.record} for e in entries],
        })

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
        """Mark the pending messages with these ids done in the journal, once each; fires
        when that is durable.  Ids the relay does not hold (already acknowledged, or never
        seen) are reported back as unknown: acknowledging twice is harmless."""
        known: list[tuple[str, int]] = []
        unknown: list[str] = []
        for key in dict.fromkeys(ids):
            seq = self._by_key.get(key)
            if seq is None:
                unknown.append(key)
            else:
                known.append((key, seq))
        if not known:
            return succeed({"acked": [], "unknown": unknown})

        def marked(results: list[tuple[bool, Any]]) -> dict[str, list[str]]:
            acked, failed = [], []
            for (key, seq), (ok, why) in zip(known, results, strict=True):
                if ok:
                    self._remove(seq)
                    acked.append(key)
                else:
                    self.log.failure("relay: could not mark {key} done", why, key=key)
                    failed.append(key)
            _acked.inc(len(acked))
            if failed:
                raise AckFailed(failed)
            return {"acked": acked, "unknown": unknown}

        d = DeferredList([self._journal.mark_done(seq) for _, seq in known],
                         consumeErrors=True)
        d.addCallback(marked)
        return d

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(AckFailed):
            return self._refuse(request, 503, "could not record the acknowledgement; retry")
        self.log.failure("relay: error answering {uri}", failure, uri=request.uri)
        return self._refuse(request, 500, "internal error")

    def resource(self, fallback: IResource | None = None) -> IResource:
        """The pull protocol's resource; every other path goes to ``fallback`` (the receiver's
        resource: gateway posts, ``/healthz``, ``/metrics``)."""
        if fallback is None:
            return self.app.resource()
        return _Beside(self.app.resource(), fallback)


class AckFailed(Exception):
    """The journal could not record some acknowledgements."""


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def _arg(request: IRequest, name: bytes, default: str) -> str:
    values = request.args.get(name)
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
        super().__init__()
        self._relay = relay
        self._fallback = fallback

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._relay if path == b"relay" else self._fallback

    def render(self, request: IRequest) -> Any:
        return self._fallback.render(request)


def make_relay_service(config: Config, reactor: Any = None) -> MultiService:
    """``twistd mup-relay``: the webhook receiver and journal, plus the pull protocol."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if not config.webhook.endpoint:
        raise ConfigError(f"{config.path}: [webhook] endpoint must be set for mup-relay")
    if not config.relay.token:
        raise ConfigError(f"{config.path}: [relay] token must be set for mup-relay (the bot "
                          "presents it as [inbound] relay_token)")
    from mup.journal import Journal
    from mup.webhook import Receiver, WebhookService

    journal = Journal.open(config.resolve_path(config.webhook.journal), reactor=reactor)
    relay = Relay(journal, config.relay.token, config.relay.poll_timeout, reactor)
    Relay.log.info("mup-relay: {n} messages kept for the bot; pulls wait up to {t:g} s",
                   n=relay.backlog, t=config.relay.poll_timeout)
    receiver = Receiver(config, journal, on_accepted=relay.accepted, health=relay.health,
                        clock=reactor)
    # The receiver's own Site (body limit, no access log), with the pull protocol beside it.
    site = receiver.site()
    site.resource = relay.resource(site.resource)
    top = MultiService()
    WebhookService(config.webhook.endpoint, site, reactor).setServiceParent(top)
    return top
