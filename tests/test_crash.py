"""Crash safety: ``kill -9`` the real bot at random moments, five times; nothing answered 2xx
is lost.

Four senders post a stream of Kannel MOs (each sender one at a time, at a random pace,
retrying like Kannel does until it gets a 2xx) while another thread ``kill -9``s the bot
(``twistd -n mup``, default flood control on a default ngircd) at random moments and starts it
again on the same message store.  A client in the channel records what appears.  Every message
that got a 2xx must appear, and each sender's messages first appear in the order they were
posted.  A message may appear twice (shown, not yet confirmed and marked done at the kill), but
only the last few seconds' worth: at most ``line_burst + 2`` per kill (issue 13.1).
"""

from __future__ import annotations

import http.client
import os
import random
import re
import threading
import time
import urllib.parse
from collections import Counter

from mup.testing.process import free_port, taken_port, wait_for

TOKEN = "crash-token"
SENDERS = ["+15555550101", "+15555550102", "+15555550103", "+15555550104"]
PER_SENDER = 10
KILLS = 5


def post(port: int, sender: str, message_id: str, text: str) -> int | None:
    query = urllib.parse.urlencode({"from": sender, "to": "4242", "id": message_id,
                                    "text": text, "token": TOKEN, "charset": "UTF-8"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/kannel/mo?" + query)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_kill_9_at_random_moments_loses_nothing(ngircd, irc_client, run_bot, tmp_path):
    seed = int(os.environ.get("MUP_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"MUP_CRASH_SEED={seed}")
    port = free_port()
    config = {
        "irc": {"endpoint": ngircd.endpoint, "nick": "mup", "channels": ["#ops"],
                "reconnect_max_delay": 0.5},
        "sms.kannel": {"inbound_token": TOKEN},
        "webhook": {"endpoint": f"tcp:port={port}:interface=127.0.0.1",
                    "journal": str(tmp_path / "journal")},
        "inbound": {"default_channel": "#ops", "hint": False},
        "state": {"directory": str(tmp_path / "state")},
    }
    bots = [run_bot(config)]
    watcher = irc_client(ngircd.port, "watcher")
    watcher.join("#ops")

    acked: dict[str, list[str]] = {s: [] for s in SENDERS}
    pauses = {s: [rng.uniform(0, 0.8) for _ in range(PER_SENDER)] for s in SENDERS}

    def sender_loop(n: int, sender: str) -> None:
        for i in range(PER_SENDER):
            message_id, text = f"s{n}-{i:03d}", f"#ops crash s{n} m{i:03d}"
            while post(port, sender, message_id, text) != 200:
                time.sleep(0.02)      # the bot is down or restarting: retry, like Kannel
            acked[sender].append(f"s{n} m{i:03d}")
            time.sleep(pauses[sender][i])

    threads = [threading.Thread(target=sender_loop, args=(n, s), daemon=True)
               for n, s in enumerate(SENDERS)]
    for t in threads:
        t.start()
    # Random moments over the posting and the draining (1 line/s): while posts arrive,
    # while the backlog is shown, while the bot starts up again.
    started = time.monotonic()
    for moment in sorted(rng.uniform(0.3, 25.0) for _ in range(KILLS)):
        time.sleep(max(0.0, started + moment - time.monotonic()))
        bots[-1].kill()
        bots.append(run_bot(config, wait=False))
    for t in threads:
        t.join(120)
    assert all(len(v) == PER_SENDER for v in acked.values()), \
        f"senders still waiting for a 2xx after 120 s: {acked} (seed {seed})"

    expected = {m for v in acked.values() for m in v}
    shown: list[str] = []
    pattern = re.compile(r"PRIVMSG #ops :\[SMS\] <[^>]*> crash (s\d m\d{3})$")

    def collect() -> bool:
        while True:
            raw = watcher.read_raw(0.2)
            if raw is None:
                break
            m = pattern.search(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if m:
                shown.append(m.group(1))
        return expected <= set(shown)

    # Lines read while joining are in watcher.lines already.
    for raw in watcher.lines:
        m = pattern.search(raw.decode("utf-8", "replace").rstrip("\r\n"))
        if m:
            shown.append(m.group(1))
    wait_for(collect, 240, "every answered message to appear on IRC", interval=0)

    missing = expected - set(shown)
    assert not missing, f"lost: {sorted(missing)} (MUP_CRASH_SEED={seed})"
    for n in range(len(SENDERS)):
        firsts = list(dict.fromkeys(m for m in shown if m.startswith(f"s{n} ")))
        assert firsts == sorted(firsts), f"sender {n} out of order: {firsts} (seed {seed})"
    twice = {m: c for m, c in Counter(shown).items() if c > 1}
    again = sum(c - 1 for c in twice.values())
    print(f"{len(expected)} messages, {KILLS} kills, {again} shown again: {sorted(twice)}")
    line_burst = 5  # the default of [irc] line_burst
    assert again <= KILLS * (line_burst + 2), f"{again} shown again (seed {seed})"


def test_a_webhook_port_in_use_stops_the_bot_at_once(tmp_path):
    """Not a hang: the store's threads, started before, must not keep twistd alive."""
    import subprocess

    from mup.testing.process import twistd_argv

    with taken_port() as port:
        config = tmp_path / "mup.toml"
        config.write_text(f"""
[irc]
endpoint = "tcp:host=127.0.0.1:port={free_port()}"
channels = ["#ops"]
[webhook]
endpoint = "tcp:port={port}:interface=127.0.0.1"
journal = "{tmp_path / 'journal'}"
[state]
directory = "{tmp_path / 'state'}"
""")
        result = subprocess.run(twistd_argv("-n", "--pidfile=", "mup", "--config", str(config)),
                                capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr
