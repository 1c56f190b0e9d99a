"""Unit tests of the directory: filters and escaping, the LDIF loader, the Person record and
its formatting, and the client's timeouts, saturation and reconnection on a Clock."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldaptor import ldapfilter
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapclient import LDAPClient
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
from mup.ldap import (
    SLUGGISH,
    UNAVAILABLE,
    DirectoryError,
    LDAPDirectory,
    decode_search_request,
    decode_search_response,
    directory_from_config,
    escape_filter_value,
    load_ldif,
    query_filter,
    search_op_wire,
    search_response_wire,
)
from mup.people import (
    Attributes,
    Person,
    format_people,
    format_person,
    local_time,
    person_from_attributes,
    sanitize_value,
)

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
            "mobile: 2\n").replace("\n", "\r\n")
    root = load_ldif(write(tmp_path, "\n\n" + text))
    entry = SynchronousTestCase().successResultOf(
        root.lookup("uid=a,ou=people,dc=example,dc=com"))
    assert list(entry["cn"]) == [b"Ann Lee"]
    assert list(entry["mobile"]) == [b"1", b"2"]  # in the file's order


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
    service.startService()
    d = Commands([poke(directory, clock)]).run("poke", Request("someone", "mallory"))
    [line] = SynchronousTestCase().successResultOf(d)
    assert line == "mallory is Mallory  PRIVMSG #ops :pwned <m@example.com>"
    assert SynchronousTestCase().successResultOf(service.stopService()) is None


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

    def test_timeout_abandons_the_query(self):
        d = self.directory.search("ann")
        [search] = sent(self.endpoint.transports[0])
        assert search.value.timeLimit == 5
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, DirectoryError)
        assert failure.value.user_message == SLUGGISH
        [abandon] = sent(self.endpoint.transports[0])
        assert isinstance(abandon.value, pureldap.LDAPAbandonRequest)
        assert abandon.value.value == search.id
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

    def test_retry_delays(self):
        delays = [self.directory._retry(n) for n in (1, 2, 3, 10, 5000)]
        assert 0.2 <= delays[0] <= 0.24 and 0.4 <= delays[1] <= 0.48
        assert all(2.0 <= d <= 2.4 for d in delays[3:])  # capped, even after days down

    def test_connection_lost_mid_query(self):
        d = self.directory.search("a")
        self.endpoint.protocols[0].connectionLost(error.ConnectionLost())
        assert self.failureResultOf(d, DirectoryError).value.user_message == UNAVAILABLE
        assert self.directory.in_flight == 0


# --- The fast BER path agrees with ldaptor ---------------------------------------------------

text_values = st.text(min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(msg_id=st.integers(1, 2**31 - 1), dn=text_values,
       attributes=st.lists(st.tuples(st.text("abcdefgXYZ", min_size=1, max_size=20),
                                     st.lists(text_values, max_size=4)), max_size=12))
def test_fast_entry_decoding_agrees_with_ldaptor(msg_id, dn, attributes):
    wire = pureldap.LDAPMessage(pureldap.LDAPSearchResultEntry(
        objectName=dn, attributes=attributes), id=msg_id).toWire()
    fast_id, fast = decode_search_response(wire)
    slow, _ = pureber.berDecodeObject(LDAPClient.berdecoder, wire)
    assert fast_id == slow.id == msg_id
    assert fast.objectName == slow.value.objectName
    assert fast.attributes == slow.value.attributes


@settings(max_examples=100, deadline=None)
@given(msg_id=st.integers(1, 2**31 - 1), code=st.integers(0, 127), matched=text_values,
       message=text_values)
def test_fast_done_decoding_agrees_with_ldaptor(msg_id, code, matched, message):
    wire = pureldap.LDAPMessage(pureldap.LDAPSearchResultDone(
        resultCode=code, matchedDN=matched, errorMessage=message), id=msg_id).toWire()
    fast_id, fast = decode_search_response(wire)
    slow, _ = pureber.berDecodeObject(LDAPClient.berdecoder, wire)
    assert fast_id == slow.id
    assert (fast.resultCode, fast.matchedDN, fast.errorMessage) == (
        slow.value.resultCode, slow.value.matchedDN, slow.value.errorMessage)


def test_fast_path_leaves_the_rest_to_ldaptor():
    bind = pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=0), id=3).toWire()
    referral = pureldap.LDAPMessage(pureldap.LDAPSearchResultReference(
        uris=[pureldap.LDAPString("ldap://elsewhere/")]), id=3).toWire()
    assert decode_search_response(bind) is None
    assert decode_search_response(referral) is None
    entry = pureldap.LDAPMessage(pureldap.LDAPSearchResultEntry("cn=x", [("cn", ["x"])]),
                                 id=3).toWire()
    for cut in range(len(entry)):
        decode_search_response(entry[:cut])  # never raises
    assert decode_search_response(b"\x30\x84\xff\xff\xff\xff") is None


@settings(max_examples=100, deadline=None)
@given(query=st.text(max_size=60), base=text_values,
       attributes=st.lists(st.text("abcXYZ", min_size=1, max_size=20), max_size=12),
       size=st.integers(0, 2**31 - 1), time_limit=st.integers(0, 2**31 - 1),
       scope=st.integers(0, 2), types_only=st.booleans())
def test_fast_request_encoding_agrees_with_ldaptor(query, base, attributes, size, time_limit,
                                                   scope, types_only):
    request = pureldap.LDAPSearchRequest(
        baseObject=base, scope=scope, derefAliases=0, sizeLimit=size, timeLimit=time_limit,
        typesOnly=types_only, filter=query_filter(query or "x", NAMES), attributes=attributes)
    assert search_op_wire(request) == request.toWire()


# --- The embedded server's answers: the fast path agrees with ldaptor ------------------------

byte_or_text = st.one_of(text_values, st.binary(max_size=300))


@settings(max_examples=200, deadline=None)
@given(msg_id=st.integers(1, 2**31 - 1), dn=byte_or_text,
       attributes=st.lists(st.tuples(st.one_of(st.text("abcXYZ", min_size=1, max_size=20),
                                               st.binary(min_size=1, max_size=20)),
                                     st.lists(byte_or_text, max_size=4)), max_size=12))
def test_fast_entry_encoding_agrees_with_ldaptor(msg_id, dn, attributes):
    entry = pureldap.LDAPSearchResultEntry(objectName=dn, attributes=attributes)
    assert search_response_wire(msg_id, entry) == pureldap.LDAPMessage(entry,
                                                                       id=msg_id).toWire()


@settings(max_examples=100, deadline=None)
@given(msg_id=st.integers(1, 2**31 - 1), code=st.integers(0, 2**16), matched=byte_or_text,
       message=byte_or_text)
def test_fast_done_encoding_agrees_with_ldaptor(msg_id, code, matched, message):
    done = pureldap.LDAPSearchResultDone(resultCode=code, matchedDN=matched,
                                         errorMessage=message)
    assert search_response_wire(msg_id, done) == pureldap.LDAPMessage(done, id=msg_id).toWire()


def test_fast_encoding_leaves_the_rest_to_ldaptor():
    assert search_response_wire(2, pureldap.LDAPBindResponse(resultCode=0)) is None
    assert search_response_wire(2, pureldap.LDAPSearchResultReference(
        uris=[pureldap.LDAPString("ldap://elsewhere/")])) is None


def test_embedded_subtree_walks_like_ldaptor(tmp_path):
    from ldaptor.entryhelpers import SubtreeFromChildrenMixin

    root = load_ldif(str(ROOT_DATA / "people.ldif"))
    fast = root.subtree()
    slow = SubtreeFromChildrenMixin.subtree(root)
    assert [e.dn for e in fast.result] == [e.dn for e in slow.result]
    assert len(fast.result) > 3


def _filters():
    """Filters of every kind the fast path decodes, nested."""
    raw = st.one_of(text_values, st.binary(max_size=40))
    leaves = st.one_of(
        st.builds(lambda q: query_filter(q or "x", NAMES), st.text(max_size=30)),
        st.builds(lambda a, v: pureldap.LDAPFilter_equalityMatch(
            attributeDesc=pureldap.LDAPAttributeDescription(a),
            assertionValue=pureldap.LDAPAssertionValue(v)), st.text("abcXY", min_size=1), raw),
        st.builds(pureldap.LDAPFilter_present, st.text("abcXY", min_size=1)),
        st.builds(lambda t, parts: pureldap.LDAPFilter_substrings(type=t, substrings=[
            kind(v) for kind, v in parts]), st.text("abcXY", min_size=1), st.lists(st.tuples(
                st.sampled_from([pureldap.LDAPFilter_substrings_initial,
                                 pureldap.LDAPFilter_substrings_any,
                                 pureldap.LDAPFilter_substrings_final]), raw),
                min_size=1, max_size=4)))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(pureldap.LDAPFilter_and, st.lists(inner, min_size=1, max_size=3)),
        st.builds(pureldap.LDAPFilter_or, st.lists(inner, min_size=1, max_size=3)),
        st.builds(pureldap.LDAPFilter_not, inner)), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(msg_id=st.integers(1, 2**31 - 1), base=text_values, filt=_filters(),
       attributes=st.lists(st.text("abcXYZ", min_size=1, max_size=20), max_size=12),
       size=st.integers(0, 2**31 - 1), time_limit=st.integers(0, 2**31 - 1),
       scope=st.integers(0, 2), deref=st.integers(0, 3), types_only=st.booleans())
def test_fast_request_decoding_agrees_with_ldaptor(msg_id, base, filt, attributes, size,
                                                   time_limit, scope, deref, types_only):
    wire = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(
        baseObject=base, scope=scope, derefAliases=deref, sizeLimit=size,
        timeLimit=time_limit, typesOnly=types_only, filter=filt, attributes=attributes),
        id=msg_id).toWire()
    fast = decode_search_request(wire)
    slow, _ = pureber.berDecodeObject(BaseLDAPServer.berdecoder, wire)
    assert fast is not None and fast.id == slow.id and fast.controls is None
    assert repr(fast.value) == repr(slow.value)
    for name in ("baseObject", "scope", "derefAliases", "sizeLimit", "timeLimit", "typesOnly",
                 "attributes"):
        assert getattr(fast.value, name) == getattr(slow.value, name), name
    assert fast.value.filter.toWire() == slow.value.filter.toWire()
    assert fast.value.toWire() == slow.value.toWire()


def test_fast_request_decoding_leaves_the_rest_to_ldaptor():
    bind = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn="cn=x", auth="pw"), id=1)
    assert decode_search_request(bind.toWire()) is None
    ordering = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(
        baseObject="dc=x", filter=pureldap.LDAPFilter_greaterOrEqual(
            attributeDesc=pureldap.LDAPAttributeDescription("cn"),
            assertionValue=pureldap.LDAPAssertionValue("a"))), id=2).toWire()
    assert decode_search_request(ordering) is None
    controlled = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(baseObject="dc=x"), id=3,
                                      controls=[("1.2.3", True, None)]).toWire()
    assert decode_search_request(controlled) is None
    search = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(baseObject="dc=x"), id=4).toWire()
    assert decode_search_request(search) is not None
    for cut in range(len(search)):
        assert decode_search_request(search[:cut]) is None


def test_embedded_server_answers_other_requests_through_ldaptor(tmp_path):
    """A bind, then a search in the same chunk: ldaptor's loop takes over, nothing is lost."""
    from mup.ldap import _Server, _Tree

    server = _Server()
    server.factory = _Tree(load_ldif(str(ROOT_DATA / "people.ldif")))
    transport = StringTransport()
    server.makeConnection(transport)
    server.connectionMade()
    bind = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn="", auth=""), id=1).toWire()
    search = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(
        baseObject="ou=people,dc=example,dc=com",
        filter=query_filter("niemeyer", NAMES), attributes=["cn"]), id=2).toWire()
    server.dataReceived(bind + search[:5])
    server.dataReceived(search[5:])
    data, answers = transport.value(), []
    while data:
        message, used = pureber.berDecodeObject(LDAPClient.berdecoder, data)
        answers.append(message)
        data = data[used:]
    assert [(m.id, type(m.value).__name__) for m in answers] == [
        (1, "LDAPBindResponse"), (2, "LDAPSearchResultEntry"), (2, "LDAPSearchResultDone")]
    assert answers[1].value.attributes == [(b"cn", [b"Gustavo Niemeyer"])]


@pytest.mark.parametrize("key", ["cn", "CN", b"cn", b"Cn", "mozillanickname", b"MOBILE", "mail",
                                 "nosuch", b"nosuch", "objectClass", b"objectclass"])
def test_embedded_entry_get_agrees_with_ldaptor(key):
    from ldaptor.entry import BaseLDAPEntry

    root = load_ldif(str(ROOT_DATA / "people.ldif"))
    for entry in root.subtree().result:
        assert entry.get(key) is BaseLDAPEntry.get(entry, key)
        assert entry.get(key, "x") == BaseLDAPEntry.get(entry, key, "x")
        assert (key in entry) == BaseLDAPEntry.has_key(entry, key)
