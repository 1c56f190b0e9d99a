"""End to end: a client on a real IRC server (ngircd) says ``@sms``, the real bot (twistd) looks
both people up in its embedded LDIF directory and sends through a real Kannel; the fake SMSC
receives the text, and Kannel's delivery report comes back through the bot's receiver to IRC.

ngircd has no services, so no accounts: the bot runs with ``[sms] require_account = false`` and
trusts the hostmasks of this machine, as the README says an operator may on such a network.  The
account rule itself (unidentified nick, a nick taken by someone else) is tested in
tests/test_sms_command.py.
"""

from pathlib import Path

from mup.testing.process import free_port

PEOPLE_LDIF = Path(__file__).parent / "data" / "people.ldif"


def test_sms_from_irc_reaches_the_phone(ngircd_fast, irc_client, run_bot, kannel, tmp_path):
    webhook = free_port()
    run_bot({
        "irc": {"endpoint": ngircd_fast.endpoint, "nick": "mup", "channels": ["#team"],
                "line_rate": 0.0},
        "ldap": {"ldif": str(PEOPLE_LDIF), "base_dn": "ou=people,dc=example,dc=com"},
        "sms": {"gateway": "kannel", "sender": "4242", "require_account": False,
                "allowed_hostmasks": ["*!*@127.0.0.1", "*!*@localhost"],
                "default_region": "BR"},
        "sms.kannel": {"sendsms_url": kannel.sendsms_url, "username": kannel.username,
                       "password": kannel.password, "inbound_token": "dlr-token"},
        # The bot's receiver, for Kannel's delivery report (dlr-url) of the SMS it sends.
        "webhook": {"endpoint": f"tcp:port={webhook}:interface=127.0.0.1",
                    "public_url": f"http://127.0.0.1:{webhook}",
                    "journal": str(tmp_path / "journal")},
        "state": {"directory": str(tmp_path / "state")},
    })
    jose = irc_client(ngircd_fast.port, "jose")
    jose.join("#team")
    before = len(kannel.received())

    jose.privmsg("#team", "@sms niemeyer Where are you? We're waiting!")
    jose.expect(r"PRIVMSG #team :.*SMS is on the way!$")
    [mt] = kannel.wait_for_received(before + 1)[before:]
    assert mt.sender == "4242" and mt.receiver == "+551155551234"
    assert mt.text == "#team jose> Where are you? We're waiting!"
    # The fake SMSC acks, Kannel calls the dlr-url, the bot tells jose.
    jose.expect(r"PRIVMSG jose :SMS to niemeyer delivered\.$")

    jose.privmsg("mup", "sms niemeyer " + "a" * 460)
    jose.expect(r"too long by \d+ characters")

    stranger = irc_client(ngircd_fast.port, "stranger")
    stranger.privmsg("mup", "sms niemeyer hello")
    stranger.expect(r"stranger is not in the directory")
    assert len(kannel.received()) == before + 1
