"""The bot's side of mup-relay: long-poll the relay, store what it hands out, acknowledge
what IRC confirmed.

Pulled messages go into the bot's own message store under the relay's id (the same
``gateway:message_id`` key the bot's webhook would use), so a message handed out twice — after
a restart of either side — is appended once and shown once, and they flow through the very same
delivery pipeline as the webhook's.  The relay is acknowledged only when delivery reports the
message confirmed by the IRC server (:meth:`RelayPuller.delivered`, wired as the delivery's
``on_delivered`` hook).  The cursor lives in memory only: after a restart the bot pulls from
the start and the store drops what it already has.  See ``docs/relay-protocol.md``.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any, Callable, cast
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.store import Entry, MessageStore, StoreError

if TYPE_CHECKING:
    from treq.client import HTTPClient

    from mup.config import Config

__all__ = ["RELAY_MARK", "RelayPuller", "check_settings", "make_puller"]

RELAY_MARK = "relay"
"""Key set (to the relay's id) in ``record["extra"]`` of every message that came through the
relay: delivery of such an entry is acknowledged to the relay."""

ACK_BATCH = 1000


class _RelayTrouble(Exception):
    """The relay could not be used this time; the message says why, in one line."""


class RelayPuller(Service):
    """Pulls inbound SMS from a mup-relay into the bot's store and acknowledges them.

    ``store`` is the bot's :class:`mup.store.MessageStore`; ``wake`` is called after new
    messages were appended (``Delivery.wake``); ``http`` is a treq ``HTTPClient`` (or
    ``StubTreq``); ``reactor``: for timers and for treq's requests (which want TCP, time and
    name resolution from it at once: no one static type)."""

    log = Logger()

    def __init__(self, url: str, token: str, store: MessageStore, wake: Callable[[], object],
                 reactor: Any, http: HTTPClient, *, poll_timeout: float = 30.0, limit: int = 200,
                 window: int = 2000, min_delay: float = 0.5, max_delay: float = 60.0,
                 jitter: Callable[[], float] = random.random) -> None:
        self._base = url.rstrip("/")
        self._headers: dict[bytes | str, list[bytes | str]] = {
            b"Authorization": [b"Bearer " + token.encode("utf-8")]}
        self._store = store
        self._wake = wake
        self._reactor = reactor
        self._http = http
        self.poll_timeout = poll_timeout
        self._limit = limit
        self._window = window
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._jitter = jitter
        self.cursor = ""
        self._in_flight: set[str] = set()
        """Ids pulled (and stored) and not yet acknowledged."""
        self._to_ack: dict[str, None] = {}
        self._acking: Deferred[None] | None = None
        self._ack_running = False
        self._pending_cursor = ""
        self._room: Deferred[None] | None = None
        self._pulling: Deferred[None] | None = None
        self._waits: set[Deferred[Any]] = set()
        self._backoffs: dict[Deferred[None], IDelayedCall] = {}
        self._trouble: str | None = None
        self._failures = 0
        self._outages = 0
        """Outages begun so far: an answer counts as recovery only for a request sent in the
        current one."""
        self.pulled = 0
        self.acked = 0

    def describe(self) -> str:
        """How pulling goes, in a few words (the operators' ``status``)."""
        if self._trouble is not None:
            return f"{self._base} unusable: {self._trouble}"
        return (f"{self._base}: {self.pulled} pulled, {self.acked} acknowledged, "
                f"{len(self._in_flight)} waiting for IRC")

    # -- service ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._pulling = ensureDeferred(self._pull_loop())
        self._pulling.addErrback(self._crashed, "pull")
        self._kick_acks()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        for d in [self._pulling, self._acking, self._room, *self._waits]:
            if d is not None and not d.called:
                d.cancel()
        return None

    def _crashed(self, failure: Failure, what: str) -> None:
        if not failure.check(CancelledError):
            self.log.failure("relay: the {what} loop stopped", failure, what=what)

    # -- the delivery hook --------------------------------------------------------------------

    def delivered(self, entry: Entry) -> None:
        """Delivery's ``on_delivered`` hook: the IRC server confirmed ``entry``; if it came
        through the relay, acknowledge it there."""
        extra = entry.record.get("extra") if isinstance(entry.record, dict) else None
        if isinstance(extra, dict) and extra.get(RELAY_MARK):
            self._ack(entry.key)

    def _ack(self, key: str) -> None:
        self._to_ack[key] = None
        self._kick_acks()

    def _kick_acks(self) -> None:
        if self.running and self._to_ack and not self._ack_running:
            self._ack_running = True
            d = ensureDeferred(self._ack_loop())
            d.addErrback(self._crashed, "ack")
            self._acking = None if d.called else d

    # -- pulling ------------------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        while self.running:
            if len(self._in_flight) >= self._window:
                self._room = Deferred()
                await self._room
                self._room = None
                continue
            try:
                messages = await self._pull()
                if messages:
                    await self._take(messages)
            except _RelayTrouble as e:
                await self._backoff(str(e))
            except CancelledError:
                raise
            except Exception:
                self.log.failure("relay: pulling failed; trying again")
                await self._sleep(self._max_delay / 4)

    async def _pull(self) -> list[dict[str, Any]]:
        params = {"cursor": self.cursor, "timeout": f"{self.poll_timeout:g}",
                  "limit": str(self._limit)}
        sent = self._outages
        code, body = await self._request("GET", "/relay/pull", params=params,
                                         timeout=self.poll_timeout + 15)
        if code == 400 and b"cursor" in body and self.cursor:
            # Expired (the relay restarted) or not understood: the start is always valid.
            reason = body.decode("utf-8", "replace").strip().split(";")[0][:200]
            self.log.info("relay {url}: {reason}; pulling again from the start (messages "
                          "already here are dropped by id)", url=self._base, reason=reason)
            self.cursor = ""
            return []
        if code != 200:
            raise _RelayTrouble(_describe(code, body))
        try:
            answer = json.loads(body)
            cursor = answer["cursor"]
            messages = answer["messages"]
            if not isinstance(cursor, str) or not isinstance(messages, list):
                raise TypeError
            for m in messages:
                if not isinstance(m["id"], str) or not isinstance(m["record"], dict):
                    raise TypeError
        except (ValueError, KeyError, TypeError):
            raise _RelayTrouble("the relay's answer to a pull is not the expected JSON") from None
        self._recovered(sent)
        self._pending_cursor = cursor
        if not messages:
            self.cursor = cursor
        return messages

    async def _take(self, messages: list[dict[str, Any]]) -> None:
        """Store a batch (one shared commit), then move the cursor past it.  If an append
        fails the cursor stays: the next pull hands the batch out again and the store drops
        what it already holds."""
        records = []
        for m in messages:
            record = dict(m["record"])
            extra = dict(record.get("extra") or {})
            extra[RELAY_MARK] = m["id"]
            record["extra"] = extra
            records.append((m["id"], record))
        results = await DeferredList([self._store.append(key, record)
                                      for key, record in records], consumeErrors=True)
        duplicates = []
        failed: Failure | None = None
        for (key, _), (ok, result) in zip(records, results, strict=True):
            if not ok:
                failed = cast(Failure, result)   # consumeErrors: a failed append's Failure
            elif result is None:
                duplicates.append(key)
            else:
                self._in_flight.add(key)
        self.pulled += len(records) - len(duplicates)
        self._wake()
        if duplicates and failed is None:
            try:
                pending = await self._store.lookup(duplicates)
            except StoreError as e:
                failed = Failure(e)
                pending = {}
            for key in duplicates if failed is None else ():
                if key in pending:
                    self._in_flight.add(key)  # acknowledged when delivery confirms it
                else:
                    self._ack(key)  # confirmed on IRC before; the ack never reached the relay
        if failed is not None:
            self.log.error("relay: could not store pulled messages ({why}); pulling them "
                           "again", why=failed.getErrorMessage())
            await self._sleep(self._min_delay)
            return
        self.cursor = self._pending_cursor

    # -- acknowledging ------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        try:
            while self.running and self._to_ack:
                batch = list(self._to_ack)[:ACK_BATCH]
                sent = self._outages
                try:
                    code, body = await self._request(
                        "POST", "/relay/ack", json={"ids": batch}, timeout=30)
                    if code != 200:
                        raise _RelayTrouble(_describe(code, body))
                except _RelayTrouble as e:
                    await self._backoff(str(e))
                    continue
                self._recovered(sent)
                for key in batch:
                    self._to_ack.pop(key, None)
                    self._in_flight.discard(key)
                self.acked += len(batch)
                if self._room is not None and len(self._in_flight) < self._window:
                    self._room.callback(None)
        finally:
            self._ack_running = False
            self._acking = None

    # -- HTTP and failures --------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        try:
            response = await self._http.request(method, self._base + path,
                                                headers=self._headers, reactor=self._reactor,
                                                **kwargs)
            body = await response.content()
        except CancelledError:
            if not self.running:
                raise
            raise _RelayTrouble("no answer from the relay in time") from None
        except Exception as e:  # noqa: BLE001 - any network failure is a retry
            if not self.running:
                raise CancelledError() from None
            raise _RelayTrouble(_network_reason(e)) from None
        return response.code, body

    async def _backoff(self, why: str) -> None:
        self._failures += 1
        if self._trouble is None:
            self.log.warn("relay {url}: {why}; retrying with backoff, quietly, until it "
                          "answers", url=self._base, why=why)
            self._trouble = why
            self._outages += 1
        delay = min(self._max_delay, self._min_delay * 2 ** min(self._failures - 1, 30))
        await self._sleep(delay * (0.5 + 0.5 * self._jitter()), backoff=True)

    def _recovered(self, sent: int) -> None:
        """The relay answered a request sent while ``self._outages`` was ``sent``.  An answer
        to a request sent before the current outage began (on its way when the relay went
        down) says nothing about the relay now."""
        if sent != self._outages:
            return
        if self._trouble is not None:
            self.log.info("relay {url}: answering again after {n} failed attempts",
                          url=self._base, n=self._failures)
            # The other loop (pull or ack) need not sleep out its backoff.
            for d, call in list(self._backoffs.items()):
                if call.active():
                    call.cancel()
                    d.callback(None)
        self._trouble = None
        self._failures = 0

    async def _sleep(self, delay: float, backoff: bool = False) -> None:
        d: Deferred[None] = Deferred()
        call = self._reactor.callLater(delay, d.callback, None)
        d.addErrback(_cancelled, call)
        self._waits.add(d)
        if backoff:
            self._backoffs[d] = call
        try:
            await d
        finally:
            self._waits.discard(d)
            self._backoffs.pop(d, None)


def _cancelled(failure: Failure, call: IDelayedCall) -> Failure:
    if call.active():
        call.cancel()
    return failure


def _describe(code: int, body: bytes) -> str:
    line = body.decode("utf-8", "replace").strip().splitlines()
    reason = line[0][:200] if line else ""
    if code == 401:
        return f"the relay refused the token (401 {reason})".replace(" )", ")")
    return f"the relay answered {code}" + (f": {reason}" if reason else "")


def _network_reason(e: BaseException) -> str:
    """One line: the innermost reason (treq wraps TLS and connection errors in lists)."""
    reasons = [r.value for r in getattr(e, "reasons", None) or [] if hasattr(r, "value")]
    if reasons:
        telling = [r for r in reasons if not isinstance(r, CancelledError)]
        return _network_reason((telling or reasons)[0])
    if isinstance(e, CancelledError):
        return "the request was cut off"
    if type(e).__module__.startswith("OpenSSL") and e.args and isinstance(e.args[0], list):
        details = [part for err in e.args[0] for part in err[-1:] if part]
        return "TLS error: " + ("; ".join(details) or "handshake failed")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}" + (f": {text[0][:200]}" if text else "")


def check_settings(config: Config) -> None:
    """Refuse, in one line, an ``[inbound] relay_url`` that is not an http(s) URL, or one
    without ``relay_token`` (every pull would get 401)."""
    from mup.config import ConfigError

    url = config.inbound.relay_url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{config.path}: [inbound] relay_url: expected an http:// or "
                          f"https:// URL, got {url!r}")
    if not config.inbound.relay_token:
        raise ConfigError(f"{config.path}: [inbound] relay_token must be set with relay_url "
                          "(the relay's [relay] token)")


def make_puller(config: Config, store: MessageStore, wake: Callable[[], object], reactor: Any
                ) -> RelayPuller:
    """The puller for ``[inbound] relay_url``, with its own HTTP connection pool.
    ``reactor``: for time and for the HTTP agent (which takes the whole reactor)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    check_settings(config)
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    return RelayPuller(config.inbound.relay_url, config.inbound.relay_token, store, wake,
                       reactor, http)
