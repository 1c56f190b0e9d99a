"""Durable accepts/s of the PostgreSQL message store beside the local one, in one run.

16 concurrent appenders (a gateway's 16 connections), each appending its next message as soon
as the last one committed, for ``--seconds``:

* the local store: ``mup.store.sqlite`` when it is there, else the old ``mup.journal``;
* PostgresMessageStore, one relay;
* PostgresMessageStore, two relays on one database (16 appenders each; both stores live in
  this one process and share its reactor, so two relay processes would do no worse);

and the time from a commit on one relay to the subscriber call on another (LISTEN/NOTIFY).
PostgreSQL runs here with fsync on (a real server, started for the run, stopped after).

    .venv/bin/python bench/relay_pg.py --seconds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import fmt_ms, percentiles
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults

from mup.store.postgres import PostgresMessageStore
from mup.testing.postgres import Postgres

_ids = itertools.count()


def record(i: int) -> dict[str, Any]:
    return {"gateway": "kannel", "from": "+447911123456", "to": "+447700900000",
            "text": f"benchmark message {i} " + "x" * 80, "received": time.time()}


async def appenders(reactor: Any, stores: list[Any], per_store: int, seconds: float
                    ) -> tuple[int, list[float]]:
    """Run ``per_store`` appenders on each store for ``seconds``; accepted count, latencies."""
    deadline = reactor.seconds() + seconds
    latencies: list[float] = []
    run = f"{time.time_ns()}"

    async def one(store: Any) -> None:
        while reactor.seconds() < deadline:
            i = next(_ids)
            started = time.perf_counter()
            entry = await store.append(f"bench:{run}:{i}", record(i))
            assert entry is not None
            latencies.append(time.perf_counter() - started)

    await gatherResults([Deferred.fromCoroutine(one(s)) for s in stores
                         for _ in range(per_store)])
    return len(latencies), latencies


async def notify_latency(reactor: Any, a: PostgresMessageStore, b: PostgresMessageStore,
                         count: int) -> list[float]:
    samples: list[float] = []
    waiting: list[Deferred[None]] = []

    def woken() -> None:
        while waiting:
            waiting.pop().callback(None)

    unsubscribe = b.subscribe(woken)
    await task.deferLater(reactor, 0.2, lambda: None)  # b's own connect wake-up has passed
    for i in range(count):
        d: Deferred[None] = Deferred()
        waiting.append(d)
        started = time.perf_counter()
        await a.append(f"notify:{time.time_ns()}:{i}", record(i))
        await d
        samples.append(time.perf_counter() - started)
    unsubscribe()
    return samples


def local_store(reactor: Any, directory: Path) -> tuple[str, Any]:
    if importlib.util.find_spec("mup.store.sqlite") is not None:
        from mup.store import sqlite

        store_class: Any = sqlite.SQLiteMessageStore
        return "SQLite", store_class.open(str(directory / "sqlite"), reactor=reactor)
    from mup.journal import Journal

    return "journal (old)", Journal.open(str(directory / "journal"), reactor=reactor)


async def main(reactor: Any, seconds: float, concurrency: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mup-bench-pg-"))
    server = Postgres(name="bench")
    server.start()
    try:
        rows = []
        name, local = local_store(reactor, tmp)
        n, lat = await appenders(reactor, [local], concurrency, seconds)
        closed = local.close()
        if isinstance(closed, Deferred):
            await closed
        rows.append((f"local {name}", n, lat))

        url = server.create_database("bench1")
        one = PostgresMessageStore.open(url, reactor)
        n, lat = await appenders(reactor, [one], concurrency, seconds)
        rows.append(("PostgreSQL, 1 relay", n, lat))
        await one.close()

        url = server.create_database("bench2")
        pair = [PostgresMessageStore.open(url, reactor) for _ in range(2)]
        n, lat = await appenders(reactor, pair, concurrency, seconds)
        rows.append(("PostgreSQL, 2 relays", n, lat))
        wake = await notify_latency(reactor, pair[0], pair[1], 200)
        for store in pair:
            await store.close()

        base = rows[0][1] / seconds
        print(f"durable appends, {concurrency} concurrent appenders per store, {seconds:g} s each")
        for label, n, lat in rows:
            rate = n / seconds
            print(f"  {label:24s} {rate:8.0f} accepts/s  ({rate / base:4.2f}x local)  "
                  f"latency {fmt_ms(percentiles(lat))}")
        print(f"commit on relay A -> subscriber on relay B (NOTIFY): {fmt_ms(percentiles(wake))}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, args.seconds,
                                                           args.concurrency)))
