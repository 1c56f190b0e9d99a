"""The receiver over StubTreq: auth first, 413, 400, duplicates, 2xx only after the journal."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from fixtures_inbound import KANNEL_TOKEN, PUBLIC_URL, TWILIO_TOKEN, FakeStore, make_config
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mup.gateways.inbound import twilio_signature
from mup.webhook import TWIML_EMPTY, Receiver

_sync = SynchronousTestCase()
BASE = "http://mup.test"


class Harness:
    def __init__(self, **config: dict) -> None:
        self.accepted: list = []
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = FakeStore(clock=self.clock)
        self.health = {"irc_connected": True}
        self.receiver = Receiver(make_config(**config), self.store,
                                 on_accepted=self.accepted.append,
                                 health=lambda: self.health, clock=self.clock)
        self.http = StubTreq(self.receiver.resource())

    def request(self, method: str, url: str, **kwargs) -> tuple[int, bytes, object]:
        d = self.http.request(method, BASE + url, **kwargs)
        self.http.flush()
        response = _sync.successResultOf(d)
        body = _sync.successResultOf(self.http.content(response))
        return response.code, body, response.headers

    def mo(self, method: str = "GET", token: str = KANNEL_TOKEN, **params: str) -> tuple:
        query = {"from": "+447700900123", "to": "4242", "text": "#ops hello", "id": "abc-1",
                 "charset": "UTF-8", "coding": "0", "token": token, **params}
        return self.request(method, "/kannel/mo?" + urlencode(query))

    def twilio(self, path: str, params: dict, signature: str | None = None, **kw) -> tuple:
        body = urlencode(params).encode()
        headers = {"Content-Type": ["application/x-www-form-urlencoded"]}
        if signature is None:
            signature = twilio_signature(TWILIO_TOKEN, PUBLIC_URL + path, sorted(params.items()))
        if signature:
            headers["X-Twilio-Signature"] = [signature]
        return self.request("POST", path, data=body, headers=headers, **kw)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_kannel_get_is_journaled_then_answered(h: Harness) -> None:
    code, body, _ = h.mo(text="#ops Flight delayed, there in 5.")
    assert (code, body) == (200, b"")
    (entry,) = h.store.entries.values()
    assert entry.key == "kannel:abc-1"
    assert entry.record["text"] == "#ops Flight delayed, there in 5."
    assert entry.record["from"] == "+447700900123"
    assert entry.record["received"] == 1_700_000_000
    assert h.accepted == [entry]


def test_no_answer_before_the_journal_fired(h: Harness) -> None:
    h.store.hold = True
    d = h.http.get(BASE + "/kannel/mo?" + urlencode(
        {"from": "+1555", "id": "x1", "text": "hi", "token": KANNEL_TOKEN}))
    h.http.flush()
    _sync.assertNoResult(d)
    assert h.accepted == []
    h.store.release()
    h.http.flush()
    assert _sync.successResultOf(d).code == 200
    assert len(h.accepted) == 1


@pytest.mark.parametrize("token", ["", "wrong", KANNEL_TOKEN + "x", KANNEL_TOKEN[:-1]])
def test_wrong_token_is_403_and_nothing_written(h: Harness, token: str) -> None:
    code, body, _ = h.mo(token=token)
    assert code == 403
    assert b"\n" == body[-1:] and body.count(b"\n") == 1
    assert h.store.entries == {} and h.accepted == []


def test_missing_token_is_403(h: Harness) -> None:
    code, _, _ = h.request("GET", "/kannel/mo?from=%2B1555&id=a&text=hi")
    assert code == 403 and h.store.entries == {}


def test_empty_configured_token_refuses_everything() -> None:
    h = Harness(sms__kannel={"inbound_token": ""})
    assert h.mo(token="")[0] == 403
    assert h.store.entries == {}


def test_auth_before_parsing(h: Harness) -> None:
    # A malformed request with a bad token is 403, not 400: nothing is said to strangers.
    assert h.mo(token="nope", id="")[0] == 403


@pytest.mark.parametrize("params, reason", [
    ({"id": ""}, b"missing id"),
    ({"id": "a b"}, b"id (Kannel's %I) is not a plain identifier"),
    ({"from": ""}, b"missing from"),
    ({"from": "+44\r\nQUIT"}, b"from is not a phone number"),
])
def test_malformed_is_400_with_one_line(h: Harness, params: dict, reason: bytes) -> None:
    code, body, _ = h.mo(**params)
    assert code == 400
    assert body.startswith(reason) and body.count(b"\n") == 1
    assert h.store.entries == {}


def test_duplicate_is_2xx_and_not_delivered_twice(h: Harness) -> None:
    assert h.mo(id="dup")[0] == 200
    assert h.mo(id="dup")[0] == 200
    assert len(h.store.entries) == 1 and len(h.accepted) == 1


def test_post_url_text_in_body(h: Harness) -> None:
    code, _, _ = h.request(
        "POST", "/kannel/mo?" + urlencode({"id": "p1", "token": KANNEL_TOKEN}),
        data="#ops café".encode(),
        headers={"Content-Type": ["text/plain; charset=UTF-8"],
                 "X-Kannel-From": ["+447700900123"], "X-Kannel-To": ["4242"]})
    assert code == 200
    (entry,) = h.store.entries.values()
    assert entry.record["text"] == "#ops café"
    assert entry.record["from"] == "+447700900123"


def test_post_url_ucs2_raw_bytes(h: Harness) -> None:
    text = "Olá 😀"
    code, _, _ = h.request(
        "POST", "/kannel/mo?" + urlencode({"id": "u1", "from": "+1555", "token": KANNEL_TOKEN,
                                           "coding": "2"}),
        data=text.encode("utf-16-be"), headers={"Content-Type": ["text/plain; charset=UTF-16BE"]})
    assert code == 200
    assert h.store.entries["kannel:u1"].record["text"] == text


def test_get_utf16be_in_query(h: Harness) -> None:
    raw = "Привет".encode("utf-16-be")
    code, _, _ = h.request("GET", "/kannel/mo?id=u2&from=%2B1555&token=" + KANNEL_TOKEN +
                           "&charset=UTF-16BE&coding=2&text=" +
                           "".join(f"%{b:02X}" for b in raw))
    assert code == 200
    assert h.store.entries["kannel:u2"].record["text"] == "Привет"


def test_invalid_utf8_is_replaced_not_refused(h: Harness) -> None:
    code, _, _ = h.request("GET", f"/kannel/mo?id=b1&from=1555&token={KANNEL_TOKEN}"
                                  "&charset=UTF-8&text=ok%FF%FE%C3")
    assert code == 200
    assert h.store.entries["kannel:b1"].record["text"] == "ok\ufffd\ufffd\ufffd"


def test_odd_length_ucs2_is_replaced(h: Harness) -> None:
    code, _, _ = h.request("GET", f"/kannel/mo?id=b2&from=1555&token={KANNEL_TOKEN}"
                                  "&charset=UTF-16BE&text=%00h%00")
    assert code == 200
    assert h.store.entries["kannel:b2"].record["text"] == "h\ufffd"


def test_body_over_limit_is_413_by_content_length(h: Harness) -> None:
    code, body, _ = h.request(
        "POST", "/kannel/mo?" + urlencode({"id": "big", "from": "1", "token": KANNEL_TOKEN}),
        data=b"x" * 2049, headers={"Content-Type": ["text/plain"]})
    assert code == 413 and body == b"body over 2048 bytes\n"
    assert h.store.entries == {}


def test_body_at_limit_is_accepted(h: Harness) -> None:
    code, _, _ = h.request(
        "POST", "/kannel/mo?" + urlencode({"id": "edge", "from": "1", "token": KANNEL_TOKEN}),
        data=b"x" * 2048, headers={"Content-Type": ["text/plain"]})
    assert code == 200


def test_413_before_auth_for_twilio(h: Harness) -> None:
    params = {"MessageSid": "SM1", "From": "+1555", "Body": "x" * 3000}
    assert h.twilio("/twilio/sms", params)[0] == 413
    assert h.store.entries == {}


def test_journal_failure_is_503_and_retryable(h: Harness) -> None:
    h.store.broken = True
    code, _, headers = h.mo(id="j1")
    assert code == 503 and headers.getRawHeaders("retry-after") == ["5"]
    assert h.accepted == []
    h.store.is_writable = False
    h.store.broken = False
    assert h.mo(id="j1")[0] == 503
    assert h.store.entries == {}


def test_posts_during_shutdown_are_503_with_one_log_line(h: Harness) -> None:
    """A closed journal (shutting down) is no failure: 503 so the gateway posts again, and
    one line in the log rather than a traceback per post."""
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.store.closed = True
        answers = [h.mo(id=f"s{i}") for i in range(3)]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(code, body) for code, body, _ in answers] == [
        (503, b"mup is shutting down; try again later\n")] * 3
    assert h.store.entries == {} and h.accepted == []
    said = [formatEvent(e) for e in events]
    assert len(said) == 1 and "shutting down" in said[0]
    assert not any(e.get("log_failure") for e in events)


def test_crlf_injection_is_kept_as_text_for_delivery_to_sanitise(h: Harness) -> None:
    assert h.request("GET", f"/kannel/mo?id=c1&from=1555&token={KANNEL_TOKEN}"
                            "&text=hi%0D%0AQUIT")[0] == 200
    assert h.store.entries["kannel:c1"].record["text"] == "hi\r\nQUIT"


# Kannel delivery reports

@pytest.mark.parametrize("status, state", [("1", "delivered"), ("2", "failed"),
                                           ("8", "pending"), ("16", "failed")])
def test_kannel_dlr(h: Harness, status: str, state: str) -> None:
    code, body, _ = h.request("GET", f"/kannel/dlr?ref=r-7&status={status}&token={KANNEL_TOKEN}")
    assert (code, body) == (200, b"")
    entry = h.store.entries[f"kannel:report:r-7:{status}"]
    assert entry.record["kind"] == "report" and entry.record["state"] == state


def test_kannel_dlr_wrong_token(h: Harness) -> None:
    assert h.request("GET", "/kannel/dlr?ref=r-7&status=1&token=x")[0] == 403
    assert h.store.entries == {}


def test_kannel_dlr_bad_status(h: Harness) -> None:
    assert h.request("GET", f"/kannel/dlr?ref=r&status=%25d&token={KANNEL_TOKEN}")[0] == 400


# Twilio

SMS = {"MessageSid": "SM0123456789abcdef0123456789abcdef", "AccountSid": "AC1",
       "From": "+14155550100", "To": "+14155550199", "Body": "niemeyer where are you?",
       "NumMedia": "0"}


def test_twilio_sms_signed(h: Harness) -> None:
    code, body, headers = h.twilio("/twilio/sms", SMS)
    assert (code, body) == (200, TWIML_EMPTY)
    assert headers.getRawHeaders("content-type")[0].startswith("text/xml")
    entry = h.store.entries["twilio:" + SMS["MessageSid"]]
    assert entry.record["text"] == SMS["Body"] and entry.record["from"] == SMS["From"]


def test_twilio_duplicate_gets_empty_twiml(h: Harness) -> None:
    h.twilio("/twilio/sms", SMS)
    code, body, _ = h.twilio("/twilio/sms", SMS)
    assert (code, body) == (200, TWIML_EMPTY) and len(h.accepted) == 1


@pytest.mark.parametrize("signature", ["", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "garbage"])
def test_twilio_bad_or_missing_signature(h: Harness, signature: str) -> None:
    code, _, _ = h.twilio("/twilio/sms", SMS, signature=signature)
    assert code == 403 and h.store.entries == {}


def test_twilio_signature_covers_the_body(h: Harness) -> None:
    good = twilio_signature(TWILIO_TOKEN, PUBLIC_URL + "/twilio/sms", sorted(SMS.items()))
    assert h.twilio("/twilio/sms", {**SMS, "Body": "changed"}, signature=good)[0] == 403


def test_twilio_signature_covers_the_query(h: Harness) -> None:
    signed = twilio_signature(TWILIO_TOKEN, PUBLIC_URL + "/twilio/sms?a=1",
                              sorted(SMS.items()))
    body = urlencode(SMS).encode()
    headers = {"Content-Type": ["application/x-www-form-urlencoded"],
               "X-Twilio-Signature": [signed]}
    assert h.request("POST", "/twilio/sms?a=2", data=body, headers=headers)[0] == 403
    assert h.request("POST", "/twilio/sms?a=1", data=body, headers=headers)[0] == 200


def test_twilio_get_is_not_allowed(h: Harness) -> None:
    assert h.request("GET", "/twilio/sms")[0] == 405


def test_twilio_status(h: Harness) -> None:
    params = {"MessageSid": "SMabc", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    code, body, _ = h.twilio("/twilio/status", params)
    assert (code, body) == (200, b"")
    record = h.store.entries["twilio:report:SMabc:undelivered"].record
    assert record["state"] == "failed" and "30003" in record["reason"]


# Operations

def test_healthz(h: Harness) -> None:
    h.mo(id="q1")
    h.clock.advance(2.5)
    code, body, headers = h.request("GET", "/healthz")
    assert code == 200
    assert json.loads(body) == {"irc_connected": True, "journal_writable": True, "backlog": 1,
                                "oldest_waiting_age": 2.5}
    h.health = {"irc_connected": False}
    code, body, _ = h.request("GET", "/healthz")
    assert code == 503 and json.loads(body)["irc_connected"] is False
    h.health = {"irc_connected": True}
    h.store.is_writable = False
    assert h.request("GET", "/healthz")[0] == 503


def test_a_store_that_cannot_be_read_is_said_once_not_per_health_check(h: Harness) -> None:
    """A load balancer asks /healthz every second or two: a database that is down is one line
    when it goes and one when it is back, while every check answers 503 meanwhile."""
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.store.unreadable = True
        down = [h.request("GET", "/healthz") for _ in range(3)]
        scraped = h.request("GET", "/metrics")[0]
        h.store.unreadable = False
        up = [h.request("GET", "/healthz")[0] for _ in range(2)]
        h.store.unreadable = True
        again = h.request("GET", "/healthz")[0]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [code for code, _, _ in down] == [503] * 3 and scraped == 200
    assert json.loads(down[0][1])["backlog"] is None
    assert up == [200, 200] and again == 503
    said = [formatEvent(e) for e in events]
    assert said == ["cannot read the store's backlog (answering 503 to /healthz until it "
                    "can): connection refused",
                    "the store's backlog can be read again",
                    "cannot read the store's backlog (answering 503 to /healthz until it "
                    "can): connection refused"]


def test_metrics(h: Harness) -> None:
    h.mo(id="m1")
    h.mo(id="m1")
    h.mo(token="bad")
    code, body, headers = h.request("GET", "/metrics")
    assert code == 200
    text = body.decode()
    assert 'mup_inbound_accepted_total{gateway="kannel"}' in text
    assert 'mup_inbound_duplicates_total{gateway="kannel"}' in text
    assert 'mup_inbound_rejected_total{reason="forbidden"}' in text
    assert "mup_inbound_backlog 1.0" in text


def test_gateway_hanging_up_does_not_cancel_the_journal_write(h: Harness) -> None:
    # A real HTTPChannel: the connection is lost while the journal write is in progress, and
    # Klein cancels the handler's Deferred; the write must go on and reach delivery.
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionLost
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    h.store.hold = True
    protocol = h.receiver.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    query = urlencode({"from": "+1555", "id": "gone", "text": "hi", "token": KANNEL_TOKEN})
    protocol.dataReceived(f"GET /kannel/mo?{query} HTTP/1.1\r\nHost: m\r\n\r\n".encode())
    held, _ = h.store.held[0]
    protocol.connectionLost(Failure(ConnectionLost()))
    assert not held.called
    h.store.release()
    assert [e.key for e in h.accepted] == ["kannel:gone"]
    assert transport.value() == b""
