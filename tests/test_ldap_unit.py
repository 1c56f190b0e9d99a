"""Unit tests of the directory: filters and escaping, the LDIF reader and the embedded
directory, the Person record and its formatting, and the LDAP client's timeouts, saturation and
reconnection on a Clock."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest
from ldaptor import ldapfilter
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mup.commands import Commands, Request
from mup.commands.poke import poke
from mup.config import ConfigError, parse
from mup.directory import (
    SLUGGISH,
    UNAVAILABLE,
    Attributes,
    DirectoryError,
    Person,
    person_from_attributes,
)
from mup.ldap import LDAPDirectory, directory_from_config, escape_filter_value, query_filter
from mup.ldif import LDIFDirectory, LDIFError, dn_key, load_ldif
from mup.people import format_people, format_person, local_time
from mup.text import sanitize_value

NAMES = Attributes(timezone="timezone")
ROOT_DATA = __import__("pathlib").Path(__file__).parent / "data"
NOW = datetime(2026, 1, 15, 17, 5, tzinfo=UTC).timestamp()


# --- Escaping and filters --------------------------------------------------------------------

@pytest.mark.parametrize(("value", "escaped"), [
    ("niemeyer", "niemeyer"),
    ("*", r"\2a"),
    ("*)(cn=*", r"\2a\29\28cn=\2a"),
    ("a\\b", r"a\5cb"),
    ("nul\0", r"nul\00"),
    ("José", r"Jos\c3\a9"),
    ("山", r"\e5\b1\b1"),
])
def test_escape_filter_value(value, escaped):
    assert escape_filter_value(value) == escaped


@pytest.mark.parametrize(("query", "text"), [
    ("niemeyer", "(|(mozillaNickname=niemeyer)(cn=*niemeyer*))"),
    ("*)(cn=*", r"(|(mozillaNickname=\2a\29\28cn=\2a)(cn=*\2a\29\28cn=\2a*))"),
    ("Jo(s)é", r"(|(mozillaNickname=Jo\28s\29\c3\a9)(cn=*Jo\28s\29\c3\a9*))"),
    ("+55 11", "(|(telephoneNumber=*5*5*1*1*)(mobile=*5*5*1*1*)(homePhone=*5*5*1*1*)"
               "(voipPhone=*5*5*1*1*)(skypePhone=*5*5*1*1*))"),
    ("12-3", "(|(telephoneNumber=*1*2*3*)(mobile=*1*2*3*)(homePhone=*1*2*3*)"
             "(voipPhone=*1*2*3*)(skypePhone=*1*2*3*))"),
    ("+", "(|(mozillaNickname=+)(cn=*+*))"),  # too short to be a phone
    ("- -", "(|(mozillaNickname=- -)(cn=*- -*))"),  # no digits: not a phone
])
def test_query_filter(query, text):
    filt = query_filter(query, NAMES)
    assert filt.asText() == text
    if query.isascii():
        # the text parses back (with ldaptor's RFC 4515 parser) to the very filter sent
        assert ldapfilter.parseFilter(text).toWire() == filt.toWire()


def unescape(text: str) -> str:
    """RFC 4515 unescaping: ``\\XX`` are bytes of the UTF-8 encoding."""
    raw = re.sub(rb"\\([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 text.encode("ascii"))
    return raw.decode("utf-8")


@pytest.mark.parametrize("value", ["José Ñúñez", "山田 太郎", "*)(cn=*\\\0", "plain"])
def test_escaping_round_trips(value):
    escaped = escape_filter_value(value)
    assert escaped.isascii() and not set("*()\0") & set(escaped)
    assert not re.search(r"\\(?![0-9a-f]{2})", escaped)  # every backslash starts an escape
    assert unescape(escaped) == value


# --- The LDIF loader -------------------------------------------------------------------------

GOOD = """\
dn: dc=example,dc=com
objectClass: dcObject
dc: example

dn: ou=people,dc=example,dc=com
ou: people
"""


def write(tmp_path, text: str, name: str = "people.ldif"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


@pytest.mark.parametrize(("text", "error"), [
    (GOOD + "\ndn: uid=a,ou=people,dc=example,dc=com\ncn Ann\n", "line 9:"),
    (GOOD + "\ndn: uid=a,ou=nowhere,dc=example,dc=com\ncn: A\n",
     "line 8: the parent of 'uid=a,ou=nowhere,dc=example,dc=com' is not in the file"),
    (GOOD + "\ncn: A\n", "line 8:"),
    (" folded: first\n" + GOOD, "line 1:"),
    (GOOD.replace("ou: people", "ou:: !!!not base64"), "line 6:"),
    ("", "no entries"),
    ("\n\n# only a comment\n\n", "no entries"),
    ("# a comment, then a blank line\n\n" + GOOD + "\ncn: A\n", "line 10:"),
])
def test_bad_ldif_names_the_line(tmp_path, text, error):
    with pytest.raises(ValueError) as e:
        load_ldif(write(tmp_path, text))
    assert str(e.value).startswith(error) or error in str(e.value), str(e.value)


def test_ldif_with_crlf_and_folding(tmp_path):
    text = (GOOD + "\ndn: uid=a,ou=people,dc=example,dc=com\ncn: Ann \n Lee\nmobile: 1\n"
            "# a comment\n  folded too\nmobile:2\nsn:: TMOp\n").replace("\n", "\r\n")
    [*_, entry] = load_ldif(write(tmp_path, "\n\nversion: 1\n\n" + text))
    assert entry.dn == "uid=a,ou=people,dc=example,dc=com"
    assert entry.attributes == {"cn": ["Ann Lee"], "mobile": ["1", "2"],  # in the file's order
                                "sn": ["Lé"]}
    assert entry.line == 12


@pytest.mark.parametrize(("text", "error"), [
    ("dn: dc=x\nchangetype: add\n", "line 2: change records are not supported"),
    ("dn: dc=x\njpegPhoto:< file:///etc/passwd\n", "line 2: jpegPhoto:< (a value read from"),
    ("dn: dc=x\ncn: a\ndn: cn=a,dc=x\n", "line 3: a second 'dn:'"),
    ("dn: dc=x\n\ndn: dc=x\n", "line 3: 'dc=x' is in the file twice"),
    ("dn: dc=x\n\ndn: nonsense\n", "line 3: 'nonsense' is not a DN"),
])
def test_ldif_records_mup_does_not_take(tmp_path, text, error):
    with pytest.raises(LDIFError, match=re.escape(error)):
        load_ldif(write(tmp_path, text))


@pytest.mark.parametrize(("a", "b"), [
    ("uid=A, OU=People,dc=example,dc=com", "uid=a,ou=people,dc=EXAMPLE,dc=com"),
    (r"cn=Jos\c3\a9,dc=x", "cn=JOSÉ,dc=x"),
    (r"cn=a\,b,dc=x", r"cn=a\2cb,dc=x"),
    ("cn=a+sn=b,dc=x", "sn=b+cn=a,dc=x"),
])
def test_dn_key_compares_like_a_server(a, b):
    assert dn_key(a) == dn_key(b)
    assert dn_key(r"cn=a\,b,dc=x") != dn_key("cn=ab,dc=x")


def test_reload_swaps_the_people_or_keeps_them(tmp_path):
    """``reload`` reads the file again; a broken file is refused and the old people stay."""
    path = write(tmp_path, GOOD + "\ndn: uid=a,ou=people,dc=example,dc=com\ncn: Ann\n"
                                  "mozillaNickname: ann\n")
    directory = LDIFDirectory(path, NAMES, "ou=people,dc=example,dc=com")
    ok = SynchronousTestCase().successResultOf
    assert ok(directory.by_nick("ann")).name == "Ann"
    write(tmp_path, GOOD + "\ndn: uid=b,ou=people,dc=example,dc=com\ncn: Bob\n"
                           "mozillaNickname: bob\n")
    assert directory.reload() == 2
    assert ok(directory.by_nick("bob")).name == "Bob"
    assert ok(directory.by_nick("ann")) is None
    write(tmp_path, GOOD + "\ndn: uid=c,ou=people,dc=example,dc=com\ncn Carol\n")
    with pytest.raises(LDIFError, match="^line 9: expected 'attribute: value'"):
        directory.reload()
    write(tmp_path, GOOD.replace("ou=people", "ou=staff").replace("ou: people", "ou: staff"))
    with pytest.raises(LDIFError, match="base_dn 'ou=people,dc=example,dc=com' is not in"):
        directory.reload()
    (tmp_path / "people.ldif").unlink()
    with pytest.raises(OSError):
        directory.reload()
    assert ok(directory.by_nick("bob")).name == "Bob"  # still the last good file


def config_for(tmp_path, **ldap):
    return parse({"ldap": ldap}, str(tmp_path / "mup.toml"))


def test_config_errors(tmp_path):
    assert directory_from_config(config_for(tmp_path), Clock()) is None
    with pytest.raises(ConfigError, match=r"\[ldap\] ldif: cannot read"):
        directory_from_config(config_for(tmp_path, ldif="missing.ldif"), Clock())
    write(tmp_path, GOOD.replace("ou: people", "ou people"), "bad.ldif")
    with pytest.raises(ConfigError, match=r"bad.ldif: line 6:"):
        directory_from_config(config_for(tmp_path, ldif="bad.ldif"), Clock())
    write(tmp_path, GOOD, "good.ldif")
    with pytest.raises(ConfigError, match="base_dn 'ou=staff,dc=example,dc=com' is not in"):
        directory_from_config(config_for(tmp_path, ldif="good.ldif",
                                         base_dn="ou=staff,dc=example,dc=com"), Clock())
    with pytest.raises(ConfigError, match="either url .* or ldif"):
        directory_from_config(config_for(tmp_path, ldif="good.ldif", url="ldap://x"), Clock())
    with pytest.raises(ConfigError, match=r"\[ldap\] url: expected ldap://"):
        directory_from_config(config_for(tmp_path, url="http://example.com"), Clock())
    with pytest.raises(ConfigError, match="ca_certificate"):
        directory_from_config(config_for(tmp_path, url="ldaps://ldap.example.com",
                                         ca_certificate="missing.pem"), Clock())
    found = directory_from_config(config_for(tmp_path, url="ldaps://ldap.example.com"), Clock())
    assert found is not None and found[0] is found[1]
    found = directory_from_config(config_for(tmp_path, ldif="good.ldif"), Clock())
    assert found is not None and isinstance(found[0], LDIFDirectory) and found[1] is None


# --- Person and formatting -------------------------------------------------------------------

@pytest.mark.parametrize(("zone", "shown"), [
    ("", ""),
    ("-0300", "14h05 -0300"),
    ("+0530", "22h35 +0530"),
    ("-03:00", "14h05 -0300"),
    ("UTC+1", "18h05 +0100"),
    ("America/Sao_Paulo", "14h05 -0300"),
    ("Europe/London", "17h05 +0000"),
    ("Mars/Olympus", "Mars/Olympus"),
    ("+2500", "+2500"),
    ("../../etc/passwd", "../../etc/passwd"),
    ("/etc/localtime", "/etc/localtime"),
])
def test_local_time(zone, shown):
    assert local_time(zone, NOW) == shown


def test_sanitize_value():
    assert sanitize_value("a\r\nPRIVMSG #x :b\0c\x01") == "a  PRIVMSG #x :b c"
    assert sanitize_value(b"Jos\xc3\xa9 \xff") == "José \ufffd"


def test_person_from_attributes():
    person = person_from_attributes({
        "CN": [b"Evil\r\nQUIT"], "mozillanickname": ["evil"], "Mobile": ["1", "", "2"],
        "telephoneNumber": ["0"], "mozillaCustom4": ["-0300"], "timezone": ["Europe/Paris"],
    }, NAMES)
    assert person == Person(nick="evil", name="Evil  QUIT", mail="",
                            phones=(("phone", "0"), ("mobile", "1"), ("mobile", "2")),
                            mobile="1", zone="Europe/Paris")
    assert person_from_attributes({}, NAMES) == Person("", "", "", (), "", "")


def test_format_person_without_extras():
    assert format_person(Person("x", "X Y", "", (), "", ""), NOW) == "x is X Y"


def test_format_people_keeps_to_one_line():
    people = [Person(f"nick{i}", f"Name Number {i}", "", (), "", "") for i in range(40)]
    line = format_people(people, limit=100)
    assert line == ("nick0 is Name Number 0, nick1 is Name Number 1, nick2 is Name Number 2, "
                    "nick3 is Name Number 3, plus 36 more people.")
    assert format_people(people[:2]) == "nick0 is Name Number 0, nick1 is Name Number 1."
    assert format_people(people[:4], limit=80).endswith(", plus 1 more person.")


def test_poke_never_sends_control_characters(tmp_path):
    evil = base64.b64encode(b"Mallory\r\nPRIVMSG #ops :pwned\0").decode()
    write(tmp_path, GOOD + f"\ndn: uid=m,ou=people,dc=example,dc=com\ncn:: {evil}\n"
                          "mozillaNickname: mallory\nmail: m@example.com\n", "evil.ldif")
    clock = Clock()  # the embedded directory needs no running reactor: all of it is in memory
    directory, service = directory_from_config(config_for(tmp_path, ldif="evil.ldif"), clock)
    assert service is None
    d = Commands([poke(directory, clock)]).run("poke", Request("someone", "mallory"))
    [line] = SynchronousTestCase().successResultOf(d)
    assert line == "mallory is Mallory  PRIVMSG #ops :pwned <m@example.com>"


def test_poke_never_shows_bidi_controls(tmp_path):
    """A right-to-left override in a name would make IRC clients show the rest of the line,
    the numbers included, reversed: directory values lose every invisible format character."""
    write(tmp_path, GOOD + "\ndn: uid=e,ou=people,dc=example,dc=com\n"
                           "cn: Eve \u202e4321 \u2066x\u2069\u200b\ufeff\u200d\n"
                           "mozillaNickname: e\u202dve\n"
                           "mobile: +44 7700 \u202e900123\n", "bidi.ldif")
    clock = Clock()
    directory, _ = directory_from_config(config_for(tmp_path, ldif="bidi.ldif"), clock)
    d = Commands([poke(directory, clock)]).run("poke", Request("someone", "eve"))
    [line] = SynchronousTestCase().successResultOf(d)
    assert line == "eve is Eve 4321 x\u200d <mobile:+44 7700 900123>"


@pytest.mark.parametrize(("value", "shown"), [
    ("a\u202ab\u202bc\u202cd\u202de\u202ef", "abcdef"),
    ("\u2066a\u2067b\u2068c\u2069", "abc"),
    ("\u200ea\u200fb\u061cc", "abc"),  # LRM, RLM, ALM
    ("\u200bzero\u2060width\ufeff", "zerowidth"),
    ("\U000e0041tag", "tag"),
    ("👨\u200d👩\u200d👧 \u200c", "👨\u200d👩\u200d👧 \u200c"),  # joiners are text
    ("\x85next\x9bcsi", "next csi"),  # C1 controls
])
def test_sanitize_value_removes_invisible_characters(value, shown):
    assert sanitize_value(value) == shown


# --- The client on a Clock -------------------------------------------------------------------

@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Connects to a StringTransport (or refuses, when ``refuse`` is set)."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list = []
        self.refuse = False

    def connect(self, factory):
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return defer.succeed(protocol)


def sent(transport: StringTransport) -> list:
    """The LDAP messages written to ``transport`` (and clears it)."""
    data, messages = transport.value(), []
    transport.clear()
    while data:
        msg, used = pureber.berDecodeObject(BaseLDAPServer.berdecoder, data)
        messages.append(msg)
        data = data[used:]
    return messages


def answer(protocol, msg_id: int, *responses) -> None:
    for response in responses:
        protocol.dataReceived(pureldap.LDAPMessage(response, id=msg_id).toWire())


DONE = pureldap.LDAPSearchResultDone(resultCode=0)


def entry(nick: str):
    return pureldap.LDAPSearchResultEntry(
        objectName=f"uid={nick},dc=example,dc=com",
        attributes=[("mozillaNickname", [nick]), ("cn", [nick.title()])])


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = StringEndpoint()
        self.directory = LDAPDirectory(self.endpoint, self.clock, NAMES, "dc=example,dc=com",
                                       timeout=5.0, max_in_flight=2, reconnect_max_delay=2.0)
        self.directory.startService()
        self.addCleanup(self.directory.stopService)

    def test_one_connection_reused(self):
        for nick in ("a", "b", "c"):
            d = self.directory.by_nick(nick)
            [msg] = sent(self.endpoint.transports[0])
            assert msg.value.filter.attributeDesc.value == b"mozillaNickname"
            assert msg.value.filter.assertionValue.value == nick.encode()
            answer(self.endpoint.protocols[0], msg.id, entry(nick), DONE)
            assert self.successResultOf(d).nick == nick
        assert len(self.endpoint.transports) == 1

    def test_timeout_gives_up_and_ignores_the_late_answer(self):
        d = self.directory.search("ann")
        [search] = sent(self.endpoint.transports[0])
        assert search.value.timeLimit == 5  # the server gives up too
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, DirectoryError)
        assert failure.value.user_message == SLUGGISH
        # a late answer is ignored and the connection still works
        answer(self.endpoint.protocols[0], search.id, entry("ann"), DONE)
        assert self.directory.in_flight == 0
        d = self.directory.by_nick("jose")
        [msg] = sent(self.endpoint.transports[0])
        answer(self.endpoint.protocols[0], msg.id, entry("jose"), DONE)
        assert self.successResultOf(d).nick == "jose"

    def test_saturation(self):
        first, second = self.directory.search("a"), self.directory.search("b")
        third = self.directory.search("c")
        assert self.failureResultOf(third, DirectoryError).value.user_message == SLUGGISH
        messages = sent(self.endpoint.transports[0])
        answer(self.endpoint.protocols[0], messages[0].id, entry("a"), DONE)
        assert [p.nick for p in self.successResultOf(first)] == ["a"]
        fourth = self.directory.search("d")  # a slot is free again
        self.assertNoResult(fourth)
        self.assertNoResult(second)

    def test_server_error_is_unavailable(self):
        d = self.directory.by_nick("a")
        [msg] = sent(self.endpoint.transports[0])
        answer(self.endpoint.protocols[0], msg.id,
               pureldap.LDAPSearchResultDone(resultCode=32, errorMessage="no such object"))
        failure = self.failureResultOf(d, DirectoryError)
        assert failure.value.user_message == UNAVAILABLE
        assert "noSuchObject" in str(failure.value)

    def test_unreachable_fails_fast_and_recovers(self):
        self.endpoint.transports[0].loseConnection()
        self.endpoint.protocols[0].connectionLost(error.ConnectionDone())
        self.endpoint.refuse = True
        d = self.directory.search("a")
        self.assertNoResult(d)  # waits for the next attempt (0.1 s)...
        self.clock.advance(0.3)
        assert self.failureResultOf(d, DirectoryError).value.user_message == UNAVAILABLE
        # ...and while it is down, answers at once
        d = self.directory.search("a")
        assert self.failureResultOf(d, DirectoryError).value.user_message == UNAVAILABLE
        self.endpoint.refuse = False
        self.clock.advance(2.5)  # the next retry connects
        d = self.directory.by_nick("a")
        [msg] = sent(self.endpoint.transports[-1])
        answer(self.endpoint.protocols[-1], msg.id, entry("a"), DONE)
        assert self.successResultOf(d).nick == "a"
        assert len(self.endpoint.transports) == 2

    def test_a_server_that_stopped_answering_is_left(self):
        """More timed-out searches unanswered than may be in flight: the connection is
        closed and the next search goes over a new one."""
        for _ in range(3):
            d = self.directory.search("a")
            self.clock.advance(5.1)
            self.failureResultOf(d, DirectoryError)
        assert self.endpoint.transports[0].disconnecting
        self.endpoint.protocols[0].connectionLost(error.ConnectionDone())
        self.clock.advance(0.3)  # reconnects
        d = self.directory.by_nick("a")
        [msg] = sent(self.endpoint.transports[-1])
        answer(self.endpoint.protocols[-1], msg.id, entry("a"), DONE)
        assert self.successResultOf(d).nick == "a"
        assert len(self.endpoint.transports) == 2

    def test_retry_delays(self):
        delays = [self.directory._retry(n) for n in (1, 2, 3, 10, 5000)]
        assert 0.2 <= delays[0] <= 0.24 and 0.4 <= delays[1] <= 0.48
        assert all(2.0 <= d <= 2.4 for d in delays[3:])  # capped, even after days down

    def test_connection_lost_mid_query(self):
        d = self.directory.search("a")
        self.endpoint.protocols[0].connectionLost(error.ConnectionLost())
        assert self.failureResultOf(d, DirectoryError).value.user_message == UNAVAILABLE
        assert self.directory.in_flight == 0




@pytest.mark.parametrize("stored, sender", [
    ("+44 (0)7700 900123", "+447700900123"),   # a trunk "(0)" written in the directory
    ("+44 7700 900123", "+44 (0)7700-900123"),
    ("0044 7700 900123", "+447700900123"),
    ("+55 (11) 5555-1234", "+551155551234"),
])
def test_by_phone_reads_written_forms_on_both_sides(tmp_path, stored, sender):
    path = write(tmp_path, GOOD + "\ndn: uid=a,ou=people,dc=example,dc=com\ncn: Ann\n"
                                  f"mozillaNickname: ann\nmobile: {stored}\n")
    directory = LDIFDirectory(path, NAMES, "ou=people,dc=example,dc=com")
    found = SynchronousTestCase().successResultOf(directory.by_phone(sender))
    assert found is not None and found.nick == "ann"
