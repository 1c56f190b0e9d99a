"""Phone numbers: normalise what the directory holds to E.164, and mask numbers for logs and IRC.

A number is personal data: below debug level logs show it masked (``+44 79** ***456``), and so
does anything that shows an unknown sender's number on IRC.
"""

from __future__ import annotations

import functools

import phonenumbers

__all__ = ["InvalidNumber", "mask_number", "normalise"]


class InvalidNumber(ValueError):
    """A number that cannot be dialled; ``str()`` says why, in words a user can act on."""


def normalise(raw: str, default_region: str = "") -> str:
    """``raw`` as E.164 (``+447911123456``).  Numbers without ``+`` are read in
    ``default_region`` (ISO 3166 code such as ``GB``); with no region they are refused."""
    return _normalise(raw, default_region)


@functools.lru_cache(maxsize=4096)
def _normalise(raw: str, default_region: str) -> str:
    """phonenumbers takes ~60 us a number; the same few come back again and again (the
    directory's mobiles, the numbers texting us).  Refusals raise, so they are not kept."""
    text = (raw or "").strip()
    if not text:
        raise InvalidNumber("the number is empty")
    if text.startswith("00"):
        text = "+" + text[2:]
    region = default_region.upper() or None
    if not text.startswith("+") and region is None:
        raise InvalidNumber("the number has no country code (+...) and no default region is "
                            "configured")
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as e:
        raise InvalidNumber(f"it is not a phone number ({_parse_reason(e)})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber("it is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _parse_reason(e: phonenumbers.NumberParseException) -> str:
    return {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
        phonenumbers.NumberParseException.NOT_A_NUMBER: "not a number",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        phonenumbers.NumberParseException.TOO_LONG: "too long",
    }.get(e.error_type, "unreadable")


def mask_number(number: str) -> str:
    """A number for logs and display: country code, first two and last three digits kept,
    grouped as usual for the country: ``+447911123456`` -> ``+44 79** ***456``.

    Anything that does not parse keeps only its last three digits (``***123``)."""
    text = "".join(c for c in (number or "") if c.isdigit() or c == "+")
    try:
        parsed = phonenumbers.parse(text, None)
        formatted = phonenumbers.format_number(
            parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        country = f"+{parsed.country_code}"
    except phonenumbers.NumberParseException:
        digits = "".join(c for c in text if c.isdigit())
        return "*" * max(len(digits) - 3, 0) + digits[-3:] if len(digits) > 3 else "***"
    national = formatted[len(country):]
    total = sum(c.isdigit() for c in national)
    keep_head, keep_tail = (2, 3) if total > 6 else (0, min(2, total))
    out, seen = [], 0
    for c in national:
        if c.isdigit():
            seen += 1
            out.append(c if seen <= keep_head or seen > total - keep_tail else "*")
        elif c in " -":
            out.append(c)
    return country + "".join(out)
