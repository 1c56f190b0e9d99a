"""SASL and services-account tracking against real InspIRCd + Atheme (accounts alice and bob).

InspIRCd registers a new client only on its 1-second tick, so clients connect in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from mup.commands import Command, Commands, Dispatcher
from mup.commands.basic import echo
from mup.config import parse as parse_config
from mup.irc import IRCService
from mup.testing.certs import make_certificates
from mup.testing.inspircd import ACCOUNTS, InspircdAtheme
from mup.testing.ircclient import LineClient
from mup.testing.process import wait_for


def clients(port: int, specs: dict[str, dict[str, Any]]) -> dict[str, LineClient]:
    """Register several line clients at once: ``{nick: {"sasl": (account, password)}}``."""
    made = {nick: LineClient(port, nick) for nick in specs}

    def register(nick: str) -> None:
        made[nick].register(caps=("account-tag",) if specs[nick].get("sasl") else (),
                            sasl=specs[nick].get("sasl"))

    with ThreadPoolExecutor(len(made)) as pool:
        list(pool.map(register, made))
    return made


@pytest.fixture
def line_clients() -> Iterator[Any]:
    opened: list[LineClient] = []

    def make(port: int, specs: dict[str, dict[str, Any]]) -> dict[str, LineClient]:
        made = clients(port, specs)
        opened.extend(made.values())
        return made

    yield make
    for client in opened:
        client.close()


def whois_account(client: LineClient, nick: str) -> str | None:
    client.send(f"WHOIS {nick}")
    account = None
    while True:
        line = client.expect(rf" (330|318) {client.nick} {nick} ")
        if " 318 " in line:
            return account
        account = line.split()[4]


def test_sasl_plain_logs_the_bot_in(inspircd_atheme, run_bot, line_clients) -> None:
    bot = run_bot({"irc": {"endpoint": inspircd_atheme.endpoint, "nick": "mupbot",
                           "channels": ["#ops"], "sasl_username": "bob",
                           "sasl_password": ACCOUNTS["bob"]}})
    assert "Logged in to services as bob" in bot.output()
    watcher = line_clients(inspircd_atheme.port, {"watcher": {}})["watcher"]
    assert whois_account(watcher, "mupbot") == "bob"


def test_sasl_wrong_password_is_reported_and_the_bot_carries_on(inspircd_atheme, run_bot,
                                                                line_clients) -> None:
    bot = run_bot({"irc": {"endpoint": inspircd_atheme.endpoint, "nick": "mupbad",
                           "channels": ["#ops"], "sasl_username": "bob",
                           "sasl_password": "not-the-password"}})
    assert "SASL PLAIN login failed (904" in bot.output()
    watcher = line_clients(inspircd_atheme.port, {"watcher2": {}})["watcher2"]
    assert whois_account(watcher, "mupbad") is None
    watcher.send("PRIVMSG mupbad :echo still answering")
    watcher.expect(r"^:mupbad!\S+ PRIVMSG watcher2 :still answering$")


def test_nickserv_identify_fallback(inspircd_atheme, run_bot, line_clients) -> None:
    run_bot({"irc": {"endpoint": inspircd_atheme.endpoint, "nick": "bob",
                     "channels": ["#ops"], "nickserv_password": ACCOUNTS["bob"]}})
    watcher = line_clients(inspircd_atheme.port, {"watcher3": {}})["watcher3"]
    wait_for(lambda: whois_account(watcher, "bob") == "bob", 5, "bob identified by NickServ")


def whoami() -> Command:
    return Command("whoami", "whoami", "Your services account.",
                   lambda request: f"account={request.account}", needs_account=True)


@pytest.fixture
def bot_service(inspircd_atheme, irc_reactor) -> Iterator[IRCService]:
    config = parse_config({"irc": {"endpoint": inspircd_atheme.endpoint, "nick": "mup",
                                   "channels": ["#ops"], "line_rate": 0}})
    commands = Commands([echo(), whoami()])
    service = IRCService(config, Dispatcher.from_config(commands, config, irc_reactor.reactor),
                         irc_reactor.reactor)
    irc_reactor.call(service.startService)
    yield service
    irc_reactor.call(service.stopService)


def test_account_tracking(inspircd_atheme, bot_service, irc_reactor, line_clients) -> None:
    users = line_clients(inspircd_atheme.port, {
        "alice": {"sasl": ("alice", ACCOUNTS["alice"])},  # logged in, in the channel
        "carol": {},                                      # not logged in, in the channel
        "dave": {"sasl": ("bob", ACCOUNTS["bob"])},       # logged in, not in the channel
        "erin": {},                                       # not logged in, not in the channel
    })
    irc_reactor.call(bot_service.when_connected)
    alice, carol = users["alice"], users["carol"]
    for client in (alice, carol):
        client.join("#ops")

    def account_of(nick: str) -> str | None:
        return irc_reactor.call(bot_service.account_of, nick)

    # account-tag on the command itself
    alice.privmsg("#ops", "@whoami")
    alice.expect(r"PRIVMSG #ops :alice: account=alice$")
    carol.privmsg("#ops", "@whoami")
    carol.expect(r"PRIVMSG #ops :carol: account=None$")
    # the map, from extended-join / account-tag
    wait_for(lambda: irc_reactor.call(bot_service.is_present, "carol"), 5, "carol seen")
    assert account_of("alice") == "alice"
    assert account_of("carol") is None
    # account-notify: carol identifies, then logs out
    carol.privmsg("NickServ", f"IDENTIFY alice {ACCOUNTS['alice']}")
    carol.expect(r" 900 carol ")
    wait_for(lambda: account_of("carol") == "alice", 5, "ACCOUNT alice for carol")
    carol.privmsg("NickServ", "LOGOUT")
    carol.expect(r" 901 carol ")
    wait_for(lambda: account_of("carol") is None, 5, "ACCOUNT * for carol")
    # WHOIS 330 on demand for people the bot shares no channel with
    assert account_of("dave") == "bob"
    assert account_of("erin") is None
    assert account_of("nobody_here") is None
    # privately, from a logged-in user outside the channel
    users["dave"].privmsg("mup", "whoami")
    users["dave"].expect(r"PRIVMSG dave :account=bob$")


@pytest.fixture(scope="module")
def inspircd_tls(tmp_path_factory: pytest.TempPathFactory, atheme_seed) -> Iterator[Any]:
    """InspIRCd + Atheme with a TLS port that asks for client certificates."""
    tmp = tmp_path_factory.mktemp("inspircd-tls")
    certs = make_certificates(tmp / "certs")
    servers = InspircdAtheme(tmp / "servers", seed=atheme_seed, tls_cert=certs.server_cert,
                             tls_key=certs.server_key)
    servers.certs = certs  # type: ignore[attr-defined]
    servers.start()
    yield servers
    servers.stop()


def test_sasl_external_with_a_client_certificate(inspircd_tls, run_bot, line_clients) -> None:
    certs = inspircd_tls.certs
    alice = line_clients(inspircd_tls.port, {
        "alice": {"sasl": ("alice", ACCOUNTS["alice"])}})["alice"]
    alice.privmsg("NickServ", f"CERT ADD {certs.client_fingerprint}")
    alice.expect(r"NickServ\S* NOTICE alice :Added fingerprint")
    endpoint = (f"tls:host=localhost:port={inspircd_tls.tls_port}:trustRoots={certs.ca_dir}"
                f":certificate={certs.client_cert}:privateKey={certs.client_key}")
    bot = run_bot({"irc": {"endpoint": endpoint, "nick": "mupext", "channels": ["#ops"],
                           "sasl_mechanism": "EXTERNAL"}})
    assert "Logged in to services as alice" in bot.output()
    assert whois_account(alice, "mupext") == "alice"
