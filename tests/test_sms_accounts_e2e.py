"""The account rule end to end, on a network with services (InspIRCd + Atheme): only people
logged in to an account may send, and the SMS is signed with the directory nick of that
account, never with the IRC nick, which anyone can take."""

from mup.testing.inspircd import ACCOUNTS

LDIF = """\
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mozillaNickname: alice
mobile: +44 7911 123001

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob Example
sn: Example
mozillaNickname: bob
mobile: +44 7911 123002
"""


def test_account_rule(inspircd_atheme, irc_client, run_bot, kannel, tmp_path):
    ldif = tmp_path / "people.ldif"
    ldif.write_text(LDIF)
    run_bot({
        "irc": {"endpoint": inspircd_atheme.endpoint, "nick": "mupacct",
                "channels": ["#team"], "line_rate": 0.0},
        "ldap": {"ldif": str(ldif), "base_dn": "ou=people,dc=example,dc=com"},
        "sms": {"gateway": "kannel", "sender": "4242", "default_region": "GB"},
        "sms.kannel": {"sendsms_url": kannel.sendsms_url, "username": kannel.username,
                       "password": kannel.password},
        "state": {"directory": str(tmp_path / "state")},
    })
    before = len(kannel.received())

    alice = irc_client(inspircd_atheme.port, "alice", sasl=("alice", ACCOUNTS["alice"]))
    alice.join("#team")
    alice.privmsg("#team", "@sms bob lunch?")
    alice.expect(r"PRIVMSG #team :.*SMS is on the way!$")
    [mt] = kannel.wait_for_received(before + 1)[before:]
    assert (mt.receiver, mt.text) == ("+447911123002", "#team alice> lunch?")

    # Someone not logged in takes the nick bob: no SMS, whatever the nick says.
    impostor = irc_client(inspircd_atheme.port, "bob")
    impostor.privmsg("mupacct", "sms alice it's me, bob")
    impostor.expect(r"logged in to a services account")

    # Bob's account under another nick: the SMS is signed bob, from the account.
    bob = irc_client(inspircd_atheme.port, "robert", sasl=("bob", ACCOUNTS["bob"]))
    bob.privmsg("mupacct", "sms alice hi")
    bob.expect(r"SMS is on the way!$")
    [mt] = kannel.wait_for_received(before + 2)[before + 1:]
    assert (mt.receiver, mt.text) == ("+447911123001", "bob> hi")
    assert len(kannel.received()) == before + 2
