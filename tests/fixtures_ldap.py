"""Fixtures for the ldap tests: a real slapd per session, the reactor in a thread, directories.

The reactor runs in a daemon thread (started once, shared by anyone who needs it); tests talk
to it with ``blockingCallFromThread``.  Directories are built from a parsed ``[ldap]`` config,
like the bot builds them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread

from mup.config import parse
from mup.ldap import directory_from_config
from mup.testing.process import require_binary
from mup.testing.slapd import SLAPADD, SLAPD, Slapd

__all__ = ["PEOPLE_LDIF", "LdapReactor", "ldap_reactor", "make_directory", "own_slapd",
           "people_directory", "slapd_server"]

PEOPLE_LDIF = Path(__file__).parent / "data" / "people.ldif"
BASE_DN = "ou=people,dc=example,dc=com"


class LdapReactor:
    """The global reactor, running in a daemon thread."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls) -> LdapReactor:
        with cls._lock:
            if not reactor.running and cls._thread is None:
                cls._thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="reactor", daemon=True)
                cls._thread.start()
        started = threading.Event()
        for _ in range(500):
            if reactor.running:
                break
            started.wait(0.01)
        assert reactor.running, "the reactor did not start"
        return cls()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` (returning a value, Deferred or coroutine) in the reactor; wait for it."""
        def run() -> Any:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__") and not hasattr(result, "addCallback"):
                return ensureDeferred(result)
            return result

        return blockingCallFromThread(reactor, lambda: maybeDeferred(run))


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
    ldap_reactor.call(service.startService)

    def stop() -> None:
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
