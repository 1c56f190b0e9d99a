"""IRC lines as data: parse (with IRCv3 tags), format, decode, sanitize and split text.

Pure functions, no I/O: the protocol in :mod:`mup.irc` and every module that puts text on IRC
use them, so untrusted text never reaches the wire with CR, LF or NUL in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Message", "decode", "format_line", "irc_lower", "parse", "sanitize",
           "split_message"]


@dataclass(frozen=True)
class Message:
    """One parsed IRC line: ``@tags :prefix COMMAND params...``."""

    command: str
    """Upper-cased command or three-digit numeric."""
    params: tuple[str, ...] = ()
    prefix: str = ""
    """``nick!user@host`` or a server name; empty when the line had none."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """IRCv3 message tags, unescaped; a tag without a value maps to ``""``."""

    @property
    def nick(self) -> str:
        """The nick part of the prefix (the whole prefix for a server)."""
        return self.prefix.split("!", 1)[0].split("@", 1)[0]

    def param(self, index: int, default: str = "") -> str:
        return self.params[index] if -len(self.params) <= index < len(self.params) else default


_TAG_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def _unescape_tag(value: str) -> str:
    if "\\" not in value:
        return value
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 1
            if i < len(value):  # a trailing lone backslash is dropped
                out.append(_TAG_UNESCAPE.get(value[i], value[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        tags[key] = _unescape_tag(value)
    return tags


def parse(line: str) -> Message:
    """Parse one line (without its CR LF) into a :class:`Message`.

    Raises ValueError for a line with no command; anything else is accepted as leniently as
    servers send it (repeated spaces, no trailing parameter, tags without values).
    """
    rest = line.rstrip("\r\n")
    tags: dict[str, str] = {}
    prefix = ""
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        tags = _parse_tags(raw_tags)
        rest = rest.lstrip(" ")
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = rest.split()
    if not words:
        raise ValueError(f"no command in IRC line {line!r}")
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return Message(words[0].upper(), tuple(params), prefix, tags)


def format_line(command: str, *params: str, trailing: bool = False) -> str:
    """One outgoing line (without CR LF) from a command and parameters.

    Every parameter is sanitized; the last one becomes a trailing parameter when it needs to
    (spaces, a leading colon, empty) or ``trailing`` is true.  Raises ValueError for a middle
    parameter with a space.
    """
    parts = [sanitize(command)]
    for i, p in enumerate(params):
        p = sanitize(p)
        last = i == len(params) - 1
        if last and (trailing or not p or " " in p or p.startswith(":")):
            parts.append(":" + p)
        elif " " in p or not p or p.startswith(":"):
            raise ValueError(f"IRC parameter {p!r} may only be the last one")
        else:
            parts.append(p)
    return " ".join(parts)


def decode(raw: bytes) -> str:
    """Decode one line from the wire: UTF-8, else cp1252, else latin-1 (which never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# C0 controls and DEL, except IRC formatting: bold, colour, reset, reverse, italic, underline.
_LINE_BREAKS = re.compile(r"[\r\n\t]+")
_CONTROLS = re.compile(r"[\x00\x01\x04-\x0e\x10-\x15\x17-\x1c\x1e\x7f]")


def sanitize(text: str) -> str:
    """Text made safe for one IRC line: CR, LF and tabs become a space; NUL and the other C0
    controls are removed, except the formatting codes \\x02 \\x03 \\x0f \\x16 \\x1d \\x1f."""
    return _CONTROLS.sub("", _LINE_BREAKS.sub(" ", text))


def _fit(text: str, limit: int) -> int:
    """How many characters of ``text`` fit in ``limit`` UTF-8 bytes, never cutting one."""
    head = text.encode("utf-8")[:limit]
    return len(head.decode("utf-8", errors="ignore"))


def split_message(text: str, limit: int) -> list[str]:
    """Split text into lines of at most ``limit`` UTF-8 bytes each.

    Line breaks in ``text`` start a new line; long lines break at the last space that fits,
    and a word longer than a whole line is cut between characters.  Empty lines are dropped
    (IRC cannot send them).  Every returned line is sanitized.
    """
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes (one UTF-8 character)")
    out: list[str] = []
    for paragraph in re.split(r"\r\n|\r|\n", text):
        rest = sanitize(paragraph).rstrip()
        while len(rest.encode("utf-8")) > limit:
            cut = _fit(rest, limit)
            space = rest.rfind(" ", 0, cut + 1)
            if space > 0:
                line, rest = rest[:space].rstrip(), rest[space + 1:].lstrip()
            else:
                line, rest = rest[:cut], rest[cut:]
            if line:
                out.append(line)
        if rest:
            out.append(rest)
    return out


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\~", "abcdefghijklmnopqrstuvwxyz{}|^")


def irc_lower(name: str) -> str:
    """A nick or channel folded with the rfc1459 casemapping (the common default)."""
    return name.translate(_LOWER)
