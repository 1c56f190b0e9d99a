"""A real PostgreSQL on 127.0.0.1 for tests: initdb in a temp dir, ``postgres`` as a child
process on a free port, trust auth on loopback, stopped by PID.

As root (CI), every PostgreSQL binary runs as the ``postgres`` user that Debian's package
creates, since they refuse root; the data directory is owned by it and the temp dir above it is
mode 0711.  :meth:`Postgres.make_standby` adds a synchronous streaming standby
(``pg_basebackup -R``) for failover tests: ``kill()`` the primary, ``promote()`` the standby.
See ../shared/notes/postgresql.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mup.testing.process import ServerProcess, free_port, require_binary, wait_for

__all__ = ["Postgres", "pg_bin", "require_postgres"]


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server binary (not on PATH on Debian): the newest version's."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else f"/usr/lib/postgresql/15/bin/{name}"


def require_postgres() -> None:
    """Skip (locally) or fail (CI=true) when PostgreSQL's server is not installed."""
    for name in ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_isready"):
        require_binary(pg_bin(name), "postgresql")


def _run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


class Postgres:
    """One PostgreSQL server with its data in ``directory`` (a new temp dir by default)."""

    def __init__(self, directory: Path | str | None = None, port: int | None = None,
                 name: str = "primary") -> None:
        require_postgres()
        self.user = _run_as()
        self.own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="mup-pg-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)
        self.data = self.dir / "data"
        self.sockets = self.dir / "run"
        self.port = port or free_port()
        self.name = name
        self.process: ServerProcess | None = None
        self._starts = 0

    # -- running binaries as the postgres user ----------------------------------------------

    def _prepare(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if self.user:
            shutil.chown(path, self.user, self.user)

    def _run(self, *argv: str, timeout: float = 120) -> str:
        kwargs: dict[str, Any] = ({"user": self.user, "group": self.user, "extra_groups": []}
                                  if self.user else {})
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        out: str = done.stdout
        return out

    # -- life cycle -------------------------------------------------------------------------

    def init(self) -> Postgres:
        """initdb: a new cluster, superuser ``postgres``, trust auth (loopback only)."""
        self._prepare(self.data)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        return self

    def start(self, timeout: float = 30.0, **settings: str) -> Postgres:
        """Start (or restart, on the same port) the postmaster as a child; wait until
        ``pg_isready`` answers.  ``settings`` become ``-c name=value``."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        self._prepare(self.sockets, 0o755)
        self._starts += 1
        argv = [pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=on", "-c", f"cluster_name={self.name}",
                "-c", "max_connections=100"]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = self.dir / f"{self.name}-{self._starts}.log"
        self.process = ServerProcess(argv, log, cwd=self.dir, user=self.user)
        try:
            wait_for(self.ready, timeout, f"PostgreSQL on port {self.port}",
                     self.process.alive, interval=0.1)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"postgres: {e}\n--- log ---\n{self.process.output()[-3000:]}"
                               ) from None
        return self

    def ready(self) -> bool:
        """pg_isready: the server accepts connections (a standby too)."""
        done = subprocess.run([pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                               str(self.port), "-t", "2"], capture_output=True)
        return done.returncode == 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return bool(self.process and self.process.alive())

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster) and wait; SIGKILL if that hangs."""
        if self.process and self.process.alive():
            self.process.kill(signal.SIGINT)
        if self.process:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL the postmaster: a crash.  Its backends notice and exit by themselves."""
        if self.process:
            self.process.kill(signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop and delete the directory (when this object made it)."""
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- SQL --------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, params: Any = None, dbname: str = "postgres"
                ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows (empty when it returns none)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; return its URL."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- replication ------------------------------------------------------------------------

    def make_standby(self, name: str = "standby1", synchronous: bool = True,
                     timeout: float = 60.0) -> Postgres:
        """A streaming standby of this server, started; with ``synchronous`` this server waits
        for it on every commit (``synchronous_standby_names``), set after the base backup so a
        promoted standby does not wait for a standby of its own."""
        standby = Postgres(self.dir / name, name=name)
        standby.own_dir = False
        standby._prepare(standby.data)
        standby._run(pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
                     "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream",
                     "--no-sync", timeout=timeout)
        standby.start(timeout=timeout)
        if synchronous:
            self.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
            self.execute("SELECT pg_reload_conf()")
            wait_for(lambda: self.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (name,)) == [("sync",)], timeout, f"{name} to be a synchronous standby",
                interval=0.1)
        return standby

    def promote(self, timeout: float = 60.0) -> None:
        """pg_ctl promote -w: this standby becomes a primary."""
        self._run(pg_bin("pg_ctl"), "promote", "-w", "-t", str(int(timeout)), "-D",
                  str(self.data), timeout=timeout + 5)

    def in_recovery(self) -> bool:
        return self.execute("SELECT pg_is_in_recovery()") == [(True,)]

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
