"""`twistd mup-relay` as an operator runs it: listed, --help, and config errors in one line."""

from __future__ import annotations

import os
import subprocess

import pytest

from mup.testing.process import taken_port, twistd_argv


def twistd(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(twistd_argv(*args), cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_listed_beside_mup(tmp_path):
    result = twistd("--help", cwd=tmp_path)
    assert "mup-relay" in result.stdout
    assert "    mup " in result.stdout or "\n    mup" in result.stdout


def test_help_explains_options(tmp_path):
    result = twistd("mup-relay", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.mark.parametrize("toml,message", [
    ('[webhook]\nendpoint = "tcp:port=0"\n', "[relay] token must be set for mup-relay"),
    ('[relay]\ntoken = "t"\n[webhook]\nendpoint = ""\n',
     "[webhook] endpoint must be set for mup-relay"),
    ('[relay]\ntoken = 5\n', "[relay] token: expected a string, got integer 5"),
])
def test_config_errors_are_one_clear_line(tmp_path, toml, message):
    path = tmp_path / "relay.toml"
    path.write_text(toml)
    result = twistd("-n", "--pidfile=", "mup-relay", "--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert f"{path}: {message}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("inbound,message", [
    ('relay_url = "http://127.0.0.1:1"\n',
     "[inbound] relay_token must be set with relay_url (the relay's [relay] token)"),
    ('relay_url = "relay.example.com"\nrelay_token = "t"\n',
     "[inbound] relay_url: expected an http:// or https:// URL, got 'relay.example.com'"),
])
def test_the_bots_relay_settings_are_checked_at_start(tmp_path, inbound, message):
    path = tmp_path / "mup.toml"
    path.write_text(f'[webhook]\njournal = "{tmp_path / "journal"}"\n'
                    f'[state]\ndirectory = "{tmp_path / "state"}"\n'
                    f'[inbound]\ndefault_channel = "#ops"\n{inbound}')
    result = twistd("-n", "--pidfile=", "mup", "--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert f"mup: {path}: {message}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_relay_whose_port_is_taken_exits_instead_of_hanging(tmp_path):
    """The journal's writer thread must not keep a failed start-up alive."""
    with taken_port() as port:
        path = tmp_path / "relay.toml"
        path.write_text(f'[webhook]\nendpoint = "tcp:port={port}:interface=127.0.0.1"\n'
                        f'journal = "{tmp_path / "journal"}"\n[relay]\ntoken = "t"\n')
        result = twistd("-n", "--pidfile=", "mup-relay", "--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


def _relay_with_store(tmp_path, store: str):
    path = tmp_path / "relay.toml"
    path.write_text(f'[webhook]\nendpoint = "tcp:port=0:interface=127.0.0.1"\n'
                    f'journal = "{tmp_path / "journal"}"\n'
                    f'[relay]\ntoken = "t"\nstore = "{store}"\n')
    return path


@pytest.mark.parametrize("store,message", [
    ("host=127.0.0.1 port=1 user=mup password=hunter2 connect_timeout=3",
     "[relay] store: cannot connect to PostgreSQL: "),
    ("postgresql://mup:hunter2@127.0.0.1:1/mup", "[relay] store: cannot connect to PostgreSQL: "),
    ("host=127.0.0.1 nonsense", "[relay] store: not a libpq connection string: "),
    ("postgresql://mup:hunter2@[::1/mup", "[relay] store: not a libpq connection string"),
])
def test_a_bad_or_unreachable_store_is_one_line_naming_the_key(tmp_path, store, message):
    """Checked before the reactor runs: exit 1, one line, never the password."""
    path = _relay_with_store(tmp_path, store)
    result = twistd("-n", "--pidfile=", "mup-relay", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mup-relay: {path}: {message}"), lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_a_store_from_the_environment_is_used_and_its_errors_name_the_key(tmp_path):
    path = _relay_with_store(tmp_path, "")
    env = dict(os.environ, MUP_RELAY_STORE="postgresql://mup:hunter2@127.0.0.1:1/mup")
    result = subprocess.run(twistd_argv("-n", "--pidfile=", "mup-relay", "--config", str(path)),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert f"mup-relay: {path}: [relay] store: cannot connect to PostgreSQL" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
