"""The provider fakes served over real loopback HTTP, reached by the real treq client: what a
user's own tests would do with mup.testing.fakes."""

from twisted.internet import reactor

from mup.gateways import real_http_client
from mup.gateways.aql import AQLGateway
from mup.gateways.twilio import TwilioGateway
from mup.testing.fakes import FakeAQL, FakeTwilio, listen

NUMBER = "+447911123456"


def test_twilio_over_http(sms_reactor):
    fake = FakeTwilio()
    port = sms_reactor.call(listen, fake, reactor)
    try:
        gw = TwilioGateway(real_http_client(reactor), reactor, fake.account_sid,
                           fake.auth_token, sender="+15005550006",
                           api_url=f"http://127.0.0.1:{port.getHost().port}", timeout=5,
                           backoff=0.01)
        fake.fail_next(429)
        result = sms_reactor.call(gw.send, NUMBER, "joe> hi from a real socket")
        assert result.status == "accepted" and result.message_id == fake.messages[0]["sid"]
        assert fake.requests == 2 and len(fake.messages) == 1
        bad = sms_reactor.call(gw.send, "+4412", "joe> hi")
        assert bad.status == "failed" and "not a valid phone number" in bad.reason
    finally:
        sms_reactor.call(port.stopListening)


def test_aql_over_http(sms_reactor):
    fake = FakeAQL()
    port = sms_reactor.call(listen, fake, reactor)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/sms/sms_gw.php"
        gw = AQLGateway(real_http_client(reactor), reactor, url, "mup", "secret", sender="mup",
                        timeout=5)
        result = sms_reactor.call(gw.send, NUMBER, "joe> hi")
        assert result.status == "accepted"
        assert fake.messages == [{"destination": "447911123456", "message": "joe> hi",
                                  "originator": "mup"}]
        gw = AQLGateway(real_http_client(reactor), reactor, url, "mup", "wrong", timeout=5)
        result = sms_reactor.call(gw.send, NUMBER, "joe> hi")
        assert result.status == "failed" and "refused mup's login" in result.reason
    finally:
        sms_reactor.call(port.stopListening)
