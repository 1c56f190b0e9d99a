"""One process per database: an exclusive flock on a file beside it.

flock, unlike SQLite's own POSIX locks, is kept across twistd's fork into the background."""

from __future__ import annotations

import errno
import fcntl
import os

__all__ = ["try_lock"]


def try_lock(path: str) -> int | None:
    """Open (creating it) and lock ``path``; the descriptor holds the lock until it is closed.
    None when another process holds it; OSError for anything else (the caller names it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    return fd
