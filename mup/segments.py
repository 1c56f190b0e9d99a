"""Exact SMS segment counting: GSM 03.38 7-bit or UCS-2, as a phone network splits a text.

Gateways such as Kannel cut over-long texts silently, so mup counts before it sends.  GSM 7-bit
carries 160 septets in one SMS or 153 per part of a concatenated one; the extension characters
(``^{}\\[~]|€`` and form feed) take two septets and are never split across parts.  Any other
character makes the whole text UCS-2: 70 units in one SMS, 67 per part, with characters outside
the BMP taking two UTF-16 units (a pair that is never split either).

No library on PyPI fits well (``gsm0338`` is only a codec; the counters are unmaintained), so this
is a small module, tested table-driven in ``tests/test_segments.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GSM", "UCS2", "Segments", "count", "is_gsm"]

GSM = "gsm"
UCS2 = "ucs2"

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

_LIMITS = {GSM: (160, 153), UCS2: (70, 67)}
"""Units in a single SMS, units per part of a concatenated one."""


def is_gsm(text: str) -> bool:
    """True if every character of ``text`` is in the GSM 03.38 basic or extension table."""
    return all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in text)


def _units(text: str, encoding: str) -> list[int]:
    """The units each character takes: septets for GSM, UTF-16 code units for UCS-2."""
    if encoding == GSM:
        return [2 if c in _GSM_EXTENSION else 1 for c in text]
    return [2 if ord(c) > 0xFFFF else 1 for c in text]


def _pack(units: list[int], per_part: int) -> int:
    """Parts needed when no character is split across two parts."""
    parts, used = 1, 0
    for u in units:
        if used + u > per_part:
            parts += 1
            used = 0
        used += u
    return parts


def _fitting(units: list[int], single: int, per_part: int, max_segments: int) -> int:
    """How many leading characters fit in ``max_segments`` segments."""
    if sum(units) <= single:
        return len(units)
    if max_segments == 1:
        total = 0
        for i, u in enumerate(units):
            total += u
            if total > single:
                return i
        return len(units)
    parts, used = 1, 0
    for i, u in enumerate(units):
        if used + u > per_part:
            parts += 1
            used = 0
            if parts > max_segments:
                return i
        used += u
    return len(units)


@dataclass(frozen=True)
class Segments:
    """How a text travels as SMS."""

    encoding: str
    """``"gsm"`` or ``"ucs2"``."""
    segments: int
    """SMS parts it takes (0 for the empty text)."""
    units: int
    """Septets (GSM) or UTF-16 code units (UCS-2)."""
    characters: int
    _units: tuple[int, ...] = field(repr=False, default=())

    def over_by(self, max_segments: int) -> int:
        """Characters to remove from the end for the text to fit in ``max_segments``; 0 if it
        fits already."""
        single, per_part = _LIMITS[self.encoding]
        return self.characters - _fitting(list(self._units), single, per_part, max_segments)


def count(text: str) -> Segments:
    """Count the segments ``text`` takes, in the encoding a gateway would use for it."""
    encoding = GSM if is_gsm(text) else UCS2
    units = _units(text, encoding)
    single, per_part = _LIMITS[encoding]
    total = sum(units)
    if total == 0:
        segments = 0
    elif total <= single:
        segments = 1
    else:
        segments = _pack(units, per_part)
    return Segments(encoding, segments, total, len(text), tuple(units))
