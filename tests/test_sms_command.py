"""The sms command, table-driven, with a small in-test directory and the real Twilio gateway
class talking to the local Twilio fake through StubTreq (no network, no wall clock)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock

from mup import people
from mup.commands import Commands, Request
from mup.commands.sms import sms
from mup.config import parse
from mup.directory import DirectoryError
from mup.gateway import DeliveryReport
from mup.gateways.twilio import TwilioGateway
from mup.outbox import Outbox
from mup.quota import Quota
from mup.store.sqlitestate import SQLiteStateStore
from mup.testing.fakes import FakeTwilio


def Person(nick, name="", mobile=""):  # noqa: N802 - builds the directory's Person
    return people.Person(nick, name, "", (("mobile", mobile),) if mobile else (), mobile, "")


DOWN = DirectoryError("ldap down", "The directory is down; try again later.")


class Directory:
    """The directory API the command codes against: find_all (by nick / by account)."""

    def __init__(self, people, accounts):
        self.people = {p.nick.lower(): p for p in people}
        self.accounts = accounts
        self.down = False

    def by_nick(self, nick):
        if self.down:
            return defer.fail(DOWN)
        return defer.succeed(self.people.get(nick.lower()))

    def by_account(self, account):
        if self.down:
            return defer.fail(DOWN)
        nick = self.accounts.get(account.lower())
        return defer.succeed(self.people.get(nick) if nick else None)

    def find_all(self, keys):
        if self.down:
            return defer.fail(DOWN)
        by = {"nick": self.by_nick, "account": self.by_account}
        return defer.gatherResults([by[kind](value) for kind, value in keys])


PEOPLE = [
    Person("joe", "Joe Bloggs", mobile="+44 7911 111111"),
    Person("niemeyer", "Gustavo Niemeyer", mobile="07911 123456"),
    Person("nomobile", "No Mobile"),
    Person("badnum", "Bad Number", mobile="+44 12"),
    Person("mallory", "Mallory", mobile="+44 7911 999999"),
]
ACCOUNTS = {"joe": "joe", "mallory": "mallory", "ghost": ""}


class World:
    def __init__(self, tmp_path, **sms_config):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # a fixed time
        self.fake = FakeTwilio()
        self.gateway = TwilioGateway(StubTreq(self.fake), self.clock, self.fake.account_sid,
                                     self.fake.auth_token, sender="+15005550006")
        self.config = parse({"sms": {"gateway": "twilio", "default_region": "GB",
                                     **sms_config},
                             "state": {"directory": str(tmp_path)}})
        self.directory = Directory(PEOPLE, ACCOUNTS)
        self.store = SQLiteStateStore.open(str(tmp_path), self.clock)
        self.quota = Quota.from_config(self.config, self.clock, self.store)
        self.outbox = Outbox.from_config(self.config, self.clock, self.store)
        self.sent = []
        self.commands = Commands([sms(self.directory, self.gateway, self.quota, self.config,
                                      on_sent=lambda n, r: self.sent.append((n, r)),
                                      outbox=self.outbox)])

    def say(self, args, nick="joe", account="joe", channel=None, host="joe!j@staff.example.com"):
        d = self.commands.run("sms", Request(nick, args, channel, host, account))
        lines = []
        d.addCallback(lines.extend)
        assert d.called
        return " ".join(lines)


    def restart(self, tmp_path):
        """Let the state commit, close the store and open it again."""
        d = self.store.close()
        self.clock.advance(0)
        assert d.called
        self.store = SQLiteStateStore.open(str(tmp_path), self.clock)
        return self.store


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    yield world
    world.store.close()
    world.clock.advance(0)


def test_sends_signed_with_directory_nick(world):
    assert world.say("niemeyer Where are you? We're waiting!") == "SMS is on the way!"
    [message] = world.fake.messages
    assert message["to"] == "+447911123456"
    assert message["body"] == "joe> Where are you? We're waiting!"
    assert world.sent == [("+447911123456", "joe")]
    assert world.quota.used("joe") == 1


def test_needs_account(world):
    assert world.commands.get("sms").needs_account


def test_channel_prefix(world):
    assert world.say("niemeyer hi", channel="#dev") == "SMS is on the way!"
    assert world.fake.messages[0]["body"] == "#dev joe> hi"


def test_parts_mentioned(world):
    assert world.say("niemeyer " + "a" * 200) == "SMS is on the way! (2 parts)"
    assert world.quota.used("joe") == 2


REFUSALS = [
    # args, nick, account, expected reply (substring)
    ("niemeyer hi", "joe", None, "logged in to a services account"),
    # Someone took the nick joe but is logged in as mallory: signed mallory, never joe.
    ("nobody hi", "joe", "mallory", "can't find nobody in the directory"),
    ("niemeyer hi", "joe", "ghost", "account ghost is not in the directory"),
    ("nomobile hi", "joe", "joe", "nomobile has no mobile number"),
    ("badnum hi", "joe", "joe", "badnum's mobile number in the directory (+44 12) can't be "
                                "used: it is not a valid phone number"),
    ("niemeyer " + "a" * 460, "joe", "joe", "too long by 6 characters"),
    ("niemeyer " + "ж" * 200, "joe", "joe", "too long by 4 characters"),
]


@pytest.mark.parametrize("args,nick,account,reply", REFUSALS)
def test_refusals(world, args, nick, account, reply):
    assert reply in world.say(args, nick=nick, account=account)
    assert world.fake.messages == [] and world.sent == []
    assert world.quota.used("joe") == 0


def test_nick_taken_by_someone_else_signs_with_their_own_name(world):
    world.say("niemeyer hi", nick="joe", account="mallory")
    assert world.fake.messages[0]["body"] == "mallory> hi"


def test_exact_fit_is_sent(world):
    # 3 parts of 153 = 459 septets, "joe> " included.
    assert world.say("niemeyer " + "a" * 454) == "SMS is on the way! (3 parts)"


def test_usage(world):
    assert world.say("niemeyer").startswith("Usage: sms <nick> <message>")


def test_sms_alone_tells_the_sender_their_budget(world):
    """Issue 13 item 12 / issue 14: the budget, and when it refills, before it runs out."""
    assert world.say("") == (
        "You have sent 0 SMS segments today; 50 of 50 left today; 5 can go now; everyone "
        "together has 500 of 500 left. The day's counts reset in 16 h (midnight UTC). "
        "Usage: sms <nick> <message>")
    world.say("niemeyer hi")
    world.say("niemeyer again")
    assert world.say("").startswith(
        "You have sent 2 SMS segments today; 48 of 50 left today; 3 can go now (one more "
        "every 6 min, the next in 6 min); everyone together has 498 of 500 left.")
    assert world.say("", account="mallory").startswith("You have sent 0 SMS segments today")
    assert world.say("", account="").startswith("You need to be logged in")
    assert world.quota.used("joe") == 2  # asking costs nothing


def test_control_characters_removed(world):
    world.say("niemeyer \x02bold\x02 and\r\nmore")
    assert world.fake.messages[0]["body"] == "joe> bold  and  more"


def test_bidi_controls_never_reach_the_phone(world):
    """A right-to-left override (or an isolate, a zero-width space) in the text or in the
    channel's name would make the phone show the rest reversed or hide part of it."""
    world.say("niemeyer call \u202e+44 7700 900123\u202c now\u2066!\u2069\u200b",
              channel="#dev\u202e")
    assert world.fake.messages[0]["body"] == "#dev joe> call +44 7700 900123 now!"


def test_undecodable_bytes_do_not_crash(world):
    assert world.say("niemeyer caf\udce9 ok") == "SMS is on the way!"
    assert world.fake.messages[0]["body"] == "joe> caf\ufffd ok"


def test_directory_error_shown(world):
    world.directory.down = True
    assert world.say("niemeyer hi") == "The directory is down; try again later."


def test_gateway_failure_refunds(world):
    world.fake.opted_out.add("+447911123456")
    reply = world.say("niemeyer hi")
    assert reply.startswith("SMS delivery failed: the recipient has opted out")
    assert world.quota.used("joe") == 0 and world.sent == []


def test_over_limit(world):
    for _ in range(5):
        assert world.say("niemeyer hi") == "SMS is on the way!"
    assert "too fast; try again in 6 min" in world.say("niemeyer hi")
    world.clock.advance(360)
    assert world.say("niemeyer hi") == "SMS is on the way!"


def test_daily_quota(tmp_path):
    world = World(tmp_path, sender_daily=3, sender_burst=10)
    for _ in range(3):
        assert world.say("niemeyer hi") == "SMS is on the way!"
    assert "0 of your 3 SMS segments left today" in world.say("niemeyer hi")
    # Someone else still may.
    assert world.say("niemeyer hi", nick="mallory", account="mallory") == "SMS is on the way!"


def test_hostmask_mode(tmp_path):
    world = World(tmp_path, require_account=False, allowed_hostmasks=["*!*@STAFF.example.com"])
    assert not world.commands.get("sms").needs_account  # no WHOIS where accounts don't count
    assert world.say("niemeyer hi", account=None) == "SMS is on the way!"
    assert world.fake.messages[0]["body"] == "joe> hi"
    assert "not on the allowed list" in world.say("niemeyer hi", account=None,
                                                   host="joe!j@evil.example.net")
    assert "nobody is not in the directory" in world.say("niemeyer hi", nick="nobody",
                                                         account=None,
                                                         host="nobody!n@staff.example.com")


def test_delivery_report_reaches_sender(world):
    world.say("niemeyer hi", nick="joe_", account="joe")
    sid = world.fake.messages[0]["sid"]
    assert world.outbox.report(DeliveryReport("twilio", sid, "pending")) is None
    assert world.outbox.report(DeliveryReport("twilio", sid, "delivered")) == (
        "joe_", "SMS to niemeyer delivered.")
    assert world.outbox.report(DeliveryReport("twilio", sid, "delivered")) is None


def test_failed_report_survives_restart(world, tmp_path):
    world.say("niemeyer hi")
    sid = world.fake.messages[0]["sid"]
    outbox = Outbox(world.restart(tmp_path), world.clock)
    assert outbox.report(DeliveryReport("twilio", sid, "failed", "Twilio error 30005\r\nx")) == (
        "joe", "SMS to niemeyer could not be delivered: Twilio error 30005 x")


def reopen(store, tmp_path, clock):
    d = store.close()
    clock.advance(0)
    assert d.called
    return SQLiteStateStore.open(str(tmp_path), clock)


def test_outbox_forgets_what_was_reported_and_what_is_too_old(tmp_path):
    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    outbox = Outbox(store, clock, keep=3600)
    for i in range(1500):
        outbox.record(f"r{i}", "kannel", "", "joe", "niemeyer")
        outbox.report(DeliveryReport("kannel", f"r{i}", "delivered"))
    outbox.record("old", "kannel", "", "joe", "pat")
    clock.advance(1800)
    outbox.record("last", "kannel", "", "joe", "niemeyer")
    store = reopen(store, tmp_path, clock)
    assert sorted(store.load("outbox").result) == ["last", "old"]
    again = Outbox(store, clock, keep=3600)
    assert len(again) == 2
    clock.advance(1801)
    again.record("after", "kannel", "", "ann", "pat")  # "old" is past keep now
    store = reopen(store, tmp_path, clock)
    assert sorted(store.load("outbox").result) == ["after", "last"]
    third = Outbox(store, clock, keep=3600)
    assert third.report(DeliveryReport("kannel", "after", "delivered")) == (
        "ann", "SMS to pat delivered.")
    assert third.report(DeliveryReport("kannel", "last", "delivered")) == (
        "joe", "SMS to niemeyer delivered.")
    assert third.report(DeliveryReport("kannel", "old", "delivered")) is None
    store.close()
    clock.advance(0)


def test_outbox_imports_the_old_jsonl_file(tmp_path):
    """tests/data/state-v0 was written by the JSON-lines code: r1 and r2 wait for a report, r3
    was reported."""
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parent / "data" / "state-v0" / "sms-outbox.jsonl", tmp_path)
    clock = Clock()
    clock.advance(1_800_007_800 + 60)
    store = SQLiteStateStore.open(str(tmp_path), clock)
    outbox = Outbox(store, clock, legacy_directory=str(tmp_path))
    assert len(outbox) == 2
    clock.advance(0)
    assert (tmp_path / "sms-outbox.jsonl.imported").exists()
    assert not (tmp_path / "sms-outbox.jsonl").exists()
    again = Outbox(reopen(store, tmp_path, clock), clock, legacy_directory=str(tmp_path))
    assert again.report(DeliveryReport("twilio", "SM123", "delivered")) == (
        "ann", "SMS to pat delivered.")
    assert again.report(DeliveryReport("kannel", "r3", "delivered")) is None
    assert again.report(DeliveryReport("kannel", "r1", "failed", "")) == (
        "joe", "SMS to niemeyer could not be delivered: the network gave no reason")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=600))
def test_any_text_is_sent_whole_within_limits_or_refused(tmp_path, text):
    world = World(tmp_path / str(abs(hash(text))), sender_burst=100, sender_rate=0.0,
                  sender_daily=0, global_daily=0)
    reply = world.say("niemeyer " + text)
    assert "\r" not in reply and "\n" not in reply and "\0" not in reply
    from mup.segments import count

    if world.fake.messages:
        [message] = world.fake.messages
        assert reply.startswith("SMS is on the way!")
        assert count(message["body"]).segments <= 3
        assert message["body"].startswith("joe> ")
    else:
        assert reply.startswith(("Usage:", "That SMS is too long by")), reply


def test_unwritable_outbox_does_not_hide_a_sent_sms(world, monkeypatch):
    from mup.store import StoreError

    monkeypatch.setattr(world.store, "put",
                        lambda *a: defer.fail(StoreError("database or disk is full")))
    assert world.say("niemeyer hi") == "SMS is on the way!"
    assert len(world.fake.messages) == 1
