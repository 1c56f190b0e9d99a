"""The inbound journal on a real directory: durability, dedupe, recovery from torn or bad files.

Writes run synchronously on a ``task.Clock`` (``clock.advance(0)`` is one reactor turn), so the
tests never sleep; crashes are simulated by a file system that dies part-way through a write.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mup.journal import HEADER_SIZE, Entry, FileSystem, Journal, JournalError

WEEK = 7 * 86400.0


def open_journal(path: Path, clock: Clock, **kw: Any) -> Journal:
    return Journal.open(str(path), clock, **kw)


def results(ds: list) -> list:
    """Attach result collectors to Deferreds; the list fills in as they fire."""
    out: list = [None] * len(ds)
    for i, d in enumerate(ds):
        d.addBoth(lambda r, i=i: out.__setitem__(i, r))
    return out


def append_all(j: Journal, clock: Clock, keys: list[str]) -> list:
    got = results([j.append(k, {"text": f"message {k}"}) for k in keys])
    clock.advance(0)
    return got


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def disk_use(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


class CountingFS(FileSystem):
    """The real file system, counting fsyncs."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


class SimulatedCrash(BaseException):
    """The process died here (a BaseException: the journal's error handling never sees it)."""


class CrashFS(FileSystem):
    """The real file system that dies after writing ``budget`` more bytes, and remembers how much
    of each file was fsync'd (what a power cut would keep)."""

    def __init__(self) -> None:
        self.budget: int | None = None
        self.error_once: str | None = None
        """"pwrite" or "fsync": that call fails once with an OSError (full disk, I/O error)."""
        self.paths: dict[int, str] = {}
        self.synced: dict[str, int] = {}

    def create(self, path: str) -> int:
        fd = super().create(path)
        self.paths[fd] = path
        self.synced[path] = 0
        return fd

    def open(self, path: str) -> int:
        fd = super().open(path)
        self.paths[fd] = path
        self.synced[path] = os.fstat(fd).st_size
        return fd

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self.error_once == "pwrite" and data:
            self.error_once = None
            super().pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.budget is not None and len(data) > self.budget:
            super().pwrite(fd, data[: self.budget], offset)
            self.budget = None
            raise SimulatedCrash()
        if self.budget is not None:
            self.budget -= len(data)
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        if self.error_once == "fsync":
            self.error_once = None
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)
        self.synced[self.paths[fd]] = os.fstat(fd).st_size

    def replace(self, src: str, dst: str) -> None:
        super().replace(src, dst)
        self.synced[dst] = self.synced.pop(src, 0)

    def abandon(self) -> None:
        """Close every descriptor without writing anything: the process is gone."""
        for fd in list(self.paths):
            self.close(fd)


class FailingFS(FileSystem):
    """The real file system where chosen calls fail with an OSError, as a full or broken disk."""

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}
        """call -> errno: fails every time."""
        self.once: dict[str, int] = {}
        """call -> errno: fails the next time only (Linux reports an fsync EIO once)."""

    def _maybe_fail(self, call: str) -> None:
        code = self.once.pop(call, None) or self.fail.get(call)
        if code:
            raise OSError(code, os.strerror(code))

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if "pwrite" in self.fail or "pwrite" in self.once:
            super().pwrite(fd, data[: len(data) // 2], offset)  # part of it reaches the file
            self._maybe_fail("pwrite")
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync")
        super().fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._maybe_fail("ftruncate")
        super().ftruncate(fd, size)

    def create(self, path: str) -> int:
        self._maybe_fail("create")
        return super().create(path)

    def unlink(self, path: str) -> None:
        self._maybe_fail("unlink")
        super().unlink(path)


# -- basics -----------------------------------------------------------------------------------


def test_append_fires_after_the_write_and_keeps_order(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    j = open_journal(tmp_path, clock)
    d = j.append("kannel:1", {"text": "hi"})
    assert not d.called  # not on disk yet
    assert j.pending() == [] and j.backlog == 0
    clock.advance(0)
    assert d.result == Entry(1, "kannel:1", {"text": "hi"}, 1000.0)
    got = append_all(j, clock, [f"kannel:{i}" for i in range(2, 7)])
    assert [e.seq for e in got] == [2, 3, 4, 5, 6]
    assert [e.key for e in j.pending()] == [f"kannel:{i}" for i in range(1, 7)]
    assert len(j) == 6 and j.writable()
    j.close()
    assert not j.writable()


def test_pending_after_and_limit(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    got = append_all(j, clock, [f"k:{i}" for i in range(10)])
    results([j.mark_done(got[7].seq)])
    clock.advance(0)
    for after, limit, expected in [(0, None, [0, 1, 2, 3, 4, 5, 6, 8, 9]), (0, 2, [0, 1]),
                                   (got[5].seq, None, [6, 8, 9]), (got[5].seq, 1, [6]),
                                   (got[9].seq, None, []), (0, 0, [])]:
        assert [e.key for e in j.pending(after, limit)] == [f"k:{i}" for i in expected]
    assert j.is_pending("k:1") and not j.is_pending("k:7") and not j.is_pending("nope")
    j.close()


def test_concurrent_appends_share_one_fsync(tmp_path: Path) -> None:
    clock, fs = Clock(), CountingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    before = fs.fsyncs
    got = append_all(j, clock, [f"k:{i}" for i in range(16)])
    assert all(isinstance(e, Entry) for e in got)
    assert fs.fsyncs - before == 1
    done = results([j.mark_done(e.seq) for e in got])
    clock.advance(0)
    assert done == [None] * 16 and fs.fsyncs - before == 2
    j.close()


def test_writer_thread_on_the_real_reactor(tmp_path: Path, irc_reactor: Any) -> None:
    """The production set-up: the shared reactor (run in a thread by the session fixture) and
    writes on the journal's own thread; appends made in one turn share one fsync."""
    from twisted.internet.defer import gatherResults

    fs = CountingFS()
    j = irc_reactor.call(Journal.open, str(tmp_path), irc_reactor.reactor, fs=fs)
    assert j._threaded

    async def burst() -> tuple[list, int]:
        before = fs.fsyncs
        entries = await gatherResults([j.append(f"k:{i}", {"i": i}) for i in range(64)])
        return entries, fs.fsyncs - before

    entries, fsyncs = irc_reactor.call(burst)
    assert [e.seq for e in entries] == list(range(1, 65)) and fsyncs == 1
    irc_reactor.call(lambda: gatherResults([j.mark_done(e.seq) for e in entries[:32]]))
    assert irc_reactor.call(lambda: gatherResults([j.append("k:3", {})])) == [None]
    irc_reactor.call(j.close)
    j = open_journal(tmp_path, Clock())
    assert [e.key for e in j.pending()] == [f"k:{i}" for i in range(32, 64)]
    j.close()


class LoggingFS(FileSystem):
    """The real file system, logging the calls that matter for durability."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def create(self, path: str) -> int:
        self.log.append("create " + os.path.basename(path))
        return super().create(path)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self.log.append("write")
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self.log.append("fsync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.log.append("fsync dir")
        super().fsync_dir(path)


def test_append_fires_after_fsync_and_after_the_directory_for_a_new_segment(
        tmp_path: Path) -> None:
    clock, log = Clock(), []
    j = open_journal(tmp_path, clock, fs=LoggingFS(log), segment_bytes=32)
    append_all(j, clock, ["a"])  # fills segment 1
    del log[:]
    j.append("b", {}).addCallback(lambda _: log.append("fired"))
    clock.advance(0)
    assert log == ["create 0000000000000002.seg", "write", "fsync", "fsync dir", "write",
                   "fsync", "fired"]
    j.close()


def test_a_second_process_cannot_open_the_journal(tmp_path: Path) -> None:
    import subprocess
    import sys

    clock = Clock()
    j = open_journal(tmp_path, clock)
    code = ("import sys; from twisted.internet.task import Clock; from mup.journal import *\n"
            "try:\n    Journal.open(sys.argv[1], Clock())\n"
            "except JournalError as e:\n    print(e)\n")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert f"in use by another process (pid {os.getpid()})" in other.stdout, other.stderr
    j.close()
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert other.stdout == "" and other.returncode == 0, other.stderr


def test_record_must_be_json_and_key_sane(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    for key, record, error in [("k", {"x": object()}, TypeError), ("k", {"x": float("nan")},
                               TypeError), ("", {}, ValueError), ("k" * 2000, {}, ValueError),
                               ("k", ["not", "a", "dict"], TypeError)]:
        got = results([j.append(key, record)])
        assert isinstance(got[0], Failure) and got[0].check(error), (key, record)
    got = append_all(j, clock, ["k"])
    assert got[0].seq == 1  # refused appends used no sequence number
    j.close()


def test_record_round_trips_unicode_and_nesting(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    record = {"text": "caf\u00e9 \U0001f600 \x00\r\n", "extra": {"a": [1, 2.5, None, True]}}
    got = results([j.append("u", record)])
    clock.advance(0)
    assert got[0].record == record
    j.close()
    j = open_journal(tmp_path, clock)
    assert j.pending()[0].record == record
    j.close()


# -- dedupe -----------------------------------------------------------------------------------


def test_duplicate_keys_answer_none(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    got = results([j.append("twilio:SM1", {"n": 1}), j.append("twilio:SM1", {"n": 2})])
    clock.advance(0)
    first, again_inflight = got
    assert isinstance(first, Entry) and again_inflight is None
    assert append_all(j, clock, ["twilio:SM1"]) == [None]          # pending
    results([j.mark_done(first.seq)])
    clock.advance(0)
    assert append_all(j, clock, ["twilio:SM1"]) == [None]          # delivered
    assert j.pending() == []
    j.close()
    j = open_journal(tmp_path, clock)
    assert append_all(j, clock, ["twilio:SM1"]) == [None]          # after reopen
    j.close()


def test_duplicate_of_a_failed_append_fails_too(tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    fs.once["fsync"] = errno.EIO
    got = results([j.append("k", {}), j.append("k", {})])
    clock.advance(0)
    assert all(isinstance(r, Failure) and r.check(JournalError) for r in got)
    assert isinstance(append_all(j, clock, ["k"])[0], Entry)  # the retry is accepted
    j.close()


def test_keys_outlive_deleted_segments_until_the_window_ends(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock, segment_bytes=512)
    keys = [f"kannel:{i}" for i in range(40)]
    entries = []
    for k in keys:  # one batch each, so rotation happens along the way
        entries += append_all(j, clock, [k])
    assert len(segments(tmp_path)) > 3
    grown = disk_use(tmp_path)
    results([j.mark_done(e.seq) for e in entries])
    clock.advance(0)
    append_all(j, clock, ["kannel:new"])  # moves on from the last full segment
    clock.advance(0)
    assert len(segments(tmp_path)) <= 2
    assert disk_use(tmp_path) < grown
    assert append_all(j, clock, keys) == [None] * 40  # still duplicates
    j.close()
    j = open_journal(tmp_path, clock, segment_bytes=512)
    assert [e.key for e in j.pending()] == ["kannel:new"]
    assert append_all(j, clock, keys) == [None] * 40  # from the keys file
    clock.advance(WEEK + 1)
    assert all(isinstance(e, Entry) for e in append_all(j, clock, keys[:3]))  # window over
    j.close()


def test_expired_keys_are_dropped_after_a_restart(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mup.journal._COMPACT_SLACK", 100)
    clock = Clock()
    kw = {"segment_bytes": 2048, "dedupe_window": 100.0}
    j = open_journal(tmp_path, clock, **kw)
    for n in range(100):
        got = append_all(j, clock, [f"k:{n}:{i}" for i in range(30)])
        results([j.mark_done(e.seq) for e in got])
        clock.advance(0)
    j.close()
    big = (tmp_path / "keys").stat().st_size
    assert big > 40_000
    clock.advance(1000)
    j = open_journal(tmp_path, clock, **kw)
    assert isinstance(append_all(j, clock, ["k:1:1"])[0], Entry)  # expired key accepted again
    results([j.mark_done(j.pending()[0].seq)])
    for i in range(40):  # traffic: segments rotate and go, and the keys file is compacted
        [e] = append_all(j, clock, [f"later:{i}" * 20])
        results([j.mark_done(e.seq)])
        clock.advance(0)
    assert (tmp_path / "keys").stat().st_size < big // 4  # only the 40 later keys
    j.close()


def test_keys_file_is_compacted_while_running(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mup.journal._COMPACT_SLACK", 100)
    clock = Clock()
    kw = {"segment_bytes": 2048, "dedupe_window": 100.0}
    j = open_journal(tmp_path, clock, **kw)

    def traffic(prefix: str, rounds: int) -> None:
        for n in range(rounds):
            got = append_all(j, clock, [f"{prefix}:{n}:{i}" for i in range(30)])
            results([j.mark_done(e.seq) for e in got])
            clock.advance(1)

    traffic("old", 40)
    big = (tmp_path / "keys").stat().st_size
    clock.advance(1000)
    traffic("new", 3)
    assert (tmp_path / "keys").stat().st_size < big // 4
    assert not (tmp_path / "keys.tmp").exists()
    assert append_all(j, clock, ["new:0:0", "new:2:29"]) == [None, None]
    assert isinstance(append_all(j, clock, ["old:0:0"])[0], Entry)
    j.close()
    j = open_journal(tmp_path, clock, **kw)
    assert append_all(j, clock, ["new:0:0", "new:2:29"]) == [None, None]
    j.close()


# -- deletion ---------------------------------------------------------------------------------


def test_done_records_keep_older_segments_alive(tmp_path: Path) -> None:
    """A segment holding done-records for an older, still-live segment must not go first, or
    the older segment's delivered messages would come back at the next start."""
    clock = Clock()
    kw = {"segment_bytes": 100}
    j = open_journal(tmp_path, clock, **kw)
    a = append_all(j, clock, ["a1", "a2", "a3"])  # segment 1
    b = append_all(j, clock, ["b1"])              # segment 2 (1 is full)
    results([j.mark_done(a[0].seq), j.mark_done(a[1].seq)])
    clock.advance(0)                              # done-records in segment 2
    later = [e for i in range(6) for e in append_all(j, clock, [f"c{i}" * 40])]
    results([j.mark_done(e.seq) for e in [b[0], *later]])
    clock.advance(0)
    append_all(j, clock, ["d"])
    names = [p.name for p in segments(tmp_path)]
    assert names[:2] == ["0000000000000001.seg", "0000000000000002.seg"]  # a3 pins both
    j.close()
    j = open_journal(tmp_path, clock, **kw)
    assert [e.key for e in j.pending()] == ["a3", "d"]
    results([j.mark_done(j.pending()[0].seq)])
    clock.advance(0)
    assert len(segments(tmp_path)) == 1  # everything else went, oldest first
    j.close()
    assert [e.key for e in open_journal(tmp_path, clock, **kw).pending()] == ["d"]


def test_idle_journal_moves_off_a_delivered_segment(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock, segment_bytes=4096)
    got = append_all(j, clock, [f"k:{i}" for i in range(40)])  # ~4 kB, one segment
    assert len(segments(tmp_path)) == 1
    results([j.mark_done(e.seq) for e in got])
    clock.advance(0)
    [seg] = segments(tmp_path)
    assert seg.stat().st_size == HEADER_SIZE  # a fresh segment; the old one was deleted
    assert append_all(j, clock, ["k:1"]) == [None]
    j.close()


def test_failed_idle_rotation_does_not_spin(tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs, segment_bytes=1024)
    got = append_all(j, clock, [f"k:{i}" for i in range(20)])
    fs.fail["create"] = errno.ENOSPC
    results([j.mark_done(e.seq) for e in got])
    clock.advance(0)  # would never return if the rotation were retried every turn
    assert len(segments(tmp_path)) == 1 and segments(tmp_path)[0].stat().st_size > 256
    fs.fail.clear()
    clock.advance(31)
    assert segments(tmp_path)[0].stat().st_size == HEADER_SIZE
    j.close()


def test_all_delivered_leaves_almost_nothing(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock, segment_bytes=4096)
    for n in range(50):
        got = append_all(j, clock, [f"k:{n}:{i}" for i in range(20)])
        results([j.mark_done(e.seq) for e in got])
        clock.advance(0)
    assert len(segments(tmp_path)) <= 2
    j.close()
    j = open_journal(tmp_path, clock, segment_bytes=4096)
    assert j.recovery.pending == 0 and j.recovery.segments <= 2
    j.close()


# -- recovery ---------------------------------------------------------------------------------


def test_torn_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    clock = Clock()
    src = tmp_path / "src"
    j = open_journal(src, clock)
    for i in range(4):
        append_all(j, clock, [f"k:{i}"])
    [seg] = segments(src)
    start = seg.stat().st_size
    append_all(j, clock, ["k:last"])
    j.close()
    data = seg.read_bytes()
    assert len(data) > start + 20
    for cut in range(start, len(data)):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / seg.name).write_bytes(data[:cut])
        j = open_journal(d, clock)
        assert [e.key for e in j.pending()] == [f"k:{i}" for i in range(4)], cut
        assert j.recovery.torn_bytes == cut - start and j.recovery.corrupt_records == 0
        assert (d / seg.name).stat().st_size == start  # cut for good
        got = append_all(j, clock, ["k:last", "k:after"])  # the journal goes on
        assert all(isinstance(e, Entry) for e in got) and got[0].seq == 5
        j.close()
        j = open_journal(d, clock)
        assert j.recovery.torn_bytes == 0 and len(j) == 6
        j.close()
        shutil.rmtree(d)


def test_corrupt_middle_record_is_skipped_and_reported(tmp_path: Path) -> None:
    clock = Clock()
    src = tmp_path / "src"
    j = open_journal(src, clock)
    offsets = []
    for i in range(5):
        offsets.append(segments(src)[0].stat().st_size)
        append_all(j, clock, [f"k:{i}"])
    offsets.append(segments(src)[0].stat().st_size)
    j.close()
    [seg] = segments(src)
    data = seg.read_bytes()
    for pos in range(offsets[2], offsets[3]):  # every byte of the third record
        d = tmp_path / f"flip{pos}"
        shutil.copytree(src, d)
        broken = bytearray(data)
        broken[pos] ^= 0x40
        (d / seg.name).write_bytes(bytes(broken))
        j = open_journal(d, clock)
        assert [e.key for e in j.pending()] == ["k:0", "k:1", "k:3", "k:4"], pos
        assert j.recovery.corrupt_records == 1 and j.recovery.torn_bytes == 0
        j.close()
        shutil.rmtree(d)


def test_garbage_and_damaged_headers_never_stop_start_up(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    append_all(j, clock, ["a", "b"])
    j.close()
    [seg] = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[0] ^= 1  # the segment's magic
    seg.write_bytes(bytes(data) + os.urandom(3000).replace(b"\xa5", b"x"))
    (tmp_path / "keys").write_bytes(b"\xa5" * 100)
    (tmp_path / "0000000000000009.seg").write_bytes(b"MUP")  # a rotation cut short
    (tmp_path / "notes.txt").write_text("left alone")
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["a", "b"]
    assert j.recovery.corrupt_records >= 1 and j.recovery.torn_bytes >= 3000
    assert isinstance(append_all(j, clock, ["c"])[0], Entry)
    j.close()
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["a", "b", "c"]
    assert j.pending()[2].seq > 2
    j.close()


def frame(payload: bytes) -> bytes:
    """A record framed as the journal frames it: 0xA5, crc32(length + payload), length."""
    body = len(payload).to_bytes(4, "big") + payload
    return b"\xa5" + zlib.crc32(body).to_bytes(4, "big") + body


def test_well_framed_nonsense_is_skipped_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    append_all(j, clock, ["a"])
    j.close()
    [seg] = segments(tmp_path)
    nonsense = [b'a{"x":1}', b"a[1,2]", b'a["1","k",0.0,{}]', b"z[]", b"d[\"x\"]", b"a[2,"]
    with seg.open("ab") as f:
        f.write(b"".join(frame(p) for p in nonsense))
        f.write(frame(b'a[7,"b",1.5,{"t":"ok"}]'))
    j = open_journal(tmp_path, clock)
    assert [(e.seq, e.key, e.record) for e in j.pending()] == [(1, "a", {"text": "message a"}),
                                                                (7, "b", {"t": "ok"})]
    assert j.recovery.corrupt_records == len(nonsense) and j.recovery.torn_bytes == 0
    assert append_all(j, clock, ["c"])[0].seq == 8
    j.close()


def test_reopen_after_crash_keeps_acknowledged_records(tmp_path: Path) -> None:
    clock, fs = Clock(), CrashFS()
    j = open_journal(tmp_path, clock, fs=fs)
    acked = append_all(j, clock, ["a", "b"])
    results([j.mark_done(acked[0].seq)])
    clock.advance(0)
    lost = results([j.append("c", {})])
    fs.budget = 5
    with pytest.raises(SimulatedCrash):
        clock.advance(0)
    assert lost == [None]  # never answered
    fs.abandon()
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["b"]
    assert j.recovery.torn_bytes == 5
    assert isinstance(append_all(j, clock, ["c"])[0], Entry)
    j.close()


def test_sequence_numbers_never_go_back(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock, segment_bytes=200)
    top = 0
    for i in range(30):
        [e] = append_all(j, clock, [f"k:{i}"])
        results([j.mark_done(e.seq)])
        clock.advance(0)
        top = e.seq
    j.close()
    j = open_journal(tmp_path, clock, segment_bytes=200)
    [e] = append_all(j, clock, ["next"])
    assert e.seq > top
    j.close()


# -- failing disks ----------------------------------------------------------------------------


@pytest.mark.parametrize("call,code,persistent", [("pwrite", errno.ENOSPC, True),
                                                 ("fsync", errno.EIO, False)])
def test_failed_write_errbacks_and_leaves_the_journal_whole(tmp_path: Path, call: str,
                                                            code: int, persistent: bool) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    append_all(j, clock, ["a"])
    (fs.fail if persistent else fs.once)[call] = code
    got = append_all(j, clock, ["b", "c"])
    assert all(isinstance(r, Failure) and r.check(JournalError) for r in got)
    assert not j.writable()  # /healthz says so, and the webhook answers 5xx at once
    clock.advance(1)
    assert j.writable() is not persistent  # a probe write on its own: the disk is still full?
    fs.fail.clear()
    clock.advance(1)
    assert j.writable()
    assert isinstance(append_all(j, clock, ["b"])[0], Entry)
    j.close()
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["a", "b"]
    assert j.recovery.torn_bytes == 0 and j.recovery.corrupt_records == 0
    j.close()


def test_write_that_cannot_be_undone_makes_the_journal_unwritable_until_it_can(
        tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    append_all(j, clock, ["a"])
    fs.fail.update(pwrite=errno.EIO, ftruncate=errno.EIO)
    assert isinstance(append_all(j, clock, ["b"])[0], Failure)
    assert not j.writable()
    fs.fail.clear()
    assert isinstance(append_all(j, clock, ["b"])[0], Entry)  # first cuts the bad tail
    assert j.writable()
    j.close()
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["a", "b"] and j.recovery.corrupt_records == 0
    j.close()


def test_unwritable_journal_repairs_itself_without_appends(tmp_path: Path) -> None:
    """The webhook stops appending while ``writable()`` is False, so the journal must retry on
    its own."""
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    append_all(j, clock, ["a"])
    fs.fail.update(pwrite=errno.EIO, ftruncate=errno.EIO)
    append_all(j, clock, ["b"])
    assert not j.writable()
    clock.advance(1)
    assert not j.writable()  # still failing
    fs.fail.clear()
    clock.advance(1)
    assert j.writable()
    j.close()
    j = open_journal(tmp_path, clock)
    assert [e.key for e in j.pending()] == ["a"]
    assert j.recovery.torn_bytes == 0 and j.recovery.corrupt_records == 0
    j.close()


def test_failed_mark_done_puts_the_message_back(tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs)
    entries = append_all(j, clock, ["a", "b", "c"])
    fs.once["fsync"] = errno.EIO
    done = results([j.mark_done(entries[0].seq)])
    assert [e.key for e in j.pending()] == ["b", "c"]  # on its way
    clock.advance(0)
    assert isinstance(done[0], Failure)
    assert [e.key for e in j.pending()] == ["a", "b", "c"]
    j.close()


def test_failed_rotation_errbacks_and_retries(tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs, segment_bytes=100)
    append_all(j, clock, ["a", "b"])
    fs.fail["create"] = errno.ENOSPC
    assert isinstance(append_all(j, clock, ["c"])[0], Failure)
    del fs.fail["create"]
    assert isinstance(append_all(j, clock, ["c"])[0], Entry)
    assert len(segments(tmp_path)) == 2
    j.close()


def test_failed_deletion_keeps_segments_and_retries_later(tmp_path: Path) -> None:
    clock, fs = Clock(), FailingFS()
    j = open_journal(tmp_path, clock, fs=fs, segment_bytes=100)
    entries = [e for k in ["a", "b", "c"] for e in append_all(j, clock, [k])]
    fs.fail["unlink"] = errno.EACCES
    results([j.mark_done(e.seq) for e in entries])
    before = len(segments(tmp_path))
    assert before >= 2
    clock.advance(0)  # would spin forever if a failed deletion were retried every turn
    assert len(segments(tmp_path)) == before
    assert isinstance(append_all(j, clock, ["d"])[0], Entry)
    fs.fail.clear()
    clock.advance(31)
    assert results([j.settled()]) == [None]
    assert len(segments(tmp_path)) == 1
    assert append_all(j, clock, ["a", "b", "c"]) == [None] * 3  # their keys were kept
    j.close()


def test_close_fails_what_was_not_written(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    got = results([j.append("a", {})])
    j.close()
    assert isinstance(got[0], Failure) and got[0].check(JournalError)
    assert isinstance(results([j.append("b", {})])[0], Failure)
    assert open_journal(tmp_path, clock).pending() == []


CHILD = """
import sys
from twisted.internet import defer, task
from mup.journal import Journal

async def main(reactor, path, run):
    journal = Journal.open(path, reactor, segment_bytes=8192)
    print("open", journal.recovery.torn_bytes, flush=True)
    counter = iter(range(10**9))

    async def appender():
        while True:
            key = f"{run}:{next(counter)}"
            entry = await journal.append(key, {"text": "x" * 100})
            print("acked", key, flush=True)
            if entry.seq % 2:
                print("marking", key, flush=True)
                await journal.mark_done(entry.seq)
                print("done", key, flush=True)

    await defer.gatherResults([defer.ensureDeferred(appender()) for _ in range(16)])

task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1], sys.argv[2])))
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A real process on the real reactor and writer thread, killed -9 mid-stream, three times."""
    import subprocess
    import sys

    acked: set[str] = set()
    marking: set[str] = set()
    done: set[str] = set()
    for run in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(run)],
                                 stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).parent.parent)
        assert child.stdout is not None
        seen = 0
        for line in child.stdout:  # blocks on the child's output, no sleeping
            word, _, key = line.strip().partition(" ")
            if word == "acked":
                acked.add(key)
                seen += 1
            elif word == "marking":
                marking.add(key)
            elif word == "done":
                done.add(key)
            if seen >= 300 + 97 * run:
                break
        child.kill()
        child.wait()
        child.stdout.close()
        j = open_journal(tmp_path, Clock())
        pending = {e.key for e in j.pending()}
        assert len(pending) == len(j.pending())
        assert acked - marking <= pending  # every acknowledged message not marked is there
        assert not pending & done       # nothing confirmed done comes back
        j.close()


# -- the property -----------------------------------------------------------------------------

KEYS = [f"kannel:{i}" for i in range(12)]

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(KEYS)),
    st.tuples(st.just("done"), st.integers(0, 20)),
    st.tuples(st.just("turn")),
    st.tuples(st.just("crash"), st.none() | st.integers(0, 400), st.floats(0, 1)),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("time"), st.sampled_from([1.0, 3600.0, 90000.0])),
    st.tuples(st.just("ioerror"), st.sampled_from(["pwrite", "fsync"])),
), max_size=60)


@settings(max_examples=int(os.environ.get("MUP_JOURNAL_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_property_nothing_acknowledged_is_lost(tmp_path_factory: Any, ops: list) -> None:
    path = tmp_path_factory.mktemp("j")
    clock, fs = Clock(), CrashFS()
    kw = {"segment_bytes": 256, "dedupe_window": 86400.0}
    j = open_journal(path, clock, fs=fs, **kw)
    acked: dict[int, str] = {}       # seq -> key: appends whose Deferred fired with an Entry
    asked_done: set[int] = set()     # mark_done was called
    done: set[int] = set()           # ... and fired
    acked_at: dict[str, float] = {}
    journaled: set[str] = set()      # keys known to be on disk (acked, or found pending)

    def on_append(result: Any, key: str) -> None:
        if isinstance(result, Entry):
            assert result.key == key and result.seq not in acked
            assert key not in acked_at or acked_at[key] < clock.seconds() - kw["dedupe_window"]
            acked[result.seq] = key
            acked_at[key] = result.appended
            journaled.add(key)
        elif result is None:  # a duplicate: the key must be journaled
            assert key in journaled
        else:
            result.trap(JournalError)

    def on_done(result: Any, seq: int) -> None:
        if result is None:
            done.add(seq)
        else:
            result.trap(JournalError)

    def check() -> None:
        pending = j.pending()
        seqs = [e.seq for e in pending]
        assert seqs == sorted(set(seqs))
        assert len({e.key for e in pending}) == len(pending)
        for e in pending:
            assert e.seq not in done
            if e.seq in acked:
                assert acked[e.seq] == e.key
        for seq in acked:
            assert seq in seqs or seq in asked_done, seq
        journaled.update(e.key for e in pending)

    for op in ops:
        if op[0] == "append":
            j.append(op[1], {"text": op[1]}).addBoth(on_append, op[1])
        elif op[0] == "done":
            pending = j.pending()
            if pending:
                seq = pending[op[1] % len(pending)].seq
                asked_done.add(seq)
                j.mark_done(seq).addBoth(on_done, seq)
        elif op[0] == "turn":
            clock.advance(0)
        elif op[0] == "time":
            clock.advance(op[1])
        elif op[0] == "ioerror":
            fs.error_once = op[1]
        elif op[0] == "crash":
            _, budget, cut = op
            fs.budget = budget
            try:
                clock.advance(0)
            except SimulatedCrash:
                pass
            fs.budget = None
            fs.error_once = None
            fs.abandon()
            # A dead process has no timers either: the next life gets a clock of its own.
            clock, old = Clock(), clock
            clock.advance(old.seconds())
            # A power cut may also lose what was written but not fsync'd.
            for seg in segments(path):
                size = seg.stat().st_size
                synced = fs.synced.get(str(seg), size)
                if size > synced:
                    os.truncate(seg, synced + int((size - synced) * cut))
            fs = CrashFS()
            j = open_journal(path, clock, fs=fs, **kw)
            check()
        else:
            clock.advance(0)
            fs.error_once = None
            j.close()
            j = open_journal(path, clock, fs=fs, **kw)
            assert j.recovery.torn_bytes == 0 and j.recovery.corrupt_records == 0
            check()
        check()
    clock.advance(0)
    j.close()
    j = open_journal(path, clock, **kw)
    check()
    j.close()


# -- the entry's record is what reads back after a restart --------------------------------------

class _Text(str):
    pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5) | st.builds(_Text, st.text(max_size=3)),
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 9), inner, max_size=3),
    max_leaves=12)


def _typed(value: Any) -> Any:
    """``value`` with its types spelled out, so 1 and 1.0 and True differ when compared."""
    if isinstance(value, dict):
        return ("dict", [(type(k).__name__, k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    return (type(value).__name__, value)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(st.text(max_size=4), _json_values, max_size=4))
def test_entry_record_is_what_reads_back(tmp_path_factory, record: dict) -> None:
    path = tmp_path_factory.mktemp("j")
    clock = Clock()
    j = open_journal(path, clock)
    got = results([j.append("k", record)])
    clock.advance(0)
    (entry,) = got
    j.close()
    j = open_journal(path, clock)
    (back,) = j.pending()
    j.close()
    assert _typed(entry.record) == _typed(back.record)


def test_entry_record_is_a_copy(tmp_path: Path) -> None:
    clock = Clock()
    j = open_journal(tmp_path, clock)
    record = {"text": "hi", "extra": {"coding": "0"}, "list": [1, {"a": 2}]}
    got = results([j.append("k", record)])
    clock.advance(0)
    (entry,) = got
    record["text"] = "changed"
    record["extra"]["coding"] = "2"
    record["list"][1]["a"] = 3
    assert entry.record == {"text": "hi", "extra": {"coding": "0"}, "list": [1, {"a": 2}]}
    j.close()
