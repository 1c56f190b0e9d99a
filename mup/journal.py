"""The durable inbound journal: what a gateway posted, fsync'd before the 2xx, until IRC took it.

The journal is a directory of append-only *segments* plus a small *keys* file::

    0000000000000001.seg   a 20-byte header (magic, version, first seq, crc) then framed records
    keys                   dedupe keys (with their time) of deleted segments, still in the window

Every record is framed as ``0xA5 | u32 crc32(length, payload) | u32 length | payload``; the payload
is one type byte and ASCII-only JSON, so the 0xA5 marker can only start a frame and recovery can
resynchronise after a damaged record:

* ``a [seq, key, appended, record]``: a message was accepted;
* ``d [seq, ...]``: these messages were delivered;
* ``k [[key, appended], ...]`` (keys file only): keys kept so a retried post is not shown twice.

Appends and "done" marks are group-committed: whatever arrives while one write+fsync runs goes into
the next one, on the journal's own thread, so the reactor never waits for the disk (a failed write
is cut back off the file and errbacks its appends).  A segment whose messages are all delivered,
and whose done-records no longer matter, is deleted once a newer segment exists (an idle journal
moves to a fresh segment to allow that); its keys go to the keys file first, which is compacted
as they expire.  Start-up reads only live segments, so its time and memory follow what is
undelivered, not the history (plus the keys still in the dedupe window).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import itertools
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["Entry", "Journal", "JournalClosed", "JournalError", "Recovery"]

log = Logger(namespace="mup.journal")

_MARK = 0xA5
_FRAME = struct.Struct(">BII")  # marker, crc32 of what follows it, payload length
_HEAD = struct.Struct(">4sHHQ")
_SEG_MAGIC = b"MUPJ"
_KEYS_MAGIC = b"MUPK"
_VERSION = 1
HEADER_SIZE = _HEAD.size + 4
MAX_RECORD = 1 << 20
"""Largest payload ``append`` takes (an SMS record is a few hundred bytes)."""
MAX_KEY = 1024
_MAX_FRAME = 16 << 20
_KEYS_PER_RECORD = 4096
_SUFFIX = ".seg"
_KEYS_FILE = "keys"
_LOCK_FILE = "lock"
_DELETE_RETRY = 30.0
_IDLE_ROTATE = 256 << 10
_REPAIR_DELAY = 1.0
_COMPACT_SLACK = 10000
_MAX_BATCH_BYTES = 8 << 20


class JournalError(Exception):
    """The journal could not make a record durable (disk full, I/O error): answer 5xx."""


class JournalClosed(JournalError):
    """The journal was closed before the record was written."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted message: its place in the journal, dedupe key, content and accept time."""

    seq: int
    key: str
    record: dict
    appended: float


@dataclass
class Recovery:
    """What ``Journal.open`` found on disk."""

    torn_bytes: int = 0
    """Bytes cut from the end of segments (a write the crash interrupted)."""
    corrupt_records: int = 0
    """Damaged stretches skipped in the middle of a file (later records were kept)."""
    segments: int = 0
    """Segment files found."""
    pending: int = 0
    """Messages accepted and not yet delivered."""


# -- framing ----------------------------------------------------------------------------------


def _header(magic: bytes, base_seq: int) -> bytes:
    head = _HEAD.pack(magic, _VERSION, 0, base_seq)
    return head + struct.pack(">I", zlib.crc32(head))


def _parse_header(data: bytes, magic: bytes) -> int | None:
    """The header's base seq, or None when the header is missing or damaged."""
    if len(data) < HEADER_SIZE:
        return None
    got_magic, version, _flags, base_seq = _HEAD.unpack_from(data)
    (crc,) = struct.unpack_from(">I", data, _HEAD.size)
    if got_magic != magic or version != _VERSION or crc != zlib.crc32(data[: _HEAD.size]):
        return None
    return base_seq


def _frame(payload: bytes) -> bytes:
    body = len(payload).to_bytes(4, "big") + payload
    return bytes((_MARK,)) + zlib.crc32(body).to_bytes(4, "big") + body


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder()


def _encode(kind: bytes, body: Any) -> bytes:
    return kind + _ENCODER.encode(body).encode("ascii")


class _NotPlain(Exception):
    pass


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _plain_copy(value: Any) -> Any:
    """A deep copy of ``value`` if it holds only JSON's own types (dicts with str keys, lists,
    str, int, float, bool, None), which read back from JSON as equal values of the same types;
    raises :class:`_NotPlain` for anything else.  Several times cheaper than decoding the JSON
    just written, on every append (the caller has already refused NaN and infinities)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotPlain
            out[k] = v if type(v) in _SCALARS else _plain_copy(v)
        return out
    if kind is list:
        return [_plain_copy(v) for v in value]
    raise _NotPlain


def _scan(data: bytes, start: int) -> tuple[list[bytes], int, int]:
    """Parse frames from ``start``: (payloads, damaged stretches skipped, end of last good frame).

    A damaged stretch followed by a good frame is corruption in the middle; one that runs to the
    end of the data is a torn tail, which the caller cuts at the returned offset."""
    view = memoryview(data)
    out: list[bytes] = []
    size = len(data)
    pos = good_end = start
    corrupt = 0
    bad = False
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    while pos < size:
        if size - pos >= _FRAME.size:
            mark, crc, length = unpack(data, pos)
            end = pos + 9 + length
            if mark == _MARK and 0 < length <= _MAX_FRAME and end <= size:
                if crc32(view[pos + 5:end]) == crc:
                    if bad:
                        corrupt += 1
                        bad = False
                    out.append(data[pos + 9:end])
                    pos = good_end = end
                    continue
        bad = True
        pos = data.find(b"\xa5", pos + 1)
        if pos < 0:
            break
    return out, corrupt, good_end


# -- the few system calls ---------------------------------------------------------------------


class FileSystem:
    """The system calls the journal writes with; tests swap in one that fails or dies mid-write."""

    def create(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write")
            view = view[n:]
            offset += n

    def fsync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def close(self, fd: int) -> None:
        os.close(fd)



# Journals this process has open, by directory: the lock file's fd and how many hold it.  The
# lock (flock) keeps other processes out and, unlike a POSIX lock, survives twistd's fork into
# the background; this process may reopen a journal it has open (the crash tests do).
_LOCKS: dict[str, list[int]] = {}


def _lock(directory: str) -> str:
    """Lock ``directory`` for this process; raises JournalError if another process has it."""
    real = os.path.realpath(directory)
    held = _LOCKS.get(real)
    if held is not None:
        held[1] += 1
        return real
    path = os.path.join(real, _LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        try:
            with open(path) as f:
                holder = f.read().strip() or "?"
        except OSError:
            holder = "?"
        raise JournalError(f"journal {directory} is in use by another process "
                           f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[real] = [fd, 1]
    return real


def _unlock(real: str) -> None:
    held = _LOCKS.get(real)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _LOCKS[real]
        os.close(held[0])


# -- in-memory state --------------------------------------------------------------------------


@dataclass(eq=False)
class _Segment:
    id: int
    path: str
    size: int = HEADER_SIZE
    pending: int = 0
    """Messages in this segment not yet durably done."""
    refs: set[int] = field(default_factory=set)
    """Older segments holding messages this segment's done-records mark: it must outlive them."""
    keys: list[str] = field(default_factory=list)
    """Keys appended here (their times are in ``Journal._keys``)."""


@dataclass(eq=False)
class _Item:
    kind: str
    seq: int
    frame: bytes
    d: defer.Deferred
    key: str = ""
    entry: Entry | None = None
    followers: list[defer.Deferred] = field(default_factory=list)


@dataclass
class _Outcome:
    new_fd: int | None = None
    size: int = 0
    error: BaseException | None = None
    clean: bool = True


def _segment_name(seg_id: int) -> str:
    return f"{seg_id:016x}{_SUFFIX}"


class Journal:
    """A durable, deduplicating queue of inbound messages; see the module docstring."""

    recovery: Recovery

    def __init__(self, directory: str, reactor: Any, *, segment_bytes: int,
                 dedupe_window: float, threaded: bool, fs: FileSystem) -> None:
        self.directory = directory
        self._reactor = reactor
        self._segment_bytes = segment_bytes
        self._window = dedupe_window
        self._threaded = threaded
        self._fs = fs
        self.recovery = Recovery()
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._keys_fd: int | None = None
        self._locked: str | None = None
        self._keys_size = HEADER_SIZE
        self._keys_entries = 0
        self._next_seq = 1
        self._pending: dict[int, Entry] = {}
        self._seg_of: dict[int, int] = {}
        self._keys: dict[str, float] = {}
        """Keys appended to live segments, with their time (the latest, if appended twice)."""
        self._carried: dict[str, float] = {}
        """Keys whose segment was deleted: what the keys file holds.  A key is a duplicate when
        either dict has it within the window (expired ones are pruned now and then)."""
        self._pending_keys: dict[str, int] = {}
        self._inflight: dict[str, _Item] = {}
        self._done_inflight: dict[int, _Item] = {}
        self._queue: list[_Item] = []
        self._busy = False
        self._call: Any = None
        self._dirty = False
        """The last write failed and its tail could not be cut yet."""
        self._failing = False
        """The last write of records failed (full disk, I/O error): not writable until one
        succeeds (a probe record on a timer, since the webhook stops appending meanwhile)."""
        self._closed = False
        self._pool: ThreadPool | None = None
        self._trigger: Any = None
        self._max_batch = 4096
        self._delete_after = 0.0
        self._retry_call: Any = None
        self._repair_call: Any = None
        self._settled_waiters: list[defer.Deferred[None]] = []

    # -- opening and recovery -----------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, reactor: Any = None, *, segment_bytes: int = 4 << 20,
             dedupe_window: float = 7 * 86400, threaded: bool | None = None,
             max_batch: int = 4096, fs: FileSystem | None = None) -> Journal:
        """Open (creating it if need be) and recover the journal in ``directory``.

        ``reactor`` is also the clock; with one that cannot run threads (``task.Clock``) or with
        ``threaded=False`` writes run on the reactor thread, batched per reactor turn.
        ``max_batch`` bounds the records per write+fsync (1 turns group commit off)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if threaded is None:
            threaded = IReactorThreads.providedBy(reactor)
        journal = cls(directory, reactor, segment_bytes=segment_bytes,
                      dedupe_window=dedupe_window, threaded=threaded, fs=fs or FileSystem())
        journal._max_batch = max(1, max_batch)
        # Recovery allocates an object graph the size of the backlog and frees nothing: the
        # cyclic collector would walk it again and again for no gain.
        collecting = gc.isenabled()
        gc.disable()
        try:
            journal._recover()
        except BaseException:
            journal._close_fds()
            raise
        finally:
            if collecting:
                gc.enable()
        journal._start()
        return journal

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _recover(self) -> None:
        fs = self._fs
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)  # SMS are private
            # The new directory's own entry must be durable too, or so might not be its files.
            fs.fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
        self._locked = _lock(self.directory)
        rec = self.recovery
        changed_dir = False
        tmp = self._path(_KEYS_FILE + ".tmp")
        if os.path.exists(tmp):
            fs.unlink(tmp)
            changed_dir = True

        # The keys file: keys of deleted segments.
        keys_path = self._path(_KEYS_FILE)
        if os.path.exists(keys_path):
            with open(keys_path, "rb") as f:
                data = f.read()
            if _parse_header(data, _KEYS_MAGIC) is None:
                rec.corrupt_records += 1
                log.warn("journal {dir}: keys file header damaged", dir=self.directory)
            payloads, corrupt, good_end = _scan(data, HEADER_SIZE)
            rec.corrupt_records += corrupt
            carried = self._carried
            for payload in payloads:
                try:
                    if payload[:1] != b"k":
                        raise ValueError("not a keys record")
                    pairs = json.loads(payload[1:])
                    self._keys_entries += len(pairs)
                    carried.update(pairs)  # written oldest first: the latest time wins
                except (ValueError, TypeError):
                    rec.corrupt_records += 1
            # Rewrite when damaged, which also cuts a torn tail (expired keys are pruned and
            # compacted away while running, off the start-up path).
            if good_end < len(data) or corrupt or _parse_header(data, _KEYS_MAGIC) is None:
                rec.torn_bytes += max(0, len(data) - max(good_end, HEADER_SIZE))
                self._rewrite_keys()
                changed_dir = True
        else:
            self._rewrite_keys()
            changed_dir = True
        self._keys_fd = fs.open(keys_path)
        self._keys_size = os.fstat(self._keys_fd).st_size

        # The segments, oldest first.
        ids = sorted(int(name[: -len(_SUFFIX)], 16) for name in os.listdir(self.directory)
                     if name.endswith(_SUFFIX) and len(name) == 16 + len(_SUFFIX)
                     and all(c in "0123456789abcdef" for c in name[:16]))
        rec.segments = len(ids)
        max_seq = 0
        fresh_segment = False
        for i, seg_id in enumerate(ids):
            path = self._path(_segment_name(seg_id))
            last = i == len(ids) - 1
            with open(path, "rb") as f:
                data = f.read()
            base = _parse_header(data, _SEG_MAGIC)
            if base is None:
                if last and len(data) < HEADER_SIZE:
                    # Created by a rotation the crash interrupted: nothing was acknowledged in it.
                    rec.torn_bytes += len(data)
                    fs.unlink(path)
                    changed_dir = True
                    continue
                rec.corrupt_records += 1
                fresh_segment = last
                log.warn("journal {path}: segment header damaged", path=path)
            else:
                max_seq = max(max_seq, base - 1)
            seg = _Segment(seg_id, path, size=len(data))
            self._segments[seg_id] = seg
            payloads, corrupt, good_end = _scan(data, HEADER_SIZE)
            rec.corrupt_records += corrupt
            if good_end < len(data):
                rec.torn_bytes += len(data) - good_end
                fd = fs.open(path)
                try:
                    fs.ftruncate(fd, good_end)
                    fs.fsync(fd)
                finally:
                    fs.close(fd)
                seg.size = good_end
            try:  # one JSON document per segment: much faster than one per record
                bodies = json.loads(b"[" + b",".join([p[1:] for p in payloads]) + b"]")
            except ValueError:
                bodies = None
            top, bad = self._replay_segment(seg, payloads, bodies)
            max_seq = max(max_seq, top)
            rec.corrupt_records += bad
        self._next_seq = max_seq + 1

        if self._segments:
            self._current = self._segments[max(self._segments)]
            self._fd = fs.open(self._current.path)
            if fresh_segment:
                # A damaged header on the live segment: start a fresh one after it.
                self._rotate_now()
        else:
            self._create_first(1)
        if changed_dir:
            fs.fsync_dir(self.directory)
        rec.pending = len(self._pending)
        self._delete_now()
        level = log.warn if rec.torn_bytes or rec.corrupt_records else log.info
        level("journal {dir}: {pending} pending in {segments} segments; cut {torn} torn bytes, "
              "skipped {corrupt} corrupt records", dir=self.directory, pending=rec.pending,
              segments=rec.segments, torn=rec.torn_bytes, corrupt=rec.corrupt_records)

    def _replay_segment(self, seg: _Segment, payloads: list[bytes],
                        bodies: list[Any] | None) -> tuple[int, int]:
        """Apply a segment's records; returns (highest seq named, records that made no sense).

        Appends, the bulk of a backlog, take an inlined fast path."""
        pending, pending_keys, seg_of, keys = (self._pending, self._pending_keys, self._seg_of,
                                               self._keys)
        add_key, seg_id, get_time = seg.keys.append, seg.id, keys.get
        top = bad = count = 0
        if bodies is None or len(bodies) != len(payloads):
            bodies = []
            for payload in payloads:
                try:
                    bodies.append(json.loads(payload[1:]))
                except ValueError:
                    bodies.append(None)
        for payload, body in zip(payloads, bodies, strict=True):
            try:
                if payload[0] == 0x61:
                    seq, key, appended, record = body
                    if (type(seq) is not int or type(key) is not str or type(record) is not dict
                            or type(appended) is not float):
                        raise ValueError("bad append record")
                    if get_time(key, -1e300) < appended:
                        keys[key] = appended
                    add_key(key)
                    if seq > top:
                        top = seq
                    if key not in pending_keys and seq not in pending:
                        pending[seq] = Entry(seq, key, record, appended)
                        pending_keys[key] = seq
                        seg_of[seq] = seg_id
                        count += 1
                else:
                    seg.pending += count
                    count = 0
                    top = max(top, self._replay(seg, payload[0], body))
            except (ValueError, TypeError, KeyError, IndexError):
                bad += 1
        seg.pending += count
        return top, bad

    def _replay(self, seg: _Segment, kind: int, body: Any) -> int:
        """Apply one record read at start-up; returns the highest seq it names."""
        if kind == 0x61:  # a
            seq, key, appended, record = body
            if type(seq) is not int or type(key) is not str or type(record) is not dict:
                raise ValueError("bad append record")
            keys = self._keys
            if keys.get(key, -1e300) < appended:
                keys[key] = appended
            seg.keys.append(key)
            if key in self._pending_keys or seq in self._pending:
                return seq
            self._pending[seq] = Entry(seq, key, record, float(appended))
            self._pending_keys[key] = seq
            self._seg_of[seq] = seg.id
            seg.pending += 1
            return seq
        if kind == 0x64:  # d
            top = 0
            for seq in body:
                top = max(top, seq)
                entry = self._pending.pop(seq, None)
                if entry is None:
                    continue
                del self._pending_keys[entry.key]
                owner = self._seg_of.pop(seq)
                self._segments[owner].pending -= 1
                if owner != seg.id:
                    seg.refs.add(owner)
            return top
        raise ValueError(f"unknown record type {kind!r}")

    def _rewrite_keys(self) -> None:
        """Write the keys file afresh (carried keys still in the window) and put it in place."""
        fs = self._fs
        tmp = self._path(_KEYS_FILE + ".tmp")
        fd = fs.create(tmp)
        try:
            data = _header(_KEYS_MAGIC, 0) + b"".join(_frame(p) for p in self._keys_payloads(
                self._carried.items()))
            fs.pwrite(fd, data, 0)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, self._path(_KEYS_FILE))
        self._keys_entries = len(self._carried)

    @staticmethod
    def _keys_payloads(pairs: Iterable[tuple[str, float]]) -> list[bytes]:
        pairs = list(pairs)
        return [_encode(b"k", pairs[i:i + _KEYS_PER_RECORD])
                for i in range(0, len(pairs), _KEYS_PER_RECORD)]

    def _create_first(self, base_seq: int) -> None:
        seg = _Segment(1 if not self._segments else max(self._segments) + 1, "")
        seg.path = self._path(_segment_name(seg.id))
        fd = self._fs.create(seg.path)
        self._fs.pwrite(fd, _header(_SEG_MAGIC, base_seq), 0)
        self._fs.fsync(fd)
        self._fs.fsync_dir(self.directory)
        self._segments[seg.id] = seg
        self._current = seg
        self._fd = fd

    def _rotate_now(self) -> None:
        if self._fd is not None:
            self._fs.close(self._fd)
        self._create_first(self._next_seq)

    def _delete_now(self) -> None:
        """At start-up: delete what is deletable, synchronously."""
        job = self._deletion_job()
        if job is not None:
            self._deleted(job[0], self._delete_job(*job))

    def _start(self) -> None:
        if self._threaded:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="mup-journal")
            # Not before the reactor runs: a start-up that fails after open() must not be
            # kept alive by this (non-daemon) thread.  Writes queue until then.
            self._reactor.callWhenRunning(self._pool.start)
            self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.close)

    # -- the public interface -----------------------------------------------------------------

    def append(self, key: str, record: dict) -> defer.Deferred[Entry | None]:
        """Journal ``record`` under ``key``; fires with its Entry once it is fsync'd, or with None
        when the key was journaled before (within the dedupe window, or still pending)."""
        if self._closed:
            return defer.fail(JournalClosed("the journal is closed"))
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            return defer.fail(ValueError(f"bad journal key: {key!r:.80}"))
        if not isinstance(record, dict):
            return defer.fail(TypeError("a journal record is a dict"))
        now = self._reactor.seconds()
        if key in self._pending_keys:
            return defer.succeed(None)
        horizon = now - self._window
        if (self._keys.get(key, -1e300) >= horizon
                or self._carried.get(key, -1e300) >= horizon):
            return defer.succeed(None)
        first = self._inflight.get(key)
        if first is not None:
            d: defer.Deferred[Entry | None] = defer.Deferred()
            first.followers.append(d)
            return d
        seq = self._next_seq
        try:
            payload = _encode(b"a", [seq, key, now, record])
        except (TypeError, ValueError) as e:
            return defer.fail(TypeError(f"journal record is not JSON: {e}"))
        if len(payload) > MAX_RECORD:
            return defer.fail(ValueError(f"journal record too large: {len(payload)} bytes"))
        self._next_seq += 1
        # The record as it will read back after a restart (tuples become lists, and so on), and
        # a copy, so the caller changing its dict later changes neither.
        try:
            copy = _plain_copy(record)
        except (_NotPlain, RecursionError):
            copy = _DECODER.decode(payload[1:].decode("ascii"))[3]
        entry = Entry(seq, key, copy, now)
        item = _Item("a", seq, _frame(payload), defer.Deferred(), key=key, entry=entry)
        self._inflight[key] = item
        self._queue.append(item)
        self._schedule()
        return item.d

    def mark_done(self, seq: int) -> defer.Deferred[None]:
        """Record that message ``seq`` was delivered; fires once that is fsync'd.  The message
        leaves ``pending()`` at once (and comes back if the write fails)."""
        if self._closed:
            return defer.fail(JournalClosed("the journal is closed"))
        first = self._done_inflight.get(seq)
        if first is not None:
            d: defer.Deferred[None] = defer.Deferred()
            first.followers.append(d)
            return d
        entry = self._pending.pop(seq, None)
        if entry is None:
            return defer.succeed(None)
        item = _Item("d", seq, b"", defer.Deferred(), key=entry.key, entry=entry)
        self._done_inflight[seq] = item
        self._queue.append(item)
        self._schedule()
        return item.d

    def pending(self, after: int = 0, limit: int | None = None) -> list[Entry]:
        """Messages accepted and not delivered, in append order: those with ``seq > after``,
        at most ``limit`` of them.  ``after`` costs what it returns, not the whole backlog."""
        if after <= 0:
            if limit is None:
                return list(self._pending.values())
            return list(itertools.islice(self._pending.values(), max(0, limit)))
        newer: list[Entry] = []
        for entry in reversed(self._pending.values()):
            if entry.seq <= after:
                break
            newer.append(entry)
        newer.reverse()
        return newer if limit is None else newer[: max(0, limit)]

    def is_pending(self, key: str) -> bool:
        """Whether a message with this key is accepted and not yet delivered."""
        return key in self._pending_keys

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def backlog(self) -> int:
        """Number of messages accepted and not yet delivered."""
        return len(self._pending)

    def settled(self) -> defer.Deferred[None]:
        """Fires once nothing is queued, being written or waiting to be deleted (for tests,
        benchmarks and a tidy shutdown)."""
        if not self._busy and self._call is None and not self._queue and (self._closed or (
                not self._should_rotate_idle() and not self._should_compact()
                and self._deletion_job() is None)):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._settled_waiters.append(d)
        if not self._busy:
            self._schedule()
        return d

    def writable(self) -> bool:
        """False when closed, or since a write failed until one succeeds (retried every
        second on its own, so this comes back once the disk has room again)."""
        return not self._closed and not self._dirty and not self._failing

    def close(self) -> None:
        """Stop: appends not yet written fail with JournalClosed; a write in progress finishes."""
        if self._closed:
            return
        self._closed = True
        for call in (self._call, self._retry_call, self._repair_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._retry_call = self._repair_call = None
        queue, self._queue = self._queue, []
        self._fail_items(queue, Failure(JournalClosed("the journal was closed")))
        waiters, self._settled_waiters = self._settled_waiters, []
        for d in waiters:
            d.callback(None)
        if self._pool is not None:
            self._pool.stop()
        if self._trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._keys_fd):
            if fd is not None:
                try:
                    self._fs.close(fd)
                except OSError:
                    pass
        self._fd = self._keys_fd = None
        if self._locked is not None:
            _unlock(self._locked)
            self._locked = None

    # -- group commit -------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._call is None and not self._busy and not self._closed:
            self._call = self._reactor.callLater(0, self._flush)

    def _run(self, job: Callable[[], Any]) -> defer.Deferred:
        if self._threaded:
            assert self._pool is not None
            return threads.deferToThreadPool(self._reactor, self._pool, job)
        try:
            result = job()
        except Exception:
            return defer.fail()
        return defer.succeed(result)

    def _flush(self) -> None:
        self._call = None
        if self._busy or self._closed:
            return
        if self._queue:
            count = size = 0
            for item in self._queue:  # bound a batch by records and by bytes
                size += len(item.frame)
                count += 1
                if count >= self._max_batch or size >= _MAX_BATCH_BYTES:
                    break
            items = self._queue[:count]
            del self._queue[:count]
            self._start_batch(items)
            return
        if self._should_rotate_idle():
            self._start_batch([], rotate=True)
            return
        if self._should_compact():
            self._busy = True
            snapshot = list(self._carried.items())
            data = _header(_KEYS_MAGIC, 0) + b"".join(
                _frame(p) for p in self._keys_payloads(snapshot))
            c = self._run(lambda: self._compact_job(data))
            c.addCallback(self._compacted, len(snapshot))
            c.addErrback(self._internal_error)
            c.addBoth(self._idle)
            return
        job = self._deletion_job()
        if job is not None:
            self._busy = True
            d = self._run(lambda: self._delete_job(*job))
            d.addCallback(lambda outcome: self._deleted(job[0], outcome))
            d.addErrback(self._internal_error)
            d.addBoth(self._idle)
        else:
            self._idle(None)

    def _should_rotate_idle(self) -> bool:
        """Everything in the live segment is delivered and it has grown: move to a fresh one so
        it can be deleted now rather than after the next segment_bytes of traffic."""
        seg = self._current
        return (seg is not None and not self._dirty and seg.pending == 0
                and seg.size >= min(self._segment_bytes // 4, _IDLE_ROTATE)
                and all(r not in self._segments for r in seg.refs)
                and self._reactor.seconds() >= self._delete_after)

    def _start_batch(self, items: list[_Item], rotate: bool = False,
                     probe: bool = False) -> None:
        seg = self._current
        assert seg is not None
        if (seg.size >= self._segment_bytes or rotate) and seg.size > HEADER_SIZE:
            new_id = seg.id + 1
            base = min([i.seq for i in items if i.kind == "a"] or [self._next_seq])
            rotation = (new_id, self._path(_segment_name(new_id)), _header(_SEG_MAGIC, base))
        else:
            rotation = None
        target = rotation[0] if rotation else seg.id
        frames = []
        dones: list[int] = []
        for item in items:
            if item.kind == "a":
                frames.append(item.frame)
            else:
                dones.append(item.seq)
        if dones or probe:
            frames.append(_frame(_encode(b"d", dones)))  # a probe is an empty done-record
        data = b"".join(frames)
        self._busy = True
        job = (self._fd, seg.size, self._dirty, rotation, data)
        d = self._run(lambda: self._write_job(*job))
        d.addCallbacks(self._written, self._write_crashed,
                       callbackArgs=(items, target, rotation, bool(items) or probe),
                       errbackArgs=(items,))
        d.addErrback(self._internal_error)
        d.addBoth(self._idle)

    def _write_job(self, fd: int, offset: int, truncate_first: bool,
                   rotate: tuple[int, str, bytes] | None, data: bytes) -> _Outcome:
        """On the writer thread: (rotate,) write and fsync one batch; undo it if that fails."""
        fs = self._fs
        out = _Outcome(size=offset)
        try:
            if truncate_first:
                fs.ftruncate(fd, offset)
                fs.fsync(fd)
                truncate_first = False
            if rotate is not None:
                _, path, header = rotate
                new_fd = fs.create(path)
                try:
                    fs.pwrite(new_fd, header, 0)
                    fs.fsync(new_fd)
                    fs.fsync_dir(self.directory)
                except OSError:
                    fs.close(new_fd)
                    try:
                        fs.unlink(path)
                    except OSError:
                        pass
                    raise
                out.new_fd = fd = new_fd
                out.size = offset = len(header)
        except OSError as e:
            out.error = e
            out.clean = not truncate_first
            return out
        try:
            fs.pwrite(fd, data, offset)
            fs.fsync(fd)
        except OSError as e:
            out.error = e
            try:
                fs.ftruncate(fd, offset)
                fs.fsync(fd)
            except OSError:
                out.clean = False
            return out
        out.size = offset + len(data)
        return out

    def _written(self, out: _Outcome, items: list[_Item], target: int,
                 rotate: tuple[int, str, bytes] | None, records: bool = True) -> None:
        if out.new_fd is not None:
            if self._closed:
                self._fs.close(out.new_fd)
            else:
                if self._fd is not None:
                    self._fs.close(self._fd)
                self._fd = out.new_fd
            assert rotate is not None
            seg = _Segment(rotate[0], rotate[1])
            self._segments[seg.id] = seg
            self._current = seg
        if out.error is not None:
            self._dirty = not out.clean
            self._failing = self._failing or records
            if rotate is not None:
                self._back_off()
            self._schedule_repair()
            log.error("journal {dir}: write failed ({error}); {n} records refused{extra}",
                      dir=self.directory, error=out.error, n=len(items),
                      extra="" if out.clean else ", and the tail could not be cut")
            self._fail_items(items, Failure(JournalError(f"journal write failed: {out.error}")))
            return
        self._dirty = False
        if records:
            self._failing = False
        seg = self._segments[target]
        seg.size = out.size
        fired: list[tuple[defer.Deferred, Any]] = []
        for item in items:
            entry = item.entry
            assert entry is not None
            if item.kind == "a":
                self._inflight.pop(item.key, None)
                self._pending[item.seq] = entry
                self._pending_keys[item.key] = item.seq
                self._seg_of[item.seq] = target
                self._keys[item.key] = entry.appended
                seg.pending += 1
                seg.keys.append(item.key)
                fired.append((item.d, entry))
            else:
                self._done_inflight.pop(item.seq, None)
                if self._pending_keys.get(item.key) == item.seq:
                    del self._pending_keys[item.key]
                owner = self._seg_of.pop(item.seq, None)
                if owner is not None and owner in self._segments:
                    self._segments[owner].pending -= 1
                    if owner != target:
                        seg.refs.add(owner)
                fired.append((item.d, None))
            fired.extend((f, None) for f in item.followers)
        self._busy = False
        for d, result in fired:
            d.callback(result)

    def _write_crashed(self, failure: Failure, items: list[_Item]) -> None:
        """The writer raised something unexpected: refuse the batch, and cut the tail next time."""
        self._dirty = self._failing = True
        self._schedule_repair()
        log.failure("journal {dir}: unexpected write error", failure, dir=self.directory)
        self._fail_items(items, Failure(JournalError(f"journal write failed: {failure.value}")))

    def _fail_items(self, items: list[_Item], failure: Failure) -> None:
        back: list[Entry] = []
        for item in items:
            if item.kind == "a":
                self._inflight.pop(item.key, None)
            else:
                self._done_inflight.pop(item.seq, None)
                if item.entry is not None and not self._closed:
                    back.append(item.entry)
        if back:
            merged = list(self._pending.values()) + back
            merged.sort(key=lambda e: e.seq)
            self._pending = {e.seq: e for e in merged}
        self._busy = False
        for item in items:
            for d in [item.d, *item.followers]:
                d.errback(failure)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("journal {dir}: internal error", failure, dir=self.directory)

    def _idle(self, _: Any) -> None:
        self._busy = False
        if (self._queue or self._should_rotate_idle() or self._should_compact()
                or self._deletion_job() is not None):
            self._schedule()
        elif self._call is None and self._settled_waiters:
            waiters, self._settled_waiters = self._settled_waiters, []
            for d in waiters:
                d.callback(None)

    # -- deleting delivered segments ----------------------------------------------------------

    def _deletion_job(self) -> tuple[list[_Segment], int | None, int, bytes] | None:
        """Segments that may go, oldest first: all delivered, not current, and every segment their
        done-records refer to is gone (or goes before them)."""
        if self._current is None or self._dirty or self._reactor.seconds() < self._delete_after:
            return None
        going: list[_Segment] = []
        gone: set[int] = set()
        for seg_id in sorted(self._segments):
            seg = self._segments[seg_id]
            if seg is self._current:
                break
            if seg.pending == 0 and all(r in gone or r not in self._segments for r in seg.refs):
                going.append(seg)
                gone.add(seg_id)
        if not going:
            return None
        horizon = self._reactor.seconds() - self._window
        times = self._keys
        keep = [(k, times[k]) for seg in going for k in seg.keys
                if times.get(k, -1e300) >= horizon]
        data = b"".join(_frame(p) for p in self._keys_payloads(keep))
        return going, self._keys_fd, self._keys_size, data

    def _delete_job(self, going: list[_Segment], keys_fd: int | None, keys_size: int,
                    data: bytes) -> tuple[int, int]:
        """On the writer thread: save the keys, then unlink oldest first, each one made durable
        before the next (a newer segment's done-records must not outlive the older segment)."""
        fs = self._fs
        if data:
            assert keys_fd is not None
            try:
                fs.pwrite(keys_fd, data, keys_size)
                fs.fsync(keys_fd)
            except OSError as e:
                try:
                    fs.ftruncate(keys_fd, keys_size)
                except OSError:
                    pass
                log.error("journal {dir}: cannot save keys ({e}); segments kept",
                          dir=self.directory, e=e)
                return 0, -1
        done = 0
        try:
            for seg in going:
                fs.unlink(seg.path)
                fs.fsync_dir(self.directory)
                done += 1
        except OSError as e:
            log.error("journal {dir}: cannot delete {path} ({e})", dir=self.directory,
                      path=going[done].path, e=e)
        return done, keys_size + len(data)

    def _deleted(self, going: list[_Segment], outcome: tuple[int, int]) -> None:
        count, keys_size = outcome
        if count < len(going):
            self._back_off()
        if keys_size < 0:
            return
        self._keys_size = keys_size
        horizon = self._reactor.seconds() - self._window
        keys, carried = self._keys, self._carried
        for seg in going:
            for key in seg.keys:
                ts = keys.pop(key, None)
                if ts is not None and ts >= horizon:
                    carried[key] = ts
                    self._keys_entries += 1
        for seg in going[:count]:
            del self._segments[seg.id]
        self._prune(self._reactor.seconds())

    def _should_compact(self) -> bool:
        """The keys file holds mostly expired or repeated keys."""
        return (self._keys_entries > 2 * len(self._carried) + _COMPACT_SLACK
                and not self._dirty and self._reactor.seconds() >= self._delete_after)

    def _compact_job(self, data: bytes) -> int | OSError:
        """On the writer thread: replace the keys file by ``data``; returns its new fd."""
        fs = self._fs
        tmp, path = self._path(_KEYS_FILE + ".tmp"), self._path(_KEYS_FILE)
        try:
            if os.path.exists(tmp):
                fs.unlink(tmp)
            fd = fs.create(tmp)
            try:
                fs.pwrite(fd, data, 0)
                fs.fsync(fd)
            except OSError:
                fs.close(fd)
                raise
            fs.replace(tmp, path)
            fs.fsync_dir(self.directory)
        except OSError as e:
            return e
        return fd

    def _compacted(self, result: int | OSError, entries: int) -> None:
        if isinstance(result, OSError):
            log.error("journal {dir}: cannot compact the keys file ({e})", dir=self.directory,
                      e=result)
            self._back_off()
            return
        if self._keys_fd is not None:
            self._fs.close(self._keys_fd)
        if self._closed:
            self._fs.close(result)
            self._keys_fd = None
            return
        self._keys_fd = result
        self._keys_size = os.fstat(result).st_size
        self._keys_entries = entries

    def _schedule_repair(self) -> None:
        """The webhook stops appending while unwritable: cut the bad tail on our own, soon."""
        if (self._dirty or self._failing) and not self._closed and (
                self._repair_call is None or not self._repair_call.active()):
            self._repair_call = self._reactor.callLater(_REPAIR_DELAY, self._repair)

    def _repair(self) -> None:
        """Cut the tail a failed write left and write a probe record, so ``writable()`` can
        come back."""
        self._repair_call = None
        if (self._dirty or self._failing) and not self._closed:
            if self._busy or self._queue:
                return  # the next batch does it; it reschedules if it fails
            self._start_batch([], probe=True)

    def _back_off(self) -> None:
        """Housekeeping (deletion, idle rotation) failed: try again later, not every turn."""
        if self._closed:
            return
        self._delete_after = self._reactor.seconds() + _DELETE_RETRY
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._reactor.callLater(_DELETE_RETRY, self._schedule)

    def _prune(self, now: float) -> None:
        """Forget keys older than the window (unless still pending)."""
        horizon = now - self._window
        self._keys = {k: ts for k, ts in self._keys.items()
                      if ts >= horizon or k in self._pending_keys}
        self._carried = {k: ts for k, ts in self._carried.items() if ts >= horizon}
