"""The receiver's Site over a real HTTPChannel (StringTransport): body limit while reading,
no access log; and WebhookService listening on an endpoint string (MemoryReactor)."""

from __future__ import annotations

import pytest
from fixtures_inbound import KANNEL_TOKEN, FakeStore, make_config
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from mup.webhook import Receiver, WebhookService


def serve(raw: bytes, max_body: int = 2048) -> tuple[bytes, FakeStore, list]:
    journal = FakeStore()
    accepted: list = []
    receiver = Receiver(make_config(webhook={"max_body": max_body}), journal,
                        on_accepted=accepted.append, clock=Clock())
    site = receiver.site()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return transport.value(), journal, accepted


def post(body: bytes, length: int | None = None, chunked: bool = False) -> bytes:
    head = (b"POST /kannel/mo?id=s1&from=%2B1555&token=" + KANNEL_TOKEN.encode() +
            b" HTTP/1.1\r\nHost: mup\r\nContent-Type: text/plain\r\n")
    if chunked:
        data = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                        for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + data
    length = len(body) if length is None else length
    return head + b"Content-Length: %d\r\n\r\n" % length + body


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_accepts_a_small_body() -> None:
    response, journal, accepted = serve(post(b"#ops hello"))
    assert status(response) == 200
    assert journal.entries["kannel:s1"].record["text"] == "#ops hello"


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413_and_not_buffered(chunked: bool) -> None:
    response, journal, _ = serve(post(b"x" * 10_000, chunked=chunked))
    assert status(response) == 413
    assert journal.entries == {}


def test_declared_length_over_limit_is_discarded_as_it_arrives() -> None:
    journal = FakeStore()
    site = Receiver(make_config(), journal, clock=Clock()).site()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(post(b"", length=200_000))
    request = protocol.wrappedProtocol._channel.requests[-1]
    for _ in range(199):
        protocol.dataReceived(b"y" * 1000)
        assert request.content.tell() == 0   # nothing of it is kept
    assert transport.value() == b""
    protocol.dataReceived(b"y" * 1000)
    assert status(transport.value()) == 413
    assert journal.entries == {}


def test_no_access_log_with_tokens(capsys) -> None:
    from twisted.logger import globalLogPublisher

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    try:
        serve(post(b"#ops hello"))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert not any(KANNEL_TOKEN in repr(event) for event in seen)


def test_service_listens_on_the_endpoint_string_and_stops() -> None:
    reactor = MemoryReactor()
    receiver = Receiver(make_config(), FakeStore(), clock=Clock())
    service = WebhookService("tcp:port=18080:interface=127.0.0.1", receiver.site(), reactor)
    service.startService()
    port, factory, _backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (18080, "127.0.0.1")
    assert service.listening.called
    service.stopService()
    assert service.port is None


def test_service_refuses_to_start_when_it_cannot_listen() -> None:
    class Busy(MemoryReactor):
        def listenTCP(self, *a, **kw):
            from twisted.internet.error import CannotListenError

            raise CannotListenError("127.0.0.1", 18080, OSError(98, "Address already in use"))

    service = WebhookService("tcp:port=18080:interface=127.0.0.1",
                             Receiver(make_config(), FakeStore(), clock=Clock()).site(),
                             Busy())
    from twisted.internet.error import CannotListenError

    with pytest.raises(CannotListenError):
        service.startService()
