"""Fixtures for the sms tests: a real Kannel (bearerbox + smsbox + fakesmsc) per module, and the
reactor in a thread (the IRC fixtures' one) for gateways that use treq against it."""

from __future__ import annotations

import pytest
from fixtures_irc import IrcReactor

from mup.testing.kannel import Kannel

__all__ = ["kannel", "sms_reactor"]


@pytest.fixture(scope="session")
def sms_reactor() -> IrcReactor:
    """The global reactor running in a daemon thread; ``.call(fn, *args)`` waits for it."""
    return IrcReactor.ensure_running()


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory):
    """A running Kannel with its fake SMSC connected, for one test module."""
    server = Kannel(tmp_path_factory.mktemp("kannel"), username="mup", password="secret")
    server.start()
    yield server
    server.stop()
