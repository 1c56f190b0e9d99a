"""Benchmark mup-relay: gateway POST on the relay -> visible on IRC through the bot, and the
drain of a backlog kept while the bot was down.

    python bench/relay.py [--messages 200] [--backlog 10000] [--flood-sample 12] [--senders 1]

All real processes on loopback: ngircd (MaxPenaltyTime = 0), ``twistd -n mup-relay``,
``twistd -n mup``, and a plain-socket client in #ops that timestamps each PRIVMSG.
Prints, measured in the same run:

1. POST -> IRC latency p50/p99, one message at a time, through the relay (Kannel-style GET on
   the relay's /kannel/mo, the bot's long poll, its journal, delivery, PRIVMSG + PING/PONG
   confirmation) and, as the baseline, straight to the bot's own webhook; and their ratio.
2. Drain time of a ``--backlog`` posted to the relay while the bot is stopped, from the bot's
   start (process launch) until the last message is on IRC, with ``line_rate = 0``; and
   until the relay has every acknowledgement.
3. With the default flood control (``line_burst``/``line_rate`` from the schema): the steady
   interval between messages on a ``--flood-sample`` backlog, the bound it should follow
   (each SMS costs its PRIVMSG, and delivery pipelines up to ``mup.delivery.PIPELINE``
   messages per sender, which share one confirming PING: (1 + 1/PIPELINE) lines /
   ``line_rate``; it was 2 lines when each SMS waited for its own PONG), and the drain time
   of ``--backlog`` that bound implies (not waited for: hours).

Two shared cores: the relay, the bot, ngircd, the posting threads and the journal threads
compete; expect +-20 % between runs on latency and drain.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
import _common  # noqa: E402,F401 - children run this source tree (PYTHONPATH)

from mup.config import SCHEMA  # noqa: E402
from mup.delivery import PIPELINE  # noqa: E402
from mup.testing.ircclient import LineClient  # noqa: E402
from mup.testing.ngircd import Ngircd  # noqa: E402
from mup.testing.process import ServerProcess, free_port, twistd_argv, wait_for  # noqa: E402
from mup.testing.relay import KannelPoster, RelayProcess  # noqa: E402

TOKEN = "bench-relay-token"
KANNEL = "bench-kannel-token"


def default(section: str, name: str):
    return next(k.default for k in SCHEMA[section][1] if k.name == name)


class Bot:
    """``twistd -n mup`` with either a relay_url or its own webhook."""

    def __init__(self, directory: Path, irc_endpoint: str, *, relay_url: str = "",
                 webhook_port: int = 0, line_rate: float | None = 0.0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mup.toml"
        rate = "" if line_rate is None else f"line_rate = {line_rate}\n"
        webhook = (f'endpoint = "tcp:port={webhook_port}:interface=127.0.0.1"\n'
                   if webhook_port else "")
        relay = f'relay_url = "{relay_url}"\nrelay_token = "{TOKEN}"\n' if relay_url else ""
        self.config.write_text(
            f'[irc]\nendpoint = "{irc_endpoint}"\nnick = "mupbench"\nchannels = ["#ops"]\n'
            f"{rate}"
            f'[webhook]\n{webhook}journal = "{directory / "journal"}"\n'
            f'[sms.kannel]\ninbound_token = "{KANNEL}"\n'
            f'[inbound]\ndefault_channel = "#ops"\nhint = false\n{relay}'
            f'[state]\ndirectory = "{directory / "state"}"\n'
            '[log]\nlevel = "info"\n')
        self.process: ServerProcess | None = None
        self.runs = 0

    def start(self, wait: bool = True) -> float:
        """Launch; returns the launch time (perf_counter)."""
        self.runs += 1
        started = time.perf_counter()
        self.process = ServerProcess(
            twistd_argv("-n", "--pidfile=", "--logfile=-", "mup", "--config", str(self.config)),
            self.directory / f"mup-{self.runs}.log", cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if wait:
            self.process.wait_for_output("Joined #ops", 30)
        return started

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency(poster: KannelPoster, watcher: LineClient, tag: str, count: int
            ) -> tuple[list[float], list[float]]:
    """(POST -> IRC, POST answered) seconds for ``count`` messages sent one at a time."""
    visible, accepted = [], []
    for i in range(count):
        text = f"{tag}-{i}"
        t0 = time.perf_counter()
        assert poster.post(f"{tag}{i}", text) == 200
        t1 = time.perf_counter()
        watcher.expect_raw(rf":\[SMS\] <[^>]*> {re.escape(text)}\r", 10)
        t2 = time.perf_counter()
        visible.append(t2 - t0)
        accepted.append(t1 - t0)
    return visible, accepted


def count_lines(watcher: LineClient, tag: str, count: int, timeout: float) -> list[float]:
    """Wait for ``count`` SMS lines tagged ``tag``; their arrival times (perf_counter)."""
    pattern = re.compile(rb":\[SMS\] <[^>]*> " + tag.encode() + rb"-\d+")
    times: list[float] = []
    deadline = time.monotonic() + timeout
    while len(times) < count:
        raw = watcher.read_raw(max(deadline - time.monotonic(), 0))
        if raw is None:
            raise TimeoutError(f"{len(times)} of {count} {tag} lines seen")
        if pattern.search(raw):
            times.append(time.perf_counter())
    return times


def drain(poster: KannelPoster, relay: RelayProcess, bot: Bot, watcher: LineClient, tag: str,
          count: int, senders: int, timeout: float) -> dict[str, float]:
    """Post ``count`` messages from ``senders`` numbers while the bot is down (all must be
    kept), start the bot, and time the drain: seconds of ``posting``, and from the bot's
    launch to the ``first`` and ``last`` line on IRC and to the relay being ``acked``; ``rate``
    is lines a second once flowing."""
    t0 = time.perf_counter()
    statuses = poster.post_many(((f"{tag}{i}", f"{tag}-{i}", f"+4477009{i % senders:05}")
                                 for i in range(count)), connections=16)
    posting = time.perf_counter() - t0
    assert statuses == [200] * count, "the relay refused some posts"
    assert relay.health()["relay_backlog"] == count
    launched = bot.start(wait=False)
    times = count_lines(watcher, tag, count, timeout=timeout)
    wait_for(lambda: relay.health()["relay_backlog"] == 0, 120, "acks", interval=0.05)
    return {"posting": posting, "first": times[0] - launched, "last": times[-1] - launched,
            "acked": time.perf_counter() - launched, "rate": count / (times[-1] - times[0])}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=10000)
    parser.add_argument("--flood-sample", type=int, default=12)
    parser.add_argument("--senders", type=int, default=1,
                        help="distinct phone numbers in the backlog (delivery runs one lane "
                             "per sender, up to 16 at once)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mup-bench-relay-"))
    print(f"mup-relay benchmark, {os.cpu_count()} cores, work dir {work}")
    ngircd = Ngircd(work / "ngircd", max_penalty_time=0).start()
    relay = RelayProcess(work / "relay", token=TOKEN, kannel_token=KANNEL).start()
    watcher = LineClient(ngircd.port, "watcher", timeout=30)
    watcher.register()
    watcher.join("#ops")
    bots: list[Bot] = []
    try:
        # 1. Latency: baseline straight to the bot's webhook, then through the relay.
        port = free_port()
        direct = Bot(work / "direct", ngircd.endpoint, webhook_port=port)
        bots.append(direct)
        direct.start()
        wait_for(lambda: _port_open(port), 10, "the bot's webhook")
        poster = KannelPoster("127.0.0.1", port, KANNEL)
        latency(poster, watcher, "warm", 20)
        base, base_acc = latency(poster, watcher, "direct", args.messages)
        poster.close()
        direct.stop()

        bot = Bot(work / "relayed", ngircd.endpoint, relay_url=relay.url)
        bots.append(bot)
        bot.start()
        poster = relay.poster()
        latency(poster, watcher, "rwarm", 20)
        via, via_acc = latency(poster, watcher, "relay", args.messages)
        poster.close()
        print(f"\n1. POST -> visible on IRC, {args.messages} messages one at a time "
              "(line_rate = 0):")
        print(f"   straight to the bot's webhook (baseline): p50 {ms(percentile(base, 50))}, "
              f"p99 {ms(percentile(base, 99))} (POST answered: p50 "
              f"{ms(percentile(base_acc, 50))})")
        print(f"   through mup-relay:                        p50 {ms(percentile(via, 50))}, "
              f"p99 {ms(percentile(via, 99))} (POST answered: p50 "
              f"{ms(percentile(via_acc, 50))})")
        print(f"   ratio relay/baseline: p50 x{percentile(via, 50) / percentile(base, 50):.2f}, "
              f"p99 x{percentile(via, 99) / percentile(base, 99):.2f}; target p50 < 50 ms: "
              f"{'met' if percentile(via, 50) < 0.05 else 'NOT met'}")
        wait_for(lambda: relay.health()["relay_backlog"] == 0, 30, "acks")

        # 2. Drain a backlog kept while the bot was down, line_rate = 0.
        bot.stop()
        d = drain(relay.poster(), relay, bot, watcher, "drain", args.backlog, args.senders,
                  timeout=600)
        print(f"\n2. Drain of {args.backlog} messages from {args.senders} sender(s) posted "
              "while the bot was down "
              f"(posting took {d['posting']:.1f} s at 16 connections, "
              f"{args.backlog / d['posting']:.0f}/s), line_rate = 0:")
        print(f"   from the bot's launch: first on IRC after {d['first']:.2f} s, last after "
              f"{d['last']:.2f} s ({d['rate']:.0f} msg/s once "
              f"flowing); relay fully acknowledged after {d['acked']:.2f} s")
        bot.stop()

        # 3. Default flood control: measure the interval, compute the bound.
        burst = default("irc", "line_burst")
        rate = default("irc", "line_rate")
        flood = Bot(work / "flood", ngircd.endpoint, relay_url=relay.url, line_rate=None)
        bots.append(flood)
        poster = relay.poster()
        for i in range(args.flood_sample):
            assert poster.post(f"flood{i}", f"flood-{i}") == 200
        poster.close()
        launched = flood.start(wait=False)
        times = count_lines(watcher, "flood", args.flood_sample,
                            timeout=30 + 3 * args.flood_sample / rate)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        steady = statistics.median(gaps[len(gaps) // 2:])
        lines_per_sms = 1 + 1 / PIPELINE
        per_message = lines_per_sms / rate
        print(f"\n3. Default flood control (line_burst = {burst}, line_rate = {rate}/s); "
              f"each SMS costs its PRIVMSG, and up to {PIPELINE} pipelined SMS of a sender "
              "share one confirming PING:")
        print(f"   {args.flood_sample}-message backlog: last on IRC {times[-1] - launched:.1f} s "
              f"after launch; steady interval {steady:.2f} s per message (bound "
              f"{per_message:.2f} s = {lines_per_sms:.3f} lines / {rate}/s; one PING per SMS, "
              f"as before pipelining: {2 / rate:.2f} s)")
        bound = max(0.0, lines_per_sms * args.backlog - burst) / rate
        print(f"   => a {args.backlog}-message backlog drains in about {bound:.0f} s "
              f"({bound / 3600:.1f} h) at the default rate (measured rate extrapolated: "
              f"{args.backlog * steady:.0f} s)")
        flood.stop()
    finally:
        for b in bots:
            b.stop()
        watcher.close()
        relay.stop()
        ngircd.stop()


def _port_open(port: int) -> bool:
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
