"""Reload: a new config is validated like at start-up, applied all or nothing, and keys that
cannot change live are reported."""

from __future__ import annotations

import os
import signal

import pytest
from twisted.internet.defer import ensureDeferred

from mup.config import ConfigError, dumps, load
from mup.reload import Applier, Reload, changed_keys, install_sighup


def write(path, **sections):
    with open(path, "w") as f:
        f.write(dumps(sections))


def run(reload: Reload) -> list[str]:
    out: list[list[str]] = []
    ensureDeferred(reload.reload()).addCallback(out.append)
    assert out, "reload did not finish synchronously without a reactor"
    return out[0]


@pytest.fixture
def conf(tmp_path):
    path = str(tmp_path / "mup.toml")
    write(path, irc={"nick": "mup", "channels": ["#a"]}, admin={"accounts": ["alice"]})
    return path


def test_live_keys_applied_and_the_rest_reported(conf):
    applied = []

    def prepare(new):
        return lambda: applied.append(new.admin.accounts) or "Operators updated."

    reload = Reload(load(conf), [Applier(frozenset({"admin.accounts"}), prepare)])
    write(conf, irc={"nick": "mup2", "channels": ["#a"], "endpoint": "tcp:host=x:port=1"},
          admin={"accounts": ["alice", "bob"]})
    assert run(reload) == [
        f"Reloaded {conf}. Operators updated.",
        "Needs a restart to take effect: irc.endpoint, irc.nick.",
    ]
    assert applied == [["alice", "bob"]]
    assert reload.config.irc.nick == "mup2"


def test_a_broken_config_is_refused_and_the_old_one_stays(conf):
    called = []
    reload = Reload(load(conf), [Applier(frozenset({"admin.accounts"}),
                                         lambda new: called.append(new))])
    with open(conf, "a") as f:
        f.write("\n[irc]\nnick = 'twice'\n")
    answer = run(reload)
    assert len(answer) == 1 and answer[0].startswith(
        f"Reload refused, the running config stays: {conf}: TOML syntax error")
    assert called == [] and reload.config.irc.nick == "mup"
    write(conf, irc={"line_rate": -1})
    assert run(reload) == [f"Reload refused, the running config stays: {conf}: [irc] "
                           "line_rate: must not be negative"]


def test_one_refusing_applier_means_nothing_is_applied(conf):
    applied = []

    def ok(new):
        return lambda: applied.append("ok")

    def refuse(new):
        raise ConfigError(f"{new.path}: [ldap] ldif: line 3: not LDIF")

    reload = Reload(load(conf), [Applier(frozenset(), ok), Applier(frozenset(), refuse)])
    assert run(reload) == [f"Reload refused, the running config stays: {conf}: [ldap] ldif: "
                           "line 3: not LDIF"]
    assert applied == []


def test_unchanged_config_says_so(conf):
    assert run(Reload(load(conf))) == [f"Reloaded {conf}."]


def test_changed_keys(conf, tmp_path):
    other = str(tmp_path / "b.toml")
    write(other, irc={"nick": "mup", "channels": ["#a", "#b"]})
    assert changed_keys(load(conf), load(other)) == ["admin.accounts", "irc.channels"]


def test_sighup_schedules_a_reload_on_the_reactor_thread():
    calls = []

    class Reactor:
        def callFromThread(self, f, *args):
            calls.append("scheduled")
            f(*args)

    async def reload():
        calls.append("reloaded")
        return []

    uninstall = install_sighup(Reactor(), reload)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
    finally:
        uninstall()
    assert calls == ["scheduled", "reloaded"]
