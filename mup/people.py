"""How ``poke`` shows people from the directory on IRC, their local time included.

Pure functions only: no I/O, no reactor.  A :class:`~mup.directory.Person`'s values are
already sanitized (:func:`mup.text.sanitize_value`) when it is built.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mup.directory import Person

__all__ = ["format_people", "format_person", "local_time"]

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
