"""``poke`` against the real slapd and the embedded directory: the same table for both."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from twisted.internet.task import Clock

from mup.commands import Commands, Request
from mup.commands.poke import NOBODY, poke

WINTER = datetime(2026, 1, 15, 17, 5, tzinfo=UTC).timestamp()
SUMMER = datetime(2026, 7, 15, 17, 5, tzinfo=UTC).timestamp()

NIEMEYER = ("niemeyer is Gustavo Niemeyer <time:14h05 -0300> <gustavo@example.com> "
            "<phone:+55 11 4444 0000> <mobile:+55 11 5555 1234>")
JOSE_WINTER = ("jose is José Ñúñez <time:18h05 +0100> <jose@example.com> "
               "<mobile:+34 600 111 222> <mobile:+34 600 333 444> <home:+34 91 555 0101>")
ANN = "ann is Ann Lee <ann@example.com> <phone:+44 (20) 7946-0018>"
ELODIE = ("elodie is Élodie Dupré <time:18h05 +0100> <elodie@example.com> "
          "<phone:+33 1 44 55 66 77> <voip:sip:elodie@example.com> <skype:elodie.dupre>")
TARO = "taro is 山田 太郎 <time:02h05 +0900> <taro@example.com> <mobile:+81 90 1234 5678>"
PAT = "pat is Pat (Paren) Smith* <pat@example.com> <home:+1 212 555 0199>"

WINTER_CASES = [
    # one match: by exact nick, by name substring, by phone digits
    ("niemeyer", NIEMEYER),
    ("NIEMEYER", NIEMEYER),
    ("gustavo", NIEMEYER),
    ("Gustavo Niem", NIEMEYER),
    ("+55 11 5555", NIEMEYER),
    ("5555 1234", NIEMEYER),
    ("+55-11-4444-0000", NIEMEYER),
    ("+44 20 7946-0018", ANN),
    ("4420", ANN),  # digits across "(20)" and a space
    # an exact nick wins over name substrings ("ann" is in "Annabel Lee" too)
    ("ann", ANN),
    # several
    ("lee", "ann is Ann Lee, annabel is Annabel Lee."),
    ("LEE", "ann is Ann Lee, annabel is Annabel Lee."),
    # non-ASCII names, case-insensitively
    ("jose", JOSE_WINTER),
    ("ñúñez", JOSE_WINTER),
    ("ÑÚÑEZ", JOSE_WINTER),
    ("élodie", ELODIE),
    ("ÉLODIE DUPRÉ", ELODIE),
    ("山田", TARO),
    # zone attribute (IANA, DST-correct), offset attribute, an unparseable offset shown raw
    ("taro", TARO),
    ("annabel", "annabel is Annabel Lee <time:Mars/Olympus> <annabel@example.com>"),
    # every user value is a literal: no wildcard, no filter injection
    ("*", PAT),  # Pat's name has a literal "*": only Pat, not everybody
    ("(Paren)", PAT),
    ("Smith*", PAT),
    ("*)(cn=*", NOBODY),
    ("*)(|(objectClass=*)", NOBODY),
    ("niemeyer)(cn=*", NOBODY),
    ("\\2a", NOBODY),
    ("\\", NOBODY),
    ("ann\0", NOBODY),
    ("n*r", NOBODY),
    # none
    ("nobody-at-all", NOBODY),
    ("+99 99 9999", NOBODY),
    ("--", NOBODY),
]


def ask(ldap_reactor, directory, query: str, now: float = WINTER) -> list[str]:
    clock = Clock()
    clock.advance(now)
    commands = Commands([poke(directory, clock)])
    return ldap_reactor.call(commands.run, "poke", Request(nick="someone", args=query))


@pytest.mark.parametrize(("query", "reply"), WINTER_CASES)
def test_poke(ldap_reactor, people_directory, query, reply):
    assert ask(ldap_reactor, people_directory, query) == [reply]


def test_poke_dst(ldap_reactor, people_directory):
    """Europe/Madrid is +0200 in July; a fixed -0300 offset stays -0300; Élodie's zone
    (Europe/Paris) wins over her offset attribute (+0100)."""
    assert ask(ldap_reactor, people_directory, "jose", SUMMER) == [
        JOSE_WINTER.replace("18h05 +0100", "19h05 +0200")]
    assert ask(ldap_reactor, people_directory, "elodie", SUMMER) == [
        ELODIE.replace("18h05 +0100", "19h05 +0200")]
    assert ask(ldap_reactor, people_directory, "niemeyer", SUMMER) == [NIEMEYER]


def test_poke_several_people_on_one_line(ldap_reactor, people_directory):
    [reply] = ask(ldap_reactor, people_directory, "e")
    assert reply == ("ann is Ann Lee, annabel is Annabel Lee, elodie is Élodie Dupré, "
                     "jose is José Ñúñez, niemeyer is Gustavo Niemeyer, pat is Pat (Paren) Smith*.")


def test_poke_usage(ldap_reactor, people_directory):
    assert ask(ldap_reactor, people_directory, "") == ["Usage: poke <nick|name|phone>"]


def test_poke_over_irc(ngircd, irc_client, run_bot, slapd_server):
    """The real bot (twistd) on a real ngircd, asking the real slapd."""
    run_bot({
        "irc": {"endpoint": ngircd.endpoint, "nick": "mup", "channels": ["#team"]},
        "ldap": {"url": slapd_server.url, "base_dn": "ou=people,dc=example,dc=com",
                 "timezone_attribute": "timezone"},
    })
    asker = irc_client(ngircd.port, "asker")
    asker.join("#team")
    asker.privmsg("#team", "@poke niemeyer")
    asker.expect(r"PRIVMSG #team :asker: niemeyer is Gustavo Niemeyer <time:\d\dh\d\d -0300> "
                 r"<gustavo@example.com> <phone:\+55 11 4444 0000> <mobile:\+55 11 5555 1234>$")
    asker.privmsg("#team", "mup: poke ÑÚÑEZ")
    asker.expect(r"PRIVMSG #team :asker: jose is José Ñúñez <time:\d\dh\d\d \+0[12]00> ")
    asker.privmsg("mup", "poke *)(cn=*")
    asker.expect(r"PRIVMSG asker :Cannot find anyone matching this\. :-\($")
    asker.privmsg("mup", "poke lee")
    asker.expect(r"PRIVMSG asker :ann is Ann Lee, annabel is Annabel Lee\.$")
