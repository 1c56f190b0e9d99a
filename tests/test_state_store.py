"""SQLiteStateStore on real files: tables survive a reopen and a kill -9, writes queued in one
turn share one transaction and run off the reactor thread, and a database that cannot be used
is one line naming it (also through ``twistd mup``)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mup.store import StateStore, StoreError, StoreOpenError, sqlitestate
from mup.store.memory import MemoryStateStore
from mup.store.sqlitestate import FILENAME, SCHEMA, SQLiteStateStore
from mup.testing.process import free_port, twistd_argv


def reopen(store: SQLiteStateStore, directory, clock: Clock) -> SQLiteStateStore:
    d = store.close()
    clock.advance(0)
    assert d.called
    return SQLiteStateStore.open(str(directory), clock)


def test_both_stores_are_state_stores(tmp_path) -> None:
    store = SQLiteStateStore.open(str(tmp_path), Clock())
    assert isinstance(store, StateStore) and isinstance(MemoryStateStore(), StateStore)


def test_tables_survive_a_reopen(tmp_path) -> None:
    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    done = [store.put("quota", "joe", {"used": 3}), store.put("routes", "+1", ["joe", 1.5]),
            store.put("quota", "ann", {"used": 1}), store.delete("quota", "ann"),
            store.delete("quota", "nobody")]
    assert not any(d.called for d in done)  # written behind, on the next turn
    clock.advance(0)
    assert all(d.called and d.result is None for d in done)
    store = reopen(store, tmp_path, clock)
    assert store.load("quota").result == {"joe": {"used": 3}}
    assert store.load("routes").result == {"+1": ["joe", 1.5]}
    assert store.load("empty").result == {}
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA


def test_one_transaction_per_turn(tmp_path, monkeypatch) -> None:
    batches = []
    real = SQLiteStateStore._write
    monkeypatch.setattr(SQLiteStateStore, "_write",
                        lambda self, ops: (batches.append(len(ops)), real(self, ops))[1])
    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    for i in range(100):
        store.put("outbox", f"r{i}", {"n": i})
    clock.advance(0)
    store.put("outbox", "r0", None)
    clock.advance(0)
    assert batches == [100, 1]
    assert reopen(store, tmp_path, clock).load("outbox").result["r0"] is None


def test_writes_run_in_the_writer_thread(tmp_path, irc_reactor, monkeypatch) -> None:
    threads = []
    real = SQLiteStateStore._write
    monkeypatch.setattr(SQLiteStateStore, "_write", lambda self, ops: (
        threads.append(threading.current_thread().name), real(self, ops))[1])
    store = irc_reactor.call(SQLiteStateStore.open, str(tmp_path))
    irc_reactor.call(store.put, "quota", "joe", {"used": 1})
    assert threads == ["PoolThread-mup-state-0"]
    irc_reactor.call(store.close)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT value FROM state").fetchall() == [('{"used":1}',)]


def test_a_full_disk_fails_the_write_and_recovers(tmp_path, monkeypatch) -> None:
    """SQLITE_FULL, injected by capping the writer connection's pages (a real SQLite error)."""
    pages = [2]
    real_connect = sqlitestate._connect

    def connect(path):
        conn = real_connect(path)
        conn.execute(f"PRAGMA max_page_count = {pages[0]}")
        return conn

    monkeypatch.setattr(sqlitestate, "_connect", connect)
    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    failed = store.put("outbox", "big", "x" * 100_000)
    clock.advance(0)
    assert isinstance(failed.result.value, StoreError)
    assert "full" in str(failed.result.value) and str(tmp_path) in str(failed.result.value)
    failed.addErrback(lambda _: None)
    pages[0] = 10_000  # space again: the next write reconnects and commits
    ok = store.put("outbox", "big", "x" * 100_000)
    clock.advance(0)
    assert ok.called and ok.result is None
    assert len(reopen(store, tmp_path, clock).load("outbox").result["big"]) == 100_000


def test_closed_store_refuses_writes(tmp_path) -> None:
    clock = Clock()
    store = SQLiteStateStore.open(str(tmp_path), clock)
    store.close()
    clock.advance(0)
    d = store.put("quota", "joe", 1)
    assert isinstance(d.result.value, StoreError)
    d.addErrback(lambda _: None)


def test_not_a_database(tmp_path) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not SQLite\n" * 100)
    with pytest.raises(StoreOpenError) as e:
        SQLiteStateStore.open(str(tmp_path), Clock())
    assert str(e.value).startswith(f"{tmp_path / FILENAME}: not an SQLite database")
    assert "\n" not in str(e.value)


def test_a_newer_schema_is_refused(tmp_path) -> None:
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA + 1}")
    with pytest.raises(StoreOpenError, match=f"schema version {SCHEMA + 1} is newer"):
        SQLiteStateStore.open(str(tmp_path), Clock())


def test_a_directory_that_cannot_be_made(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreOpenError) as e:
        SQLiteStateStore.open(str(tmp_path / "file" / "state"), Clock())
    assert str(e.value) == (f"state directory {tmp_path / 'file' / 'state'} cannot be created: "
                            "Not a directory")


def test_a_read_only_directory(tmp_path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    os.chmod(directory, 0o500)
    try:
        if os.access(directory, os.W_OK):
            # root writes anyway; a read-only mount is what stops it: mount one if we can.
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                               str(directory)], capture_output=True).returncode:
                pytest.skip("running as root and cannot mount a read-only tmpfs")
            try:
                with pytest.raises(StoreOpenError, match="is not writable"):
                    SQLiteStateStore.open(str(directory), Clock())
            finally:
                subprocess.run(["umount", str(directory)], check=True)
        else:
            with pytest.raises(StoreOpenError, match="is not writable"):
                SQLiteStateStore.open(str(directory), Clock())
    finally:
        os.chmod(directory, 0o700)


HOLDER = """
import sys, time
from twisted.internet.task import Clock
from mup.store.sqlitestate import SQLiteStateStore
SQLiteStateStore.open(sys.argv[1], Clock())
print("open", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreOpenError) as e:
            SQLiteStateStore.open(str(tmp_path), Clock())
        assert str(e.value) == f"{tmp_path / FILENAME} is in use by another mup process"
    finally:
        holder.kill()
        holder.wait()
    SQLiteStateStore.open(str(tmp_path), Clock()).close()  # released when the holder died


WRITER = """
import sys
from twisted.internet import reactor
from mup.store.sqlitestate import SQLiteStateStore
store = SQLiteStateStore.open(sys.argv[1], reactor)
def put(i):
    store.put("t", f"k{i}", i).addCallback(lambda _: print(f"k{i}", flush=True))
    reactor.callLater(0, put, i + 1)
reactor.callWhenRunning(put, 0)
reactor.run()
"""


def test_what_was_committed_survives_kill_9(tmp_path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        while len(committed) < 300:
            line = writer.stdout.readline()
            assert line, "the writer died"
            committed.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    rows = SQLiteStateStore.open(str(tmp_path), Clock()).load("t").result
    assert set(committed) <= set(rows)
    assert all(rows[k] == int(k[1:]) for k in rows)


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abc"), st.sampled_from("xyz"),
              st.integers(0, 5)),
    st.tuples(st.just("delete"), st.sampled_from("abc"), st.sampled_from("xyz")),
    st.tuples(st.just("restart"))), max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPS)
def test_reopening_shows_what_was_written(tmp_path_factory, ops) -> None:
    directory = tmp_path_factory.mktemp("state")
    clock = Clock()
    store = SQLiteStateStore.open(str(directory), clock)
    model: dict[str, dict] = {}
    for op in ops:
        if op[0] == "put":
            store.put(op[1], op[2], op[3])
            model.setdefault(op[1], {})[op[2]] = op[3]
        elif op[0] == "delete":
            store.delete(op[1], op[2])
            model.get(op[1], {}).pop(op[2], None)
        else:
            store = reopen(store, directory, clock)
        for table in "abc":
            assert store.load(table).result == model.get(table, {})
    store = reopen(store, directory, clock)
    for table in "abc":
        assert store.load(table).result == model.get(table, {})
    store.close()
    clock.advance(0)


def test_twistd_with_an_unusable_state_directory_is_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "mup.toml"
    config.write_text(f'[irc]\nendpoint = "tcp:host=127.0.0.1:port={free_port()}"\n'
                      f'channels = ["#ops"]\n[state]\ndirectory = "{tmp_path / "file"}"\n')
    result = subprocess.run(twistd_argv("-n", "--pidfile=", "mup", "--config", str(config)),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"mup: state directory {tmp_path / 'file'} cannot be created: "
                             "File exists\n")
    assert "Traceback" not in result.stdout


def test_twistd_imports_the_old_state_files(tmp_path) -> None:
    """Upgrading: the files of tests/data/state-v0 (written by the JSON code) are imported at
    the first start, one log line each, and moved aside."""
    import shutil
    from pathlib import Path

    state = tmp_path / "state"
    shutil.copytree(Path(__file__).parent / "data" / "state-v0", state,
                    ignore=shutil.ignore_patterns("*.py"))
    config = tmp_path / "mup.toml"
    config.write_text(textwrap.dedent(f"""
        [irc]
        endpoint = "tcp:host=127.0.0.1:port={free_port()}"
        channels = ["#ops"]
        [ldap]
        ldif = "{Path(__file__).parent / 'data' / 'people.ldif'}"
        [sms]
        gateway = "kannel"
        [sms.kannel]
        sendsms_url = "http://127.0.0.1:{free_port()}/cgi-bin/sendsms"
        [webhook]
        endpoint = "tcp:port=0:interface=127.0.0.1"
        journal = "{tmp_path / 'journal'}"
        [state]
        directory = "{state}"
        """))
    bot = subprocess.Popen(twistd_argv("-n", "--pidfile=", "mup", "--config", str(config)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=tmp_path)
    lines = []
    try:
        while sum("imported" in line for line in lines) < 3:
            line = bot.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        bot.terminate()
        bot.wait(30)
    imported = [line for line in lines if "imported" in line]
    assert any("3 rows of SMS quota" in line for line in imported), imported
    assert any("2 rows of reply routes" in line for line in imported), imported
    assert any("2 rows of SMS outbox" in line for line in imported), imported
    assert sorted(p.name for p in state.iterdir() if "imported" in p.name) == [
        "reply-routes.json.imported", "sms-outbox.jsonl.imported", "sms-quota.jsonl.imported"]
    with sqlite3.connect(state / FILENAME) as db:
        assert db.execute("SELECT tbl, count(*) FROM state GROUP BY tbl ORDER BY tbl"
                          ).fetchall() == [("outbox", 2), ("quota", 3), ("routes", 2)]
