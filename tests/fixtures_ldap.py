"""Fixtures for the ldap tests: a real slapd per session, the reactor in a thread, directories.

The reactor runs in a daemon thread (tests/fixtures_irc.py's IrcReactor, started once and
shared); tests talk to it with ``blockingCallFromThread``.  Directories are built from a parsed
``[ldap]`` config, like the bot builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_irc import IrcReactor
from twisted.internet import reactor

from mup.config import parse
from mup.ldap import directory_from_config
from mup.testing.process import require_binary
from mup.testing.slapd import SLAPADD, SLAPD, Slapd

__all__ = ["PEOPLE_LDIF", "LdapReactor", "ldap_reactor", "make_directory", "own_slapd",
           "people_directory", "slapd_server"]

PEOPLE_LDIF = Path(__file__).parent / "data" / "people.ldif"
BASE_DN = "ou=people,dc=example,dc=com"


LdapReactor = IrcReactor
"""The global reactor in a daemon thread: the IRC fixtures' one, shared (``.call(fn, *a)``)."""


@pytest.fixture(scope="session")
def ldap_reactor() -> LdapReactor:
    return LdapReactor.ensure_running()


def _start_slapd(directory: Path) -> Slapd:
    require_binary(SLAPD, "slapd")
    require_binary(SLAPADD, "slapd")
    return Slapd(directory, PEOPLE_LDIF).start()


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory):
    """A slapd serving tests/data/people.ldif for the whole session; do not stop it."""
    server = _start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path):
    """A slapd of this test's own, free to be stopped, paused and restarted."""
    server = _start_slapd(tmp_path / "slapd")
    yield server
    server.resume() if server.process and server.process.alive() else None
    server.stop()


def make_directory(ldap_reactor: LdapReactor, **ldap: Any):
    """A started directory from ``[ldap]`` keys; returns (directory, stop)."""
    config = parse({"ldap": {"timezone_attribute": "timezone", "account_attribute": "uid",
                             "base_dn": BASE_DN, **ldap}})
    found = ldap_reactor.call(directory_from_config, config, reactor)
    directory, service = found
    if service is not None:
        ldap_reactor.call(service.startService)

    def stop() -> None:
        if service is not None:
            ldap_reactor.call(service.stopService)

    return directory, stop


@pytest.fixture(scope="module", params=["slapd", "embedded"])
def people_directory(request: pytest.FixtureRequest, ldap_reactor: LdapReactor):
    """The same directory twice: over a real slapd, and embedded from the same LDIF."""
    if request.param == "slapd":
        server = request.getfixturevalue("slapd_server")
        found, stop = make_directory(ldap_reactor, url=server.url)
    else:
        found, stop = make_directory(ldap_reactor, ldif=str(PEOPLE_LDIF))
    yield found
    stop()
