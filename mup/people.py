"""A person from the company directory, and how ``poke`` shows one on IRC.

Pure functions only: no I/O, no reactor.  Directory values are untrusted text, so everything
that reaches IRC goes through :func:`sanitize_value`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Attributes", "Person", "digits", "format_people", "format_person", "local_time",
           "person_from_attributes", "sanitize_value"]

PHONE_KINDS = ("phone", "mobile", "home", "voip", "skype")
"""The phone-like attributes, in the order poke shows them."""


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_value(value: str | bytes) -> str:
    """A directory value made safe for one IRC line: decoded as UTF-8 (bad bytes replaced),
    CR, LF, NUL and every other control character turned into a space, ends stripped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return _CONTROL.sub(" ", value).strip()


def digits(text: str) -> str:
    """The ASCII digits of ``text`` (other Unicode digits count too, as their value)."""
    return "".join(str(unicodedata.digit(c)) for c in text if c.isdigit()
                   and unicodedata.digit(c, None) is not None)


def person_from_attributes(attrs: Mapping[str, Sequence[str | bytes]],
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


_OFFSET = re.compile(r"(?:UTC|GMT)?\s*([+-])(\d{1,2}):?(\d{2})?", re.IGNORECASE)


def _tzinfo(zone: str) -> timezone | ZoneInfo | None:
    m = _OFFSET.fullmatch(zone.strip())
    if m:
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 23 or minutes > 59:
            return None
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if m.group(1) == "-" else delta)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*", zone):
        return None  # not a zone name (and never a path zoneinfo would open)
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def local_time(zone: str, now: float) -> str:
    """The person's local time at POSIX time ``now`` as ``14h05 -0300``; the raw zone value
    when it is neither an IANA zone nor an offset; "" when there is no zone."""
    if not zone:
        return ""
    tz = _tzinfo(zone)
    if tz is None:
        return zone
    return datetime.fromtimestamp(now, tz).strftime("%Hh%M %z")


def format_person(person: Person, now: float) -> str:
    """``nick is Full Name <time:14h05 -0300> <mail> <phone:...> <mobile:...>``."""
    parts = [f"{person.nick} is {person.name}" if person.nick else person.name or "Someone"]
    when = local_time(person.zone, now)
    if when:
        parts.append(f"<time:{when}>")
    if person.mail:
        parts.append(f"<{person.mail}>")
    parts += [f"<{kind}:{value}>" for kind, value in person.phones]
    return " ".join(parts)


def format_people(people: Iterable[Person], limit: int = 300) -> str:
    """Several matches on one line: ``a is A, b is B, plus N more people.``"""
    people = list(people)
    shown: list[str] = []
    length = 0
    for person in people:
        text = f"{person.nick} is {person.name}" if person.nick else person.name
        if shown and length + len(text) + 2 > limit:
            break
        shown.append(text)
        length += len(text) + 2
    more = len(people) - len(shown)
    if more:
        return f"{', '.join(shown)}, plus {more} more {'person' if more == 1 else 'people'}."
    return ", ".join(shown) + "."
