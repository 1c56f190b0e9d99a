"""A real `twistd mup-relay` process: posts as Kannel makes them, pulls and acks as the bot
makes them, and `kill -9` at the worst moments.  Nothing the relay answered 2xx to is lost."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mup.testing.relay import RelayProcess

TOKEN = "relay-token"


class Bot:
    """The bot's side of the protocol, spoken by hand over one connection."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)

    def call(self, method: str, path: str, body: Any = None, token: str = TOKEN
             ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def pull(self, cursor: str = "", timeout: float = 0, limit: int = 1000) -> dict[str, Any]:
        code, body = self.call("GET", f"/relay/pull?cursor={cursor}&timeout={timeout}"
                                      f"&limit={limit}")
        assert code == 200, body
        return json.loads(body)

    def ack(self, ids: list[str]) -> dict[str, Any]:
        code, body = self.call("POST", "/relay/ack", {"ids": ids})
        assert code == 200, body
        return json.loads(body)


@pytest.fixture
def relay(tmp_path: Path):
    process = RelayProcess(tmp_path / "relay", token=TOKEN, poll_timeout=5).start()
    yield process
    process.stop()


def ids(answer: dict[str, Any]) -> list[str]:
    return [m["id"] for m in answer["messages"]]


def test_only_acknowledged_messages_leave_and_kill_9_loses_nothing(relay: RelayProcess) -> None:
    poster = relay.poster()
    assert [poster.post(f"m{i:02}", f"hello {i}") for i in range(30)] == [200] * 30
    assert poster.post("m05", "again") == 200  # a gateway retry: answered, not kept twice
    bot = Bot(relay)
    answer = bot.pull()
    assert ids(answer) == [f"kannel:m{i:02}" for i in range(30)]
    assert answer["messages"][3]["record"]["text"] == "hello 3"
    acked = [f"kannel:m{i:02}" for i in range(0, 30, 2)]
    assert bot.ack(acked)["acked"] == acked
    relay.kill()  # -9: no chance to flush anything more
    relay.start()
    bot = Bot(relay)
    # The epoch is kept in the relay's database: the bot's cursor is still good after a restart.
    assert bot.pull(answer["cursor"], timeout=0) == {"cursor": answer["cursor"], "messages": []}
    assert ids(bot.pull()) == [f"kannel:m{i:02}" for i in range(1, 30, 2)]
    assert relay.health()["relay_backlog"] == 15
    assert poster.post("m01", "retried after the restart") == 200
    assert relay.health()["relay_backlog"] == 15


def test_kill_9_during_a_long_poll_then_the_messages_come_after_restart(
        relay: RelayProcess) -> None:
    bot = Bot(relay)
    first = bot.pull()
    outcome: list[Any] = []

    def long_poll() -> None:
        try:
            outcome.append(bot.pull(first["cursor"], timeout=5))
        except (OSError, http.client.HTTPException) as e:
            outcome.append(e)

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    time.sleep(0.3)  # the pull is waiting on the relay
    relay.kill()
    waiting.join(10)
    assert isinstance(outcome[0], (OSError, http.client.HTTPException))
    relay.start()
    poster = relay.poster()
    assert [poster.post(f"n{i}", f"after {i}") for i in range(5)] == [200] * 5
    bot = Bot(relay)
    answer = bot.pull(timeout=5)
    assert ids(answer) == [f"kannel:n{i}" for i in range(5)]


def test_a_long_poll_answers_as_soon_as_kannel_posts(relay: RelayProcess) -> None:
    bot = Bot(relay)
    cursor = bot.pull()["cursor"]
    got: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: got.append(bot.pull(cursor, timeout=5)))
    waiting.start()
    time.sleep(0.3)  # the pull is waiting on the relay
    started = time.monotonic()
    assert relay.poster().post("x1", "now") == 200
    waiting.join(5)
    assert ids(got[0]) == ["kannel:x1"]
    assert time.monotonic() - started < 2.5  # not the 5 s timeout


def test_wrong_token_is_401_on_the_real_relay(relay: RelayProcess) -> None:
    bot = Bot(relay)
    assert bot.call("GET", "/relay/pull?timeout=0", token="nope")[0] == 401
    assert bot.call("POST", "/relay/ack", {"ids": []}, token="")[0] == 401
