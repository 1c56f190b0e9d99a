"""Import of the segment journal mup wrote before it used SQLite (``*.seg`` and ``keys``).

On the first start after an upgrade, what the old journal still held goes into the database in
one transaction: the messages not yet delivered (in their order) and the dedupe keys still in
the window.  The old files are then moved aside to ``old-journal-<time>/``, never deleted.

The old format, read here and nowhere else: a file is a 20-byte header (magic ``MUPJ`` for a
segment, ``MUPK`` for the keys file) then frames ``0xA5 | u32 crc32 | u32 length | payload``
(the crc covers length and payload); a payload is one type byte and JSON: ``a [seq, key,
appended, record]`` accepted, ``d [seq, ...]`` delivered, ``k [[key, appended], ...]`` keys of
delivered messages.  A damaged frame is skipped, as the old journal's own recovery did.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import zlib
from typing import Any

from twisted.logger import Logger

from mup.store import StoreOpenError

__all__ = ["import_old_journal", "read_old_journal"]

log = Logger(namespace="mup.store")

_HEADER = 20


def _frames(data: bytes) -> list[bytes]:
    """The payloads of the good frames after the header."""
    out: list[bytes] = []
    pos, size = _HEADER, len(data)
    while pos + 9 <= size:
        length = int.from_bytes(data[pos + 5:pos + 9], "big")
        end = pos + 9 + length
        if (data[pos] == 0xA5 and 0 < length and end <= size
                and zlib.crc32(data[pos + 5:end]) == int.from_bytes(data[pos + 1:pos + 5], "big")):
            out.append(data[pos + 9:end])
            pos = end
        else:
            found = data.find(b"\xa5", pos + 1)
            if found < 0:
                break
            pos = found
    return out


def _segments(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if name.endswith(".seg") and len(name) == 20)


def read_old_journal(directory: str
                     ) -> tuple[list[tuple[str, float, dict[str, Any]]], dict[str, float]]:
    """What an old journal holds: pending messages ``(key, appended, record)`` in order, and
    the keys of delivered ones with their time."""
    keys: dict[str, float] = {}
    pending: dict[int, tuple[str, float, dict[str, Any]]] = {}
    keys_path = os.path.join(directory, "keys")
    if os.path.exists(keys_path):
        with open(keys_path, "rb") as f:
            for payload in _frames(f.read()):
                try:
                    if payload[:1] == b"k":
                        keys.update((str(k), float(t)) for k, t in json.loads(payload[1:]))
                except (ValueError, TypeError):
                    continue
    for name in _segments(directory):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        for payload in _frames(data):
            try:
                body = json.loads(payload[1:])
                if payload[:1] == b"a":
                    seq, key, appended, record = body
                    if isinstance(record, dict):
                        pending.setdefault(int(seq), (str(key), float(appended), record))
                elif payload[:1] == b"d":
                    for seq in body:
                        done = pending.pop(int(seq), None)
                        if done is not None:
                            keys[done[0]] = done[1]
            except (ValueError, TypeError):
                continue
    waiting = [pending[s] for s in sorted(pending)]
    pending_keys = {key for key, _, _ in waiting}
    return waiting, {k: t for k, t in keys.items() if k not in pending_keys}


def _not_in_use(directory: str) -> None:
    """Refuse to import a journal an older mup still has open (it holds ``lock``)."""
    path = os.path.join(directory, "lock")
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StoreOpenError(f"{directory}: the old journal is in use by another process "
                             "(an older mup still running?); stop it first") from None
    finally:
        os.close(fd)


def import_old_journal(directory: str, database: str, now: float, window: float) -> int | None:
    """Import an old journal in ``directory`` into ``database`` (already at the current schema)
    and move its files aside; the number of messages imported, or None if there was none."""
    names = _segments(directory)
    if not names and not os.path.exists(os.path.join(directory, "keys")):
        return None
    _not_in_use(directory)
    try:
        pending, keys = read_old_journal(directory)
    except OSError as e:
        raise StoreOpenError(f"{directory}: cannot read the old journal: {e.strerror}") from None
    horizon = now - window
    con = sqlite3.connect(database, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        done = con.execute("SELECT 1 FROM meta WHERE name = 'legacy_import'").fetchone()
        if done is None:   # else: imported, and a crash came before the files were moved
            con.executemany("INSERT INTO messages (key, appended, record) VALUES (?, ?, ?) "
                            "ON CONFLICT (key) DO NOTHING",
                            [(k, t, json.dumps(r, separators=(",", ":"))) for k, t, r in pending])
            con.executemany("INSERT OR IGNORE INTO seen (key, appended) VALUES (?, ?)",
                            [(k, t) for k, t in keys.items() if t >= horizon])
            con.execute("INSERT INTO meta VALUES ('legacy_import', ?)", (repr(now),))
        con.execute("COMMIT")
    except sqlite3.Error as e:
        raise StoreOpenError(f"{database}: cannot import the old journal: {e}") from None
    finally:
        con.close()
    aside = os.path.join(directory, "old-journal-" + time.strftime("%Y%m%dT%H%M%S",
                                                                    time.gmtime(now)))
    try:
        os.makedirs(aside, mode=0o700, exist_ok=True)
        for name in [*names, "keys", "keys.tmp", "lock"]:
            if os.path.exists(os.path.join(directory, name)):
                os.replace(os.path.join(directory, name), os.path.join(aside, name))
    except OSError as e:
        raise StoreOpenError(f"{directory}: imported the old journal but cannot move it aside "
                             f"to {aside}: {e.strerror}") from None
    log.info("{database}: imported the old journal: {n} messages waiting, {k} dedupe keys; "
             "its files are in {aside}", database=database, n=len(pending),
             k=sum(1 for t in keys.values() if t >= horizon), aside=aside)
    return len(pending)
