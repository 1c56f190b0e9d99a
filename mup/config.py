"""The configuration file: one TOML schema, validated at start-up, documented from itself.

Every key mup reads is declared in :data:`SCHEMA` with its type, default and a line of
documentation.  ``docs/configuration.md`` is generated from it (``python -m mup.config``) and a
test fails when the two disagree.  Keys are a public contract: add keys, never rename or drop one.

Secrets (keys marked ``secret``) may also come from the environment or from a file, so they need
not sit in the config file:

* ``MUP_<SECTION>_<KEY>`` in the environment, e.g. ``MUP_SMS_KANNEL_PASSWORD``;
* ``<key>_file = "/path"`` in the same section, e.g. ``password_file = "/run/secrets/kannel"``
  (the file's content, with the trailing newline stripped).

The environment wins over the file, which wins over the value in the config.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

__all__ = ["Config", "ConfigError", "Key", "SCHEMA", "dumps", "load", "parse", "parse_duration",
           "toml_value"]


class ConfigError(Exception):
    """A configuration problem, described in one line that names the file and the key."""


_REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One configuration key: its name, type, default and what it does."""

    name: str
    type: type | tuple[type, ...]
    default: Any
    doc: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    """Returns an error message for a bad value, or None."""
    items: builtins.type | None = None
    """For lists: the type of each item."""

    def type_name(self) -> str:
        if self.type is list:
            return f"list of {_TYPE_NAMES[self.items or str]}"
        if isinstance(self.type, tuple):
            return " or ".join(_TYPE_NAMES[t] for t in self.type)
        return _TYPE_NAMES[self.type]


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list"}


def parse_duration(text: str) -> float:
    """Parse ``"90s"``, ``"15m"``, ``"12h"``, ``"2d"`` or a plain number of seconds into seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. '90s', '15m', '12h', '2d')")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _duration(value: str) -> str | None:
    try:
        parse_duration(value)
    except ValueError as e:
        return str(e)
    return None


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _request_line(value: int) -> str | None:
    return None if 64 <= value <= 16384 else "must be between 64 and 16384"


def _endpoint(value: str) -> str | None:
    if value and ":" not in value:
        return f"not a Twisted endpoint string: {value!r} (e.g. 'tcp:host=127.0.0.1:port=6667')"
    return None


def _channel_list(value: list[str]) -> str | None:
    for ch in value:
        if not ch or ch[0] not in "#&+!" or any(c in ch for c in " ,\x07\r\n\0"):
            return f"not a channel name: {ch!r}"
    return None


def _channel(value: str) -> str | None:
    return _channel_list([value]) if value else None


SCHEMA: dict[str, tuple[str, list[Key]]] = {
    "irc": (
        "The IRC connection.",
        [
            Key("endpoint", str, "tcp:host=127.0.0.1:port=6667",
                "Twisted client endpoint string; `tls:host=irc.example.com:port=6697` verifies the "
                "server certificate (add `:certificate=...:privateKey=...` for SASL EXTERNAL).",
                check=_endpoint),
            Key("nick", str, "mup", "The bot's nick."),
            Key("alternate_nicks", list, [], "Nicks to try, in order, when `nick` is in use "
                "(the bot regains `nick` when it frees up).", items=str),
            Key("username", str, "mup", "The user name sent in USER."),
            Key("realname", str, "mup, the IRC/LDAP/SMS bridge", "The real name sent in USER."),
            Key("password", str, "", "Server password (PASS), if the server needs one.",
                secret=True),
            Key("channels", list, [], "Channels to join (and the only ones an INVITE is accepted "
                "for).", items=str, check=_channel_list),
            Key("prefix", str, "@", "Command prefix: `@poke x`. `mup: poke x`, `mup, poke x` and "
                "private messages always work."),
            Key("sasl_mechanism", str, "", "SASL mechanism: `PLAIN` (default when "
                "`sasl_username` is set) or `EXTERNAL` (TLS client certificate).",
                choices=("", "PLAIN", "EXTERNAL")),
            Key("sasl_username", str, "", "Services account for SASL PLAIN."),
            Key("sasl_password", str, "", "Password for SASL PLAIN.", secret=True),
            Key("nickserv_password", str, "", "Password for `NickServ IDENTIFY`, the fallback when "
                "SASL is not available.", secret=True),
            Key("line_burst", int, 5, "Output flood control: lines sent at once before the rate "
                "applies.", check=_positive),
            Key("line_rate", float, 1.0, "Output flood control: lines per second after the burst; "
                "0 turns output throttling off (benchmarks, private servers). 1/s is what "
                "InspIRCd's and Solanum's (Libera's) default classes process without queueing.",
                check=_non_negative),
            Key("command_burst", int, 5, "Per-user command limit: commands accepted at once.",
                check=_positive),
            Key("command_rate", float, 0.5, "Per-user command limit: commands per second after "
                "the burst; 0 turns the limit off.", check=_non_negative),
            Key("ping_interval", float, 60.0, "Seconds of silence from the server before the bot "
                "sends its own PING.", check=_positive),
            Key("ping_timeout", float, 60.0, "Seconds to wait for the PONG before the connection "
                "is declared dead and re-made.", check=_positive),
            Key("reconnect_max_delay", float, 120.0, "Longest wait, in seconds, between reconnect "
                "attempts (exponential backoff with jitter up to this).", check=_positive),
            Key("rejoin_delay", float, 10.0, "Seconds to wait before rejoining a channel after a "
                "kick.", check=_non_negative),
        ],
    ),
    "ldap": (
        "The company directory: an LDAP server, or an embedded directory loaded from an LDIF file.",
        [
            Key("url", str, "", "LDAP server URL: `ldap://host:389` or `ldaps://host:636` "
                "(certificates verified). Empty with `ldif` empty: no directory."),
            Key("ldif", str, "", "Instead of `url`: an LDIF file served as an embedded directory "
                "(no server needed); relative to the config file."),
            Key("start_tls", bool, False,
                "Use StartTLS on an `ldap://` URL (certificate verified)."),
            Key("ca_certificate", str, "", "PEM file of CA certificates to trust for LDAP TLS "
                "(default: the system's)."),
            Key("base_dn", str, "ou=people,dc=example,dc=com", "Where people are searched."),
            Key("bind_dn", str, "", "DN to bind as; anonymous when empty."),
            Key("bind_password", str, "", "Password for `bind_dn`.", secret=True),
            Key("nick_attribute", str, "mozillaNickname",
                "Attribute holding the person's IRC nick."),
            Key("account_attribute", str, "", "Attribute holding the person's services account; "
                "empty: the same as `nick_attribute`."),
            Key("name_attribute", str, "cn", "Attribute holding the full name."),
            Key("mail_attribute", str, "mail", "Attribute holding the e-mail address."),
            Key("phone_attribute", str, "telephoneNumber", "Attribute holding the work phone."),
            Key("mobile_attribute", str, "mobile", "Attribute holding the mobile number (SMS "
                "goes there)."),
            Key("home_attribute", str, "homePhone", "Attribute holding the home phone."),
            Key("voip_attribute", str, "voipPhone", "Attribute holding the VoIP address."),
            Key("skype_attribute", str, "skypePhone", "Attribute holding the Skype name."),
            Key("timezone_attribute", str, "", "Attribute holding an IANA zone name, e.g. "
                "`America/Sao_Paulo` (DST-correct)."),
            Key("offset_attribute", str, "mozillaCustom4", "Attribute holding a UTC offset such "
                "as `-0300`, used when there is no zone."),
            Key("timeout", float, 5.0, "Seconds before a directory operation is given up.",
                check=_positive),
            Key("max_in_flight", int, 16, "Queries in flight at once; beyond it users are asked "
                "to try again soon.", check=_positive),
            Key("reconnect_max_delay", float, 10.0, "Longest wait, in seconds, between attempts "
                "to reconnect to the LDAP server (exponential backoff from 0.1 s).",
                check=_positive),
        ],
    ),
    "sms": (
        "Sending SMS from IRC.",
        [
            Key("gateway", str, "", "Which gateway sends SMS: `kannel`, `twilio` or `aql`; "
                "empty: the sms command is off.", choices=("", "kannel", "twilio", "aql")),
            Key("sender", str, "", "The number or sender id SMS come from."),
            Key("require_account", bool, True, "Only senders logged in to a services account may "
                "send; `false` trusts `allowed_hostmasks` instead (networks without services)."),
            Key("allowed_hostmasks", list, [], "With `require_account = false`: who may send, "
                "e.g. `[\"*!*@staff.example.com\"]`.", items=str),
            Key("default_region", str, "", "Region (ISO 3166 code, e.g. `GB`) for numbers written "
                "without `+`; empty: such numbers are refused."),
            Key("max_segments", int, 3, "Longest SMS, in segments; longer texts are refused, "
                "never cut.", check=_positive),
            Key("sender_rate", float, 10.0, "Per-sender limit: segments per hour (a burst of "
                "`sender_burst`, then this rate).", check=_non_negative),
            Key("sender_burst", int, 5, "Per-sender limit: segments that may be sent at once.",
                check=_positive),
            Key("sender_daily", int, 50, "Per-sender daily quota, in segments (UTC days); "
                "0: none.", check=_non_negative),
            Key("global_daily", int, 500, "Daily cap for everyone together, in segments "
                "(UTC days); 0: none.", check=_non_negative),
            Key("timeout", float, 10.0, "Seconds before a gateway request is given up.",
                check=_positive),
            Key("retries", int, 3, "How many times a 429, 503 or connection failure is retried, "
                "with backoff.", check=_non_negative),
        ],
    ),
    "sms.kannel": (
        "Kannel's sendsms interface, and its inbound (MO) service.",
        [
            Key("sendsms_url", str, "http://127.0.0.1:13013/cgi-bin/sendsms",
                "URL of smsbox's sendsms interface."),
            Key("username", str, "", "sendsms-user username."),
            Key("password", str, "", "sendsms-user password.", secret=True),
            Key("smsc", str, "", "Route through this smsc-id; empty: Kannel chooses."),
            Key("inbound_token", str, "", "Shared secret Kannel puts in the get-url/post-url "
                "(`token=...`); inbound SMS without it are refused.", secret=True),
        ],
    ),
    "sms.twilio": (
        "Twilio's Messaging API.",
        [
            Key("account_sid", str, "", "Account SID (`AC...`)."),
            Key("auth_token", str, "", "Auth token: authenticates sends and signs webhooks.",
                secret=True),
            Key("messaging_service_sid", str, "", "Send through this Messaging Service instead "
                "of `[sms] sender`."),
            Key("api_url", str, "https://api.twilio.com", "Base URL of the API."),
        ],
    ),
    "sms.aql": (
        "AQL's HTTP gateway, the one the original mup used.",
        [
            Key("url", str, "https://gw.aql.com/sms/sms_gw.php", "Gateway URL."),
            Key("username", str, "", "Account username."),
            Key("password", str, "", "Account password.", secret=True),
        ],
    ),
    "webhook": (
        "The receiver that gateways post inbound SMS and delivery reports to.",
        [
            Key("endpoint", str, "", "Twisted server endpoint string, e.g. "
                "`tcp:port=8080:interface=127.0.0.1` (`ssl:` works too); empty: no receiver.",
                check=_endpoint),
            Key("journal", str, "/var/lib/mup/inbound",
                "Directory of the durable inbound journal (the SQLite database "
                "`inbound.sqlite3`)."),
            Key("public_url", str, "", "The receiver's URL as providers see it, for signature "
                "checks and delivery-report URLs, e.g. `https://mup.example.com`."),
            Key("max_body", int, 65536, "Largest request body accepted, in bytes (413 beyond).",
                check=_positive),
            Key("header_timeout", str, "10s", "How long a client may take to send a request's "
                "line and headers (from connecting, or from the first byte of the next request); "
                "then it is answered 408 and closed. `0s`: no limit.", check=_duration),
            Key("body_timeout", str, "30s", "How long a client may take to send a request's "
                "body once its headers are in (408 beyond).", check=_duration),
            Key("idle_timeout", str, "60s", "How long a connection may stay silent between "
                "requests.", check=_duration),
            Key("max_connections", int, 512, "Most connections open at once; keep it well under "
                "the process's open-file limit (`LimitNOFILE`).", check=_positive),
            Key("reserved_connections", int, 16, "Of `max_connections`, how many only clients "
                "that have sent a whole request may hold: past the rest, the oldest idle or "
                "unfinished connection is closed for a new one.", check=_non_negative),
            Key("max_request_line", int, 16384, "Longest request line (method, URL, version) in "
                "bytes, at most 16384; 414 beyond.", check=_request_line),
        ],
    ),
    "inbound": (
        "Where inbound SMS go on IRC.",
        [
            Key("default_channel", str, "", "Where an SMS with no other target goes; empty: the "
                "first of `[irc] channels`.", check=_channel),
            Key("unknown_senders", str, "mask", "Numbers not in the directory: `mask` shows them "
                "masked, `drop` drops the message.", choices=("mask", "drop")),
            Key("reply_window", str, "12h", "How long an SMS to a number routes its answer to "
                "the person who sent it.", check=_duration),
            Key("hint", bool, True,
                "After an inbound SMS, say once per conversation how to answer."),
            Key("relay_url", str, "", "Pull inbound SMS from a mup-relay at this URL "
                "(instead of, or beside, `[webhook]`)."),
            Key("relay_token", str, "", "Bearer token for the relay.", secret=True),
        ],
    ),
    "relay": (
        "mup-relay only: how the bot authenticates to the relay, and where it keeps messages.",
        [
            Key("token", str, "", "Bearer token the bot must present.", secret=True),
            Key("poll_timeout", float, 30.0, "Longest a pull waits for messages before it answers "
                "empty, in seconds.", check=_positive),
            Key("store", str, "", "Where the relay keeps messages: empty keeps them in the local "
                "journal (`[webhook] journal`); a libpq connection string, e.g. "
                "`postgresql://mup@db1,db2/mup?target_session_attrs=read-write` or "
                "`host=db1 dbname=mup`, keeps them in PostgreSQL, shared by any number of "
                "relays.", secret=True),
        ],
    ),
    "state": (
        "Small persistent state: SMS counters, reply routes.",
        [
            Key("directory", str, "/var/lib/mup/state", "Directory for state that must survive "
                "restarts."),
        ],
    ),
    "log": (
        "Logging.",
        [
            Key("level", str, "info", "Lowest level logged: `debug` shows phone numbers unmasked.",
                choices=("debug", "info", "warn", "error")),
        ],
    ),
    "admin": (
        "Who runs the bot from IRC (join, part, ignore, status, reload, quota). Nobody by "
        "default.",
        [
            Key("accounts", list, [], "Services accounts of the bot's operators (seen the same way "
                "as SMS senders: account-tag, account-notify, extended-join, WHOIS).", items=str),
            Key("hostmasks", list, [], "For networks without services: `nick!user@host` globs of "
                "operators, e.g. `[\"*!*@admin.example.com\"]`. Anyone who can take that host "
                "(or, with `*!*@*`-style masks, the nick) becomes an operator: prefer accounts.",
                items=str),
        ],
    ),
}


class Section(Mapping[str, Any]):
    """The validated keys of one section, readable as attributes or items."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self._name = name
        self._values = values

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self._name}] has no key {key!r}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shown = {k: ("***" if _key(self._name, k).secret and v else v)
                 for k, v in self._values.items()}
        return f"Section({self._name!r}, {shown!r})"


def _key(section: str, name: str) -> Key:
    return next(k for k in SCHEMA[section][1] if k.name == name)


@dataclass
class Config:
    """A whole validated configuration: ``config.irc.nick``, ``config.section("sms.kannel")``."""

    path: str
    sections: dict[str, Section] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    """Section names that appear in the file."""

    def section(self, name: str) -> Section:
        return self.sections[name]

    def __getattr__(self, name: str) -> Section:
        try:
            sections: dict[str, Section] = self.__dict__["sections"]
            return sections[name]
        except KeyError:
            raise AttributeError(name) from None

    def resolve_path(self, path: str) -> str:
        """A path from the config, relative to the config file's directory."""
        if not path or os.path.isabs(path):
            return path
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), path)


def _check_value(path: str, section: str, key: Key, value: Any) -> Any:
    where = f"{path}: [{section}] {key.name}"
    expected = key.type if isinstance(key.type, tuple) else (key.type,)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in expected:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{where}: expected a {key.type_name()}, got {_describe(value)}")
    if key.type is list:
        for item in value:
            if not isinstance(item, key.items or str):
                raise ConfigError(f"{where}: expected a {key.type_name()}, got an item "
                                  f"{_describe(item)}")
    if key.choices and value not in key.choices:
        options = ", ".join(repr(c) for c in key.choices)
        raise ConfigError(f"{where}: {value!r} is not one of {options}")
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    return value


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if not isinstance(value, dict) else "a table"


def parse(data: Mapping[str, Any], path: str = "<config>",
          environ: Mapping[str, str] | None = None) -> Config:
    """Validate parsed TOML against :data:`SCHEMA`; raise :class:`ConfigError` naming the key."""
    environ = os.environ if environ is None else environ
    tables: dict[str, Mapping[str, Any]] = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for name, value in table.items():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict):
                if full not in SCHEMA:
                    raise ConfigError(f"{path}: unknown section [{full}]"
                                      f" (known: {', '.join(sorted(SCHEMA))})")
                tables[full] = value
                walk(full, {k: v for k, v in value.items() if isinstance(v, dict)})
            elif not prefix:
                raise ConfigError(f"{path}: key {name!r} must be inside a section such as [irc]")

    walk("", data)
    config = Config(path=path, present=frozenset(tables))
    for section, (_doc, keys) in SCHEMA.items():
        table = {k: v for k, v in tables.get(section, {}).items() if not isinstance(v, dict)}
        known = {k.name for k in keys}
        secret_files = {f"{k.name}_file" for k in keys if k.secret}
        for name in table:
            if name not in known and name not in secret_files:
                raise ConfigError(f"{path}: [{section}] {name}: unknown key"
                                  f" (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key in keys:
            if key.name in table:
                value = _check_value(path, section, key, table[key.name])
            else:
                value = key.default
            if key.secret:
                value = _secret(path, section, key, table, value, environ, config)
            values[key.name] = value
        config.sections[section] = Section(section, values)
    return config


def env_name(section: str, key: str) -> str:
    """The environment variable that supplies a secret: ``MUP_SMS_KANNEL_PASSWORD``."""
    return "MUP_" + re.sub(r"[^A-Z0-9]", "_", f"{section}_{key}".upper())


def _secret(path: str, section: str, key: Key, table: Mapping[str, Any], value: Any,
            environ: Mapping[str, str], config: Config) -> Any:
    name = env_name(section, key.name)
    if name in environ:
        return environ[name]
    file_key = f"{key.name}_file"
    if file_key in table:
        where = f"{path}: [{section}] {file_key}"
        secret_path = table[file_key]
        if not isinstance(secret_path, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(secret_path)}")
        try:
            with open(config.resolve_path(secret_path), encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"{where}: cannot read {secret_path!r}: {e.strerror}") from None
    return value


def load(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; any problem is a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    return parse(data, path, environ)


def markdown() -> str:
    """The configuration reference, generated from :data:`SCHEMA`."""
    out = ["# Configuration reference", "",
           "Generated from `mup/config.py` by `python -m mup.config`; a test checks it is current.",
           "", "Secrets (marked *secret*) may instead come from the environment "
           "(`MUP_<SECTION>_<KEY>`, e.g. `MUP_SMS_KANNEL_PASSWORD`) or from a file "
           "(`<key>_file = \"/path\"` in the same section).", ""]
    for section, (doc, keys) in SCHEMA.items():
        out += [f"## [{section}]", "", doc, "", "| key | type | default | what it does |",
                "| --- | --- | --- | --- |"]
        for key in keys:
            default = toml_value(key.default)
            doc_text = key.doc + (" *secret*" if key.secret else "")
            if key.choices:
                doc_text += " One of " + ", ".join(f"`{toml_value(c)}`" for c in key.choices) + "."
            out.append(f"| `{key.name}` | {key.type_name()} | `{default}` | {doc_text} |")
        out.append("")
    return "\n".join(out)


def toml_value(value: Any) -> str:
    """``value`` written as TOML (strings, numbers, booleans and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document from ``{"section": {"key": value}}`` (dotted sections allowed): how
    tests, benchmarks and the demo write real config files."""
    out = []
    for section, values in config.items():
        out.append(f"[{section}]")
        out += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - exercised by tests through markdown()
    sys.stdout.write(markdown())
