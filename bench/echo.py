"""Benchmark the round trip of ``echo`` through a real ngircd, beside a null bot.

    python bench/echo.py [--commands 2000] [--warmup 100]

A client sends ``@echo x<N>`` in a channel, waits for the reply, then sends the next.  Measured
in the same run against the same ngircd (MaxPenaltyTime = 0, or ngircd's own 1 s penalty is
what gets measured):

1. the null bot: a bare socket (TCP_NODELAY) answering the same line, the floor;
2. mup (``twistd -n mup``, line_rate = 0 and command_rate = 0: throttles off);

and prints p50/p90/p99, the ratio to the floor, mup's start-up time (process start until the
client sees its JOIN), its first reply, and its RSS after the run; then the same start-up and
RSS for the IRC core alone (IRCService with echo, no directory/SMS/webhook modules), to show
what the rest of the program costs.  Two shared cores: figures
move by +-20 % when other work runs on the machine.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    ROOT,
    LineClient,
    ServerProcess,
    fmt_ms,
    percentiles,
    rss_mb,
    start_bot,
    start_ngircd,
)

CORE_ONLY = """
import sys
from twisted.internet import reactor
from mup.commands import Commands, Dispatcher
from mup.commands.basic import echo
from mup.config import parse
from mup.irc import IRCService
config = parse({"irc": {"endpoint": sys.argv[1], "nick": "core", "channels": ["#bench"],
                        "line_rate": 0, "command_rate": 0}})
IRCService(config, Dispatcher.from_config(Commands([echo()]), config, reactor),
           reactor).startService()
reactor.run()
"""


def null_bot(port: int, channel: str, ready: threading.Event, stop: threading.Event) -> None:
    """Join ``channel`` and answer every ``@echo text`` with ``nick: text``, nothing else."""
    client = LineClient(port, "nullbot")
    client.register()
    client.join(channel)
    ready.set()
    pattern = re.compile(rb"^:([^!]+)![^ ]+ PRIVMSG " + re.escape(channel.encode())
                         + rb" :@echo (.*)\r\n")
    while not stop.is_set():
        raw = client.read_raw(0.2)
        if raw is None:
            continue
        m = pattern.match(raw)
        if m:
            client.sock.sendall(b"PRIVMSG " + channel.encode() + b" :" + m.group(1) + b": "
                                + m.group(2) + b"\r\n")
    client.close()


def round_trips(client: LineClient, channel: str, bot: str, n: int, tag: str) -> list[float]:
    samples = []
    for i in range(n):
        text = f"x{tag}{i}"
        want = f" PRIVMSG {channel} :{client.nick}: {text}\r\n".encode()
        start = time.perf_counter()
        client.sock.sendall(f"PRIVMSG {channel} :@echo {text}\r\n".encode())
        while True:
            raw = client.read_raw(10)
            if raw is None:
                raise TimeoutError(f"no echo reply from {bot} for {text!r}")
            if raw.endswith(want) and raw.startswith(f":{bot}!".encode()):
                break
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mup-bench-echo-") as tmp:
        work = Path(tmp)
        server = start_ngircd(work / "ngircd", fast=True)
        try:
            client = LineClient(server.port, "bencher")
            client.register()
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            # 1. the floor: a bare socket answering the same line
            ready, stop = threading.Event(), threading.Event()
            thread = threading.Thread(target=null_bot, args=(server.port, "#null", ready, stop),
                                      daemon=True)
            thread.start()
            ready.wait(10)
            client.join("#null")
            round_trips(client, "#null", "nullbot", args.warmup, "w")
            floor = percentiles(round_trips(client, "#null", "nullbot", args.commands, "m"))
            stop.set()
            thread.join(5)

            # 2. mup itself, throttles off
            client.join("#bench")
            started = time.perf_counter()
            bot = start_bot(work / "bot", {"irc": {
                "endpoint": server.endpoint, "nick": "mup", "channels": ["#bench"],
                "line_rate": 0, "command_rate": 0}})
            try:
                client.expect_raw(rb"^:mup!\S+ JOIN :?#bench", timeout=30)
                startup = time.perf_counter() - started
                first = round_trips(client, "#bench", "mup", 1, "f")[0]
                round_trips(client, "#bench", "mup", args.warmup, "w")
                measured = percentiles(round_trips(client, "#bench", "mup", args.commands, "m"))
                rss = rss_mb(bot.pid)
            finally:
                bot.stop()
            # 3. the IRC core alone, for comparison
            started = time.perf_counter()
            core = ServerProcess([sys.executable, "-c", CORE_ONLY, server.endpoint],
                                 work / "core.log", cwd=ROOT)
            try:
                client.expect_raw(rb"^:core!\S+ JOIN :?#bench", timeout=30)
                core_startup = time.perf_counter() - started
                round_trips(client, "#bench", "core", args.warmup, "c")
                core_rss = rss_mb(core.pid)
            finally:
                core.stop()
            client.close()
        finally:
            server.stop()

    print(f"echo round trip through ngircd (MaxPenaltyTime=0), {args.commands} commands "
          f"after {args.warmup} warm-up, one at a time")
    print(f"  null bot (floor): {fmt_ms(floor)}")
    print(f"  mup:              {fmt_ms(measured)}")
    print(f"  ratio mup/floor:  p50 {measured['p50'] / floor['p50']:.1f}x  "
          f"p99 {measured['p99'] / floor['p99']:.1f}x")
    print(f"  mup extra time:   p50 {(measured['p50'] - floor['p50']) * 1000:.3f} ms")
    print(f"mup first reply after joining: {first * 1000:.2f} ms")
    print(f"mup start-up (process start -> JOIN seen): {startup * 1000:.0f} ms")
    print(f"mup RSS after the run: {rss:.1f} MiB")
    print(f"IRC core alone: start-up {core_startup * 1000:.0f} ms, RSS {core_rss:.1f} MiB "
          f"(Python + Twisted's reactor, which loads OpenSSL/cryptography, is most of both)")
    print("targets: p50 < 0.5 ms, RSS < 40 MB, start-up < 1 s "
          "(Limnoria here: 0.91 ms p50, 29.5 MB, 0.14 s)")


if __name__ == "__main__":
    main()
