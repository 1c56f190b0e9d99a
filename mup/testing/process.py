"""Start a real daemon as a child process, wait until it is ready, stop it by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["ServerProcess", "free_port", "missing_binary", "require_binary", "taken_port",
           "twistd_argv"]


class MissingBinary(RuntimeError):
    """A server binary the tests need is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on for the ``with`` block (port-in-use tests)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def twistd_argv(*args: str) -> list[str]:
    """argv that runs ``twistd ARGS`` with this very Python (``python -m twisted`` is ``twist``,
    a different runner)."""
    import sys

    return [sys.executable, "-c",
            "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
            *args]


def missing_binary(path: str) -> bool:
    return shutil.which(path) is None and not os.access(path, os.X_OK)


def require_binary(path: str, package: str) -> str:
    """Return ``path`` if it is installed.  Otherwise skip the test, or fail it when CI=true:
    CI must never skip a real-server test silently."""
    if not missing_binary(path):
        return shutil.which(path) or path
    message = f"{path} is not installed (Debian package {package!r}; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        raise MissingBinary(message)
    import pytest

    pytest.skip(message)
    raise AssertionError("unreachable")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             alive: Callable[[], bool] = lambda: True, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; raise if ``alive`` turns false or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if not alive():
            raise RuntimeError(f"process died while waiting for {what}")
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class ServerProcess:
    """One child process with its output in ``log``; ``stop()`` signals it by PID."""

    def __init__(self, argv: Sequence[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL,
                 user: str | None = None) -> None:
        self.argv = list(argv)
        self.log = Path(log)
        self._logfile = open(self.log, "ab")
        # ``user``: run as that user (a root test starting a server that refuses root).
        as_user: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
        self.proc = subprocess.Popen(self.argv, stdout=self._logfile, stderr=subprocess.STDOUT,
                                     stdin=stdin, cwd=cwd, env=env, start_new_session=True,
                                     **as_user)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_output(self, text: str, timeout: float = 15.0) -> None:
        try:
            wait_for(lambda: text in self.output(), timeout, repr(text), self.alive)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{self.argv[0]}: {e}\n--- log ---\n{self.output()[-3000:]}"
                               ) from None

    def wait_for_port(self, port: int, timeout: float = 15.0) -> None:
        try:
            wait_for(lambda: port_open(port), timeout, f"port {port}", self.alive)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{self.argv[0]}: {e}\n--- log ---\n{self.output()[-3000:]}"
                               ) from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process (SIGKILL by default, for crash tests) and reap it."""
        if self.alive():
            os.kill(self.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        self._logfile.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
