"""bench/sms.py: ``@sms`` on IRC -> Kannel accepted -> reply on IRC, p50/p99 over N sends.

Beside it, in the same run and interleaved so noise hits all alike:
  * kannel: Kannel's own sendsms answer, asked directly over one keep-alive HTTP connection
    (the floor mup cannot go under);
  * echo:   an ``echo`` command round trip over the same IRC connection (the IRC floor);
  * poke:   ``poke niemeyer``, IRC plus one directory lookup (what a lookup costs).
mup's cost is ``sms - kannel`` (which still includes IRC and two directory lookups) and
``sms - kannel - echo`` (the sms command itself: directory, counting, quota, gateway).

Everything is real and local: ngircd, Kannel (bearerbox + smsbox + fakesmsc), the bot as
``twistd -n mup`` with an embedded LDIF directory.  The machine's 2 cores are shared with the
whole stack (and maybe other work): run it twice and trust the p50 more than the p99.

    python bench/sms.py [--sends 100] [--slapd]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import _common  # noqa: E402,F401 - children run this source tree (PYTHONPATH)

from mup.testing.kannel import Kannel  # noqa: E402
from mup.testing.process import ServerProcess, free_port, twistd_argv, wait_for  # noqa: E402

PEOPLE = ROOT / "tests" / "data" / "people.ldif"
BOT = "mupbench"


class LineClient:
    """A blocking IRC client: enough to register, talk to the bot and wait for its answer."""

    def __init__(self, port: int, nick: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.nick = nick
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :bench")
        self.wait(lambda p: len(p) > 1 and p[1] in ("376", "422"))

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def lines(self):
        while True:
            while b"\r\n" in self.buf:
                raw, self.buf = self.buf.split(b"\r\n", 1)
                yield raw.decode("utf-8", "replace")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the IRC server closed the connection")
            self.buf += data

    def wait(self, match, timeout: float = 10.0) -> str:
        self.sock.settimeout(timeout)
        for line in self.lines():
            parts = line.split(" ")
            if parts[0] == "PING":
                self.send("PONG " + " ".join(parts[1:]))
                continue
            if match(parts):
                return line
        raise AssertionError("unreachable")

    def sync(self) -> None:
        """Skip any late answers: ask for a unique echo and wait for exactly it."""
        token = f"sync-{time.monotonic_ns()}"
        self.send(f"PRIVMSG {BOT} :echo {token}")
        self.wait(lambda p: p[0].startswith(f":{BOT}!") and p[-1] == f":{token}")

    def ask(self, text: str, timeout: float = 10.0) -> str:
        """Send the bot a private message; return its answer's text."""
        self.send(f"PRIVMSG {BOT} :{text}")
        line = self.wait(lambda p: len(p) > 2 and p[1] in ("PRIVMSG", "NOTICE")
                         and p[0].startswith(f":{BOT}!"), timeout)
        return line.split(" :", 1)[1]


def start_ngircd(directory: Path, port: int):
    from mup.testing.ngircd import Ngircd

    server = Ngircd(directory, port=port, name="irc.bench.local", max_penalty_time=0)
    server.start()
    return server


def write_config(path: Path, irc_port: int, kannel: Kannel, state: Path,
                 ldap_url: str = "") -> None:
    ldap = f'url = "{ldap_url}"' if ldap_url else f'ldif = "{PEOPLE}"'
    path.write_text(f"""
[irc]
endpoint = "tcp:host=127.0.0.1:port={irc_port}"
nick = "{BOT}"
line_rate = 0.0
command_rate = 0.0

[ldap]
{ldap}
base_dn = "ou=people,dc=example,dc=com"

[sms]
gateway = "kannel"
sender = "4242"
require_account = false
allowed_hostmasks = ["*!*@127.0.0.1", "*!*@localhost"]
default_region = "BR"
sender_rate = 0.0
sender_daily = 0
global_daily = 0

[sms.kannel]
sendsms_url = "{kannel.sendsms_url}"
username = "{kannel.username}"
password = "{kannel.password}"

[state]
directory = "{state}"

[log]
level = "warn"
""")


def same(answer: str) -> str:
    """An answer with poke's local time left out (a run may cross a minute)."""
    return re.sub(r"<time:[^>]*>", "<time>", answer)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(p / 100 * (len(ordered) - 1))), len(ordered) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--slapd", action="store_true",
                        help="look people up in a real slapd instead of the embedded LDIF")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mup-bench-sms-"))
    stoppers = []
    try:
        kannel = Kannel(work / "kannel", max_messages=3)
        stoppers.append(kannel.stop)
        kannel.start()
        irc_port = free_port()
        ngircd = start_ngircd(work / "ngircd", irc_port)
        stoppers.append(ngircd.stop)
        ldap_url = ""
        if args.slapd:
            from mup.testing.slapd import Slapd

            slapd = Slapd(work / "slapd", PEOPLE)
            stoppers.append(slapd.stop)
            slapd.start()
            ldap_url = slapd.url
        config = work / "mup.toml"
        write_config(config, irc_port, kannel, work / "state", ldap_url)
        bot = ServerProcess(twistd_argv("-n", f"--pidfile={work / 'mup.pid'}", "mup",
                                        "--config", str(config)), work / "mup.log", cwd=work)
        stoppers.append(bot.stop)
        client = LineClient(irc_port, "jose")

        def bot_answers() -> bool:
            try:
                return client.ask("echo ready", timeout=0.5) == "ready"
            except TimeoutError:
                return False

        wait_for(bot_answers, 30, "the bot to answer", bot.alive)
        client.sync()

        sendsms = urllib.parse.urlsplit(kannel.sendsms_url)
        conn = http.client.HTTPConnection(sendsms.hostname, sendsms.port, timeout=10)

        def kannel_direct(i: int) -> float:
            query = urllib.parse.urlencode({
                "username": kannel.username, "password": kannel.password, "from": "4242",
                "to": "+551155551234", "text": f"jose> direct {i}", "charset": "UTF-8",
                "coding": "0"})
            t = time.perf_counter()
            conn.request("GET", f"{sendsms.path}?{query}")
            body = conn.getresponse().read()
            elapsed = time.perf_counter() - t
            assert body.startswith(b"0:"), body
            return elapsed

        def timed(text: str, expect: str) -> float:
            t = time.perf_counter()
            answer = client.ask(text)
            elapsed = time.perf_counter() - t
            assert same(answer) == same(expect), answer
            return elapsed

        for i in range(5):  # warm up every path
            kannel_direct(i)
            timed("echo warm", "warm")
            timed(f"sms niemeyer warm {i}", "SMS is on the way!")
        poke_answer = client.ask("poke niemeyer")
        floor, echo, poke, sms = [], [], [], []
        for i in range(args.sends):
            floor.append(kannel_direct(i))
            echo.append(timed(f"echo {i}", str(i)))
            poke.append(timed("poke niemeyer", poke_answer))
            sms.append(timed(f"sms niemeyer bench {i}", "SMS is on the way!"))
        expected = 2 * (5 + args.sends)
        kannel.wait_for_received(expected, timeout=60)

        def row(name: str, values: list[float]) -> str:
            return (f"{name:<26} p50 {percentile(values, 50) * 1000:7.2f} ms   "
                    f"p99 {percentile(values, 99) * 1000:7.2f} ms   "
                    f"mean {statistics.mean(values) * 1000:7.2f} ms")

        where = "slapd" if args.slapd else "the embedded LDIF directory"
        print(f"bench/sms.py: {args.sends} sends each, interleaved, people in {where}; "
              f"{os.cpu_count()} cores shared with ngircd, Kannel, the bot and this client")
        print(f"load average (1 min) before the run {load_before:.2f}, after "
              f"{os.getloadavg()[0]:.2f}: above ~1 other work competes for the cores and "
              "every figure grows (the sms path wakes four processes in turn)")
        print(row("kannel sendsms (floor)", floor))
        print(row("@echo round trip (IRC)", echo))
        print(row("@poke (IRC + 1 lookup)", poke))
        print(row("@sms -> accepted -> reply", sms))
        over = percentile(sms, 50) - percentile(floor, 50)
        own = over - percentile(echo, 50)
        print(f"mup over the Kannel floor at p50: {over * 1000:.2f} ms (target: < 3 ms; "
              f"ratio {percentile(sms, 50) / percentile(floor, 50):.1f}x); "
              f"without the IRC round trip: {own * 1000:.2f} ms")
        lookup = percentile(poke, 50) - percentile(echo, 50)
        print(f"one directory lookup (poke - echo) at p50: {lookup * 1000:.2f} ms; @sms finds "
              "its sender and its recipient in one search")
        print(f"fakesmsc received {len(kannel.received())} SMS (expected {expected})")
        return 0
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
