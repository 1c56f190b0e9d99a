"""Run a real ``twistd mup-relay`` as a child process, and post to it as Kannel would.

Used by the relay's process tests, ``bench/relay.py`` and the demo."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from mup.testing.certs import self_signed
from mup.testing.process import ServerProcess, free_port, twistd_argv

__all__ = ["KannelPoster", "RelayProcess"]


class RelayProcess:
    """``twistd -n mup-relay`` on 127.0.0.1, its journal in ``directory`` (or its messages in
    PostgreSQL: ``store`` is then the ``[relay] store`` connection string); ``start()`` again
    after ``kill()`` reuses the journal and the port, as an operator's restart would."""

    def __init__(self, directory: Path, *, token: str = "relay-token",
                 kannel_token: str = "kannel-token", poll_timeout: float = 30.0,
                 port: int | None = None, tls: bool = False, store: str = "") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.kannel_token = kannel_token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        endpoint = f"tcp:port={self.port}:interface=127.0.0.1"
        self.certificate: Path | None = None
        if tls:
            key = self.directory / "relay-key.pem"
            self.certificate = self.directory / "relay-cert.pem"
            self_signed(self.certificate, key)
            endpoint = (f"ssl:port={self.port}:interface=127.0.0.1:privateKey={key}"
                        f":certKey={self.certificate}")
            self.url = f"https://127.0.0.1:{self.port}"
        self.config = self.directory / "relay.toml"
        self.config.write_text(
            "[webhook]\n"
            f'endpoint = "{endpoint}"\n'
            f'journal = "{self.directory / "journal"}"\n'
            "[sms.kannel]\n"
            f'inbound_token = "{kannel_token}"\n'
            "[relay]\n"
            f'token = "{token}"\n'
            f"poll_timeout = {float(poll_timeout)}\n"
            f"store = {json.dumps(store)}\n"
            "[log]\n"
            'level = "info"\n')
        self.process: ServerProcess | None = None
        self.starts = 0

    def start(self, timeout: float = 20.0) -> RelayProcess:
        self.starts += 1
        log = self.directory / f"relay-{self.starts}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = ServerProcess(
            twistd_argv("-n", "--pidfile=", "mup-relay", "--config", str(self.config)),
            log, cwd=self.directory, env=env)
        self.process.wait_for_port(self.port, timeout)
        return self

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def output(self) -> str:
        return "".join((self.directory / f"relay-{i}.log").read_text(errors="replace")
                       for i in range(1, self.starts + 1))

    def health(self) -> dict[str, Any]:
        return self.healthz()[1]

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: its status (200, or 503 when a check fails) and its fields."""
        conn = self.connection()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            fields: dict[str, Any] = json.loads(response.read())
            return response.status, fields
        finally:
            conn.close()

    def healthy(self) -> bool:
        """``/healthz`` answers 200 (False while it answers 503 or not at all)."""
        try:
            return self.healthz()[0] == 200
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def ssl_context(self) -> Any:
        """For TLS: a client context that trusts the relay's certificate (else None)."""
        if self.certificate is None:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.certificate))

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        if self.certificate is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=self.ssl_context())

    def poster(self) -> KannelPoster:
        return KannelPoster("127.0.0.1", self.port, self.kannel_token,
                            context=self.ssl_context())


class AckGate:
    """A TCP forwarder between the bot and the relay that can hold back acknowledgements.

    While ``holding`` is set, a connection on which the bot sends ``POST /relay/ack`` is frozen
    (nothing more is forwarded either way): the relay never hears of that ack, exactly as if
    the bot had died between the IRC server's confirmation and the ack.  Pulls go through."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.holding = threading.Event()
        self.held = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[Any] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            frozen = threading.Event()
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, frozen, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, frozen, False),
                             daemon=True).start()

    def _pipe(self, src: Any, dst: Any, frozen: Any, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self.holding.is_set() and b"POST /relay/ack" in data:
                    self.held += 1
                    frozen.set()
                if frozen.is_set():
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not frozen.is_set():
                for s in (src, dst):
                    try:
                        s.shutdown(2)
                    except OSError:
                        pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


class KannelPoster:
    """Posts MO SMS the way Kannel's get-url does (``GET /kannel/mo?...&token=``), on one
    keep-alive connection; ``post_many`` uses several at once."""

    def __init__(self, host: str, port: int, token: str, timeout: float = 10.0,
                 context: Any = None) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self.context = context
        self._conn: http.client.HTTPConnection | None = None

    def post(self, message_id: str, text: str, sender: str = "+447700900123") -> int:
        """The HTTP status (200 once it is on the relay's disk)."""
        query = urllib.parse.urlencode({
            "from": sender, "to": "4242", "text": text, "id": message_id,
            "coding": "0", "charset": "UTF-8", "token": self.token})
        for attempt in range(2):
            if self._conn is None:
                self._conn = (http.client.HTTPConnection(self.host, self.port,
                                                         timeout=self.timeout)
                              if self.context is None else
                              http.client.HTTPSConnection(self.host, self.port,
                                                          timeout=self.timeout,
                                                          context=self.context))
            try:
                self._conn.request("GET", f"/kannel/mo?{query}")
                response = self._conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post_many(self, messages: Iterable[tuple[str, ...]], connections: int = 16
                  ) -> list[int]:
        """Post ``(id, text)`` or ``(id, text, sender)`` tuples over ``connections`` keep-alive
        connections; statuses in the given order (the relay's order among concurrent posts is
        its accept order)."""
        items = list(messages)
        chunks = [items[i::connections] for i in range(connections)]

        def run(chunk: list[tuple[str, ...]]) -> list[int]:
            poster = KannelPoster(self.host, self.port, self.token, self.timeout, self.context)
            try:
                return [poster.post(*item) for item in chunk]
            finally:
                poster.close()

        with ThreadPoolExecutor(connections) as pool:
            results = list(pool.map(run, chunks))
        out = [0] * len(items)
        for c, statuses in enumerate(results):
            for j, status in enumerate(statuses):
                out[c + j * connections] = status
        return out
