"""The Kannel gateway against a real Kannel: bearerbox + smsbox + fakesmsc on loopback."""

from __future__ import annotations

from urllib.parse import parse_qs

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from mup.gateways import real_http_client
from mup.gateways.kannel import KannelGateway
from mup.testing.kannel import MT, Kannel
from mup.testing.process import free_port, wait_for

NUMBER = "+447911123456"


def gateway(kannel, password="secret", url=None, **kw):
    return KannelGateway(real_http_client(reactor), reactor, url or kannel.sendsms_url,
                         kannel.username, password, sender="4242", timeout=5, **kw)


def send(sms_reactor, gw, text, reference="ref"):
    return sms_reactor.call(gw.send, NUMBER, text, reference)


def sent_since(kannel, before, count=1):
    return kannel.wait_for_received(before + count)[before:]


CASES = [
    # text, parts at the SMSC
    ("joe> Where are you? We're waiting!", 1),
    ("#dev joe> 10€ {braces} [brackets] ~tilde^ |pipe| back\\slash @£$¥", 1),
    ("joe> " + "Long message. " * 20, 2),
    ("joe> " + "{" * 78, 2),  # 161 septets: 2 parts, the escapes not cut
    ("joe> Привет, как дела? 😀", 1),
    ("joe> " + "ção " * 30, 2),
]


def test_mt_reaches_the_smsc_exactly(kannel, sms_reactor):
    gw = gateway(kannel)
    for text, parts in CASES:
        before = len(kannel.received())
        result = send(sms_reactor, gw, text)
        assert (result.status, result.segments) == ("accepted", parts), text
        [mt] = sent_since(kannel, before)
        assert mt.sender == "4242" and mt.receiver == NUMBER
        assert mt.text == text
        assert mt.parts == parts


def test_queued_when_no_smsc_then_delivered(kannel, sms_reactor):
    gw = gateway(kannel)
    before = len(kannel.received())
    kannel.stop_smsc()
    try:
        result = send(sms_reactor, gw, "joe> waiting in the queue")
        assert result.status == "queued"
    finally:
        kannel.start_smsc()
    assert sent_since(kannel, before) == [MT("4242", NUMBER, "joe> waiting in the queue")]


def test_wrong_password_explained(kannel, sms_reactor):
    before = len(kannel.received())
    result = send(sms_reactor, gateway(kannel, password="wrong"), "joe> hi")
    assert result.status == "failed"
    assert "refused mup's login" in result.reason and "wrong" not in result.reason
    assert len(kannel.received()) == before


def test_missing_sender_explained(kannel, sms_reactor):
    gw = gateway(kannel)
    gw.sender = ""
    result = send(sms_reactor, gw, "joe> hi")
    assert result.status == "failed" and "Sender missing" in result.reason


def test_kannel_down_is_retried_then_reported(kannel, sms_reactor):
    gw = gateway(kannel, url=f"http://127.0.0.1:{free_port()}/cgi-bin/sendsms", retries=2,
                 backoff=0.01)
    result = send(sms_reactor, gw, "joe> hi")
    assert result.status == "failed"
    assert "could not reach the SMS gateway" in result.reason and "3 times" in result.reason


class Recorder(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def render_GET(self, request):
        self.calls.append((request.path, parse_qs(request.uri.split(b"?", 1)[1].decode())))
        return b"ok"


def test_dlr_url_called_with_reference(kannel, sms_reactor):
    """Kannel calls <public_url>/kannel/dlr?ref=<reference>&status=%d&token=<token>: the
    format the webhook receiver parses."""
    dlr = Recorder()
    port = sms_reactor.call(reactor.listenTCP, 0, Site(dlr), interface="127.0.0.1")
    try:
        public = f"http://127.0.0.1:{port.getHost().port}/"
        gw = gateway(kannel, public_url=public, inbound_token="tok&en")
        result = send(sms_reactor, gw, "joe> report back", reference="abc123")
        assert result.status == "accepted"
        wait_for(lambda: dlr.calls, 15, "a delivery report")
    finally:
        sms_reactor.call(port.stopListening)
    path, query = dlr.calls[0]
    assert path == b"/kannel/dlr"
    assert query == {"ref": ["abc123"], "status": ["1"], "token": ["tok&en"]}


def test_inject_mo_reaches_the_get_url(tmp_path, sms_reactor):
    """The launcher's MO side, which the inbound tests and the demo use."""
    mo = Recorder()
    port = sms_reactor.call(reactor.listenTCP, 0, Site(mo), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/mo?from=%p&to=%P&text=%a&id=%I"
    server = Kannel(tmp_path, get_url=url)
    try:
        server.start()
        server.inject_mo("+447911123456", "4242", "on my way")
        server.inject_mo("+447911123456", "4242", "já vou 😀")
        wait_for(lambda: len(mo.calls) == 2, 15, "two MO at the get-url")
    finally:
        server.stop()
        sms_reactor.call(port.stopListening)
    texts = sorted(query["text"][0] for _path, query in mo.calls)
    assert texts == ["já vou 😀", "on my way"]
    assert all(query["from"] == ["+447911123456"] and query["to"] == ["4242"]
               for _path, query in mo.calls)


def test_command_replies_through_real_kannel(kannel, sms_reactor, tmp_path):
    """The sms command's replies as Kannel answers: accepted (with parts) and queued."""
    from twisted.internet import defer

    from mup import people
    from mup.commands import Commands, Request
    from mup.commands.sms import sms
    from mup.config import parse
    from mup.quota import Quota
    from mup.store.memory import MemoryStateStore

    class Directory:
        def by_account(self, account):
            return defer.succeed(people.Person("joe", "Joe", "", (), "", ""))

        def by_nick(self, nick):
            return defer.succeed(people.Person(nick, nick, "", (), "07911 123456", ""))

        def find_all(self, keys):
            by = {"nick": self.by_nick, "account": self.by_account}
            return defer.gatherResults([by[kind](value) for kind, value in keys])

    config = parse({"sms": {"gateway": "kannel", "default_region": "GB"},
                    "state": {"directory": str(tmp_path)}})
    quota = Quota.from_config(config, reactor, MemoryStateStore())
    commands = Commands([sms(Directory(), gateway(kannel), quota, config)])

    def say(text):
        return sms_reactor.call(commands.run, "sms", Request("joe", text, None, "", "joe"))

    before = len(kannel.received())
    assert say("niemeyer " + "x" * 200) == ["SMS is on the way! (2 parts)"]
    kannel.wait_for_received(before + 1)  # at the SMSC before it is disconnected
    kannel.stop_smsc()
    try:
        assert say("niemeyer later") == ["SMS queued by the gateway."]
    finally:
        kannel.start_smsc()
    texts = [mt.text for mt in kannel.wait_for_received(before + 2)[before:]]
    assert texts == ["joe> " + "x" * 200, "joe> later"]
