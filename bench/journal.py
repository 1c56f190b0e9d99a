"""Benchmark the inbound journal: durable appends/s with group commit vs one fsync per record.

    python bench/journal.py [--dir DIR] [--seconds 3] [--backlog 100000]

Prints, measured in the same run on the same disk:

* durable appends/s at 16 concurrent appenders (each waits for its fsync before the next append),
  with group commit on the writer thread, vs the same journal with ``max_batch=1`` (one write+fsync
  per record, the naive baseline), and group commit run on the reactor thread (``threaded=False``);
  their ratio, p50/p99 append latency and the worst reactor stall seen by a 1 ms ticker;
* ``Journal.open`` time with 100,000 undelivered records and with 100,000 delivered ones;
* disk use of each.

``DIR`` must be on the disk the journal will live on (not tmpfs, where fsync is free).  The
machine is shared: run it twice and read the figures as +-20 %.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mup.journal import Journal  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

CONCURRENCY = 16


def sms_record(i: int) -> dict[str, Any]:
    return {"gateway": "kannel", "message_id": f"{i:012d}", "sender": "+447700900123",
            "recipient": "+447700900000", "text": f"#ops Flight delayed, there in 5. ({i})",
            "received": 1764200000.0 + i, "extra": {"charset": "UTF-8", "coding": "0"}}


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0


def disk_use(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


async def load(reactor: Any, path: str, seconds: float, **kw: Any) -> dict[str, float]:
    """16 appenders, each appending the next record once the last one is durable."""
    journal = Journal.open(path, reactor, **kw)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.clock = reactor
    ticker.start(0.001)

    async def appender() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            t0 = time.perf_counter()
            entry = await journal.append(f"kannel:{i}", sms_record(i))
            assert entry is not None
            latencies.append(time.perf_counter() - t0)

    await defer.gatherResults([defer.ensureDeferred(appender()) for _ in range(CONCURRENCY)])
    elapsed = seconds + (time.perf_counter() - stop_at)
    ticker.stop()
    journal.close()
    return {"rate": len(latencies) / elapsed, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "tick99": percentile(gaps, 99) * 1000,
            "tickmax": max(gaps, default=0) * 1000, "n": len(latencies)}


async def fill(reactor: Any, path: str, count: int, deliver: bool) -> None:
    """Append ``count`` records in large batches (and mark them all delivered)."""
    journal = Journal.open(path, reactor)
    step = 2000
    for base in range(0, count, step):
        entries = await defer.gatherResults([
            journal.append(f"kannel:{i}", sms_record(i)) for i in range(base, base + step)])
        if deliver:
            await defer.gatherResults([journal.mark_done(e.seq) for e in entries])
    await journal.settled()  # as a running bot would: delivered segments deleted
    journal.close()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_open(reactor: Any, path: str) -> tuple[float, Any, int, int]:
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    journal = Journal.open(path, reactor)
    took = time.perf_counter() - t0
    grown = rss() - before
    recovery, backlog = journal.recovery, journal.backlog
    journal.close()
    return took, recovery, backlog, grown


async def main(reactor: Any, args: argparse.Namespace) -> None:
    root = tempfile.mkdtemp(prefix="mup-bench-journal-", dir=args.dir)
    try:
        print(f"journal benchmark in {root} ({os.cpu_count()} cores, shared: expect noise)")
        t0 = time.perf_counter()
        x = 0
        for i in range(10_000_000):
            x += i
        print(f"  CPU yardstick: 10M Python additions in {time.perf_counter() - t0:.2f} s "
              f"(compare runs by it; load average {os.getloadavg()[0]:.1f})")
        runs = {}
        for name, kw in [("group commit, writer thread", {}),
                         ("group commit, reactor thread", {"threaded": False}),
                         ("one fsync per record (baseline)", {"max_batch": 1})]:
            runs[name] = await load(reactor, os.path.join(root, name.split()[0] + str(len(runs))),
                                    args.seconds, **kw)
            r = runs[name]
            print(f"  {name:34} {r['rate']:7.0f} appends/s  p50 {r['p50']:6.2f} ms  "
                  f"p99 {r['p99']:6.2f} ms  1 ms ticker gap p99 {r['tick99']:5.1f} ms, "
                  f"max {r['tickmax']:5.1f} ms")
        base = runs["one fsync per record (baseline)"]["rate"]
        for name in list(runs)[:2]:
            print(f"  ratio {name} / baseline: {runs[name]['rate'] / base:.1f}x")

        for label, deliver in [("undelivered", False), ("delivered", True)]:
            path = os.path.join(root, label)
            t0 = time.perf_counter()
            await fill(reactor, path, args.backlog, deliver)
            filled = time.perf_counter() - t0
            took, rec, backlog, grown = timed_open(reactor, path)
            print(f"  open() with {args.backlog} {label:11}: {took * 1000:7.1f} ms  "
                  f"(backlog {backlog}, {rec.segments} segments, "
                  f"disk {disk_use(path) / 1e6:.1f} MB, RSS +{grown / 1e6:.0f} MB; "
                  f"filled in {filled:.1f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="parent directory (default: $TMPDIR)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backlog", type=int, default=100_000)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
