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
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import LineClient, percentiles, start_ngircd, toml_text  # noqa: E402 - and children run this tree

from mup.testing.kannel import Kannel  # noqa: E402
from mup.testing.process import ServerProcess, twistd_argv, wait_for  # noqa: E402

PEOPLE = ROOT / "tests" / "data" / "people.ldif"
BOT = "mupbench"


def write_config(path: Path, irc_port: int, kannel: Kannel, state: Path,
                 ldap_url: str = "") -> None:
    ldap = {"url": ldap_url} if ldap_url else {"ldif": str(PEOPLE)}
    path.write_text(toml_text({
        "irc": {"endpoint": f"tcp:host=127.0.0.1:port={irc_port}", "nick": BOT,
                "line_rate": 0.0, "command_rate": 0.0},
        "ldap": {**ldap, "base_dn": "ou=people,dc=example,dc=com"},
        "sms": {"gateway": "kannel", "sender": "4242", "require_account": False,
                "allowed_hostmasks": ["*!*@127.0.0.1", "*!*@localhost"],
                "default_region": "BR", "sender_rate": 0.0, "sender_daily": 0,
                "global_daily": 0},
        "sms.kannel": {"sendsms_url": kannel.sendsms_url, "username": kannel.username,
                       "password": kannel.password},
        "state": {"directory": str(state)},
        "log": {"level": "warn"}}))


def same(answer: str) -> str:
    """An answer with poke's local time left out (a run may cross a minute)."""
    return re.sub(r"<time:[^>]*>", "<time>", answer)


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
        ngircd = start_ngircd(work / "ngircd")
        stoppers.append(ngircd.stop)
        irc_port = ngircd.port
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
        client.register()

        def bot_answers() -> bool:
            try:
                return client.ask(BOT, "echo ready", timeout=0.5) == "ready"
            except TimeoutError:
                return False

        wait_for(bot_answers, 30, "the bot to answer", bot.alive)
        token = f"sync-{time.monotonic_ns()}"  # skip late answers: wait for exactly this one
        client.privmsg(BOT, f"echo {token}")
        client.expect(rf"^:{BOT}!\S+ PRIVMSG \S+ :{token}$")

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
            answer = client.ask(BOT, text)
            elapsed = time.perf_counter() - t
            assert same(answer) == same(expect), answer
            return elapsed

        for i in range(5):  # warm up every path
            kannel_direct(i)
            timed("echo warm", "warm")
            timed(f"sms niemeyer warm {i}", "SMS is on the way!")
        poke_answer = client.ask(BOT, "poke niemeyer")
        floor, echo, poke, sms = [], [], [], []
        for i in range(args.sends):
            floor.append(kannel_direct(i))
            echo.append(timed(f"echo {i}", str(i)))
            poke.append(timed("poke niemeyer", poke_answer))
            sms.append(timed(f"sms niemeyer bench {i}", "SMS is on the way!"))
        expected = 2 * (5 + args.sends)
        kannel.wait_for_received(expected, timeout=60)

        def row(name: str, values: list[float]) -> str:
            stats = percentiles(values)
            return (f"{name:<26} p50 {stats['p50'] * 1000:7.2f} ms   "
                    f"p99 {stats['p99'] * 1000:7.2f} ms   "
                    f"mean {stats['mean'] * 1000:7.2f} ms")

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
        p50 = {name: percentiles(values)["p50"] for name, values in
               (("floor", floor), ("echo", echo), ("poke", poke), ("sms", sms))}
        over = p50["sms"] - p50["floor"]
        own = over - p50["echo"]
        print(f"mup over the Kannel floor at p50: {over * 1000:.2f} ms (target: < 3 ms; "
              f"ratio {p50['sms'] / p50['floor']:.1f}x); "
              f"without the IRC round trip: {own * 1000:.2f} ms")
        lookup = p50["poke"] - p50["echo"]
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
