"""Relay + bot + ngircd, all real processes: SMS posted to the relay as Kannel posts them reach
IRC through the bot, in order, with nothing lost and nothing shown twice when either side is
`kill -9`ed."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from fixtures_inbound import relay_bot_config, watch_ops

from mup.testing.ircclient import LineClient
from mup.testing.ngircd import Ngircd
from mup.testing.process import wait_for
from mup.testing.relay import AckGate, RelayProcess

TOKEN = "relay-token"
SMS = re.compile(r"PRIVMSG #ops :\[SMS\] <[^>]*> (msg-\d+)")


@pytest.fixture
def relay(tmp_path: Path):
    process = RelayProcess(tmp_path / "relay", token=TOKEN, poll_timeout=10).start()
    yield process
    process.stop()


def collect(watcher: LineClient, count: int, timeout: float = 30.0) -> list[str]:
    """The next ``count`` SMS lines shown in #ops (their msg-N tags, in order)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(seen)} of {count} SMS on IRC: {seen[-5:]}")
        line = watcher.expect(SMS.pattern, left)
        seen.append(SMS.search(line).group(1))
    return seen


def quiet(watcher: LineClient, seconds: float) -> list[str]:
    """SMS lines that show up in the next ``seconds`` (there should be none)."""
    extra = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        raw = watcher.read_raw(left)
        if raw is not None and (m := SMS.search(raw.decode("utf-8", "replace"))):
            extra.append(m.group(1))
    return extra


def tags(start: int, stop: int) -> list[str]:
    return [f"msg-{i:03}" for i in range(start, stop)]


def post(relay: RelayProcess, start: int, stop: int) -> None:
    poster = relay.poster()
    try:
        statuses = [poster.post(f"id{i}", f"msg-{i:03} from the field") for i in range(start, stop)]
    finally:
        poster.close()
    assert statuses == [200] * (stop - start)


def drained(relay: RelayProcess, timeout: float = 15.0) -> None:
    """The relay was acknowledged for everything (its backlog is empty)."""
    wait_for(lambda: relay.health()["relay_backlog"] == 0, timeout, "the relay's backlog to drain")


def test_a_backlog_kept_while_the_bot_was_down_arrives_in_order(
        tmp_path: Path, ngircd_fast: Ngircd, relay: RelayProcess,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    post(relay, 0, 100)  # the bot is down: the relay keeps them
    assert relay.health()["relay_backlog"] == 100
    watcher = watch_ops(irc_client, ngircd_fast)
    run_bot(relay_bot_config(tmp_path, ngircd_fast, relay.url, TOKEN))
    assert collect(watcher, 100) == tags(0, 100)
    drained(relay)
    assert quiet(watcher, 1.0) == []


def test_over_tls_by_endpoint_string(
        tmp_path: Path, ngircd_fast: Ngircd, irc_client: Callable[..., LineClient],
        run_bot: Callable[..., Any]) -> None:
    """The relay listens on `ssl:...`; the bot pulls from https:// and verifies the
    certificate (trusted here through SSL_CERT_FILE, as a private CA would be)."""
    relay = RelayProcess(tmp_path / "relay-tls", token=TOKEN, tls=True).start()
    try:
        assert relay.url.startswith("https://")
        watcher = watch_ops(irc_client, ngircd_fast)
        env = dict(os.environ, SSL_CERT_FILE=str(relay.certificate))
        run_bot(relay_bot_config(tmp_path, ngircd_fast, relay.url, TOKEN), env=env)
        post(relay, 0, 5)
        assert collect(watcher, 5) == tags(0, 5)
        drained(relay)
    finally:
        relay.stop()


def test_a_relay_certificate_the_bot_does_not_trust_is_refused_and_logged_once(
        tmp_path: Path, ngircd_fast: Ngircd, run_bot: Callable[..., Any]) -> None:
    relay = RelayProcess(tmp_path / "relay-tls", token=TOKEN, tls=True).start()
    try:
        bot = run_bot(relay_bot_config(tmp_path, ngircd_fast, relay.url, TOKEN))
        post(relay, 0, 1)
        bot.wait_for_output("retrying with backoff", 10)
        time.sleep(2)  # several more attempts (0.5 s, 1 s, ...)
        (line,) = [x for x in bot.output().splitlines() if "retrying with backoff" in x]
        assert "TLS error: certificate verify failed" in line
        assert relay.health()["relay_backlog"] == 1
    finally:
        relay.stop()


def test_relay_kill_9_during_a_pull_loses_nothing_and_shows_nothing_twice(
        tmp_path: Path, ngircd_fast: Ngircd, relay: RelayProcess,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    watcher = watch_ops(irc_client, ngircd_fast)
    bot = run_bot(relay_bot_config(tmp_path, ngircd_fast, relay.url, TOKEN))
    post(relay, 0, 10)
    assert collect(watcher, 10) == tags(0, 10)
    drained(relay)
    time.sleep(0.2)  # the bot's next long poll is waiting on the relay
    relay.kill()
    relay.start()
    post(relay, 10, 30)
    # Killed again the moment the first of those is on IRC: the rest pulled and in flight,
    # or not yet pulled.
    assert collect(watcher, 1) == tags(10, 11)
    relay.kill()
    relay.start()
    post(relay, 30, 40)
    assert collect(watcher, 29) == tags(11, 40)
    drained(relay)
    assert quiet(watcher, 1.0) == []
    said = [x for x in bot.output().splitlines() if "relay http" in x]
    assert 1 <= sum("retrying with backoff" in x for x in said) <= 2, said  # once per outage
    assert "Starting factory" not in bot.output()  # no line per HTTP or IRC connection


def test_bot_kill_9_between_irc_confirmation_and_ack_shows_nothing_twice(
        tmp_path: Path, ngircd_fast: Ngircd, relay: RelayProcess,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    gate = AckGate(relay.port)
    try:
        watcher = watch_ops(irc_client, ngircd_fast)
        config = relay_bot_config(tmp_path, ngircd_fast, gate.url, TOKEN)
        gate.holding.set()
        bot = run_bot(config)
        post(relay, 0, 10)
        assert collect(watcher, 10) == tags(0, 10)
        wait_for(lambda: gate.held >= 1, 10, "the bot's acknowledgement")
        time.sleep(0.3)  # the last done-mark reaches the bot's disk
        assert relay.health()["relay_backlog"] == 10  # the relay heard of no ack
        bot.kill()
        gate.holding.clear()
        run_bot(config)
        drained(relay)  # the restarted bot acknowledged what its journal says IRC confirmed
        post(relay, 10, 12)
        assert collect(watcher, 2) == tags(10, 12)  # nothing from before came again
        drained(relay)
    finally:
        gate.close()


def test_kannel_to_relay_to_bot_to_irc(
        tmp_path: Path, ngircd_fast: Ngircd, relay: RelayProcess,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    """The gateway side for real: fakesmsc -> bearerbox -> smsbox's get-url on the relay,
    while the bot is down; then the bot starts and shows them."""
    from mup.testing.kannel import Kannel

    get_url = (f"{relay.url}/kannel/mo?from=%p&to=%P&text=%a&id=%I&coding=%c&charset=%C"
               f"&token={relay.kannel_token}")
    kannel = Kannel(tmp_path / "kannel", get_url=get_url).start()
    try:
        for i in range(3):
            kannel.inject_mo("+447700900123", "4242", f"msg-{i:03} via Kannel")
        wait_for(lambda: relay.health()["relay_backlog"] == 3, 15, "Kannel's MO on the relay")
    finally:
        kannel.stop()
    watcher = watch_ops(irc_client, ngircd_fast)
    run_bot(relay_bot_config(tmp_path, ngircd_fast, relay.url, TOKEN))
    assert collect(watcher, 3) == tags(0, 3)
    drained(relay)
