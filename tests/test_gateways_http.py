"""Twilio and AQL gateways against the local fakes (mup.testing.fakes), through StubTreq and a
task.Clock: errors explained, 429/503/connection failures retried, timeouts never resent."""

import json
from urllib.parse import parse_qsl

import pytest
from treq.testing import StubTreq
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mup.config import parse
from mup.gateway import SendResult
from mup.gateways.aql import AQLGateway
from mup.gateways.factory import gateway_from_config
from mup.gateways.kannel import KannelGateway, dlr_url
from mup.gateways.twilio import TwilioGateway
from mup.testing.fakes import FakeAQL, FakeTwilio

NUMBER = "+447911123456"


def result_of(d: defer.Deferred) -> SendResult:
    results = []
    d.addBoth(results.append)
    assert results, "the send did not finish"
    assert isinstance(results[0], SendResult), results[0]
    return results[0]


@pytest.fixture
def twilio():
    fake = FakeTwilio()
    clock = Clock()
    gw = TwilioGateway(StubTreq(fake), clock, fake.account_sid, fake.auth_token,
                       sender="+15005550006", public_url="https://mup.example.com/")
    return fake, clock, gw


def test_twilio_sends(twilio):
    fake, _clock, gw = twilio
    result = result_of(gw.send(NUMBER, "joe> hi", "ref1"))
    assert result.status == "accepted"
    assert result.message_id.startswith("SM") and result.message_id == fake.messages[0]["sid"]
    assert fake.messages[0]["to"] == NUMBER and fake.messages[0]["body"] == "joe> hi"
    assert fake.messages[0]["from"] == "+15005550006"
    assert fake.messages[0]["status_callback"] == "https://mup.example.com/twilio/status"


def test_twilio_segments_from_answer(twilio):
    _fake, _clock, gw = twilio
    assert result_of(gw.send(NUMBER, "ж" * 100)).segments == 2


TWILIO_ERRORS = [
    # setup, expected words in the reason
    (lambda f: None, "+999", "not a valid phone number"),
    (lambda f: f.opted_out.add(NUMBER), NUMBER, "opted out"),
    (lambda f: setattr(f, "auth_token", "other"), NUMBER, "refused mup's credentials"),
]


@pytest.mark.parametrize("setup,number,words", TWILIO_ERRORS)
def test_twilio_errors_explained_not_retried(twilio, setup, number, words):
    fake, _clock, gw = twilio
    setup(fake)
    result = result_of(gw.send(number, "hello"))
    assert result.status == "failed" and words in result.reason
    assert fake.requests == 1 and not fake.messages


def test_twilio_unknown_error_code_shown():
    fake = FakeTwilio()
    gw = TwilioGateway(StubTreq(fake), Clock(), fake.account_sid, fake.auth_token, sender="")
    result = result_of(gw.send(NUMBER, "hello"))
    assert result.status == "failed"
    assert "'From' phone number is required" in result.reason and "21603" in result.reason


@pytest.mark.parametrize("status", [429, 503])
def test_twilio_retries_with_backoff(twilio, status):
    fake, clock, gw = twilio
    fake.fail_next(status, times=2)
    d = gw.send(NUMBER, "hello")
    assert not d.called and fake.requests == 1
    clock.advance(1)
    assert not d.called and fake.requests == 2
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.1)
    result = result_of(d)
    assert result.status == "accepted" and fake.requests == 3 and len(fake.messages) == 1


def test_twilio_retry_after_honoured(twilio):
    fake, clock, gw = twilio
    fake.fail_next(429, retry_after="5")
    d = gw.send(NUMBER, "hello")
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    assert result_of(d).status == "accepted"


def test_twilio_gives_up_after_retries(twilio):
    fake, clock, gw = twilio
    fake.fail_next(429, times=10)
    d = gw.send(NUMBER, "hello")
    clock.pump([1, 2, 4, 8])
    result = result_of(d)
    assert result.status == "failed" and "busy" in result.reason and "4 times" in result.reason
    assert fake.requests == 4 and not fake.messages


class Hang(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.methods = []

    def render(self, request):
        self.methods.append(request.method)
        return NOT_DONE_YET


def test_timeout_is_not_retried():
    """AQL cannot say what it took: a timeout may mean the SMS went out, so it is reported,
    never sent a second time."""
    hang, clock = Hang(), Clock()
    gw = AQLGateway(StubTreq(hang), clock, "https://aql.example/gw", "mup", "pw", timeout=10)
    d = gw.send(NUMBER, "hello")
    clock.advance(9.9)
    assert not d.called
    clock.advance(0.1)
    result = result_of(d)
    assert result.status == "failed" and "did not answer in time" in result.reason
    assert "may still arrive" in result.reason
    clock.pump([1] * 30)
    assert hang.methods == [b"POST"]


def test_twilio_timeout_and_no_answer_to_the_check():
    hang, clock = Hang(), Clock()
    gw = TwilioGateway(StubTreq(hang), clock, "AC1", "tok", sender="+15005550006", timeout=10)
    d = gw.send(NUMBER, "hello")
    clock.pump([10, 10])
    result = result_of(d)
    assert result.status == "failed" and "may still arrive" in result.reason
    clock.pump([1] * 30)
    assert hang.methods == [b"POST", b"GET"]


def test_twilio_timeout_after_create_is_found_not_resent():
    """The answer was lost but Twilio created the message: the message list shows it."""
    clock = Clock()
    clock.advance(1_800_000_000)
    fake = FakeTwilio(clock=clock)
    gw = TwilioGateway(StubTreq(fake), clock, fake.account_sid, fake.auth_token,
                       sender="+15005550006", timeout=10)
    fake.stall_next(after_create=True)
    d = gw.send(NUMBER, "joe> only once")
    clock.advance(10)
    result = result_of(d)
    assert result.status == "accepted"
    assert [m["sid"] for m in fake.messages] == [result.message_id]
    clock.pump([1] * 30)
    assert len(fake.messages) == 1


def test_twilio_timeout_before_create_is_retried_once():
    clock = Clock()
    clock.advance(1_800_000_000)
    fake = FakeTwilio(clock=clock)
    # An older identical SMS (outside the window) must not count as this one.
    fake.messages.append({"to": NUMBER, "body": "joe> again", "sid": "SMold",
                          "date_created": "Thu, 01 Jan 2026 00:00:00 +0000"})
    gw = TwilioGateway(StubTreq(fake), clock, fake.account_sid, fake.auth_token,
                       sender="+15005550006", timeout=10)
    fake.stall_next(after_create=False)
    d = gw.send(NUMBER, "joe> again")
    clock.advance(10)
    assert not d.called
    clock.advance(1)
    result = result_of(d)
    assert result.status == "accepted" and result.message_id != "SMold"
    assert [m["body"] for m in fake.messages] == ["joe> again", "joe> again"]


class RefuseFirst:
    """A treq client whose first ``n`` connections are refused (no server listening yet)."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def request(self, *args, **kwargs):
        if self.n:
            self.n -= 1
            return defer.fail(error.ConnectionRefusedError())
        return self.inner.request(*args, **kwargs)


def test_connection_refused_is_retried():
    fake, clock = FakeAQL(), Clock()
    gw = AQLGateway(RefuseFirst(StubTreq(fake), 1), clock, "https://aql.example/gw",
                    fake.username, fake.password, sender="mup")
    d = gw.send(NUMBER, "hello")
    assert not d.called
    clock.advance(1)
    assert result_of(d).status == "accepted"
    assert fake.messages == [{"destination": "447911123456", "message": "hello",
                              "originator": "mup"}]


def test_connection_refused_every_time():
    fake, clock = FakeAQL(), Clock()
    gw = AQLGateway(RefuseFirst(StubTreq(fake), 99), clock, "https://aql.example/gw",
                    fake.username, fake.password, retries=2)
    d = gw.send(NUMBER, "hello")
    clock.pump([1, 2])
    result = result_of(d)
    assert result.status == "failed" and "could not reach" in result.reason


AQL_CASES = [
    # setup, number, text, status, words
    (lambda f: None, NUMBER, "hello", "accepted", ""),
    (lambda f: setattr(f, "password", "changed"), NUMBER, "hello", "failed", "login"),
    (lambda f: None, "+4412", "hello", "failed", "not valid"),
    (lambda f: setattr(f, "credit", 1), NUMBER, "a" * 200, "failed", "out of credit"),
]


@pytest.mark.parametrize("setup,number,text,status,words", AQL_CASES)
def test_aql(setup, number, text, status, words):
    fake = FakeAQL()
    setup(fake)
    gw = AQLGateway(StubTreq(fake), Clock(), "https://aql.example/gw", "mup", "secret")
    result = result_of(gw.send(number, text))
    assert result.status == status and words in result.reason
    assert fake.requests == 1


def test_aql_503_retried():
    fake, clock = FakeAQL(), Clock()
    fake.fail_next(503)
    gw = AQLGateway(StubTreq(fake), clock, "https://aql.example/gw", "mup", "secret")
    d = gw.send(NUMBER, "hello")
    clock.advance(1)
    assert result_of(d).status == "accepted" and len(fake.messages) == 1


def test_secrets_and_numbers_stay_out_of_logs(twilio):
    fake, clock, gw = twilio
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw.debug_numbers = True  # [log] level = "debug"
        fake.fail_next(503)
        d = gw.send(NUMBER, "hello")
        clock.advance(1)
        result_of(d)
        fake.auth_token = "changed"
        result_of(gw.send(NUMBER, "hello"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    above_debug = [formatEvent(e) for e in events if e["log_level"] > LogLevel.debug]
    assert above_debug
    for text in above_debug:
        assert "secret-token" not in text and NUMBER not in text and "changed" not in text
    assert any("+44 **** **3456" in text for text in above_debug)
    debug = [formatEvent(e) for e in events if e["log_level"] == LogLevel.debug]
    assert any(NUMBER in text for text in debug)


def test_full_numbers_not_even_emitted_below_debug(twilio):
    _fake, _clock, gw = twilio
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        result_of(gw.send(NUMBER, "hello"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    assert events and not any(NUMBER in formatEvent(e) for e in events)


class Redirect(Resource):
    """A gateway URL that answers with a redirect elsewhere; records every request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.paths = []

    def render(self, request):
        self.paths.append(request.path)
        if request.path == b"/elsewhere":
            return b"0: Accepted for delivery"
        request.setResponseCode(302)
        request.setHeader(b"location", b"https://u:secret@k.example:8443/elsewhere?password=pw")
        return b""


def test_a_redirect_is_not_followed_and_the_operator_is_told():
    """Following it would replay the credentials and the text to wherever it points."""
    redirect = Redirect()
    gw = KannelGateway(StubTreq(redirect), Clock(), "http://k.example/cgi-bin/sendsms", "mup",
                       "pw", retries=3)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        result = defer.ensureDeferred(gw.send(NUMBER, "joe> hi")).result
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert result == SendResult("failed", "the SMS gateway's address has changed (it answered "
                                          "with a redirect); tell the bot's operator")
    assert redirect.paths == [b"/cgi-bin/sendsms"]  # not followed, not retried
    from twisted.logger import formatEvent

    said = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert len(said) == 1 and "https://k.example:8443/elsewhere" in said[0]
    assert "secret" not in said[0] and "password" not in said[0]


def test_kannel_request_parameters():
    gw = KannelGateway(None, Clock(), "http://127.0.0.1:13013/cgi-bin/sendsms", "mup", "pw",
                       sender="4242", public_url="https://mup.example.com",
                       inbound_token="t&k")
    method, url, kwargs = gw.request(NUMBER, "joe> ça va", "abc123")
    base, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    assert base == "http://127.0.0.1:13013/cgi-bin/sendsms" and kwargs == {}
    assert params["text"] == "joe> ça va" and params["to"] == NUMBER
    assert method == "GET" and params["coding"] == "2" and params["charset"] == "UTF-8"
    assert params["dlr-url"] == ("https://mup.example.com/kannel/dlr?ref=abc123&status=%d"
                                 "&token=t%26k")
    assert params["dlr-mask"] == "19"
    assert "&coding=0&" in gw.request(NUMBER, "joe> ok", "r")[1]
    with_query = KannelGateway(None, Clock(), "http://k/cgi-bin/sendsms?smsc=a", "mup", "pw")
    assert with_query.request(NUMBER, "x", "")[1].startswith(
        "http://k/cgi-bin/sendsms?smsc=a&username=mup&")
    assert dlr_url("http://x/", "r", "") == "http://x/kannel/dlr?ref=r&status=%d&token="


def test_gateway_from_config():
    base = {"webhook": {"public_url": "https://mup.example.com"}}
    assert gateway_from_config(parse({}), Clock(), http_client=object()) is None
    for name, cls in [("kannel", KannelGateway), ("twilio", TwilioGateway),
                      ("aql", AQLGateway)]:
        config = parse({**base, "sms": {"gateway": name, "sender": "4242", "timeout": 3,
                                        "retries": 1}})
        gw = gateway_from_config(config, Clock(), http_client=object())
        assert isinstance(gw, cls) and gw.timeout == 3 and gw.retries == 1
        assert gw.sender == "4242" and not gw.debug_numbers
    config = parse({"sms": {"gateway": "aql"}, "log": {"level": "debug"}})
    assert gateway_from_config(config, Clock(), http_client=object()).debug_numbers


def test_twilio_messaging_service():
    fake = FakeTwilio()
    gw = TwilioGateway(StubTreq(fake), Clock(), fake.account_sid, fake.auth_token,
                       messaging_service_sid="MG123")
    assert result_of(gw.send(NUMBER, "hi")).status == "accepted"
    assert fake.messages[0]["messaging_service_sid"] == "MG123"
    assert json.loads(json.dumps(fake.messages[0]))["from"] is None


@pytest.mark.parametrize(("location", "shown"), [
    (b"https://u:pw@sms.example.com:8443/send?password=pw", "https://sms.example.com:8443/send"),
    (b"http://sms.example.com/cgi-bin/sendsms", "http://sms.example.com/cgi-bin/sendsms"),
    (b"/cgi-bin/sendsms2?token=t", "/cgi-bin/sendsms2"),
    (b"", ""),
    (b"http://[::1", "an unreadable address"),
    (b"http://sms.example.com/a\r\nb", "http://sms.example.com/ab"),  # urlsplit drops CR/LF
])
def test_redirect_target_shown_without_secrets(location, shown):
    from mup.gateways import _where

    assert _where(location) == shown
