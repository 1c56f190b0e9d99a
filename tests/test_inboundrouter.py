"""Routing of inbound SMS (table-driven) and the persisted reply routes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures_inbound import JOE, NIEMEYER, FakeDirectory
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mup.gateway import InboundSMS
from mup.inboundrouter import Route, Router
from mup.replyroutes import ReplyRoutes
from mup.store.memory import MemoryStateStore
from mup.store.sqlitestate import SQLiteStateStore

_sync = SynchronousTestCase()
OLD = Path(__file__).parent / "data" / "state-v0"



def make_router(tmp_path, unknown: str = "mask", directory=None,
                present=("alice", "mup", "nickserv"), clock: Clock | None = None,
                own_nick: str = "mup") -> tuple[Router, ReplyRoutes]:
    clock = clock or Clock()
    routes = ReplyRoutes(MemoryStateStore(), 12 * 3600, clock)
    router = Router(channels=["#ops", "#Dev[1]"], default_channel="#ops", unknown_senders=unknown,
                    region="GB", directory=directory or FakeDirectory([NIEMEYER, JOE]),
                    routes=routes, is_present=lambda nick: nick.lower() in present,
                    own_nick=lambda: own_nick)
    return router, routes


def route(router: Router, sender: str, text: str) -> Route:
    d = Deferred.fromCoroutine(router.route(InboundSMS("kannel", "1", sender, "4242", text, 0)))
    return _sync.successResultOf(d)


CASES = [
    # sender, text -> target, shown text, sender shown, note?
    ("+447911123456", "#ops Flight delayed, there in 5.",
     "#ops", "Flight delayed, there in 5.", "niemeyer", False),
    ("07911 123456", "#OPS: late", "#ops", "late", "niemeyer", False),
    ("+447911123456", "#dev{1} rfc1459 folding", "#Dev[1]", "rfc1459 folding", "niemeyer", False),
    ("+447911123456", "#random hi all", "#ops", "#random hi all", "niemeyer", True),
    ("+447911123456", "joe: call me", "#ops", "call me", "niemeyer", True),  # joe is away
    ("+447911123456", "alice are you there", "alice", "are you there", "niemeyer", False),
    ("+447911123456", "Nobody reads this", "#ops", "Nobody reads this", "niemeyer", False),
    ("+447911123999", "#ops who am I", "#ops", "who am I", "+44 **** **3999", False),
    ("+447911123456", "", "#ops", "", "niemeyer", False),
    ("+447911123456", "   ", "#ops", "", "niemeyer", False),
    ("+447911123456", "# lonely hash", "#ops", "# lonely hash", "niemeyer", False),
    # the bot itself and services bots address nobody (issue 13 item 4)
    ("+447911123456", "mup hello", "#ops", "mup hello", "niemeyer", False),
    ("+447911123456", "MUP: hello", "#ops", "MUP: hello", "niemeyer", False),
    ("+447911123456", "NickServ identify x", "#ops", "NickServ identify x", "niemeyer", False),
    ("+447911123456", "chanserv op", "#ops", "chanserv op", "niemeyer", False),
]


@pytest.mark.parametrize("sender, text, target, shown, who, noted", CASES)
def test_routing_table(tmp_path, sender, text, target, shown, who, noted) -> None:
    router, _ = make_router(tmp_path)
    r = route(router, sender, text)
    assert (r.target, r.text, r.sender, bool(r.note)) == (target, shown, who, noted)


def test_masked_number_format(tmp_path) -> None:
    router, _ = make_router(tmp_path)
    assert route(router, "+447911123999", "hi").sender.endswith("999")
    assert "1123" not in route(router, "+447911123999", "hi").sender


def test_reply_goes_to_last_sender_within_window(tmp_path) -> None:
    clock = Clock()
    router, routes = make_router(tmp_path, clock=clock, present=("joe",))
    routes.record("+447911123456", "joe")
    r = route(router, "+447911123456", "On my way")
    assert (r.target, r.text, r.private) == ("joe", "On my way", True)
    # An explicit address still wins over the reply route.
    assert route(router, "+447911123456", "#ops On my way").target == "#ops"
    clock.advance(12 * 3600 + 1)
    assert route(router, "+447911123456", "On my way").target == "#ops"


def test_unknown_sender_dropped_by_config_unless_someone_texted_them(tmp_path) -> None:
    router, routes = make_router(tmp_path, unknown="drop", present=("joe",))
    assert route(router, "+447911123999", "#ops spam").dropped
    routes.record("+447911123999", "joe")
    r = route(router, "+447911123999", "thanks")
    assert (r.target, r.sender) == ("joe", "+44 **** **3999")


def test_directory_down_shows_masked_and_never_drops(tmp_path) -> None:
    router, _ = make_router(tmp_path, unknown="drop", directory=FakeDirectory([], broken=True))
    r = route(router, "+447911123456", "joe hi")
    assert (r.target, r.sender, r.dropped) == ("#ops", "+44 **** **3456", False)


def test_no_directory(tmp_path) -> None:
    router, _ = make_router(tmp_path)
    router.directory = None
    assert route(router, "+447911123456", "alice hi").target == "alice"
    assert route(router, "+447911123456", "joe hi").target == "#ops"


def test_default_channel_falls_back_to_first_channel(tmp_path) -> None:
    router = Router(channels=["#a", "#b"], default_channel="", unknown_senders="mask",
                    region="", directory=None, routes=None, is_present=lambda n: False)
    assert route(router, "+15555550100", "hello").target == "#a"
    with pytest.raises(ValueError):
        Router(channels=[], default_channel="", unknown_senders="mask", region="",
               directory=None, routes=None, is_present=lambda n: False)


def reopen(store, tmp_path, clock):
    """Let the writes commit, close the state store and open it again."""
    d = store.close()
    clock.advance(0)
    assert d.called
    return SQLiteStateStore.open(str(tmp_path), clock)


def test_reply_routes_persist(tmp_path) -> None:
    clock = Clock()
    clock.advance(1000)
    store = SQLiteStateStore.open(str(tmp_path), clock)
    ReplyRoutes(store, 60, clock).record("+447911123456", "joe")
    store = reopen(store, tmp_path, clock)
    again = ReplyRoutes(store, 60, clock)
    assert again.lookup("+447911123456") == "joe"
    clock.advance(61)
    store = reopen(store, tmp_path, clock)
    assert ReplyRoutes(store, 60, clock).lookup("+447911123456") is None
    clock.advance(0)
    assert store.load("routes").result == {}  # the expired route was dropped from the store


def test_reply_routes_latest_sender_wins() -> None:
    routes = ReplyRoutes(MemoryStateStore(), 60, Clock())
    routes.record("+1", "joe")
    routes.record("+1", "ann")
    assert routes.lookup("+1") == "ann"


def test_recording_a_route_does_no_file_io(tmp_path, monkeypatch) -> None:
    """Regression: every SMS rewrote and fsync'd a JSON file on the reactor thread."""
    import os

    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    routes = ReplyRoutes(store, 60, clock)
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync on the reactor thread"))
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("rename on the reactor thread"))
    routes.record("+1", "joe")
    assert store.load("routes").result == {"+1": ["joe", 0.0]}


def test_reply_routes_import_the_old_json_file(tmp_path) -> None:
    """tests/data/state-v0/reply-routes.json was written by the JSON code at 10:10 UTC."""
    shutil.copy(OLD / "reply-routes.json", tmp_path)
    clock = Clock()
    clock.advance(1_800_007_800 + 3600)
    store = SQLiteStateStore.open(str(tmp_path), clock)
    routes = ReplyRoutes(store, 12 * 3600, clock, legacy_directory=str(tmp_path))
    assert routes.lookup("+447911123456") == "joe" and routes.lookup("+15555550100") == "ann"
    clock.advance(0)
    assert not (tmp_path / "reply-routes.json").exists()
    assert (tmp_path / "reply-routes.json.imported").exists()
    store = reopen(store, tmp_path, clock)
    assert ReplyRoutes(store, 12 * 3600, clock).lookup("+15555550100") == "ann"


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"+1": 5}', '{"+1": ["joe"]}'])
def test_reply_routes_unreadable_old_file_starts_afresh(tmp_path, content) -> None:
    (tmp_path / "reply-routes.json").write_text(content)
    clock = Clock()
    routes = ReplyRoutes(SQLiteStateStore.open(str(tmp_path), clock), 60, clock,
                         legacy_directory=str(tmp_path))
    assert routes.lookup("+1") is None
    routes.record("+1", "joe")
    assert routes.lookup("+1") == "joe"


def test_private_for_someone_not_on_irc_goes_to_the_channel_addressed(tmp_path) -> None:
    router, routes = make_router(tmp_path, present=())
    r = route(router, "+447911123456", "joe: call me")
    assert (r.target, r.text, r.note) == ("#ops", "call me", "(for joe, who is not on IRC now)")
    routes.record("+447911123999", "ann")
    r = route(router, "+447911123999", "thanks")
    assert (r.target, r.note) == ("#ops", "(for ann, who is not on IRC now)")


def test_the_bots_current_nick_addresses_nobody() -> None:
    """The nick comes from IRC as it is now (e.g. an alternate nick after a collision)."""
    nick = ["mup"]
    routes = ReplyRoutes(MemoryStateStore(), 12 * 3600, Clock())
    router = Router(channels=["#ops"], default_channel="#ops", unknown_senders="mask",
                    region="GB", directory=FakeDirectory([NIEMEYER]), routes=routes,
                    is_present=lambda n: n.lower() in ("mup", "mup_"), own_nick=lambda: nick[0])
    nick[0] = "mup_"
    assert route(router, "+447911123456", "mup_ hi").target == "#ops"
    assert route(router, "+447911123456", "mup hi").target == "mup"  # someone else now
