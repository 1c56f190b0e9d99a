"""The relay's pull protocol, in memory: StubTreq against the Klein resource, task.Clock for
the long poll, the store contract (FakeStore) underneath."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from fixtures_inbound import KANNEL_TOKEN, FakeStore, JEntry, make_config
from treq.testing import StubTreq
from twisted.internet.task import Clock

from mup.config import ConfigError
from mup.relay import CursorError, Relay, format_cursor, parse_cursor
from mup.store import StoreError
from mup.webhook import Receiver

TOKEN = "relay-secret"
AUTH = {b"Authorization": [b"Bearer " + TOKEN.encode()]}
BASE = "http://relay.example"


class Harness:
    """A relay over a store, with the receiver beside it, reachable through StubTreq."""

    def __init__(self, poll_timeout: float = 30.0, store: FakeStore | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = store or FakeStore(clock=self.clock)
        self.relay = Relay(self.store, TOKEN, poll_timeout, self.clock)
        receiver = Receiver(make_config(relay={"token": TOKEN}), self.store,
                            health=self.relay.health, clock=self.clock)
        self.http = StubTreq(self.relay.resource(receiver.resource()))

    def add(self, n: int) -> list[JEntry]:
        """``n`` messages accepted as the receiver would: stored (the store tells the relay)."""
        out = []
        for _ in range(n):
            i = len(self.store.entries) + 1
            out.append(self.store.append(f"kannel:m{i}", {"kind": "sms", "text": f"t{i}"}).result)
        return out

    def backlog(self) -> int:
        return self.store.backlog().result.count

    def request(self, method: str, path: str, headers: Any = AUTH, **kw: Any) -> Any:
        d = self.http.request(method, BASE + path, headers=headers, **kw)
        self.http.flush()
        return d

    def answered(self, d: Any) -> bool:
        """Whether the response to ``d`` arrived (the agent's Deferred may be chained)."""
        self.http.flush()
        got: list[Any] = []
        d.addBoth(lambda r: got.append(r) or r)
        return bool(got)

    def answer(self, d: Any) -> tuple[int, bytes]:
        assert self.answered(d), "no answer yet"
        response = d.result
        body = self.http.content(response)
        self.http.flush()
        return response.code, body.result

    def pull(self, cursor: str = "", **params: Any) -> Any:
        query = urlencode({"cursor": cursor, **params})
        return self.request("GET", f"/relay/pull?{query}")

    def ack(self, ids: list[str]) -> tuple[int, Any]:
        code, body = self.answer(self.request("POST", "/relay/ack", json={"ids": ids}))
        return code, json.loads(body) if code == 200 else body


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- authentication ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {b"Authorization": [b"Bearer wrong"]},
    {b"Authorization": [b"Bearer " + TOKEN.encode() + b"x"]},
    {b"Authorization": [b"Basic " + TOKEN.encode()]},
    {b"Authorization": [TOKEN.encode()]},
    {b"Authorization": [b"Bearer"]},
])
@pytest.mark.parametrize("method,path", [("GET", "/relay/pull?timeout=0"),
                                         ("POST", "/relay/ack")])
def test_wrong_or_missing_token_is_401(h: Harness, headers: Any, method: str, path: str) -> None:
    h.add(1)
    code, body = h.answer(h.request(method, path, headers=headers, json={"ids": ["kannel:m1"]}
                                    if method == "POST" else None))
    assert code == 401
    assert body == b"missing or wrong bearer token\n"
    assert h.store.done == set()


def test_relay_refuses_to_run_without_a_token() -> None:
    with pytest.raises(ConfigError, match="token"):
        Relay(FakeStore(), "", 30, Clock())


# -- cursors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cursor,reason", [
    ("garbage", "garbled cursor"),
    ("e1-", "garbled cursor"),
    ("-5", "garbled cursor"),
    ("e1-x5", "garbled cursor"),
    ("e1-" + "9" * 40, "garbled cursor"),
    ("e0-2", "expired cursor"),
    ("\x00\xff-1", "expired cursor"),
])
def test_bad_cursor_is_400_with_one_line_reason(h: Harness, cursor: str, reason: str) -> None:
    h.add(3)
    code, body = h.answer(h.pull(cursor))
    assert code == 400
    assert reason in body.decode()
    assert body.count(b"\n") == 1 and body.endswith(b"\n")


@pytest.mark.parametrize("params,reason", [
    ({"timeout": "soon"}, "timeout='soon' is not a number"),
    ({"timeout": "-1"}, "timeout='-1' must be a number >= 0"),
    ({"timeout": "nan"}, "timeout='nan' must be a number >= 0"),
    ({"limit": "1.5"}, "limit='1.5' is not a number"),
])
def test_bad_parameters_are_400(h: Harness, params: dict, reason: str) -> None:
    code, body = h.answer(h.pull("", **params))
    assert (code, body) == (400, reason.encode() + b"\n")


def test_parse_cursor_table() -> None:
    assert parse_cursor("", "e") == 0
    assert parse_cursor(format_cursor("ab-cd", 7), "ab-cd") == 7
    with pytest.raises(CursorError):
        parse_cursor(format_cursor("ab", 8), "ac")


# -- the long poll -----------------------------------------------------------------------------

def test_pull_answers_at_once_when_messages_wait(h: Harness) -> None:
    entries = h.add(3)
    code, body = h.answer(h.pull("", timeout=30))
    answer = json.loads(body)
    assert code == 200
    assert [m["id"] for m in answer["messages"]] == ["kannel:m1", "kannel:m2", "kannel:m3"]
    assert [m["seq"] for m in answer["messages"]] == [e.seq for e in entries]
    assert answer["messages"][0]["record"] == {"kind": "sms", "text": "t1"}
    assert answer["messages"][0]["accepted"] == 1000.0
    assert answer["cursor"] == "e1-3"
    assert h.relay.last_pull == 1000.0


def test_pull_waits_then_answers_empty_after_the_timeout(h: Harness) -> None:
    h.add(2)
    d = h.pull("e1-2", timeout=5)
    h.clock.advance(4.9)
    assert not h.answered(d)
    h.clock.advance(0.1)
    code, body = h.answer(d)
    assert (code, json.loads(body)) == (200, {"cursor": "e1-2", "messages": []})
    assert h.relay._waiters == set()


def test_the_timeout_is_capped_by_poll_timeout() -> None:
    h = Harness(poll_timeout=2)
    d = h.pull("", timeout=3600)
    h.clock.advance(2)
    code, body = h.answer(d)
    assert json.loads(body)["messages"] == []


def test_a_waiting_pull_answers_as_soon_as_a_message_is_accepted(h: Harness) -> None:
    d = h.pull("", timeout=30)
    h.clock.advance(1)
    assert not h.answered(d)
    h.add(1)
    code, body = h.answer(d)
    answer = json.loads(body)
    assert [m["id"] for m in answer["messages"]] == ["kannel:m1"]
    assert answer["cursor"] == "e1-1"
    assert h.clock.getDelayedCalls() == []  # the timer went with it


def test_a_gateway_post_beside_the_relay_wakes_the_pull(h: Harness) -> None:
    """The very same receiver serves /kannel/mo: the store's commit wakes the pull."""
    d = h.pull("", timeout=30)
    query = urlencode({"from": "+447700900123", "to": "4242", "text": "hi ops", "id": "abc",
                       "token": KANNEL_TOKEN})
    code, _ = h.answer(h.request("GET", f"/kannel/mo?{query}", headers={}))
    assert code == 200
    code, body = h.answer(d)
    (message,) = json.loads(body)["messages"]
    assert message["id"] == "kannel:abc"
    assert message["record"]["text"] == "hi ops"
    assert message["record"]["from"] == "+447700900123"


def test_a_commit_during_the_first_read_is_not_answered_empty(h: Harness) -> None:
    """The pull waits before it reads: a commit landing while the read runs wakes it, and it
    reads again rather than answering with nothing."""
    from twisted.internet.defer import Deferred

    reads: list[Deferred] = []
    real = h.store.pending

    def slow(after: int = 0, limit: int | None = None) -> Deferred:
        if reads:
            return real(after, limit)
        d: Deferred = Deferred()
        reads.append(d)
        return d

    h.store.pending = slow
    d = h.pull("", timeout=30)
    h.add(1)                 # committed while the first read is still running
    reads[0].callback([])    # ... which saw nothing
    answer = json.loads(h.answer(d)[1])
    assert [m["id"] for m in answer["messages"]] == ["kannel:m1"]


def test_timeout_zero_answers_at_once(h: Harness) -> None:
    code, body = h.answer(h.pull("", timeout=0))
    assert json.loads(body) == {"cursor": "e1-0", "messages": []}


def test_limit_and_cursor_walk_the_backlog_in_order(h: Harness) -> None:
    h.add(5)
    seen, cursor = [], ""
    for _ in range(3):
        answer = json.loads(h.answer(h.pull(cursor, limit=2, timeout=0))[1])
        seen += [m["id"] for m in answer["messages"]]
        cursor = answer["cursor"]
    assert seen == [f"kannel:m{i}" for i in range(1, 6)]
    assert cursor == "e1-5"


def test_a_cancelled_pull_leaves_no_waiter_or_timer(h: Harness) -> None:
    d = h.pull("", timeout=30)
    assert len(h.relay._waiters) == 1
    d.cancel()  # the client went away: the connection is lost, Klein cancels the handler
    h.http.flush()
    assert h.relay._waiters == set()
    assert h.clock.getDelayedCalls() == []


# -- acknowledgements --------------------------------------------------------------------------

def test_ack_deletes_only_what_was_acknowledged(h: Harness) -> None:
    entries = h.add(3)
    h.answer(h.pull(""))
    code, answer = h.ack(["kannel:m2", "kannel:nope", "kannel:m2"])
    assert code == 200
    assert answer == {"acked": ["kannel:m2"], "unknown": ["kannel:nope"]}
    assert h.store.done == {entries[1].seq}
    # What was handed out and not acknowledged is still there for a pull from the start.
    answer = json.loads(h.answer(h.pull("", timeout=0))[1])
    assert [m["id"] for m in answer["messages"]] == ["kannel:m1", "kannel:m3"]
    assert h.backlog() == 2
    # Acknowledging again is harmless.
    assert h.ack(["kannel:m2"]) == (200, {"acked": [], "unknown": ["kannel:m2"]})
    assert h.store.done == {entries[1].seq}


@pytest.mark.parametrize("body", [b"", b"[]", b'{"ids": "kannel:m1"}', b'{"ids": [1]}',
                                  b"\xff\xfe", b'{"id": ["kannel:m1"]}'])
def test_garbled_ack_is_400(h: Harness, body: bytes) -> None:
    h.add(1)
    code, answer = h.answer(h.request("POST", "/relay/ack", data=body))
    assert code == 400
    assert answer == b'expected a JSON body {"ids": ["<id>", ...]}\n'
    assert h.store.done == set()


def test_a_failed_mark_done_is_503_and_the_message_stays(h: Harness) -> None:
    h.add(1)

    def broken(seqs: Any) -> Any:
        from twisted.internet.defer import fail

        return fail(StoreError("database or disk is full"))

    h.store.mark_done = broken  # type: ignore[method-assign]
    code, body = h.answer(h.request("POST", "/relay/ack", json={"ids": ["kannel:m1"]}))
    assert code == 503
    assert h.backlog() == 1


def test_a_store_that_cannot_be_read_is_503_on_pull_and_ack(h: Harness) -> None:
    from twisted.internet.defer import fail

    h.add(1)
    h.store.pending = lambda *a, **k: fail(StoreError("disk I/O error"))
    h.store.lookup = lambda keys: fail(StoreError("disk I/O error"))
    for d in (h.pull("", timeout=0), h.request("POST", "/relay/ack", json={"ids": ["kannel:m1"]})):
        code, body = h.answer(d)
        assert code == 503 and body.endswith(b"; retry\n")
    assert h.store.done == set()


# -- restarts ----------------------------------------------------------------------------------

def test_a_restarted_relay_keeps_cursors_and_offers_everything_unacknowledged() -> None:
    """The epoch is the store's: a relay restarted on the same store takes the bot's cursor,
    and a pull from the start offers what was not acknowledged."""
    first = Harness()
    first.add(3)
    cursor = json.loads(first.answer(first.pull(""))[1])["cursor"]
    first.ack(["kannel:m1"])
    second = Harness(store=first.store)
    assert json.loads(second.answer(second.pull(cursor, timeout=0))[1])["messages"] == []
    first.store.append("kannel:m4", {"kind": "sms", "text": "t4"})
    answer = json.loads(second.answer(second.pull(cursor, timeout=0))[1])
    assert [m["id"] for m in answer["messages"]] == ["kannel:m4"]
    answer = json.loads(second.answer(second.pull("", timeout=0))[1])
    assert [m["id"] for m in answer["messages"]] == ["kannel:m2", "kannel:m3", "kannel:m4"]


def test_a_cursor_of_another_store_is_expired() -> None:
    first = Harness()
    first.add(2)
    cursor = json.loads(first.answer(first.pull(""))[1])["cursor"]
    second = Harness(store=FakeStore(epoch="e2"))
    code, body = second.answer(second.pull(cursor))
    assert code == 400 and b"expired cursor" in body


# -- operations --------------------------------------------------------------------------------

def test_healthz_and_metrics_show_backlog_oldest_age_and_last_pull(h: Harness) -> None:
    h.add(2)
    h.clock.advance(60)
    code, body = h.answer(h.request("GET", "/healthz", headers={}))
    health = json.loads(body)
    assert code == 200
    assert health["relay_backlog"] == 2
    assert health["oldest_undelivered_age"] == 60
    assert health["last_pull_age"] is None
    h.answer(h.pull("", timeout=0))
    h.clock.advance(5)
    health = json.loads(h.answer(h.request("GET", "/healthz", headers={}))[1])
    assert health["last_pull_age"] == 5
    code, body = h.answer(h.request("GET", "/metrics", headers={}))
    text = body.decode()
    assert "mup_relay_backlog 2.0" in text
    assert "mup_relay_oldest_undelivered_age_seconds 65.0" in text
    assert "mup_relay_last_pull_timestamp_seconds 1060.0" in text


# -- over the real store -----------------------------------------------------------------------

def test_acknowledgements_survive_reopening_the_real_store(tmp_path: Any) -> None:
    from mup.store.sqlite import SQLiteMessageStore

    clock = Clock()
    store = SQLiteMessageStore.open(str(tmp_path), clock)
    relay = Relay(store, TOKEN, 30, clock)
    http = StubTreq(relay.resource())

    def settle(d: Any) -> Any:
        for _ in range(4):
            clock.advance(0)
            http.flush()
        return d.result

    for i in range(3):
        settle(store.append(f"kannel:m{i}", {"kind": "sms", "text": f"t{i}"}))
    pulled = settle(http.get(BASE + "/relay/pull?timeout=0", headers=AUTH))
    cursor = json.loads(settle(http.content(pulled)))["cursor"]
    assert cursor == f"{store.epoch}-3"
    d = http.post(BASE + "/relay/ack", headers=AUTH, json={"ids": ["kannel:m1"]})
    assert settle(d).code == 200
    store.close()
    reopened = SQLiteMessageStore.open(str(tmp_path), clock)
    assert reopened.epoch == store.epoch
    assert [e.key for e in settle(reopened.pending())] == ["kannel:m0", "kannel:m2"]
    relay = Relay(reopened, TOKEN, 30, clock)
    assert settle(relay.health())["relay_backlog"] == 2
    reopened.close()


class SharedStore(FakeStore):
    """A FakeStore that, like PostgreSQL's, hears of other relays' commits on a connection of
    its own (``listening``), and whose reads can fail as a database that went away does."""

    listening_now: bool = True
    unreadable: bool = False

    def listening(self) -> bool:
        return self.listening_now

    def backlog(self) -> Any:
        if self.unreadable:
            from twisted.internet.defer import fail

            return fail(StoreError("PostgreSQL: connection refused"))
        return super().backlog()


def test_healthz_of_a_shared_store_says_whether_it_listens_and_503_while_it_does_not() -> None:
    h = Harness(store=SharedStore())
    code, body = h.answer(h.request("GET", "/healthz", headers={}))
    assert code == 200 and json.loads(body)["store_listening"] is True
    h.store.listening_now = False
    code, body = h.answer(h.request("GET", "/healthz", headers={}))
    assert code == 503 and json.loads(body)["store_listening"] is False
    local = Harness()  # a store of one process's own: nothing to listen for
    assert "store_listening" not in json.loads(
        local.answer(local.request("GET", "/healthz", headers={}))[1])


def test_healthz_while_the_database_is_gone_is_503_and_no_failed_check() -> None:
    """The receiver reports the store unwritable; the relay's own check does not fail on top
    (a traceback per health check, several a second from each load balancer)."""
    from twisted.logger import globalLogPublisher

    h = Harness(store=SharedStore())
    h.store.is_writable = False
    h.store.unreadable = True
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        code, body = h.answer(h.request("GET", "/healthz", headers={}))
    finally:
        globalLogPublisher.removeObserver(observe)
    health = json.loads(body)
    assert code == 503
    assert health["journal_writable"] is False and health["relay_backlog"] is None
    assert "health_check" not in health
    assert failures == []
