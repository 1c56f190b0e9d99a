"""End to end: an SMS injected into Kannel's fake SMSC reaches IRC through the real bot.

Real processes: ngircd, Kannel (bearerbox + smsbox + fakesmsc) whose sms-service get-url points
at the bot's webhook receiver, and the bot itself (``twistd -n mup``) with the embedded LDIF
directory.  A plain line client in the channel sees what the bot says.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mup.testing.kannel import Kannel
from mup.testing.process import free_port, wait_for

PEOPLE_LDIF = Path(__file__).parent / "data" / "people.ldif"
TOKEN = "e2e-inbound-token"
NIEMEYER = "+551155551234"          # niemeyer's mobile in people.ldif
STRANGER = "+447911123999"

# The sms-service URL, as the README tells operators to write it (token added).
GET_URL = ("http://127.0.0.1:{port}/kannel/mo?from=%p&to=%P&text=%a&id=%I&coding=%c"
           "&charset=%C&token=" + TOKEN)


@pytest.fixture(scope="module")
def webhook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def kannel_mo(tmp_path_factory, webhook_port):
    server = Kannel(tmp_path_factory.mktemp("kannel-mo"), get_url=GET_URL.format(
        port=webhook_port), username="mup", password="secret")
    server.start()
    yield server
    server.stop()


def bot_config(ngircd, kannel: Kannel, port: int, tmp_path: Path) -> dict:
    return {
        "irc": {"endpoint": ngircd.endpoint, "nick": "mup", "channels": ["#ops"],
                "line_rate": 0.0},
        "ldap": {"ldif": str(PEOPLE_LDIF), "base_dn": "ou=people,dc=example,dc=com"},
        "sms": {"gateway": "kannel", "sender": "4242", "require_account": False,
                "allowed_hostmasks": ["*!*@127.0.0.1", "*!*@localhost"],
                "default_region": "BR"},
        "sms.kannel": {"sendsms_url": kannel.sendsms_url, "username": kannel.username,
                       "password": kannel.password, "inbound_token": TOKEN},
        "webhook": {"endpoint": f"tcp:port={port}:interface=127.0.0.1",
                    "journal": str(tmp_path / "journal"),
                    "public_url": f"http://127.0.0.1:{port}"},
        "inbound": {"default_channel": "#ops"},
        "state": {"directory": str(tmp_path / "state")},
    }


def test_mo_reaches_the_channel_a_person_and_the_last_sender(
        ngircd_fast, irc_client, run_bot, kannel_mo, webhook_port, tmp_path):
    run_bot(bot_config(ngircd_fast, kannel_mo, webhook_port, tmp_path))
    jose = irc_client(ngircd_fast.port, "jose")
    jose.join("#ops")

    # "#ops ..." goes to the channel, named by the directory, with the hint once.
    kannel_mo.inject_mo(NIEMEYER, "4242", "#ops Flight delayed, there in 5.")
    jose.expect(r"PRIVMSG #ops :\[SMS\] <niemeyer> Flight delayed, there in 5\.$")
    jose.expect(r"PRIVMSG #ops :Answer with: @sms niemeyer <message>$")

    # "jose: ..." goes to jose privately.
    kannel_mo.inject_mo(NIEMEYER, "4242", "jose: are you coming?")
    jose.expect(r"PRIVMSG jose :\[SMS\] <niemeyer> are you coming\?$")

    # jose texts niemeyer through mup; niemeyer's answer comes back to jose.
    jose.privmsg("#ops", "@sms niemeyer Where are you?")
    jose.expect(r"PRIVMSG #ops :.*SMS is on the way!$")
    kannel_mo.wait_for_received(1)
    # Kannel's delivery report comes back through /kannel/dlr, the journal and delivery.
    jose.expect(r"PRIVMSG jose :SMS to niemeyer delivered\.$")
    kannel_mo.inject_mo(NIEMEYER, "4242", "On my way")
    jose.expect(r"PRIVMSG jose :\[SMS\] <niemeyer> On my way$")

    # A number not in the directory is masked; UCS-2 text survives Kannel and us.
    kannel_mo.inject_mo(STRANGER, "4242", "#ops Olá, tudo bem? 😀")
    jose.expect(r"PRIVMSG #ops :\[SMS\] <\+44 \*\*\*\* \*\*3999> Olá, tudo bem\? 😀$")


def test_crlf_injection_never_reaches_irc(ngircd_fast, irc_client, run_bot, kannel_mo,
                                          webhook_port, tmp_path):
    run_bot(bot_config(ngircd_fast, kannel_mo, webhook_port, tmp_path))
    jose = irc_client(ngircd_fast.port, "jose")
    jose.join("#ops")
    query = (f"from=%2B15555550100&to=4242&id=crlf-1&token={TOKEN}&"
             "text=%23ops+hi%0D%0AQUIT+%3Abye%0D%0APRIVMSG+%23ops+%3Aforged%00x")
    with urllib.request.urlopen(f"http://127.0.0.1:{webhook_port}/kannel/mo?{query}",
                                timeout=10) as response:
        assert response.status == 200
    jose.expect(r"PRIVMSG #ops :\[SMS\] <\+1 \*\*\*-\*\*\*-0100> hi$")
    jose.expect(r"PRIVMSG #ops :\[SMS\] <\+1 \*\*\*-\*\*\*-0100> QUIT :bye$")
    jose.expect(r"PRIVMSG #ops :\[SMS\] <\+1 \*\*\*-\*\*\*-0100> PRIVMSG #ops :forgedx$")
    # The bot is still there and still answering.
    jose.privmsg("#ops", "@echo still here")
    jose.expect(r"PRIVMSG #ops :.*still here$")


def test_wrong_token_is_refused_and_nothing_shown(ngircd_fast, irc_client, run_bot, kannel_mo,
                                                  webhook_port, tmp_path):
    run_bot(bot_config(ngircd_fast, kannel_mo, webhook_port, tmp_path))
    jose = irc_client(ngircd_fast.port, "jose")
    jose.join("#ops")
    base = f"http://127.0.0.1:{webhook_port}/kannel/mo?from=%2B1555&id=t1&text=%23ops+forged"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "&token=wrong", timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(base.replace("forged", "genuine") + "&token=" + TOKEN,
                                timeout=10) as response:
        assert response.status == 200
    line = jose.expect(r"PRIVMSG #ops :\[SMS\]")
    assert line.endswith("genuine")
    health = urllib.request.urlopen(f"http://127.0.0.1:{webhook_port}/healthz", timeout=10)
    assert b'"irc_connected": true' in health.read()

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{webhook_port}/metrics",
                                    timeout=10) as response:
            return response.read().decode()

    # Counted once the server confirmed it (the PONG may come after jose saw the line).
    wait_for(lambda: "mup_inbound_delivered_total 1.0" in metrics(), 5, "the delivered count")
    assert 'mup_inbound_rejected_total{reason="forbidden"} 1.0' in metrics()
    assert "mup_inbound_backlog 0.0" in metrics()
    assert urllib.parse.quote(TOKEN) not in (tmp_path / "mup-0.log").read_text()


def test_post_url_puts_the_text_in_the_body(ngircd_fast, irc_client, run_bot,
                                             tmp_path_factory, tmp_path):
    """Kannel's post-url variant: the text is the body, the sender an X-Kannel-From header."""
    port = free_port()
    server = Kannel(tmp_path_factory.mktemp("kannel-post"),
                    post_url=f"http://127.0.0.1:{port}/kannel/mo?id=%I&token={TOKEN}",
                    service_options={"send-sender": "true"}, username="mup", password="secret")
    server.start()
    try:
        run_bot(bot_config(ngircd_fast, server, port, tmp_path))
        jose = irc_client(ngircd_fast.port, "jose")
        jose.join("#ops")
        server.inject_mo(NIEMEYER, "4242", "#ops posted, with  two spaces")
        jose.expect(r"PRIVMSG #ops :\[SMS\] <niemeyer> posted, with two spaces$")
        server.inject_mo(NIEMEYER, "4242", "#ops ünïcödé ✓")
        jose.expect(r"PRIVMSG #ops :\[SMS\] <niemeyer> ünïcödé ✓$")
    finally:
        server.stop()


def test_twilio_signed_post_reaches_irc(ngircd_fast, irc_client, run_bot, tmp_path):
    """Twilio's webhook against the real server: the signature is checked over public_url plus
    the path and query exactly as received; the answer is empty TwiML."""
    from mup.gateways.inbound import twilio_signature

    port = free_port()
    public = "https://mup.example.com"
    run_bot({
        "irc": {"endpoint": ngircd_fast.endpoint, "nick": "mup", "channels": ["#ops"],
                "line_rate": 0.0},
        "sms.twilio": {"auth_token": "twilio-secret"},
        "webhook": {"endpoint": f"tcp:port={port}:interface=127.0.0.1",
                    "journal": str(tmp_path / "journal"), "public_url": public},
        "inbound": {"default_channel": "#ops"},
        "state": {"directory": str(tmp_path / "state")},
    })
    jose = irc_client(ngircd_fast.port, "jose")
    jose.join("#ops")
    params = {"MessageSid": "SM" + "0" * 31 + "1", "AccountSid": "AC1", "From": "+14155550100",
              "To": "+14155550199", "Body": "#ops from Twilio, café", "NumMedia": "0"}
    path = "/twilio/sms?src=e2e"

    def post(signature: str) -> tuple[int, bytes, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=urllib.parse.urlencode(params).encode(),
            headers={"X-Twilio-Signature": signature,
                     "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers["Content-Type"]

    good = twilio_signature("twilio-secret", public + path, sorted(params.items()))
    assert post(good[::-1])[0] == 403
    status, body, content_type = post(good)
    assert (status, body) == (200, b'<?xml version="1.0" encoding="UTF-8"?><Response/>')
    assert content_type.startswith("text/xml")
    assert post(good)[:2] == (200, body)      # Twilio retries: answered, shown once
    jose.expect(r"PRIVMSG #ops :\[SMS\] <\+1 \*\*\*-\*\*\*-0100> from Twilio, café$")
    jose.privmsg("#ops", "@echo marker")
    jose.expect(r"PRIVMSG #ops :.*marker$")
    assert sum("from Twilio" in line.decode() for line in jose.lines) == 1
