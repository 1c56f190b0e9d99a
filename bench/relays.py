"""Benchmark several mup-relays on PostgreSQL beside one on SQLite, all real processes, in one
run:

1. accepts/s with ``wrk`` at 16 connections (Kannel-style GETs, ids unique per run: each wrk
   script carries a run id, since wrk's Lua random numbers repeat from run to run) of
   one relay on SQLite (the baseline), one relay on PostgreSQL, and two relays on PostgreSQL
   behind haproxy;
2. POST -> visible on IRC p50/p99, one message at a time, the bot pulling from the SQLite
   relay (baseline) and through haproxy from the two PostgreSQL relays (posts through
   haproxy too); target p50 <= 50 ms;
3. the drain of ``--backlog`` messages posted while the bot was down, ``line_rate = 0``: time
   from the bot's launch to the last one on IRC, from the SQLite relay and through haproxy.

PostgreSQL runs with fsync on (started for the run, stopped after); haproxy checks /healthz.
Between parts the PostgreSQL store is emptied (``DELETE FROM mup_inbound``), so the bot is not
handed the accept runs' messages.  Two shared cores: wrk, haproxy, the relays, PostgreSQL, the
bot and ngircd compete; expect +-20 % between runs.

    .venv/bin/python bench/relays.py [--seconds 5] [--messages 200] [--backlog 10000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402,F401 - children run this source tree (PYTHONPATH)
from _common import kannel_mo_lua  # noqa: E402
from relay import KANNEL, TOKEN, Bot, drain, latency, ms, percentile  # noqa: E402

from mup.testing.haproxy import Haproxy  # noqa: E402
from mup.testing.ircclient import LineClient  # noqa: E402
from mup.testing.ngircd import Ngircd  # noqa: E402
from mup.testing.postgres import Postgres  # noqa: E402
from mup.testing.process import wait_for  # noqa: E402
from mup.testing.relay import KannelPoster, RelayProcess  # noqa: E402

WRK_LUA = kannel_mo_lua(KANNEL)


def run_wrk(work: Path, port: int, seconds: int, connections: int, tag: str) -> dict[str, Any]:
    """One wrk run whose ids are its own (the run id is baked into the script)."""
    script = work / f"wrk-{tag}-{time.time_ns()}.lua"
    script.write_text(WRK_LUA.replace("RUN", f"{tag}{time.time_ns()}"))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}/kannel/mo"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rate": rate, "p50": pct("50"), "p99": pct("99"), "requests": total,
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def empty_store(pg: Postgres, dbname: str) -> None:
    pg.execute("DELETE FROM mup_inbound", dbname=dbname)


def healthy(relay: RelayProcess) -> None:
    wait_for(relay.healthy, 30, f"relay {relay.port} healthy", interval=0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--messages", type=int, default=200, help="latency samples")
    parser.add_argument("--backlog", type=int, default=10000)
    parser.add_argument("--senders", type=int, default=1,
                        help="distinct phone numbers in the backlog")
    parser.add_argument("--no-baseline-drain", action="store_true",
                        help="skip the drain from the SQLite relay")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    work = Path(tempfile.mkdtemp(prefix="mup-bench-relays-"))
    os.chmod(work, 0o711)  # PostgreSQL runs as the postgres user when we are root
    print(f"mup-relays benchmark, {os.cpu_count()} cores, work dir {work}")
    pg = Postgres(work / "pg", name="bench").start()
    started: list[Any] = []
    bots: list[Bot] = []
    try:
        url = pg.create_database("bench")
        ngircd = Ngircd(work / "ngircd", max_penalty_time=0).start()
        started.append(ngircd)
        local = RelayProcess(work / "sqlite", token=TOKEN, kannel_token=KANNEL).start()
        pg1 = RelayProcess(work / "pg1", token=TOKEN, kannel_token=KANNEL, store=url).start()
        pg2 = RelayProcess(work / "pg2", token=TOKEN, kannel_token=KANNEL, store=url).start()
        started += [local, pg1, pg2]
        for relay in (local, pg1, pg2):
            healthy(relay)
        proxy = Haproxy(work / "haproxy", [pg1.port, pg2.port]).start()
        started.append(proxy)
        for name in proxy.names():
            proxy.wait_for_status(name, "UP")

        # 1. Accepts/s.
        print(f"\n1. Accepts/s, wrk {args.seconds} s at {args.connections} connections, "
              "every id new (2xx only after COMMIT / the journal's fsync):")
        results = {}
        for label, port in (("one relay, SQLite (baseline)", local.port),
                            ("one relay, PostgreSQL", pg1.port),
                            ("two relays, PostgreSQL, haproxy", proxy.port)):
            run_wrk(work, port, 1, args.connections, "warm")
            r = run_wrk(work, port, args.seconds, args.connections, "run")
            results[label] = r
            print(f"   {label:34} {r['rate']:8.0f}/s  p50 {r['p50']:.2f} ms  "
                  f"p99 {r['p99']:.2f} ms  non-2xx {r['non2xx']}/{r['requests']}"
                  + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""))
        base = results["one relay, SQLite (baseline)"]["rate"]
        for label, r in results.items():
            print(f"   ratio {label}/SQLite: x{r['rate'] / base:.2f}")
        empty_store(pg, "bench")
        # The SQLite relay's journal holds the accept runs' messages: a fresh one instead.
        local.stop()
        local = RelayProcess(work / "sqlite-2", token=TOKEN, kannel_token=KANNEL).start()
        started.append(local)
        healthy(local)

        watcher = LineClient(ngircd.port, "watcher", timeout=30)
        watcher.register()
        watcher.join("#ops")

        # 2. Latency, one message at a time.
        bot_local = Bot(work / "bot-sqlite", ngircd.endpoint, relay_url=local.url)
        bot_pg = Bot(work / "bot-pg", ngircd.endpoint, relay_url=proxy.url)
        bots += [bot_local, bot_pg]
        local_poster = local.poster()
        bot_local.start()
        latency(local_poster, watcher, "lwarm", 20)
        via_local, acc_local = latency(local_poster, watcher, "local", args.messages)
        wait_for(lambda: local.health()["relay_backlog"] == 0, 30, "acks")
        bot_local.stop()
        bot_pg.start()
        proxy_poster = KannelPoster("127.0.0.1", proxy.port, KANNEL)
        latency(proxy_poster, watcher, "pwarm", 20)
        via_pg, acc_pg = latency(proxy_poster, watcher, "pg", args.messages)
        print(f"\n2. POST -> visible on IRC, {args.messages} messages one at a time "
              "(line_rate = 0):")
        print(f"   one relay on SQLite (baseline):          p50 {ms(percentile(via_local, 50))},"
              f" p99 {ms(percentile(via_local, 99))} (POST answered p50 "
              f"{ms(percentile(acc_local, 50))})")
        print(f"   two relays on PostgreSQL, via haproxy:   p50 {ms(percentile(via_pg, 50))},"
              f" p99 {ms(percentile(via_pg, 99))} (POST answered p50 "
              f"{ms(percentile(acc_pg, 50))})")
        print(f"   ratio PostgreSQL+haproxy/SQLite: p50 "
              f"x{percentile(via_pg, 50) / percentile(via_local, 50):.2f}, p99 "
              f"x{percentile(via_pg, 99) / percentile(via_local, 99):.2f}; target p50 <= 50 ms: "
              f"{'met' if percentile(via_pg, 50) <= 0.05 else 'NOT met'}")
        wait_for(lambda: pg1.health()["relay_backlog"] == 0, 30, "acks")

        # 3. Drain.
        bot_pg.stop()
        print(f"\n3. Drain of {args.backlog} messages from {args.senders} sender(s) posted "
              "while the bot was down (16 connections), line_rate = 0, from the bot's launch:")
        drains = {}
        cases = [("two relays on PostgreSQL, via haproxy", proxy_poster, pg1, bot_pg, "dpg")]
        if not args.no_baseline_drain:
            cases.insert(0, ("one relay on SQLite (baseline)", local_poster, local, bot_local,
                             "dlo"))
        for label, poster, relay, bot, tag in cases:
            d = drain(poster, relay, bot, watcher, tag, args.backlog, args.senders, timeout=900)
            drains[label] = d["last"]
            print(f"   {label:38} last on IRC after {d['last']:.2f} s (first "
                  f"{d['first']:.2f} s, {d['rate']:.0f} "
                  f"msg/s once flowing); all acknowledged after {d['acked']:.2f} s; posting took "
                  f"{d['posting']:.1f} s ({args.backlog / d['posting']:.0f}/s)")
            bot.stop()
        if len(drains) == 2:
            a, b = drains.values()
            print(f"   ratio PostgreSQL+haproxy/SQLite: x{b / a:.2f}")
        watcher.close()
    finally:
        for bot in bots:
            bot.stop()
        for server in reversed(started):
            server.stop()
        pg.cleanup()


if __name__ == "__main__":
    main()
