"""The embedded directory: people read from an LDIF file, held and searched in memory.

For a team without an LDAP server (and for the demo): ``[ldap] ldif = people.ldif``.  It answers
:class:`~mup.directory.Directory` at once, with the matching rules an OpenLDAP server applies to
the same file, and :meth:`LDIFDirectory.reload` re-reads the file without a restart.  The reader
takes the LDIF a directory export contains (RFC 2849 content records: comments, folded lines,
base64 values) and names the line of anything else.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from mup.directory import (
    Attributes,
    Person,
    by_number,
    digits,
    fold,
    has_digits,
    person_from_attributes,
    phone_like,
    sorted_people,
)

__all__ = ["LDIFDirectory", "LDIFError", "LDIFRecord", "load_ldif"]


class LDIFError(ValueError):
    """A bad LDIF file; the message starts with the line number where there is one."""


@dataclass(frozen=True)
class LDIFRecord:
    """One entry of the file: its DN, its attributes (names as written, values in the file's
    order) and the line its ``dn:`` is on."""

    dn: str
    attributes: dict[str, list[str]]
    line: int


_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*|[0-9]+(\.[0-9]+)+")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(first line number, line)`` with folded lines joined; "" ends a record."""
    start, parts = 0, list[str]()
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.startswith(" "):
            if not parts:
                raise LDIFError(f"line {number}: a continued line, with no line before it "
                                f"to continue")
            parts.append(line[1:])
            continue
        if parts:
            yield start, "".join(parts)
        start, parts = number, [line]
        if not line:
            parts = []
            yield number, ""
    if parts:
        yield start, "".join(parts)


def _value(number: int, line: str) -> tuple[str, str]:
    """``(attribute, value)`` of one ``attr: value`` or ``attr:: base64`` line."""
    name, colon, rest = line.partition(":")
    if not colon or not _ATTRIBUTE.fullmatch(name):
        raise LDIFError(f"line {number}: expected 'attribute: value', got {line[:60]!r}")
    if rest.startswith(":"):
        try:
            raw = base64.b64decode(rest[1:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise LDIFError(f"line {number}: {name}:: is not valid base64") from None
        return name, raw.decode("utf-8", errors="replace")
    if rest.startswith("<"):
        raise LDIFError(f"line {number}: {name}:< (a value read from a URL) is not supported")
    return name, rest.lstrip(" ")


def read_ldif(text: str) -> list[LDIFRecord]:
    """The entries of an LDIF file's text; :class:`LDIFError` names the line of a bad one."""
    records: list[LDIFRecord] = []
    current: LDIFRecord | None = None
    first = True
    for number, line in _logical_lines(text):
        if line.startswith("#"):
            continue
        if not line:
            current = None
            continue
        name, value = _value(number, line)
        if current is None:
            if first and name.lower() == "version":
                first = False
                continue
            if name.lower() != "dn":
                raise LDIFError(f"line {number}: an entry starts with 'dn:', not {name!r}")
            current = LDIFRecord(value, {}, number)
            records.append(current)
        elif name.lower() == "changetype":
            raise LDIFError(f"line {number}: change records are not supported (only entries)")
        elif name.lower() == "dn":
            raise LDIFError(f"line {number}: a second 'dn:' in one entry (a blank line "
                            f"between entries?)")
        else:
            current.attributes.setdefault(name, []).append(value)
        first = False
    if not records:
        raise LDIFError("no entries in the file")
    return records


def dn_key(dn: str) -> tuple[str, ...]:
    """A DN as its RDNs, compared the way a server does: attribute types and values
    case-insensitively, escapes (``\\,``, ``\\2C``) undone, spaces around them ignored."""
    rdns = []
    for rdn in _split(dn, ","):
        avas = []
        for ava in _split(rdn, "+"):
            kind, equals, value = ava.partition("=")
            if not equals or not kind.strip():
                raise ValueError(f"{dn!r} is not a DN")
            avas.append(f"{kind.strip().lower()}={fold(_unescape(value.strip()))}")
        rdns.append("+".join(sorted(avas)))
    return tuple(rdns) if rdns != [""] else ()


def _split(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for c in text:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            current.append(c)
            escaped = True
        elif c == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    raw = re.sub(rb"\\([0-9A-Fa-f]{2}|.)", lambda m: bytes.fromhex(m.group(1).decode())
                 if len(m.group(1)) == 2 else m.group(1), value.encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def load_ldif(path: str) -> list[LDIFRecord]:
    """Read and check an LDIF file: every entry's parent comes before it (the first entry is
    the root), as ``slapadd`` wants.  OSError when unreadable, :class:`LDIFError` when bad."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    records = read_ldif(text)
    seen: set[tuple[str, ...]] = set()
    for record in records:
        try:
            key = dn_key(record.dn)
        except ValueError as e:
            raise LDIFError(f"line {record.line}: {e}") from None
        if key in seen:
            raise LDIFError(f"line {record.line}: {record.dn!r} is in the file twice")
        if seen and key[1:] not in seen:
            raise LDIFError(f"line {record.line}: the parent of {record.dn!r} is not in the "
                            f"file (parents come first; the first entry is the root)")
        seen.add(key)
    return records


@dataclass(frozen=True)
class _Entry:
    """One entry under the base, ready to match: folded values by lower-case attribute."""

    person: Person
    folded: dict[str, tuple[str, ...]]

    def equals(self, attr: str, wanted: str) -> bool:
        return wanted in self.folded.get(attr.lower(), ())

    def contains(self, attr: str, wanted: str) -> bool:
        return any(wanted in value for value in self.folded.get(attr.lower(), ()))


class LDIFDirectory:
    """:class:`~mup.directory.Directory` over the people of an LDIF file under ``base_dn``."""

    def __init__(self, path: str, names: Attributes, base_dn: str) -> None:
        self.path = path
        self.names = names
        self.base_dn = base_dn
        self._entries: tuple[_Entry, ...] = self._read()

    def reload(self) -> int:
        """Read the file again and answer from it from now on; how many entries it has.
        A bad file raises (:class:`LDIFError`, OSError) and the old entries stay."""
        return self.prepare_reload()()

    def prepare_reload(self, path: str | None = None) -> Callable[[], int]:
        """Read ``path`` (default: the same file) now, raising on a bad file; the function
        returned makes it the directory (and says how many entries it has)."""
        path = path or self.path
        entries = self._read(path)

        def commit() -> int:
            self.path = path
            self._entries = entries  # one assignment: a search sees the old set or the new one
            return len(entries)

        return commit

    def _read(self, path: str | None = None) -> tuple[_Entry, ...]:
        records = load_ldif(path or self.path)
        try:
            base = dn_key(self.base_dn)
        except ValueError as e:
            raise LDIFError(f"base_dn: {e}") from None
        keys = [dn_key(record.dn) for record in records]
        if base and base not in keys:
            raise LDIFError(f"base_dn {self.base_dn!r} is not in the file (its root is "
                            f"{records[0].dn!r})")
        entries = []
        for record, key in zip(records, keys, strict=True):
            if key[len(key) - len(base):] != base:
                continue
            folded: dict[str, list[str]] = {}
            for name, values in record.attributes.items():
                folded.setdefault(name.lower(), []).extend(fold(v) for v in values)
            entries.append(_Entry(person_from_attributes(record.attributes, self.names),
                                  {k: tuple(v) for k, v in folded.items()}))
        return tuple(entries)

    # --- Directory ---

    def search(self, query: str) -> Deferred[list[Person]]:
        query = query.strip()
        if not query:
            return defer.succeed([])
        entries = self._entries
        if phone_like(query):
            wanted = digits(query)
            return defer.succeed(sorted_people(
                e.person for e in entries if has_digits(e.person, wanted)))
        folded = fold(query)
        exact = [e.person for e in entries if e.equals(self.names.nick, folded)]
        if exact:
            return defer.succeed(sorted_people(exact))
        return defer.succeed(sorted_people(
            e.person for e in entries if e.contains(self.names.name, folded)))

    def by_nick(self, nick: str) -> Deferred[Person | None]:
        return defer.succeed(self._by(self.names.nick, nick))

    def by_account(self, account: str) -> Deferred[Person | None]:
        return defer.succeed(self._by(self.names.account_or_nick, account))

    def by_phone(self, number: str) -> Deferred[Person | None]:
        if len(digits(number).lstrip("0")) < 2:
            return defer.succeed(None)
        return defer.succeed(by_number(sorted_people(e.person for e in self._entries), number))

    def find_all(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Person | None]]:
        return defer.succeed([self._by(self.names.key_attribute(kind), value)
                              for kind, value in keys])

    def _by(self, attr: str, value: str) -> Person | None:
        if not value:
            return None
        wanted = fold(value)
        people = sorted_people(e.person for e in self._entries if e.equals(attr, wanted))
        return people[0] if people else None
