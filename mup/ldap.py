"""The company directory: an LDAP server through ldaptor, or an LDIF file served in-process.

One code path serves both.  :class:`LDAPDirectory` keeps one bound ldaptor connection open
through a :class:`~twisted.application.internet.ClientService` (so it reconnects by itself), times
every operation out and bounds the queries in flight.  For ``ldif = ...`` the same class connects,
through an in-memory pipe instead of TCP, to ldaptor's own LDAP server answering from the
LDIF loaded into ldaptor's in-memory tree: the filters, the wire protocol and the result
handling are the very ones used against a real server.

Every value a user types is placed in a filter *object* (never pasted into filter text), so no
input can change the filter's structure; the text form, for logs, escapes per RFC 4515.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, Sequence
from urllib.parse import unquote, urlsplit

from ldaptor import interfaces
from ldaptor._encoder import get_strings, to_bytes
from ldaptor.attributeset import LDAPAttributeSet
from ldaptor.inmemory import InMemoryLDIFProtocol, ReadOnlyInMemoryLDAPEntry
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from ldaptor.protocols.ldap.ldapserver import LDAPServer
from twisted.application.internet import ClientService
from twisted.application.service import IService, Service
from twisted.internet import defer, error
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from mup.config import Config, ConfigError
from mup.people import Attributes, Person, digits, person_from_attributes, sanitize_value

__all__ = ["SLUGGISH", "UNAVAILABLE", "Directory", "DirectoryError", "LDAPDirectory",
           "LDIFError", "PHONE_QUERY", "attributes_from_config", "directory_from_config",
           "decode_search_request", "decode_search_response", "embedded_directory",
           "escape_filter_value", "load_ldif", "query_filter", "sanitize_value",
           "search_op_wire", "search_response_wire"]

log = Logger()

UNAVAILABLE = "The directory is unavailable right now."
SLUGGISH = "The directory is a bit sluggish right now. Please try again soon."

PHONE_QUERY = re.compile(r"^\+?[0-9 -]{2,}$")
"""A poke query that looks like (part of) a phone number."""

_PHONE_SUFFIX = 8
"""by_phone matches numbers whose digits agree on at least this many trailing digits (so
``+55 11 5555 1234`` and ``011 5555 1234`` are the same number)."""


class DirectoryError(Exception):
    """The directory could not answer; ``user_message`` is what a user is told."""

    def __init__(self, detail: str, user_message: str = UNAVAILABLE) -> None:
        super().__init__(detail)
        self.user_message = user_message


class Directory(Protocol):
    """What the rest of mup asks the directory; both implementations answer it."""

    def search(self, query: str) -> Deferred[list[Person]]:
        """poke semantics: a phone-like query matches phone digits; otherwise an exact nick
        wins, else a case-insensitive substring of the full name."""

    def by_nick(self, nick: str) -> Deferred[Person | None]: ...

    def by_account(self, account: str) -> Deferred[Person | None]: ...

    def by_phone(self, number: str) -> Deferred[Person | None]: ...

    def find_all(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Person | None]]:
        """``by_nick``/``by_account`` for several people at once: ``keys`` are ``("nick", v)``
        or ``("account", v)``; the answer has one Person or None per key, in order."""


# --- Filters ---------------------------------------------------------------------------------

def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping for filter text: ``*``, ``(``, ``)``, ``\\``, NUL and every non-ASCII
    byte of the UTF-8 encoding become ``\\XX`` (ldaptor's escape, plus non-ASCII)."""
    escaped = pureldap.escape(value)
    return "".join(c if ord(c) < 0x80 else "".join(f"\\{b:02x}" for b in c.encode("utf-8"))
                   for c in escaped)


def _equals(attr: str, value: str) -> pureldap.LDAPFilter:
    return pureldap.LDAPFilter_equalityMatch(
        attributeDesc=pureldap.LDAPAttributeDescription(attr),
        assertionValue=pureldap.LDAPAssertionValue(value), escaper=escape_filter_value)


def _substrings(attr: str, pieces: list[str]) -> pureldap.LDAPFilter:
    """``attr=*p1*p2*...*``."""
    return pureldap.LDAPFilter_substrings(
        type=attr, substrings=[pureldap.LDAPFilter_substrings_any(p, escaper=escape_filter_value)
                               for p in pieces])


def _any_of(filters: list[pureldap.LDAPFilter]) -> pureldap.LDAPFilter:
    return filters[0] if len(filters) == 1 else pureldap.LDAPFilter_or(filters)


def _digits_filter(wanted: str, names: Attributes) -> pureldap.LDAPFilter:
    """Entries with these digits, in order, in any phone attribute.  Separators (spaces,
    dashes, parentheses, dots) may sit anywhere between them, so the server returns a superset
    that :func:`_has_digits` narrows to contiguous digits."""
    return _any_of([_substrings(attr, list(wanted)) for _, attr in names.phone_attributes()])


def _phone_like(query: str) -> bool:
    return bool(PHONE_QUERY.match(query)) and any(c.isdigit() for c in query)


def query_filter(query: str, names: Attributes) -> pureldap.LDAPFilter:
    """The filter behind ``poke <query>`` (see :meth:`LDAPDirectory.search`)."""
    if _phone_like(query):
        return _digits_filter(digits(query), names)
    return _any_of([_equals(names.nick, query), _substrings(names.name, [query])])


def _has_digits(person: Person, wanted: str) -> bool:
    return any(wanted in digits(value) for _, value in person.phones)


def _same_number(a: str, b: str) -> bool:
    a, b = a.lstrip("0"), b.lstrip("0")
    if len(a) > len(b):
        a, b = b, a
    return a == b or (len(a) >= _PHONE_SUFFIX and b.endswith(a))


# --- A fast path for the BER of searches ----------------------------------------------------
# ldaptor's BER codec is general and slow (~0.2 ms to encode a search request, ~0.4 ms to
# decode an entry here).  The two messages on poke's hot path are encoded and decoded below in
# a few lines; anything else, or anything unexpected (controls, referrals, odd bytes), goes
# through ldaptor as before.  tests/test_ldap_unit.py checks both against ldaptor.

def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _ber_int(tag: int, value: int) -> bytes:
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _octet_strings(data: bytes, pos: int, stop: int) -> list[bytes] | None:
    """The OCTET STRINGs that exactly fill ``data[pos:stop]``, or None if anything else is
    there (attribute values, requested attribute names)."""
    values = []
    while pos < stop:
        tag, start, end = _read(data, pos)
        if tag != 0x04:
            return None
        values.append(data[start:end])
        pos = end
    return values if pos == stop else None


def _read(data: bytes, pos: int) -> tuple[int, int, int]:
    """The TLV at ``pos``: (tag, start of content, end of content)."""
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > len(data):
            raise ValueError("unsupported BER length")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def _frame(buffer: bytes) -> int:
    """The length of the first complete BER element in ``buffer``, or 0 if incomplete."""
    if len(buffer) < 2:
        return 0
    n = buffer[1]
    if n & 0x80:
        k = n & 0x7F
        if len(buffer) < 2 + k:
            return 0
        end = 2 + k + int.from_bytes(buffer[2:2 + k], "big")
    else:
        end = 2 + n
    return end if len(buffer) >= end else 0


def search_op_wire(request: pureldap.LDAPSearchRequest, filter_wire: bytes | None = None,
                   attributes_wire: bytes | None = None) -> bytes:
    """The BER of a SearchRequest (what ``request.toWire()`` gives, faster)."""
    body = (_tlv(0x04, request.baseObject.encode("utf-8")) + _ber_int(0x0A, request.scope)
            + _ber_int(0x0A, request.derefAliases) + _ber_int(0x02, request.sizeLimit)
            + _ber_int(0x02, request.timeLimit)
            + bytes((0x01, 0x01, 0xFF if request.typesOnly else 0x00))
            + (filter_wire if filter_wire is not None else request.filter.toWire())
            + (attributes_wire if attributes_wire is not None
               else attributes_wire_of(request.attributes)))
    return _tlv(0x63, body)


def attributes_wire_of(attributes: list[str]) -> bytes:
    return _tlv(0x30, b"".join(_tlv(0x04, a.encode("utf-8")) for a in attributes))


def _envelope(message: bytes) -> tuple[int, int, int, int] | None:
    """One LDAPMessage without controls: (message id, operation tag, start and end of the
    operation's content); None for anything else.  Broken BER raises IndexError/ValueError."""
    tag, start, end = _read(message, 0)
    if tag != 0x30 or end != len(message):
        return None
    tag, a, b = _read(message, start)
    if tag != 0x02:
        return None
    msg_id = _integer(message, a, b)
    op, a, b = _read(message, b)
    if b != end:
        return None  # controls follow
    return msg_id, op, a, b


def decode_search_response(message: bytes) -> tuple[int, Any] | None:
    """``(message id, LDAPSearchResultEntry or LDAPSearchResultDone)`` from one LDAPMessage
    without controls, or None when it is anything else (ldaptor decodes those)."""
    try:
        envelope = _envelope(message)
        if envelope is None:
            return None
        msg_id, op, a, b = envelope
        if op == 0x64:
            tag, x, y = _read(message, a)
            if tag != 0x04:
                return None
            dn = message[x:y]
            tag, p, stop = _read(message, y)
            if tag != 0x30 or stop != b:
                return None
            attributes = []
            while p < stop:
                tag, q, r = _read(message, p)
                tag_type, u, v = _read(message, q)
                tag_set, w, z = _read(message, v)
                if (tag, tag_type, tag_set) != (0x30, 0x04, 0x31) or z != r:
                    return None
                values = _octet_strings(message, w, z)
                if values is None:
                    return None
                attributes.append((message[u:v], values))
                p = r
            return msg_id, pureldap.LDAPSearchResultEntry(objectName=dn, attributes=attributes)
        if op == 0x65:
            tag, x, y = _read(message, a)
            tag2, x2, y2 = _read(message, y)
            tag3, x3, y3 = _read(message, y2)
            if (tag, tag2, tag3) != (0x0A, 0x04, 0x04) or y3 != b:
                return None  # a referral, or something odd
            return msg_id, pureldap.LDAPSearchResultDone(
                resultCode=int.from_bytes(message[x:y], "big"), matchedDN=message[x2:y2],
                errorMessage=message[x3:y3])
    except (IndexError, ValueError):
        return None
    return None


def _integer(data: bytes, start: int, end: int) -> int:
    if start == end:
        raise ValueError("empty integer")
    return int.from_bytes(data[start:end], "big", signed=True)


_SUBSTRING_KINDS = {0x80: pureldap.LDAPFilter_substrings_initial,
                    0x81: pureldap.LDAPFilter_substrings_any,
                    0x82: pureldap.LDAPFilter_substrings_final}


def _decode_filter(data: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    """The filter at ``pos`` as ldaptor decodes it, and where it ends; ValueError for the
    kinds left to ldaptor (ordering, approximate and extensible matches)."""
    tag, start, end = _read(data, pos)
    if tag == 0xA3:  # equalityMatch
        t1, a, b = _read(data, start)
        t2, c, d = _read(data, b)
        if (t1, t2) != (0x04, 0x04) or d != end:
            raise ValueError("odd equalityMatch")
        return pureldap.LDAPFilter_equalityMatch(
            attributeDesc=pureber.BEROctetString(value=data[a:b], tag=0x04),
            assertionValue=pureber.BEROctetString(value=data[c:d], tag=0x04)), end
    if tag == 0xA4:  # substrings
        t1, a, b = _read(data, start)
        t2, c, d = _read(data, b)
        if (t1, t2) != (0x04, 0x30) or d != end or c == d:
            raise ValueError("odd substrings")
        pieces = []
        while c < d:
            kind, x, y = _read(data, c)
            if kind not in _SUBSTRING_KINDS:
                raise ValueError("odd substring")
            pieces.append(_SUBSTRING_KINDS[kind](value=data[x:y], tag=kind))
            c = y
        if c != d:
            raise ValueError("odd substrings")
        return pureldap.LDAPFilter_substrings(type=data[a:b], substrings=pieces), end
    if tag == 0x87:  # present
        return pureldap.LDAPFilter_present(value=data[start:end], tag=tag), end
    if depth > 32:
        raise ValueError("filter nested too deep")
    if tag in (0xA0, 0xA1):  # and, or
        parts = []
        while start < end:
            part, start = _decode_filter(data, start, depth + 1)
            parts.append(part)
        if start != end:
            raise ValueError("odd filter set")
        kind = pureldap.LDAPFilter_and if tag == 0xA0 else pureldap.LDAPFilter_or
        return kind(parts), end
    if tag == 0xA2:  # not
        inner, stop = _decode_filter(data, start, depth + 1)
        if stop != end:
            raise ValueError("odd not")
        return pureldap.LDAPFilter_not(value=inner), end
    raise ValueError("a filter left to ldaptor")


def decode_search_request(message: bytes) -> _Message | None:
    """One LDAPMessage holding a SearchRequest without controls, decoded as ldaptor's
    server decodes it; None for anything else (ldaptor decodes those)."""
    try:
        envelope = _envelope(message)
        if envelope is None or envelope[1] != 0x63:
            return None  # another operation, or controls follow
        msg_id, _, pos, stop = envelope
        fields = []
        for expected in (0x04, 0x0A, 0x0A, 0x02, 0x02, 0x01):
            tag, a, b = _read(message, pos)
            if tag != expected or b > stop:
                return None
            fields.append((a, b))
            pos = b
        filt, pos = _decode_filter(message, pos)
        tag, a, b = _read(message, pos)
        if tag != 0x30 or b != stop:
            return None
        attributes = _octet_strings(message, a, b)
        if attributes is None:
            return None
        base, scope, deref, size, limit, (t, u) = fields
        if t == u:
            return None
        request = pureldap.LDAPSearchRequest(
            baseObject=message[base[0]:base[1]], scope=_integer(message, *scope),
            derefAliases=_integer(message, *deref), sizeLimit=_integer(message, *size),
            timeLimit=_integer(message, *limit), typesOnly=0xFF if any(message[t:u]) else 0,
            filter=filt, attributes=attributes)
    except (IndexError, ValueError):
        return None
    return _Message(msg_id, request)


def _octets(value: Any) -> bytes:
    """What ldaptor's ``to_bytes`` gives for an attribute type, value or DN."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return to_bytes(value)


def search_response_wire(msg_id: int, response: Any) -> bytes | None:
    """The LDAPMessage BER of a SearchResultEntry or a plain SearchResultDone (what
    ``LDAPMessage(response, id=msg_id).toWire()`` gives, faster); None for anything else."""
    kind = type(response)
    if kind is pureldap.LDAPSearchResultEntry:
        attributes = b"".join(
            _tlv(0x30, _tlv(0x04, _octets(name))
                 + _tlv(0x31, b"".join(_tlv(0x04, _octets(v)) for v in values)))
            for name, values in response.attributes)
        op = _tlv(0x64, _tlv(0x04, _octets(response.objectName)) + _tlv(0x30, attributes))
    elif (kind is pureldap.LDAPSearchResultDone and response.referral is None
          and not response.serverSaslCreds and isinstance(response.resultCode, int)):
        op = _tlv(0x65, _ber_int(0x0A, response.resultCode)
                  + _tlv(0x04, _octets(response.matchedDN or b""))
                  + _tlv(0x04, _octets(response.errorMessage or b"")))
    else:
        return None
    return _tlv(0x30, _ber_int(0x02, msg_id) + op)


@dataclass(frozen=True)
class _Message:
    """What LDAPClient.handle reads of a decoded LDAPMessage."""

    id: int
    value: Any
    controls: Any = None


# --- The connection --------------------------------------------------------------------------

class _Connection(LDAPClient):
    """One LDAP connection; :meth:`query` runs a search that can be cancelled (abandoned)."""

    failure = ""
    """Why this connection cannot be used (StartTLS or bind failed); "" when it can."""

    def fail(self, reason: str) -> None:
        """Mark the connection unusable and close it.  (A method, so that it reaches this
        protocol through ClientService's proxy.)"""
        self.failure = reason
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass

    def dataReceived(self, data: bytes) -> None:
        """ldaptor's loop, with searches' entries and results decoded on the fast path."""
        self.buffer += data
        while True:
            size = _frame(self.buffer)
            if not size:
                return
            message, self.buffer = self.buffer[:size], self.buffer[size:]
            fast = decode_search_response(message)
            if fast is not None:
                self.handle(_Message(*fast))
            else:
                decoded, _ = pureber.berDecodeObject(self.berdecoder, message)
                self.handle(decoded)

    def handle(self, msg: Any) -> None:
        if msg.id != 0 and msg.id not in self.onwire:
            return  # the late answer to an abandoned (timed-out) query
        super().handle(msg)

    def query(self, request: pureldap.LDAPSearchRequest, op_wire: bytes | None = None
              ) -> Deferred[list[Any]]:
        """Fires with the result entries; errbacks with an LDAP error; cancelling it sends an
        abandon so the server can drop the work.  ``op_wire``: the request already encoded
        (:func:`search_op_wire`)."""
        msg = self._send(request)  # raises LDAPClientConnectionLostException when closed
        entries: list[Any] = []

        def cancel(d: Deferred) -> None:
            if self.onwire.pop(msg.id, None) is not None and self.connected:
                self.send_noResponse(pureldap.LDAPAbandonRequest(id=msg.id))

        d: Deferred[list[Any]] = Deferred(cancel)

        def handle(response: Any) -> bool:
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                entries.append(response)
                return False
            if isinstance(response, pureldap.LDAPSearchResultReference):
                return False
            code = getattr(response, "resultCode", None)
            if code in (ldaperrors.Success.resultCode,
                        ldaperrors.LDAPSizeLimitExceeded.resultCode):
                d.callback(entries)
            else:
                d.errback(ldaperrors.get(code, getattr(response, "errorMessage", "")))
            return True

        self.onwire[msg.id] = (d, False, handle, (), {})
        if op_wire is None:
            self.transport.write(msg.toWire())
        else:
            self.transport.write(_tlv(0x30, _ber_int(0x02, msg.id) + op_wire))
        return d


class _ConnectionFactory(Factory):
    protocol = _Connection


@dataclass(frozen=True)
class _Settings:
    base_dn: str
    bind_dn: str = ""
    bind_password: str = ""
    timeout: float = 5.0
    max_in_flight: int = 16
    reconnect_max_delay: float = 10.0


class LDAPDirectory(Service):
    """The directory over one reused, bound LDAP connection that reconnects by itself."""

    def __init__(self, endpoint: IStreamClientEndpoint, reactor: Any, names: Attributes,
                 base_dn: str, *, bind_dn: str = "", bind_password: str = "",
                 timeout: float = 5.0, max_in_flight: int = 16,
                 reconnect_max_delay: float = 10.0, start_tls: Any = None,
                 description: str = "the directory") -> None:
        self.names = names
        self._attributes = names.wanted()
        self._attributes_wire = attributes_wire_of(self._attributes)
        self._settings = _Settings(base_dn, bind_dn, bind_password, timeout, max_in_flight,
                                   reconnect_max_delay)
        self._reactor = reactor
        self._start_tls = start_tls
        self._description = description
        self._in_flight = 0
        self._down = False
        self._last_error = "not connected yet"
        self._client = ClientService(endpoint, _ConnectionFactory(), retryPolicy=self._retry,
                                     clock=reactor, prepareConnection=self._prepare)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _retry(self, attempt: int) -> float:
        delay = min(0.1 * 2 ** min(attempt, 30), self._settings.reconnect_max_delay)
        return delay * (1 + 0.2 * random.random())

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._client.stopService()

    async def _prepare(self, connection: _Connection) -> None:
        """StartTLS and bind on every new connection, before any query uses it.

        A failure closes the connection and marks it (rather than failing the ClientService's
        prepareConnection, which would leave the connection open behind its back): queries
        see the mark and report the reason, and the ClientService reconnects with backoff."""
        try:
            if self._start_tls is not None:
                await connection.startTLS(self._start_tls)
            if self._settings.bind_dn:
                await connection.bind(self._settings.bind_dn, self._settings.bind_password)
        except Exception as e:
            reason = _describe(e)
            if self._last_error != reason or not self._down:
                log.error("Cannot use {where}: {reason}", where=self._description, reason=reason)
            self._last_error = reason
            self._down = True
            connection.fail(reason)
            return
        if self._down:
            log.info("{where} is reachable again", where=self._description)
        self._down = False

    async def _connection(self, deadline: float) -> _Connection:
        d = self._client.whenConnected(failAfterFailures=1)
        if not d.called:
            if self._down:
                d.cancel()
                d.addErrback(lambda _: None)
                raise DirectoryError(f"{self._description} is unreachable: "
                                     f"{self._last_error}")
            d.addTimeout(max(deadline - self._reactor.seconds(), 0), self._reactor)
        try:
            connection = await d
        except defer.TimeoutError:
            raise DirectoryError(f"could not connect to {self._description} within "
                                 f"{self._settings.timeout:g}s") from None
        except CancelledError:
            raise DirectoryError(f"{self._description} is stopped") from None
        except Exception as e:
            reason = _describe(e)
            if not self._down:
                log.warn("{where} is unreachable: {reason}", where=self._description,
                         reason=reason)
            self._down = True
            self._last_error = reason
            raise DirectoryError(f"{self._description} is unreachable: {reason}") from None
        if connection.failure:
            raise DirectoryError(f"{self._description} is unusable: {connection.failure}")
        return connection

    async def _search(self, filt: pureldap.LDAPFilter) -> list[Person]:
        return _sorted([person for _, person in await self._entries(filt)])

    async def _entries(self, filt: pureldap.LDAPFilter
                       ) -> list[tuple[dict[Any, Any], Person]]:
        """The entries matching ``filt``: their raw attributes, and as a Person."""
        if self._in_flight >= self._settings.max_in_flight:
            raise DirectoryError(f"{self._in_flight} queries in flight already", SLUGGISH)
        self._in_flight += 1
        try:
            deadline = self._reactor.seconds() + self._settings.timeout
            connection = await self._connection(deadline)
            request = pureldap.LDAPSearchRequest(
                baseObject=self._settings.base_dn, scope=pureldap.LDAP_SCOPE_wholeSubtree,
                derefAliases=pureldap.LDAP_DEREF_neverDerefAliases, sizeLimit=0,
                timeLimit=math.ceil(self._settings.timeout), typesOnly=0, filter=filt,
                attributes=self._attributes)
            try:
                d = connection.query(request, search_op_wire(
                    request, attributes_wire=self._attributes_wire))
            except LDAPClientConnectionLostException:
                raise DirectoryError(f"lost the connection to {self._description}") from None
            d.addTimeout(max(deadline - self._reactor.seconds(), 0), self._reactor)
            try:
                entries = await d
            except defer.TimeoutError:
                log.warn("{where} did not answer {filter} within {timeout}s",
                         where=self._description, filter=filt.asText(),
                         timeout=self._settings.timeout)
                raise DirectoryError("query timed out", SLUGGISH) from None
            except ldaperrors.LDAPException as e:
                log.error("{where} refused {filter}: {reason}", where=self._description,
                          filter=filt.asText(), reason=_describe(e))
                raise DirectoryError(_describe(e)) from None
            except Exception as e:
                raise DirectoryError(f"lost the connection to {self._description}: "
                                     f"{_describe(e)}") from None
        finally:
            self._in_flight -= 1
        found = []
        for entry in entries:
            attributes = dict(entry.attributes)
            found.append((attributes, person_from_attributes(attributes, self.names)))
        return found

    # --- The Directory API ---

    def search(self, query: str) -> Deferred[list[Person]]:
        return Deferred.fromCoroutine(self._poke(query.strip()))

    async def _poke(self, query: str) -> list[Person]:
        if not query:
            return []
        if _phone_like(query):
            wanted = digits(query)
            return [p for p in await self._search(query_filter(query, self.names))
                    if _has_digits(p, wanted)]
        people = await self._search(query_filter(query, self.names))
        exact = [p for p in people if p.nick.casefold() == query.casefold()]
        return exact or people

    def by_nick(self, nick: str) -> Deferred[Person | None]:
        return Deferred.fromCoroutine(self._by(self.names.nick, nick))

    def by_account(self, account: str) -> Deferred[Person | None]:
        return Deferred.fromCoroutine(self._by(self.names.account_or_nick, account))

    async def _by(self, attr: str, value: str) -> Person | None:
        if not value:
            return None
        people = await self._search(_equals(attr, value))
        return people[0] if people else None

    def find_all(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Person | None]]:
        """Several ``by_nick``/``by_account`` in one search, one round trip (``sms`` needs its
        sender and its recipient): ``keys`` are ``("nick" | "account", value)``."""
        return Deferred.fromCoroutine(self._find_all(list(keys)))

    async def _find_all(self, keys: list[tuple[str, str]]) -> list[Person | None]:
        wanted = [(self._key_attribute(kind), value) for kind, value in keys]
        asked = list(dict.fromkeys((attr, value) for attr, value in wanted if value))
        if len(asked) <= 1:  # one person asked for (maybe under several keys): one search
            person = await self._by(*asked[0]) if asked else None
            return [person if value else None for _, value in wanted]
        entries = await self._entries(_any_of([_equals(attr, value) for attr, value in asked]))
        # Each entry goes to the keys its values equal, folded as the server compares
        # directory strings (case and spaces).  An entry no key claims means the server
        # compared differently: those keys are asked on their own, as by_nick would.
        claimed: set[int] = set()
        found: dict[tuple[str, str], list[Person]] = {}
        for attr, value in asked:
            folded = _fold(value)
            for index, (attributes, person) in enumerate(entries):
                if any(_fold(v) == folded for v in _values_of(attributes, attr)):
                    found.setdefault((attr, value), []).append(person)
                    claimed.add(index)
        unclaimed = len(claimed) < len(entries)
        answer: list[Person | None] = []
        for attr, value in wanted:
            people = found.get((attr, value))
            if people:
                answer.append(_sorted(people)[0])
            elif value and unclaimed:
                answer.append(await self._by(attr, value))
            else:
                answer.append(None)
        return answer

    def _key_attribute(self, kind: str) -> str:
        if kind == "nick":
            return self.names.nick
        if kind == "account":
            return self.names.account_or_nick
        raise ValueError(f"unknown directory key {kind!r} (nick or account)")

    def by_phone(self, number: str) -> Deferred[Person | None]:
        return Deferred.fromCoroutine(self._by_phone(number))

    async def _by_phone(self, number: str) -> Person | None:
        wanted = digits(number).lstrip("0")
        if len(wanted) < 2:
            return None
        people = await self._search(_digits_filter(wanted[-_PHONE_SUFFIX:], self.names))
        for kinds in (("mobile",), None):  # a mobile match first: SMS come from mobiles
            for person in people:
                if any(_same_number(digits(value), wanted) for kind, value in person.phones
                       if kinds is None or kind in kinds):
                    return person
        return None


def _describe(e: BaseException | Failure) -> str:
    if isinstance(e, Failure):
        e = e.value
    if isinstance(e, ldaperrors.LDAPException):
        name = getattr(e, "name", b"")
        name = name.decode() if isinstance(name, bytes) else str(name)
        message = getattr(e, "message", "")
        message = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        return f"{name or type(e).__name__}{': ' + message if message else ''}"
    return str(e) or type(e).__name__


# --- The embedded directory ------------------------------------------------------------------

class _OrderedValues(LDAPAttributeSet):
    """ldaptor's attribute set (a ``set``) that also keeps the file's order of values, so the
    "first mobile" is the same one slapd would answer with."""

    def __init__(self, key: Any, values: Any = ()) -> None:
        values = list(values)
        super().__init__(key, values)
        self._order = list(dict.fromkeys(values))

    def __iter__(self) -> Any:
        return iter([v for v in self._order if set.__contains__(self, v)]
                    + [v for v in set.__iter__(self) if v not in self._order])

    def add(self, value: Any) -> None:
        super().add(value)
        if value not in self._order:
            self._order.append(value)


class _Entry(ReadOnlyInMemoryLDAPEntry):
    """An in-memory entry that matches like OpenLDAP's directory strings: equality and
    substrings compare Unicode case-insensitively (ldaptor's own match lowers bytes only)."""

    def buildAttributeSet(self, key: Any, values: Any) -> LDAPAttributeSet:
        return _OrderedValues(key, values)

    def get(self, key: Any, default: Any = None) -> Any:
        """ldaptor's ``get`` (the key as text, then as bytes, any case) with one dictionary
        lookup per form instead of three: a search asks every entry for every attribute."""
        data = self._attributes.data
        for form in get_strings(key):
            found = data.get(form.lower())
            if found is not None:
                return found[1]
        return default

    def has_key(self, key: Any) -> bool:
        data = self._attributes.data
        return any(form.lower() in data for form in get_strings(key))

    def __contains__(self, key: Any) -> bool:
        return self.has_key(key)

    def subtree(self, callback: Any = None) -> Deferred[Any]:
        """ldaptor's walk (this entry, then each child's subtree, last child first), without
        a Deferred per entry: the tree is in memory."""
        if callback is None:
            found: list[Any] = []
            self.subtree(found.append)
            return defer.succeed(found)
        stack: list[Any] = [self]
        while stack:
            entry = stack.pop()
            callback(entry)
            stack.extend(entry._children.values())
        return defer.succeed(None)

    def match(self, filter: Any) -> bool:
        if isinstance(filter, pureldap.LDAPFilter_equalityMatch):
            wanted = _fold(filter.assertionValue.value)
            return any(_fold(v) == wanted for v in self._values(filter.attributeDesc.value))
        if isinstance(filter, pureldap.LDAPFilter_substrings):
            return any(_substrings_match(_fold(v), filter.substrings)
                       for v in self._values(filter.type))
        if isinstance(filter, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
            results = (self.match(f) for f in filter)
            return any(results) if isinstance(filter, pureldap.LDAPFilter_or) else all(results)
        if isinstance(filter, pureldap.LDAPFilter_not):
            return not self.match(filter.value)
        return super().match(filter)

    def _values(self, attr: Any) -> Any:
        attr = attr.decode("utf-8", "replace") if isinstance(attr, bytes) else attr
        values = self.get(attr)
        if values is None:
            return ()
        return set.__iter__(values) if isinstance(values, set) else values  # any order


def _sorted(people: list[Person]) -> list[Person]:
    return sorted(people, key=lambda p: (p.nick.casefold(), p.name.casefold()))


def _values_of(attributes: dict[Any, Any], attr: str) -> list[Any]:
    """An entry's values of ``attr``, whatever the case (and type) of the attribute names."""
    wanted = attr.lower()
    for key, values in attributes.items():
        name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        if name.lower() == wanted:
            return list(values)
    return []


def _fold(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split()).casefold()


def _substrings_match(value: str, pieces: list[Any]) -> bool:
    position = 0
    for piece in pieces:
        part = _fold(piece.value)
        if isinstance(piece, pureldap.LDAPFilter_substrings_initial):
            if not value.startswith(part):
                return False
            position = len(part)
        elif isinstance(piece, pureldap.LDAPFilter_substrings_final):
            return value.endswith(part) and len(value) - len(part) >= position
        else:
            found = value.find(part, position)
            if found < 0:
                return False
            position = found + len(part)
    return True


class LDIFError(ValueError):
    """A bad LDIF file; the message starts with the line number."""


class _LDIFLoader(InMemoryLDIFProtocol):
    """ldaptor's LDIF loader, counting lines so every error names one."""

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        """The line being read."""
        self.error_line = 0
        """The first line of the logical line ldaptor is parsing (it parses one line late)."""
        self.entry_lines: dict[int, int] = {}
        self._pending = 0
        self._dn_lines: list[int] = []

    def lineReceived(self, line: bytes) -> None:
        self.line += 1
        if line.startswith(b" "):
            self.error_line = self.line
        else:
            self.error_line = self._pending or self.line
            self._pending = self.line if line else 0
            if line[:3].lower() == b"dn:":
                self._dn_lines.append(self.line)
        super().lineReceived(line)

    def state_HEADER(self, line: bytes) -> None:
        if line:  # ldaptor refuses blank lines before the first entry; LDIF allows them
            super().state_HEADER(line)

    def gotEntry(self, entry: Any) -> None:
        self.entry_lines[id(entry)] = self._dn_lines.pop(0) if self._dn_lines else self.line
        if self.db is None:
            self.db = _Entry(dn=entry.dn, attributes=entry)
            self._deferred.callback(self.db)
        else:
            self._deferred.addCallback(self._addEntry, entry)

    def lookupFailed(self, reason: Failure, entry: Any) -> Failure:
        return Failure(LDIFError(f"line {self.entry_lines.get(id(entry), '?')}: the parent of "
                                  f"{entry.dn.getText()!r} is not in the file (parents come "
                                  f"first; the first entry is the root)"))

    def addFailed(self, reason: Failure, entry: Any) -> Failure:
        if isinstance(reason.value, LDIFError):
            return reason
        return Failure(LDIFError(f"line {self.entry_lines.get(id(entry), '?')}: cannot add "
                                  f"{entry.dn.getText()!r}: {_describe(reason)}"))


def load_ldif(path: str) -> ReadOnlyInMemoryLDAPEntry:
    """Load an LDIF file into ldaptor's in-memory tree; :class:`LDIFError` names the line."""
    with open(path, "rb") as f:
        data = f.read().replace(b"\r\n", b"\n")
    loader = _LDIFLoader()
    body = data.lstrip(b"\n")
    loader.line = len(data) - len(body)  # ldaptor's parser wants no blank lines first
    if not body.strip():
        raise LDIFError("no entries in the file")
    try:
        # Fed line by line, so that a parse error is raised while the loader is on its line.
        for line in body.splitlines(keepends=True):
            loader.dataReceived(line)
        loader.dataReceived(b"\n" if body.endswith(b"\n") else b"\n\n")  # end the last entry
        if loader.db is None and loader.mode != b"IN_ENTRY":
            raise LDIFError("no entries in the file")
        loader.connectionLost(Failure(error.ConnectionDone()))
    except LDIFError:
        raise
    except Exception as e:
        raise LDIFError(f"line {loader.error_line}: {e}") from None
    results: list[Any] = []
    loader.completed.addBoth(results.append)
    if not results or results[0] is None:
        raise LDIFError("no entries in the file")
    if isinstance(results[0], Failure):
        failure = results[0]
        if isinstance(failure.value, LDIFError):
            raise failure.value
        raise LDIFError(f"line {loader.line}: {_describe(failure)}")
    return results[0]


class _Tree:
    """What ldaptor's LDAPServer adapts to IConnectedLDAPEntry: the tree it answers from."""

    def __init__(self, root: ReadOnlyInMemoryLDAPEntry) -> None:
        self.root = root


registerAdapter(lambda tree: tree.root, _Tree, interfaces.IConnectedLDAPEntry)


class _Pipe:
    """Both ends of an in-memory connection.  Bytes are delivered at once, in order, and never
    re-entrantly: a write made while delivering is queued and delivered by the outer loop."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, bytes | None]] = deque()
        self._delivering = False
        self.closed = False

    def send(self, to: Any, data: bytes | None) -> None:
        if self.closed:
            return
        self._queue.append((to, data))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                protocol, chunk = self._queue.popleft()
                if chunk is None:
                    self._close()
                    return
                protocol.dataReceived(chunk)
        finally:
            self._delivering = False

    def connect(self, server: Any, client: Any) -> None:
        self.ends = (server, client)
        server.makeConnection(_PipeTransport(self, client))
        client.makeConnection(_PipeTransport(self, server))

    def _close(self) -> None:
        self.closed = True
        self._queue.clear()
        for protocol in self.ends:
            protocol.connectionLost(Failure(error.ConnectionDone()))


@implementer(ITransport)
class _PipeTransport:
    """One end's transport: writes go to the ``peer`` protocol."""

    disconnecting = False

    def __init__(self, pipe: _Pipe, peer: Any) -> None:
        self._pipe = pipe
        self._peer = peer

    def write(self, data: bytes) -> None:
        self._pipe.send(self._peer, data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._pipe.send(self._peer, None)

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        return _MEMORY

    def getHost(self) -> Any:
        return _MEMORY


_MEMORY = UNIXAddress("<embedded directory>")


class _Server(LDAPServer):
    """ldaptor's LDAP server, with search entries and results encoded on the fast path (the
    embedded directory's answers cost what a real server's do, not ldaptor's slow BER)."""

    def dataReceived(self, data: bytes) -> None:
        """ldaptor's loop, with search requests decoded on the fast path."""
        self.buffer += data
        while self.buffer:
            size = _frame(self.buffer)
            request = decode_search_request(self.buffer[:size]) if size else None
            if request is None:
                super().dataReceived(b"")  # anything else, the rest of the buffer too
                return
            self.buffer = self.buffer[size:]
            self.handle(request)

    def queue(self, id: int, op: Any) -> None:
        wire = search_response_wire(id, op) if self.connected and not self.debug else None
        if wire is None:
            super().queue(id, op)
        else:
            self.transport.write(wire)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """Connects a client to a fresh ldaptor LDAPServer on ``tree``, in memory: no socket, no
    reactor turn (so it runs on any reactor, a test Clock included)."""

    def __init__(self, tree: _Tree) -> None:
        self._tree = tree

    def connect(self, factory: Any) -> Deferred[Any]:
        server = _Server()
        server.factory = self._tree
        client = factory.buildProtocol(_MEMORY)
        if client is None:
            return defer.fail(error.ConnectionRefusedError("factory refused the connection"))
        _Pipe().connect(server, client)
        return defer.succeed(client)


def embedded_directory(path: str, reactor: Any, names: Attributes, base_dn: str,
                       **options: Any) -> LDAPDirectory:
    """An :class:`LDAPDirectory` answering from the LDIF file at ``path``."""
    root = load_ldif(path)
    found: list[Any] = []
    root.lookup(base_dn).addBoth(found.append)
    if not found or isinstance(found[0], Failure):
        raise ValueError(f"base_dn {base_dn!r} is not in the file (its root is "
                         f"{root.dn.getText()!r})")
    return LDAPDirectory(_MemoryEndpoint(_Tree(root)), reactor, names, base_dn,
                         description=f"the embedded directory {path}", **options)


# --- From the config -------------------------------------------------------------------------

def attributes_from_config(section: Any) -> Attributes:
    return Attributes(
        nick=section.nick_attribute, account=section.account_attribute,
        name=section.name_attribute, mail=section.mail_attribute,
        phone=section.phone_attribute, mobile=section.mobile_attribute,
        home=section.home_attribute, voip=section.voip_attribute,
        skype=section.skype_attribute, timezone=section.timezone_attribute,
        offset=section.offset_attribute)


def _tls_options(host: str, ca_path: str) -> Any:
    from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

    trust = None
    if ca_path:
        with open(ca_path, "rb") as f:
            pem = f.read()
        blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem,
                            re.DOTALL)
        if not blocks:
            raise ValueError(f"no PEM certificate in {ca_path}")
        trust = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    return optionsForClientTLS(host, trustRoot=trust)


def directory_from_config(config: Config, reactor: Any
                          ) -> tuple[Directory, IService | None] | None:
    """The directory ``[ldap]`` describes (and the service to start), or None when it has
    neither ``url`` nor ``ldif``.  Raises :class:`ConfigError` for a bad URL or LDIF file."""
    section = config.ldap
    names = attributes_from_config(section)
    options: dict[str, Any] = dict(timeout=section.timeout, max_in_flight=section.max_in_flight,
                                   reconnect_max_delay=section.reconnect_max_delay)
    if section.ldif and section.url:
        raise ConfigError(f"{config.path}: [ldap]: set either url (an LDAP server) or ldif (an "
                          f"embedded directory), not both")
    if section.ldif:
        path = config.resolve_path(section.ldif)
        try:
            directory = embedded_directory(path, reactor, names, section.base_dn, **options)
        except OSError as e:
            raise ConfigError(f"{config.path}: [ldap] ldif: cannot read {path}: "
                              f"{e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{config.path}: [ldap] ldif: {path}: {e}") from None
        return directory, directory
    if not section.url:
        return None
    where = f"{config.path}: [ldap] url"
    url = urlsplit(section.url)
    if url.scheme not in ("ldap", "ldaps") or not url.hostname:
        raise ConfigError(f"{where}: expected ldap://host[:port] or ldaps://host[:port], got "
                          f"{section.url!r}")
    host = unquote(url.hostname)
    try:
        port = url.port or (636 if url.scheme == "ldaps" else 389)
    except ValueError:
        raise ConfigError(f"{where}: bad port in {section.url!r}") from None
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=max(1, int(section.timeout)))
    start_tls = None
    try:
        if url.scheme == "ldaps":
            endpoint = wrapClientTLS(_tls_options(host, config.resolve_path(
                section.ca_certificate)), endpoint)
        elif section.start_tls:
            start_tls = _tls_options(host, config.resolve_path(section.ca_certificate))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{config.path}: [ldap] ca_certificate: {e}") from None
    directory = LDAPDirectory(endpoint, reactor, names, section.base_dn,
                              bind_dn=section.bind_dn, bind_password=section.bind_password,
                              start_tls=start_tls, description=f"the LDAP server {section.url}",
                              **options)
    return directory, directory
