"""bench/poke.py: ``poke`` round trip through ngircd + slapd, beside ``echo``, p50/p99 over N.

In the same run, interleaved so that noise hits every path alike:
  * echo:           an ``echo`` round trip to the bot over IRC (the IRC floor);
  * poke (slapd):   ``poke niemeyer`` to the same bot, which asks a real slapd;
  * slapd alone:    the very search poke sends, pre-encoded, over a plain blocking socket
                    (the directory floor mup cannot go under).
Then, in a second block: ``echo`` and ``poke niemeyer`` to a second bot serving the same people
from the LDIF file (the embedded directory).
After that, the directory client alone: ``LDAPDirectory.search`` in this process (ldaptor's
client encoding and decoding + slapd, no IRC).  The budget: ``poke`` p50 <= 2 ms both ways.

Everything is real and local: ngircd with ``MaxPenaltyTime = 0`` (no 1 s flood penalties),
slapd from tests/data/people.ldif, the bots as ``twistd -n mup``.  The machine's 2 cores are
shared by the whole stack (and maybe other work): run it twice; trust p50 more than p99.

    python bench/poke.py [--rounds 500]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import LineClient, percentiles, toml_text  # noqa: E402 - and children run this tree
from ldaptor.protocols import pureldap  # noqa: E402

from mup.directory import Attributes  # noqa: E402
from mup.ldap import query_filter  # noqa: E402
from mup.testing.ngircd import Ngircd  # noqa: E402
from mup.testing.process import ServerProcess, free_port, twistd_argv, wait_for  # noqa: E402
from mup.testing.slapd import Slapd  # noqa: E402

PEOPLE = ROOT / "tests" / "data" / "people.ldif"
BASE_DN = "ou=people,dc=example,dc=com"
QUERY = "niemeyer"


class RawLDAP:
    """slapd alone: one anonymous connection, the poke search pre-encoded, answers framed by
    their BER lengths and not decoded (as little client work as possible)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        names = Attributes(timezone="timezone")
        self.request = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(
            baseObject=BASE_DN, scope=pureldap.LDAP_SCOPE_wholeSubtree,
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases, sizeLimit=0, timeLimit=5,
            typesOnly=0, filter=query_filter(QUERY, names), attributes=names.wanted()),
            id=1).toWire()
        self.buf = b""

    def _message(self) -> bytes:
        while True:
            if len(self.buf) >= 2:
                first = self.buf[1]
                if first < 0x80:
                    header, length = 2, first
                else:
                    n = first & 0x7F
                    header = 2 + n
                    length = int.from_bytes(self.buf[2:header], "big") if len(
                        self.buf) >= header else -1
                if length >= 0 and len(self.buf) >= header + length:
                    message, self.buf = self.buf[:header + length], self.buf[header + length:]
                    return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("slapd closed the connection")
            self.buf += data

    def search(self) -> int:
        """Send the search; return how many entries came back."""
        self.sock.sendall(self.request)
        entries = 0
        while True:
            message = self._message()
            # LDAPMessage: SEQUENCE { messageID INTEGER, protocolOp [APPLICATION n] ... }
            id_length = message[message.index(b"\x02", 1) + 1]
            op = message[message.index(b"\x02", 1) + 2 + id_length]
            if op == 0x64:  # SearchResultEntry
                entries += 1
            elif op == 0x65:  # SearchResultDone
                return entries


def client_alone(url: str, rounds: int) -> list[float]:
    """``LDAPDirectory.search`` in this process: ldaptor + slapd, no IRC."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from mup.config import parse
    from mup.ldap import directory_from_config

    config = parse({"ldap": {"url": url, "base_dn": BASE_DN, "timezone_attribute": "timezone"}})
    directory, service = directory_from_config(config, reactor)
    times: list[float] = []

    async def run() -> None:
        service.startService()
        try:
            for _ in range(50):
                await directory.search(QUERY)
            for _ in range(rounds):
                t = time.perf_counter()
                people = await directory.search(QUERY)
                times.append(time.perf_counter() - t)
                assert [p.nick for p in people] == [QUERY]
        finally:
            await service.stopService()

    def start() -> None:
        d = ensureDeferred(run())
        d.addErrback(lambda f: (f.printTraceback(), None)[1])
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return times


def write_config(path: Path, irc_port: int, nick: str, ldap: dict) -> None:
    path.write_text(toml_text({
        "irc": {"endpoint": f"tcp:host=127.0.0.1:port={irc_port}", "nick": nick,
                "line_rate": 0.0, "command_rate": 0.0},
        "ldap": {**ldap, "base_dn": BASE_DN, "timezone_attribute": "timezone"},
        "log": {"level": "warn"}}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--no-embedded", action="store_true",
                        help="leave out the embedded-directory bot")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mup-bench-poke-"))
    stoppers = []
    try:
        slapd = Slapd(work / "slapd", PEOPLE)
        stoppers.append(slapd.stop)
        slapd.start()

        irc_port = free_port()
        ngircd = Ngircd(work / "ngircd", port=irc_port, name="irc.bench.local",
                        max_penalty_time=0)
        stoppers.append(ngircd.stop)
        ngircd.start()
        bots = {"mupbench": {"url": slapd.url}}
        if not args.no_embedded:
            bots["mupembed"] = {"ldif": str(PEOPLE)}

        for nick, ldap in bots.items():
            config = work / f"{nick}.toml"
            write_config(config, irc_port, nick, ldap)
            bot = ServerProcess(twistd_argv("-n", f"--pidfile={work / nick}.pid", "mup",
                                            "--config", str(config)), work / f"{nick}.log",
                                cwd=work)
            stoppers.append(bot.stop)
            bots[nick] = bot
        client = LineClient(irc_port, "bencher")
        client.register()
        for nick, bot in bots.items():
            def answers(nick: str = nick) -> bool:
                try:
                    return client.ask(nick, "echo ready", timeout=0.5) == "ready"
                except TimeoutError:
                    return False

            wait_for(answers, 30, f"{nick} to answer", bot.alive)
        raw = RawLDAP(slapd.port)

        expected = client.ask("mupbench", f"poke {QUERY}")
        assert expected.startswith(f"{QUERY} is Gustavo Niemeyer"), expected
        if not args.no_embedded:
            assert client.ask("mupembed", f"poke {QUERY}") == expected

        def timed(bot: str, text: str, expect: str) -> float:
            t = time.perf_counter()
            answer = client.ask(bot, text)
            elapsed = time.perf_counter() - t
            # the minute may turn during the run: compare what follows the time
            assert answer.split(">", 1)[1] == expect.split(">", 1)[1] if "<time:" in expect \
                else answer == expect, answer
            return elapsed

        def timed_raw() -> float:
            t = time.perf_counter()
            entries = raw.search()
            elapsed = time.perf_counter() - t
            assert entries == 1, entries
            return elapsed

        for _ in range(50):  # warm up every path
            timed("mupbench", "echo warm", "warm")
            timed("mupbench", f"poke {QUERY}", expected)
            timed_raw()
        # Block 1, the target: echo, poke over slapd and slapd alone, interleaved.
        echo, poke, floor, echo_embedded, embedded = [], [], [], [], []
        for i in range(args.rounds):
            echo.append(timed("mupbench", f"echo {i}", str(i)))
            poke.append(timed("mupbench", f"poke {QUERY}", expected))
            floor.append(timed_raw())
        # Block 2: the embedded directory's bot, beside its own echo.  (Interleaved with
        # block 1, its CPU bursts slowed the slapd bot's p50 by ~0.7 ms on this 2-core box.)
        if not args.no_embedded:
            for _ in range(50):
                timed("mupembed", f"poke {QUERY}", expected)
            for i in range(args.rounds):
                echo_embedded.append(timed("mupembed", f"echo {i}", str(i)))
                embedded.append(timed("mupembed", f"poke {QUERY}", expected))
        # Last: running a Twisted reactor in this process first slowed every later figure
        # (p50 of poke 2.8 ms instead of 1.0 ms here), so the in-process client goes after.
        alone = client_alone(slapd.url, args.rounds)
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as e:  # keep stopping the others
                print(f"(while stopping: {e})", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)

    ms = 1000.0
    rows = [("slapd alone (raw socket)", floor), ("echo over IRC", echo),
            ("poke over IRC (slapd)", poke), ("echo over IRC (2nd block)", echo_embedded),
            ("poke over IRC (embedded LDIF)", embedded),
            ("LDAPDirectory.search (in-process)", alone)]
    rows = [(name, values) for name, values in rows if values]
    print(f"{args.rounds} rounds each; block 1: slapd alone, echo, poke (slapd) interleaved; "
          f"block 2: echo, poke (embedded); then the in-process client")
    print(f"{'':36} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in rows:
        stats = percentiles(values)
        print(f"{name:36} {stats['p50'] * ms:8.3f} {stats['p99'] * ms:8.3f}")
    p50 = {name: percentiles(values)["p50"] * ms for name, values in rows}
    e50, k50 = p50["echo over IRC"], p50["poke over IRC (slapd)"]
    b50 = p50.get("poke over IRC (embedded LDIF)")
    f50 = p50.get("echo over IRC (2nd block)")
    embedded_ratio = f"   embedded {b50 / f50:.2f}x" if b50 and f50 else ""
    embedded_adds = f"   embedded {b50 - f50:.3f} ms" if b50 and f50 else ""
    print(f"poke/echo p50 ratio:      slapd {k50 / e50:.2f}x{embedded_ratio}")
    print(f"directory adds at p50:    slapd {k50 - e50:.3f} ms{embedded_adds}"
          f"   (slapd alone: {p50['slapd alone (raw socket)']:.3f} ms)")
    # The budget (issue 15): what a user could notice, not the last tenth of a millisecond.
    print(f"budget: poke p50 <= 2 ms via slapd: {'met' if k50 <= 2 else 'NOT met'}"
          + (f"; via the embedded directory: {'met' if b50 <= 2 else 'NOT met'}"
             if b50 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
