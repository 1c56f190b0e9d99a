"""Number normalisation to E.164 and masking for logs."""

import pytest

from mup.phone import InvalidNumber, mask_number, normalise

NORMALISE = [
    # raw, default region, E.164
    ("+44 7911 123456", "", "+447911123456"),
    ("07911 123456", "GB", "+447911123456"),
    ("07911-123-456", "gb", "+447911123456"),
    ("(415) 555-2671", "US", "+14155552671"),
    ("0044 7911 123456", "", "+447911123456"),
    ("+55 11 98765-4321", "GB", "+5511987654321"),
]


@pytest.mark.parametrize("raw,region,e164", NORMALISE)
def test_normalise(raw, region, e164):
    assert normalise(raw, region) == e164


INVALID = [
    ("", "GB", "empty"),
    ("07911 123456", "", "no country code"),
    ("hello", "GB", "not a phone number"),
    ("+44 12", "", "not"),
    ("+999 1234567", "", "not a phone number"),
    ("+44 1632 96", "", "not"),
]


@pytest.mark.parametrize("raw,region,why", INVALID)
def test_invalid(raw, region, why):
    with pytest.raises(InvalidNumber) as e:
        normalise(raw, region)
    assert why in str(e.value)


MASK = [
    ("+447911123456", "+44 79** ***456"),
    ("+14155552671", "+1 41*-***-*671"),
    ("+5511987654321", "+55 11 *****-*321"),
    ("garbage", "***"),
    ("12345678", "*****678"),
    ("", "***"),
]


@pytest.mark.parametrize("number,masked", MASK)
def test_mask_number(number, masked):
    assert mask_number(number) == masked


def test_mask_never_shows_the_middle():
    masked = mask_number("+447911123456")
    assert "123" not in masked and "7911" not in masked
