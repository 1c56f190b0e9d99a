"""The gateway parsers: Twilio's documented signature example, decoding, and fuzzing."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mup.gateway import DeliveryReport, InboundSMS, from_record, to_record
from mup.gateways.inbound import (
    Forbidden,
    Malformed,
    Posted,
    PostRefused,
    check_twilio_signature,
    decode_text,
    kannel_dlr,
    kannel_mo,
    twilio_signature,
    twilio_sms,
    twilio_status,
)

# Twilio's documented example ("Validating requests" in the security docs): auth token 12345,
# this URL and these POST parameters sign to 0/KCTR6DLpKmkAf8muzZqo1nDgQ=.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"),
              ("From", "+12349013030"), ("To", "+18005551212")]
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilio_documented_example_vector() -> None:
    assert twilio_signature("12345", DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    check_twilio_signature("12345", DOC_URL, list(reversed(DOC_PARAMS)), DOC_SIGNATURE)


@pytest.mark.parametrize("token, url, signature", [
    ("12346", DOC_URL, DOC_SIGNATURE),
    ("12345", DOC_URL + "&x=1", DOC_SIGNATURE),
    ("12345", DOC_URL, DOC_SIGNATURE.lower()),
    ("12345", DOC_URL, ""),
    ("12345", DOC_URL, None),
    ("", DOC_URL, DOC_SIGNATURE),
])
def test_twilio_example_vector_refuses_any_change(token, url, signature) -> None:
    with pytest.raises(Forbidden):
        check_twilio_signature(token, url, DOC_PARAMS, signature)


def test_twilio_url_with_or_without_default_port() -> None:
    signed = twilio_signature("t", "https://mup.example.com:443/twilio/sms", [("a", "b")])
    check_twilio_signature("t", "https://mup.example.com/twilio/sms", [("a", "b")], signed)


@pytest.mark.parametrize("raw, charset, coding, text", [
    (b"hello", "UTF-8", "0", "hello"),
    (b"caf\xc3\xa9", "", "", "café"),
    (b"caf\xe9", "ISO-8859-1", "0", "café"),
    (b"\x80", "WINDOWS-1252", "", "€"),
    ("Olá".encode("utf-16-be"), "UTF-16BE", "2", "Olá"),
    ("Olá".encode("utf-16-be"), "", "2", "Olá"),
    ("\ufeffHi".encode("utf-16-be"), "UCS-2", "2", "Hi"),
    ("😀".encode("utf-16-be"), "UTF-16BE", "2", "😀"),
    (b"\xd8\x3d", "UTF-16BE", "2", "\ufffd"),          # a lone surrogate
    (b"\x00h\x00", "UTF-16BE", "2", "h\ufffd"),        # odd length
    (b"ok\xff", "UTF-8", "0", "ok\ufffd"),
    (b"ok", "rot13", "", "ok"),                         # not a text codec: read as UTF-8
    (b"ok\xff", "no-such-charset", "", "ok\ufffd"),
])
def test_decode_text(raw: bytes, charset: str, coding: str, text: str) -> None:
    assert decode_text(raw, charset, coding) == text


def test_records_round_trip() -> None:
    sms = InboundSMS("kannel", "id1", "+1555", "4242", "hi\r\n", 12.5, {"coding": "0"})
    key, record = to_record(sms)
    assert key == "kannel:id1" and from_record(record) == sms
    report = DeliveryReport("twilio", "SM1", "failed", "Twilio error 30003")
    key, record = to_record(report, "undelivered")
    assert key == "twilio:report:SM1:undelivered" and from_record(record) == report
    with pytest.raises(ValueError):
        from_record({"kind": "sms"})


# Fuzzing: whatever arrives, a parser returns a record or raises PostRefused; nothing else.

TOKEN = "tok"
raw_bytes = st.binary(max_size=300)
field_value = st.one_of(raw_bytes, st.text(max_size=40).map(lambda t: t.encode("utf-8")))
names = st.sampled_from(["from", "to", "text", "id", "charset", "coding", "token", "ref",
                         "status", "answer", "smsc", "x"])


@st.composite
def queries(draw) -> bytes:
    params = draw(st.lists(st.tuples(names, field_value), max_size=10))
    if draw(st.booleans()):
        params.append(("token", TOKEN.encode()))
    if draw(st.booleans()):
        return draw(raw_bytes).replace(b"?", b"")
    return b"&".join(n.encode() + b"=" + quote_from_bytes(v).encode() for n, v in params)


@st.composite
def posts(draw) -> Posted:
    method = draw(st.sampled_from(["GET", "POST"]))
    headers = draw(st.dictionaries(
        st.sampled_from(["content-type", "x-kannel-from", "x-kannel-to", "x-kannel-coding",
                         "x-twilio-signature"]),
        st.text(max_size=60), max_size=5))
    return Posted(method, b"/p?" + draw(queries()), headers, draw(raw_bytes))


def _no_control_in_ids(item: InboundSMS | DeliveryReport) -> None:
    for value in (item.message_id, getattr(item, "sender", "")):
        assert not any(ord(c) < 32 or c == "\x7f" for c in value)


@settings(max_examples=400, deadline=None)
@given(posts())
def test_fuzz_kannel_mo(posted: Posted) -> None:
    try:
        sms = kannel_mo(posted, TOKEN, 1.0)
    except PostRefused as e:
        assert e.code in (400, 403) and "\n" not in e.reason
        return
    assert isinstance(sms.text, str)
    _no_control_in_ids(sms)
    key, record = to_record(sms)
    assert from_record(record) == sms


@settings(max_examples=300, deadline=None)
@given(posts())
def test_fuzz_kannel_dlr(posted: Posted) -> None:
    try:
        report, status = kannel_dlr(posted, TOKEN)
    except PostRefused as e:
        assert e.code in (400, 403)
        return
    assert report.state in ("delivered", "failed", "pending") and status.isdigit()
    _no_control_in_ids(report)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=40)), max_size=12),
       st.sampled_from(["/twilio/sms", "/twilio/status"]), st.booleans())
def test_fuzz_twilio_signed_forms(params, path, sign) -> None:
    body = "&".join(quote_from_bytes(k.encode()) + "=" + quote_from_bytes(v.encode())
                    for k, v in params).encode()
    signature = twilio_signature("tok", "https://h" + path, params) if sign else "x"
    posted = Posted("POST", path.encode(), {"x-twilio-signature": signature}, body)
    parse = twilio_sms if path == "/twilio/sms" else twilio_status
    try:
        if parse is twilio_sms:
            item = twilio_sms(posted, "tok", "https://h", 1.0)
        else:
            item, _ = twilio_status(posted, "tok", "https://h")
    except Forbidden:
        assert not sign
        return
    except Malformed:
        assert sign
        return
    assert sign
    _no_control_in_ids(item)


# -- the query/form parser on every Kannel post ------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    (b"", {}),
    (b"a=1&b=2", {"a": b"1", "b": b"2"}),
    (b"text=%23ops+hi%0D%0A", {"text": b"#ops hi\r\n"}),
    (b"from=%2B4477", {"from": b"+4477"}),
    (b"a=1&&a=2&", {"a": b"2"}),                      # empty fields skipped, last value wins
    (b"flag&x=", {"flag": b"", "x": b""}),
    (b"na%6De=v=w", {"name": b"v=w"}),                # only the first = splits
    (b"t=%FF%FE%zz%", {"t": b"\xff\xfe%zz%"}),        # raw bytes kept, bad escapes as they are
    (b"%FF=1", {"\ufffd": b"1"}),
    (b"&" * 500 + b"a=1", {"a": b"1"}),               # empty fields do not count
])
def test_params_table(query: bytes, expected: dict) -> None:
    assert Posted("GET", b"/kannel/mo?" + query).query_params() == expected


def test_params_more_than_max_fields_is_malformed() -> None:
    from mup.gateways.inbound import MAX_FIELDS

    ok = b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS))
    assert len(Posted("GET", b"/?" + ok).query_params()) == MAX_FIELDS
    with pytest.raises(Malformed):
        Posted("GET", b"/?" + ok + b"&one=more").query_params()


@given(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12)), max_size=20))
def test_params_read_back_what_was_encoded(pairs: list[tuple[bytes, bytes]]) -> None:
    query = b"&".join(quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode()
                      for k, v in pairs)
    expected = {k.decode("utf-8", "replace"): v for k, v in pairs}
    assert Posted("GET", b"/?" + query).query_params() == expected
