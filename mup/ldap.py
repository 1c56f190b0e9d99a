"""The company directory on an LDAP server, through ldaptor's client; ``[ldap]`` builds either.

:class:`LDAPDirectory` keeps one bound ldaptor connection open through a
:class:`~twisted.application.internet.ClientService` (so it reconnects by itself), times every
search out and bounds the searches in flight.  :func:`directory_from_config` builds it, or the
in-memory :class:`~mup.ldif.LDIFDirectory` for ``ldif = ...``.

Every value a user types is placed in a filter *object* (never pasted into filter text), so no
input can change the filter's structure; the text form, for logs, escapes per RFC 4515.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, cast
from urllib.parse import unquote, urlsplit

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from twisted.application.internet import ClientService
from twisted.application.service import IService, Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mup.config import Config, ConfigError
from mup.directory import (
    PHONE_SUFFIX,
    SLUGGISH,
    UNAVAILABLE,
    Attributes,
    Directory,
    DirectoryError,
    Person,
    by_number,
    digits,
    fold,
    has_digits,
    person_from_attributes,
    phone_like,
    sorted_people,
)
from mup.ldif import LDIFDirectory, LDIFError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    from mup.config import Section

__all__ = ["SLUGGISH", "UNAVAILABLE", "Directory", "DirectoryError", "LDAPDirectory",
           "attributes_from_config", "directory_from_config", "escape_filter_value",
           "query_filter"]

log = Logger()


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
    that :func:`~mup.directory.has_digits` narrows to digits in a row."""
    return _any_of([_substrings(attr, list(wanted)) for _, attr in names.phone_attributes()])


def query_filter(query: str, names: Attributes) -> pureldap.LDAPFilter:
    """The filter behind ``poke <query>`` (see :meth:`Directory.search`)."""
    if phone_like(query):
        return _digits_filter(digits(query), names)
    return _any_of([_equals(names.nick, query), _substrings(names.name, [query])])


# --- The connection --------------------------------------------------------------------------

class _Connection(LDAPClient):  # type: ignore[misc]  # ldaptor has no types: LDAPClient is Any
    """One LDAP connection: ldaptor's client, plus a mark for why it cannot be used and a
    search that can time out.  (Methods, not attributes set from outside, so that they reach
    this protocol through ClientService's proxy.)"""

    failure = ""
    """Why this connection cannot be used (StartTLS or bind failed); "" when it can."""

    unanswered = 0
    """Searches that timed out and whose answer has not come yet."""

    def fail(self, reason: str) -> None:
        """Mark the connection unusable and close it."""
        self.failure = reason
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        # Requests are small and answered at once: Nagle's algorithm would hold a second
        # search sent before the first's answer (a pipelined one) for a delayed ACK, ~40 ms.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass

    def search(self, request: pureldap.LDAPSearchRequest, stale_limit: int
               ) -> Deferred[list[pureldap.LDAPSearchResultEntry]]:
        """Fires with the result entries, errbacks with an LDAP error.  Cancelled (timed out),
        its late answer is read and dropped; more than ``stale_limit`` of those outstanding
        (a server that stopped answering) closes the connection, so that a fresh one is made.

        ldaptor's public client hides the message id, so a timed-out search is not abandoned:
        its ``timeLimit`` makes the server give up on its own."""
        entries: list[pureldap.LDAPSearchResultEntry] = []

        def cancel(_: Deferred[Any]) -> None:
            self.unanswered += 1
            if self.unanswered > stale_limit and self.connected:
                self.transport.loseConnection()

        d: Deferred[list[pureldap.LDAPSearchResultEntry]] = Deferred(cancel)

        def handle(response: Any) -> bool:
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                if not d.called:
                    entries.append(response)
                return False
            if isinstance(response, pureldap.LDAPSearchResultReference):
                return False
            if d.called:
                self.unanswered -= 1  # the late end of a search that timed out
                return True
            code = getattr(response, "resultCode", None)
            if code in (ldaperrors.Success.resultCode,
                        ldaperrors.LDAPSizeLimitExceeded.resultCode):
                d.callback(entries)
            else:
                d.errback(ldaperrors.get(code, getattr(response, "errorMessage", "")))
            return True

        # raises LDAPClientConnectionLostException when closed; the Deferred ldaptor returns
        # with a handler only fails (when the connection is lost), and then so does ``d``.
        sent = self.send_multiResponse(request, handle)
        sent.addErrback(lambda f: None if d.called else d.errback(f))
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

    def __init__(self, endpoint: IStreamClientEndpoint, reactor: IReactorTime, names: Attributes,
                 base_dn: str, *, bind_dn: str = "", bind_password: str = "",
                 timeout: float = 5.0, max_in_flight: int = 16,
                 reconnect_max_delay: float = 10.0,
                 start_tls: IOpenSSLClientConnectionCreator | None = None,
                 description: str = "the directory") -> None:
        self.names = names
        self._attributes = names.wanted()
        self._settings = _Settings(base_dn, bind_dn, bind_password, timeout, max_in_flight,
                                   reconnect_max_delay)
        self._reactor = reactor
        self._start_tls = start_tls
        self._description = description
        self._in_flight = 0
        self._down = False
        self._last_error = "not connected yet"
        self._client = ClientService(endpoint, _ConnectionFactory(), retryPolicy=self._retry,
                                     clock=reactor, prepareConnection=self._prepare_proxy)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _retry(self, attempt: int) -> float:
        delay = min(0.1 * 2.0 ** min(attempt, 30), self._settings.reconnect_max_delay)
        return delay * (1 + 0.2 * random.random())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self._client.stopService()

    def _prepare_proxy(self, protocol: IProtocol) -> Deferred[None]:
        # ClientService hands over a proxy of the connection, which forwards its methods.
        return Deferred.fromCoroutine(self._prepare(cast(_Connection, protocol)))

    async def _prepare(self, connection: _Connection) -> None:
        """StartTLS and bind on every new connection, before any search uses it.

        A failure closes the connection and marks it (rather than failing the ClientService's
        prepareConnection, which would leave the connection open behind its back): searches
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
            connection = cast(_Connection, await d)   # the proxy ClientService hands over
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
        return sorted_people(person for _, person in await self._entries(filt))

    async def _entries(self, filt: pureldap.LDAPFilter
                       ) -> list[tuple[dict[str, list[str]], Person]]:
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
                d = connection.search(request, stale_limit=self._settings.max_in_flight)
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
            attributes = {_text(name): [_text(v) for v in values]
                          for name, values in entry.attributes}
            found.append((attributes, person_from_attributes(attributes, self.names)))
        return found

    # --- The Directory API ---

    def search(self, query: str) -> Deferred[list[Person]]:
        return Deferred.fromCoroutine(self._poke(query.strip()))

    async def _poke(self, query: str) -> list[Person]:
        if not query:
            return []
        if phone_like(query):
            wanted = digits(query)
            return [p for p in await self._search(query_filter(query, self.names))
                    if has_digits(p, wanted)]
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
        wanted = [(self.names.key_attribute(kind), value) for kind, value in keys]
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
            folded = fold(value)
            for index, (attributes, person) in enumerate(entries):
                if any(fold(v) == folded for v in _values_of(attributes, attr)):
                    found.setdefault((attr, value), []).append(person)
                    claimed.add(index)
        unclaimed = len(claimed) < len(entries)
        answer: list[Person | None] = []
        for attr, value in wanted:
            people = found.get((attr, value))
            if people:
                answer.append(sorted_people(people)[0])
            elif value and unclaimed:
                answer.append(await self._by(attr, value))
            else:
                answer.append(None)
        return answer

    def by_phone(self, number: str) -> Deferred[Person | None]:
        return Deferred.fromCoroutine(self._by_phone(number))

    async def _by_phone(self, number: str) -> Person | None:
        wanted = digits(number).lstrip("0")
        if len(wanted) < 2:
            return None
        return by_number(await self._search(_digits_filter(wanted[-PHONE_SUFFIX:], self.names)),
                         number)


def _text(value: Any) -> str:
    """An attribute name or value from ldaptor (bytes off the wire) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _values_of(attributes: dict[str, list[str]], attr: str) -> list[str]:
    """An entry's values of ``attr``, whatever the case of the attribute names."""
    wanted = attr.lower()
    return [v for name, values in attributes.items() if name.lower() == wanted for v in values]


def _describe(e: BaseException | Failure) -> str:
    if isinstance(e, Failure):
        e = e.value if e.value is not None else Exception(e.getErrorMessage())
    if isinstance(e, ldaperrors.LDAPException):
        name = getattr(e, "name", b"")
        name = name.decode() if isinstance(name, bytes) else str(name)
        message = getattr(e, "message", "")
        message = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        return f"{name or type(e).__name__}{': ' + message if message else ''}"
    return str(e) or type(e).__name__


# --- From the config -------------------------------------------------------------------------

def attributes_from_config(section: Section) -> Attributes:
    return Attributes(
        nick=section.nick_attribute, account=section.account_attribute,
        name=section.name_attribute, mail=section.mail_attribute,
        phone=section.phone_attribute, mobile=section.mobile_attribute,
        home=section.home_attribute, voip=section.voip_attribute,
        skype=section.skype_attribute, timezone=section.timezone_attribute,
        offset=section.offset_attribute)


def _tls_options(host: str, ca_path: str) -> IOpenSSLClientConnectionCreator:
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
    """The directory ``[ldap]`` describes and the service to start (None for the embedded
    directory, which needs none), or None when it has neither ``url`` nor ``ldif``.  Raises
    :class:`ConfigError` for a bad URL or LDIF file.  ``reactor``: for time and to connect
    through (HostnameEndpoint wants the whole reactor, which has no one static type)."""
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
            return LDIFDirectory(path, names, section.base_dn), None
        except OSError as e:
            raise ConfigError(f"{config.path}: [ldap] ldif: cannot read {path}: "
                              f"{e.strerror}") from None
        except LDIFError as e:
            raise ConfigError(f"{config.path}: [ldap] ldif: {path}: {e}") from None
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
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port,
                                                       timeout=max(1, int(section.timeout)))
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
