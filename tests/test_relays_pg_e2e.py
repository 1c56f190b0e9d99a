"""Several real `twistd mup-relay` processes on one real PostgreSQL behind a real haproxy, the
bot (pulling through haproxy) on ngircd: every SMS a relay answered 2xx reaches IRC, in order
per sender, once, when a relay is `kill -9`ed, when the primary dies and a synchronous standby
is promoted, and when the bot was down for a while."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
from fixtures_inbound import relay_bot_config, watch_ops

from mup.testing.haproxy import Haproxy
from mup.testing.ircclient import LineClient
from mup.testing.ngircd import Ngircd
from mup.testing.postgres import Postgres
from mup.testing.process import wait_for
from mup.testing.relay import KannelPoster, RelayProcess

TOKEN = "relay-token"
KANNEL = "kannel-token"
SMS = re.compile(r"PRIVMSG #ops :\[SMS\] <[^>]*> (s\d+-\d+)")
SENDERS = ["+447700900101", "+447700900102", "+447700900103"]


# --- the pieces --------------------------------------------------------------------------------


class Relays:
    """Relays on one store, and haproxy in front of them."""

    def __init__(self, relays: list[RelayProcess], proxy: Haproxy) -> None:
        self.relays = relays
        self.proxy = proxy

    def poster(self) -> KannelPoster:
        """Posts as the gateway makes them: to haproxy."""
        return KannelPoster("127.0.0.1", self.proxy.port, KANNEL)

    def restart(self, index: int) -> None:
        """``kill -9`` relay ``index`` and start it again; wait until haproxy has it again."""
        relay = self.relays[index]
        relay.kill()
        relay.start()
        wait_healthy(relay)
        self.proxy.wait_for_status(f"r{index + 1}", "UP")

    def backlog(self) -> int:
        return int(self.relays[0].health()["relay_backlog"])


def wait_healthy(relay: RelayProcess, timeout: float = 20.0) -> None:
    wait_for(relay.healthy, timeout, f"relay {relay.port} /healthz 200",
             lambda: bool(relay.process and relay.process.alive()), interval=0.05)


@pytest.fixture
def start_relays(tmp_path: Path, make_haproxy: Callable[[Sequence[int]], Haproxy]
                 ) -> Iterator[Callable[..., Relays]]:
    made: list[RelayProcess] = []

    def start(store: str, count: int = 2, poll_timeout: float = 10.0) -> Relays:
        relays = [RelayProcess(tmp_path / f"relay{i + 1}", token=TOKEN, kannel_token=KANNEL,
                               poll_timeout=poll_timeout, store=store)
                  for i in range(count)]
        made.extend(relays)
        for relay in relays:
            relay.start()
        for relay in relays:
            wait_healthy(relay)
        proxy = make_haproxy([relay.port for relay in relays])
        for name in proxy.names():
            proxy.wait_for_status(name, "UP")
        return Relays(relays, proxy)

    yield start
    for relay in made:
        relay.stop()


class Seen:
    """The SMS tags shown in #ops, read as they come."""

    def __init__(self, watcher: LineClient) -> None:
        self.watcher = watcher
        self.tags: list[str] = []

    def until(self, wanted: set[str], timeout: float = 40.0) -> None:
        """Read IRC until every tag of ``wanted`` was shown."""
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.tags):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(wanted - set(self.tags))
                raise TimeoutError(f"{len(missing)} accepted SMS not on IRC: {missing[:10]}")
            raw = self.watcher.read_raw(min(left, 1.0))
            if raw is not None and (m := SMS.search(raw.decode("utf-8", "replace"))):
                self.tags.append(m.group(1))

    def quiet(self, seconds: float) -> None:
        """Read whatever else shows up in ``seconds`` (there should be nothing new)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            raw = self.watcher.read_raw(left)
            if raw is not None and (m := SMS.search(raw.decode("utf-8", "replace"))):
                self.tags.append(m.group(1))

    def check_once_and_in_order(self) -> None:
        duplicates = sorted({t for t in self.tags if self.tags.count(t) > 1})
        assert duplicates == [], f"shown twice: {duplicates[:10]}"
        by_sender: dict[str, list[int]] = defaultdict(list)
        for tag in self.tags:
            sender, _, n = tag.partition("-")
            by_sender[sender].append(int(n))
        for sender, numbers in by_sender.items():
            assert numbers == sorted(numbers), f"{sender} out of order: {numbers}"


class Stream:
    """One thread per sender posting its SMS one after another (as a gateway does: the next
    after the answer) through ``poster_for``; records each post's HTTP status (0: no answer)."""

    def __init__(self, poster_for: Callable[[], KannelPoster], senders: int = 3,
                 prefix: str = "") -> None:
        self.poster_for = poster_for
        self.statuses: dict[str, int] = {}
        self.answered_after: dict[str, float] = {}
        self.stop = threading.Event()
        self.prefix = prefix
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True)
                        for s in range(senders)]

    def start(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, sender: int) -> None:
        poster = self.poster_for()
        n = 0
        while not self.stop.is_set():
            tag = f"s{sender}-{n:04}"
            started = time.monotonic()
            try:
                status = poster.post(f"{self.prefix}{tag}", f"{tag} from the field",
                                     SENDERS[sender])
            except (OSError, http.client.HTTPException):
                status = 0
                poster.close()
            with self.lock:
                self.statuses[tag] = status
                self.answered_after[tag] = time.monotonic() - started
            n += 1
        poster.close()

    def accepted(self) -> set[str]:
        with self.lock:
            return {tag for tag, status in self.statuses.items() if 200 <= status < 300}

    def wait_accepted(self, count: int, timeout: float = 20.0) -> None:
        wait_for(lambda: len(self.accepted()) >= count, timeout, f"{count} accepted posts",
                 interval=0.01)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a post hung"


def metric(relay: RelayProcess, name: str) -> float:
    conn = relay.connection()
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- the tests ---------------------------------------------------------------------------------


def test_two_relays_one_killed_mid_stream_every_accepted_sms_reaches_irc_once_in_order(
        tmp_path: Path, pg_url: str, start_relays: Callable[..., Relays], ngircd_fast: Ngircd,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    relays = start_relays(pg_url)
    seen = Seen(watch_ops(irc_client, ngircd_fast))
    run_bot(relay_bot_config(tmp_path, ngircd_fast, relays.proxy.url, TOKEN))
    stream = Stream(relays.poster).start()
    stream.wait_accepted(30)
    relays.restart(0)  # kill -9 mid-stream (haproxy retries or the post is not 2xx'd)
    first = len(stream.accepted())
    stream.wait_accepted(first + 30)
    relays.restart(1)
    stream.wait_accepted(len(stream.accepted()) + 30)
    stream.finish()
    # Both relays took posts (round robin), through haproxy.
    assert all(metric(r, "mup_inbound_accepted_total") > 0 for r in relays.relays)
    # The same gateway id posted to each relay directly: both answer 200, it is stored once.
    for relay in relays.relays:
        assert relay.poster().post("dup-1", "s9-0000 twice", SENDERS[0]) == 200
    accepted = stream.accepted() | {"s9-0000"}
    seen.until(accepted)
    wait_for(lambda: relays.backlog() == 0, 15, "every relay's backlog acknowledged")
    seen.quiet(1.0)
    seen.check_once_and_in_order()
    # What was not 2xx'd may or may not have been committed, but nothing else showed up.
    assert set(seen.tags) <= set(stream.statuses) | {"s9-0000"}


def test_primary_killed_standby_promoted_accepted_posts_reach_irc_and_the_rest_got_503(
        tmp_path: Path, pg_failover: tuple[Postgres, Postgres],
        start_relays: Callable[..., Relays], ngircd_fast: Ngircd,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    primary, standby = pg_failover
    primary.execute("CREATE DATABASE mup")
    wait_for(lambda: standby.execute("SELECT 1 FROM pg_database WHERE datname = 'mup'") != [],
             15, "the database on the standby")
    store = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} dbname=mup "
             "user=postgres target_session_attrs=read-write connect_timeout=2")
    relays = start_relays(store)
    health = relays.relays[0].health()
    assert health["journal_writable"] is True and health["store_listening"] is True
    seen = Seen(watch_ops(irc_client, ngircd_fast))
    run_bot(relay_bot_config(tmp_path, ngircd_fast, relays.proxy.url, TOKEN))
    stream = Stream(relays.poster).start()
    stream.wait_accepted(30)
    primary.kill()
    # Every relay notices by itself (its LISTEN connection broke): /healthz 503, not writable.
    for relay in relays.relays:
        wait_for(lambda r=relay: r.healthz()[0] == 503, 10, "/healthz 503 without a primary")
        assert relay.health()["journal_writable"] is False
    # A post to a relay now is 503 with Retry-After, at once.
    for relay in relays.relays:
        conn = relay.connection(timeout=5)
        started = time.monotonic()
        conn.request("GET", f"/kannel/mo?from=%2B447700900109&to=4242&text=none&id=x-{relay.port}"
                            f"&coding=0&charset=UTF-8&token={KANNEL}")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 503
        assert response.getheader("Retry-After") == "5"
        assert time.monotonic() - started < 2.0
    accepted_before = stream.accepted()
    standby.promote()
    for index, relay in enumerate(relays.relays):
        wait_healthy(relay)
        relays.proxy.wait_for_status(f"r{index + 1}", "UP")
    stream.wait_accepted(len(stream.accepted()) + 30)
    stream.finish()
    # Every post was answered (no hang): 2xx, or 503 while there was no primary (from the relay,
    # or from haproxy when it had taken both out), never anything else.
    assert set(stream.statuses.values()) <= {200, 503}, set(stream.statuses.values())
    assert len(stream.accepted()) > len(accepted_before) >= 30
    seen.until(stream.accepted())
    wait_for(lambda: relays.backlog() == 0, 20, "every relay's backlog acknowledged")
    seen.quiet(1.0)
    seen.check_once_and_in_order()


def test_a_backlog_kept_while_the_bot_was_down_arrives_in_order_and_cursors_survive(
        tmp_path: Path, pg_url: str, start_relays: Callable[..., Relays], ngircd_fast: Ngircd,
        irc_client: Callable[..., LineClient], run_bot: Callable[..., Any]) -> None:
    relays = start_relays(pg_url)
    poster = relays.poster()
    tags = [f"s{i % 3}-{i:04}" for i in range(60)]
    assert [poster.post(t, f"{t} while the bot is down", SENDERS[i % 3])
            for i, t in enumerate(tags)] == [200] * 60
    assert relays.backlog() == 60
    seen = Seen(watch_ops(irc_client, ngircd_fast))
    run_bot(relay_bot_config(tmp_path, ngircd_fast, relays.proxy.url, TOKEN))
    seen.until(set(tags))
    assert sorted(seen.tags) == sorted(tags)
    seen.check_once_and_in_order()  # per sender: the order they were accepted in
    wait_for(lambda: relays.backlog() == 0, 15, "the backlog acknowledged")
    # The bot keeps its cursor across a relay's restart and across relays.
    relays.restart(0)
    more = [f"s0-{i:04}" for i in range(100, 110)]
    assert [poster.post(t, t) for t in more] == [200] * 10
    relays.relays[1].kill()
    relays.proxy.wait_for_status("r2", "DOWN")
    last = [f"s1-{i:04}" for i in range(200, 210)]
    assert [poster.post(t, t, SENDERS[1]) for t in last] == [200] * 10
    seen.until(set(more) | set(last))
    relays.relays[1].start()
    wait_healthy(relays.relays[1])
    seen.quiet(1.0)
    assert seen.tags[len(tags):] == more + last
    seen.check_once_and_in_order()
    # No pull was refused for an expired cursor: the epoch is the store's.
    assert sum(metric(r, 'mup_relay_pulls_total{result="bad_cursor"}')
               for r in relays.relays) == 0
    assert sum(metric(r, 'mup_relay_pulls_total{result="messages"}')
               for r in relays.relays) >= 2


def test_a_cursor_from_one_relay_is_good_on_the_other_and_after_a_restart(
        pg_url: str, start_relays: Callable[..., Relays]) -> None:
    """The protocol by hand: a pull on r1, its cursor on r2 and on r1 restarted."""
    relays = start_relays(pg_url)
    r1, r2 = relays.relays

    def pull(relay: RelayProcess, cursor: str = "", timeout: float = 0) -> dict[str, Any]:
        conn = relay.connection(timeout=15)
        try:
            conn.request("GET", f"/relay/pull?cursor={cursor}&timeout={timeout}",
                         headers={"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, body
        return json.loads(body)

    poster = r1.poster()
    assert [poster.post(f"a{i}", f"s0-{i:04}") for i in range(5)] == [200] * 5
    first = pull(r1)
    assert [m["id"] for m in first["messages"]] == [f"kannel:a{i}" for i in range(5)]
    assert pull(r2, first["cursor"]) == {"cursor": first["cursor"], "messages": []}
    relays.restart(0)
    assert pull(r1, first["cursor"]) == {"cursor": first["cursor"], "messages": []}
    # A pull waiting on r2 is woken by a post to r1 (LISTEN/NOTIFY), long before its timeout.
    got: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: got.append(pull(r2, first["cursor"], 8)))
    waiting.start()
    wait_for(lambda: metric(r2, "mup_relay_last_pull_timestamp_seconds") > 0, 5,
             "the pull on r2")
    started = time.monotonic()
    assert r1.poster().post("b1", "s0-0100") == 200
    waiting.join(10)
    assert [m["id"] for m in got[0]["messages"]] == ["kannel:b1"]
    assert time.monotonic() - started < 4.0  # not the 8 s timeout
