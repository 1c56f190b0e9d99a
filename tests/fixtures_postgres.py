"""Fixtures for the PostgreSQL store tests: one real PostgreSQL per session (a database per
test), a primary with a synchronous standby per test that needs failover, and haproxy."""

from __future__ import annotations

import itertools
from typing import Iterator

import pytest

from mup.testing.postgres import Postgres

__all__ = ["pg_failover", "pg_server", "pg_url"]

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
