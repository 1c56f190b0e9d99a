"""Fixtures for the IRC tests, for every area to reuse: real ngircd / InspIRCd+Atheme servers,
a blocking line client, the bot as a ``twistd`` subprocess, and the reactor in a thread for
driving an in-process :class:`~mup.irc.IRCService`.

* ``ngircd``: a fresh ngircd per test (default flood control): ``.port``, ``.endpoint``,
  ``.stop()``, ``.start()`` (same port), ``.kill()``.
* ``ngircd_fast``: the same with ``MaxPenaltyTime = 0`` (no 1 s penalties; not for flood tests).
* ``ngircd_tls``: (module-scoped) an ngircd with a TLS port too (``.tls_port``), its certificate for
  ``localhost`` signed by a throw-away CA (``.certs.ca_dir`` for ``trustRoots=``).
* ``irc_client(port, nick)``: a registered :class:`~mup.testing.ircclient.LineClient`
  (``.join``, ``.send``, ``.privmsg``, ``.expect(regex, timeout)``), closed after the test.
* ``inspircd_atheme``: InspIRCd + Atheme with accounts alice/bob (passwords in
  ``ACCOUNTS``), one per test module, from a seed database made once per session.
* ``run_bot(config)``: the real bot (``twistd -n mup --config FILE``) started on a TOML config
  written from a dict (or given as text), returned once it has joined its channels.
* ``irc_reactor``: the global reactor running in a daemon thread; ``.call(fn, *args)``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread

from mup.config import dumps as toml_text
from mup.testing.certs import make_certificates
from mup.testing.inspircd import ACCOUNTS, InspircdAtheme, make_seed
from mup.testing.ircclient import LineClient
from mup.testing.ngircd import Ngircd
from mup.testing.process import ServerProcess, wait_for

__all__ = ["ACCOUNTS", "BotProcess", "IrcReactor", "atheme_seed", "inspircd_atheme", "irc_client",
           "irc_reactor", "ngircd", "ngircd_fast", "ngircd_tls", "run_bot", "toml_text"]


@pytest.fixture
def ngircd(tmp_path: Path) -> Iterator[Ngircd]:
    """A fresh ngircd with its default flood control, stopped after the test."""
    server = Ngircd(tmp_path / "ngircd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ngircd_fast(tmp_path: Path) -> Iterator[Ngircd]:
    """A fresh ngircd with ``MaxPenaltyTime = 0`` (no 1 s flood penalties)."""
    server = Ngircd(tmp_path / "ngircd-fast", max_penalty_time=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ngircd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ngircd]:
    """ngircd with a plain and a TLS port (one per module: GnuTLS takes ~2 s to start);
    ``.certs`` holds the CA and server certificate."""
    tmp_path = tmp_path_factory.mktemp("ngircd-tls")
    certs = make_certificates(tmp_path / "certs")
    server = Ngircd(tmp_path / "ngircd-tls", tls_cert=certs.server_cert,
                    tls_key=certs.server_key)
    server.certs = certs  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


@pytest.fixture
def irc_client() -> Iterator[Callable[..., LineClient]]:
    """``irc_client(port, nick, caps=(), sasl=None)``: a registered line client."""
    clients: list[LineClient] = []

    def make(port: int, nick: str, caps: tuple[str, ...] = (),
             sasl: tuple[str, str] | None = None, timeout: float = 10.0) -> LineClient:
        client = LineClient(port, nick, timeout=timeout)
        clients.append(client)
        client.register(caps=caps, sasl=sasl, timeout=timeout)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def atheme_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_seed(tmp_path_factory.mktemp("atheme-seed"))


@pytest.fixture(scope="module")
def inspircd_atheme(tmp_path_factory: pytest.TempPathFactory,
                    atheme_seed: Path) -> Iterator[InspircdAtheme]:
    """InspIRCd + Atheme, linked and synced, with the seeded accounts (see ``ACCOUNTS``)."""
    servers = InspircdAtheme(tmp_path_factory.mktemp("inspircd"), seed=atheme_seed)
    servers.start()
    yield servers
    servers.stop()


# -- the bot as a subprocess --------------------------------------------------------------


class BotProcess(ServerProcess):
    """The bot running under twistd; ``.config_path``, ``.wait_for_output(text)``."""

    config_path: Path


TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


@pytest.fixture
def run_bot(tmp_path: Path) -> Iterator[Callable[..., BotProcess]]:
    """``run_bot(config, wait=True, timeout=15)``: start ``twistd -n mup --config FILE``.

    ``config`` is TOML text or a ``{"section": {...}}`` dict.  With ``wait`` it returns once
    the bot logged that it joined every channel of ``[irc] channels`` (or registered, when
    there are none).  Every bot is stopped (SIGTERM) after the test."""
    bots: list[BotProcess] = []

    def start(config: str | dict[str, dict[str, Any]], wait: bool = True,
              timeout: float = 15.0, env: dict[str, str] | None = None) -> BotProcess:
        n = len(bots)
        path = tmp_path / f"mup-{n}.toml"
        path.write_text(config if isinstance(config, str) else toml_text(config))
        bot = BotProcess([*TWISTD, "-n", "--pidfile=", "--logfile=-", "mup", "--config",
                          str(path)], tmp_path / f"mup-{n}.log", cwd=Path(__file__).parent.parent,
                         env=env)
        bot.config_path = path
        bots.append(bot)
        if wait:
            channels: list[str] = []
            if isinstance(config, dict):
                channels = list(config.get("irc", {}).get("channels", []))
            if channels:
                for channel in channels:
                    bot.wait_for_output(f"Joined {channel}", timeout)
            else:
                bot.wait_for_output("Registered on IRC as", timeout)
        return bot

    yield start
    for bot in bots:
        bot.stop()


# -- the reactor in a thread, for in-process services ----------------------------------------


class IrcReactor:
    """The global reactor, running in a daemon thread (shared with other areas' fixtures that
    run it the same way)."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls) -> IrcReactor:
        with cls._lock:
            if not reactor.running and cls._thread is None:
                cls._thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="reactor", daemon=True)
                cls._thread.start()
        wait_for(lambda: reactor.running, 10, "the reactor to start")
        return cls()

    reactor = reactor

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` (returning a value, Deferred or coroutine) in the reactor; wait for it."""
        def run() -> Any:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__") and not hasattr(result, "addCallback"):
                return ensureDeferred(result)
            return result

        return blockingCallFromThread(reactor, lambda: maybeDeferred(run))


@pytest.fixture(scope="session")
def irc_reactor() -> IrcReactor:
    return IrcReactor.ensure_running()
