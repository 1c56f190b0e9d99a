"""Parse and authenticate what SMS gateways post to us: inbound SMS and delivery reports.

These are pure functions over the parts of an HTTP request (:class:`Posted`), so they can be
tested and fuzzed without a server.  Authentication comes first and compares in constant time;
any problem is a :class:`PostRefused` carrying the HTTP status and a one-line reason.  Odd bytes
are decoded or replaced, never a crash.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl, unquote_to_bytes

from mup.gateway import DeliveryReport, InboundSMS

__all__ = ["Posted", "PostRefused", "Forbidden", "Malformed", "check_token",
           "decode_text", "kannel_mo", "kannel_dlr", "twilio_signature", "check_twilio_signature",
           "twilio_sms", "twilio_status", "form_params", "MAX_FIELDS"]

MAX_FIELDS = 100
"""More form or query fields than this is a malformed request."""

_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
_NUMBER = re.compile(r"[A-Za-z0-9+ ._()-]{1,64}")


class PostRefused(Exception):
    """A gateway's post is refused: ``code`` is the HTTP status, ``reason`` a one-line text."""

    code = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Forbidden(PostRefused):
    """Wrong or missing token or signature."""

    code = 403


class Malformed(PostRefused):
    """Authenticated, but not something we can read."""

    code = 400



@dataclass(frozen=True)
class Posted:
    """What a gateway sent: the raw URI (path and query, as received), headers and body."""

    method: str
    uri: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-case header names."""
    body: bytes = b""

    @property
    def path(self) -> bytes:
        return self.uri.split(b"?", 1)[0]

    @property
    def query(self) -> bytes:
        parts = self.uri.split(b"?", 1)
        return parts[1] if len(parts) > 1 else b""

    def query_params(self) -> dict[str, bytes]:
        """The query string's parameters, percent-decoded to raw bytes (last value wins)."""
        return _params(self.query)


def _params(data: bytes) -> dict[str, bytes]:
    """Percent-decode ``a=1&b=2`` to raw bytes (``parse_qsl`` would decode them as UTF-8).

    On every post a gateway makes, so: fields without ``%`` or ``+`` are taken as they are,
    and the test is ``int in bytes`` (a plain memchr; ``b"%" in`` goes through the buffer
    protocol and costs several times more)."""
    fields = data.split(b"&")
    if len(fields) > MAX_FIELDS and sum(1 for f in fields if f) > MAX_FIELDS:
        raise Malformed(f"more than {MAX_FIELDS} parameters")
    params = {}
    for item in fields:
        if not item:
            continue
        name, _, value = item.partition(b"=")
        if _PERCENT in value or _PLUS in value:
            value = unquote_to_bytes(value.replace(b"+", b" "))
        if _PERCENT in name or _PLUS in name:
            name = unquote_to_bytes(name.replace(b"+", b" "))
        params[name.decode("utf-8", "replace")] = value
    return params


_PERCENT, _PLUS = ord("%"), ord("+")


def form_params(body: bytes) -> list[tuple[str, str]]:
    """A form-encoded body as (name, value) pairs of text; bad UTF-8 is replaced."""
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                          max_num_fields=MAX_FIELDS, encoding="utf-8", errors="replace")
    except ValueError:
        raise Malformed(f"more than {MAX_FIELDS} parameters") from None
    return pairs


def check_token(given: bytes | str | None, expected: str) -> None:
    """Raise :class:`Forbidden` unless ``given`` equals the configured token (constant time).
    An empty configured token refuses everything."""
    if isinstance(given, str):
        given = given.encode("utf-8", "replace")
    ok = hmac.compare_digest(given or b"", expected.encode("utf-8"))
    if not expected or given is None or not ok:
        raise Forbidden("wrong or missing token")


# Charsets we decode; anything else is read as UTF-8 with replacement characters.
_UTF16 = {"ucs-2", "ucs2", "utf-16", "utf16", "utf-16be", "utf16be", "utf-16-be",
          "iso-10646-ucs-2", "unicodebig", "unicode"}
_KNOWN = {"utf-8", "ascii", "latin-1", "iso8859-15", "cp1252", "utf-16-le", "utf-16-be"} | {
    f"iso8859-{n}" for n in range(1, 17)} | {f"cp125{n}" for n in range(9)}


def decode_text(raw: bytes, charset: str = "", coding: str = "") -> str:
    """Decode an SMS text as the gateway labelled it; never raises.

    Kannel sends UCS-2 messages as raw UTF-16BE bytes (``charset=UTF-16BE``, ``coding=2``)
    unless ``mo-recode`` is on; undeclared or unknown charsets are read as UTF-8."""
    name = charset.strip().lower()
    if name in _UTF16 or (not name and coding.strip() == "2"):
        text = raw.decode("utf-16-be", "replace")
        return text[1:] if text.startswith("\ufeff") else text
    try:
        codec = codecs.lookup(name).name if name else "utf-8"
    except LookupError:
        codec = "utf-8"
    if codec not in _KNOWN:
        codec = "utf-8"
    return raw.decode(codec, "replace")


def _field(params: Mapping[str, bytes], name: str) -> str:
    return params.get(name, b"").decode("utf-8", "replace").strip()


def _message_id(value: str, what: str) -> str:
    if not value:
        raise Malformed(f"missing {what}")
    if not _ID.fullmatch(value):
        raise Malformed(f"{what} is not a plain identifier of at most 128 characters")
    return value


def _number(value: str, what: str) -> str:
    if not value:
        raise Malformed(f"missing {what}")
    if not _NUMBER.fullmatch(value):
        raise Malformed(f"{what} is not a phone number or sender id")
    return value


def _charset_of(content_type: str) -> str:
    m = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", content_type, re.I)
    return m.group(1) if m else ""


def kannel_mo(posted: Posted, token: str, now: float) -> InboundSMS:
    """An SMS from Kannel's sms-service get-url (GET, text in the query) or post-url (POST,
    text in the body; the other fields in the query or the X-Kannel-* headers)."""
    params = posted.query_params()
    check_token(params.get("token"), token)
    headers = posted.headers
    content_type = headers.get("content-type", "")
    charset = _field(params, "charset")
    coding = _field(params, "coding") or headers.get("x-kannel-coding", "").strip()
    raw_text = params.get("text", b"")
    if posted.method == "POST" and posted.body:
        if content_type.lower().startswith("application/x-www-form-urlencoded"):
            form = _params(posted.body)
            params = {**params, **form}
            raw_text = form.get("text", raw_text)
            charset = _field(params, "charset") or charset
        else:
            raw_text = posted.body
            charset = _charset_of(content_type) or charset
    sender = _field(params, "from") or headers.get("x-kannel-from", "").strip()
    recipient = _field(params, "to") or headers.get("x-kannel-to", "").strip()
    extra = {}
    if coding:
        extra["coding"] = coding[:8]
    smsc = _field(params, "smsc") or headers.get("x-kannel-smsc", "").strip()
    if smsc:
        extra["smsc"] = smsc[:64]
    return InboundSMS(
        gateway="kannel",
        message_id=_message_id(_field(params, "id"), "id (Kannel's %I)"),
        sender=_number(sender, "from"),
        recipient=_number(recipient, "to") if recipient else "",
        text=decode_text(raw_text, charset, coding),
        received=now,
        extra=extra,
    )


# Kannel dlr types: 1 delivered, 2 non-delivered, 4 queued, 8 SMSC ack, 16 SMSC reject.
_KANNEL_DLR = {1: ("delivered", ""), 2: ("failed", "the phone network could not deliver it"),
               4: ("pending", ""), 8: ("pending", ""),
               16: ("failed", "the SMS centre refused it")}


def kannel_dlr(posted: Posted, token: str) -> tuple[DeliveryReport, str]:
    """A delivery report from Kannel's dlr-url
    (``/kannel/dlr?ref=<reference>&status=%d&token=...``, optionally ``&answer=%A``).
    Returns the report and the status code as received (part of its dedupe key)."""
    params = posted.query_params()
    if posted.method == "POST" and posted.headers.get("content-type", "").lower().startswith(
            "application/x-www-form-urlencoded"):
        params = {**params, **_params(posted.body)}
    check_token(params.get("token"), token)
    ref = _message_id(_field(params, "ref"), "ref")
    status_text = _field(params, "status")
    if not status_text.isdigit() or len(status_text) > 4:
        raise Malformed("status is not a Kannel dlr type (%d)")
    state, reason = _KANNEL_DLR.get(int(status_text), ("pending", ""))
    answer = _field(params, "answer")
    if state == "failed" and answer:
        reason = f"{reason} ({answer[:120]})"
    return DeliveryReport("kannel", ref, state, reason), status_text


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 over the URL followed by every POST
    parameter's name and value, sorted by name (then value), without separators."""
    data = url + "".join(k + v for k, v in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    """The URL as configured, plus the same with the default port added or removed: Twilio's
    own validators accept both, since what Twilio signs depends on how the URL was written."""
    m = re.match(r"(https?)://([^/:?#]+)(:\d+)?(.*)$", url, re.S)
    if not m:
        return [url]
    scheme, host, port, rest = m.groups()
    default = ":443" if scheme == "https" else ":80"
    other = f"{scheme}://{host}{rest}" if port == default else (
        f"{scheme}://{host}{default}{rest}" if port is None else None)
    return [url] + ([other] if other else [])


def check_twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]],
                           signature: str | None) -> None:
    """Raise :class:`Forbidden` unless ``signature`` is Twilio's for this URL and body."""
    if not auth_token or not signature:
        raise Forbidden("missing X-Twilio-Signature" if auth_token else
                        "no [sms.twilio] auth_token configured")
    given = signature.strip().encode("utf-8", "replace")
    ok = False
    for candidate in _port_variants(url):
        expected = twilio_signature(auth_token, candidate, params).encode("ascii")
        ok |= hmac.compare_digest(given, expected)
    if not ok:
        raise Forbidden("wrong X-Twilio-Signature")


def _twilio_authenticated(posted: Posted, auth_token: str, public_url: str) -> dict[str, str]:
    if posted.method != "POST":
        raise Malformed("Twilio posts its webhooks")
    params = form_params(posted.body)
    url = public_url.rstrip("/") + posted.uri.decode("utf-8", "replace")
    check_twilio_signature(auth_token, url, params, posted.headers.get("x-twilio-signature"))
    return {k: v.strip() for k, v in params}


def twilio_sms(posted: Posted, auth_token: str, public_url: str, now: float) -> InboundSMS:
    """An inbound SMS from Twilio's messaging webhook (``POST /twilio/sms``)."""
    params = _twilio_authenticated(posted, auth_token, public_url)
    extra = {}
    media = params.get("NumMedia", "0")
    if media.isdigit() and int(media) > 0:
        extra["media"] = media[:4]
    return InboundSMS(
        gateway="twilio",
        message_id=_message_id(params.get("MessageSid", "") or params.get("SmsSid", ""),
                               "MessageSid"),
        sender=_number(params.get("From", ""), "From"),
        recipient=_number(params["To"], "To") if params.get("To") else "",
        text=params.get("Body", ""),
        received=now,
        extra=extra,
    )


_TWILIO_FINAL = {"delivered": "delivered", "read": "delivered", "undelivered": "failed",
                 "failed": "failed"}


def twilio_status(posted: Posted, auth_token: str, public_url: str
                  ) -> tuple[DeliveryReport, str]:
    """A StatusCallback from Twilio (``POST /twilio/status``): the report and the raw
    ``MessageStatus`` (part of its dedupe key)."""
    params = _twilio_authenticated(posted, auth_token, public_url)
    sid = _message_id(params.get("MessageSid", "") or params.get("SmsSid", ""), "MessageSid")
    status = params.get("MessageStatus", "") or params.get("SmsStatus", "")
    if not re.fullmatch(r"[a-z_-]{1,32}", status):
        raise Malformed("missing or odd MessageStatus")
    state = _TWILIO_FINAL.get(status, "pending")
    reason = ""
    if state == "failed":
        code = params.get("ErrorCode", "")
        reason = f"Twilio error {code[:8]}" if code else f"Twilio says {status}"
    return DeliveryReport("twilio", sid, state, reason), status
