"""Phone numbers: the forms people write read as one E.164 number, strict normalisation for
numbers mup sends to, and masking for logs and IRC."""

import pytest

from mup.phone import InvalidNumber, MaskedNumber, canonical, mask_number, normalise

NORMALISE = [
    # raw, default region, E.164
    ("+44 7911 123456", "", "+447911123456"),
    ("07911 123456", "GB", "+447911123456"),
    ("07911-123-456", "gb", "+447911123456"),
    ("(415) 555-2671", "US", "+14155552671"),
    ("0044 7911 123456", "", "+447911123456"),
    ("+55 11 98765-4321", "GB", "+5511987654321"),
    ("tel:+1-415-555-2671", "", "+14155552671"),
]


@pytest.mark.parametrize("raw,region,e164", NORMALISE)
def test_normalise(raw, region, e164):
    assert normalise(raw, region) == e164


# Real-world written forms, from directories, e-mail signatures and gateways, of several
# countries; each row is one number written several ways.  Fictional ranges (Ofcom's
# 07700 900xxx, North America's 555-01xx) are what documentation and demos use: they must match
# too, though no one can dial them.
WRITTEN = [
    ("GB", "+447700900123", ["+44 (0)7700-900123", "+44 (0) 7700 900123", "0044 7700 900123",
                             "+44 7700 900123", "+447700900123", "07700 900123",
                             "+44-(0)-7700-900123", "tel:+44-7700-900123", "00447700900123"]),
    ("GB", "+442079460958", ["+44 (0)20 7946 0958", "+44(0)20 7946 0958", "020 7946 0958",
                             "(020) 7946 0958"]),
    ("US", "+15550100111", ["+1 (555) 010-0111", "+1 555-010-0111", "+1.555.010.0111",
                            "(555) 010-0111", "555.010.0111", "1-555-010-0111",
                            "011 1 555 010 0111"]),
    ("US", "+14155552671", ["+1 (415) 555-2671", "415-555-2671", "+1 415 555 2671 ext. 12"]),
    ("BR", "+551155551234", ["+55 (11) 5555-1234", "(11) 5555-1234", "+55 11 5555 1234",
                             "0055 11 5555-1234"]),
    ("BR", "+5511987654321", ["+55 (11) 98765-4321", "(11) 98765-4321", "+55 11 9 8765-4321"]),
    ("DE", "+49301234567", ["+49 (0)30 1234567", "+49 (030) 1234567", "030 1234567",
                            "030/1234567", "+49 30 123 45 67", "0049 30 1234567"]),
    ("DE", "+4915112345678", ["+49 (0)151 12345678", "0151 12345678", "0151-1234 5678"]),
    ("FR", "+33612345678", ["+33 (0)6 12 34 56 78", "06 12 34 56 78", "06.12.34.56.78",
                            "0033 6 12 34 56 78"]),
    ("IT", "+390612345678", ["+39 06 1234 5678", "06 1234 5678", "0039 06 12345678"]),
    ("NL", "+31201234567", ["+31 (0)20 123 4567", "020-1234567", "+31 20 123 4567"]),
    ("AU", "+61412345678", ["+61 (0)4 1234 5678", "0412 345 678", "+61 412 345 678"]),
    ("CH", "+41446681800", ["+41 (0) 44 668 18 00", "044 668 18 00", "+41 44 668 18 00"]),
    ("JP", "+81312345678", ["+81 (0)3-1234-5678", "03-1234-5678"]),
    ("RU", "+74951234567", ["+7 (495) 123-45-67", "8 (495) 123-45-67"]),
]

WRITTEN_ROWS = [(region, e164, raw) for region, e164, forms in WRITTEN for raw in forms]


@pytest.mark.parametrize("region,e164,raw", WRITTEN_ROWS)
def test_written_forms_read_as_one_number(region, e164, raw):
    """With the country's region as default, every written form is the same number; forms
    with a country code are read without one."""
    assert canonical(raw, region) == e164
    if raw.removeprefix("tel:").startswith(("+", "00")):
        assert canonical(raw, "") == e164
        assert canonical(raw, "JP" if region != "JP" else "GB") == e164


@pytest.mark.parametrize("region,e164,raw", WRITTEN_ROWS)
def test_written_forms_mask_alike(region, e164, raw):
    """However it is written, a number shows the same mask (when it has a country code; a
    national form needs the region, which masking does not know)."""
    if raw.removeprefix("tel:").startswith(("+", "00")):
        assert mask_number(raw) == mask_number(e164)


def test_canonical_accepts_fictional_ranges_normalise_does_not():
    assert canonical("+44 (0)7700-900123") == "+447700900123"
    with pytest.raises(InvalidNumber):
        normalise("+44 (0)7700-900123")


INVALID = [
    ("", "GB", "empty"),
    ("07911 123456", "", "no country code"),
    ("hello", "GB", "not a phone number"),
    ("+44 12", "", "not"),
    ("+999 1234567", "", "not a phone number"),
    ("+44 1632 96", "", "not"),
    ("tel:", "", "empty"),
]


@pytest.mark.parametrize("raw,region,why", INVALID)
def test_invalid(raw, region, why):
    with pytest.raises(InvalidNumber) as e:
        normalise(raw, region)
    assert why in str(e.value)


@pytest.mark.parametrize("raw", ["", "hello", "+44 12", "+999 1234567", "12"])
def test_canonical_refuses_what_is_not_a_number(raw):
    with pytest.raises(InvalidNumber):
        canonical(raw, "")


# The mask: country code, the country's grouping, the last four digits (two for short
# numbers); every other digit is "*".
MASK = [
    ("+447911123456", "+44 **** **3456"),
    ("+447700900123", "+44 **** **0123"),
    ("+44 (0)7700-900123", "+44 **** **0123"),
    ("+14155552671", "+1 ***-***-2671"),
    ("+15550100111", "+1 ***-***-0111"),
    ("+5511987654321", "+55 ** *****-4321"),
    ("+49301234567", "+49 ** ***4567"),
    ("+33612345678", "+33 * ** ** 56 78"),
    ("+390612345678", "+39 ** **** 5678"),
    ("garbage", "***"),
    ("12345678", "****5678"),
    ("123", "***"),
    ("", "***"),
]


@pytest.mark.parametrize("number,masked", MASK)
def test_mask_number(number, masked):
    assert mask_number(number) == masked


def test_mask_never_shows_the_middle():
    masked = mask_number("+447911123456")
    assert "7911" not in masked and "12" not in masked.replace("+44", "")


def test_masked_number_formats_lazily_as_the_mask():
    number = MaskedNumber("+15550100111")
    assert f"{number}" == str(number) == repr(number) == "+1 ***-***-0111"


@pytest.mark.parametrize("sender", ["+44 (0)7700-900123", "0044 7700 900123",
                                    "+44 7700 900123", "tel:+44-7700-900123"])
def test_an_inbound_sender_in_a_written_form_is_found_in_the_directory(tmp_path, sender):
    """Issue 13: ``+44 (0)7700-900123`` was shown masked though the directory has the number:
    the router asks the directory for the E.164 form of whatever the gateway wrote."""
    from fixtures_inbound import FakeDirectory
    from twisted.internet.defer import Deferred
    from twisted.trial.unittest import SynchronousTestCase

    from mup.gateway import InboundSMS
    from mup.inboundrouter import Router
    from mup.people import Person

    jo = Person("jo", "Jo Demo", "jo@example.com", (("mobile", "+44 7700 900123"),),
                "+447700900123", "")
    router = Router(channels=["#ops"], default_channel="#ops", unknown_senders="mask",
                    region="", directory=FakeDirectory([jo]), routes=None,
                    is_present=lambda nick: False)
    d = Deferred.fromCoroutine(router.route(InboundSMS("kannel", "1", sender, "4242", "hi", 0)))
    assert SynchronousTestCase().successResultOf(d).sender == "jo"


SAME = [
    ("+44 (0)7700 900123", "0044 7700 900123", "", True),
    ("+44 (0)7700 900123", "+447700900123", "", True),
    ("07700 900123", "+44 7700 900123", "GB", True),
    ("+1 (555) 010-0111", "+1 555 010 0112", "", False),
    ("+55 11 5555 1234", "011 5555 1234", "", True),      # no region: trailing digits agree
    ("5555 1234", "+55 11 5555 1234", "", True),
    ("1234", "+55 11 5555 1234", "", False),              # too few digits to tell
    ("+44 (0)7700 900123", "+33 7700 900123", "", False),
    ("", "", "", False),
]


@pytest.mark.parametrize("a,b,region,same", SAME)
def test_same_number(a, b, region, same):
    from mup.phone import same_number

    assert same_number(a, b, region) is same
    assert same_number(b, a, region) is same
