"""The config file: every problem is one line naming the file and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mup import config
from mup.config import ConfigError, load, parse, parse_duration


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mup.toml"
    path.write_text(text)
    return str(path)


def test_defaults_and_values(tmp_path):
    cfg = load(write(tmp_path, '[irc]\nnick = "bot"\nchannels = ["#ops"]\nline_rate = 3\n'),
               environ={})
    assert cfg.irc.nick == "bot"
    assert cfg.irc.channels == ["#ops"]
    assert cfg.irc.line_rate == 3.0 and isinstance(cfg.irc.line_rate, float)
    assert cfg.irc.prefix == "@"
    assert cfg.section("sms.kannel").sendsms_url.startswith("http://")
    assert cfg.present == {"irc"}


@pytest.mark.parametrize("text, message", [
    ('[irc]\nnick = 3\n', "mup.toml: [irc] nick: expected a string, got integer 3"),
    ('[irc]\nnick = "x"\nbogus = 1\n', "mup.toml: [irc] bogus: unknown key"),
    ('[irc]\nchannels = ["ops"]\n', "mup.toml: [irc] channels: not a channel name: 'ops'"),
    ('[irc]\nchannels = "#ops"\n', "mup.toml: [irc] channels: expected a list of string"),
    ('[irc]\nchannels = [1]\n', "mup.toml: [irc] channels: expected a list of string, got an item"),
    ('[irc]\nline_rate = -1\n', "mup.toml: [irc] line_rate: must not be negative"),
    ('[irc]\nline_burst = true\n', "mup.toml: [irc] line_burst: expected a integer, got boolean"),
    ('[irc]\nendpoint = "localhost"\n', "mup.toml: [irc] endpoint: not a Twisted endpoint"),
    ('[sms]\ngateway = "carrier-pigeon"\n', "mup.toml: [sms] gateway: 'carrier-pigeon' is not one"),
    ('[inbound]\nreply_window = "soon"\n', "mup.toml: [inbound] reply_window: not a duration"),
    ('[nope]\nx = 1\n', "mup.toml: unknown section [nope]"),
    ('[sms.nope]\nx = 1\n', "mup.toml: unknown section [sms.nope]"),
    ('nick = "x"\n', "mup.toml: key 'nick' must be inside a section"),
    ('[irc\nnick = "x"\n', "mup.toml: TOML syntax error"),
])
def test_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), environ={})
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path))


def test_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3"):
        load(write(tmp_path, '[irc]\nnick = "x"\nchannels = [1,,]\n'), environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere.toml: cannot read the config file"):
        load(str(tmp_path / "nothere.toml"))


def test_secret_from_environment_wins(tmp_path):
    path = write(tmp_path, '[sms.kannel]\npassword = "infile"\n')
    cfg = load(path, environ={"MUP_SMS_KANNEL_PASSWORD": "fromenv"})
    assert cfg.section("sms.kannel").password == "fromenv"
    assert load(path, environ={}).section("sms.kannel").password == "infile"


def test_secret_from_file_relative_to_config(tmp_path):
    (tmp_path / "secret").write_text("s3cret\n")
    cfg = load(write(tmp_path, '[irc]\nsasl_password_file = "secret"\n'), environ={})
    assert cfg.irc.sasl_password == "s3cret"


def test_relay_store_is_a_secret_from_env_or_file(tmp_path):
    url = "postgresql://mup:pw@db1,db2/mup?target_session_attrs=read-write"
    (tmp_path / "store").write_text(url + "\n")
    assert load(write(tmp_path, "[relay]\n"), environ={}).relay.store == ""
    cfg = load(write(tmp_path, '[relay]\nstore_file = "store"\n'), environ={})
    assert cfg.relay.store == url
    assert "pw@" not in repr(cfg.relay)
    cfg = load(write(tmp_path, "[relay]\n"), environ={"MUP_RELAY_STORE": "host=db1"})
    assert cfg.relay.store == "host=db1"


def test_secret_file_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"\[irc\] sasl_password_file: cannot read 'gone'"):
        load(write(tmp_path, '[irc]\nsasl_password_file = "gone"\n'), environ={})


def test_file_key_only_for_secrets(tmp_path):
    with pytest.raises(ConfigError, match=r"\[irc\] nick_file: unknown key"):
        load(write(tmp_path, '[irc]\nnick_file = "x"\n'), environ={})


def test_secrets_hidden_in_repr():
    cfg = parse({"sms": {"kannel": {"password": "hunter2"}}}, environ={})
    assert "hunter2" not in repr(cfg.section("sms.kannel"))


def test_resolve_path(tmp_path):
    cfg = load(write(tmp_path, "[ldap]\nldif = \"people.ldif\"\n"), environ={})
    assert cfg.resolve_path(cfg.ldap.ldif) == os.path.join(str(tmp_path), "people.ldif")
    assert cfg.resolve_path("/abs") == "/abs"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900),
                                           ("12h", 43200), ("2d", 172800), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_every_default_passes_its_own_check():
    cfg = parse({}, environ={})
    for section, (_doc, keys) in config.SCHEMA.items():
        for key in keys:
            assert cfg.section(section)[key.name] == key.default


def test_reference_doc_is_current():
    """docs/configuration.md is generated from the schema; regenerate with
    `python -m mup.config > docs/configuration.md`."""
    doc = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == config.markdown(), "run: python -m mup.config > docs/configuration.md"


def test_example_configs_load():
    """Every config the project ships (README examples, demo, docs) is valid."""
    root = Path(__file__).parent.parent
    shipped = sorted(root.glob("examples/*.toml")) + sorted(root.glob("demo/*.toml"))
    assert shipped, "the project ships example configs"
    # Secret files named in the examples live on the operator's machine; the environment wins.
    environ = {config.env_name(section, key.name): "x"
               for section, (_doc, keys) in config.SCHEMA.items() for key in keys if key.secret}
    for path in shipped:
        load(str(path), environ=environ)
