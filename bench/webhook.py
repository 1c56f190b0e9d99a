"""Benchmark the inbound path: durable accepts on /kannel/mo, webhook -> IRC latency, start-up.

    python bench/webhook.py [--seconds 10] [--connections 16] [--backlog 100000] [--messages 200]

Prints, measured in the same run:
1. accepts/s and p50/p99 latency with ``wrk`` at N connections on the real receiver (Klein +
   the SQLite message store, committed with synchronous=FULL by group commit) and on a no-op
   Klein handler (same Site, no store), and the ratio between them; beside them, references
   that show where the difference goes (a no-op answering from a Deferred, the parse alone, the
   receiver with synchronous=OFF) and, with ``--old TREE`` (a ``git worktree`` of the commit
   before the store, e.g. 1fc4d52), the old segment journal's receiver, interleaved A/B;
   every wrk run posts ids of its own (a run id in the script), so nothing is a duplicate;
2. webhook -> IRC visible latency p50/p99: the real bot (``twistd -n mup``) on a real ngircd
   (MaxPenaltyTime=0, line_rate=0), a plain-socket client in the channel timing each message
   from the POST to its PRIVMSG;
3. start-up time with ``--backlog`` undelivered messages in the store: opening it plus
   delivery's reading and queueing, in process; and the bot's process until /healthz answers;
4. lines of storage code before (1fc4d52) and now.

Two shared cores: wrk, the server and the journal thread compete; expect +-15 % between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
import _common  # noqa: E402,F401 - children run this source tree (PYTHONPATH)

TOKEN = "bench-token"


# -- servers run as child processes: `python bench/webhook.py --serve receiver|noop PORT DIR` --

def serve(kind: str, port: int, directory: str) -> None:
    """One server: ``noop`` (the baseline), ``receiver`` (the real thing), and references
    that show where the difference goes: ``noop-deferred`` (answers from a Deferred on the
    next reactor turn, as the receiver must), ``parse`` (reads and checks the post, answers
    at once, stores nothing), ``receiver-nosync`` (the receiver with synchronous=OFF: not
    durable, what the fsyncs cost)."""
    from klein import Klein
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from mup.config import parse
    from mup.gateway import to_record
    from mup.gateways import inbound
    from mup.webhook import Receiver, WebhookService, _limited_request, _QuietSite

    config = parse({"webhook": {"endpoint": f"tcp:port={port}:interface=127.0.0.1",
                                "journal": directory},
                    "sms": {"kannel": {"inbound_token": TOKEN}}}, "<bench>", environ={})
    if kind.startswith("receiver"):
        from mup.store.sqlite import SQLiteMessageStore, connect

        def nosync(path: str):
            con = connect(path)
            con.execute("PRAGMA synchronous=OFF")
            return con

        store = SQLiteMessageStore.open(directory, reactor, connector=nosync
                                        if kind == "receiver-nosync" else connect)
        accepted = []
        site = Receiver(config, store, on_accepted=lambda e: accepted.append(e.seq),
                        clock=reactor).site()
    else:
        app = Klein()
        checker = Receiver(config, None, clock=reactor)

        @app.route("/kannel/mo", methods=["GET", "POST"])
        def noop(request):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            if kind == "parse":
                to_record(inbound.kannel_mo(checker._posted(request), TOKEN,
                                            reactor.seconds()))
            if kind == "noop-deferred":
                d = Deferred()
                reactor.callLater(0, d.callback, b"")
                return d
            return b""

        site = _QuietSite(app.resource(), requestFactory=_limited_request(65536))
    WebhookService(config.webhook.endpoint, site, reactor).startService()
    print("listening", flush=True)
    reactor.run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


WRK_LUA = r"""
n = 0
prefix = "p"
threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", "RUN" .. "t" .. threads)
end
function request()
  n = n + 1
  return wrk.format("GET", "/kannel/mo?from=%2B447911123456&to=4242&charset=UTF-8&coding=0" ..
    "&token=TOKEN&text=%23ops+bench+message+" .. n .. "&id=" .. prefix .. "-" .. n)
end
""".replace("TOKEN", TOKEN)


_runs = iter(range(1, 1 << 30))


def run_wrk(port: int, seconds: int, connections: int, script: str) -> dict:
    """One wrk run; its ids carry a run id of their own (wrk's Lua random numbers repeat from
    run to run, which would make a second run all duplicates that never touch the disk)."""
    path = Path(script).with_name(f"run-{os.getpid()}-{next(_runs)}.lua")
    path.write_text(Path(script).read_text().replace("RUN", f"r{time.time_ns()}"))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(path), f"http://127.0.0.1:{port}/kannel/mo"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rate": rate, "p50": pct("50"), "p99": pct("99"), "requests": total,
            "non2xx": int(errors.group(1)) if errors else 0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REFERENCES = {
    "noop-deferred": "no-op, answering from a Deferred on the next turn",
    "parse": "+ read, authenticate and parse the post (answers at once)",
    "receiver-nosync": "the receiver, synchronous=OFF (group commit, writer thread)",
    "receiver": "the receiver: committed (synchronous=FULL) before the answer",
    "old-receiver": "the old segment journal's receiver (1fc4d52), fsync'd before the answer",
}
KINDS = ("noop", "noop-deferred", "parse", "receiver-nosync", "receiver")


def server_argv(kind: str, port: int, directory: Path, old: str | None) -> list[str]:
    """The command for one server; ``old-receiver`` runs the old tree's own bench script."""
    if kind == "old-receiver":
        assert old is not None
        return [sys.executable, str(Path(old) / "bench" / "webhook.py"), "--serve", "receiver",
                str(port), str(directory)]
    return [sys.executable, __file__, "--serve", kind, str(port), str(directory)]


def bench_accepts(seconds: int, connections: int, old: str | None = None) -> None:
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk): skipping the accept benchmark")
        return
    tmp = Path(tempfile.mkdtemp(prefix="mup-bench-"))
    script = tmp / "mo.lua"
    script.write_text(WRK_LUA)
    results = {}
    try:
        kinds = KINDS + ("old-receiver",) if old else KINDS
        for kind in kinds * 2:
            port = free_port()
            proc = subprocess.Popen(server_argv(kind, port, tmp / f"journal-{port}", old))
            try:
                wait_port(port)
                run_wrk(port, 1, connections, str(script))   # warm-up
                cpu0 = cpu_seconds(proc.pid)
                r = run_wrk(port, seconds, connections, str(script))
                r["cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / r["requests"] * 1e6
            finally:
                proc.terminate()
                proc.wait(10)
            best = results.get(kind)
            if best is None or r["rate"] > best["rate"]:
                results[kind] = r
            cpu = results.setdefault(kind + "-cpu", [])
            cpu.append(r["cpu_us"])
            print(f"  {kind:15} {r['rate']:9.0f} req/s  p50 {r['p50']:6.2f} ms  "
                  f"p99 {r['p99']:6.2f} ms  non-2xx {r['non2xx']}  "
                  f"server CPU {r['cpu_us']:.0f} us/request", flush=True)
        rate = max(100, int(results["receiver"]["rate"] * 0.5))
        # The saturated runs above left tens of MB to write back; their writeback would land
        # in this part's fsyncs (as between parts, see main).
        os.sync()
        paced = paced_latency(tmp, connections, rate=rate, seconds=seconds)
        # The same schedule on the no-op handler: the floor this load generator (Python
        # threads, on cores shared with the server) reaches at all.
        paced_noop = paced_latency(tmp, connections, rate=rate, seconds=seconds, kind="noop")
        paced_old = None
        if old:
            os.sync()
            paced_old = paced_latency(tmp, connections, rate=rate, seconds=seconds,
                                      kind="old-receiver", old=old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    noop, real = results["noop"], results["receiver"]
    print(f"accepts/s at {connections} connections (best of 2 runs of {seconds}s each):")
    print(f"  no-op Klein handler : {noop['rate']:9.0f}/s   p99 {noop['p99']:.2f} ms")
    print(f"  durable receiver    : {real['rate']:9.0f}/s   p99 {real['p99']:.2f} ms")
    print(f"  ratio               : {real['rate'] / noop['rate']:.2f} (target >= 0.8); "
          f"p99 accept {real['p99']:.2f} ms when saturated (closed loop)")
    print(f"  p99 accept at a steady {paced['rate']} req/s over {connections} connections "
          f"(half the durable maximum, open loop): p50 {paced['p50']:.2f} ms  "
          f"p99 {paced['p99']:.2f} ms (target < 10 ms)")
    print(f"  the same schedule on the no-op handler (this load generator's floor): "
          f"p50 {paced_noop['p50']:.2f} ms  p99 {paced_noop['p99']:.2f} ms")
    if paced_old is not None:
        old_r = results["old-receiver"]
        print(f"  A/B, the old segment journal (1fc4d52) in the same run: "
              f"{old_r['rate']:.0f}/s (ratio {old_r['rate'] / noop['rate']:.2f}), saturated "
              f"p99 {old_r['p99']:.2f} ms; paced p50 {paced_old['p50']:.2f} ms "
              f"p99 {paced_old['p99']:.2f} ms")
    cpu_noop, cpu_real = min(results["noop-cpu"]), min(results["receiver-cpu"])
    print(f"  server CPU per request: no-op {cpu_noop:.0f} us, durable {cpu_real:.0f} us; "
          f"capacity ratio {cpu_noop / cpu_real:.2f} (less sensitive to neighbours' load "
          "than req/s)")
    print("  where the difference goes (same run; best rate, least CPU; the references are "
          "not durable):")
    for kind, what in REFERENCES.items():
        if kind not in results:
            continue
        cpu = min(results[kind + "-cpu"])
        print(f"    {kind:15} {results[kind]['rate'] / noop['rate']:5.2f} of the no-op rate, "
              f"{cpu:4.0f} us CPU a request ({cpu - cpu_noop:+4.0f})  {what}")


def paced_latency(tmp: Path, connections: int, rate: int, seconds: int,
                  kind: str = "receiver", old: str | None = None) -> dict:
    """Accept latency at a steady request rate below saturation: ``connections`` threads
    each send on a fixed schedule and time each answer from its scheduled start (so a slow
    answer is not hidden by the sends it delayed)."""
    import http.client
    import threading

    port = free_port()
    proc = subprocess.Popen(server_argv(kind, port, tmp / f"journal-paced-{kind}", old))
    latencies: list[float] = []
    try:
        wait_port(port)
        interval = connections / rate
        start = time.perf_counter() + 0.2

        def worker(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            due = start + n * interval / connections
            i = 0
            while due < start + seconds:
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                conn.request("GET", f"/kannel/mo?from=%2B447911123456&to=4242&token={TOKEN}"
                                    f"&text=%23ops+paced&id=paced-{kind}-{n}-{i}")
                response = conn.getresponse()
                response.read()
                latencies.append((time.perf_counter() - due) * 1000)
                i += 1
                due += interval
            conn.close()

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(10)
    latencies.sort()
    return {"rate": rate, "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99)]}


def bench_startup(backlog: int) -> None:
    """Opening the store + delivery reading and queueing ``backlog`` undelivered messages."""
    from twisted.internet.task import Clock

    from mup.delivery import Delivery
    from mup.gateway import InboundSMS, to_record
    from mup.store.sqlite import SQLiteMessageStore

    tmp = tempfile.mkdtemp(prefix="mup-bench-store-")
    try:
        clock = Clock()
        store = SQLiteMessageStore.open(tmp, clock)
        t0 = time.perf_counter()
        for i in range(backlog):
            key, record = to_record(InboundSMS(
                "kannel", f"b{i}", f"+4479111{i % 1000:05d}", "4242", f"#ops backlog {i}",
                1.7e9))
            store.append(key, record)
            if i % 5000 == 4999:
                clock.advance(0)
        clock.advance(0)
        store.close()
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        print(f"start-up with {backlog} undelivered messages ({size / 1e6:.1f} MB of database, "
              f"written in {time.perf_counter() - t0:.1f} s):")

        class Down:
            connected = False

            def when_connected(self):
                from twisted.internet.defer import Deferred

                return Deferred()

        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            store = SQLiteMessageStore.open(tmp, clock)
            t1 = time.perf_counter()
            delivery = Delivery(store, Down(), None, clock=clock)
            delivery.startService()   # inline on a Clock: every page read and queued now
            t2 = time.perf_counter()
            assert delivery.waiting + len(delivery._busy) >= backlog - delivery.max_lanes
            delivery.stopService()
            store.close()
            times.append((t1 - t0, t2 - t1))
        opened, queued = min(times)
        print(f"  in process: store open {opened * 1000:.0f} ms + delivery reading and queueing "
              f"{queued * 1000:.0f} ms = {(opened + queued) * 1000:.0f} ms (best of 3)")
        bot_startup(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lines_of_code() -> None:
    """Storage code before the store (1fc4d52) and now, counted by ``git``."""
    def count(rev: str | None, paths: list[str]) -> dict[str, int]:
        out = {}
        for path in paths:
            try:
                text = (subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True,
                                       text=True, check=True, cwd=ROOT).stdout if rev
                        else (ROOT / path).read_text())
            except (subprocess.CalledProcessError, OSError):
                continue
            out[path] = len(text.splitlines())
        return out

    before = count("1fc4d52", ["mup/journal.py", "mup/eventlog.py", "mup/routes.py",
                               "mup/outbox.py", "mup/quota.py"])
    now = count(None, ["mup/store/__init__.py", "mup/store/sqlite.py", "mup/store/legacy.py",
                       "mup/store/sqlitestate.py", "mup/eventlog.py", "mup/routes.py",
                       "mup/outbox.py", "mup/quota.py"])
    print("lines of storage code (inbound messages; the state files are another change's):")
    print(f"  before (1fc4d52): mup/journal.py {before.get('mup/journal.py', 0)}; "
          + ", ".join(f"{p} {n}" for p, n in before.items() if p != "mup/journal.py"))
    store = {p: n for p, n in now.items() if p.startswith("mup/store/")}
    print(f"  now: {sum(store.values())} in mup/store/ ("
          + ", ".join(f"{p.rsplit('/', 1)[1]} {n}" for p, n in store.items()) + "); "
          + ", ".join(f"{p} {n}" for p, n in now.items() if p not in store))


def bot_config(tmp: Path, irc: dict, port: int, journal: str | Path,
               inbound: dict | None = None) -> Path:
    """The bot's config file in ``tmp``: IRC in #ops, the receiver on ``port``."""
    from mup.config import dumps

    config = {"irc": {"channels": ["#ops"], **irc},
              "webhook": {"endpoint": f"tcp:port={port}:interface=127.0.0.1",
                          "journal": str(journal)},
              "sms.kannel": {"inbound_token": TOKEN},
              "state": {"directory": str(tmp / "state")}}
    if inbound:
        config["inbound"] = inbound
    path = tmp / "mup.toml"
    path.write_text(dumps(config))
    return path


def bot_startup(journal_dir: str) -> None:
    """``twistd -n mup`` over that journal, until /healthz answers (IRC not reachable)."""
    tmp = Path(tempfile.mkdtemp(prefix="mup-bench-bot-"))
    port = free_port()
    config = bot_config(tmp, {"endpoint": f"tcp:host=127.0.0.1:port={free_port()}"}, port,
                        journal_dir)
    from mup.testing.process import twistd_argv

    t0 = time.perf_counter()
    proc = subprocess.Popen(twistd_argv("-n", "--pidfile=", "mup", "--config", str(config)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                break
            except OSError:
                time.sleep(0.01)
                continue
            else:
                body = {}
                break
        else:
            raise TimeoutError("the bot did not answer /healthz")
        print(f"  the bot's process (twistd -n mup) until /healthz answers: "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms, backlog {body.get('backlog')} "
              "(includes Python and Twisted start-up)")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["accepts", "latency", "startup"])
    parser.add_argument("--old", help="a checkout of the code before the store (e.g. "
                        "`git worktree add /tmp/mup-old 1fc4d52`): its receiver runs "
                        "interleaved with this one's")
    args = parser.parse_args()
    print(f"mup inbound benchmark; {os.cpu_count()} cores (shared: expect noise)")
    # Latency first, and the disk flushed between parts: the writeback of what one part wrote
    # slows the next one's fsyncs.
    if "latency" not in args.skip:
        os.sync()
        bench_latency(args.messages)
    if "accepts" not in args.skip:
        os.sync()
        bench_accepts(args.seconds, args.connections, args.old)
    if "startup" not in args.skip:
        os.sync()
        bench_startup(args.backlog)
    lines_of_code()


def bench_latency(messages: int) -> None:
    """POST -> PRIVMSG seen by a client in the channel, through the real bot on ngircd."""
    import http.client
    import urllib.parse

    from mup.testing.ircclient import LineClient
    from mup.testing.ngircd import Ngircd
    from mup.testing.process import twistd_argv, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="mup-bench-latency-"))
    server = Ngircd(tmp / "ngircd", max_penalty_time=0)
    server.start()
    port = free_port()
    config = bot_config(tmp, {"endpoint": server.endpoint, "line_rate": 0.0}, port,
                        tmp / "journal", inbound={"hint": False})
    log = open(tmp / "bot.log", "wb")
    bot = subprocess.Popen(twistd_argv("-n", "--pidfile=", "--logfile=-", "mup", "--config",
                                       str(config)), stdout=log, stderr=subprocess.STDOUT,
                           cwd=tmp)
    try:
        wait_for(lambda: b"Joined #ops" in (tmp / "bot.log").read_bytes(), 30, "the bot")
        client = LineClient(server.port, "watcher")
        client.register()
        client.join("#ops")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        accept, visible = [], []
        for i in range(messages + 10):
            query = urllib.parse.urlencode({"from": "+15555550100", "to": "4242",
                                            "id": f"lat-{i}", "text": f"#ops lat {i}",
                                            "token": TOKEN})
            t0 = time.perf_counter()
            conn.request("GET", "/kannel/mo?" + query)
            response = conn.getresponse()
            response.read()
            t1 = time.perf_counter()
            assert response.status == 200, response.status
            client.expect(rf"PRIVMSG #ops :\[SMS\] <[^>]*> lat {i}$")
            t2 = time.perf_counter()
            if i >= 10:                      # the first few warm up the path
                accept.append((t1 - t0) * 1000)
                visible.append((t2 - t0) * 1000)
        conn.close()
        client.close()

        def pct(values: list[float], p: float) -> float:
            values = sorted(values)
            return values[min(len(values) - 1, int(p / 100 * len(values)))]

        print(f"webhook -> IRC, {messages} messages one after another (ngircd "
              "MaxPenaltyTime=0, line_rate=0):")
        print(f"  POST answered (durable) : p50 {pct(accept, 50):.2f} ms  "
              f"p99 {pct(accept, 99):.2f} ms")
        print(f"  visible on IRC          : p50 {pct(visible, 50):.2f} ms  "
              f"p99 {pct(visible, 99):.2f} ms  (target p50 < 5 ms)")
        print(f"  (median of means: {statistics.mean(visible):.2f} ms mean)")
    finally:
        bot.terminate()
        bot.wait(10)
        log.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
