"""Phone numbers: read the forms people write, normalise to E.164, and mask for logs and IRC.

People and gateways write one number many ways: ``+44 (0)7700-900123``, ``0044 7700 900123``,
``+1 (555) 010-0111``, ``tel:+1-555-010-0111``, ``+49 (0)30 1234567``.  :func:`canonical`
reads them all as the same E.164 number (phonenumbers does the country-specific part: the
``(0)`` trunk prefix, ``00``/``011`` exits, national formats in ``default_region``), and is what
inbound senders are matched and masked by.  :func:`normalise` is stricter: it also wants a
number that phonenumbers knows to be in service, for numbers mup sends to.

A number is personal data: below debug level logs show it masked, and so does anything that
shows an unknown sender's number on IRC.  The mask keeps the country code, the country's
grouping and the last four digits (two for numbers of under eight digits); every other digit
is a ``*``: ``+447700900123`` -> ``+44 **** **0123``, ``+15550100111`` -> ``+1 ***-***-0111``.
"""

from __future__ import annotations

import functools

import phonenumbers

__all__ = ["InvalidNumber", "MaskedNumber", "canonical", "mask_number", "normalise",
           "same_number"]


class InvalidNumber(ValueError):
    """A number that cannot be dialled; ``str()`` says why, in words a user can act on."""


def normalise(raw: str, default_region: str = "") -> str:
    """``raw`` as E.164 (``+447911123456``), if it is a valid number.  Numbers without ``+``
    (or ``00``) are read in ``default_region`` (ISO 3166 code such as ``GB``); with no region
    they are refused."""
    return _normalise(raw, default_region)


def canonical(raw: str, default_region: str = "") -> str:
    """The E.164 number ``raw`` is a written form of, for matching and masking: like
    :func:`normalise`, but any number of a possible length for its country is accepted, so
    that a new or fictional range (``+44 7700 900123``, ``+1 555-010-0111``) still matches
    the directory however it is written."""
    return _canonical(raw, default_region)


@functools.lru_cache(maxsize=4096)
def _normalise(raw: str, default_region: str) -> str:
    """phonenumbers takes ~60 us a number; the same few come back again and again (the
    directory's mobiles, the numbers texting us).  Refusals raise, so they are not kept."""
    parsed = _parse(raw, default_region)
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber("it is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@functools.lru_cache(maxsize=4096)
def _canonical(raw: str, default_region: str) -> str:
    parsed = _parse(raw, default_region)
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber("it is not a possible phone number (wrong length)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


SUFFIX_DIGITS = 8
"""Numbers that do not read as one (no country code, no region) are the same when their digits
agree on at least this many trailing digits (``+55 11 5555 1234`` and ``011 5555 1234``)."""


def same_number(a: str, b: str, default_region: str = "") -> bool:
    """Whether two written numbers are one: equal E.164 where both read as numbers (so
    ``+44 (0)7700 900123`` is ``0044 7700 900123``); otherwise their digits, a ``(0)`` trunk
    prefix and leading zeros left out, are equal or agree on :data:`SUFFIX_DIGITS` trailing
    digits.  For matching a directory's values against a sender."""
    try:
        return canonical(a, default_region) == canonical(b, default_region)
    except InvalidNumber:
        pass
    x, y = _bare_digits(a), _bare_digits(b)
    if len(x) > len(y):
        x, y = y, x
    return bool(x) and (x == y or (len(x) >= SUFFIX_DIGITS and y.endswith(x)))


def _bare_digits(text: str) -> str:
    text = (text or "").replace("(0)", "")
    return "".join(c for c in text if c.isdigit()).lstrip("0")


def _parse(raw: str, default_region: str) -> phonenumbers.PhoneNumber:
    text = (raw or "").strip()
    if text[:4].lower() == "tel:":          # RFC 3966, as some directories store numbers
        text = text[4:].split(";", 1)[0].strip()
    if not text:
        raise InvalidNumber("the number is empty")
    if text.startswith("00"):
        text = "+" + text[2:]
    region = default_region.upper() or None
    if not text.startswith("+") and region is None:
        raise InvalidNumber("the number has no country code (+...) and no default region is "
                            "configured")
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as e:
        raise InvalidNumber(f"it is not a phone number ({_parse_reason(e)})") from None


def _parse_reason(e: phonenumbers.NumberParseException) -> str:
    return {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
        phonenumbers.NumberParseException.NOT_A_NUMBER: "not a number",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        phonenumbers.NumberParseException.TOO_LONG: "too long",
    }.get(e.error_type, "unreadable")


def mask_number(number: str) -> str:
    """A number for logs and display (see the module): ``+447700900123`` ->
    ``+44 **** **0123``.  Any written form of the number masks the same way.  Anything that
    does not read as a number keeps only its last digits (``****5678``), or none (``***``)."""
    try:
        parsed = phonenumbers.parse(canonical(number))
    except InvalidNumber:
        try:    # not a possible number, but it may still say its country
            parsed = _parse(number, "")
        except InvalidNumber:
            digits = "".join(c for c in (number or "") if c.isdigit())
            return _mask_digits(digits) if len(digits) >= 4 else "***"
    country = f"+{parsed.country_code}"
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    national = formatted[len(country):].strip()
    return f"{country} {_mask_digits(national)}"


def _mask_digits(text: str) -> str:
    """Every digit of ``text`` but the last four (two when it has fewer than eight) as
    ``*``; spaces and hyphens kept, anything else left out."""
    total = sum(c.isdigit() for c in text)
    keep = 4 if total >= 8 else 2
    out, seen = [], 0
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else "*")
        elif c in " -":
            out.append(c)
    return "".join(out)


class MaskedNumber:
    """A number for a log event: shows as :func:`mask_number` (never the number itself),
    masked only when the event is formatted, so filtered-out info events cost no
    phonenumbers parsing on the sending path."""

    __slots__ = ("_masked", "_number")

    def __init__(self, number: str) -> None:
        self._number = number
        self._masked: str | None = None

    def __str__(self) -> str:
        if self._masked is None:
            self._masked = mask_number(self._number)
        return self._masked

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)
