"""Fixtures for the sms tests: a real Kannel (bearerbox + smsbox + fakesmsc) per module and the
reactor in a thread, for gateways that use treq against it."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread

from mup.testing.kannel import Kannel

__all__ = ["SmsReactor", "kannel", "sms_reactor"]


class SmsReactor:
    """The global reactor, running in a daemon thread (shared with any other area's fixture
    that runs it the same way)."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls) -> SmsReactor:
        with cls._lock:
            if not reactor.running and cls._thread is None:
                cls._thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="reactor", daemon=True)
                cls._thread.start()
        ready = threading.Event()
        for _ in range(500):
            if reactor.running:
                break
            ready.wait(0.01)
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
def sms_reactor() -> SmsReactor:
    return SmsReactor.ensure_running()


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory):
    """A running Kannel with its fake SMSC connected, for one test module."""
    server = Kannel(tmp_path_factory.mktemp("kannel"), username="mup", password="secret")
    server.start()
    yield server
    server.stop()
