"""Untrusted text made safe to show: one home for what may reach IRC or a phone.

Directory values, SMS texts and gateway answers are written by someone else.  Nothing with CR,
LF, NUL, a control character or an invisible format character (the bidi overrides U+202A-U+202E
and isolates U+2066-U+2069, zero-width spaces, the BOM, ...) goes through: they can break an IRC
line or make a client show a number reversed.  The zero-width (non-)joiners stay, as emoji and
several scripts need them.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["clean_reason", "clean_text", "is_invisible", "one_line", "sanitize_value"]

_KEPT_FORMAT = "\u200c\u200d"
"""Format characters that are part of the text: ZERO WIDTH NON-JOINER and JOINER."""

_BREAKS = "\r\n\t\x85\u2028\u2029"
"""Line breaks and tabs: in :func:`clean_text` each becomes a space."""

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def is_invisible(c: str) -> bool:
    """A control, format or surrogate code point that has no business in shown text."""
    category = unicodedata.category(c)
    return category in ("Cc", "Cs") or (category == "Cf" and c not in _KEPT_FORMAT)


def clean_text(text: str) -> str:
    """One line of untrusted text for IRC or an SMS: line breaks become spaces, controls and
    invisible format characters go, runs of spaces shrink, ends are stripped."""
    out = []
    for c in text:
        if c in _BREAKS:
            out.append(" ")
        elif not is_invisible(c):
            out.append(c)
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def one_line(text: str) -> str:
    """Untrusted text kept as it is written, made one safe line: controls (CR, LF, NUL, IRC
    colours) become spaces, invisible format characters go, lone surrogates (undecodable
    bytes, which no SMS encoding carries) become U+FFFD, ends are stripped."""
    out = []
    for c in _SURROGATE.sub("\ufffd", text):
        if unicodedata.category(c) == "Cc":
            out.append(" ")
        elif not is_invisible(c):
            out.append(c)
    return "".join(out).strip()


def sanitize_value(value: str | bytes) -> str:
    """A directory value for one IRC line: decoded as UTF-8 (bad bytes replaced), then
    :func:`one_line` (spaces kept as stored)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return one_line(value)


def clean_reason(text: str, limit: int = 200) -> str:
    """Text from a gateway (an error, a status) made safe for IRC: one line, no control or
    format characters, spaces folded, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
