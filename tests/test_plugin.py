"""The twistd plugin as an operator runs it: `twistd mup --help`, and a bad config."""

from __future__ import annotations

import os
import subprocess

from mup.testing.process import free_port, taken_port, twistd_argv


def twistd(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(twistd_argv(*args), cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_help_explains_options(tmp_path):
    result = twistd("mup", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_listed_among_plugins(tmp_path):
    result = twistd("--help", cwd=tmp_path)
    assert "mup" in result.stdout


def test_config_error_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[irc]\nnick = 42\n')
    result = twistd("-n", "--pidfile=", "mup", "--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert f"{path}: [irc] nick: expected a string, got integer 42" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_option(tmp_path):
    result = twistd("-n", "--pidfile=", "mup", cwd=tmp_path)
    assert result.returncode != 0
    assert "--config FILE is required" in result.stdout + result.stderr


def test_config_error_found_while_building_is_one_clear_line(tmp_path):
    (tmp_path / "people.ldif").write_text("dn: cn=x,dc=example,dc=com\nthis is not ldif\n")
    path = tmp_path / "mup.toml"
    path.write_text('[ldap]\nldif = "people.ldif"\n')
    result = twistd("-n", "--pidfile=", "mup", "--config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith(f"mup: {path}: [ldap] ldif"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_journal_in_use_is_one_clear_line(tmp_path):
    from twisted.internet.task import Clock

    from mup.store.sqlite import SQLiteMessageStore

    journal = SQLiteMessageStore.open(str(tmp_path / "inbound"), Clock())
    path = tmp_path / "mup.toml"
    path.write_text(f'[irc]\nchannels = ["#ops"]\n'
                    f'[webhook]\nendpoint = "tcp:port=0:interface=127.0.0.1"\n'
                    f'journal = "{tmp_path / "inbound"}"\n[state]\ndirectory = "{tmp_path}"\n')
    try:
        result = twistd("-n", "--pidfile=", "mup", "--config", str(path), cwd=tmp_path)
    finally:
        journal.close()
    assert result.returncode != 0
    assert result.stderr == (f"mup: {tmp_path / 'inbound' / 'inbound.sqlite3'} is in use by "
                             f"another process (pid {os.getpid()})\n"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_port_in_use_is_one_clear_line(tmp_path):
    with taken_port() as port:
        path = tmp_path / "mup.toml"
        path.write_text(f'[irc]\nchannels = ["#ops"]\n'
                        f'endpoint = "tcp:host=127.0.0.1:port={free_port()}"\n'
                        f'[webhook]\nendpoint = "tcp:port={port}:interface=127.0.0.1"\n'
                        f'journal = "{tmp_path / "inbound"}"\n[state]\ndirectory = "{tmp_path}"\n')
        result = twistd("-n", "--pidfile=", "mup", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("mup: Couldn't listen on 127.0.0.1:"), result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
