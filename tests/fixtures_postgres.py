"""Fixtures for the PostgreSQL store tests: one real PostgreSQL per session (a database per
test), a primary with a synchronous standby per test that needs failover, and haproxy."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from mup.testing.haproxy import Haproxy
from mup.testing.postgres import Postgres

__all__ = ["make_haproxy", "pg_failover", "pg_server", "pg_url"]

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """A running PostgreSQL for the whole session (skips locally, fails with CI=true, when
    PostgreSQL is not installed)."""
    server = Postgres(name="mup-test")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: Postgres) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    return pg_server.create_database(f"mup_test_{next(_databases)}")


@pytest.fixture
def pg_failover() -> Iterator[tuple[Postgres, Postgres]]:
    """A primary and a synchronous streaming standby of it, both running; stopped after."""
    primary = Postgres(name="primary")
    standby = None
    try:
        primary.start()
        standby = primary.make_standby("standby1")
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.cleanup()


@pytest.fixture
def make_haproxy(tmp_path: Path) -> Iterator[Callable[[Sequence[int]], Haproxy]]:
    """``make_haproxy([port1, port2])``: a running haproxy balancing over those backends with
    health checks on /healthz; every one made is stopped after the test."""
    made: list[Haproxy] = []

    def make(backends: Sequence[int]) -> Haproxy:
        proxy = Haproxy(tmp_path / f"haproxy-{len(made) + 1}", backends)
        made.append(proxy)
        return proxy.start()

    yield make
    for proxy in made:
        proxy.stop()
