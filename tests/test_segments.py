"""Segment counting, table-driven: every boundary of GSM 7-bit and UCS-2."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mup.segments import GSM, UCS2, count, is_gsm

CASES = [
    # text, encoding, segments, units
    ("", GSM, 0, 0),
    ("a", GSM, 1, 1),
    ("a" * 160, GSM, 1, 160),
    ("a" * 161, GSM, 2, 161),
    ("a" * 306, GSM, 2, 306),
    ("a" * 307, GSM, 3, 307),
    ("a" * 459, GSM, 3, 459),
    ("a" * 460, GSM, 4, 460),
    ("€" * 80, GSM, 1, 160),
    ("€" * 81, GSM, 2, 162),
    ("a" + "€" * 80, GSM, 2, 161),
    # 152 septets then an extension char: it moves whole to part 2 (152 | 2).
    ("a" * 152 + "{" + "a" * 10, GSM, 2, 164),
    # 152 + "{" + 152: would fit 306 septets if split, but the escape may not be cut.
    ("a" * 152 + "{" + "a" * 152, GSM, 3, 306),
    ("^{}\\[~]|\f", GSM, 1, 18),
    ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà\n\r", GSM, 1, 44),
    ("joe> Where are you? We're waiting!", GSM, 1, 34),
    ("ç", UCS2, 1, 1),  # lower-case c-cedilla is not GSM (only Ç is)
    ("á", UCS2, 1, 1),
    ("Привет", UCS2, 1, 6),
    ("a" * 69 + "ж", UCS2, 1, 70),
    ("a" * 70 + "ж", UCS2, 2, 71),
    ("ж" * 134, UCS2, 2, 134),
    ("ж" * 135, UCS2, 3, 135),
    ("😀" * 35, UCS2, 1, 70),
    ("😀" * 36, UCS2, 2, 72),
    # 66 units then an astral char: the surrogate pair is not split (66 | 2).
    ("ж" * 66 + "😀" + "ж" * 66, UCS2, 3, 134),
    ("joe> ça va? €", UCS2, 1, 13),
    ("\x02bold\x02", UCS2, 1, 6),
]


@pytest.mark.parametrize("text,encoding,segments,units", CASES)
def test_count(text, encoding, segments, units):
    result = count(text)
    assert (result.encoding, result.segments, result.units) == (encoding, segments, units)
    assert result.characters == len(text)


OVER = [
    # text, max_segments, characters over
    ("a" * 160, 1, 0),
    ("a" * 161, 1, 1),
    ("a" * 459, 3, 0),
    ("a" * 470, 3, 11),
    ("€" * 81, 1, 1),
    ("ж" * 201, 3, 0),
    ("ж" * 210, 3, 9),
    ("😀" * 36, 1, 1),
    ("a" * 152 + "{" + "a" * 152, 2, 1),
]


@pytest.mark.parametrize("text,max_segments,over", OVER)
def test_over_by(text, max_segments, over):
    result = count(text)
    assert result.over_by(max_segments) == over
    fitting = text[:len(text) - over]
    assert count(fitting).segments <= max_segments
    if over:
        assert count(text[:len(text) - over + 1]).segments > max_segments


def test_is_gsm():
    assert is_gsm("Hello @ 10€ [ok]")
    assert not is_gsm("Hello ç")


@given(st.text(max_size=600))
def test_segments_match_greedy_split(text):
    """Splitting the text into parts by hand gives the counted number of parts, each in limits."""
    result = count(text)
    if not text:
        assert result.segments == 0
        return
    single, per_part = (160, 153) if result.encoding == GSM else (70, 67)
    units = [count(c).units if result.encoding == GSM else (2 if ord(c) > 0xFFFF else 1)
             for c in text]
    if sum(units) <= single:
        assert result.segments == 1
        return
    parts, used = [], 0
    for u in units:
        if used + u > per_part:
            parts.append(used)
            used = 0
        used += u
    parts.append(used)
    assert result.segments == len(parts)
    assert all(p <= per_part for p in parts)
    assert result.units == sum(units)
    assert result.over_by(result.segments) == 0
