"""The company directory as the rest of mup sees it: :class:`Directory`, :class:`Person`, errors.

No LDAP here.  Commands code against :class:`Directory`; ``mup.ldap`` answers it from an LDAP
server, ``mup.ldif`` from an LDIF file held in memory.  Both follow the matching rules below, the
ones OpenLDAP applies to directory strings (case and runs of spaces ignored), so a query gets
the same people from either.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred

from mup import phone
from mup.text import sanitize_value

__all__ = ["PHONE_KINDS", "PHONE_SUFFIX", "SLUGGISH", "UNAVAILABLE", "Attributes", "Directory",
           "DirectoryError", "Person", "by_number", "digits", "fold", "has_digits",
           "person_from_attributes", "phone_like", "same_number", "sorted_people"]

UNAVAILABLE = "The directory is unavailable right now."
SLUGGISH = "The directory is a bit sluggish right now. Please try again soon."

PHONE_KINDS = ("phone", "mobile", "home", "voip", "skype")
"""The phone-like attributes, in the order poke shows them."""

PHONE_SUFFIX = 8
"""by_phone matches numbers whose digits agree on at least this many trailing digits (so
``+55 11 5555 1234`` and ``011 5555 1234`` are the same number)."""

_PHONE_QUERY = re.compile(r"^\+?[0-9 -]{2,}$")


class DirectoryError(Exception):
    """The directory could not answer; ``user_message`` is what a user is told."""

    def __init__(self, detail: str, user_message: str = UNAVAILABLE) -> None:
        super().__init__(detail)
        self.user_message = user_message


@dataclass(frozen=True)
class Person:
    """One colleague, as plain values (already sanitized)."""

    nick: str
    name: str
    mail: str
    phones: tuple[tuple[str, str], ...]
    """``(kind, value)`` pairs, kind one of :data:`PHONE_KINDS`, e.g. ``("mobile", "+55 ...")``."""
    mobile: str
    """The first mobile number, "" if none (SMS go there)."""
    zone: str
    """An IANA zone name, a UTC offset such as ``-0300``, or ""."""


class Directory(Protocol):
    """What the rest of mup asks the directory."""

    def search(self, query: str) -> Deferred[list[Person]]:
        """poke semantics: a phone-like query (:func:`phone_like`) matches people with those
        digits, in a row, in a phone attribute; otherwise an exact nick wins, else a
        case-insensitive substring of the full name.  Sorted by nick, then name."""

    def by_nick(self, nick: str) -> Deferred[Person | None]: ...

    def by_account(self, account: str) -> Deferred[Person | None]: ...

    def by_phone(self, number: str) -> Deferred[Person | None]:
        """The person with this number (:func:`same_number`), a mobile first."""

    def find_all(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Person | None]]:
        """``by_nick``/``by_account`` for several people at once: ``keys`` are ``("nick", v)``
        or ``("account", v)``; the answer has one Person or None per key, in order."""


@dataclass(frozen=True)
class Attributes:
    """Which directory attribute holds what (the ``*_attribute`` keys of ``[ldap]``)."""

    nick: str = "mozillaNickname"
    account: str = ""
    name: str = "cn"
    mail: str = "mail"
    phone: str = "telephoneNumber"
    mobile: str = "mobile"
    home: str = "homePhone"
    voip: str = "voipPhone"
    skype: str = "skypePhone"
    timezone: str = ""
    offset: str = "mozillaCustom4"

    @property
    def account_or_nick(self) -> str:
        return self.account or self.nick

    def key_attribute(self, kind: str) -> str:
        """The attribute behind a :meth:`Directory.find_all` key kind."""
        if kind == "nick":
            return self.nick
        if kind == "account":
            return self.account_or_nick
        raise ValueError(f"unknown directory key {kind!r} (nick or account)")

    def phone_attributes(self) -> list[tuple[str, str]]:
        """``(kind, attribute)`` for every configured phone-like attribute, in display order."""
        return [(kind, getattr(self, kind)) for kind in PHONE_KINDS if getattr(self, kind)]

    def wanted(self) -> list[str]:
        """The attributes a search asks the server for."""
        names = [self.nick, self.account, self.name, self.mail, self.timezone, self.offset]
        names += [attr for _, attr in self.phone_attributes()]
        seen: dict[str, None] = {}
        for name in names:
            if name and name.lower() not in {s.lower() for s in seen}:
                seen[name] = None
        return list(seen)


def person_from_attributes(attrs: Mapping[str, Iterable[str | bytes]]
                           | Mapping[bytes, Iterable[str | bytes]],
                           names: Attributes) -> Person:
    """Build a :class:`Person` from raw attribute values (any case of attribute name)."""
    lowered: dict[str, list[str]] = {}
    for key, values in attrs.items():
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        lowered.setdefault(key.lower(), []).extend(
            v for v in (sanitize_value(x) for x in values) if v)

    def all_of(attr: str) -> list[str]:
        return lowered.get(attr.lower(), []) if attr else []

    def first(attr: str) -> str:
        values = all_of(attr)
        return values[0] if values else ""

    phones = tuple((kind, value) for kind, attr in names.phone_attributes()
                   for value in all_of(attr))
    mobile = next((value for kind, value in phones if kind == "mobile"), "")
    return Person(nick=first(names.nick), name=first(names.name), mail=first(names.mail),
                  phones=phones, mobile=mobile,
                  zone=first(names.timezone) or first(names.offset))


# --- Matching, the same for every implementation ---------------------------------------------

def digits(text: str) -> str:
    """The ASCII digits of ``text`` (other Unicode digits count too, as their value)."""
    return "".join(str(unicodedata.digit(c)) for c in text if c.isdigit()
                   and unicodedata.digit(c, None) is not None)


def fold(value: str | bytes) -> str:
    """A directory string as OpenLDAP's caseIgnoreMatch compares it: Unicode case folded,
    runs of spaces one space, ends stripped."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split()).casefold()


def phone_like(query: str) -> bool:
    """A poke query that looks like (part of) a phone number."""
    return bool(_PHONE_QUERY.match(query)) and any(c.isdigit() for c in query)


def has_digits(person: Person, wanted: str) -> bool:
    """``wanted`` digits, in a row, in one of the person's phone values."""
    return any(wanted in digits(value) for _, value in person.phones)


def same_number(a: str, b: str) -> bool:
    """Two written numbers are one (:func:`mup.phone.same_number`: ``+44 (0)7700 900123`` is
    ``+447700900123``; otherwise digits equal, or one ends the other with enough of them)."""
    return phone.same_number(a, b)


def by_number(people: Iterable[Person], number: str) -> Person | None:
    """Who among ``people`` has ``number`` (:func:`same_number`): someone whose mobile it is
    first, as SMS come from mobiles, else whoever has it in another phone attribute."""
    people = list(people)
    for kinds in (("mobile",), PHONE_KINDS):
        for person in people:
            if any(same_number(value, number) for kind, value in person.phones
                   if kind in kinds):
                return person
    return None


def sorted_people(people: Iterable[Person]) -> list[Person]:
    """The order every answer comes in: by nick, then name, case-insensitively."""
    return sorted(people, key=lambda p: (p.nick.casefold(), p.name.casefold()))
